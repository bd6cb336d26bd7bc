"""The WebSocket gateway: one endpoint for order entry, queries and streams.

``protocol`` holds the frame schemas, error codes and the Backpack-shaped payloads;
``session`` one connection (rate limit, ordered signature checks, bounded send
queue); ``server`` accepts connections and owns what they share.
"""

from satchel.gateway.server import Gateway

__all__ = ["Gateway"]
