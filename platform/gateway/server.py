"""The gateway's listening side: accepts WebSocket connections and owns what they share:
the API (``satchel.api.handlers``), the listing it follows, market data, the platform
statistics (``satchel.api.stats``), the chains' status (``satchel.api.chains``), the
history (``satchel.history``) and the verifier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio
from trio_websocket import serve_websocket

from satchel.api.chains import Addresses, ChainStatus, Reconciliation
from satchel.api.format import Formatter
from satchel.api.handlers import Api
from satchel.api.listing import Listing
from satchel.api.marketdata import MarketData
from satchel.api.rewards import Leaderboard
from satchel.api.stats import PlatformStats, Rejects
from satchel.gateway.session import Session
from satchel.history import Store, catch_up
from satchel.runtime import contained, peer_name
from satchel.signing import ProcessVerifier, Verifier

if TYPE_CHECKING:
    from satchel.node import Node

log = structlog.get_logger("satchel.gateway")

HISTORY_FILE = "history.sqlite"  # in the node's data directory

# trio-websocket buffers a message until its last fragment, up to its hard cap, and then
# closes the connection (1009); frames above the configured soft cap (``max_frame_bytes``)
# but under this many times it get PAYLOAD_TOO_LARGE and the connection lives. At 1 MiB an
# outside test held 1.1 MB per connection with messages never finished (RSS 80 -> 418 MB
# with 300 connections); at 4 x 16 KB a connection holds at most 64 KB of them.
HARD_CAP_FACTOR = 4
HANDSHAKE_TIMEOUT_S = 10.0  # a connection that has not finished its upgrade request by then is closed


class Gateway:
    def __init__(self, node: "Node", host: str = "127.0.0.1", port: int = 8765, *, history: bool = True):
        self.node = node
        self.host = host
        self.port = port
        self.settings = node.cfg.gateway
        engine = node.engine
        # seeded once from the recovered engine (nothing is being published yet), then kept
        # by the durable blocks' ConfigChanged events: the listing comes first among the
        # subscribers, so market data formats a new market's first events with its spec
        self.listing = Listing(engine.markets, engine.assets, engine.chains)
        node.subscribers.append(self.listing)
        self.fmt = Formatter(self.listing.markets, self.listing.assets)
        self.marketdata = MarketData(self.fmt)
        self.marketdata.last_timestamp = node.chain.last_timestamp  # book times before the next block
        node.subscribers.append(self.marketdata)
        # the headline figures (``platformStats``), read from the engine once per second of sequenced time
        self.platform_stats = PlatformStats(self.fmt, self.marketdata, lambda q, cb: node.sequencer.read(q, cb),
                                            height=node.chain.height, timestamp=node.chain.last_timestamp)
        node.subscribers.append(self.platform_stats)
        # the chains' pause status (``chainStatus``) from the durable blocks, read once at start
        self.chains = ChainStatus(self.fmt, self.marketdata, lambda q, cb: node.sequencer.read(q, cb),
                                  self.listing.chains, Addresses(node).kind, height=node.chain.height,
                                  timestamp=node.chain.last_timestamp)
        node.subscribers.append(self.chains)
        # the points leaderboard (``leaderboard``), read from the rewards actor at most once per second of sequenced time
        self.leaderboard = Leaderboard(self.marketdata, lambda q, cb: node.sequencer.read(q, cb))
        node.subscribers.append(self.leaderboard)
        self.rejects = Rejects()  # refusals by code, for the operations page
        node.subscribers.append(self.rejects)
        self.replicator: Any = None  # the block stream, when the node serves one (its followers are counted)
        self.reconciliation = Reconciliation(node, self.fmt)  # the running chains' adapters against the books
        # the order and fill history (``satchel.history``), fed by the durable blocks from
        # here on; ``run`` replays from the journal what it lacks up to the recovered height
        self.history = Store(node.data / HISTORY_FILE) if history else None
        self._history_upto = node.chain.height
        if self.history is not None:
            node.subscribers.append(self.history)
        n = self.settings.verify_processes
        idle = self._node_idle
        self.verifier = ProcessVerifier(n, inline_when=idle) if n > 0 else Verifier(inline_when=idle)
        self.api = Api(node, self.listing, self.fmt, self.verifier, self.marketdata, max_page=self.settings.max_page,
                       stats=self._stats, history=self.history, platform_stats=self.platform_stats,
                       chains=self.chains, reconciliation=self.reconciliation)
        self.sessions = 0
        self.refused_connections = 0  # over ``max_connections``
        self.slow_consumers = 0
        self.handler_errors = 0  # frames whose handling failed unexpectedly (answered INTERNAL_ERROR)
        self.logged_failures: set[str] = set()  # each kind of failure is logged once
        self.url = ""

    def _stats(self) -> dict:
        """The transport's part of ``nodeStats`` (and blocks or reads queued to the history)."""
        sequencer = self.node.sequencer
        return {"sessions": self.sessions, "refusedConnections": self.refused_connections,
                "slowConsumers": self.slow_consumers, "handlerErrors": self.handler_errors,
                "historyPending": self.history.pending() if self.history is not None else 0,
                "height": self.node.chain.height, "backlog": sequencer.backlog if sequencer is not None else 0,
                "rejects": dict(sorted(self.rejects.counts.items())),
                "followers": self.replicator.active if self.replicator is not None else None,
                "validators": self._validators(),
                "cluster": self.node.cluster.status() if self.node.cluster is not None else None}

    def _validators(self) -> list[dict]:
        """Those following this node's WebSocket block stream, and those on the cluster's bus."""
        rows = self.replicator.validators() if self.replicator is not None else []
        if self.node.cluster is not None:
            rows += self.node.cluster.validators(self.node.chain.height)
        return rows

    def _node_idle(self) -> bool:
        sequencer = self.node.sequencer
        return sequencer is not None and not sequencer.backlog

    def overloaded(self) -> bool:
        """Admission control: the verifier or the sequencer has too much waiting."""
        limit = self.settings.max_backlog
        return self.verifier.backlog > limit or self.node.sequencer.backlog > limit

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.verifier.run)
            nursery.start_soon(self.reconciliation.run)
            if self.history is not None:
                # cancelled with the gateway: the store commits what is queued and closes
                await nursery.start(self.history.run)
                # a few missing blocks are written before serving, a long rebuild while serving
                await nursery.start(catch_up, self.history, self.node.data, self._history_upto)
            self.platform_stats.start()
            self.chains.start()
            if self.settings.depth_heartbeat_ms:
                nursery.start_soon(self._depth_heartbeats, self.settings.depth_heartbeat_ms / 1000)
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    contained(self._handle, log, "gateway.connection_failed"), self.host, self.port, None,
                    max_message_size=HARD_CAP_FACTOR * self.settings.max_frame_bytes,
                    connect_timeout=HANDSHAKE_TIMEOUT_S, task_status=task_status
                )
            )
            self.port = server.port
            self.url = f"ws://{self.host}:{self.port}"
            log.info("gateway.listening", url=self.url)
            task_status.started(self)

    async def _depth_heartbeats(self, period_s: float) -> None:
        """Market data's ``depth_heartbeat`` every ``period_s``: quiet books tell their
        subscribers they are unchanged (ccxt syncs only after 11 deltas)."""
        md = self.marketdata
        while True:
            await trio.sleep(period_s)
            md.depth_heartbeat()

    async def _handle(self, request: Any) -> None:
        peer = peer_name(request)
        if self.sessions >= self.settings.max_connections:
            self.refused_connections += 1
            await request.reject(503, body=b"too many connections: try again later")
            return
        ws = await request.accept()
        self.sessions += 1
        try:
            await Session(self, ws, peer).run()
        finally:
            self.sessions -= 1
