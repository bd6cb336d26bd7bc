"""Fixtures and the helpers test modules share (import them from here, never from another test module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, HandshakeError

from satchel import config

from satchel.core import instructions
from satchel.tools.client import connect
from satchel.core.engine import Engine
from satchel.core.messages import (
    BalanceOf, BalancesOf, DepthOf, OpenOrders, StateHashOf, StateOf, Totals,
    ASK, BID, FOK, GTC, IOC, LIMIT, MARKET, REJECT_TAKER, CancelAll, CancelOrder, Deposit, PlaceOrder, SetFees,
    SetProfile, SetRule, SetTierLimits, SetTrading, ReferralCode, SeasonSpec, SetMultiplier, SetSeason, UseReferral,
    Transfer,
)
from satchel.signing import Keypair, auth_for, param_text

ADMIN = "ADMIN"


class Exchange:
    """The engine driven directly, block by block (no journal, no network)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.seq = 1
        self.ts = 1_700_000_000_000_000
        self.events: list = []

    async def block(self, txs: list) -> list:
        self.ts += 1000
        events = await self.engine.apply(self.seq, self.ts, txs)
        self.seq += len(txs)
        self.events.extend(events)
        return events

    async def deposit(self, account: str, asset: str, amount: int) -> None:
        await self.block([Deposit(ADMIN, account, asset, amount)])

    async def balance(self, account: str, asset: str) -> tuple[int, int]:
        return await self.engine.risk.call(BalanceOf(account, asset))

    async def totals(self) -> dict[str, int]:
        return await self.engine.risk.call(Totals())

    async def deposits(self) -> dict[str, int]:
        return {d.asset: d.amount for d in (await self.engine.risk.call(StateOf())).deposits}

    async def depth(self, symbol: str):
        return await self.engine.books[symbol].call(DepthOf())


def order(account: str, side: int, price: int = 0, qty: int = 0, *, symbol: str = "SOL_USDC", type: int = LIMIT,
          tif: int = GTC, post_only: bool = False, quote_qty: int = 0, client_id: int | None = None,
          stp: int = REJECT_TAKER, reduce_only: bool = False) -> PlaceOrder:
    return PlaceOrder(account, symbol, side, type if price or type == MARKET else MARKET, tif, post_only, price, qty,
                      quote_qty, client_id, stp, reduce_only)


def cancel(account: str, order_id: int | None = None, client_id: int | None = None, symbol: str = "SOL_USDC") -> CancelOrder:
    return CancelOrder(account, symbol, order_id, client_id)


def cancel_all(account: str, symbol: str = "SOL_USDC") -> CancelAll:
    return CancelAll(account, symbol)


@pytest.fixture
async def ex(nursery):
    engine = Engine(nursery)
    x = Exchange(engine)
    await x.block(config.genesis(config.load(), ADMIN))
    return x


__all__ = ["ASK", "BID", "order", "cancel", "cancel_all"]


# ---------------------------------------------------------------- a real node on 127.0.0.1


class Server:
    def __init__(self, node, gateway):
        self.node = node
        self.gateway = gateway
        self.url = gateway.url

    async def fund(self, key, **amounts: int) -> None:
        from satchel.core.messages import Deposit as _Deposit

        for asset, units in amounts.items():
            await self.node.submit_wait(_Deposit(self.node.admin.api_key, key.api_key, asset, units))

    async def balances(self, key) -> dict:
        return await self.node.ask("risk", BalancesOf(key.api_key))

    async def open_orders(self, key, symbol: str = "SOL_USDC") -> list:
        return await self.node.ask(symbol, OpenOrders(key.api_key))


async def start_server(nursery, tmp_path, **gateway_settings) -> Server:
    import msgspec
    from satchel.gateway import Gateway
    from satchel.node import Node

    cfg = config.load()
    if gateway_settings:
        cfg = msgspec.structs.replace(cfg, gateway=msgspec.structs.replace(cfg.gateway, **gateway_settings))
    node = await nursery.start(Node(tmp_path / "data", cfg).run)
    gateway = await nursery.start(Gateway(node, "127.0.0.1", 0).run)
    return Server(node, gateway)


