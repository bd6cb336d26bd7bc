"""``satchel loadtest``: drive a node hard, measure honestly, check correctness.

Modules, in the order a run uses them: ``plan`` (what each trader sends), ``trader``
(a worker process of traders: open- or closed-loop, ack latency, private order
updates), ``feed`` (a worker process of market-data subscribers: lag, depth
continuity, local book vs snapshot), ``report`` (HdrHistogram merging, the table, the
JSON report, thresholds) and ``runner`` (embedded node, funding, processes, live
progress, final checks). The ``perps`` scenario adds ``perps`` (the index crash, the
liquidation checks) and ``lending`` (who lends and borrows, the final repay, pool
solvency and interest).
"""
