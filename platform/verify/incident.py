"""Rollback and replay after a divergence: who gained and who lost, per account.

``satchel incident --data DIR`` takes a diverged node's data directory (a validator's:
its journal copy, its snapshots, ``divergence-<height>.json`` and the state it reached
under ``diverged/``), rolls back to the last good snapshot before the divergence (or
``--from-snapshot H``), reprocesses every transaction after it under this code's
canonical rules -- checking each block against the commitment the canonical node
wrote -- and compares, per account, what the diverged node had with the canonical state:

* balances, per asset (gainers and losers, totals per asset), lend claims added and
  debts taken off -- both sides valued at the canonical pools' indices, so a difference
  is the accounts' and not the interest's;
* perp positions: size, net cost, unrealized PnL -- both sides valued at the canonical
  mark, so the difference is the positions' and not the prices' --, realized PnL and
  funding paid (these two already moved the settlement balance: they explain a balance
  difference, they do not add to it; a position closed to zero is no longer kept, so
  its figures read as 0);
* liquidation steps (``Liquidation`` events, from each state's per-account history)
  that one side took and the other did not;
* the insurance fund.

After a ``signatures`` divergence the validator never applied the offending block; it
left the block's journal record in ``divergence-<height>.block`` and the offending
seqs in the report. The diverged state is then that block applied as the node
journaled it (accepting transactions whose signatures do not hold), and the canonical
state the same block without those transactions. An offline validator
(``--journal``) keeps no journal copy; its report names the journal it checked.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import trio

from satchel.actors.margin import HISTORY
from satchel.core import lending
from satchel.ledger import snapshots
from satchel.core.amounts import asset_decimals, format_units
from satchel.core.engine import Engine
from satchel.ledger.journal import read_records
from satchel.core.messages import SIDE_NAMES, Block, Liquidation, header_decoder
from satchel.core.state import EngineState, PositionState, state_decoder
from satchel.ledger.chain import Chain, DivergedError, decode_block


def _balances(state: EngineState, pools: dict[str, lending.Pool]) -> dict[tuple[str, str], int]:
    """(account, asset) -> free + held + lent - borrowed, from an Engine.canonical() state,
    lends and debts valued at ``pools``."""
    out = {(row.account, b.asset): b.free + b.held for row in state.risk.balances for b in row.assets}
    margin = state.risk.margin
    if margin is not None and margin.loans is not None:
        for loan in margin.loans.loans:
            pool = pools.get(loan.asset)
            if pool is not None:
                key = (loan.account, loan.asset)
                out[key] = out.get(key, 0) + lending.claim(pool, loan.lent) - lending.owed(pool, loan.borrowed)
    return out


class _Units:
    """Integer units as decimal strings, by the canonical state's listings."""

    def __init__(self, state: EngineState):
        self.decimals = asset_decimals(state.assets)
        self.markets = {spec.symbol: spec for spec in state.markets}
        self.settlement = state.margin.settlement_asset if state.margin is not None else None

    def asset(self, asset: str, units: int) -> str:
        return format_units(units, self.decimals[asset])

    def qty(self, symbol: str, units: int) -> str:
        return format_units(units, self.markets[symbol].quantity_decimals)

    def price(self, symbol: str, units: int) -> str:
        return format_units(units, self.markets[symbol].price_decimals)

    def quote(self, symbol: str, units: int) -> str:
        return self.asset(self.markets[symbol].quote, units)

    def money(self, units: int) -> str:
        """In the settlement asset (liquidation figures, the insurance fund)."""
        return self.asset(self.settlement, units)


# ---------------------------------------------------------------- balances


def _balance_rows(diverged: EngineState, canonical: EngineState, units: _Units) -> tuple[list[dict], dict[str, str]]:
    """One row per (account, asset) whose balance differs, gainers first per asset; totals per asset."""
    pools = {p.spec.asset: p for p in canonical.lending}
    had, should = _balances(diverged, pools), _balances(canonical, pools)
    rows = []
    totals: dict[str, int] = {}
    for key in sorted(set(had) | set(should)):
        diff = had.get(key, 0) - should.get(key, 0)
        if diff:
            acct, asset = key
            rows.append({"account": acct, "asset": asset, "diverged": units.asset(asset, had.get(key, 0)),
                         "canonical": units.asset(asset, should.get(key, 0)), "difference": units.asset(asset, diff)})
            totals[asset] = totals.get(asset, 0) + diff
    rows.sort(key=lambda r: (r["asset"], -Decimal(r["difference"])))
    return rows, {a: units.asset(a, v) for a, v in sorted(totals.items())}


