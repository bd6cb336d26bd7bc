"""The exchange's API apart from any transport: request handlers (``handlers``), the
listing learned from durable events (``listing``), Backpack-shaped payloads (``format``)
and the market-data fan-out (``marketdata``). The WebSocket gateway (and later REST or
a remote gateway) call it.
"""
