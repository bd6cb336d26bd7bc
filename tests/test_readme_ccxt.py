"""The README's ccxt snippet runs as printed against a live node (only its key, secret and
REST address are filled in)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import trio

from conftest import start_server
from satchel.rest import serve
from satchel.signing import Keypair

README = Path(__file__).resolve().parent.parent / "README.md"


def ccxt_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## REST and ccxt"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_readme_ccxt_snippet_runs_as_printed(nursery, tmp_path):
    server = await start_server(nursery, tmp_path)
    rest = await nursery.start(serve, server.gateway, "127.0.0.1", 0)
    key = Keypair.generate()
    await server.fund(key, USDC=10_000 * 10**6)
    code = ccxt_snippet()
    assert "http://127.0.0.1:8767" in code  # the node's default REST address
    code = (code.replace("<api_key>", key.api_key).replace("<secret>", key.secret)
            .replace("http://127.0.0.1:8767", rest))
    done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert lines[1:3] == ["open", "canceled"], lines
    assert "'free': 10000.0" in lines[3], lines