@pytest.fixture
async def server(nursery, tmp_path):
    return await start_server(nursery, tmp_path)


@pytest.fixture
async def traders(server):
    """Alice with 100,000 USDC and Bob with 1,000 SOL on the live server."""
    from satchel.signing import Keypair

    alice, bob = Keypair.generate(), Keypair.generate()
    await server.fund(alice, USDC=100_000 * 10**6)
    await server.fund(bob, SOL=1_000 * 10**9)
    return alice, bob


# ---------------------------------------------------------------- a node in this process, run to a clean stop


async def run_node(data, work=None, cfg: config.Config | None = None):
    """Start a node on ``data``, await ``work(node)``, shut it down; returns (node, state hash)."""
    from satchel.node import Node

    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(data, cfg).run)
        if work:
            await work(node)
        state = await node.ask("engine", StateHashOf())
        node.shutdown()
    return node, state


async def workload(node) -> None:
    """Deposits and 300 resting or crossing SOL_USDC orders over several blocks."""
    admin = node.admin.api_key
    await node.submit_wait(Deposit(admin, "alice", "USDC", 10**12))
    await node.submit_wait(Deposit(admin, "bob", "SOL", 10**13))
    for i in range(300):
        side = BID if i % 2 else ASK
        node.submit(PlaceOrder("alice" if side == BID else "bob", "SOL_USDC", side, LIMIT, GTC, False, 15_000 + (i % 11) - 5, 10 + i % 7, 0, None, REJECT_TAKER))
        if i % 50 == 0:
            await trio.sleep(0.003)  # several blocks
    await node.submit_wait(Deposit(admin, "carol", "USDC", 1))


def small_snapshots() -> config.Config:
    """The defaults with a snapshot every 3 blocks."""
    cfg = config.load()
    return msgspec.structs.replace(cfg, node=msgspec.structs.replace(cfg.node, snapshot_blocks=3))


# ---------------------------------------------------------------- a node in a subprocess (`satchel serve`)


def start_node(data: Path, port: int, log: Path) -> subprocess.Popen:
    """``satchel serve`` on 127.0.0.1:``port`` without demo accounts, oracle or block stream (a quiet node: it
    changes nothing unless asked); stderr to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "satchel.tools.cli", "serve", "--data", str(data), "--port", str(port), "--no-demo", "--rest-port", "-1",
         "--no-oracle", "--replication-port", "-1"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
    )


async def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until the node at ``url`` answers a depth request (fails if ``proc`` exits or ``timeout`` s pass)."""
    with trio.fail_after(timeout):
        while True:
            assert proc is None or proc.poll() is None, "node exited"
            try:
                async with connect(url) as c:
                    await c.request("depth", {"symbol": "SOL_USDC"}, sign=False)
                    return
            except* (OSError, HandshakeError, ConnectionClosed):
                pass
            await trio.sleep(0.1)


def log_state(log: Path, event: str) -> str:
    """The state hash the node's JSON log line ``event`` names."""
    for line in log.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == event:
            return json.loads(line)["state"]
    raise AssertionError(f"no {event} in {log}")


# ---------------------------------------------------------------- signed transactions


class Listing:
    markets = {m.symbol: m for m in config.load().market_specs()}
    assets = {a.symbol: a for a in config.load().asset_specs()}
    chains: dict = {}


LISTING = Listing()


def signed_order(key: Keypair, **extra) -> PlaceOrder:
    """A SOL_USDC limit bid built from its signed parameters, as the gateway builds it."""
    params = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150.25", "quantity": "2", **extra}
    texts = {k: param_text(v) for k, v in params.items()}
    tx = instructions.build("orderExecute", texts, key.api_key, LISTING)
    return msgspec.structs.replace(tx, auth=auth_for(key, "orderExecute", params))


# ---------------------------------------------------------------- generated workloads (hypothesis)

ACCOUNTS = ["a0", "a1", "a2", "a3", "a4"]
SYMBOLS = ["SOL_USDC", "BTC_USDC"]