# ---------------------------------------------------------------- perp positions

POSITION_FIGURES = ("size", "net_cost", "unrealized", "realized", "funding")
_FLAT = dict.fromkeys(POSITION_FIGURES, 0)  # no position kept: flat, or never opened


def _marks(state: EngineState) -> dict[str, int]:
    margin = state.risk.margin
    return {symbol: view.mark for symbol, view in margin.marks} if margin is not None else {}


def _unrealized(pos: PositionState, mark: int, notional_mult: int) -> int:
    """size x mark - net cost (``actors.margin``); 0 while the market has no mark, as the API shows it."""
    return pos.size * mark * notional_mult - pos.net_cost if mark else 0


def _positions(state: EngineState, marks: dict[str, int], units: _Units) -> dict[tuple[str, str], dict[str, int]]:
    """(account, symbol) -> the position's figures (in ``POSITION_FIGURES`` order), unrealized PnL at ``marks``."""
    margin = state.risk.margin
    if margin is None:
        return {}
    return {(p.account, p.symbol): {
        "size": p.size, "net_cost": p.net_cost,
        "unrealized": _unrealized(p, marks.get(p.symbol, 0), units.markets[p.symbol].notional_mult),
        "realized": p.realized, "funding": p.funding,
    } for p in margin.positions}


def _position_rows(diverged: EngineState, canonical: EngineState, units: _Units) -> list[dict]:
    """One row per (account, symbol) whose position differs: each figure on both sides and
    the difference; the greatest unrealized gain first per market."""
    marks = _marks(canonical)  # both sides valued alike: a difference is the positions', not the prices'
    had, should = _positions(diverged, marks, units), _positions(canonical, marks, units)
    rows = []
    for key in sorted(set(had) | set(should)):
        a, b = had.get(key, _FLAT), should.get(key, _FLAT)
        if a == b:
            continue
        acct, symbol = key

        def text(figures: dict[str, int]) -> dict[str, str]:
            return {f: units.qty(symbol, v) if f == "size" else units.quote(symbol, v) for f, v in figures.items()}

        rows.append({"account": acct, "symbol": symbol, "diverged": text(a), "canonical": text(b),
                     "difference": text({f: a[f] - b[f] for f in POSITION_FIGURES})})
    rows.sort(key=lambda r: (r["symbol"], -Decimal(r["difference"]["unrealized"])))
    return rows


# ---------------------------------------------------------------- liquidations and the insurance fund


def _steps(state: EngineState) -> dict[str, list[Liquidation]]:
    """account -> the liquidation steps the state remembers for it, oldest first."""
    margin = state.risk.margin
    if margin is None:
        return {}
    return {acct: [e for e in events if isinstance(e, Liquidation)] for acct, events in margin.history}


def _comparable(had: list[Liquidation], should: list[Liquidation]) -> tuple[list[Liquidation], list[Liquidation]]:
    """Both lists without the blocks a full history may have dropped in part.

    Each side keeps only an account's newest ``HISTORY`` steps: steps no newer than the
    oldest one a full side still holds may be missing there without having been undone.
    """
    cutoff = max((steps[0].timestamp for steps in (had, should) if len(steps) >= HISTORY), default=None)
    if cutoff is None:
        return had, should
    return [e for e in had if e.timestamp > cutoff], [e for e in should if e.timestamp > cutoff]


def _only(these: list[Liquidation], those: list[Liquidation]) -> list[Liquidation]:
    """The steps of ``these`` that ``those`` lacks (as a multiset: steps may repeat within a block)."""
    left = Counter(those)
    out = []
    for e in these:
        if left[e]:
            left[e] -= 1
        else:
            out.append(e)
    return out


def _step_row(e: Liquidation, units: _Units) -> dict:
    """A step with its figures as decimals; tiers 1 and 4 name no market."""
    sym = e.symbol or None
    return {"account": e.account, "tier": e.tier, "symbol": sym, "side": SIDE_NAMES[e.side] if sym else None,
            "quantity": units.qty(sym, e.quantity) if sym else None,
            "price": units.price(sym, e.price) if sym else None,
            "mark": units.price(sym, e.mark) if sym else None, "amount": units.money(e.amount),
            "counterparty": e.counterparty or None, "equity": units.money(e.equity),
            "maintenance": units.money(e.maintenance), "seq": e.seq, "timestamp": e.timestamp}


