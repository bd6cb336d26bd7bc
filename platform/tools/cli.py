"""``satchel`` command line: serve, keygen, faucet, replay, stats, status."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from satchel import config as config_mod
from satchel.ledger.journal import JournalCorrupt
from satchel.cluster.bus import BusError, Fenced, TooLarge
from satchel.ledger.chain import DivergedError
from satchel.runtime import fatal_errors_unwrapped

if TYPE_CHECKING:
    from satchel.config import OracleSettings
    from satchel.oracle import PriceRow


def setup_logging(level: int = logging.INFO) -> None:
    """Readable console lines on a terminal, one JSON object per line otherwise."""
    renderer = structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _serve(args: argparse.Namespace) -> int:
    from satchel.signing import decode_key

    cfg = config_mod.load(args.config)
    try:
        oracle = None if args.no_oracle else _oracle(cfg, args)
    except ValueError as exc:  # a bad price file or start price
        print(f"satchel serve: {exc}", file=sys.stderr)
        return 2
    host = args.host or cfg.node.host
    port = cfg.node.port if args.port is None else args.port
    followers = [decode_key(k) for k in args.allow_follower]
    if None in followers:
        bad = args.allow_follower[followers.index(None)]
        print(f"satchel serve: --allow-follower {bad!r} is not a base64 Ed25519 public key", file=sys.stderr)
        return 2
    async with AsyncExitStack() as stack:
        cluster = None
        if args.nats:
            from satchel.cluster.bus import Bus
            from satchel.cluster.role import Cluster
            from satchel.signing import load_key

            bus = await stack.enter_async_context(Bus(args.nats, name="sequencer"))
            gateways = [decode_key(k) for k in args.allow_gateway]
            if None in gateways:
                print(f"satchel serve: --allow-gateway {args.allow_gateway[gateways.index(None)]!r} is not a base64 "
                      "Ed25519 public key", file=sys.stderr)
                return 2
            # this node's own gateway forwards while it is a standby: it signs its batches with the
            # admin key, which every sequencer of the cluster holds, so each takes the others'
            own = load_key(Path(args.data), "admin.key")
            cluster = Cluster(bus, own, sequencer=True, durability=args.durability, replicas=args.stream_replicas,
                              takeover_after=args.takeover_after, allow_gateways=(own.public, *gateways))
        return await _run_node(args, cfg, host, port, followers, oracle, cluster)


async def _run_node(args: argparse.Namespace, cfg: config_mod.Config, host: str, port: int, followers: list,
                    oracle: Any, cluster: Any) -> int:
    from satchel.gateway import Gateway
    from satchel.node import Node
    from satchel.ledger.replication import Replicator

    node = Node(args.data, cfg, cluster)
    async with trio.open_nursery() as outer:
        await outer.start(node.run)
        async with trio.open_nursery() as edges:
            gateway = await edges.start(Gateway(node, host, port).run)
            if args.rest_port >= 0:
                from satchel.rest import serve as serve_rest

                await edges.start(serve_rest, gateway, host, args.rest_port)
            if args.replication_port >= 0:
                gateway.replicator = Replicator(node, args.replication_host, args.replication_port,
                                                max_followers=args.max_followers, allow=followers)
                await edges.start(gateway.replicator.run)
            # stderr carries log lines only (JSON, or readable on a terminal): no plain prints here
            structlog.get_logger("satchel").info("node.serving", url=gateway.url, data=str(Path(args.data).resolve()))
            edges.start_soon(_sequencing_edges, node, oracle, args.no_demo, not args.no_chains)
            await _until_signal("node")
            edges.cancel_scope.cancel()
        node.shutdown()
    return 0


async def _sequencing_edges(node: Any, oracle: Any, no_demo: bool, chains_here: bool = True) -> None:
    """What submits transactions of its own (the oracle, the chains' adapters unless they
    run in ``satchel chains``, the demo market maker): on the node that sequences, so in a
    cluster once it is the primary."""
    from satchel.tools.demo import DemoDeposits, MarketMaker
    from satchel.oracle import Oracle

    if node.cluster is not None:
        await node.cluster.promoted.wait()
    async with trio.open_nursery() as edges:
        if oracle is not None:
            settings, rows = oracle
            edges.start_soon(Oracle(node, settings, rows).run)
        chains = None
        if node.cfg.chains and chains_here:
            from satchel.chains.embedded import SimChains

            chains = await edges.start(SimChains(node).run)
        if not no_demo:
            edges.start_soon(MarketMaker(node).run)
            if chains is not None:
                edges.start_soon(DemoDeposits(node, chains).run)


async def _chains(args: argparse.Namespace) -> int:
    """The chains' adapters (and simulated chains) in a process of their own beside the
    node (``satchel serve --no-chains``), reporting over its WebSocket API with their keys
    (``satchel.chains.link``): the node's event loop only credits what they report."""
    from satchel.chains.embedded import Chains, EdgeHost
    from satchel.chains.link import RemoteLink
    from satchel.tools import client
    from satchel.tools.demo import DemoDeposits

    cfg = config_mod.load(args.config)
    try:
        host = EdgeHost(args.data, cfg)
    except FileNotFoundError as exc:
        print(f"satchel chains: {exc}", file=sys.stderr)
        return 2
    if not cfg.chains:
        print("satchel chains: no [chains] in the configuration", file=sys.stderr)
        return 2
    url = args.url or f"ws://{cfg.node.host}:{cfg.node.port}"
    async with trio.open_nursery() as nursery:
        chains = await nursery.start(Chains(host, link=lambda decimals: RemoteLink(url, decimals, client)).run)
        if args.demo:
            nursery.start_soon(DemoDeposits(host, chains).run)
        structlog.get_logger("satchel").info("chains.serving", node=url, chains=sorted(chains.adapters),
                                             data=str(Path(args.data).resolve()))
        await _until_signal("chains")
        nursery.cancel_scope.cancel()
    return 0