order_st = st.builds(
    lambda acct, sym, side, kind, tif, post, price, qty, quote, stp, cid: PlaceOrder(
        acct, sym, side, kind, tif if kind == LIMIT else IOC, post and kind == LIMIT,
        (14_900 + price if sym == "SOL_USDC" else 899_000 + price * 10) if kind == LIMIT else 0,
        qty if (kind == LIMIT or quote == 0) else 0,
        0 if (kind == LIMIT or quote == 0) else quote * 1_000_000, cid, stp),
    st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS), st.sampled_from([BID, ASK]),
    st.sampled_from([LIMIT, LIMIT, LIMIT, MARKET]), st.sampled_from([GTC, GTC, IOC, FOK]), st.booleans(),
    st.integers(0, 200), st.integers(1, 400), st.integers(0, 500), st.integers(0, 2),
    st.one_of(st.none(), st.integers(0, 5)),
)
cancel_st = st.one_of(
    st.builds(lambda a, s, k: ("cancel", a, s, k), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS), st.integers(0, 10_000)),
    st.builds(lambda a, s: CancelAll(a, s), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS)),
)
deposit_st = st.builds(lambda a, asset, n: Deposit(ADMIN, a, asset, n), st.sampled_from(ACCOUNTS),
                       st.sampled_from(["USDC", "SOL", "BTC"]), st.integers(1, 10**13))
admin_st = st.one_of(
    st.builds(lambda a, s, on: SetTrading(ADMIN, a, s, on), st.one_of(st.none(), st.sampled_from(ACCOUNTS)),
              st.sampled_from(SYMBOLS), st.booleans()),
    st.builds(lambda s, m, t: SetFees(ADMIN, s, max(m, -t), t), st.sampled_from(SYMBOLS), st.integers(-5, 20), st.integers(0, 50)),
    # compliance: profiles in two jurisdictions, rules for them, an account or everywhere, tier notional limits
    st.builds(lambda a, j, t: SetProfile(ADMIN, a, t, j, ()), st.sampled_from(ACCOUNTS), st.sampled_from(["", "XX", "YY"]),
              st.integers(0, 2)),
    st.builds(lambda scope, who, what, allowed: SetRule(ADMIN, scope, who, what, allowed),
              st.sampled_from(["jurisdiction"]), st.sampled_from(["XX", "YY", "*"]),
              st.sampled_from(["spot", "market:SOL_USDC", "market:BTC_USDC"]), st.one_of(st.none(), st.booleans())),
    st.builds(lambda a, what, allowed: SetRule(ADMIN, "account", a, what, allowed), st.sampled_from(ACCOUNTS),
              st.sampled_from(["spot", "market:SOL_USDC"]), st.one_of(st.none(), st.booleans())),
    st.builds(lambda t, n: SetTierLimits(ADMIN, t, -1, (("USDC", n),)), st.integers(0, 2), st.integers(10**6, 10**12)),
    # rewards: a season (its second setting changes its weights), referrals, multipliers now or after the fact
    st.builds(lambda m, t: SetSeason(ADMIN, SeasonSpec(1, "s", 0, 2**62, "USDC", m, t, 1000)), st.integers(0, 200),
              st.integers(0, 200)),
    st.builds(lambda a, c: ReferralCode(a, c), st.sampled_from(ACCOUNTS), st.sampled_from(["c0", "c1", "c2"])),
    st.builds(lambda a, c: UseReferral(a, c), st.sampled_from(ACCOUNTS), st.sampled_from(["c0", "c1", "c2"])),
    st.builds(lambda scope, a, f, h, n: SetMultiplier(ADMIN, scope, "" if scope == "all" else a, f, h, h + n if n else 0),
              st.sampled_from(["account", "all"]), st.sampled_from(ACCOUNTS), st.integers(100, 400), st.integers(1, 12),
              st.integers(0, 5)),
    st.builds(lambda a, b, asset, n: Transfer(ADMIN, a, b, asset, n), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.sampled_from(["USDC", "SOL"]), st.integers(1, 10**12)),
)
tx_st = st.one_of(order_st, order_st, order_st, order_st, cancel_st, deposit_st, admin_st)
workload_st = st.lists(st.lists(tx_st, min_size=1, max_size=25), min_size=1, max_size=12)


