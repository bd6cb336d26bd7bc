"""Local nats-server processes with JetStream on: one, or a cluster of three on loopback.

Used by the test suite and by ``deploy/local`` (a whole cluster on one machine). The
servers are Debian's ``nats-server`` package (``.ci/run`` and ``deploy/local/run``
install it where missing); each gets a config file, a store directory and a log in its
own directory, and is reported ready once its monitoring endpoint's ``/healthz``
answers ok (JetStream up and, in a cluster, its meta group joined).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER_NAME = "satchel"


def find_binary() -> str | None:
    """nats-server on PATH, or where Debian's package puts it (/usr/sbin, not on a user's PATH)."""
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin:/usr/local/bin")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class NatsNode:
    name: str
    directory: Path
    client_port: int
    cluster_port: int
    http_port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def config(self, routes: list[int]) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.client_port}",
            f"http: 127.0.0.1:{self.http_port}",
            # a block is one message: 4,096 orders are over the 1 MB default (64 MB is NATS's maximum)
            "max_payload: 64MB",
            "jetstream {",
            f'  store_dir: "{self.directory / "store"}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 4GB",
            "}",
        ]
        if routes:
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                "  routes: [" + ", ".join(f"nats://127.0.0.1:{p}" for p in routes) + "]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, binary: str, routes: list[int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nats.conf"
        conf.write_text(self.config(routes))
        log = open(self.directory / "nats.log", "ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class NatsCluster:
    """``size`` nats-server nodes under ``directory`` (1: a single server, no clustering)."""

    directory: Path
    size: int = 3
    ports: list[int] | None = None  # client ports; free ones when None
    binary: str | None = None
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.binary = self.binary or find_binary()
        if self.binary is None:
            raise FileNotFoundError("nats-server not found: install Debian's nats-server package "
                                    "(apt-get install nats-server; .ci/run and deploy/local/run do it)")
        clients = self.ports or free_ports(self.size)
        extra = free_ports(2 * self.size)
        self.nodes = [NatsNode(f"n{i + 1}", self.directory / f"n{i + 1}", clients[i], extra[2 * i], extra[2 * i + 1])
                      for i in range(self.size)]

    @property
    def urls(self) -> str:
        """The servers' URLs, comma-separated: what ``--nats`` takes."""
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        for node in self.nodes:
            self.start_node(node)
        self.wait_healthy(timeout)
        return self

    def start_node(self, node: NatsNode) -> None:
        routes = [n.cluster_port for n in self.nodes] if self.size > 1 else []
        node.start(self.binary, routes)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while node.running and not node.healthy():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server {node.name} not healthy within {timeout:.0f} s; see {node.directory}/nats.log")
                time.sleep(0.1)
            if not node.running:
                raise RuntimeError(f"nats-server {node.name} exited; see {node.directory}/nats.log")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def available() -> bool:
    return find_binary() is not None and os.name == "posix"
