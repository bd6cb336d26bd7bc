"""The actor runtime: a state object driven by one trio task through a channel.

An actor's state is private to its task; the only way to change or read it is a
typed message (``core.messages``: one class per request) passed to its single entry
point, ``handle``, whose return value is the reply. Callers exchange *batches* (a
whole block's share of work per message) because one hop costs ~9 us on a fast machine
(20-25 us on a shared 2-core one) while a list of 100 items costs ~0.4 us per item
(DESIGN §2, §8).

``Mailbox.call`` is a request/reply; ``send`` + ``receive`` let the engine fan a phase
out to several actors and gather the replies in a fixed order, which keeps the result
independent of task scheduling.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import trio


class Actor(Protocol):
    def handle(self, message: Any) -> Any: ...


class ActorCrashed(RuntimeError):
    """An actor's handler raised: the engine's state is suspect, so the node must stop."""


class Mailbox:
    """Handle on a running actor: its inbox and its replies, in order. One caller at a
    time (the engine's stage; a fan-out sends to several actors, then receives from each).

    The queues are plain deques and the waiting is trio's lowlevel park and reschedule:
    a memory channel pair per actor cost 44 us a round trip on a 2-core machine where a
    park and a reschedule cost about half of it, and a block makes nine of them."""

    def __init__(self, name: str):
        self.name = name
        self._inbox: deque = deque()
        self._replies: deque = deque()
        self._actor: Any = None  # the actor's task while it waits for a message
        self._caller: Any = None  # the caller's task while it waits for a reply

    async def send(self, message: Any) -> None:
        self._inbox.append(message)
        actor = self._actor
        if actor is not None:
            self._actor = None
            trio.lowlevel.reschedule(actor)

    async def receive(self) -> Any:
        if not self._replies:
            self._caller = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_caller)
        ok, value = self._replies.popleft()
        if not ok:
            raise ActorCrashed(f"actor {self.name} failed") from value
        return value

    async def call(self, message: Any) -> Any:
        await self.send(message)
        return await self.receive()

    def _abort_caller(self, raise_cancel: Any) -> Any:
        self._caller = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _abort_actor(self, raise_cancel: Any) -> Any:
        self._actor = None
        return trio.lowlevel.Abort.SUCCEEDED


async def _serve(actor: Actor, mailbox: Mailbox) -> None:
    handle = actor.handle
    inbox, replies = mailbox._inbox, mailbox._replies
    while True:
        if not inbox:
            mailbox._actor = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(mailbox._abort_actor)
        message = inbox.popleft()
        try:
            result = (True, handle(message))
        except Exception as exc:  # handed to the caller, which stops the node
            result = (False, exc)
        replies.append(result)
        caller = mailbox._caller
        if caller is not None:
            mailbox._caller = None
            trio.lowlevel.reschedule(caller)


def spawn(nursery: trio.Nursery, name: str, actor: Actor) -> Mailbox:
    """Start a task that owns ``actor`` and serves its messages."""
    mailbox = Mailbox(name)
    nursery.start_soon(_serve, actor, mailbox, name=f"actor:{name}")
    return mailbox


def dispatcher(table: dict[type, Any]) -> Any:
    """A ``handle`` method from a table of message class -> handler method."""

    def handle(self: Any, message: Any) -> Any:
        return table[message.__class__](self, message)

    return handle
