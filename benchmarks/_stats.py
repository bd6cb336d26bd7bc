"""Shared helpers for the benchmark scripts: repeated runs and their median."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import trio


def median_of(runs: int, fn: Callable[[], float], label: str, unit: str) -> float:
    values = []
    for i in range(runs):
        v = fn()
        values.append(v)
        print(f"  run {i + 1}: {v:,.0f} {unit}", flush=True)
    med = statistics.median(values)
    print(f"{label}: median {med:,.0f} {unit} over {runs} runs")
    return med


async def submit_all(node: Any, txs: list) -> None:
    """Submit every transaction to an in-process node; return when the last is durable."""
    done = trio.Event()
    left = [len(txs)]

    def ack(_events: list) -> None:
        left[0] -= 1
        if not left[0]:
            done.set()

    submit = node.submit
    for i, tx in enumerate(txs):
        submit(tx, ack)
        if i % 2000 == 1999:
            await trio.sleep(0)  # let the pipeline run, as a gateway would
    await done.wait()
