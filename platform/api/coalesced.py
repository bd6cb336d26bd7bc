"""A value read from the engine as of the last published block, shared by every request
waiting for it: the read behind ``chainStatusQuery`` (``api.chains.ChainStatus``) and
``platformStats`` (``api.stats.PlatformStats``).

An unsigned request must not make the core work once per request: requests coalesce into
at most one read in flight, a value already read for the last published block answers at
once, and a read's state includes every block published while it waits (it is queued
behind them), so the value it answers describes the block height seen when it arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from satchel.core.errors import MAINTENANCE, RequestError


class ReadPerBlock:
    """Subclasses implement ``_take()`` (queue the read; False if the node is shutting
    down) and call ``_answered(value)`` when it is answered; ``publish`` keeps ``_height``."""

    def __init__(self, height: int):
        self._height = height  # of the last published block
        self.latest: Any = None  # the last value read
        self._latest_height = -1  # the block height ``latest`` describes
        self._pending = False  # a read is in flight
        self._waiting: list[Callable[[Any], None]] = []

    def when_ready(self, answer: Callable[[Any], None]) -> None:
        """``answer(value)`` as of the last published block: now if ``latest`` is, else once
        the read in flight (or a new one) is answered; MAINTENANCE if the node is shutting down."""
        if self.latest is not None and self._latest_height == self._height:
            answer(self.latest)
            return
        self._waiting.append(answer)
        if not self._pending and not self._take():
            self._waiting.remove(answer)
            raise RequestError(MAINTENANCE, "Node is shutting down")

    def _take(self) -> bool:
        raise NotImplementedError

    def _answered(self, value: Any) -> None:
        """The read's answer: the latest value, handed to every request waiting."""
        self._pending = False
        self.latest = value
        self._latest_height = self._height
        waiting, self._waiting = self._waiting, []
        for answer in waiting:
            answer(value)