def concretize(blocks: list, first_seq: int) -> list:
    """Turn ("cancel", acct, sym, k) into a cancel of some earlier sequence number."""
    out, seq = [], first_seq
    for block in blocks:
        txs = []
        for tx in block:
            if isinstance(tx, tuple):
                _, acct, sym, k = tx
                tx = CancelOrder(acct, sym, first_seq + k % max(1, seq - first_seq + 1), None)
            txs.append(tx)
            seq += 1
        out.append(txs)
    return out


# ---------------------------------------------------------------- the EVM dev node


@pytest.fixture(scope="module")
def installed():
    """The EVM dev node's npm project (hardhat and solc-js), installed on first use; the
    test is skipped with the reason where npm is missing, and fails instead when
    SATCHEL_REQUIRE_EVM is set (``.ci/run`` sets it)."""
    import os

    from satchel.chains.evm import devnode

    try:
        return devnode.ensure_installed()
    except devnode.NpmMissing as e:
        if os.environ.get("SATCHEL_REQUIRE_EVM"):
            pytest.fail(f"SATCHEL_REQUIRE_EVM is set but the EVM dev node cannot be installed: {e}")
        pytest.skip(f"EVM dev node unavailable: {e}")


# ---------------------------------------------------------------- divergence drills


def leaves(eg: BaseExceptionGroup):
    """The exceptions inside nested exception groups (what a trio nursery raised)."""
    for e in eg.exceptions:
        yield from leaves(e) if isinstance(e, BaseExceptionGroup) else [e]


def older_permissions_rule(account_rule, jurisdiction_rule, everywhere_rule, jurisdiction):
    """``actors.compliance.decide`` as it was before account exemptions: a jurisdiction's
    rule wins over the account's (the incident drills' faulty validator)."""
    from satchel.actors.compliance import EVERYWHERE, Source

    for rule, source in ((jurisdiction_rule, f"jurisdiction:{jurisdiction}"), (account_rule, "account"),
                         (everywhere_rule, f"jurisdiction:{EVERYWHERE}")):
        if rule is not None:
            return Source(rule[0], source, rule[1])
    return Source(True, "default", 0)


# ---------------------------------------------------------------- nats-server (satchel.cluster)


def _nats_missing() -> str:
    from satchel.cluster.natsserver import find_binary

    return "" if find_binary() else "no nats-server (Debian's package nats-server; .ci/run installs it)"


def nats_cluster(directory, size: int = 3):
    """``size`` nats-server processes with JetStream on loopback (a context manager)."""
    from satchel.cluster.natsserver import NatsCluster

    return NatsCluster(directory, size)


# modules that need nats-server skip without it, except under SATCHEL_REQUIRE_NATS=1 (.ci/run installs it)
if _nats_missing() and os.environ.get("SATCHEL_REQUIRE_NATS") == "1":
    raise RuntimeError(f"NATS tests required but {_nats_missing()}")
nats_cluster.skip_without = pytest.mark.skipif(bool(_nats_missing()), reason=_nats_missing() or "nats-server found")


# ------------------------------------------------------------------ waiting on a node (chain tests)


async def until(check, timeout: float = 15) -> None:
    """Poll ``check()`` (awaitable) until it is true, failing after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.05)


async def balance(node, account: str, asset: str = "USDC") -> int:
    """An account's free + held balance of ``asset``, read from the engine."""
    free, held = await node.ask("risk", BalanceOf(account, asset))
    return free + held


async def admin_deposit(node, account: str, asset: str, amount: int) -> list:
    """A faucet deposit signed by the node's admin key (as ``satchel faucet``)."""
    params = {"account": account, "asset": asset, "quantity": str(amount)}
    return await node.submit_wait(Deposit(node.admin.api_key, account, asset, amount, auth_for(node.admin, "deposit", params)))


async def equals(value, expected) -> bool:
    return (await value) == expected


async def falsy(value) -> bool:
    return not await value
