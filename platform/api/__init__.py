"""The exchange's API apart from any transport: request handlers, Backpack-shaped
payloads and the market-data fan-out. The WebSocket gateway (and later REST) call it.
"""
