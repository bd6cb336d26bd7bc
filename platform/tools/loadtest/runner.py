"""Orchestrating a load test: node, funding, worker processes, live progress, checks."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue as queue_mod
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from satchel import config as config_mod
from satchel.tools.client import ReplyError, connect, free_port
from satchel.tools.loadtest import lending
from satchel.tools.loadtest import perps as perps_mod
from satchel.tools.loadtest.feed import run_feed
from satchel.tools.loadtest.plan import LendPlan, market_plans, roles
from satchel.tools.loadtest.report import decimal_text, merge, render, summary, verdict
from satchel.tools.loadtest.trader import run_worker
from satchel.signing import load_key
from satchel.signing import Keypair

FUNDING = {"USDC": "10000000", "BTC": "1000", "ETH": "10000", "SOL": "1000000"}
START_S = 2.0  # from spawning the worker processes to their start: spawned interpreters need a moment to import


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class NodeFailed(RuntimeError):
    """The embedded node exited, or never became usable."""


async def _wait_ready(url: str, proc: subprocess.Popen | None, symbol: str) -> None:
    with trio.fail_after(30):
        while True:
            if proc is not None and proc.poll() is not None:
                raise NodeFailed(f"the embedded node exited during start-up (status {proc.returncode})")
            try:
                async with connect(url) as c:
                    await c.request("depth", {"symbol": symbol}, sign=False)
                return
            except* (OSError, Exception):
                await trio.sleep(0.1)


Deposits = list[tuple[str, str, str]]  # (account, asset, quantity)


async def _fund(url: str, admin: Keypair, deposits: Deposits) -> None:
    """Deposits through the node's faucet method, signed by its admin key."""
    async with connect(url, admin) as c:
        for account, asset, quantity in deposits:
            await c.request("deposit", {"account": account, "asset": asset, "quantity": quantity})


def _deposited(deposits: Deposits) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for _, asset, quantity in deposits:
        out[asset] = out.get(asset, Decimal(0)) + Decimal(quantity)
    return out


async def _accounts(url: str, keys: list[Keypair], perps: bool) -> dict[str, dict]:
    """Per account: its holdings per asset (``lending.holdings``, from ``collateralQuery``:
    net of lends and debts, lent, borrowed, free) and, for perps, ``perps.read_account``'s figures."""
    out = {}
    for key in keys:
        async with connect(url, key) as c:
            collateral = await c.request("collateralQuery")
            out[key.api_key] = {"holdings": lending.holdings(collateral),
                                **(await perps_mod.read_account(c, collateral) if perps else {})}
    return out


def _holdings(accounts: dict[str, dict], settlement_asset: str | None) -> dict[str, Decimal]:
    """The accounts' net holdings per asset (free + held + lent - borrowed), the settlement
    asset's less the positions' net costs (``ledgerTotals`` counts unsettled PnL so)."""
    totals: dict[str, Decimal] = {}
    for a in accounts.values():
        for asset, held in a["holdings"].items():
            totals[asset] = totals.get(asset, Decimal(0)) + held.net
    if settlement_asset is not None:
        totals[settlement_asset] = totals.get(settlement_asset, Decimal(0)) - perps_mod.net_costs(accounts)
    return totals


def _unmoved(first: dict[str, dict], second: dict[str, dict]) -> bool:
    """The two reads saw the same balances, positions and liquidations (equity follows the
    mark, which moves on: it is left out)."""
    def still(accounts: dict[str, dict]) -> dict:
        return {k: {f: v for f, v in a.items() if f != "equity"} for k, a in accounts.items()}
    return still(first) == still(second)


LEDGER_FIGURES = ("deposits", "withdrawals", "fees", "balances")


class LedgerTotalsUnavailable(Exception):
    """The node gave no usable ``ledgerTotals`` answer."""


async def _ledger_totals(url: str) -> dict[str, dict[str, Decimal]]:
    """The node's own per-asset totals (unsigned ``ledgerTotals``): deposits, withdrawals,
    fees (with the insurance fund) and balances (every account's free + held, less unsettled
    PnL, plus the lending pool's cash), read from one state."""
    async with connect(url) as c:
        reply = await c.request("ledgerTotals", sign=False, raw=True)
    # checked out here: an exception inside ``connect`` would come wrapped in an ExceptionGroup
    if "error" in reply:
        raise LedgerTotalsUnavailable(f"the node does not answer ledgerTotals: {reply['error']}")
    try:
        return {asset: {k: Decimal(str(figures[k])) for k in LEDGER_FIGURES} for asset, figures in reply["result"].items()}
    except (KeyError, TypeError, AttributeError, ArithmeticError) as exc:
        raise LedgerTotalsUnavailable(f"malformed ledgerTotals reply {reply!r:.300} ({exc!r})") from None


