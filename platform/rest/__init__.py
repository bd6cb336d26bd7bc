"""The HTTP transport: Backpack's REST API served from the node's trio process."""

from satchel.rest.app import RestApp, serve

__all__ = ["RestApp", "serve"]
