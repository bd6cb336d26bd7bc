"""Where a request's time goes: per-stage latency histograms kept by the node.

Stages of a signed request, in microseconds:

    verify    received -> signature checked (worker process or threads)
    sequence  checked -> cut into a block (waiting for the engine to be free)
    apply     cut -> applied by the engine (block-level: all its transactions alike)
    durable   applied -> fsynced (group commit)
    reply     durable -> reply queued for the client
    total     received -> reply queued

Block-level stages are recorded once per block, weighted by its transaction count.
Per-request stages cost ~2 us each to record (HdrHistogram's ``record_value`` is pure
Python), so under load a sample of one request in ``sample_every`` is recorded; when
blocks are small (light load) every request is.
"""

from __future__ import annotations

import time

from hdrh.histogram import HdrHistogram

STAGES = ("verify", "sequence", "apply", "durable", "reply", "total")
# upper bounds (us) of the buckets ``/metrics`` exports, 100 us to 5 s
BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
              5_000_000)
_MAX_US = 60_000_000


class StageLatency:
    def __init__(self, sample_every: int = 8):
        self.hist = {stage: HdrHistogram(1, _MAX_US, 3) for stage in STAGES}
        self.sample_every = sample_every
        self._busy = False  # the last block was large: sample requests
        self._n = 0
        self._summary: dict | None = None
        self._summary_at = 0.0

    def record_block(self, cut: float, applied: float, durable: float, txs: int) -> None:
        h = self.hist
        h["apply"].record_value(_us(applied - cut), txs)
        h["durable"].record_value(_us(durable - applied), txs)
        self._busy = txs > 16

    def sampled(self) -> bool:
        """Whether to record this request's own stages."""
        if not self._busy:
            return True
        self._n += 1
        return self._n % self.sample_every == 0

    def record_request(self, received: float, verified: float, cut: float, durable: float, replied: float) -> None:
        h = self.hist
        h["verify"].record_value(_us(verified - received))
        h["sequence"].record_value(_us(cut - verified))
        h["reply"].record_value(_us(replied - durable))
        h["total"].record_value(_us(replied - received))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per stage: count, p50, p90, p99 and max in microseconds.

        Computing percentiles walks every histogram in Python (~50 ms), so the answer is
        kept for a second: a client asking in a loop cannot stall the node.
        """
        return {stage: s[0] for stage, s in self._computed().items()}

    def histograms(self) -> dict[str, tuple[int, float, list[int]]]:
        """Per stage: (count, sum in us, cumulative counts at ``BUCKETS_US``), kept for a
        second like ``summary``."""
        return {stage: s[1] for stage, s in self._computed().items()}

    def _computed(self) -> dict:
        now = time.monotonic()
        if self._summary is None or now - self._summary_at >= 1.0:
            self._summary, self._summary_at = self._compute(), now
        return self._summary

    def _compute(self) -> dict:
        out = {}
        for stage, h in self.hist.items():
            count = h.get_total_count()
            out[stage] = (
                {"count": count, "p50": h.get_value_at_percentile(50), "p90": h.get_value_at_percentile(90),
                 "p99": h.get_value_at_percentile(99), "max": h.get_max_value()},
                (count, h.get_mean_value() * count, _cumulative(h, BUCKETS_US)),
            )
        return out

    def reset(self) -> None:
        for h in self.hist.values():
            h.reset()
        self._summary = None


def _cumulative(h: HdrHistogram, bounds: tuple[int, ...]) -> list[int]:
    """How many values are at most each bound (a Prometheus histogram's buckets): one walk
    over the histogram's recorded values."""
    out = [0] * len(bounds)
    i = total = 0
    for item in h.get_recorded_iterator():
        while i < len(bounds) and item.value_iterated_to > bounds[i]:
            out[i] = total
            i += 1
        total += item.count_added_in_this_iter_step
    for j in range(i, len(bounds)):
        out[j] = total
    return out


def _us(seconds: float) -> int:
    return min(_MAX_US, max(1, int(seconds * 1_000_000)))
