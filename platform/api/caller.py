"""The API's side of a client: where its answers go (``Replies``, the transport's), its
signature parts once checked (``Signed``), and the queue that acts on its signed requests
in the order they arrived (``Caller``), also across a batch's items (``BatchReplies``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from satchel.core.errors import INVALID_SIGNATURE, RequestError
from satchel.core.messages import Auth

Signature = list[str] | None


class Replies(Protocol):
    """Where a caller's answers go; provided by the transport."""

    closed: bool  # once set, nothing more is answered or acted on for this caller

    def result(self, req_id: Any, result: Any) -> None: ...

    def error(self, req_id: Any, code: str | int, message: str) -> None: ...

    def failed(self, req_id: Any, exc: Exception) -> None: ...


class Verifier(Protocol):
    def check(self, public: bytes, candidates: tuple, signature: bytes, done: Callable[[bytes | None], None]) -> None: ...


class Signed:
    """A request's checked signature parts."""

    __slots__ = ("account", "public", "signature", "timestamp", "window", "texts", "candidates", "batch")

    def auth(self, message: bytes, item: int | None = 0) -> Auth:
        """The journal's record of this request (of item ``item`` of a batch; None: of a
        transaction carrying the whole batch), given the form the signature covered."""
        encoded = message is not self.candidates[0]
        if self.batch:
            params = () if item is None else self.batch[item]
            return Auth(params, encoded, self.signature, self.timestamp, self.window, self.batch, item or 0)
        return Auth(tuple(sorted(self.texts.items())), encoded, self.signature, self.timestamp, self.window)


class _Pending:
    __slots__ = ("req_id", "action", "verified", "message")

    def __init__(self, req_id: Any, action: Callable[[bytes], None]):
        self.req_id = req_id
        self.action = action
        self.verified = False
        self.message: bytes | None = None


class Caller:
    """One client of the API: its replies, and the queue that keeps its signed requests
    in arrival order."""

    __slots__ = ("replies", "received", "_pending", "_verifier")

    def __init__(self, replies: Replies, verifier: Verifier):
        self.replies = replies
        self.received = 0.0  # trio time the request being handled arrived
        self._pending: deque[_Pending] = deque()
        self._verifier = verifier

    def verified(self, req_id: Any, signed: Signed, action: Callable[[bytes], None]) -> None:
        """Run ``action(message)`` once the signature checks out, in arrival order;
        ``INVALID_SIGNATURE`` if it does not."""
        pending = _Pending(req_id, action)
        self._pending.append(pending)

        def done(message: bytes | None) -> None:
            pending.verified = True
            pending.message = message
            self._drain()

        self._verifier.check(signed.public, signed.candidates, signed.signature, done)

    def _drain(self) -> None:
        q = self._pending
        replies = self.replies
        while q and q[0].verified:
            p = q.popleft()
            if replies.closed:
                continue
            if p.message is None:
                replies.error(p.req_id, INVALID_SIGNATURE, "Signature does not match")
                continue
            try:
                p.action(p.message)
            except RequestError as exc:
                replies.error(p.req_id, exc.code, exc.message)
            except Exception as exc:  # runs in the verifier's task: never let it fail there
                replies.failed(p.req_id, exc)


class BatchReplies:
    """Collects a batch's per-item answers; answers the request once all are in."""

    def __init__(self, replies: Replies, req_id: Any, n: int):
        self.replies = replies
        self.req_id = req_id
        self.results: list = [None] * n
        self.left = n

    def item(self, i: int) -> Replies:
        return _BatchItem(self, i)

    def _done(self, i: int, answer: Any) -> None:
        self.results[i] = answer
        self.left -= 1
        if self.left == 0:
            self.replies.result(self.req_id, self.results)


class _BatchItem:
    """One item's ``Replies``: its answer goes into the batch's list."""

    __slots__ = ("batch", "i")

    def __init__(self, batch: BatchReplies, i: int):
        self.batch = batch
        self.i = i

    @property
    def closed(self) -> bool:
        return self.batch.replies.closed

    def result(self, req_id: Any, result: Any) -> None:
        self.batch._done(self.i, result)

    def error(self, req_id: Any, code: str | int, message: str) -> None:
        self.batch._done(self.i, {"code": str(code), "message": message})

    def failed(self, req_id: Any, exc: Exception) -> None:
        self.batch.replies.failed(req_id, exc)
