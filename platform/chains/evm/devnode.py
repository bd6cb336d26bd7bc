"""The local EVM development node: `hardhat node` from npm, installed on first use.

The npm project beside this module (``node/``: package.json, package-lock.json with exact
versions, hardhat.config.js, compile.js) travels with the Python package, so that an
installed Satchel can set its dev chain up as well as a checkout can. It is never
installed in place: :func:`ensure_installed` runs ``npm ci`` into a cache directory named
by a digest of those files (``<repo>/.cache/evm/<digest>/`` in a checkout, gitignored), so
a changed lock file installs afresh and an unchanged one costs nothing.

The node listens on 127.0.0.1 only, with the accounts of a fixed mnemonic (hardhat's and
anvil's well-known test mnemonic by default: 10,000 ETH each) and chain id 31337. Mining is
automatic (a block per transaction) or on an interval (``block_time`` seconds; transactions
wait in the mempool until the next block), and either can be switched at run time with
``EvmRpc.set_automine`` / ``set_interval_mining``.

Two ways to run it, one process each, stopped with SIGTERM (then SIGKILL after a grace
period) when the block exits:

- :func:`start_devnode`, a plain context manager, for pytest fixtures that outlive one
  ``trio.run`` (a module-scoped node shared by tests that isolate themselves with
  ``evm_snapshot`` / ``evm_revert``);
- :func:`open_devnode`, an async context manager for trio code; the process belongs to the
  block, and the install runs in a worker thread.

Why hardhat: measured here (2 cores, Node 20), hardhat 2.29 (Aug 2026; its Rust engine, EDR,
current hardforks, evm_setAutomine / evm_setIntervalMining / evm_snapshot at run time)
against ganache 7.9.2 (no release since Dec 2024; hardforks up to Shanghai): ganache
installs lighter (180 MB, 12 s) and hardhat heavier (301 MB, 226 packages, 16-24 s: EDR
ships a binary for every platform), but hardhat starts faster (2.0 s against 2.2-3.5 s to
the first ``eth_chainId`` answer, same shell probe; 0.9-1.1 s from this module) and stops
in 0.02 s after SIGTERM. Hardhat 3 needs Node.js 22 and refuses to run on Node 20.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

NODE_PROJECT = Path(__file__).resolve().with_name("node")
# what the install is made of: a change to any of these is a new install directory
PROJECT_FILES = ("package.json", "package-lock.json", "hardhat.config.js", "compile.js")

MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 31337
ACCOUNTS = 10
HOST = "127.0.0.1"
MIN_NODE_MAJOR = 18
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 60.0
STOP_GRACE = 10.0
KEEP_LOGS = 20  # the newest node logs kept in <install>/logs


class DevNodeError(RuntimeError):
    """The dev node could not be installed, started or reached."""


class NpmMissing(DevNodeError):
    """npm (or node) is not on PATH: the dev node cannot be installed here."""


@dataclass(frozen=True)
class DevNode:
    """A running dev node, as its caller sees it."""

    url: str
    port: int
    chain_id: int
    mnemonic: str
    accounts: int
    block_time: float  # 0: automine
    pid: int
    log_path: Path  # the node's stdout and stderr (hardhat logs every RPC method here)


# -- install ---------------------------------------------------------------------------------------

def cache_root() -> Path:
    """Where installs go: $SATCHEL_EVM_CACHE, else ``.cache/evm`` in the checkout this module
    lives in, else the user's cache directory."""
    if configured := os.environ.get("SATCHEL_EVM_CACHE"):
        return Path(configured)
    repo = NODE_PROJECT.parents[3]  # platform/chains/evm/node -> the repository root
    if (repo / "pyproject.toml").is_file() and (repo / "platform").is_dir():
        return repo / ".cache" / "evm"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "satchel" / "evm"