@dataclass
class Reading:
    totals: dict[str, dict[str, Decimal]]  # ledgerTotals
    accounts: dict[str, dict]  # ``_accounts``
    open_interest: dict[str, Decimal]  # perps only
    pools: dict[str, dict[str, Decimal]]  # ``lending.read_pools``
    settled: bool  # nothing moved while it was read


async def _settled(url: str, keys: list[Keypair], perps: bool = False, tries: int = 5) -> Reading:
    """The node's totals, its lending pools and the accounts' figures, read while the ledger
    stands still: the totals and pools are read before and after the accounts, and the
    accounts twice, and each pair must agree (else read again). Both reads count: a zero-sum
    move between accounts (a fee-free fill, a PnL settlement) leaves the totals as they
    were. Interest accrues every block while anything is borrowed: claims and debts move,
    so a reading stands still only once no debt is left (``lending.repay``)."""
    for _ in range(tries):
        before, pools_before = await _ledger_totals(url), await lending.read_pools(url)
        accounts = await _accounts(url, keys, perps)
        open_interest = await perps_mod.read_open_interest(url) if perps else {}
        after, pools = await _ledger_totals(url), await lending.read_pools(url)
        if before == after and pools_before == pools and _unmoved(accounts, await _accounts(url, keys, perps)):
            return Reading(after, accounts, open_interest, pools, True)
        await trio.sleep(0.5)
    return Reading(after, accounts, open_interest, pools, False)


async def _node_stats(url: str, reset_with: Keypair | None = None) -> dict | None:
    """The node's per-stage latency percentiles (``nodeStats``); None if it has none.
    Given the node's admin key, the statistics are reset afterwards."""
    try:
        async with connect(url, reset_with) as c:
            reset = reset_with is not None
            return (await c.request("nodeStats", {"reset": True} if reset else None, sign=reset))["stages"]
    except ReplyError:
        return None


def conservation(deposited: dict[str, Decimal], traders: dict[str, Decimal], totals: dict[str, dict[str, Decimal]],
                 stream_fees: dict[str, Decimal] | None = None, reserves: dict[str, Decimal] | None = None,
                 allowed: dict[str, Decimal] | None = None) -> tuple[dict[str, dict[str, str]], bool]:
    """Money is conserved, by the node's own figures (``totals`` from ``ledgerTotals``, whose
    balances include the lending pools' cash) when the load test made every deposit
    (``deposited``) and ``traders`` are its traders' net holdings (free + held + lent -
    borrowed). Per asset:

    * ``ledger``: deposits - withdrawals - (balances + fees), the node's books: zero;
    * ``deposits``: the node's deposits - what the load test deposited (the only depositor): zero;
    * ``traders``: deposited - withdrawals - (traders' holdings + the node's fees + the
      pool's reserve, ``reserves``): what the rounding of claims (down) and debts (up)
      keeps in the pool beyond its reserve, from zero to ``allowed`` (``lending.rounding_allowed``;
      zero when nothing is lent or borrowed).

    Fees seen on the traders' private streams (``stream_fees``) are shown but not used:
    a trader stops reading its stream when its own orders are settled, so a maker fill
    that lands after that is missing from them.
    """
    zero = Decimal(0)
    rows: dict[str, dict[str, str]] = {}
    ok = True
    for asset in sorted(set(deposited) | set(totals)):
        t = totals.get(asset, {})
        dep, wd, fees, bal = (t.get(k, zero) for k in LEDGER_FIGURES)
        mine, given = traders.get(asset, zero), deposited.get(asset, zero)
        reserve, slack = (reserves or {}).get(asset, zero), (allowed or {}).get(asset, zero)
        diffs = {"ledger": dep - wd - bal - fees, "deposits": dep - given, "traders": given - wd - mine - fees - reserve}
        ok = ok and diffs["ledger"] == 0 and diffs["deposits"] == 0 and zero <= diffs["traders"] <= slack
        figures = {"deposited": given, "node_deposits": dep, "node_withdrawals": wd, "node_fees": fees,
                   "node_balances": bal, "traders_balances": mine, "pool_reserve": reserve,
                   **{f"{k}_diff": v for k, v in diffs.items()}, "traders_rounding_allowed": slack}
        rows[asset] = {k: decimal_text(v) for k, v in figures.items()}
        if stream_fees is not None:
            rows[asset]["stream_fees"] = decimal_text(stream_fees.get(asset, zero))
    return rows, ok


