"""Counts kept in dicts whose keys leave at zero: derived figures per account (withdrawals
on their way, amounts they hold, pending triggers), so a dict holds only what is open."""

from __future__ import annotations

from collections.abc import Hashable


def tally(counts: dict, key: Hashable, delta: int) -> None:
    """Add ``delta`` to ``counts[key]`` (0 if absent); the key leaves when it reaches 0."""
    left = counts.get(key, 0) + delta
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)