def project_digest() -> str:
    """A digest of the npm project's files: the name of its install directory."""
    h = hashlib.sha256()
    for name in PROJECT_FILES:
        h.update(name.encode() + b"\0" + (NODE_PROJECT / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _npm() -> str:
    if (npm := shutil.which("npm")) is None:
        raise NpmMissing(f"npm is not on PATH: the EVM dev node (hardhat, from npm) needs Node.js >= {MIN_NODE_MAJOR} "
                         f"with npm")
    return npm


def node_executable() -> str:
    """The ``node`` binary, checked to be recent enough for hardhat 2."""
    if (node := shutil.which("node")) is None:
        raise NpmMissing(f"node is not on PATH: the EVM dev node (hardhat, from npm) needs Node.js >= {MIN_NODE_MAJOR}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        raise DevNodeError(f"cannot read the version of {node}: {version!r}") from None
    if major < MIN_NODE_MAJOR:
        raise DevNodeError(f"Node.js {version} at {node} is too old for the EVM dev node: it needs >= {MIN_NODE_MAJOR}")
    return node


def ensure_installed(*, timeout: float = INSTALL_TIMEOUT) -> Path:
    """Return the directory holding the installed npm project, running ``npm ci`` first if needed.

    Blocking (call it in a worker thread from trio code). Raises :class:`NpmMissing` when npm
    or node is absent and :class:`DevNodeError` when the install fails (with npm's output).
    The install goes into a private staging directory, renamed into place when complete, so
    an interrupted install is never taken for a finished one and two processes installing at
    once both end up with a good directory. Older installs beside it are removed.
    """
    root = cache_root()
    digest = project_digest()
    target = root / digest
    if (target / ".installed").is_file():
        return target
    npm = _npm()
    node_executable()
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{digest}.{os.getpid()}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in PROJECT_FILES:
            shutil.copy2(NODE_PROJECT / name, staging / name)
        # --ignore-scripts: nothing we use needs an install script (keccak and friends fall back
        # to JavaScript), and npm versions disagree on whether they run by default
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
        try:
            done = subprocess.run(cmd, cwd=staging, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DevNodeError(f"`npm ci` for the EVM dev node took longer than {timeout:.0f} s") from e
        if done.returncode != 0:
            raise DevNodeError(f"`npm ci` for the EVM dev node failed ({done.returncode}) in {staging}:\n"
                               f"{_tail(done.stdout + done.stderr)}")
        (staging / ".installed").write_text(json.dumps({"digest": digest, "installed_at": time.time()}))
        if target.exists() and not (target / ".installed").is_file():
            shutil.rmtree(target)  # a leftover from before this scheme; never a finished install
        try:
            staging.rename(target)
        except OSError:
            if not (target / ".installed").is_file():  # someone else's finished install is as good as ours
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in root.iterdir():
        if old.is_dir() and old.name != digest and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- start and stop --------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((HOST, port)) == 0:
            raise DevNodeError(f"port {port} on {HOST} is already in use: the dev node cannot listen there")


@dataclass(frozen=True)
class _Launch:
    """How to start one node: the command, its environment, and what its caller will see."""

    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    chain_id: int
    mnemonic: str
    accounts: int
    block_time: float
    log_path: Path

    def devnode(self, pid: int) -> DevNode:
        return DevNode(url=f"http://{HOST}:{self.port}", port=self.port, chain_id=self.chain_id,
                       mnemonic=self.mnemonic, accounts=self.accounts, block_time=self.block_time, pid=pid,
                       log_path=self.log_path)

    def not_ready(self, why: str) -> DevNodeError:
        try:
            log = _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            log = "(no log)"
        return DevNodeError(f"the EVM dev node on port {self.port} {why}; its log ({self.log_path}):\n{log}")


def _launch(install: Path, port: int | None, *, block_time: float, chain_id: int, mnemonic: str,
            accounts: int) -> _Launch:
    if block_time < 0:
        raise ValueError(f"block_time must be >= 0 seconds, got {block_time}")
    port = free_port() if port is None else port
    _check_port_free(port)
    node = node_executable()
    bin_rel = json.loads((install / "node_modules" / "hardhat" / "package.json").read_text())["bin"]["hardhat"]
    cmd = [node, str(install / "node_modules" / "hardhat" / bin_rel), "node", "--hostname", HOST, "--port", str(port)]
    env = dict(os.environ)
    env.update({
        "SATCHEL_EVM_CHAIN_ID": str(chain_id),
        "SATCHEL_EVM_MNEMONIC": mnemonic,
        "SATCHEL_EVM_ACCOUNTS": str(accounts),
        "SATCHEL_EVM_BLOCK_TIME_MS": str(round(block_time * 1000)),
        "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true",
    })
    logs = install / "logs"
    logs.mkdir(exist_ok=True)
    for old in sorted(logs.glob("node-*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    log_path = logs / f"node-{port}.log"
    return _Launch(cmd=cmd, env=env, cwd=install, port=port, chain_id=chain_id, mnemonic=mnemonic, accounts=accounts,
                   block_time=block_time, log_path=log_path)


def _chain_id_now(url: str) -> int | None:
    """eth_chainId over a short-lived stdlib connection (the sync readiness probe), or None."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:
            return int(json.loads(response.read())["result"], 16)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def start_devnode(port: int | None = None, *, block_time: float = 0.0, chain_id: int = CHAIN_ID,
                  mnemonic: str = MNEMONIC, accounts: int = ACCOUNTS,
                  start_timeout: float = START_TIMEOUT) -> Iterator[DevNode]:
    """Run a dev node on 127.0.0.1:``port`` (a free one when None) for the ``with`` block.

    Installs it first if needed (see :func:`ensure_installed`), returns once it answers
    ``eth_chainId`` with ``chain_id``, and stops it on exit. ``block_time`` 0 mines a block per
    transaction; a positive value mines one every that many seconds. Raises
    :class:`DevNodeError` (with the tail of the node's log) if it exits or stays silent.
    """
    launch = _launch(ensure_installed(), port, block_time=block_time, chain_id=chain_id, mnemonic=mnemonic,
                     accounts=accounts)
    with open(launch.log_path, "wb") as log:
        proc = subprocess.Popen(launch.cmd, cwd=launch.cwd, env=launch.env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        dev = launch.devnode(proc.pid)
        deadline = time.monotonic() + start_timeout
        while (answer := _chain_id_now(dev.url)) is None:
            if proc.poll() is not None:
                raise launch.not_ready(f"exited with status {proc.returncode} before answering")
            if time.monotonic() > deadline:
                raise launch.not_ready(f"did not answer eth_chainId within {start_timeout:.0f} s")
            time.sleep(0.05)
        if answer != chain_id or proc.poll() is not None:
            raise launch.not_ready(f"is not the one answering (chain id {answer}, expected {chain_id})")
        yield dev
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.asynccontextmanager
async def open_devnode(port: int | None = None, *, block_time: float = 0.0, chain_id: int = CHAIN_ID,
                       mnemonic: str = MNEMONIC, accounts: int = ACCOUNTS,
                       start_timeout: float = START_TIMEOUT) -> AsyncIterator[DevNode]:
    """:func:`start_devnode` for trio code: same arguments and guarantees; blocking steps
    (the install, the port check) run in a worker thread, and the stop is shielded from
    cancellation so that the process never outlives the block."""
    from satchel.chains.evm.rpc import EvmRpc, RpcFailure

    install = await trio.to_thread.run_sync(ensure_installed)
    launch = await trio.to_thread.run_sync(lambda: _launch(install, port, block_time=block_time, chain_id=chain_id,
                                                           mnemonic=mnemonic, accounts=accounts))
    with open(launch.log_path, "wb") as log:
        proc = await trio.lowlevel.open_process(launch.cmd, cwd=launch.cwd, env=launch.env, stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=subprocess.STDOUT)
    try:
        dev = launch.devnode(proc.pid)
        answer = None
        async with EvmRpc(dev.url, timeout=1.0) as rpc:
            with trio.move_on_after(start_timeout):
                while answer is None:
                    try:
                        answer = await rpc.chain_id()
                    except RpcFailure:
                        if proc.poll() is not None:
                            raise launch.not_ready(f"exited with status {proc.returncode} before answering") from None
                        await trio.sleep(0.05)
        if answer is None:
            raise launch.not_ready(f"did not answer eth_chainId within {start_timeout:.0f} s")
        if answer != chain_id or proc.poll() is not None:
            raise launch.not_ready(f"is not the one answering (chain id {answer}, expected {chain_id})")
        yield dev
    finally:
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_GRACE):
                    await proc.wait()
                if proc.poll() is None:
                    proc.kill()
                    await proc.wait()