def check_conservation(url: str, keys: list[Keypair], deposited: dict[str, Decimal],
                       stream_fees: dict[str, Decimal] | None = None, perps: perps_mod.Markets | None = None,
                       cohort: list[LendPlan | None] | None = None, decimals: dict[str, int] | None = None) -> dict:
    """The report's conservation fields, from the node once every trader is done: money
    (``conservation``) and every lending pool's solvency (``lending.pool_checks``); given
    the ``perps`` traded, also the perp checks (``perps.checks``), and given the lending
    ``cohort`` (each key's ``LendPlan``, in the order of ``keys``), the interest
    (``lending.interest``), all on the same reading. ``decimals``: each asset's (default:
    the default configuration's), for the rounding allowed."""
    try:
        reading = trio.run(_settled, url, keys, perps is not None)
    except LedgerTotalsUnavailable as exc:
        return {"conservation_ok": None, "conservation_error": str(exc)}
    if decimals is None:
        decimals = config_mod.load().decimals()
    settle = perps.settlement_asset if perps else None
    allowed = lending.rounding_allowed(reading.accounts, decimals)
    rows, ok = conservation(deposited, _holdings(reading.accounts, settle), reading.totals, stream_fees,
                            lending.reserves(reading.pools), allowed)
    out = {"conservation": rows, "conservation_ok": ok}
    if not reading.settled:
        out["conservation_unsettled"] = True  # the node's ledger kept moving while it was read
    if reading.pools:
        out["pools"], out["pools_ok"] = lending.pool_checks(reading.pools)
    if cohort and any(cohort):
        out["interest"], out["interest_ok"] = lending.interest(reading.accounts, keys, cohort, reading.pools, allowed)
    if perps:
        out.update(perps_mod.checks(reading.accounts, reading.open_interest, perps.symbols))
    return out


def _progress_table(elapsed: float, rate: float, p99_ms: float, acked: int, errors: int) -> Table:
    t = Table(show_header=True, header_style="bold")
    for col in ("elapsed s", "acked/s (last 1 s)", "ack p99 ms (last 1 s)", "acked", "errors"):
        t.add_column(col, justify="right")
    t.add_row(f"{elapsed:.1f}", f"{rate:,.0f}", f"{p99_ms:.2f}", f"{acked:,}", f"{errors:,}")
    return t


def _start_node(directory: str, port: int, serve_args: list[str]) -> subprocess.Popen:
    log = open(Path(directory) / "node.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "satchel.tools.cli", "serve", "--data", directory, "--port", str(port),
                             "--no-demo", "--replication-port", "-1", "--rest-port", "-1", *serve_args], stderr=log)