def _liquidation_rows(diverged: EngineState, canonical: EngineState, units: _Units) -> dict[str, list[dict]]:
    had, should = _steps(diverged), _steps(canonical)
    out: dict[str, list[dict]] = {"diverged_only": [], "canonical_only": []}
    for acct in sorted(set(had) | set(should)):
        mine, theirs = _comparable(had.get(acct, []), should.get(acct, []))
        out["diverged_only"] += [_step_row(e, units) for e in _only(mine, theirs)]
        out["canonical_only"] += [_step_row(e, units) for e in _only(theirs, mine)]
    return out


def _insurance(diverged: EngineState, canonical: EngineState, units: _Units) -> dict[str, str] | None:
    """The insurance fund on both sides (None with no perps listed)."""
    if canonical.risk.margin is None:
        return None
    had = diverged.risk.margin.insurance if diverged.risk.margin is not None else 0
    should = canonical.risk.margin.insurance
    return {"asset": units.settlement, "diverged": units.money(had), "canonical": units.money(should),
            "difference": units.money(had - should)}


def compare(diverged: EngineState, canonical: EngineState) -> dict[str, Any]:
    """Per account, what the diverged state has over the canonical one (the report's body)."""
    units = _Units(canonical)
    rows, totals = _balance_rows(diverged, canonical, units)
    return {
        "gainers": [r for r in rows if Decimal(r["difference"]) > 0],
        "losers": [r for r in rows if Decimal(r["difference"]) < 0],
        "totals": totals,
        "positions": _position_rows(diverged, canonical, units),
        "marks": {s: units.price(s, m) for s, m in _marks(canonical).items()},
        "liquidations": _liquidation_rows(diverged, canonical, units),
        "insurance": _insurance(diverged, canonical, units),
    }


def _plain(canonical: EngineState) -> EngineState:
    """An Engine.canonical() state as a snapshot holds it (msgpack round trip: a copy
    that shares nothing with the live engine)."""
    return state_decoder.decode(snapshots.encode_state(canonical)[0])


def _journal(data: Path, divergence: dict) -> Path:
    """The validator's own journal copy, else the journal an offline validator checked."""
    own = data / "journal"
    if any(own.glob("*.seg")) or "journal" not in divergence:
        return own
    return Path(divergence["journal"])


async def canonical_state(data: Path, height: int, from_snapshot: int | None, journal: Path | None = None) -> tuple[EngineState, int]:
    """Canonical state at ``height``: from the chosen snapshot, replaying the journal."""
    async with trio.open_nursery() as actors:
        chain = Chain(Engine(actors))
        base = await _replay_to(chain, data, journal or data / "journal", height, from_snapshot)
        state = _plain(await chain.engine.canonical())
        actors.cancel_scope.cancel()
    return state, base


async def _replay_to(chain: Chain, data: Path, journal: Path, height: int, from_snapshot: int | None) -> int:
    """Bring ``chain`` to ``height`` from the chosen snapshot; returns the snapshot's height (0: genesis)."""
    base = None
    for path in sorted((data / "snapshots").glob("*.snap"), reverse=True):
        h = int(path.stem)
        if h < height and (from_snapshot is None or h <= from_snapshot):
            try:
                base = snapshots.read(path)
                break
            except (OSError, ValueError, msgspec.DecodeError):
                continue
    if base is not None:
        await chain.load(base)
    for payload in read_records(journal):
        h = header_decoder.decode(payload).header.height
        if h <= chain.height:
            continue
        if h > height:
            break
        await chain.replay(decode_block(payload))  # checks the canonical commitments
    if chain.height != height:
        raise DivergedError(f"journal ends at {chain.height}, before the divergent height {height}")
    return base.height if base else 0


async def signature_states(data: Path, journal: Path, block: Block, bad_seqs: set[int],
                           from_snapshot: int | None) -> tuple[EngineState, EngineState, int]:
    """(diverged, canonical, base): ``block`` applied as journaled, and without the
    transactions at ``bad_seqs``, both from the canonical state before it."""
    h = block.header
    async with trio.open_nursery() as actors:
        chain = Chain(Engine(actors))
        base = await _replay_to(chain, data, journal, h.height - 1, from_snapshot)
        before = _plain(await chain.engine.canonical())
        await chain.replay(block)  # must reproduce the node's event commitment: this is what it did
        diverged = _plain(await chain.engine.canonical())
        honest = Engine(actors)
        await honest.restore(before)
        # later seqs shift down; balances do not depend on seq numbers
        await honest.apply(h.first_seq, h.timestamp, [tx for i, tx in enumerate(block.txs) if h.first_seq + i not in bad_seqs])
        canonical = _plain(await honest.canonical())
        actors.cancel_scope.cancel()
    return diverged, canonical, base


