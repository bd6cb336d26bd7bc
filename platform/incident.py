"""Rollback and replay after a divergence: who gained and who lost, per account.

``satchel incident --data DIR`` takes a diverged node's data directory (a validator's:
its journal copy, its snapshots, ``divergence-<height>.json`` and the state it reached
under ``diverged/``), rolls back to the last good snapshot before the divergence (or
``--from-snapshot H``), reprocesses every transaction after it under this code's
canonical rules -- checking each block against the commitment the canonical node
wrote -- and compares, per account and asset, the balances the diverged node had with
the canonical ones.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import trio

from satchel import snapshots
from satchel.amounts import format_units
from satchel.engine import Engine
from satchel.journal import read_records
from satchel.messages import block_decoder, header_decoder
from satchel.node import Chain, DivergedError


def _balances(state: list) -> dict[tuple[str, str], int]:
    """(account, asset) -> free + held, from an Engine.canonical() state."""
    risk = state[4]
    return {(acct, asset): free + held for acct, assets in risk[0] for asset, free, held in assets}


def _decimals(state: list) -> dict[str, int]:
    return {symbol: decimals for symbol, decimals in state[2]}


async def canonical_state(data: Path, height: int, from_snapshot: int | None) -> tuple[list, int]:
    """Canonical state at ``height``: from the chosen snapshot, replaying the journal."""
    base = None
    for path in sorted((data / "snapshots").glob("*.snap"), reverse=True):
        h = int(path.stem)
        if h < height and (from_snapshot is None or h <= from_snapshot):
            try:
                base = snapshots.read(path)
                break
            except (OSError, ValueError, msgspec.DecodeError):
                continue
    async with trio.open_nursery() as actors:
        chain = Chain(Engine(actors))
        if base is not None:
            await chain.load(base)
        for payload in read_records(data / "journal"):
            h = header_decoder.decode(payload).header.height
            if h <= chain.height:
                continue
            if h > height:
                break
            await chain.replay(block_decoder.decode(payload))  # checks the canonical commitments
        state = msgspec.msgpack.decode(snapshots.encode_state(await chain.engine.canonical())[0])
        reached = chain.height
        actors.cancel_scope.cancel()
    if reached != height:
        raise DivergedError(f"journal ends at {reached}, before the divergent height {height}")
    return state, (base.height if base else 0)


async def investigate(data: str | Path, from_snapshot: int | None = None) -> dict[str, Any]:
    data = Path(data)
    reports = sorted(data.glob("divergence-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not reports:
        raise FileNotFoundError(f"no divergence-<height>.json in {data}")
    divergence = json.loads(reports[-1].read_text())
    height = divergence["height"]
    diverged_snap = snapshots.newest(data / "diverged")
    if diverged_snap is None or diverged_snap.height != height:
        raise FileNotFoundError(f"no diverged state at height {height} under {data / 'diverged'}")
    diverged = snapshots.decode_state(diverged_snap)
    canonical, base = await canonical_state(data, height, from_snapshot)
    decimals = _decimals(canonical)
    had, should = _balances(diverged), _balances(canonical)
    rows = []
    totals: dict[str, int] = {}
    for key in sorted(set(had) | set(should)):
        diff = had.get(key, 0) - should.get(key, 0)
        if diff:
            acct, asset = key
            d = decimals[asset]
            rows.append({"account": acct, "asset": asset, "diverged": format_units(had.get(key, 0), d),
                         "canonical": format_units(should.get(key, 0), d), "difference": format_units(diff, d)})
            totals[asset] = totals.get(asset, 0) + diff
    rows.sort(key=lambda r: (r["asset"], -Decimal(r["difference"])))
    return {
        "divergent_height": height,
        "kind": divergence.get("kind"),
        "rolled_back_to": base,
        "replayed_blocks": height - base,
        "diverged_state": diverged_snap.state_hash,
        "canonical_state": snapshots.encode_state(canonical)[1],
        "gainers": [r for r in rows if Decimal(r["difference"]) > 0],
        "losers": [r for r in rows if Decimal(r["difference"]) < 0],
        "totals": {a: format_units(v, decimals[a]) for a, v in sorted(totals.items())},
        "note": "spot only: positions arrive with perpetuals",
    }


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"divergence at block {report['divergent_height']} ({report['kind']}); rolled back to "
                  f"{report['rolled_back_to']}, replayed {report['replayed_blocks']} blocks under the canonical rules")
    t = Table(title="balances: diverged node vs canonical replay")
    for col in ("", "account", "asset", "diverged", "canonical", "difference"):
        t.add_column(col)
    for label in ("gainers", "losers"):
        for r in report[label]:
            t.add_row(label[:-1], r["account"], r["asset"], r["diverged"], r["canonical"], r["difference"])
    console.print(t)
    console.print(f"totals (diverged - canonical): {report['totals'] or 'none'}")
