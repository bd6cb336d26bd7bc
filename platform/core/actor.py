"""The actor runtime: a state object driven by one trio task through a channel.

An actor's state is private to its task; the only way to change or read it is a
typed message (``core.messages``: one class per request) passed to its single entry
point, ``handle``, whose return value is the reply. Callers exchange *batches* (a
whole block's share of work per message) because one channel hop costs ~9 us while a
list of 100 items costs ~0.4 us per item (DESIGN §2, §8).

``Mailbox.call`` is a request/reply; ``send`` + ``receive`` let the engine fan a phase
out to several actors and gather the replies in a fixed order, which keeps the result
independent of task scheduling.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio


class Actor(Protocol):
    def handle(self, message: Any) -> Any: ...


class ActorCrashed(RuntimeError):
    """An actor's handler raised: the engine's state is suspect, so the node must stop."""


class Mailbox:
    """Handle on a running actor. At most one outstanding request per caller."""

    def __init__(self, name: str, inbox: trio.MemorySendChannel, replies: trio.MemoryReceiveChannel):
        self.name = name
        self._inbox = inbox
        self._replies = replies

    async def send(self, message: Any) -> None:
        await self._inbox.send(message)

    async def receive(self) -> Any:
        ok, value = await self._replies.receive()
        if not ok:
            raise ActorCrashed(f"actor {self.name} failed") from value
        return value

    async def call(self, message: Any) -> Any:
        await self.send(message)
        return await self.receive()


async def _serve(actor: Actor, inbox: trio.MemoryReceiveChannel, replies: trio.MemorySendChannel) -> None:
    handle = actor.handle
    async with inbox, replies:
        async for message in inbox:
            try:
                result = (True, handle(message))
            except Exception as exc:  # handed to the caller, which stops the node
                result = (False, exc)
            await replies.send(result)


def spawn(nursery: trio.Nursery, name: str, actor: Actor) -> Mailbox:
    """Start a task that owns ``actor`` and serves its messages."""
    in_send, in_recv = trio.open_memory_channel(1)
    out_send, out_recv = trio.open_memory_channel(1)
    nursery.start_soon(_serve, actor, in_recv, out_send, name=f"actor:{name}")
    return Mailbox(name, in_send, out_recv)


def dispatcher(table: dict[type, Any]) -> Any:
    """A ``handle`` method from a table of message class -> handler method."""

    def handle(self: Any, message: Any) -> Any:
        return table[message.__class__](self, message)

    return handle
