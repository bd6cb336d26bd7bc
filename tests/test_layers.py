"""The layers, checked: the deterministic core imports no clock, randomness, environment,
file or network module, and each folder imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "platform"
CORE = sorted((ROOT / "actors").glob("*.py")) + sorted((PLATFORM / "core").glob("*.py"))
FORBIDDEN = {
    "time", "datetime", "random", "secrets", "os", "sys", "socket", "ssl", "select", "selectors", "asyncio",
    "trio_websocket", "io", "pathlib", "shutil", "tempfile", "glob", "urllib", "http", "requests", "subprocess",
    "threading", "multiprocessing", "uuid", "signal", "mmap", "builtins",
}
# trio is the actor runtime (channels and tasks), but its clock, sleeps, file,
# socket and thread APIs are off limits in the core
FORBIDDEN_TRIO = {"current_time", "sleep", "sleep_until", "move_on_after", "fail_after", "open_file", "Path",
                  "socket", "open_tcp_stream", "to_thread", "from_thread", "run_process", "wrap_file"}


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_core_modules_exist():
    assert all(p.exists() for p in CORE) and len(CORE) >= 8


def test_core_imports_nothing_nondeterministic():
    bad = {}
    for path in CORE:
        found = [n for n in imports(path) if n.split(".")[0] in FORBIDDEN]
        if found:
            bad[path.name] = found
    assert not bad, f"nondeterministic imports in the core: {bad}"


def test_core_uses_no_trio_clock_or_io():
    for path in CORE:
        tree = ast.parse(path.read_text())
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "trio"}
        assert not used & FORBIDDEN_TRIO, (path.name, used & FORBIDDEN_TRIO)


def test_core_calls_no_io_or_hash_ordered_builtins():
    # set() of strings iterates in an order seeded per process; hash() and id() differ per process
    forbidden = {"open", "input", "print", "hash", "id", "set", "eval", "exec", "__import__"}
    for path in CORE:
        tree = ast.parse(path.read_text())
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & forbidden, (path.name, calls & forbidden)


def satchel_imports(path: Path) -> set[str]:
    return {n for n in imports(path) if n == "satchel" or n.startswith("satchel.")}


# folder -> the satchel packages it must not import (import contracts)
CONTRACTS = {
    "core": ("satchel.gateway", "satchel.api", "satchel.ledger", "satchel.verify", "satchel.tools", "satchel.node",
             "satchel.chains",
             "satchel.signing", "satchel.config", "satchel.clock", "satchel.latency"),
    "ledger": ("satchel.gateway", "satchel.api", "satchel.verify", "satchel.tools", "satchel.node", "satchel.latency",
               "satchel.cluster"),
    # the cluster's bus, stream and roles sit on the ledger; the node and the transports use them
    "cluster": ("satchel.gateway", "satchel.api", "satchel.verify", "satchel.tools", "satchel.node", "satchel.rest",
                "satchel.history", "satchel.chains"),
    "api": ("satchel.gateway", "satchel.verify", "satchel.tools", "satchel.node"),
    "verify": ("satchel.gateway", "satchel.api", "satchel.tools", "satchel.node"),
    "gateway": ("satchel.tools", "satchel.verify", "satchel.rest"),
    "rest": ("satchel.tools", "satchel.verify"),
    "history": ("satchel.gateway", "satchel.verify", "satchel.tools", "satchel.node", "satchel.rest"),
    # chain adapters are edges: they submit transactions and read events through what the node hands them
    "chains": ("satchel.gateway", "satchel.api", "satchel.verify", "satchel.tools", "satchel.node", "satchel.rest",
               "satchel.history"),
}


def test_core_imports_only_the_core():
    for path in CORE:
        outside = {n for n in satchel_imports(path) if not n.startswith(("satchel.core", "satchel.actors"))}
        assert not outside, (path.name, outside)


def test_each_layer_imports_only_what_lies_below_it():
    broken = {}
    for folder, banned in CONTRACTS.items():
        for path in sorted((PLATFORM / folder).rglob("*.py")):
            bad = sorted(n for n in satchel_imports(path) if n.startswith(banned))
            if bad:
                broken[str(path.relative_to(ROOT))] = bad
    assert not broken, f"imports against the layering: {broken}"
