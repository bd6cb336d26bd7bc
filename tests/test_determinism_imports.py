"""The deterministic core imports no clock, randomness, environment, file or network module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "actors").glob("*.py")) + [ROOT / "platform" / n for n in ("engine.py", "actor.py", "amounts.py", "messages.py", "instructions.py", "errors.py")]
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
    assert all(p.exists() for p in CORE) and len(CORE) >= 6


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
