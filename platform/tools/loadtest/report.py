"""Merging worker results into one report: HdrHistogram percentiles, table, JSON, verdict."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from satchel.tools.loadtest.trader import new_hist

PERCENTILES = (50, 90, 99, 99.9)


def merge(encoded: list[bytes]) -> HdrHistogram:
    h = new_hist()
    for e in encoded:
        if e:
            h.decode_and_add(e)
    return h


def summary(h: HdrHistogram) -> dict[str, Any]:
    """Percentiles in microseconds (count 0: all zero)."""
    out: dict[str, Any] = {"count": h.get_total_count()}
    for p in PERCENTILES:
        out[f"p{p:g}"] = h.get_value_at_percentile(p) if out["count"] else 0
    out["max"] = h.get_max_value() if out["count"] else 0
    return out


def decimal_text(v: Decimal) -> str:
    """A decimal without exponent or trailing zeros ("19.30" -> "19.3")."""
    return format(v.normalize(), "f") if v else "0"


def verdict(report: dict, max_error_rate: float | None, max_p99_ms: float | None) -> list[str]:
    """Reasons the run fails its thresholds and correctness checks (empty: passed)."""
    why = []
    o = report["orders"]
    if max_error_rate is not None and o["error_rate"] > max_error_rate:
        why.append(f"error rate {o['error_rate']:.4f} > {max_error_rate}")
    if max_p99_ms is not None and report["ack_latency_us"]["p99"] > max_p99_ms * 1000:
        why.append(f"ack p99 {report['ack_latency_us']['p99'] / 1000:.1f} ms > {max_p99_ms} ms")
    c = report["correctness"]
    if c["lost_acks"]:
        why.append(f"{c['lost_acks']} acknowledged orders never appeared in account.orderUpdate")
    if c["depth_gaps"]:
        why.append(f"{c['depth_gaps']} depth gaps")
    if c["book_mismatches"]:
        why.append(f"{c['book_mismatches']} local books differ from the snapshot")
    if c.get("conservation_error"):
        why.append(f"conservation not checked: {c['conservation_error']}")
    elif c.get("conservation_ok") is False:
        off = [f"{asset} {k.removesuffix('_diff')} off by {v}" for asset, row in c.get("conservation", {}).items()
               for k, v in row.items() if k.endswith("_diff") and not _within(k, Decimal(v), row)]
        why.append("by the node's ledgerTotals, balances plus fees do not add up to the deposits: " + "; ".join(off))
    return why + _lending_verdict(report) + _perp_verdict(report)


def _within(key: str, diff: Decimal, row: dict) -> bool:
    """A conservation difference is as it must be: zero, or for the traders' side what the
    pools' rounding may keep (``runner.conservation``)."""
    if key == "traders_diff":
        return 0 <= diff <= Decimal(row.get("traders_rounding_allowed", "0"))
    return diff == 0


def _lending_verdict(report: dict) -> list[str]:
    """The pools' solvency, the interest and the final repay (``lending``)."""
    c = report["correctness"]
    why = []
    if c.get("pools_ok") is False:
        off = [f"{a} (cash + borrowed - lent - reserve = {r['surplus_diff']})" for a, r in c["pools"].items() if not r["solvent"]]
        why.append("lending pools not solvent: " + "; ".join(off))
    if c.get("interest_ok") is False:
        off = [f"{a}: borrowers paid {r['borrowers_interest']}, lenders earned {r['lenders_interest']}, reserve "
               f"{r['reserve']}: {r['rounding']} left over (0 to {r['rounding_allowed']} allowed)"
               for a, r in c["interest"].items() if not r["ok"]]
        why.append("interest does not add up: " + "; ".join(off))
    owed = {k: v for k, v in report.get("lending", {}).get("still_owed", {}).items() if Decimal(v) != 0}
    if owed:
        why.append(f"borrows still open after the final repay: {', '.join(f'{k[:8]} {v}' for k, v in owed.items())}")
    return why


def _perp_verdict(report: dict) -> list[str]:
    """The perps scenario's checks (``perps.checks``): open interest, equity, liquidations."""
    c = report["correctness"]
    why = []
    if c.get("open_interest_ok") is False:
        off = [f"{s} long {r['long']} short {r['short']} node {r['node']}" for s, r in c["open_interest"].items()
               if not r["long"] == r["short"] == r["node"]]
        why.append("open interest does not balance: " + "; ".join(off))
    if c.get("negative_equity"):
        why.append(f"below zero equity without an insurance-fund or ADL step: {', '.join(c['negative_equity'])}")
    if "perps" in report and "liquidation_tiers" in c and not c["liquidation_tiers"]:
        why.append("the crash liquidated nobody")
    return why


def _ms(us: int) -> str:
    return f"{us / 1000:.2f}"


