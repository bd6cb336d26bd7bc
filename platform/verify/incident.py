"""Rollback and replay after a divergence: who gained and who lost, per account.

``satchel incident --data DIR`` takes a diverged node's data directory (a validator's:
its journal copy, its snapshots, ``divergence-<height>.json`` and the state it reached
under ``diverged/``), rolls back to the last good snapshot before the divergence (or
``--from-snapshot H``), reprocesses every transaction after it under this code's
canonical rules -- checking each block against the commitment the canonical node
wrote -- and compares, per account and asset, the balances the diverged node had with
the canonical ones.

After a ``signatures`` divergence the validator never applied the offending block; it
left the block's journal record in ``divergence-<height>.block`` and the offending
seqs in the report. The diverged state is then that block applied as the node
journaled it (accepting transactions whose signatures do not hold), and the canonical
state the same block without those transactions. An offline validator
(``--journal``) keeps no journal copy; its report names the journal it checked.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import trio

from satchel.ledger import snapshots
from satchel.core.amounts import format_units
from satchel.core.engine import Engine
from satchel.ledger.journal import read_records
from satchel.core.messages import Block, header_decoder
from satchel.core.state import EngineState, state_decoder
from satchel.ledger.chain import Chain, DivergedError, decode_block


def _balances(state: EngineState) -> dict[tuple[str, str], int]:
    """(account, asset) -> free + held, from an Engine.canonical() state."""
    return {(row.account, b.asset): b.free + b.held for row in state.risk.balances for b in row.assets}


def _decimals(state: EngineState) -> dict[str, int]:
    return {spec.symbol: spec.decimals for spec in state.assets}


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
        "diverged_state": diverged_hash,
        "canonical_state": snapshots.encode_state(canonical)[1],
        "gainers": [r for r in rows if Decimal(r["difference"]) > 0],
        "losers": [r for r in rows if Decimal(r["difference"]) < 0],
        "totals": {a: format_units(v, decimals[a]) for a, v in sorted(totals.items())},
        "note": "spot only: positions arrive with perpetuals",
        **extra,
    }


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"divergence at block {report['divergent_height']} ({report['kind']}); rolled back to "
                  f"{report['rolled_back_to']}, replayed {report['replayed_blocks']} blocks under the canonical rules")
    if report.get("left_out_seqs"):
        console.print(f"canonical block {report['divergent_height']} leaves out the transactions whose signatures "
                      f"fail: seqs {report['left_out_seqs']}")
    t = Table(title="balances: diverged node vs canonical replay")
    for col in ("", "account", "asset", "diverged", "canonical", "difference"):
        t.add_column(col)
    for label in ("gainers", "losers"):
        for r in report[label]:
            t.add_row(label[:-1], r["account"], r["asset"], r["diverged"], r["canonical"], r["difference"])
    console.print(t)
    console.print(f"totals (diverged - canonical): {report['totals'] or 'none'}")
