"""The wall clock, in one place: the sequencer's block stamps and the gateway's window
checks read it here, so a test or a simulation can hand them another clock."""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000
