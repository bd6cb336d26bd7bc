"""Several RPC providers per chain: per-provider concurrency and rate limits, health, failover.

``Providers.call(method, *args)`` runs ``provider.method(*args)`` on the first healthy
provider that has room: each has a concurrency limit (a semaphore) and a rate limit (a
token bucket, calls per second) of its own, so the pool never overloads one provider
to spare another. A provider that fails (``ProviderError``) is marked unhealthy and
skipped for a backoff that doubles with each consecutive failure (``BACKOFF_S`` up to
``MAX_BACKOFF_S``); the call moves on to the next. When no provider could answer the
call raises ``AllProvidersFailing``, which the adapter's circuit breaker counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from satchel.chains.base import Provider, ProviderError

BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


class AllProvidersFailing(Exception):
    pass


class _Slot:
    """One provider's limits and health."""

    def __init__(self, provider: Provider, concurrency: int, rate: float):
        self.provider = provider
        self.limiter = trio.Semaphore(concurrency)
        self.rate = rate  # calls per second; 0 = unlimited
        self.tokens = rate
        self.refilled = 0.0
        self.failures = 0
        self.retry_at = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.retry_at

    def take_token(self, now: float) -> bool:
        if not self.rate:
            return True
        self.tokens = min(self.rate, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def failed(self, now: float) -> None:
        self.failures += 1
        self.retry_at = now + min(BACKOFF_S * 2 ** (self.failures - 1), MAX_BACKOFF_S)

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0


class Providers:
    def __init__(self, providers: Sequence[Provider], concurrency: int = 8, rate: float = 0.0):
        self.slots = [_Slot(p, concurrency, rate) for p in providers]
        self.errors = 0  # calls a provider failed (before failing over)

    async def call(self, method: str, *args: Any) -> Any:
        now = trio.current_time()
        tried = 0
        for slot in self.slots:
            if not slot.healthy(now) or not slot.take_token(now):
                continue
            tried += 1
            async with slot.limiter:
                try:
                    result = await getattr(slot.provider, method)(*args)
                except ProviderError:
                    self.errors += 1
                    slot.failed(trio.current_time())
                    continue
            slot.succeeded()
            return result
        raise AllProvidersFailing(f"no provider answered {method} ({tried} tried of {len(self.slots)})")

    def status(self) -> list[dict]:
        now = trio.current_time()
        return [{"provider": s.provider.name, "healthy": s.healthy(now), "failures": s.failures} for s in self.slots]