async def _gateway(args: argparse.Namespace) -> int:
    """A gateway process: follows the block stream, serves WebSocket (and REST), verifies
    signatures and forwards transactions to the sequencer (``satchel.cluster``)."""
    from satchel.cluster.bus import Bus
    from satchel.cluster.role import Cluster
    from satchel.gateway import Gateway
    from satchel.node import Node
    from satchel.signing import load_key

    key = load_key(Path(args.data), "gateway.key")
    if args.print_key:
        print(key.api_key)
        return 0
    if not args.nats:
        print("satchel gateway: --nats URL is required (the cluster's NATS servers)", file=sys.stderr)
        return 2
    cfg = config_mod.load(args.config)
    host = args.host or cfg.node.host
    async with Bus(args.nats, name="gateway") as bus:
        node = Node(args.data, cfg, Cluster(bus, key, sequencer=False))
        async with trio.open_nursery() as outer:
            await outer.start(node.run)
            async with trio.open_nursery() as edges:
                gateway = await edges.start(Gateway(node, host, args.port).run)
                if args.rest_port >= 0:
                    from satchel.rest import serve as serve_rest

                    await edges.start(serve_rest, gateway, host, args.rest_port)
                structlog.get_logger("satchel").info("gateway.serving", url=gateway.url, key=key.api_key,
                                                     height=node.chain.height)
                await _until_signal("gateway")
                edges.cancel_scope.cancel()
            node.shutdown()
    return 0


def _oracle(cfg: config_mod.Config, args: argparse.Namespace) -> tuple[OracleSettings, list[PriceRow] | None]:
    """The oracle's settings with the command line's overrides, and its price file's rows
    (None: a random walk). A bad file or start price raises ``ValueError`` here, before
    the node starts, rather than becoming a log line once it runs."""
    import msgspec

    from satchel import oracle as oracle_mod

    settings = cfg.oracle
    if args.oracle_file is not None:
        settings = msgspec.structs.replace(settings, file=args.oracle_file)
    if args.oracle_speed is not None:
        settings = msgspec.structs.replace(settings, speed=args.oracle_speed)
    # checked against the configured markets; the runner checks each update again
    # against the node's own listing when it builds the transaction
    markets = {m.symbol: m for m in cfg.market_specs()}
    if settings.file is not None:
        return settings, oracle_mod.load_prices(settings.file, markets)
    oracle_mod.start_prices(markets, settings, cfg.demo.prices)
    return settings, None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _keygen(_: argparse.Namespace) -> int:
    from satchel.signing import Keypair

    key = Keypair.generate()
    print(f"api_key={key.api_key}")
    print(f"secret={key.secret}")
    return 0


async def _faucet(args: argparse.Namespace) -> int:
    from satchel.tools.client import ReplyError, connect
    from satchel.signing import load_key

    admin_path = Path(args.data) / "admin.key"
    if not admin_path.exists():
        print(f"satchel faucet: no admin key at {admin_path}; start the node with --data {args.data} first", file=sys.stderr)
        return 2
    admin = load_key(Path(args.data), "admin.key")
    async with connect(args.url, admin) as client:
        try:
            result = await client.request("deposit", {"account": args.account, "asset": args.asset, "quantity": args.amount})
        except ReplyError as exc:
            print(f"satchel faucet: {exc}", file=sys.stderr)
            return 1
    print(f"deposited {result['quantity']} {result['asset']} to {result['account']}")
    return 0


async def _request(args: argparse.Namespace, command: str, method: str, key: Any = None, params: dict | None = None) -> Any:
    """One request to the node at ``args.url`` (signed with ``key``, unsigned without):
    the answer, or None once the failure is printed as ``satchel <command>: ...``."""
    from trio_websocket import ConnectionClosed, HandshakeError

    from satchel.tools.client import ReplyError, connect

    failure = None
    try:
        async with connect(args.url, key) as client:
            return await client.request(method, params or {}, sign=key is not None)
    except* (OSError, HandshakeError, ConnectionClosed, ConnectionError) as eg:
        exc = eg.exceptions[0]
        failure = f"cannot reach {args.url}: {str(exc) or str(exc.__cause__ or exc.__context__ or '') or type(exc).__name__}"
    except* ReplyError as eg:
        failure = str(eg.exceptions[0])
    print(f"satchel {command}: {failure}", file=sys.stderr)
    return None


def _show(args: argparse.Namespace, answer: Any, render: Any) -> None:
    """``--json``: the answer as it came; else as ``render`` shows it."""
    if args.json:
        import json

        print(json.dumps(answer, indent=2))
    else:
        render(answer)


