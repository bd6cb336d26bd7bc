"""Incident compensation: from ``satchel incident``'s report, the admin transactions that
settle it (``satchel compensate``), as the article's exchange did after its incident:

1. every loser is made whole: an ``adminTransfer`` from a treasury account of exactly the
   loss, per (account, asset) row of the report's losers (system accounts such as
   ``@insurance`` are left to the operator);
2. gainers keep their gains: nothing is taken back;
3. every account that traded in the affected block range gets x2 points for that range:
   one ``adminSetMultiplier`` for everyone over the range, which the rewards actor applies
   at once to the trading points earned there -- only accounts that traded there have any.

The transactions go through the node like any other, so validators replay and check them.
A marker file beside the report (``<report>.compensated``) records what was sent, and a
second run on the same report is refused: a loser is never paid twice.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

MULTIPLIER = "2"


def plan(report: dict, treasury: str, to_height: int | None = None) -> list[tuple[str, dict[str, str]]]:
    """The requests (method, params) that settle ``report``; the affected range runs from
    the divergent block to ``to_height`` (default: that block alone)."""
    start = int(report["divergent_height"])
    end = start if to_height is None else to_height
    if end < start:
        raise ValueError(f"--to-height {end} is before the divergent block {start}")
    requests: list[tuple[str, dict[str, str]]] = []
    for row in report["losers"]:
        loss = -Decimal(row["difference"])
        if loss <= 0 or row["account"].startswith("@"):
            continue
        requests.append(("adminTransfer", {"source": treasury, "target": row["account"], "asset": row["asset"],
                                           "quantity": format(loss, "f")}))
    requests.append(("adminSetMultiplier", {"factor": MULTIPLIER, "fromHeight": str(start), "toHeight": str(end)}))
    return requests


def marker(report_path: Path) -> Path:
    return report_path.with_name(report_path.name + ".compensated")


def record(report_path: Path, outcomes: list[dict]) -> None:
    marker(report_path).write_text(json.dumps(outcomes, indent=2))
