"""Signed messages on the cluster's bus: msgpack ``[public key, signature, body]``.

Gateways' intake batches, validators' progress reports and the primary's heartbeats
travel this way. Each kind signs its body behind a prefix of its own (``DOMAIN``s), so
a signature made for one kind can never pass for another: the admin key signs both the
heartbeats and, on a sequencer's own gateway, intake batches.
"""

from __future__ import annotations

import msgspec

from satchel.signing import Keypair, verify

INTAKE = b"satchel-intake:"
REPORT = b"satchel-report:"
HEARTBEAT = b"satchel-heartbeat:"

_decoder = msgspec.msgpack.Decoder(tuple[bytes, bytes, bytes])


def seal(key: Keypair, domain: bytes, body: bytes) -> bytes:
    return msgspec.msgpack.encode((key.public, key.sign(domain + body), body))


def unpack(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(public key, signature, body), not yet verified: a caller with an allow-list checks
    the key first, which costs less than the signature; None if it is no envelope."""
    try:
        public, signature, body = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError):
        return None
    return (public, signature, body) if len(public) == 32 else None


def signed(public: bytes, signature: bytes, domain: bytes, body: bytes) -> bool:
    return verify(public, (domain + body,), signature) is not None