async def _stats(args: argparse.Namespace) -> int:
    """The node's ``platformStats``: a table, or with ``--json`` the answer as it came."""
    stats = await _request(args, "stats", "platformStats")
    if stats is None:
        return 1
    _show(args, stats, render_stats)
    return 0


def render_stats(stats: dict) -> None:
    """``platformStats`` as rich tables: totals, markets, open interest, assets."""
    from datetime import datetime, timezone

    from rich.console import Console
    from rich.table import Table

    def show(value: object) -> str:
        return "-" if value is None else str(value)

    unit = stats["valuationAsset"] or ""
    when = datetime.fromtimestamp(stats["E"] / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    console = Console(width=None if sys.stdout.isatty() else 160)  # a pipe or file gets whole rows
    console.print(f"Satchel platform statistics at block {stats['blockHeight']} ({when}, sequenced time)")
    t = Table(title="totals")
    t.add_column("figure")
    t.add_column(f"value ({unit})", justify="right")
    for label, key in (("24 h volume", "volume24h"), ("open interest", "openInterestValue"),
                       ("assets under custody", "custodyValue"), ("total lent", "lentValue"),
                       ("total borrowed", "borrowedValue")):
        t.add_row(label, show(stats[key]))
    console.print(t)
    t = Table(title="markets, 24 h")
    for col in ("symbol", "type", "last", "change", "change %", "high", "low", "volume", "quote volume", "trades"):
        t.add_column(col, justify="left" if col in ("symbol", "type") else "right")
    for m in stats["markets"]:
        pct = m["priceChangePercent"]
        t.add_row(m["symbol"], m["marketType"], show(m["lastPrice"]), show(m["priceChange"]),
                  f"{float(pct) * 100:.2f}%", show(m["high"]), show(m["low"]), m["volume"], m["quoteVolume"],
                  m["trades"])
    console.print(t)
    if stats["openInterest"]:
        t = Table(title="open interest")
        for col in ("symbol", "contracts", "mark", "notional"):
            t.add_column(col, justify="left" if col == "symbol" else "right")
        for r in stats["openInterest"]:
            t.add_row(r["symbol"], r["openInterest"], show(r["markPrice"]), r["notional"])
        console.print(t)
    t = Table(title="assets")
    for col in ("asset", f"price ({unit})", "custody", f"custody ({unit})", "lent", f"lent ({unit})", "borrowed",
                f"borrowed ({unit})"):
        t.add_column(col, justify="left" if col == "asset" else "right")
    for a in stats["assets"]:
        t.add_row(a["symbol"], show(a["price"]), a["custody"], show(a["custodyValue"]), a["lent"], show(a["lentValue"]),
                  a["borrowed"], show(a["borrowedValue"]))
    console.print(t)


async def _status(args: argparse.Namespace) -> int:
    """The node's chains (``chainStatusQuery``): a status line per chain and one per asset
    of its custody books, or with ``--json`` the answer as it came."""
    chains = await _request(args, "status", "chainStatusQuery")
    if chains is None:
        return 1
    _show(args, chains, lambda answer: print("\n".join(chain_status_lines(answer))))
    return 0


def chain_status_lines(chains: list[dict]) -> list[str]:
    """``chainStatusQuery``'s answer as lines: per chain its state (running, or PAUSED and
    why), confirmations, deposits credited and withdrawals queued; per asset the custody
    books (hot wallet, what of it is reserved for withdrawals out, its limit, cold storage)."""
    if not chains:
        return ["no chains listed"]
    lines = []
    for c in chains:
        state = f"PAUSED ({c['reason'] or 'no reason given'})" if c["paused"] else "running"
        lines.append(f"chain {c['chain']} ({c['kind'] or 'not configured here'}): {state}; "
                     f"{c['confirmations']} confirmations, {c['depositsCredited']} deposits credited, "
                     f"{c['queuedWithdrawals']} withdrawals queued")
        for b in c["custody"]:
            limit = b["hotLimit"] if b["hotLimit"] is not None else "none"
            lines.append(f"  {b['symbol']}: hot {b['hot']} (reserved {b['reserved']}, limit {limit}), cold {b['cold']}")
    return lines


async def _reconcile(args: argparse.Namespace) -> int:
    """``reconcileQuery``, signed by the node's admin key: a line per asset and chain (on
    chain, custody books, difference) and per asset (liabilities, chains' books, unbacked).
    Exit status 1 when a chain's difference is not zero, or the node cannot answer."""
    from satchel.signing import load_key

    admin_path = Path(args.data) / "admin.key"
    if not admin_path.exists():
        print(f"satchel reconcile: no admin key at {admin_path}; give the node's --data", file=sys.stderr)
        return 1
    result = await _request(args, "reconcile", "reconcileQuery", load_key(Path(args.data), "admin.key"))
    if result is None:
        return 1
    _show(args, result, lambda answer: print("\n".join(reconcile_lines(answer))))
    return 1 if any(Decimal(c["difference"]) for c in result["chains"]) else 0


async def _rewards(args: argparse.Namespace) -> int:
    """The season's leaderboard (unsigned ``leaderboard``), or with ``--account`` that
    account's breakdown (``rewardsQuery``, signed by the node's admin key from ``--data``)."""
    from satchel.signing import load_key

    season = {"season": str(args.season)} if args.season is not None else {}
    if args.account:
        admin_path = Path(args.data) / "admin.key"
        if not admin_path.exists():
            print(f"satchel rewards: no admin key at {admin_path}; give the node's --data", file=sys.stderr)
            return 1
        answer = await _request(args, "rewards", "rewardsQuery", load_key(Path(args.data), "admin.key"),
                                {"account": args.account, **season})
        render = rewards_lines
    else:
        answer = await _request(args, "rewards", "leaderboard", None, {"limit": str(args.limit), **season})
        render = leaderboard_lines
    if answer is None:
        return 1
    _show(args, answer, lambda a: print("\n".join(render(a))))
    return 0


def leaderboard_lines(board: dict) -> list[str]:
    s = board["season"]
    lines = [f"season {s['id']} \"{s['name']}\": {board['accounts']} accounts with points",
             f"{'rank':>5}  {'account':<44} {'points':>20}"]
    lines += [f"{r['rank']:>5}  {r['account']:<44} {r['points']:>20}" for r in board["rows"]]
    return lines


def rewards_lines(view: dict) -> list[str]:
    s = view["season"]
    lines = [f"season {s['id']} \"{s['name']}\", account {view['account']}",
             f"points {view['points']} (rank {view['rank'] or '-'}), volume {view['volume']} units of {s['asset']}, "
             f"streak {view['streak']} day(s)"]
    lines += [f"  {kind:<11} {pts:>20}" for kind, pts in view["kinds"].items()]
    lines.append("achievements: " + (", ".join(f"{name} (block {h})" for name, h in view["achievements"].items()) or "none"))
    lines.append(f"referral code {view['referralCode'] or '-'}, referrer {view['referrer'] or '-'}, "
                 f"referees {view['referees']}")
    for m in view["multipliers"]:
        to = m["toHeight"] or "on"
        lines.append(f"multiplier x{m['factor'] / 100:g} ({m['scope']} {m['who']}) blocks {m['fromHeight']}..{to}")
    return lines


def reconcile_lines(result: dict) -> list[str]:
    """``reconcileQuery``'s answer as a table an operator reads top-down."""
    lines = [f"{'chain':<10} {'asset':<6} {'on chain':>20} {'books':>20} {'difference':>16}"]
    for c in result["chains"]:
        mark = "" if Decimal(c["difference"]) == 0 else "  <-- differs"
        lines.append(f"{c['chain']:<10} {c['symbol']:<6} {c['onChain']:>20} {c['books']:>20} {c['difference']:>16}{mark}")
    lines.append("")
    lines.append(f"{'asset':<6} {'liabilities':>20} {'chains books':>20} {'unbacked (faucet)':>20}")
    for a in result["assets"]:
        lines.append(f"{a['symbol']:<6} {a['liabilities']:>20} {a['chainBooks']:>20} {a['unbacked']:>20}")
    return lines


async def _admin(args: argparse.Namespace) -> int:
    """Sign an admin transaction with the node's admin key and send it."""
    from satchel.tools.client import ReplyError, connect
    from satchel.signing import load_key

    if args.what == "trading":
        method = "adminSetTrading"
        params = {"enabled": args.state == "on"}
        if args.account:
            params["account"] = args.account
        if args.symbol:
            params["symbol"] = args.symbol
    elif args.what == "chain":
        method = "chainStatus"
        params = {"chain": args.chain, "paused": args.state == "pause", "reason": args.reason or f"admin {args.state}"}
    elif args.what == "sweep":
        method = "approveSweep"
        params = {"chain": args.chain, "symbol": args.asset, "quantity": args.amount}
    elif args.what == "profile":
        method = "adminSetProfile"
        params = {"account": args.account, "kycTier": str(args.tier), "jurisdiction": args.jurisdiction or "",
                  "tags": args.tags or ""}
    elif args.what == "tier":
        method = "adminSetTierLimits"
        params = {"tier": str(args.tier), "maxOrderNotional": args.max_order_notional or ""}
        if args.withdrawals_per_day is not None:
            params["withdrawalsPerDay"] = str(args.withdrawals_per_day)
    elif args.what == "permit":
        method = "adminSetPermission"
        params = {"allowed": {"allow": "true", "deny": "false", "inherit": "inherit"}[args.state]}
        for name in ("account", "jurisdiction", "product", "symbol"):
            if getattr(args, name):
                params[name] = getattr(args, name)
    else:
        method = "adminSetFees"
        params = {"symbol": args.symbol, "makerFeeBps": args.maker, "takerFeeBps": args.taker}
    async with connect(args.url, load_key(Path(args.data), "admin.key")) as client:
        try:
            result = await client.request(method, params)
        except ReplyError as exc:
            print(f"satchel admin: {exc}", file=sys.stderr)
            return 1
    print(f"{method}: {result}")
    return 0


def _faulty_permission_rule() -> None:
    """Test-only hook for the incident drill: a validator with a different spot rule.

    The faulty rule treats a restriction on any one market as a ban on all markets.
    """
    from satchel.actors import risk

    risk.spot_forbidden = lambda rules, symbol: bool(rules)
    structlog.get_logger("satchel").warning("validator.faulty_rule_installed", rule="spot_forbidden")


async def _validator(args: argparse.Namespace) -> int:
    from satchel.verify.validator import Divergence, FollowError, Validator, journal_dir, validator_key

    if args.print_key:
        print(validator_key(args.data).api_key)
        return 0
    if args.journal and journal_dir(args.journal) is None:
        # checking nothing must not read as success
        print(f"satchel validator: no journal segments (*.seg) in {args.journal} or {Path(args.journal) / 'journal'}",
              file=sys.stderr)
        return 2
    if args.test_faulty_permission_rule:
        _faulty_permission_rule()
    v = Validator(args.data, verify_processes=args.verify_processes, snapshot_blocks=args.snapshot_blocks)
    diverged: list[Divergence] = []
    failed: list[FollowError] = []
    try:
        if args.journal:
            height = await v.check_journal(args.journal)
            print(f"validated blocks=1..{height} signatures={v.verified_signatures}")
        else:
            async with trio.open_nursery() as n:  # SIGTERM/Ctrl-C: stop between blocks, journal closed
                n.start_soon(_cancel_on_signal, n.cancel_scope, "validator")
                await (v.follow_nats(args.nats) if args.nats else v.follow(args.follow))
            if v.chain is not None:
                structlog.get_logger("satchel").info("validator.stopped", height=v.chain.height)
    except* Divergence as eg:
        diverged.extend(_leaves(eg))
    except* FollowError as eg:
        failed.extend(_leaves(eg))
    if diverged:
        print(f"satchel validator: {diverged[0]}", file=sys.stderr)
        return 4
    if failed:
        print(f"satchel validator: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _leaves(eg: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in eg.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _until_signal(what: str) -> None:
    """Return at the first SIGINT or SIGTERM (logged as ``<what>.shutdown_requested``)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            structlog.get_logger("satchel").info(f"{what}.shutdown_requested", signal=signal.Signals(signum).name)
            return


async def _cancel_on_signal(scope: trio.CancelScope, what: str) -> None:
    await _until_signal(what)
    scope.cancel()


async def _incident(args: argparse.Namespace) -> int:
    import json as json_mod

    from satchel.verify.incident import investigate, render

    try:
        report = await investigate(args.data, args.from_snapshot)
    except FileNotFoundError as exc:
        print(f"satchel incident: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.data) / f"incident-{report['divergent_height']}.json")
    out.write_text(json_mod.dumps(report, indent=2))
    render(report)
    print(f"report: {out}")
    return 0


async def _compensate(args: argparse.Namespace) -> int:
    """Settle an incident report: losers paid from the treasury, x2 points over the range
    (``satchel.verify.compensate``). Exit 1 if any request was refused, 2 if the report is
    missing or was already compensated."""
    import json as json_mod

    from satchel.signing import load_key
    from satchel.tools.client import ReplyError, connect
    from satchel.verify import compensate

    report_path = Path(args.report)
    if not report_path.exists():
        print(f"satchel compensate: no report {report_path}", file=sys.stderr)
        return 2
    done = compensate.marker(report_path)
    if done.exists():
        print(f"satchel compensate: {report_path} was compensated already (see {done})", file=sys.stderr)
        return 2
    admin = load_key(Path(args.data), "admin.key")
    try:
        requests = compensate.plan(json_mod.loads(report_path.read_text()), args.treasury or admin.api_key, args.to_height)
    except ValueError as exc:
        print(f"satchel compensate: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for method, params in requests:
            print(method, json_mod.dumps(params))
        return 0
    outcomes = []
    async with connect(args.url, admin) as client:
        for method, params in requests:  # in order, each on its own: one refusal does not stop the others
            try:
                outcomes.append({"method": method, "params": params, "result": await client.request(method, params)})
            except ReplyError as exc:
                outcomes.append({"method": method, "params": params,
                                 "error": {"code": str(exc.code), "message": exc.message}})
    compensate.record(report_path, outcomes)
    failed = 0
    for o in outcomes:
        if "error" in o:
            failed += 1
            print(f"REFUSED {o['method']} {json_mod.dumps(o['params'])}: {o['error']['code']} {o['error']['message']}")
        else:
            print(f"done    {o['method']} {json_mod.dumps(o['params'])}")
    print(f"{len(outcomes) - failed} of {len(outcomes)} applied; record: {done}")
    return 1 if failed else 0


def _prove(args: argparse.Namespace) -> int:
    import json as json_mod

    from satchel.ledger import liabilities

    from satchel.ledger import snapshots
    snap = snapshots.newest(Path(args.data) / "snapshots")
    if snap is None:
        print(f"satchel prove: no snapshot in {args.data}/snapshots (run 'satchel snapshot --data {args.data}')", file=sys.stderr)
        return 2
    state = snapshots.decode_state(snap)
    proofs = liabilities.prove(state, args.account, snap.height)
    if not proofs:
        print(f"satchel prove: no balances for {args.account} at height {snap.height}", file=sys.stderr)
        return 1
    recorded = snap.liabilities_root.hex()
    if proofs[0]["root"] != recorded:
        # e.g. a snapshot written by an older version, whose leaves committed to less
        print(f"satchel prove: the snapshot at height {snap.height} records liabilities root {recorded or '(none)'}, "
              f"but its state gives {proofs[0]['root']}; take a new snapshot ('satchel snapshot --data {args.data}')",
              file=sys.stderr)
        return 1
    print(json_mod.dumps(proofs, indent=2))
    return 0


def _verify_proof(args: argparse.Namespace) -> int:
    """Exit 0: every proof is included in the given --root. 1: some proof is invalid or
    not in that root. 3: no --root given, every proof is only self-consistent."""
    import json as json_mod

    from satchel.ledger import liabilities
    def show(value: object) -> str:
        return value if isinstance(value, str) and value.isprintable() and value else repr(value)

    expected = None
    if args.root is not None:
        expected = liabilities.normalize_root(args.root)
        if expected is None:
            print(f"satchel verify-proof: --root must be 64 hex digits, not {args.root!r}", file=sys.stderr)
            return 2
    try:
        text = sys.stdin.read() if args.proof == "-" else Path(args.proof).read_text()
        proofs = json_mod.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"satchel verify-proof: cannot read a proof from {args.proof}: {exc}", file=sys.stderr)
        return 1
    proofs = proofs if isinstance(proofs, list) else [proofs]
    if not proofs:
        print("satchel verify-proof: the file holds no proofs", file=sys.stderr)
        return 1
    bad = 0
    for n, p in enumerate(proofs, 1):
        why = liabilities.check(p, expected)
        if why is not None:
            bad += 1
            got = p if isinstance(p, dict) else {}
            print(f"proof {n} ({show(got.get('account'))} {show(got.get('asset'))}): INVALID: {why}")
            continue
        # every figure shown here is one the leaf hash commits to
        what = f"{show(p['account'])} {show(p['asset'])} {p['balance']} at height {p['height']}"
        if expected is not None:
            print(f"{what}: included in root {expected}")
        else:
            print(f"{what}: self-consistent with the root in the file, {p['root']} (NOT checked against a published root)")
    if bad:
        return 1
    if expected is None:
        print("NOT VERIFIED AS INCLUDED: no --root given, so this shows only that the proof is self-consistent, not "
              "that it is included in a published root; pass --root <the liabilities root the exchange published>")
        return 3
    return 0


async def _snapshot(args: argparse.Namespace) -> int:
    from satchel.ledger.chain import take_snapshot

    snap = await take_snapshot(args.data)
    print(f"height={snap.height} txs={snap.txs} state={snap.state_hash} liabilities_root={snap.liabilities_root.hex()}")
    return 0


async def _replay(args: argparse.Namespace) -> int:
    from satchel.ledger.chain import replay

    blocks, txs, state = await replay(args.data)
    print(f"blocks={blocks} txs={txs} state={state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="satchel", description="Satchel exchange node and tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a node: sequencer, journal, engine, WebSocket gateway")
    p.add_argument("--data", default="./data", help="data directory (journal, admin key)")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="WebSocket port (default 8765; 0 picks a free one)")
    p.add_argument("--config", default=None, help="TOML file replacing the packaged defaults")
    p.add_argument("--no-demo", action="store_true", help="no demo accounts and market maker")
    p.add_argument("--no-chains", action="store_true",
                   help="run no chain adapters here: they run in their own process (satchel chains)")
    oracle = p.add_mutually_exclusive_group()
    oracle.add_argument("--no-oracle", action="store_true",
                        help="no index prices for the perps (their risk-increasing orders are refused)")
    oracle.add_argument("--oracle-file", default=None, metavar="PATH",
                        help="replay index prices from a CSV (timestamp_ms,symbol,price) or JSON file instead of "
                             "the random walk ([oracle] in the config)")
    p.add_argument("--oracle-speed", type=_positive, default=None, metavar="X",
                   help="replay the price file X times faster (default 1)")
    p.add_argument("--rest-port", type=int, default=8767, help="Backpack-compatible REST API (0: any free port, -1: off)")
    p.add_argument("--replication-port", type=int, default=8766, help="block stream for validators (0: any free port, -1: off)")
    p.add_argument("--replication-host", default="127.0.0.1", help="block stream listen address (default 127.0.0.1)")
    p.add_argument("--allow-follower", action="append", default=[], metavar="KEY",
                   help="a validator's API key allowed to follow the block stream (repeatable; also DATA/followers)")
    p.add_argument("--max-followers", type=int, default=8, help="followers streamed to at once (default 8)")

    cl = p.add_argument_group("cluster (satchel.cluster: the block stream on NATS JetStream)")
    cl.add_argument("--nats", metavar="URL", help="sequence in a cluster: publish blocks to JetStream at URL "
                    "(several: comma-separated); a sequencer started beside a live primary is its standby")
    cl.add_argument("--durability", choices=["stream", "journal"], default="stream",
                    help="stream: a block is released once JetStream stored it (failover loses nothing acknowledged); "
                         "journal: once fsynced locally, JetStream a replica (one sequencer)")
    cl.add_argument("--stream-replicas", type=int, default=1, help="copies of the stream when it is created (3 on a cluster)")
    cl.add_argument("--takeover-after", type=_positive, default=3.0, metavar="S",
                    help="take over when the primary's heartbeat has lapsed this long (default 3 s)")
    cl.add_argument("--allow-gateway", action="append", default=[], metavar="KEY",
                    help="a gateway key (satchel gateway --print-key) whose transactions are taken; also DATA/gateways")

    p = sub.add_parser("chains", help="the chains' adapters in a process of their own beside satchel serve --no-chains")
    p.add_argument("--url", default=None, help="the node's WebSocket URL (default from the config: ws://127.0.0.1:8765)")
    p.add_argument("--data", default="./data", help="the node's data directory (chain keys, custody seed, address book)")
    p.add_argument("--config", default=None, help="the node's TOML file, if it has one (the [chains])")
    p.add_argument("--demo", action="store_true", help="demo deposits on the simulated chains, as satchel serve's demo")

    p = sub.add_parser("gateway", help="a gateway process: WebSocket and REST over the block stream on NATS")
    p.add_argument("--nats", metavar="URL", help="the cluster's NATS servers (comma-separated; required unless --print-key)")
    p.add_argument("--data", default="./gateway-data", help="its journal copy, history and gateway.key")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="WebSocket port (0 picks a free one)")
    p.add_argument("--rest-port", type=int, default=-1, help="REST API port (0: any free port, -1: off, the default)")
    p.add_argument("--config", default=None, help="TOML file replacing the packaged defaults (gateway settings)")
    p.add_argument("--print-key", action="store_true", help="print this gateway's key for the sequencers' allow-list")

    sub.add_parser("keygen", help="print a new Ed25519 key pair")

    p = sub.add_parser("stats", help="platform statistics: 24 h volume, open interest, custody, lending, tickers")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--json", action="store_true", help="print the platformStats answer as JSON")

    p = sub.add_parser("rewards", help="a points season's leaderboard, or one account's breakdown")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--season", type=int, help="a season id (default: the latest)")
    p.add_argument("--limit", type=int, default=20, help="leaderboard rows")
    p.add_argument("--account", help="an account's breakdown, read with the admin key from --data")
    p.add_argument("--data", default="./data")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")

    p = sub.add_parser("status", help="the chains: paused or running, custody books, queued withdrawals")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--json", action="store_true", help="print the chainStatusQuery answer as JSON")

    p = sub.add_parser("reconcile", help="per asset and chain: what the chain holds against the custody books")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--data", default="./data", help="the node's data directory (for its admin key)")
    p.add_argument("--json", action="store_true", help="print the reconcileQuery answer as JSON")

    p = sub.add_parser("faucet", help="deposit to an account, signed by the node's admin key")
    p.add_argument("--account", required=True, help="API key (base64 public key)")
    p.add_argument("--asset", default="USDC")
    p.add_argument("--amount", default="10000")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--data", default="./data", help="the node's data directory (for its admin key)")

    p = sub.add_parser("admin", help="admin transactions signed by the node's admin key")
    asub = p.add_subparsers(dest="what", required=True)
    t = asub.add_parser("trading", help="spot trading on/off for an account and/or a market")
    t.add_argument("state", choices=["on", "off"])
    t.add_argument("--account")
    t.add_argument("--symbol")
    f = asub.add_parser("fees", help="set a market's fee schedule (basis points)")
    f.add_argument("--symbol", required=True)
    f.add_argument("--maker", type=int, required=True)
    f.add_argument("--taker", type=int, required=True)
    c = asub.add_parser("chain", help="pause or resume a chain's deposits and withdrawals (trading goes on)")
    c.add_argument("state", choices=["pause", "resume"])
    c.add_argument("--chain", required=True)
    c.add_argument("--reason", help="shown in satchel status and the chainStatus stream")
    w = asub.add_parser("sweep", help="approve moving funds from cold storage to a chain's hot wallet")
    w.add_argument("--chain", required=True)
    w.add_argument("--asset", required=True)
    w.add_argument("--amount", required=True, help="a decimal in the asset's units")
    pr = asub.add_parser("profile", help="an account's KYC tier, jurisdiction and tags (compliance)")
    pr.add_argument("--account", required=True, help="the account's API key")
    pr.add_argument("--tier", type=int, required=True, help="KYC tier, 0-255")
    pr.add_argument("--jurisdiction", help="a jurisdiction code, e.g. US")
    pr.add_argument("--tags", help="comma-separated tags, e.g. community-a,vip")
    ti = asub.add_parser("tier", help="a KYC tier's limits (compliance)")
    ti.add_argument("--tier", type=int, required=True)
    ti.add_argument("--withdrawals-per-day", type=int, help="withdrawals a UTC day (omit: no limit)")
    ti.add_argument("--max-order-notional", help="largest order notional per quote asset, e.g. USDC:10000")
    pe = asub.add_parser("permit", help="allow, deny or inherit a product or market for an account or jurisdiction")
    pe.add_argument("state", choices=["allow", "deny", "inherit"])
    pe.add_argument("--account")
    pe.add_argument("--jurisdiction", help="a jurisdiction code, or '*' for every jurisdiction")
    pe.add_argument("--product", choices=["spot", "perps", "margin", "lending", "withdrawals"])
    pe.add_argument("--symbol", help="a market (region restriction)")
    for q in (t, f, c, w, pr, ti, pe):
        q.add_argument("--url", default="ws://127.0.0.1:8765")
        q.add_argument("--data", default="./data")

    p = sub.add_parser("loadtest", help="drive a node with many traders; latency histograms and correctness checks")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running node, e.g. ws://127.0.0.1:8765")
    target.add_argument("--embedded", action="store_true", help="start a node in a temporary data dir (default without --url)")
    p.add_argument("--data", help="the running node's data dir, to fund traders with its admin key")
    p.add_argument("--keys", help="file of trader secrets (one per line), already funded")
    p.add_argument("--traders", type=int, default=20)
    p.add_argument("--rate", default="max", help="total orders/s (open loop) or 'max' (closed loop)")
    p.add_argument("--inflight", type=int, default=8, help="requests outstanding per trader with --rate max")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--subscribers", type=int, default=4)
    p.add_argument("--slow-subscribers", type=int, default=0)
    p.add_argument("--scenario", choices=["mm", "takers", "mixed", "perps"], default="mixed",
                   help="perps: leveraged perp traders, an index crash, liquidations; makers lend and borrow SOL, "
                        "idle balances auto-lent (embedded only)")
    p.add_argument("--markets", nargs="+", default=None)
    p.add_argument("--workers", type=int, default=None, help="trader processes (default: CPU count)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--max-error-rate", type=float, default=None, help="fail if errors/sent exceeds this")
    p.add_argument("--max-p99-ms", type=float, default=None, help="fail if the ack p99 exceeds this")
    p.add_argument("--config", default=None)
    p.add_argument("--seed", type=int, default=1)

    p = sub.add_parser("validator", help="replay and check every block of a node (or a journal)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--follow", help="the node's replication endpoint, e.g. ws://127.0.0.1:8766")
    src.add_argument("--nats", metavar="URL", help="follow the block stream on NATS JetStream, e.g. nats://127.0.0.1:4222 "
                     "(several: comma-separated)")
    src.add_argument("--journal", help="check a journal offline: its directory or the node's data directory")
    src.add_argument("--print-key", action="store_true",
                     help="print this validator's API key (created in DATA/validator.key) for the node's allow-list")
    p.add_argument("--data", default="./validator-data", help="the validator's own journal, snapshots and reports")
    p.add_argument("--verify-processes", type=int, default=0,
                   help="signature checks: 0 = two worker threads (default), N = N worker processes, -1 = none")
    p.add_argument("--snapshot-blocks", type=int, default=10_000)
    p.add_argument("--test-faulty-permission-rule", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("incident", help="roll back a diverged node and report per-account differences")
    p.add_argument("--data", required=True, help="the diverged node's (validator's) data directory")
    p.add_argument("--from-snapshot", type=int, default=None, help="roll back to the snapshot at or below this height")
    p.add_argument("--out", default=None, help="JSON report path (default DATA/incident-<height>.json)")

    p = sub.add_parser("compensate", help="settle an incident report: losers paid from a treasury, x2 points over the range")
    p.add_argument("--report", required=True, help="the incident-<height>.json that satchel incident wrote")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--data", default="./data", help="the node's data directory (its admin.key signs)")
    p.add_argument("--treasury", help="the API key of the account paying the losers (default: the admin key's)")
    p.add_argument("--to-height", type=int, default=None, help="last block of the affected range (default: the divergent one)")
    p.add_argument("--dry-run", action="store_true", help="print the requests without sending them")

    p = sub.add_parser("prove", help="inclusion proof of an account's balances in the newest snapshot's liabilities root")
    p.add_argument("--data", default="./data")
    p.add_argument("--account", required=True)

    p = sub.add_parser("verify-proof", help="check an inclusion proof against a published root, offline "
                                            "(exit 0 included, 1 invalid, 3 no --root: only self-consistent)")
    p.add_argument("proof", nargs="?", default="-", help="proof JSON file (default: stdin)")
    p.add_argument("--root", default=None,
                   help="the published liabilities root to check against (hex); without it the proof is only "
                        "checked against itself and the exit status is 3")

    p = sub.add_parser("snapshot", help="write a snapshot of the state at the journal's end")
    p.add_argument("--data", default="./data")

    p = sub.add_parser("replay", help="rebuild state from the journal; prints blocks, txs and the state hash")
    p.add_argument("--data", default="./data")

    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "prove":
            return _prove(args)
        if args.command == "verify-proof":
            return _verify_proof(args)
        if args.command == "loadtest":
            from satchel.tools.loadtest.runner import run as loadtest

            if not args.url:
                args.embedded = True
            return loadtest(args)
        runner = {"serve": _serve, "faucet": _faucet, "replay": _replay, "admin": _admin, "snapshot": _snapshot,
                  "validator": _validator, "gateway": _gateway, "chains": _chains, "incident": _incident, "compensate": _compensate, "stats": _stats, "rewards": _rewards, "status": _status,
                  "reconcile": _reconcile}[args.command]
        with fatal_errors_unwrapped():  # the serve/validator nurseries wrap them in groups
            return trio.run(runner, args)
    except config_mod.ConfigError as exc:
        print(f"satchel: {exc}", file=sys.stderr)
        return 2
    except (JournalCorrupt, DivergedError) as exc:
        # one line, and exit status 3: the systemd unit does not restart into the same failure
        structlog.get_logger("satchel").error("node.refused_journal", error=str(exc))
        return 3
    except TooLarge as exc:
        # exit status 3, as for a journal it cannot take: restarted, it would stop at the same block
        structlog.get_logger("satchel").error("node.block_too_large", error=str(exc))
        return 3
    except Fenced as exc:
        # exit status 5: restarted, the node follows the stream again as the standby
        structlog.get_logger("satchel").error("node.fenced", error=str(exc),
                                              why="another sequencer extended the chain; this one stopped")
        return 5
    except BusError as exc:
        structlog.get_logger("satchel").error("node.nats_failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