async def investigate(data: str | Path, from_snapshot: int | None = None) -> dict[str, Any]:
    data = Path(data)
    reports = sorted(data.glob("divergence-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not reports:
        raise FileNotFoundError(f"no divergence-<height>.json in {data}")
    divergence = json.loads(reports[-1].read_text())
    height = divergence["height"]
    journal = _journal(data, divergence)
    extra: dict[str, Any] = {}
    if divergence.get("kind") == "signatures":
        block_file = data / divergence.get("block_file", f"divergence-{height}.block")
        if not block_file.exists() or "bad_seqs" not in divergence:
            raise FileNotFoundError(f"no offending block {block_file} (or no bad_seqs in {reports[-1]}): "
                                    f"re-run the validator with this version")
        bad = set(divergence["bad_seqs"])
        diverged, canonical, base = await signature_states(
            data, journal, decode_block(block_file.read_bytes()), bad, from_snapshot)
        diverged_hash = snapshots.encode_state(diverged)[1]
        extra["left_out_seqs"] = sorted(bad)
    else:
        diverged_snap = snapshots.newest(data / "diverged")
        if diverged_snap is None or diverged_snap.height != height:
            raise FileNotFoundError(f"no diverged state at height {height} under {data / 'diverged'}")
        diverged, diverged_hash = snapshots.decode_state(diverged_snap), diverged_snap.state_hash
        canonical, base = await canonical_state(data, height, from_snapshot, journal)
    return {
        "divergent_height": height,
        "kind": divergence.get("kind"),
        "rolled_back_to": base,
        "replayed_blocks": height - base,
        "diverged_state": diverged_hash,
        "canonical_state": snapshots.encode_state(canonical)[1],
        **compare(diverged, canonical),
        **extra,
    }


def render(report: dict) -> None:
    from rich.console import Console

    console = Console()
    console.print(f"divergence at block {report['divergent_height']} ({report['kind']}); rolled back to "
                  f"{report['rolled_back_to']}, replayed {report['replayed_blocks']} blocks under the canonical rules")
    if report.get("left_out_seqs"):
        console.print(f"canonical block {report['divergent_height']} leaves out the transactions whose signatures "
                      f"fail: seqs {report['left_out_seqs']}")
    t = _table("balances: diverged node vs canonical replay",
               "", "account", "asset", "diverged", "canonical", "difference")
    for label in ("gainers", "losers"):
        for r in report[label]:
            t.add_row(label[:-1], r["account"], r["asset"], r["diverged"], r["canonical"], r["difference"])
    console.print(t)
    console.print(f"totals (diverged - canonical): {report['totals'] or 'none'}")
    if report.get("insurance") is None:
        return  # no perps listed: balances are the whole story
    _render_perps(console, report)


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    return t


def _render_perps(console: Any, report: dict) -> None:
    """Positions (only the figures that differ), liquidation steps on one side only, the insurance fund."""
    if report["positions"]:
        symbols = sorted({r["symbol"] for r in report["positions"]})
        marks = ", ".join(f"{s} {report['marks'][s]}" for s in symbols if s in report["marks"])
        t = _table(f"perp positions: diverged node vs canonical replay (unrealized PnL at the canonical mark: "
                   f"{marks or 'none'})", "account", "symbol", "figure", "diverged", "canonical", "difference")
        for r in report["positions"]:
            for f in POSITION_FIGURES:
                if r["difference"][f] != "0":
                    t.add_row(r["account"], r["symbol"], f, r["diverged"][f], r["canonical"][f], r["difference"][f])
        console.print(t)
    else:
        console.print("perp positions: no difference")
    steps = [(side, r) for side in ("diverged_only", "canonical_only") for r in report["liquidations"][side]]
    if steps:
        t = _table("liquidation steps taken on one side only (tiers: 1 cancel orders, 2 book unwind, 3 backstop, "
                   "4 insurance fund, 5 auto-deleverage)",
                   "only in", "account", "tier", "symbol", "quantity", "price", "amount", "counterparty")
        for side, r in steps:
            t.add_row(side.split("_")[0], r["account"], str(r["tier"]), r["symbol"] or "", r["quantity"] or "",
                      r["price"] or "", r["amount"], r["counterparty"] or "")
        console.print(t)
    else:
        console.print("liquidation steps: no difference")
    fund = report["insurance"]
    console.print(f"insurance fund ({fund['asset']}): diverged {fund['diverged']}, canonical {fund['canonical']}, "
                  f"difference {fund['difference']}")
