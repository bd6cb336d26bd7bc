"""WebSocket frames: the envelope schema, params as signed texts, reply and error frames.

Inbound frames are decoded with msgspec schemas (validated, ~0.5 us): ``Request`` for
the envelope; each method's params schema is the API's (``core.instructions``,
``api.handlers``). ``params`` is kept as raw JSON per key so the signature is checked
against the literal text that arrived (a number re-formatted by a parser would no
longer match what the client signed). Error codes
come from ``satchel.core.errors``; payloads are shaped by ``satchel.api.format``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from satchel.core.errors import (  # re-exported: the gateway answers with the core's codes
    EXPIRED, INTERNAL_ERROR, INVALID_ASSET, INVALID_DECIMAL, INVALID_JSON, INVALID_PRICE, INVALID_QUANTITY,
    INVALID_REQUEST, INVALID_SIGNATURE, INVALID_STREAM, INVALID_SUBSCRIPTION, INVALID_SYMBOL, MAINTENANCE,
    PAYLOAD_TOO_LARGE, RESOURCE_NOT_FOUND, SUBSCRIPTION_AUTH, TOO_MANY_REQUESTS, UNAUTHORIZED, UNKNOWN_METHOD,
    RequestError,
)

# ------------------------------------------------------------------ inbound schemas


# an id is echoed in the reply: beyond 64 bits many clients (JavaScript, Go, orjson) cannot read it
RequestId = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | Annotated[str, msgspec.Meta(max_length=256)] | None


class Request(msgspec.Struct):
    method: str
    id: RequestId = None
    params: msgspec.Raw = msgspec.Raw(b"null")
    signature: list[str] | None = None


class _IdOnly(msgspec.Struct):
    id: RequestId = None


request_decoder = msgspec.json.Decoder(Request)
streams_decoder = msgspec.json.Decoder(list[str])
_params_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_id_decoder = msgspec.json.Decoder(_IdOnly)
_str_decoder = msgspec.json.Decoder(str)


def request_id(text: str | bytes) -> int | str | None:
    """Best effort: the ``id`` of a frame that failed validation, so its error names it."""
    try:
        return _id_decoder.decode(text).id
    except (msgspec.DecodeError, RecursionError):
        return None


def split_params(raw: msgspec.Raw) -> dict[str, str]:
    """A request's params as the literal texts the client signed.

    JSON strings give their value, numbers their literal text (a re-formatted number
    would not match the signature, and ``clientId`` may be a number or a string),
    booleans ``true``/``false``; null means absent and is never part of the signed
    string. Nested objects and arrays are refused here, before anything looks inside.
    """
    if bytes(raw) in (b"null", b""):
        return {}
    try:
        fields = _params_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RequestError(INVALID_REQUEST, "params must be an object") from exc
    texts: dict[str, str] = {}
    for key, rawv in fields.items():
        b = bytes(rawv)
        head = b[:1]
        if head == b'"':
            texts[key] = _str_decoder.decode(b)
        elif head == b"n":
            continue
        elif head in (b"{", b"["):
            raise RequestError(INVALID_REQUEST, f"params.{key} must be a string, number or boolean")
        else:
            texts[key] = b.decode()  # true, false or a number: ASCII by JSON's grammar
    return texts


_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def split_batch(raw: msgspec.Raw | bytes) -> list[dict[str, str]]:
    """A batch's params (a JSON array of objects) as one ``split_params`` per item."""
    try:
        items = _batch_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RequestError(INVALID_REQUEST, "params must be an array of objects") from exc
    out = []
    for item in items:
        if bytes(item)[:1] != b"{":
            raise RequestError(INVALID_REQUEST, "each item of the batch must be an object")
        out.append(split_params(item))
    return out


# ------------------------------------------------------------------ frames out


def result_frame(req_id: Any, result: Any) -> str:
    return msgspec.json.encode({"id": req_id, "result": result}).decode()


def error_frame(req_id: Any, code: str | int, message: str) -> str:
    return msgspec.json.encode({"id": req_id, "error": {"code": code, "message": message}}).decode()


__all__ = [
    "EXPIRED",
    "INTERNAL_ERROR",
    "INVALID_ASSET",
    "INVALID_DECIMAL",
    "INVALID_JSON",
    "INVALID_PRICE",
    "INVALID_QUANTITY",
    "INVALID_REQUEST",
    "INVALID_SIGNATURE",
    "INVALID_STREAM",
    "INVALID_SUBSCRIPTION",
    "INVALID_SYMBOL",
    "MAINTENANCE",
    "PAYLOAD_TOO_LARGE",
    "RESOURCE_NOT_FOUND",
    "SUBSCRIPTION_AUTH",
    "TOO_MANY_REQUESTS",
    "UNAUTHORIZED",
    "UNKNOWN_METHOD",
    "RequestError",
]
