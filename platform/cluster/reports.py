"""Validators' progress on the cluster's bus: ``{"verified": h}`` or ``{"verified": h-1,
"diverged": h}`` on ``satchel.validators``, as they send it on the WebSocket block stream.

There a follower is authenticated by its signed hello; here each report is signed by
the validator's key (``msgpack [public key, signature, body]``, body JSON with its time
``at`` in ms), so nobody can speak for a validator, and a report older than the last one
of the same key is ignored. Gateways and sequencers keep them for ``nodeStats`` and /ops.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec

from satchel.ledger.replication import FollowerReport, ValidatorReports
from satchel.cluster import envelope
from satchel.signing import Keypair

SUBJECT = "satchel.validators"


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    verified: int
    at: int
    diverged: int | None = None


_body = msgspec.json.Decoder(_Body)


def seal(key: Keypair, verified: int, diverged: int | None = None) -> bytes:
    body = msgspec.json.encode(_Body(verified, int(time.time() * 1000), diverged))
    return envelope.seal(key, envelope.REPORT, body)


class BusReports:
    """The reports heard on the bus, by validator key (signed, newest kept)."""

    def __init__(self) -> None:
        self.reports = ValidatorReports()
        self._last_at: dict[str, int] = {}

    def take(self, data: bytes) -> bool:
        opened = envelope.unpack(data)
        if opened is None or not envelope.signed(*opened[:2], envelope.REPORT, opened[2]):
            return False
        try:
            body = _body.decode(opened[2])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        public = opened[0]
        key = base64.b64encode(public).decode()
        if body.at <= self._last_at.get(key, 0) or len(self._last_at) > 1024 and key not in self._last_at:
            return False  # stale, or a flood of keys
        self._last_at[key] = body.at
        self.reports.update(key, FollowerReport(body.verified, body.diverged))
        return True

    def on_message(self, msg: Any) -> None:
        self.take(msg.data)