def _log_tail(directory: str | None, lines: int = 5) -> str:
    """The embedded node's last log lines: why it failed."""
    if directory is None:
        return ""
    try:
        return "\n".join((Path(directory) / "node.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    cfg = config_mod.load(args.config)
    perps = args.scenario == "perps"
    if perps and (args.url or args.keys):
        console.print("--scenario perps needs --embedded: the load test writes the node's index prices and "
                      "configuration and makes every deposit")
        return 2
    plans = market_plans(cfg, args.markets, perps)
    if not plans:
        console.print("no markets to trade (check --markets)")
        return 2
    rate = None if args.rate == "max" else float(args.rate)
    node_proc = None
    tmp = None
    if args.keys:
        keys = [Keypair.from_secret(s) for s in Path(args.keys).read_text().split()][: args.traders]
    else:
        keys = [Keypair.generate() for _ in range(args.traders)]
    role_list = roles(args.scenario, len(keys))
    crash = None
    if perps:
        text = Path(args.config).read_text() if args.config else config_mod.DEFAULTS.read_text()
        crash = perps_mod.CrashRun(cfg, text, plans, keys, role_list, args.warmup, args.duration, args.seed)
        deposits = crash.deposits()
    else:
        assets = sorted({a for p in plans for a in p.symbol.split("_")})
        deposits = [(k.api_key, a, FUNDING[a]) for k in keys for a in assets]
    try:
        if args.embedded:
            tmp = tempfile.mkdtemp(prefix="satchel-loadtest-")
            port = free_port()
            url = f"ws://127.0.0.1:{port}"
            serve_args = crash.serve_args(Path(tmp)) if crash else ["--config", args.config] if args.config else []
            node_proc = _start_node(tmp, port, serve_args)
            data = Path(tmp)
        else:
            url = args.url
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            data = Path(args.data) if args.data else None
        trio.run(_wait_ready, url, node_proc, plans[0].symbol)
        if crash:
            index_seen = trio.run(perps_mod.wait_for_index, url, crash.markets.symbols)
            if index_seen is None:
                raise NodeFailed("the embedded node has no index prices: its oracle did not replay the index file")
        if not args.keys:
            if data is None or not (data / "admin.key").exists():
                console.print("to fund traders against an external node give --data DIR (its admin key) or --keys FILE")
                return 2
            console.print(f"funding {len(keys)} traders through the faucet...")
            trio.run(_fund, url, load_key(data, "admin.key"), deposits)
        start_after = 0.0
        if crash:
            trio.run(crash.set_leverage, url)
            start_after = index_seen + crash.timeline.start_s  # so that the crash falls into the measured run
        if data is not None and (data / "admin.key").exists():  # stage latencies from here on: the traders' run
            trio.run(_node_stats, url, load_key(data, "admin.key"))
        cohort = crash.lending if crash and any(crash.lending) else None
        pools_before = trio.run(lending.read_pools, url) if cohort else {}
        report = _drive(args, console, url, port, keys, role_list, plans, rate, node_proc, start_after, cohort)
        report["node_stages_us"] = trio.run(_node_stats, url)
        if crash:
            report["perps"] = crash.describe(index_seen, report["config"]["start_at"])
        if cohort:
            # the pools as the traders left them; then the borrowers repay, so the reading stands still
            report["lending"] = {"plan": crash.describe_lending(), "before": lending.pool_rows(pools_before),
                                 "end_of_run": lending.pool_rows(trio.run(lending.read_pools, url)),
                                 "still_owed": trio.run(lending.repay, url, keys, cohort)}
        if node_proc is not None and not args.keys:
            # every trader is done: the verdict comes from the node's own figures
            stream_fees = {k: Decimal(v) for k, v in report.pop("_fees").items()}
            accounts = keys + ([crash.backstop] if crash else [])
            decimals = cfg.decimals()
            report["correctness"].update(check_conservation(url, accounts, _deposited(deposits), stream_fees,
                                                            crash.markets if crash else None, cohort, decimals))
        else:
            report.pop("_fees", None)
    except NodeFailed as exc:
        console.print(f"[red]{exc}[/red]\n{_log_tail(tmp)}")
        return 2
    finally:
        if node_proc is not None:
            node_proc.send_signal(signal.SIGTERM)
            try:
                node_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node_proc.kill()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    failures = verdict(report, args.max_error_rate, args.max_p99_ms)
    report["passed"] = not failures
    report["failures"] = failures
    render(report, console)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    for why in failures:
        console.print(f"[red]FAIL[/red] {why}")
    return 0 if not failures else 1


def _drive(args, console, url, port, keys, role_list, plans, rate, node_proc, start_after: float = 0.0,
           cohort: list[LendPlan | None] | None = None) -> dict:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    n_workers = max(1, min(args.workers or os.cpu_count() or 1, len(keys)))
    start_at = max(time.time() + START_S, start_after)  # wall clock
    wcfg = {"rate": (rate / len(keys)) if rate else None, "inflight": args.inflight, "duration": args.duration,
            "warmup": args.warmup, "seed": args.seed, "start_at": start_at}
    markets = [p.__dict__ for p in plans]
    procs = []
    for w in range(n_workers):
        idx = list(range(w, len(keys), n_workers))
        lend = [cohort[i].to_dict() if cohort and cohort[i] else None for i in idx]
        procs.append(ctx.Process(target=run_worker, args=(w, url, [keys[i].secret for i in idx], [role_list[i] for i in idx],
                                                          markets, wcfg, q, lend)))
    symbols = [p.symbol for p in plans]
    if args.subscribers or args.slow_subscribers:
        procs.append(ctx.Process(target=run_feed, args=(url, port, symbols, args.subscribers, args.slow_subscribers, wcfg, q)))
    for p in procs:
        p.start()
    finals: list[dict] = []
    feed: dict = {}
    windows: dict[int, bytes] = {}
    acked: dict[int, int] = {}
    errors: dict[int, int] = {}
    history: list[tuple[float, int]] = []
    rss = [_rss_mb(node_proc.pid)] if node_proc else []
    expected = len(procs)
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while len(finals) + (1 if feed else 0) < expected:
            try:
                msg = q.get(timeout=0.25)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if msg["type"] == "progress":
                windows[msg["worker"]] = msg["window"]
                acked[msg["worker"]] = msg["acked"]
                errors[msg["worker"]] = msg["errors"]
                now = time.time()
                total = sum(acked.values())
                history.append((now, total))
                past = [h for h in history if h[0] <= now - 1.0]
                rate_now = (total - past[-1][1]) / (now - past[-1][0]) if past else 0.0
                p99 = merge(list(windows.values())).get_value_at_percentile(99) / 1000
                if node_proc:
                    rss.append(_rss_mb(node_proc.pid))
                live.update(_progress_table(max(0.0, now - start_at), rate_now, p99, total, sum(errors.values())))
            elif msg["type"] == "traders":
                finals.append(msg)
            elif msg["type"] == "feed":
                feed = msg
    for p in procs:
        p.join(timeout=30)
    sent = sum(f["sent"] for f in finals)
    acked_total = sum(f["acked"] for f in finals)
    errs: dict[str, int] = {}
    fees: dict[str, Decimal] = {}
    borrow_lend: dict[str, int] = {}
    for f in finals:
        for k, v in f.get("lending", {}).items():
            borrow_lend[k] = borrow_lend.get(k, 0) + v
        for k, v in f["errors"].items():
            errs[k] = errs.get(k, 0) + v
        for k, v in f["fees"].items():
            fees[k] = fees.get(k, Decimal(0)) + Decimal(v)
    n_err = sum(errs.values())
    ack_hist = merge([f["hist"] for f in finals])
    rss_values = [r for r in rss if r is not None]
    return {
        "config": {"url": url, "embedded": bool(args.embedded), "traders": len(keys), "workers": n_workers,
                   "scenario": args.scenario, "rate": rate, "inflight": args.inflight, "duration": args.duration,
                   "warmup": args.warmup, "markets": symbols, "subscribers": args.subscribers, "start_at": start_at},
        "orders": {"sent": sent, "acked": acked_total, "errors": n_err, "errors_by_code": errs,
                   "error_rate": n_err / sent if sent else 0.0,
                   # replies after the warm-up, over the measured duration
                   "acked_per_s": ack_hist.get_total_count() / args.duration if args.duration else 0.0,
                   "cancel_races": sum(f["cancel_races"] for f in finals),
                   "borrow_lend_acked": dict(sorted(borrow_lend.items()))},
        "ack_latency_us": summary(ack_hist),
        "fill_to_trade_us": summary(merge([feed.get("trade_lag", b"")])),
        "feed_lag_us": summary(merge([feed.get("lag", b"")])),
        "feed": {"subscribers": args.subscribers, "frames": feed.get("frames", 0),
                 "frames_per_s": feed.get("frames", 0) / args.duration if args.duration else 0.0,
                 "disconnects": feed.get("disconnects", 0)},
        "correctness": {"acked_orders": sum(f["acked_orders"] for f in finals), "lost_acks": sum(f["lost_acks"] for f in finals),
                        "depth_gaps": feed.get("gaps", 0), "book_mismatches": feed.get("mismatches", 0),
                        "books_checked": feed.get("checked", 0), "trader_disconnects": sum(f["disconnects"] for f in finals)},
        "slow_subscribers": {"count": feed.get("slow", 0), "dropped": feed.get("slow_dropped", 0),
                             "rss_start_mb": rss_values[0] if rss_values else None,
                             "rss_max_mb": max(rss_values) if rss_values else None},
        "_fees": {k: str(v) for k, v in fees.items()},
    }