def render(report: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    o = report["orders"]
    t = Table(title=f"satchel loadtest: {report['config']['scenario']}, {report['config']['traders']} traders, "
                    f"rate {report['config']['rate'] or 'max'}, {report['config']['duration']}s")
    t.add_column("measure")
    for p in PERCENTILES:
        t.add_column(f"p{p:g} ms", justify="right")
    t.add_column("max ms", justify="right")
    t.add_column("count", justify="right")
    for label, key in (("order ack latency", "ack_latency_us"), ("fill -> trade stream", "fill_to_trade_us"), ("feed lag (E -> receive)", "feed_lag_us")):
        s = report[key]
        t.add_row(label, *[_ms(s[f"p{p:g}"]) for p in PERCENTILES], _ms(s["max"]), f"{s['count']:,}")
    console.print(t)
    stages = report.get("node_stages_us")
    if stages:
        st = Table(title="node stages (the node's own clock; sampled 1 in 8 under load)")
        for col in ("stage", "p50 ms", "p90 ms", "p99 ms", "max ms", "count"):
            st.add_column(col, justify="left" if col == "stage" else "right")
        for name, v in stages.items():
            st.add_row(name, _ms(v["p50"]), _ms(v["p90"]), _ms(v["p99"]), _ms(v["max"]), f"{v['count']:,}")
        console.print(st)
    console.print(f"orders: sent {o['sent']:,}, acked {o['acked']:,} ({o['acked_per_s']:,.0f}/s), errors {o['errors']:,} "
                  f"({o['error_rate']:.2%}) {o['errors_by_code'] or ''}; cancels that lost the race to a fill: {o['cancel_races']:,}")
    f = report["feed"]
    console.print(f"feed: {f['subscribers']} subscribers, {f['frames']:,} frames ({f['frames_per_s']:,.0f}/s)")
    c = report["correctness"]
    console.print(f"correctness: lost acks {c['lost_acks']}, depth gaps {c['depth_gaps']}, book mismatches "
                  f"{c['book_mismatches']}/{c['books_checked']}, conservation "
                  f"{'not checked' if c.get('conservation_error') else c.get('conservation_ok', 'n/a')}")
    _render_lending(report, console)
    _render_perps(report, console)
    s = report.get("slow_subscribers")
    if s and s["count"]:
        console.print(f"slow subscribers: {s['dropped']}/{s['count']} disconnected; node RSS {s.get('rss_start_mb', '?')} -> "
                      f"max {s.get('rss_max_mb', '?')} MB")


def _percent(fraction: str) -> str:
    return f"{Decimal(fraction) * 100:.2f}%"


def _render_lending(report: dict, console: Console) -> None:
    lend, c = report.get("lending"), report["correctness"]
    if not lend:
        return
    p = lend["plan"]
    acked = report["orders"].get("borrow_lend_acked", {})
    console.print(f"lending: {p['lenders']} lenders of {p['lender_deposit']} {p['asset']}, {p['borrowers']} borrowers "
                  f"(up to {p['borrow_cap']} each); borrowLendExecute accepted: "
                  f"{', '.join(f'{side} {n:,}' for side, n in acked.items()) or 'none'}; everyone's idle balances auto-lent")
    t = Table(title="lending pools at the end of the run (before the final repay)")
    for col in ("asset", "lent", "borrowed", "utilization", "lend APR", "borrow APR", "reserve"):
        t.add_column(col, justify="left" if col == "asset" else "right")
    for asset, r in lend["end_of_run"].items():
        t.add_row(asset, r["lent"], r["borrowed"], *(_percent(r[k]) for k in ("utilization", "lend_apr", "borrow_apr")),
                  r["reserve"])
    console.print(t)
    for asset, r in c.get("interest", {}).items():
        console.print(f"interest {asset}: borrowers paid {r['borrowers_interest']} = lenders earned {r['lenders_interest']} "
                      f"+ reserve {r['reserve']} + rounding {r['rounding']} (0 to {r['rounding_allowed']} allowed): {r['ok']}")
    if "pools_ok" in c:
        console.print(f"pools solvent (cash + borrowed - lent = reserve >= 0, utilization <= 1): {c['pools_ok']}")


def _render_perps(report: dict, console: Console) -> None:
    p, c = report.get("perps"), report["correctness"]
    if not p:
        return
    console.print(f"perps: index -{p['crash_drop']:.0%} in {p['crash_seconds']:g} s, {p['crash_after_warmup_s']:g} s "
                  f"into the measured run; takers {p['taker_leverage'][0]}-{p['taker_leverage'][1]}x")
    if "liquidations" not in c:
        return
    tiers = ", ".join(f"{name} {n:,}" for name, n in c["liquidations"].items()) or "none"
    oi = ", ".join(f"{s} {r['long']}" for s, r in c["open_interest"].items())
    console.print(f"liquidation steps by tier: {tiers} ({c['liquidated_accounts']} accounts); open interest "
                  f"long = short = node: {c['open_interest_ok']} ({oi}); below zero without a rescue: "
                  f"{len(c['negative_equity'])}")
