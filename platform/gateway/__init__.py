"""The WebSocket gateway: one endpoint for order entry, queries and streams.

The requests themselves are answered by ``satchel.api.handlers``; this package is only
the transport. ``protocol`` holds the envelope schema, params as signed texts and the
reply frames; ``session`` one connection (size limit, rate limit, admission, bounded
send queue, keepalive, subscriptions); ``server`` accepts connections and owns what
they share.
"""

from satchel.gateway.server import Gateway

__all__ = ["Gateway"]
