"""Shared helpers for the benchmark scripts: repeated runs and their median."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def median_of(runs: int, fn: Callable[[], float], label: str, unit: str) -> float:
    values = []
    for i in range(runs):
        v = fn()
        values.append(v)
        print(f"  run {i + 1}: {v:,.0f} {unit}", flush=True)
    med = statistics.median(values)
    print(f"{label}: median {med:,.0f} {unit} over {runs} runs")
    return med
