"""Compile the Solidity contracts offline into committed JSON artifacts.

    python -m satchel.chains.evm.compile            # rewrite contracts/<Name>.json
    python -m satchel.chains.evm.compile --check    # exit 1 if a committed artifact is stale

The compiler is solc-js at the version pinned in ``node/package.json`` (installed on first
use with the dev node, see :mod:`satchel.chains.evm.devnode`), run through ``node/compile.js``
with Solidity's Standard JSON interface. The settings below are part of the artifact: the
same source, settings and compiler give the same bytes (the metadata hash appended to the
bytecode included), which is what ``--check`` and the tests rely on. Tests and the adapter
read the artifact and never need a compiler at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from satchel.chains.evm import devnode

CONTRACTS = Path(__file__).resolve().with_name("contracts")
NAMES = ("USDC",)
# evmVersion matches the dev node's pinned hardfork (node/hardhat.config.js)
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class CompileError(RuntimeError):
    """solc reported errors (its messages are in the exception)."""


def compile_contract(name: str) -> dict[str, Any]:
    """Compile ``contracts/<name>.sol`` and return its artifact (not written anywhere)."""
    source_name = f"{name}.sol"
    source = (CONTRACTS / source_name).read_text()
    standard_input = {"language": "Solidity", "sources": {source_name: {"content": source}}, "settings": SETTINGS}
    install = devnode.ensure_installed()
    done = subprocess.run([devnode.node_executable(), str(install / "compile.js")], cwd=install,
                          input=json.dumps(standard_input), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise CompileError(f"solc-js failed ({done.returncode}):\n{done.stderr.strip()}")
    result = json.loads(done.stdout)
    output = result["output"]
    problems = output.get("errors", [])
    errors = [p["formattedMessage"] for p in problems if p.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(errors))
    for warning in problems:
        print(warning.get("formattedMessage", warning), file=sys.stderr)
    contract = output["contracts"][source_name][name]
    settings = {k: v for k, v in SETTINGS.items() if k != "outputSelection"}
    return {
        "contractName": name,
        "sourceName": source_name,
        "sourceSha256": hashlib.sha256(source.encode()).hexdigest(),
        "compiler": {"name": "solc-js", "version": result["version"]},
        "settings": settings,
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }


def artifact_text(artifact: dict[str, Any]) -> str:
    """The committed form: indented JSON, one ABI entry per line, a final newline."""
    head = {k: v for k, v in artifact.items() if k != "abi"}
    lines = ["{"]
    for key, value in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    abi = [f"    {json.dumps(entry, sort_keys=True)}" for entry in artifact["abi"]]
    lines.append('  "abi": [')
    lines.append(",\n".join(abi))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m satchel.chains.evm.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed artifacts, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name in NAMES:
        text = artifact_text(compile_contract(name))
        path = CONTRACTS / f"{name}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"stale: {path} differs from a fresh compile (run python -m satchel.chains.evm.compile)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
