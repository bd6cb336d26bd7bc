"""``GET /metrics``: the node's figures for Prometheus (prometheus-client's text format).

Nothing on the hot path is instrumented for it: a custom collector reads, at scrape
time, what the node already keeps -- chain height and transaction count, the sequencer's
backlog, the per-stage latency histograms (``satchel.latency``, exported as Prometheus
histograms with buckets from 100 us to 5 s; ``durable`` is the journal's group-commit
fsync), the gateway's
sessions and dropped subscribers -- and the counts of rejections by code, which a node
subscriber tallies from each durable block's events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from satchel.core.messages import REJECTED, BlockHeader, OrderDone, TxRejected
from satchel.latency import BUCKETS_US

if TYPE_CHECKING:
    from satchel.gateway import Gateway

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Rejects:
    """A node subscriber: rejected transactions and orders by code or reason."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def publish(self, header: BlockHeader, events: list) -> None:
        for ev in events:
            cls = ev.__class__
            if cls is TxRejected:
                self.counts[ev.code] += 1
            elif cls is OrderDone and ev.status == REJECTED:
                self.counts[ev.reason] += 1


class NodeCollector:
    def __init__(self, gateway: "Gateway", rejects: Rejects):
        self.gw = gateway
        self.rejects = rejects

    def collect(self) -> Iterator[Any]:
        node = self.gw.node
        chain = node.chain
        yield CounterMetricFamily("satchel_blocks", "Blocks applied and durable", value=chain.height)
        yield CounterMetricFamily("satchel_transactions", "Transactions sequenced", value=chain.txs)
        rejects = CounterMetricFamily("satchel_rejects", "Rejected transactions and orders", labels=["code"])
        for code, n in sorted(self.rejects.counts.items()):
            rejects.add_metric([code], n)
        yield rejects
        backlog = node.sequencer.backlog if node.sequencer is not None else 0
        yield GaugeMetricFamily("satchel_sequencer_backlog", "Transactions waiting to be sequenced", value=backlog)
        yield GaugeMetricFamily("satchel_ws_sessions", "Open WebSocket sessions", value=self.gw.sessions)
        yield CounterMetricFamily("satchel_ws_slow_consumers", "Subscribers dropped for not reading",
                                  value=self.gw.slow_consumers)
        stages = HistogramMetricFamily("satchel_stage_latency_seconds",
                                       "Per-stage order latency (durable = journal fsync)", labels=["stage"])
        for stage, (count, total_us, cumulative) in node.latency.histograms().items():
            buckets = [(f"{b / 1e6:g}", n) for b, n in zip(BUCKETS_US, cumulative)] + [("+Inf", count)]
            stages.add_metric([stage], buckets, total_us / 1e6)
        yield stages


def registry(gateway: "Gateway") -> CollectorRegistry:
    """A registry with the node's collector; its ``Rejects`` subscribes to the node."""
    rejects = Rejects()
    gateway.node.subscribers.append(rejects)
    reg = CollectorRegistry()
    reg.register(NodeCollector(gateway, rejects))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
