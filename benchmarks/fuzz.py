"""Frame fuzzer against a live gateway: hypothesis strategies, oracles, and a soak.

Generation lives here once, for ``tests/test_fuzz.py`` (a bounded run) and for this
script (a soak of >= 1,000,000 frames). The ``gen_*`` generators draw *specs* (plain
data: a request's fields with mutations, a signing recipe, a nesting depth, bytes that
are not UTF-8, random bytes, a frame over a size cap, WebSocket-level garbage) from a
choice source: ``strategy(gen)`` makes a generator a hypothesis strategy (hypothesis
makes its first structural choices and seeds the rest: a draw costs ~60 us here), and
``RandSrc`` runs the same generators on a seeded Random for soak volume. ``Renderer``
turns a spec into bytes at send time, so signed specs carry fresh timestamps however
long the run.

Oracles, checked per round (every connection sends a batch, then waits for a signed
sentinel whose reply comes after every earlier reply on that connection):

1. the node never exits, the gateway keeps serving (a fresh connection gets a correct
   ``depth`` reply), and a fuzzing connection is never closed by the server. Frames
   that may legitimately close a connection (over the hard size cap, invalid UTF-8 in
   a text frame, WebSocket-level garbage) go on throwaway raw connections and are
   only counted.
2. every reply is JSON with ``result`` or ``error.code`` (streams: ``stream`` and
   ``data``), at most one per request id, every frame gets exactly one reply (a
   SUBSCRIBE/UNSUBSCRIBE may be silent), and none is INTERNAL_ERROR (the gateway's
   safety net caught an exception: a crash that did not take the node down).
3. rejected input changes nothing: on *strict* rounds (every other round) no frame
   carries a signature that verifies (checked here, independently, against the
   documented signing string), and the engine's state hash and transaction count must
   not move. On every round the transaction count may grow by at most the number of
   frames whose signature verifies.

A failing round is replayed frame by frame on a fresh node to name the culprit, and a
frame that kills the node is shrunk (runs and chunks removed while it still does).

The soak runs the node in this process (it reads the state hash) and the clients in
``--workers`` processes on the other core; each replays a hypothesis corpus with fresh
ids, keys and timestamps, mixed with fresh Random-drawn specs and byte havoc.

Usage: python -m benchmarks.fuzz [--frames N] [--workers W] [--conns C] [--batch B] [--corpus K] [--seed S]
Exit status 1 if the node died, rejected input changed the state, or any oracle failed.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import nacl.exceptions
import orjson
import trio
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis import seed as hypothesis_seed
from nacl.bindings import crypto_sign_open
from trio_websocket import ConnectionClosed, HandshakeError, connect_websocket_url

from satchel.core.messages import StateHashOf
from satchel.gateway.server import HARD_CAP_FACTOR
from satchel.gateway.wire import send_frames
from satchel.signing import Keypair, sign_request

SOFT_MAX = 16_384  # [gateway] max_frame_bytes: above it PAYLOAD_TOO_LARGE, connection stays
HARD_MAX = HARD_CAP_FACTOR * SOFT_MAX  # trio-websocket's cap in the gateway: above it the connection is closed
MAX_WINDOW_MS = 60_000
FUTURE_MARGIN_MS = 10_000  # a "future" timestamp is this far beyond its window: never valid within a round

SYMBOLS = ["SOL_USDC", "BTC_USDC", "ETH_USDC"]
ASSETS = ["USDC", "SOL", "BTC", "ETH"]
SIGNED_METHODS = ["orderExecute", "orderCancel", "orderCancelAll", "orderQuery", "orderQueryAll", "balanceQuery",
                  "deposit", "adminSetTrading", "adminSetFees"]
# deposits and withdrawals: the account's requests, the admin's chain control, the adapter's reports
CHAIN_METHODS = ["withdraw", "withdrawalQueryAll", "depositQueryAll", "depositAddressQuery", "reconcileQuery", "chainWorkQuery",
                 "chainStatus", "approveSweep", "depositConfirmed", "withdrawalSent", "withdrawalConfirmed",
                 "withdrawalFailed"]
# compliance, points seasons, compensation: the admin's changes, the accounts' referrals and reads
REWARD_METHODS = ["adminSetProfile", "adminSetTierLimits", "adminSetPermission", "accountPermissionsQuery",
                  "adminSetSeason", "adminSetMultiplier", "adminTransfer", "referralCodeCreate", "referralCodeUse",
                  "rewardsQuery"]
METHODS = SIGNED_METHODS + CHAIN_METHODS + REWARD_METHODS + [
    "depth", "ledgerTotals", "nodeStats", "chainStatusQuery", "leaderboard", "SUBSCRIBE", "UNSUBSCRIBE"]
# nodeStats walks HdrHistograms in pure Python on the event loop (~48 ms a call, unsigned):
# the fuzzer sends it at most once per this many frames, or it would be most of the run
NODE_STATS_EVERY = 1_000
WRITE_METHODS = frozenset(["orderExecute", "orderCancel", "orderCancelAll", "deposit", "adminSetTrading", "adminSetFees",
                           "withdraw", "chainStatus", "approveSweep", "depositConfirmed", "withdrawalSent",
                           "withdrawalConfirmed", "withdrawalFailed", "adminSetProfile", "adminSetTierLimits",
                           "adminSetPermission", "adminSetSeason", "adminSetMultiplier", "adminTransfer",
                           "referralCodeCreate", "referralCodeUse"])
STREAMS = [f"{k}.{s}" for k in ("depth", "trade", "bookTicker", "ticker") for s in SYMBOLS] + [
    "account.orderUpdate", "account.orderUpdate.SOL_USDC", "account.balanceUpdate", "account.rfqUpdate",
    "account.positionUpdate", "account.rewardUpdate", "leaderboard"]


# ---------------------------------------------------------------- JSON with anything in it


@dataclass(frozen=True)
class Tok:
    """A literal token written as is: 1e400, 2**70, -0, NaN, 0x10, ..."""
    text: str


@dataclass(frozen=True)
class Obj:
    """A JSON object as ordered pairs: duplicate keys allowed."""
    pairs: tuple


@dataclass(frozen=True)
class BadStr:
    """A JSON string whose bytes are not UTF-8 (only in binary frames)."""
    head: str
    raw: bytes
    tail: str


@dataclass(frozen=True)
class Nest:
    """``leaf`` nested ``depth`` levels deep, in arrays, objects or both; maybe unclosed."""
    depth: int
    style: str  # "[", "{", "mix"
    leaf: Any
    closed: bool = True

    def __repr__(self) -> str:
        return f"Nest(depth={self.depth}, style={self.style!r}, leaf={self.leaf!r}, closed={self.closed})"


@dataclass(frozen=True)
class Sig:
    """A signing recipe for the ``signature`` field, applied when the frame is rendered."""
    key: str  # "fresh", "pool<i>", "admin"
    instruction: str | None  # None: the frame's method
    sign_params: Obj | None  # what was signed; None: the frame's final params (mutate, then sign)
    ts_offset: int  # ms from now
    ts_format: str  # "T" is replaced by the timestamp
    window: str
    enc: int  # 0 plain, 1 urlencode, 2 quote(safe='')
    corrupt: tuple  # ops applied to [apiKey, signature, timestamp, window] afterwards


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str:  # unpickled as the module's own singleton (specs come back from workers)
        return self.name


MISSING = _Marker("MISSING")
UNIQUE = _Marker("UNIQUE")  # a fresh integer id, so the reply can be matched


@dataclass(frozen=True)
class Req:
    """A frame: ``body`` is an Obj of top-level pairs (or any value: a frame that is not an object)."""
    body: Any
    binary: bool = False
    mode: int = 0  # strings: 0 raw UTF-8, 1 ASCII escapes, 2 every character escaped


@dataclass(frozen=True)
class RawFrame:
    data: bytes
    binary: bool  # as text: the bytes read as latin-1


@dataclass(frozen=True)
class Big:
    """``base`` padded to ``size`` bytes (around the soft and the hard cap)."""
    base: Req
    size: int


@dataclass(frozen=True)
class Proto:
    """WebSocket-level garbage, written on a throwaway raw connection."""
    op: str
    arg: Any = None


@dataclass(frozen=True)
class Havoc:
    """``base`` rendered, then byte-mutated by ``random.Random(seed)`` (AFL-style)."""
    base: Any
    seed: int
    binary: bool


def _esc_all(s: str) -> str:
    out = []
    for c in s:
        o = ord(c)
        if o > 0xFFFF:
            o -= 0x10000
            out.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}")
        else:
            out.append(f"\\u{o:04x}")
    return '"' + "".join(out) + '"'


def _str(s: str, mode: int, binary: bool) -> bytes:
    if mode == 2:
        return _esc_all(s).encode()
    if mode == 1:
        return json.dumps(s).encode()
    t = json.dumps(s, ensure_ascii=False)
    try:
        return t.encode()
    except UnicodeEncodeError:  # a lone surrogate: raw (invalid UTF-8) in binary frames, escaped in text
        return t.encode("utf-8", "surrogatepass") if binary else json.dumps(s).encode()


def dump(v: Any, mode: int = 0, binary: bool = False, sig: Any = None) -> bytes:
    """Serialize a value tree; ``sig(Sig) -> list`` renders signing recipes."""
    out: list[bytes] = []
    _dump(v, out, mode, binary, sig)
    return b"".join(out)


def _dump(v: Any, out: list, mode: int, binary: bool, sig: Any) -> None:
    if v is None:
        out.append(b"null")
    elif v is True:
        out.append(b"true")
    elif v is False:
        out.append(b"false")
    elif isinstance(v, str):
        out.append(_str(v, mode, binary))
    elif isinstance(v, int):
        out.append(str(v).encode())
    elif isinstance(v, float):
        out.append(repr(v).encode())
    elif isinstance(v, Tok):
        out.append(v.text.encode("utf-8", "surrogatepass"))
    elif isinstance(v, bytes):  # raw bytes outside any string
        out.append(v)
    elif isinstance(v, BadStr):
        out.append(b'"' + json.dumps(v.head)[1:-1].encode() + v.raw + json.dumps(v.tail)[1:-1].encode() + b'"')
    elif isinstance(v, Obj):
        out.append(b"{")
        for i, (k, x) in enumerate(v.pairs):
            if i:
                out.append(b",")
            _dump(k, out, mode, binary, sig)
            out.append(b":")
            _dump(x, out, mode, binary, sig)
        out.append(b"}")
    elif isinstance(v, (list, tuple)):
        out.append(b"[")
        for i, x in enumerate(v):
            if i:
                out.append(b",")
            _dump(x, out, mode, binary, sig)
        out.append(b"]")
    elif isinstance(v, Nest):
        d = v.depth
        if v.style == "[":
            opens, closes = b"[" * d, b"]" * d
        elif v.style == "{":
            opens, closes = b'{"a":' * d, b"}" * d
        else:
            opens = b'[{"a":' * (d // 2) + (b"[" if d % 2 else b"")
            closes = (b"]" if d % 2 else b"") + b"}]" * (d // 2)
        out.append(opens)
        _dump(v.leaf, out, mode, binary, sig)
        if v.closed:
            out.append(closes)
    elif isinstance(v, Sig):
        _dump(sig(v) if sig is not None else None, out, mode, binary, sig)
    elif v is MISSING or v is UNIQUE:
        out.append(b"null")
    else:
        raise TypeError(f"cannot dump {type(v).__name__}")


# ---------------------------------------------------------------- the signing string, independently


_params_dec = msgspec.json.Decoder(dict[str, msgspec.Raw])
_str_dec = msgspec.json.Decoder(str)
_sig_dec = msgspec.json.Decoder(list[str])


def param_texts(raw: bytes) -> dict[str, str] | None:
    """The params' literal texts as the README defines them (strings decoded, numbers and
    nested values as their JSON text, null left out); None if params is not an object."""
    if raw.strip() in (b"", b"null"):
        return {}
    try:
        fields = _params_dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return None
    texts = {}
    for k, rv in fields.items():
        b = bytes(rv)
        if b[:1] == b'"':
            try:
                texts[k] = _str_dec.decode(b)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):  # msgspec: UnicodeDecodeError on bad UTF-8
                return None
        elif b == b"null":
            continue
        else:
            texts[k] = b.decode("utf-8", "surrogateescape")
    return texts


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def signing_strings(instruction: str, texts: dict[str, str], ts: str, window: str) -> list[bytes]:
    """Every form a client may have signed: plain, urlencoded (old ccxt), quote(safe='')."""
    items = sorted(texts.items())
    forms = ["&".join(f"{k}={v}" for k, v in items)]
    try:
        forms.append(urlencode(items))
        forms.append("&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in items))
    except UnicodeEncodeError:
        pass
    out = []
    for body in forms:
        head = f"instruction={instruction}&{body}" if body else f"instruction={instruction}"
        out.append(_enc(f"{head}&timestamp={ts}&window={window}"))
    return out


def _b64(text: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return raw if len(raw) == size else None


def could_sequence(data: bytes, now_ms: int | None = None) -> bool:
    """Whether this frame carries a signature that verifies (and a usable window), so
    the gateway might legitimately put it in a block. An over-approximation: schema and
    admin checks are not looked at."""
    if b"signature" not in data and b"\\u" not in data:
        return False
    try:
        top = _params_dec.decode(data)
        sig = _sig_dec.decode(top["signature"])
        method = _str_dec.decode(top["method"])
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError):
        return False
    if len(sig) != 4:
        return False
    texts = param_texts(bytes(top.get("params", b"null")))
    public, signature = _b64(sig[0], 32), _b64(sig[1], 64)
    if texts is None or public is None or signature is None:
        return False
    try:
        ts, window = int(sig[2]), int(sig[3])
    except ValueError:
        return False
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if not 0 < window <= MAX_WINDOW_MS or ts + window < now - 1000 or ts - window > now + FUTURE_MARGIN_MS:
        return False
    forms = signing_strings(method, texts, sig[2], sig[3])
    if (str(ts), str(window)) != (sig[2], sig[3]):  # a gateway may sign over the integers as parsed
        forms += signing_strings(method, texts, str(ts), str(window))
    for msg in forms:
        try:
            crypto_sign_open(signature + msg, public)
            return True
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            continue
    return False


# ---------------------------------------------------------------- generation


class Src:
    """Where a generator's choices come from. ``HypSrc``: hypothesis draws (the first
    structural choices; the details from a Random seeded by a hypothesis draw, since a
    draw costs ~60 us here). ``RandSrc``: a seeded Random, for soak volume. The same
    generators serve both, so there is one definition of what a frame can be."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def text(self, max_size: int) -> str:
        raise NotImplementedError

    def binary(self, max_size: int) -> bytes:
        raise NotImplementedError

    def float(self) -> float:
        raise NotImplementedError

    def pick(self, seq: Any) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, yes: int, no: int) -> bool:
        return self.int(0, yes + no - 1) < yes

    def weighted(self, *pairs: tuple[int, Any]) -> Any:
        """One of ``pairs`` by weight: a callable is called with this source, a value returned."""
        i = self.int(0, sum(w for w, _ in pairs) - 1)
        for w, x in pairs:
            if i < w:
                return x(self) if callable(x) else x
            i -= w
        raise AssertionError

    def perm(self, seq: Any) -> list:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.int(0, i)
            out[i], out[j] = out[j], out[i]
        return out

    def many(self, gen: Any, lo: int, hi: int) -> list:
        return [gen(self) for _ in range(self.int(lo, hi))]


_ALPHABETS = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x2FF), (0x590, 0x6FF), (0x200B, 0x206F), (0xD800, 0xDFFF),
              (0xE000, 0xFFFF), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]


class RandSrc(Src):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def text(self, max_size: int) -> str:
        r = self.rng
        lo, hi = _ALPHABETS[0] if r.random() < 0.5 else r.choice(_ALPHABETS)
        return "".join(chr(r.randint(lo, hi)) for _ in range(r.randint(0, max_size)))

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))

    def float(self) -> float:
        r = self.rng
        x = r.choice([0.0, -0.0, 0.1, 1e308, -1e308, 5e-324, 1.5, 2.0**53 + 1, r.uniform(-1e6, 1e6),
                      struct_float(r.getrandbits(64))])
        return x if x == x and abs(x) != float("inf") else 0.5


def struct_float(bits: int) -> float:
    import struct
    return struct.unpack("<d", bits.to_bytes(8, "little"))[0]


@functools.lru_cache(maxsize=None)
def _st_int(lo: int, hi: int) -> st.SearchStrategy:
    return st.integers(lo, hi)


@functools.lru_cache(maxsize=None)
def _st_text(n: int) -> st.SearchStrategy:
    return st.text(max_size=n)


@functools.lru_cache(maxsize=None)
def _st_binary(n: int) -> st.SearchStrategy:
    return st.binary(max_size=n)


_st_float = st.floats(allow_nan=False, allow_infinity=False)
HYPOTHESIS_DRAWS = 14  # structural choices made by hypothesis per spec; the rest seeded by it


class HypSrc(Src):
    def __init__(self, draw: Any, budget: int = HYPOTHESIS_DRAWS):
        self.draw = draw
        self.left = budget
        self.rand = RandSrc(random.Random(draw(_st_int(0, 2**64 - 1))))

    def _hyp(self) -> bool:
        self.left -= 1
        return self.left >= 0

    def int(self, lo: int, hi: int) -> int:
        if not self._hyp():
            return self.rand.int(lo, hi)
        if hi - lo < 1 << 16:  # hypothesis favours a range's ends; a choice among a few should not
            return lo + self.draw(_st_int(0, (1 << 32) - 1)) % (hi - lo + 1)
        return self.draw(_st_int(lo, hi))

    def text(self, max_size: int) -> str:
        return self.draw(_st_text(max_size)) if self._hyp() else self.rand.text(max_size)

    def binary(self, max_size: int) -> bytes:
        return self.draw(_st_binary(max_size)) if self._hyp() else self.rand.binary(max_size)

    def float(self) -> float:
        return self.draw(_st_float) if self._hyp() else self.rand.float()


SPECIAL_STRINGS = [
    "", " ", "\x00", "a\x00b", "\u202eSOL_USDC\u202c", "\u200fBid", "\u200b", "\ufeff", "\u2028", "\u0085", "\x7f",
    "\x1b[31m", "مرحبا", "שלום", "😀", "👩‍👩‍👧‍👦", "\U0010ffff", "\ud800", "\udfff", "\ud83d", "a\udc00b", "e\u0301",
    "Ｂｉｄ", "ＳＯＬ＿ＵＳＤＣ", "SOL_USDC\x00", "SOL_USDC ", " SOL_USDC", "sol_usdc", "Ѕоl_USDC", "SOL_USDC\u200b",
    "\\", '"', "\\u0000", "%00", "%s%n%x", "${jndi:ldap://x}", "../../etc/passwd", "null", "true", "NaN", "Infinity",
    "1e400", "-0", "0x10", "١٢٣", "１２３", "²", "Ⅻ", "x" * 300, "😀" * 100, "\ud800" * 10,
]
SPECIAL_CHARS = sorted(set("".join(SPECIAL_STRINGS)) | {"\u202e", "\u200f", "\u061c", "\ud800", "\udbff", "\udc00"})
NUMBER_TOKENS = [
    "1e400", "-1e400", "1e-400", "-1e-400", "-0", "-0.0", "0e0", "0E-0", "1E+2", "1e308", "2.5e-324",
    str(2**53 + 1), str(2**63 - 1), str(2**63), str(2**64), str(2**64 + 1), str(2**70), str(-2**70), str(2**32),
    str(-2**63 - 1), "9" * 400, "0." + "0" * 400 + "1", "1" + "0" * 5000,
    # not JSON numbers at all
    "NaN", "-NaN", "Infinity", "-Infinity", "inf", "nan", "01", "-01", "1.", ".5", "+1", "0x10", "1_000", "1e", "--1",
    "0b1", "1.2.3", "１", "١",
]
DECIMAL_TEXTS = [
    "150.25", "150", "140", "1", "0.01", "1.5", "0.1", "10", "100.5", "0", "0.00", "0.001", "140.001", "1.005",
    "-1", "+1", "-0", "1e2", "1E2", "1.2.3", ".5", "5.", " 1", "1 ", "", "١", "１", "1_0", "0x1", "NaN", "Infinity",
    "9" * 30, "9" * 19, "4611686018427387904", "0." + "0" * 60 + "1", "1" + "0" * 70, "1,5", "½", "1e-400",
]
_AFFIX = SYMBOLS + METHODS + ASSETS


def gen_unicode(s: Src) -> str:
    return s.weighted(
        (4, lambda s: s.pick(SPECIAL_STRINGS)),
        (2, lambda s: s.text(16)),
        (2, lambda s: "".join(s.pick(SPECIAL_CHARS) for _ in range(s.int(0, 12)))),
        (2, lambda s: s.pick(_AFFIX) + s.pick(SPECIAL_CHARS) + s.pick(["", "x", "_USDC"])),
    )


def gen_number(s: Src) -> Any:
    return s.weighted(
        (3, lambda s: Tok(s.pick(NUMBER_TOKENS))),
        (2, lambda s: s.int(-2**80, 2**80)),
        (1, lambda s: s.int(-5, 2**32 + 5)),
        (1, lambda s: s.float()),
    )


def gen_scalar(s: Src) -> Any:
    return s.weighted((1, None), (1, lambda s: s.chance(1, 1)), (3, gen_number), (3, gen_unicode))


def gen_json(s: Src, depth: int = 0) -> Any:
    """Any JSON value, at most three levels of containers."""
    kind = s.int(0, 5) if depth < 3 else 0
    if kind <= 3:
        return gen_scalar(s)
    if kind == 4:
        return [gen_json(s, depth + 1) for _ in range(s.int(0, 4))]
    return Obj(tuple((gen_unicode(s), gen_json(s, depth + 1)) for _ in range(s.int(0, 4))))


def gen_nest(s: Src, leaf: Any = None) -> Nest:
    """A value 50..9,000 levels deep (the known RecursionError is at ~1,000)."""
    depth = s.weighted((5, lambda s: s.int(900, 2_500)), (2, lambda s: s.int(2_500, 9_000)), (1, lambda s: s.int(50, 900)))
    return Nest(depth, s.pick(["[", "[", "{", "mix"]), gen_scalar(s) if leaf is None else leaf, s.chance(4, 1))


_GOOD: dict[str, list] = {
    "symbol": SYMBOLS, "side": ["Bid", "Ask"], "orderType": ["Limit", "Market"],
    "price": ["150.25", "150", "140", "0.01", "90000.1", "3000.55"], "quantity": ["1", "0.01", "1.5", "0.00001"],
    "quoteQuantity": ["10", "100.5", "0.000001"], "timeInForce": ["GTC", "IOC", "FOK"], "postOnly": [True, False],
    "reduceOnly": [False], "clientId": [0, 1, 7, 2**32 - 1, "42"], "selfTradePrevention": ["RejectTaker", "RejectMaker", "RejectBoth"],
    "orderId": [1, 2, 12_345, "3"], "asset": ASSETS, "enabled": [True, False], "makerFeeBps": [-1, 0, 2, 10_000],
    "takerFeeBps": [0, 5, 10_000], "account": ["@pool0", "@pool1", "@admin", "@fresh"],
    "limit": ["1", "10", "1000", 5], "offset": ["0", "1", 3], "reset": [False, "false", True],
    # odd but valid texts (&, =, %, unicode) where a chain request takes free text
    "blockchain": ["sim", "Sim", "SIM"], "chain": ["sim"], "address": ["sim1abc", "0xdead", "a&b=c%d", "ünï ✓"],
    "txHash": ["0xabc", "0x&=%20", "hash ü"], "logIndex": ["0", "1", "4294967295"], "withdrawalId": ["1", "19", 7],
    "reason": ["", "node maintenance", "a&b=c%25", "∑ü ✓"], "paused": ["true", "false"],
    "id": ["1", 2], "from": ["0", "1700000000000"], "to": ["9999999999999"], "excludePlatform": ["true", "false"],
    "twoFactorToken": ["123456"], "autoBorrow": ["false"], "autoLendRedeem": ["true"],
    # compliance, seasons, referrals, transfers: odd but valid texts where a name or code is free
    "kycTier": ["0", "1", "255"], "jurisdiction": ["XX", "US", "*", "eu-1"], "tags": ["", "vip", "a,b,c", "a&b"],
    "tier": ["0", "1"], "withdrawalsPerDay": ["0", "3"], "maxOrderNotional": ["", "USDC:1000", "USDC:0.5,SOL:2"],
    "product": ["spot", "perps", "margin", "lending", "withdrawals"], "allowed": ["true", "false", "inherit"],
    "name": ["Season 2", "a&b=c%d", "s"], "start": ["0", "1700000000000"], "end": ["9000000000000"],
    "makerWeight": ["100", "0"], "takerWeight": ["50"], "referralBps": ["1000", "0"], "lendWeight": ["0", "100"],
    "factor": ["2", "1.5", "1"], "fromHeight": ["1", "5"], "toHeight": ["0", "10"], "tag": ["community", "vip"],
    "source": ["@admin", "@pool0"], "target": ["@pool1", "@fresh"], "code": ["alice-1", "A_b", "x"],
    "season": ["1", "2"],
}
_NEAR: dict[str, list] = {
    "symbol": ["DOGE_USDC", "sol_usdc", "SOL-USDC", "SOLUSDC", "SOL_USDC\x00", "ＳＯＬ＿ＵＳＤＣ", "USDC_SOL", ""],
    "side": ["Buy", "Sell", "bid", "ASK", "Bid ", "", "Ｂｉｄ"], "orderType": ["limit", "Stop", "MARKET", "Limit\u200b"],
    "timeInForce": ["gtc", "GTD", "IOC ", "PostOnly"], "postOnly": ["true", 1, 0, "false", None],
    "reduceOnly": [True, "true", 1], "clientId": [-1, 2**32, 2**64, Tok("1e400"), 1.5, Tok("-0"), "0x10", "", " 1", "١"],
    "selfTradePrevention": ["Reject", "rejecttaker", "DecrementAndCancel"], "orderId": [-1, 0, 2**63, 2**64, Tok("1e400"), 1.5, "x"],
    "asset": ["usdc", "DOGE", "USDC\x00", "", "US DC"], "enabled": ["false", 0, 1, None, "yes"],
    "makerFeeBps": [-10_001, 10_001, 2**63, Tok("1e400"), "2", 1.5, Tok("-0")], "takerFeeBps": [-1, 2**31, Tok("NaN"), "5"],
    "account": ["", "not base64!", "AAAA", "A" * 43 + "=", "A" * 44, "@pool0\n"],
    "limit": ["-1", "0", "1001", "1e3", str(2**64), Tok("1e400"), "", " 1"], "offset": ["-1", str(2**64), "1.5", "x"],
    "reset": ["true", 1, "yes"],
    "blockchain": ["Solana", "ethereum", "sim\x00", "", "ｓｉｍ"], "chain": ["SIM", "nope", ""],
    "address": ["", "x" * 129, "line\nbreak", "\x00"], "txHash": ["", "x" * 300, "\x7f"],
    "logIndex": ["-1", "4294967296", str(2**64), "1.5"], "withdrawalId": ["-1", "0", str(2**64), "x"],
    "reason": ["x" * 300, "\x00"], "paused": ["yes", 1, None],
    "kycTier": ["256", "-1", "1.0", ""], "jurisdiction": ["X X", "ü", "x" * 17, "a\x00"], "tags": [",,", "a b", "é"],
    "allowed": ["yes", True, None], "product": ["futures", "SPOT", ""], "code": ["", "x" * 33, "a b", "é", "a&b"],
    "factor": ["0.5", "101", "-2", "2.001", "1e1"], "fromHeight": ["0", "-1", str(2**64)], "toHeight": ["-1", "x"],
    "maxOrderNotional": ["USDC", "USDC:-1", "DOGE:5", ":", "USDC:1e3"], "start": ["-1", "x"], "season": ["-1", "x", ""],
}
for _f in ("price", "quantity", "quoteQuantity"):
    _NEAR[_f] = DECIMAL_TEXTS + [Tok(t) for t in ("1", "150.25", "1e2", "-0", "1e400", "01")]

TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "orderExecute": (["symbol", "side", "orderType", "price", "quantity"],
                     ["quoteQuantity", "timeInForce", "postOnly", "clientId", "selfTradePrevention", "reduceOnly"]),
    "orderCancel": (["symbol"], ["orderId", "clientId"]),
    "orderCancelAll": (["symbol"], []),
    "orderQuery": (["symbol"], ["orderId", "clientId"]),
    "orderQueryAll": ([], ["symbol", "limit", "offset"]),
    "balanceQuery": ([], []),
    "depth": (["symbol"], []),
    "deposit": (["account", "asset", "quantity"], []),
    "adminSetTrading": (["enabled"], ["account", "symbol"]),
    "adminSetFees": (["symbol", "makerFeeBps", "takerFeeBps"], []),
    "ledgerTotals": ([], ["asset", "symbol", "account"]),
    "nodeStats": ([], ["reset"]),
    "withdraw": (["blockchain", "symbol", "quantity", "address"], ["clientId", "twoFactorToken", "autoBorrow",
                                                                    "autoLendRedeem"]),
    "withdrawalQueryAll": ([], ["id", "clientId", "from", "to", "limit", "offset"]),
    "depositQueryAll": ([], ["from", "to", "limit", "offset", "excludePlatform"]),
    "depositAddressQuery": (["blockchain"], []),
    "chainStatusQuery": ([], []),
    "reconcileQuery": ([], []),
    "chainStatus": (["chain", "paused"], ["reason"]),
    "approveSweep": (["chain", "symbol", "quantity"], []),
    "depositConfirmed": (["chain", "txHash", "logIndex", "account", "symbol", "quantity"], []),
    "withdrawalSent": (["chain", "withdrawalId", "txHash"], []),
    "withdrawalConfirmed": (["chain", "withdrawalId"], []),
    "withdrawalFailed": (["chain", "withdrawalId", "reason"], []),
    "adminSetProfile": (["account", "kycTier"], ["jurisdiction", "tags"]),
    "adminSetTierLimits": (["tier"], ["withdrawalsPerDay", "maxOrderNotional"]),
    "adminSetPermission": (["allowed"], ["account", "jurisdiction", "product", "symbol"]),
    "accountPermissionsQuery": ([], ["account"]),
    "adminSetSeason": (["id", "name", "start", "end"], ["asset", "makerWeight", "takerWeight", "referralBps", "lendWeight"]),
    "adminSetMultiplier": (["factor", "fromHeight"], ["toHeight", "account", "tag"]),
    "adminTransfer": (["source", "target", "asset", "quantity"], []),
    "referralCodeCreate": (["code"], []),
    "referralCodeUse": (["code"], []),
    "rewardsQuery": ([], ["account", "season"]),
    "leaderboard": ([], ["season", "limit"]),
}
_TEMPLATE_NAMES = sorted(TEMPLATES)
_ACCOUNT_FIELDS = frozenset({"account", "source", "target"})  # "@<name>" there names a key of the run
_KEY_NAMES = sorted({k for r, o in TEMPLATES.values() for k in r + o} | {"pad", "id", "method", "signature", "params"})


def gen_field(s: Src, name: str) -> Any:
    return s.weighted(
        (10, lambda s: s.pick(_GOOD.get(name, ["x"]))),
        (3, lambda s: s.pick(_NEAR.get(name, ["", "x"]))),
        (1, gen_json),
        (1, gen_unicode),
    )


def gen_key(s: Src) -> str:
    return s.weighted(
        (3, lambda s: s.pick(_KEY_NAMES)),
        (1, lambda s: s.pick(_KEY_NAMES).lower()),
        (1, lambda s: s.pick(_KEY_NAMES) + "\x00"),
        (2, gen_unicode),
    )


def gen_mutation(s: Src) -> tuple:
    return s.weighted(
        (2, lambda s: ("drop", s.int(0, 15))),
        (2, lambda s: ("dup", s.int(0, 15), MISSING if s.chance(1, 1) else gen_scalar(s))),
        (3, lambda s: ("retype", s.int(0, 15), gen_json(s) if s.chance(4, 1) else gen_nest(s))),
        (2, lambda s: ("extra", gen_key(s), gen_json(s))),
        (1, lambda s: ("rename", s.int(0, 15), gen_key(s))),
        (3, lambda s: ("near", s.int(0, 15), s.int(0, 1000))),
    )


def apply_mutations(pairs: tuple, ops: list) -> tuple:
    out = list(pairs)
    for op in ops:
        kind = op[0]
        if kind == "extra":
            out.append((op[1], op[2]))
            continue
        if not out:
            continue
        i = op[1] % len(out)
        k, v = out[i]
        if kind == "drop":
            del out[i]
        elif kind == "dup":
            out.append((k, v if op[2] is MISSING else op[2]))
        elif kind == "retype":
            out[i] = (k, op[2])
        elif kind == "rename":
            out[i] = (op[2], v)
        elif kind == "near":
            choices = _NEAR.get(k) if isinstance(k, str) else None
            if choices:
                out[i] = (k, choices[op[2] % len(choices)])
    return tuple(out)


def gen_params(s: Src, method: str) -> tuple[Obj, Obj]:
    """(as signed, as sent): a template's fields in any order, then dropped, duplicated,
    retyped, renamed, near-missed, or joined by extra fields."""
    required, optional = TEMPLATES[method]
    ops = s.weighted((2, lambda s: []), (5, lambda s: s.many(gen_mutation, 1, 3)))
    chosen = list(required) + [f for f in optional if s.int(0, 2) == 0]
    pairs = tuple((f, gen_field(s, f)) for f in (s.perm(chosen) if s.chance(1, 1) else chosen))
    return Obj(pairs), Obj(apply_mutations(pairs, ops))


BASE = _Marker("BASE")  # in a recipe: sign the params as they were before mutation
_WINDOWS_ODD = ["0", "-1", "60001", "1000000000000", "5000 ", " 5000", "5e3", "5_000", "\u0665\u0660\u0660\u0660", "", "abc",
                "9" * 5000, "+5000", "05000"]
_TS_FORMATS = [" T", "T ", "+T", "0T", "T.0", "T_", "-T", "Te0", "T\x00", ""]
_B64_VARIANTS = ["strip", "nl", "urlsafe", "pad", "space", "lower"]


def gen_corrupt(s: Src) -> tuple:
    return s.weighted(
        (2, lambda s: ("set", s.int(0, 5), gen_scalar(s) if s.chance(3, 1) else gen_json(s))),
        (1, lambda s: ("drop", s.int(0, 5))),
        (1, lambda s: ("add", gen_scalar(s))),
        (3, lambda s: ("flip", s.int(0, 3), s.int(0, 200))),
        (2, lambda s: ("otherkey", s.int(0, 7))),
        (2, lambda s: ("b64", s.pick(_B64_VARIANTS))),
        (1, lambda s: ("swap",)),
    )


def gen_sig(s: Src) -> Sig:
    """A signing recipe: which key, what is signed (before or after the mutations), the
    timestamp (in, before or after its window), window text, encoding, corruptions."""
    corrupt = s.weighted((5, ()), (4, lambda s: tuple(s.many(gen_corrupt, 1, 2))))
    sign_params = s.weighted((3, BASE), (2, None))
    ts_offset = s.weighted((6, lambda s: s.int(-1_500, 1_500)),
                           (2, lambda s: s.int(-10**12, -MAX_WINDOW_MS - 3_000)),
                           (2, lambda s: s.int(MAX_WINDOW_MS + FUTURE_MARGIN_MS + 5_000, 10**12)),
                           (1, lambda s: s.pick([-2**62, 2**62, 10**30])))
    key = s.weighted((4, lambda s: f"pool{s.int(0, 7)}"), (3, "fresh"), (1, "admin"))
    window = s.weighted((6, lambda s: s.pick(["5000", "60000", "1000"])), (2, lambda s: s.pick(_WINDOWS_ODD)))
    instruction = s.weighted((10, None), (1, lambda s: s.pick(METHODS + ["subscribe", "orderexecute", ""])), (1, gen_unicode))
    ts_format = s.weighted((8, "T"), (1, lambda s: s.pick(_TS_FORMATS)))
    enc = s.weighted((6, 0), (1, 1), (1, 2))
    return Sig(key, instruction, sign_params, ts_offset, ts_format, window, enc, corrupt)


def _bind(sig: Sig, base: Obj, instruction: str | None = None) -> Sig:
    sign_params = base if sig.sign_params is BASE else sig.sign_params
    return Sig(sig.key, sig.instruction if sig.instruction is not None else instruction, sign_params, sig.ts_offset,
               sig.ts_format, sig.window, sig.enc, sig.corrupt)


_ODD_METHODS = ["subscribe", "Subscribe", "orderTeleport", "__init__", "_METHODS", "handle", "depth\x00", "run", "push"]


def gen_method(s: Src) -> Any:
    return s.weighted(
        (30, lambda s: s.pick(METHODS)),
        (2, lambda s: s.pick(METHODS).lower()),
        (1, lambda s: s.pick(METHODS).upper()),
        (1, lambda s: s.pick(_ODD_METHODS)),
        (2, gen_unicode),
        (2, gen_json),
    )


_ODD_STREAMS = ["depth.", "depth", "depth.DOGE_USDC", "account.balanceUpdate.SOL_USDC", "account.orderUpdate.DOGE",
                "account.", "account.x.y.z", "trade.SOL_USDC.x", ".", "DEPTH.SOL_USDC", "account.rfqUpdate.SOL_USDC"]


def gen_stream(s: Src) -> Any:
    return s.weighted((6, lambda s: s.pick(STREAMS)), (2, lambda s: s.pick(_ODD_STREAMS)), (2, gen_unicode), (1, gen_json))


def gen_streams(s: Src) -> Any:
    return s.weighted((6, lambda s: s.many(gen_stream, 0, 5)), (1, gen_json), (1, lambda s: s.pick(STREAMS)))


def gen_request(s: Src, binary: bool | None = None) -> Req:
    """A request: every field present, missing, retyped or mutated; signed in every way."""
    method = gen_method(s)
    subscription = method in ("SUBSCRIBE", "UNSUBSCRIBE")
    template = method if isinstance(method, str) and method in TEMPLATES else s.pick(_TEMPLATE_NAMES)
    if subscription:
        sig = s.weighted((3, MISSING), (2, gen_sig), (1, gen_json))
        sig = _bind(sig, Obj(()), "subscribe") if isinstance(sig, Sig) else sig
    elif method in ("depth", "ledgerTotals", "nodeStats"):
        sig = s.weighted((6, MISSING), (1, gen_sig), (1, gen_json))
    else:
        sig = s.weighted((14, gen_sig), (2, MISSING), (2, gen_json))
    req_id = s.weighted((12, UNIQUE), (1, MISSING), (1, lambda s: s.int(-2**70, 2**70)), (1, gen_number), (1, gen_unicode), (1, gen_json))
    if binary is None:
        binary = s.chance(1, 4)
    mode = s.weighted((14, 0), (4, 1), (2, 2))
    base, final = gen_params(s, template)
    if subscription:
        params = gen_streams(s)
    else:
        params = s.weighted((16, final), (1, MISSING), (1, gen_json), (1, lambda s: s.pick([Tok("1e400"), [], "{}", Obj(())])))
    if isinstance(sig, Sig) and sig.sign_params is BASE:
        sig = _bind(sig, base)
    fields = [("id", req_id), ("method", method), ("params", params), ("signature", sig)]
    fields = [f for f in fields if f[1] is not MISSING]
    for _ in range(s.weighted((10, 0), (1, 1), (1, 2))):
        fields.append((gen_key(s), gen_json(s)))
    if s.int(0, 19) == 0 and fields:  # a top-level key twice
        i = s.int(0, len(fields) - 1)
        fields.insert(s.int(0, len(fields)), (fields[i][0], gen_json(s)))
    if s.int(0, 3) == 0:
        fields = s.perm(fields)
    return Req(Obj(tuple(fields)), binary, mode)


def _replace_at(body: Obj, where: str, make: Any) -> Obj:
    """``body`` with one position (envelope field, a param's value or key, a signature
    element, a stream name) replaced by ``make(old)``."""
    pairs = list(body.pairs)

    def field_index(name: str) -> int:
        for i, (k, _) in enumerate(pairs):
            if k == name:
                return i
        pairs.append((name, None))
        return len(pairs) - 1

    if where in ("id", "method", "params", "signature", "extra"):
        if where == "extra":
            pairs.append(("pad", make(None)))
        else:
            i = field_index(where)
            pairs[i] = (where, make(pairs[i][1]))
    elif where in ("param_value", "param_key"):
        i = field_index("params")
        p = pairs[i][1]
        inner = list(p.pairs) if isinstance(p, Obj) and p.pairs else [("symbol", "SOL_USDC")]
        k, v = inner[0]
        inner[0] = (make(k), v) if where == "param_key" else (k, make(v))
        pairs[i] = ("params", Obj(tuple(inner)))
    elif where == "nested_value":  # a param whose value is a list holding the thing
        i = field_index("params")
        p = pairs[i][1]
        inner = list(p.pairs) if isinstance(p, Obj) else []
        inner.append(("symbol", [make(None)]))
        pairs[i] = ("params", Obj(tuple(inner)))
    elif where in ("signature_elem", "stream"):
        name = "signature" if where == "signature_elem" else "params"
        i = field_index(name)
        pairs[i] = (name, ["AAAA", make(None), "1", "5000"] if where == "signature_elem" else ["depth.SOL_USDC", make(None)])
    return Obj(tuple(pairs))


NEST_PLACES = ["frame", "params", "param_value", "nested_value", "signature", "signature_elem", "id", "method", "extra", "stream"]
BAD_PLACES = ["param_value", "param_key", "nested_value", "method", "id", "signature_elem", "stream", "extra"]
BAD_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
            b"\xe2\x82", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xa0\xa1"]


def gen_nested_frame(s: Src) -> Req:
    """A value nested 50..9,000 levels deep: the whole frame, or in any field."""
    where = s.pick(NEST_PLACES)
    binary = s.chance(1, 3)
    nest = gen_nest(s)
    if where == "frame":
        return Req(nest, binary, 0)
    base = gen_request(s, binary)
    return Req(_replace_at(base.body, where, lambda _old: nest), binary, base.mode)


def gen_bad_utf8_frame(s: Src) -> Req:
    """A binary frame with bytes that are not UTF-8 inside a string (or outside any)."""
    where = s.pick(BAD_PLACES + ["raw"])
    bad = b"".join(s.pick(BAD_UTF8) for _ in range(s.int(1, 3)))
    head, tail = s.pick([("", ""), ("SOL_USDC", ""), ("", "x"), ("a", "b")])
    base = gen_request(s, True)
    if where == "raw":  # outside any string: where a value should start
        return Req(_replace_at(base.body, s.pick(["id", "params", "param_value"]), lambda _old: bad), True, base.mode)
    return Req(_replace_at(base.body, where, lambda _old: BadStr(head, bad, tail)), True, base.mode)


_RAW_PREFIXES = [b"", b"", b"{", b'{"id":1,"method":"depth","params":', b'{"method":"orderExecute","params":{"symbol":"',
                 b"[", b'"', b"\xef\xbb\xbf{", b'{"id":1,"method":"SUBSCRIBE","params":["']


def gen_raw_frame(s: Src) -> RawFrame:
    """Random bytes (after a JSON-ish prefix), as a binary frame or as text."""
    return RawFrame(s.pick(_RAW_PREFIXES) + s.binary(300), s.chance(1, 1))


def gen_big(s: Src) -> Big:
    size = s.weighted((12, lambda s: s.pick([SOFT_MAX - 1, SOFT_MAX, SOFT_MAX + 1, SOFT_MAX + 100])),
                      (2, 65_536), (1, 300_000),
                      (1, lambda s: s.pick([HARD_MAX - 64, HARD_MAX, HARD_MAX + 1, HARD_MAX + 4096])))
    return Big(gen_request(s), size)


PROTO_OPS = ["text_bad_utf8", "frag_text_bad_utf8", "reserved_opcode", "rsv", "unmasked", "frag_control", "big_ping",
             "bad_close", "orphan_continuation", "len64_msb", "truncated", "interleaved", "oversize", "oversize_binary",
             "huge_length_header", "zero_mask_garbage"]


def gen_proto(s: Src) -> Proto:
    return Proto(s.pick(PROTO_OPS), s.int(0, 2**16))


# every kind of frame the fuzzer sends, with their shares
# (frames near or over the size caps and WebSocket-level garbage cost 5-10 ms each: kept rare)
KIND_WEIGHTS = {"request": 120, "nested": 24, "bad_utf8": 20, "raw": 24, "big": 3, "proto": 2}
_KIND_GENS = {"request": gen_request, "nested": gen_nested_frame, "bad_utf8": gen_bad_utf8_frame, "raw": gen_raw_frame,
              "big": gen_big, "proto": gen_proto}


def gen_frame(s: Src) -> Any:
    return s.weighted(*[(w, _KIND_GENS[k]) for k, w in KIND_WEIGHTS.items() if w])


def strategy(gen: Any = gen_frame, budget: int = HYPOTHESIS_DRAWS) -> st.SearchStrategy:
    """A generator as a hypothesis strategy (its first ``budget`` choices drawn by hypothesis)."""
    return st.composite(lambda draw: gen(HypSrc(draw, budget)))()


@functools.cache
def frame_specs() -> st.SearchStrategy:
    return strategy(gen_frame)


def requests() -> st.SearchStrategy:
    return strategy(gen_request)


def nested_frames() -> st.SearchStrategy:
    return strategy(gen_nested_frame)


def bad_utf8_frames() -> st.SearchStrategy:
    return strategy(gen_bad_utf8_frame)


def harvest(n: int, seed: int | None = None, strat: st.SearchStrategy | None = None) -> list:
    """Draw ``n`` specs with hypothesis (generation only: the live checks need a node)."""
    out: list = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strat if strat is not None else frame_specs())
    def collect(spec: Any) -> None:
        out.append(spec)

    if seed is not None:
        collect = hypothesis_seed(seed)(collect)
    collect()
    return out


def random_specs(n: int, rng: random.Random) -> list:
    """``n`` specs from the same generators, with a seeded Random (fast: no hypothesis)."""
    src = RandSrc(rng)
    return [gen_frame(src) for _ in range(n)]



# ---------------------------------------------------------------- rendering


@dataclass
class Frame:
    spec: Any
    data: bytes
    binary: bool
    proto: bool = False  # throwaway raw connection
    uid: int | None = None
    method: str | None = None
    could_seq: bool = False
    silent_ok: bool = False  # a SUBSCRIBE/UNSUBSCRIBE: may get no reply

    def describe(self, limit: int = 400) -> str:
        return describe_bytes(self.data, limit)


def describe_bytes(data: bytes, limit: int = 400) -> str:
    """Bytes with long runs folded (``'[' * 1200``), so a deep frame fits a report."""
    parts: list[str] = []
    i = 0
    n = len(data)
    while i < n:
        # fold a run of a repeated unit of length 1..6
        folded = False
        for unit in range(1, 7):
            u = data[i:i + unit]
            if len(u) < unit:
                break
            j = i + unit
            while data[j:j + unit] == u:
                j += unit
            reps = (j - i) // unit
            if reps >= 8:
                parts.append(f"{u!r} * {reps}")
                i = j
                folded = True
                break
        if folded:
            continue
        j = i + 1
        while j < n and j - i < 64:
            nxt = data[j:j + 8]
            if len(nxt) == 8 and len(set(nxt)) == 1:
                break
            j += 1
        parts.append(repr(data[i:j]))
        i = j
    text = " + ".join(parts)
    return text if len(text) <= limit else text[:limit] + f"... ({len(data)} bytes)"


class Renderer:
    """Specs to bytes: fresh ids and timestamps, the node's admin key, a pool of unfunded keys."""

    def __init__(self, admin: Keypair | None = None, pool: int = 8):
        self.admin = admin or Keypair.generate()
        self.pool = [Keypair.generate() for _ in range(pool)]
        self.sentinel_key = Keypair.generate()
        self._ids = itertools.count(10**12)
        self._untracked = False  # havoc bases: random ids, so a flipped digit cannot hit a neighbour's
        self._cache: dict[int, tuple[Any, Frame, bool]] = {}  # id(spec) -> (spec, frame with a placeholder id, has id)
        self.cache_specs = False  # the soak replays a corpus: specs without a signature render once
        self._placeholder = False

    def next_id(self) -> int:
        return next(self._ids)

    def key(self, ref: str) -> Keypair:
        if ref == "admin":
            return self.admin
        if ref.startswith("pool"):
            return self.pool[int(ref[4:]) % len(self.pool)]
        return Keypair.generate()

    def _account(self, v: Any) -> Any:
        if isinstance(v, str) and v.startswith("@"):
            name = v[1:]
            return self.key(name.rstrip("\n")).api_key + ("\n" if name.endswith("\n") else "")
        return v

    def _resolve(self, v: Any, ids: list) -> Any:
        """Placeholders to values: UNIQUE ids, ``@key`` account references."""
        if v is UNIQUE:
            uid = _PLACEHOLDER_ID if self._placeholder else random.getrandbits(60) if self._untracked else self.next_id()
            ids.append(uid)
            return uid
        if isinstance(v, Obj):
            return Obj(tuple((k, self._resolve(self._account(x), ids) if k in _ACCOUNT_FIELDS else self._resolve(x, ids))
                             for k, x in v.pairs))
        if isinstance(v, list):
            return [self._resolve(x, ids) for x in v]
        return v

    def sig_array(self, sig: Sig, method: Any, params: bytes | None, mode: int, binary: bool) -> list:
        key = self.key(sig.key)
        instruction = sig.instruction if sig.instruction is not None else (method if isinstance(method, str) else "")
        if sig.sign_params is None:
            texts = param_texts(params if params is not None else b"null") or {}
        else:
            texts = param_texts(dump(self._resolve(sig.sign_params, []), mode, binary)) or {}
        ts = int(time.time() * 1000) + sig.ts_offset
        ts_text = sig.ts_format.replace("T", str(ts))
        if sig.enc == 0:
            try:
                _, arr = sign_request(key, instruction, texts, window=sig.window, timestamp=ts_text)  # type: ignore[arg-type]
            except UnicodeEncodeError:
                arr = [key.api_key, base64.b64encode(key.sign(signing_strings(instruction, texts, ts_text, sig.window)[0])).decode(),
                       ts_text, sig.window]
        else:
            forms = signing_strings(instruction, texts, ts_text, sig.window)
            msg = forms[min(sig.enc, len(forms) - 1)]
            arr = [key.api_key, base64.b64encode(key.sign(msg)).decode(), ts_text, sig.window]
        arr = list(arr)
        for op in sig.corrupt:
            arr = self._corrupt(arr, op)
        return arr

    def _corrupt(self, arr: list, op: tuple) -> list:
        kind = op[0]
        if kind == "add":
            return arr + [op[1]]
        if not arr:
            return arr
        if kind == "set":
            arr[op[1] % len(arr)] = op[2]
        elif kind == "drop":
            del arr[op[1] % len(arr)]
        elif kind == "flip":
            i = op[1] % len(arr)
            s = arr[i]
            if isinstance(s, str) and s:
                p = op[2] % len(s)
                arr[i] = s[:p] + ("B" if s[p] != "B" else "C") + s[p + 1:]
        elif kind == "otherkey":
            arr[0] = self.pool[op[1] % len(self.pool)].api_key if arr[0] != self.pool[op[1] % len(self.pool)].api_key else self.admin.api_key
        elif kind == "b64" and len(arr) > 1 and isinstance(arr[1], str):
            s = arr[1]
            arr[1] = {"strip": s.rstrip("="), "nl": s + "\n", "urlsafe": s.replace("+", "-").replace("/", "_") + ("-" if "+" not in s and "/" not in s else ""),
                      "pad": s + "=", "space": s[:10] + " " + s[10:], "lower": s.lower()}[op[1]]
        elif kind == "swap" and len(arr) > 1:
            arr[0], arr[1] = arr[1], arr[0]
        return arr

    def _req_bytes(self, req: Req, ids: list) -> bytes:
        body = self._resolve(req.body, ids)
        mode, binary = req.mode, req.binary
        if not isinstance(body, Obj):
            return dump(body, mode, binary)
        method = None
        params = None
        for k, v in body.pairs:
            if k == "method" and isinstance(v, str):
                method = v
            elif k == "params" and not isinstance(v, Sig):
                params = dump(v, mode, binary)
        return dump(body, mode, binary, lambda s: self.sig_array(s, method, params, mode, binary))

    def render(self, spec: Any) -> Frame:
        if self.cache_specs and not self._untracked and isinstance(spec, (Req, RawFrame)):
            hit = self._cache.get(id(spec))
            if hit is not None and hit[0] is spec:
                _, f, has_id = hit
                if not has_id:
                    return Frame(spec, f.data, f.binary, f.proto, None, f.method, f.could_seq, f.silent_ok)
                uid = self.next_id()
                return Frame(spec, f.data.replace(_PLACEHOLDER, str(uid).encode()), f.binary, f.proto, uid, f.method,
                             f.could_seq, f.silent_ok)
            if not _mentions_keys(spec):
                self._placeholder = True
                try:
                    f = self._render(spec)
                finally:
                    self._placeholder = False
                if not f.could_seq and f.data.count(_PLACEHOLDER) == (1 if f.uid is not None else 0):
                    self._cache[id(spec)] = (spec, f, f.uid is not None)
                    return self.render(spec)
        return self._render(spec)

    def _render(self, spec: Any) -> Frame:
        ids: list[int] = []
        method = None
        if isinstance(spec, Proto):
            return Frame(spec, proto_bytes(spec), True, proto=True)
        if isinstance(spec, RawFrame):
            data, binary = spec.data, spec.binary
        elif isinstance(spec, Req):
            data, binary = self._req_bytes(spec, ids), spec.binary
        elif isinstance(spec, Big):
            base = self._req_bytes(spec.base, ids)
            pad = max(0, spec.size - len(base) - 12)
            if base.endswith(b"}") and len(base) > 2:
                data = base[:-1] + b',"pad":"' + b"x" * pad + b'"}'
            else:
                data = b'{"pad":"' + b"x" * pad + b'","b":' + base + b"}"
            binary = spec.base.binary
        elif isinstance(spec, Havoc):
            self._untracked = True
            try:
                base = self.render(spec.base)
            finally:
                self._untracked = False
            data, binary = havoc(base.data, random.Random(spec.seed)), spec.binary  # its id may be mangled: not tracked
            method = base.method
        else:
            raise TypeError(f"unknown spec {type(spec).__name__}")
        if not binary:
            try:
                data.decode()
            except UnicodeDecodeError:
                if isinstance(spec, RawFrame):  # random bytes "as text": each byte as a latin-1 character
                    data = data.decode("latin-1").encode()
                else:
                    binary = True  # a text frame cannot carry it; a binary frame can
        f = Frame(spec, data, binary)
        if len(data) > HARD_MAX - 64:  # at or over the hard cap: the server may close the connection
            f.data, f.proto = ws_frame(2 if binary else 1, data), True
            return f
        f.uid = ids[0] if ids else None
        f.could_seq = could_sequence(data)
        if b"UBSCRIB" in data.upper() or b"\\U" in data.upper():
            f.silent_ok = True
        f.method = method
        body = spec.base.body if isinstance(spec, Big) else spec.body if isinstance(spec, Req) else None
        if isinstance(body, Obj):
            for k, v in body.pairs:
                if k == "method" and isinstance(v, str):
                    f.method = v
        return f

    def sentinel(self) -> tuple[int, str]:
        """A signed balanceQuery: its reply comes after every earlier reply on the connection."""
        uid = self.next_id()
        _, sig = sign_request(self.sentinel_key, "balanceQuery", {}, window=60_000)
        return uid, orjson.dumps({"id": uid, "method": "balanceQuery", "signature": sig}).decode()


_PLACEHOLDER_ID = 8_642_097_531_864_209_753  # an id rendered into cached frames, then replaced
_PLACEHOLDER = str(_PLACEHOLDER_ID).encode()


def _mentions_keys(spec: Any) -> bool:
    """Whether rendering ``spec`` signs or names a key (so it must be rendered afresh)."""
    stack = [spec]
    while stack:
        v = stack.pop()
        if isinstance(v, Sig):
            return True
        if isinstance(v, str):
            if v.startswith("@"):
                return True
        elif isinstance(v, Req):
            stack.append(v.body)
        elif isinstance(v, Obj):
            for k, x in v.pairs:
                stack.append(k)
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, Nest):
            stack.append(v.leaf)
    return False


_DICT = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"\\u", b"\\ud800", b"null", b"true", b"1e400", b"-0", b"\x00",
         b"\xff", b"\xed\xa0\x80", b"[" * 64, b'{"a":' * 32, b"9" * 40, b'"method"', b'"params"', b'"signature"', b'"id"']


def havoc(data: bytes, rng: random.Random) -> bytes:
    """AFL-style byte havoc: flips, inserts, deletes, dictionary tokens, block repeats."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos % len(b)] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.choice(_DICT)
        elif op == 3 and b:
            del b[pos:pos + rng.randint(1, 16)]
        elif op == 4 and b:
            start = rng.randrange(len(b))
            chunk = b[start:start + rng.randint(1, 32)]
            b[pos:pos] = chunk * rng.randint(1, 16)
        elif op == 5:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 6 and b:
            b = b[:pos]
    return bytes(b[:SOFT_MAX + 4096])


# ---------------------------------------------------------------- WebSocket-level garbage


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True, length: int | None = None) -> bytes:
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload) if length is None else length
    m = 0x80 if mask else 0
    if n < 126:
        head.append(m | n)
    elif n < 1 << 16:
        head.append(m | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(m | 127)
        head += n.to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(c ^ key[i & 3] for i, c in enumerate(payload)) if len(payload) < 4096 else \
        bytes(head) + key + _mask_fast(payload, key)


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = int.from_bytes((key * ((n + 3) // 4))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


_DEPTH = b'{"id":1,"method":"depth","params":{"symbol":"SOL_USDC"}}'


def proto_bytes(p: Proto) -> bytes:
    op, a = p.op, p.arg or 0
    if op == "text_bad_utf8":
        return ws_frame(1, b'{"id":1,"method":"depth","params":{"symbol":"SOL\xff\xfe"}}')
    if op == "frag_text_bad_utf8":
        return ws_frame(1, b'{"id":1,"method":"de\xe2', fin=False) + ws_frame(0, b'\x28\xa1pth"}')
    if op == "reserved_opcode":
        return ws_frame([3, 4, 5, 6, 7, 11, 12, 13, 14, 15][a % 10], _DEPTH)
    if op == "rsv":
        return ws_frame(1, _DEPTH, rsv=1 + a % 7)
    if op == "unmasked":
        return ws_frame(1, _DEPTH, mask=False)
    if op == "frag_control":
        return ws_frame(9, b"ping", fin=False)
    if op == "big_ping":
        return ws_frame(9, b"p" * (126 + a % 200))
    if op == "bad_close":
        code = [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535][a % 9]
        return ws_frame(8, code.to_bytes(2, "big") + b"\xff\xfe")
    if op == "orphan_continuation":
        return ws_frame(0, _DEPTH)
    if op == "len64_msb":
        return ws_frame(1, b"", length=(1 << 63) + 5)
    if op == "truncated":
        return ws_frame(1, b"", length=1000) + b'{"id":1'
    if op == "interleaved":
        return ws_frame(1, b'{"id":1,', fin=False) + ws_frame(1, _DEPTH)
    if op == "oversize":
        return ws_frame(1, b'{"pad":"' + b"x" * (HARD_MAX + a % 4096) + b'"}')
    if op == "oversize_binary":
        return ws_frame(2, b"\x00" * (HARD_MAX + 1 + a % 4096))
    if op == "huge_length_header":
        return ws_frame(2, b"", length=(HARD_MAX << 4) + a)
    if op == "zero_mask_garbage":
        return bytes([0x81, 0x80 | 5, 0, 0, 0, 0]) + b"\xff\xff\xff\xff\xff"
    raise ValueError(op)


async def raw_exchange(port: int, payload: bytes, *, timeout: float = 3.0, eof: bool = False) -> str:
    """Handshake, write ``payload`` then a valid depth frame, and report what the server did:
    ``close:<code>``, ``eof`` (dropped without a close frame), ``reset``, ``open`` (it
    answered the depth frame) or ``hung``."""
    try:
        return await _raw_exchange(port, payload, timeout, eof)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return "reset"
    except OSError as exc:
        return f"error:{type(exc).__name__}"


async def _raw_exchange(port: int, payload: bytes, timeout: float, eof: bool) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key))
        buf = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return "eof"
                buf += chunk
        if b" 101 " not in buf.split(b"\r\n", 1)[0]:
            return "refused"
        buf = buf.split(b"\r\n\r\n", 1)[1]
        try:
            await stream.send_all(payload)
            if eof:
                await stream.send_eof()
            else:
                await stream.send_all(ws_frame(1, _DEPTH))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(timeout):
            while True:
                while len(buf) >= 2:
                    n = buf[1] & 0x7F
                    off = 2
                    if n == 126:
                        if len(buf) < 4:
                            break
                        n, off = int.from_bytes(buf[2:4], "big"), 4
                    elif n == 127:
                        if len(buf) < 10:
                            break
                        n, off = int.from_bytes(buf[2:10], "big"), 10
                    if len(buf) < off + n:
                        break
                    opcode, body = buf[0] & 0x0F, buf[off:off + n]
                    buf = buf[off + n:]
                    if opcode == 8:
                        return f"close:{int.from_bytes(body[:2], 'big') if len(body) >= 2 else 'none'}"
                    if opcode == 1:
                        return "open"
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return "eof"
                if not chunk:
                    return "eof"
                buf += chunk
        return "hung"
    finally:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await stream.aclose()


# ---------------------------------------------------------------- a node under supervision


CLUSTER = False  # --cluster: LiveServer is a sequencer and a gateway node over NATS


class LiveServer:
    """A node and its gateway on 127.0.0.1 (as ``tests/conftest.py::start_server``), run so
    that their death is recorded rather than propagated: ``error`` holds what killed them."""

    def __init__(self, data: Path, **gateway_settings: Any):
        self.data = Path(data)
        self.gateway_settings = gateway_settings
        self.node: Any = None
        self.gateway: Any = None
        self.url = ""
        self.port = 0
        self.error: BaseException | None = None
        self.stopped = trio.Event()
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> "LiveServer":
        await nursery.start(self._run)
        return self

    async def _run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from satchel import config
        from satchel.gateway import Gateway
        from satchel.node import Node

        cfg = config.load()
        if self.gateway_settings:
            cfg = msgspec.structs.replace(cfg, gateway=msgspec.structs.replace(cfg.gateway, **self.gateway_settings))
        try:
            if CLUSTER:
                await self._run_cluster(cfg, task_status)
            else:
                async with trio.open_nursery() as n:
                    self._scope = n.cancel_scope
                    self.node = await n.start(Node(self.data, cfg).run)
                    self.gateway = await n.start(Gateway(self.node, "127.0.0.1", 0).run)
                    self.url, self.port = self.gateway.url, self.gateway.port
                    task_status.started(self)
        except BaseException as exc:  # the node died: recorded for the report
            self.error = exc
            if not isinstance(exc, Exception):  # cancelled from outside as well: not ours to swallow
                raise
        finally:
            self.stopped.set()

    async def _run_cluster(self, cfg: Any, task_status: Any) -> None:
        """``--cluster``: the frames go to a gateway node following a sequencer over NATS
        (one nats-server), the path ``satchel gateway`` serves; either node's death counts."""
        from satchel.cluster.bus import Bus
        from satchel.cluster.natsserver import NatsCluster
        from satchel.cluster.role import Cluster
        from satchel.gateway import Gateway
        from satchel.node import Node
        from satchel.signing import Keypair, load_key

        gkey = Keypair.generate()
        with NatsCluster(self.data / "nats", 1) as nats:
            async with Bus(nats.urls) as sbus, Bus(nats.urls) as gbus, trio.open_nursery() as n:
                self._scope = n.cancel_scope
                role = Cluster(sbus, load_key(self.data / "seq", "admin.key"), sequencer=True, takeover_after=0.2,
                               allow_gateways=(gkey.public,))
                seq = await n.start(Node(self.data / "seq", cfg, role).run)
                await role.promoted.wait()
                self.node = await n.start(Node(self.data / "gw", cfg, Cluster(gbus, gkey, sequencer=False)).run)
                while self.node.chain.height < seq.chain.height:
                    await trio.sleep(0.01)
                self.node.admin = seq.admin  # the renderer signs admin requests with it
                self.gateway = await n.start(Gateway(self.node, "127.0.0.1", 0).run)
                self.url, self.port = self.gateway.url, self.gateway.port
                task_status.started(self)

    @property
    def alive(self) -> bool:
        return not self.stopped.is_set()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def snapshot(self) -> tuple[str, int] | None:
        """(state hash, transaction count) after every earlier block, or None if dead."""
        if not self.alive:
            return None
        result = None
        async with trio.open_nursery() as n:
            async def read() -> None:
                nonlocal result
                try:
                    result = (await self.node.ask("engine", StateHashOf()), self.node.chain.txs)
                except Exception:  # the node is going down
                    pass
                n.cancel_scope.cancel()

            async def watch() -> None:
                await self.stopped.wait()
                n.cancel_scope.cancel()

            n.start_soon(read)
            n.start_soon(watch)
            with trio.move_on_after(30):
                await trio.sleep_forever()
            n.cancel_scope.cancel()
        return result

    def _leaf(self) -> BaseException | None:
        exc = self.error
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        return exc

    def crash_report(self) -> str:
        """The exception that killed the node, with its traceback (the innermost one, not
        the chain of nurseries it went through)."""
        exc = self._leaf()
        if exc is None:
            return ""
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))

    def crash_key(self) -> str:
        """Exception type and where it was raised (innermost frame in satchel or a library)."""
        exc = self._leaf()
        if exc is None:
            return ""
        tb = traceback.extract_tb(exc.__traceback__)
        where = ""
        for fr in tb:
            if "satchel" in fr.filename or "/platform/" in fr.filename:
                where = f"{Path(fr.filename).name}:{fr.lineno} in {fr.name}"
        return f"{type(exc).__name__} at {where or (tb[-1].name if tb else '?')}"


# ---------------------------------------------------------------- connections and oracles


@dataclass
class Violation:
    kind: str  # node_exit, server_close, bad_reply, duplicate_reply, reply_count, state_change, over_sequenced, probe, sentinel
    detail: str
    specs: list = field(default_factory=list)  # the round's frames (for isolation)


@dataclass
class Stats:
    frames: int = 0
    proto_frames: int = 0
    rounds: int = 0
    strict_rounds: int = 0
    node_exits: int = 0
    server_closes: int = 0  # fuzzing connections closed by the server (0 expected)
    proto_outcomes: Counter = field(default_factory=Counter)  # throwaway connections: close codes
    accepted: int = 0  # result replies to write methods
    sequenced: int = 0  # transactions the fuzz input added to the chain
    could_seq: int = 0  # frames whose signature verifies
    dropped_strict: int = 0  # such frames left out of strict rounds
    dropped_node_stats: int = 0  # nodeStats frames over the budget (see NODE_STATS_EVERY)
    state_changes: int = 0  # strict rounds where the state moved (0 expected)
    codes: Counter = field(default_factory=Counter)
    results: Counter = field(default_factory=Counter)
    replies: int = 0
    stream_frames: int = 0
    violations: list = field(default_factory=list)
    crash_keys: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    crash_reports: dict = field(default_factory=dict)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class FuzzConn:
    """One long-lived fuzzing connection: batches out, replies checked as they arrive."""

    def __init__(self, server: LiveServer, renderer: Renderer, stats: Stats):
        self.server = server
        self.r = renderer
        self.stats = stats
        self.ws: Any = None
        self.closed_reason: Any = None
        self._nursery: trio.Nursery | None = None
        self._reset()

    def _reset(self) -> None:
        self.pending: dict[int, Frame] = {}
        self.answered: set[int] = set()
        self.nreplies = 0
        self.sentinel_id: int | None = None
        self.sentinel_reply: dict | None = None
        self.sentinel_event = trio.Event()
        self.problems: list[tuple[str, str]] = []

    async def open(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.ws = await connect_websocket_url(nursery, self.server.url, max_message_size=1 << 24)
        self.closed_reason = None
        nursery.start_soon(self._reader, self.ws)

    async def _reader(self, ws: Any) -> None:
        try:
            while True:
                self._on_message(await ws.get_message())
        except ConnectionClosed as exc:
            if ws is self.ws:
                self.closed_reason = exc.reason
                self.sentinel_event.set()

    def _on_message(self, msg: str | bytes) -> None:
        try:
            reply = orjson.loads(msg)
        except orjson.JSONDecodeError:
            try:  # valid JSON that orjson refuses: an integer beyond 64 bits (an echoed id)
                reply = json.loads(msg, parse_constant=_no_constants)
                self.stats.notes["replies with an integer beyond 64 bits (orjson, JS and Go clients cannot read them)"] += 1
            except ValueError:
                self.problems.append(("bad_reply", f"reply is not JSON: {msg[:300]!r}"))
                return
        if not isinstance(reply, dict):
            self.problems.append(("bad_reply", f"reply is not an object: {msg[:300]!r}"))
            return
        if "stream" in reply:
            self.stats.stream_frames += 1
            if "data" not in reply:
                self.problems.append(("bad_reply", f"stream frame without data: {msg[:300]!r}"))
            return
        rid = reply.get("id", MISSING)
        if rid is not None and rid == self.sentinel_id:
            self.sentinel_reply = reply
            self.sentinel_event.set()
            return
        self.nreplies += 1
        self.stats.replies += 1
        ok = "id" in reply and (("result" in reply) != ("error" in reply))
        err = reply.get("error")
        if "error" in reply and not (isinstance(err, dict) and isinstance(err.get("code"), (str, int)) and isinstance(err.get("message"), str)):
            ok = False
        frame = self.pending.pop(rid, None) if isinstance(rid, int) else None
        if not ok:
            self.problems.append(("bad_reply", f"reply has neither result nor error.code: {msg[:300]!r}"
                                  + (f" (to {frame.describe(200)})" if frame else "")))
            return
        if frame is not None:
            self.answered.add(rid)
        elif isinstance(rid, int) and rid in self.answered:
            self.problems.append(("duplicate_reply", f"a second reply for id {rid}: {msg[:300]!r}"))
        if "error" in reply:
            self.stats.codes[err["code"]] += 1
            if err["code"] == "INTERNAL_ERROR":  # the gateway's safety net caught an exception: a crash
                self.problems.append(("internal_error", f"INTERNAL_ERROR reply: {msg[:300]!r}"
                                      + (f" (to {frame.describe(300)})" if frame else "")))
        else:
            method = frame.method if frame else None
            self.stats.results[method or "?"] += 1
            if method in WRITE_METHODS:
                self.stats.accepted += 1

    async def send_many(self, frames: list[tuple[bool, bytes | str]]) -> None:
        """Frames in order with as few socket writes as possible (the gateway's own writer)."""
        for k in range(0, len(frames), 64):
            await send_frames(self.ws, [d if binary else (d if isinstance(d, str) else d.decode("utf-8", "surrogatepass"))
                                        for binary, d in frames[k:k + 64]])

    async def run_batch(self, frames: list[Frame], timeout: float = 60) -> list[tuple[str, str]]:
        """Send ``frames`` and a sentinel; wait for the sentinel's reply; return problems."""
        self._reset()
        out = []
        required = optional = 0
        for f in frames:
            if f.uid is not None:
                self.pending[f.uid] = f
            if f.silent_ok:
                optional += 1
            else:
                required += 1
            out.append((f.binary, f.data if f.binary else f.data.decode()))
        problems = self.problems
        try:
            await self.send_many(out)
            while True:
                self.sentinel_id, sentinel = self.r.sentinel()
                self.sentinel_reply = None
                self.sentinel_event = trio.Event()
                await self.ws.send_message(sentinel)
                with trio.move_on_after(timeout) as cs:
                    await _wait_either(self.sentinel_event, self.server.stopped)
                if cs.cancelled_caught:
                    problems.append(("sentinel", f"no reply to the sentinel within {timeout}s"))
                    break
                r = self.sentinel_reply
                if r is not None and r.get("error", {}).get("code") == "TOO_MANY_REQUESTS":
                    await trio.sleep(0.05)  # refused at once (rate limit): ordered after nothing; retry
                    continue
                break
        except ConnectionClosed as exc:
            self.closed_reason = exc.reason
        if not self.server.alive:
            return problems
        if self.closed_reason is not None:
            problems.append(("server_close", f"the server closed a fuzzing connection: {self.closed_reason}"))
            return problems
        r = self.sentinel_reply
        if r is not None and "result" not in r:
            problems.append(("sentinel", f"sentinel balanceQuery failed: {r}"))
        if not required <= self.nreplies <= required + optional:
            problems.append(("reply_count", f"{self.nreplies} replies to {required} frames that need one and {optional} that may be silent"))
        return problems

    async def reconnect(self) -> None:
        if self.ws is not None:
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await self.ws.aclose()
        await self.open(self._nursery)


async def _wait_either(a: trio.Event, b: trio.Event) -> None:
    async with trio.open_nursery() as n:
        async def w(e: trio.Event) -> None:
            await e.wait()
            n.cancel_scope.cancel()
        n.start_soon(w, a)
        n.start_soon(w, b)


async def probe(server: LiveServer) -> str | None:
    """A fresh connection gets a correct depth reply; returns what went wrong, if anything."""
    from trio_websocket import open_websocket_url

    try:
        with trio.fail_after(10):
            async with open_websocket_url(server.url) as ws:
                await ws.send_message(orjson.dumps({"id": 7, "method": "depth", "params": {"symbol": "SOL_USDC"}}).decode())
                reply = orjson.loads(await ws.get_message())
    except Exception as exc:
        return f"depth probe failed: {exc!r}"
    result = reply.get("result") if isinstance(reply, dict) else None
    if reply.get("id") != 7 or not isinstance(result, dict) or not {"asks", "bids", "lastUpdateId"} <= set(result):
        return f"depth probe got {reply!r}"
    return None


@dataclass
class RoundResult:
    """The client half of a round, as a worker process reports it."""
    problems: list
    specs: list
    could: int
    stats: Stats


def merge_stats(into: Stats, d: Stats) -> None:
    for name, value in vars(d).items():
        cur = getattr(into, name)
        if isinstance(value, Counter):
            cur.update(value)
        elif isinstance(value, list):
            cur.extend(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                cur.setdefault(k, v)
        else:
            setattr(into, name, cur + value)


@dataclass
class Prepared:
    """A round's frames, rendered (each connection's batch, and the throwaway ones)."""
    batches: list
    protos: list
    dropped_node_stats: int = 0


class Sender:
    """The client half of a round: render each connection's specs, leave out (on strict
    rounds) frames whose signature verifies, send them, garbage on throwaway connections,
    and collect the reply problems."""

    def __init__(self, renderer: Renderer, proto_timeout: float = 1.0):
        self.renderer = renderer
        self.proto_timeout = proto_timeout
        self._node_stats_budget = 1.0

    def _render(self, spec: Any, prep: Prepared, frames: list) -> None:
        f = self.renderer.render(spec)
        self._node_stats_budget += 1 / NODE_STATS_EVERY
        if f.method == "nodeStats":
            if self._node_stats_budget < 1:
                prep.dropped_node_stats += 1
                return
            self._node_stats_budget -= 1
        (prep.protos if f.proto else frames).append(f)

    def prepare(self, specs_per_conn: list[list]) -> Prepared:
        prep = Prepared([], [])
        for specs in specs_per_conn:
            frames: list = []
            for spec in specs:
                self._render(spec, prep, frames)
            prep.batches.append(frames)
        return prep

    async def prepare_async(self, make_specs: Any) -> Prepared:
        """Like ``prepare``, yielding often: the next round is drawn and rendered while
        this one's replies are read."""
        prep = Prepared([], [])
        for specs in make_specs():
            frames: list = []
            for i, spec in enumerate(specs):
                self._render(spec, prep, frames)
                if i % 8 == 7:
                    await trio.sleep(0)
            prep.batches.append(frames)
        return prep

    async def send(self, target: Any, conns: list["FuzzConn"], specs_per_conn: list[list], strict: bool) -> RoundResult:
        return await self.send_prepared(target, conns, self.prepare(specs_per_conn), strict)

    async def send_prepared(self, target: Any, conns: list["FuzzConn"], prep: Prepared, strict: bool) -> RoundResult:
        st_ = Stats(rounds=1, strict_rounds=int(strict), dropped_node_stats=prep.dropped_node_stats)
        for c in conns:
            c.stats = st_
        batches: list[list[Frame]] = []
        sent_specs: list = [f.spec for f in prep.protos]
        could = 0
        for frames in prep.batches:
            kept = []
            for f in frames:
                if f.could_seq:
                    st_.could_seq += 1
                    if strict:
                        st_.dropped_strict += 1
                        continue
                    could += 1
                kept.append(f)
                sent_specs.append(f.spec)
            batches.append(kept)
            st_.frames += len(kept)
        protos = prep.protos
        st_.proto_frames += len(protos)
        st_.frames += len(protos)
        problems: list[tuple[str, str]] = []

        async def one(conn: FuzzConn, frames: list[Frame]) -> None:
            problems.extend(await conn.run_batch(frames))

        slots = trio.Semaphore(8)

        async def garbage(f: Frame) -> None:
            async with slots:
                if not target.alive:
                    return
                outcome = await raw_exchange(target.port, f.data, timeout=self.proto_timeout,
                                             eof=isinstance(f.spec, Proto) and f.spec.op == "truncated")
                st_.proto_outcomes[f"{f.spec.op if isinstance(f.spec, Proto) else 'over_cap'} {outcome}"] += 1

        async with trio.open_nursery() as n:
            for conn, frames in zip(conns, batches):
                n.start_soon(one, conn, frames)
            for f in protos:
                n.start_soon(garbage, f)
        return RoundResult(problems, sent_specs, could, st_)


class Fuzzer:
    """Rounds over ``conns`` connections in this process, then the oracles; restarts the
    node if it dies (and records why)."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, conns: int = 1, gateway_settings: dict | None = None,
                 renderer: Renderer | None = None, proto_timeout: float = 1.0):
        self.nursery = nursery
        self.workdir = Path(workdir)
        self.nconns = conns
        self.gateway_settings = gateway_settings if gateway_settings is not None else {"rate_per_second": 1e9, "rate_burst": 1e9}
        self.stats = Stats()
        self.renderer = renderer
        self.proto_timeout = proto_timeout
        self._servers = 0
        self.server: LiveServer | None = None
        self.conns: list[FuzzConn] = []
        self._conn_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self.before: tuple[str, int] | None = None
        self.sender: Sender | None = None

    async def new_server(self) -> LiveServer:
        self._servers += 1
        return await LiveServer(self.workdir / f"node{self._servers}", **self.gateway_settings).start(self.nursery)

    async def start(self) -> None:
        self.server = await self.new_server()
        if self.renderer is None:
            self.renderer = Renderer(self.server.node.admin)
        else:
            self.renderer.admin = self.server.node.admin
        self.sender = Sender(self.renderer, self.proto_timeout)
        await self._open_conns()
        self.before = await self.server.snapshot()

    async def _open_conns(self) -> None:
        if self._conn_scope is not None:
            self._conn_scope.cancel()

        async def holder(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as n:
                self._conn_nursery = n
                self._conn_scope = n.cancel_scope
                task_status.started()
                await trio.sleep_forever()

        await self.nursery.start(holder)
        self.conns = []
        for _ in range(self.nconns):
            c = FuzzConn(self.server, self.renderer, self.stats)
            await c.open(self._conn_nursery)
            self.conns.append(c)

    async def close(self) -> None:
        if self._conn_scope is not None:
            self._conn_scope.cancel()
        if self.server is not None:
            self.server.stop()

    async def _restart(self) -> None:
        self.server.stop()
        self.server = await self.new_server()
        self.renderer.admin = self.server.node.admin
        await self._open_conns()
        self.before = await self.server.snapshot()

    async def round(self, specs_per_conn: list[list], strict: bool) -> list[Violation]:
        """One batch per connection, then the oracles. Returns this round's violations."""
        res = await self.sender.send(self.server, self.conns, specs_per_conn, strict)
        merge_stats(self.stats, res.stats)
        violations = await self.judge(res, strict, any(c.closed_reason is not None for c in self.conns))
        if self.server.alive:
            for conn in self.conns:
                if conn.closed_reason is not None:
                    try:
                        await conn.reconnect()
                    except (OSError, ConnectionClosed, trio.BrokenResourceError, HandshakeError) as exc:
                        v = Violation("probe", f"cannot reconnect: {exc!r}", res.specs)
                        violations.append(v)
                        self.stats.violations.append(v)
        return violations

    async def judge(self, res: RoundResult, strict: bool, closed: bool) -> list[Violation]:
        """The oracles after a round: the node lives and answers a fresh connection, no
        fuzzing connection was closed, replies were right, and the state moved only as
        frames with a valid signature allow."""
        st_ = self.stats
        sent_specs = res.specs
        violations: list[Violation] = []
        if res.problems or closed:
            with trio.move_on_after(2):  # a dying node takes a moment to unwind
                await self.server.stopped.wait()
        if not self.server.alive:
            st_.node_exits += 1
            key = self.server.crash_key()
            st_.crash_keys[key] += 1
            st_.crash_reports.setdefault(key, self.server.crash_report())
            violations.append(Violation("node_exit", f"the node exited: {key}", sent_specs))
            st_.violations.extend(violations)
            await self._restart()
            return violations
        for kind, detail in res.problems:
            if kind == "server_close":
                st_.server_closes += 1
            violations.append(Violation(kind, detail, sent_specs))
        bad = await probe(self.server)
        if bad:
            violations.append(Violation("probe", bad, sent_specs))
        after = await self.server.snapshot()
        if after is None:
            violations.append(Violation("node_exit", "the node stopped answering reads", sent_specs))
        elif self.before is not None:
            delta = after[1] - self.before[1]
            st_.sequenced += max(0, delta)
            if strict and after != self.before:
                st_.state_changes += 1
                violations.append(Violation("state_change", f"state moved on a round with no valid signature: txs {self.before[1]} -> {after[1]}, "
                                            f"hash {self.before[0][:16]} -> {after[0][:16]}", sent_specs))
            elif delta > res.could:
                violations.append(Violation("over_sequenced", f"{delta} transactions from {res.could} frames with a valid signature", sent_specs))
        self.before = after
        st_.violations.extend(violations)
        return violations


# ---------------------------------------------------------------- worker processes (the soak)


_TAG = b"@@FZ "


class _Lines:
    def __init__(self, stream: Any):
        self.stream = stream
        self.buf = bytearray()

    async def next(self) -> bytes | None:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                return None
            self.buf += chunk

    async def next_tagged(self) -> Any:
        while True:
            line = await self.next()
            if line is None:
                return None
            if line.startswith(_TAG):
                return pickle.loads(base64.b64decode(line[len(_TAG):]))


class _Target:
    """What a worker knows of the node: where it listens (the coordinator knows if it lives)."""

    def __init__(self, url: str, port: int):
        self.url, self.port = url, port
        self.stopped = trio.Event()
        self.alive = True


async def _worker(cfg: dict) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    lines = _Lines(stdin)
    rng = random.Random(cfg["seed"])
    corpus = harvest(cfg["corpus"], cfg["seed"])

    async def reply(obj: Any) -> None:
        await stdout.send_all(_TAG + base64.b64encode(pickle.dumps(obj)) + b"\n")

    await reply("ready")
    renderer = Renderer(Keypair.from_secret(cfg["admin"]))
    renderer.cache_specs = True
    sender = Sender(renderer, cfg["proto_timeout"])
    target = _Target(cfg["url"], cfg["port"])
    async with trio.open_nursery() as nursery:
        scopes = [trio.CancelScope()]
        conns: list[FuzzConn] = []

        async def connect_all() -> None:
            """(Re)open every connection, in a nursery of their own (cancelled on the next call)."""
            scopes[-1].cancel()
            ready = trio.Event()

            async def holder() -> None:
                with trio.CancelScope() as sc:
                    scopes.append(sc)
                    async with trio.open_nursery() as n:
                        for c in conns:
                            try:
                                await c.open(n)
                            except (OSError, ConnectionClosed, trio.BrokenResourceError, HandshakeError) as exc:
                                c._nursery, c.ws, c.closed_reason = n, None, exc  # retried before the next round
                        ready.set()
                        await trio.sleep_forever()

            conns[:] = [FuzzConn(target, renderer, Stats()) for _ in range(cfg["conns"])]
            nursery.start_soon(holder)
            await ready.wait()

        await connect_all()

        def make_specs() -> list[list]:
            return [_mix(corpus, rng, cfg["batch"], cfg["havoc"], cfg["fresh"]) for _ in range(cfg["conns"])]

        prepared = sender.prepare(make_specs())
        while True:
            cmd = orjson.loads(await lines.next() or b'{"cmd":"quit"}')
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "reconnect":
                target = _Target(cmd["url"], cmd["port"])
                renderer.admin = Keypair.from_secret(cmd["admin"])
                for c in conns:
                    c.server = target
                await connect_all()
                await reply("ok")
                continue
            problems: list = []
            for c in conns:
                if c.closed_reason is not None:
                    try:
                        await c.reconnect()
                    except (OSError, ConnectionClosed, trio.BrokenResourceError, HandshakeError) as exc:
                        problems.append(("probe", f"cannot reconnect: {exc!r}"))
            box: list = []

            async def go(prep: Prepared) -> None:
                box.append(await sender.send_prepared(target, conns, prep, cmd["strict"]))

            async with trio.open_nursery() as n:  # this round goes out while the next is rendered
                n.start_soon(go, prepared)
                prepared = await sender.prepare_async(make_specs)
            res = box[0]
            res.problems += problems
            if any(c.closed_reason is not None for c in conns):
                res.problems.append(("closed", "a connection was closed"))
            await reply(res)
        nursery.cancel_scope.cancel()


def worker_main() -> None:
    trio.run(_worker, orjson.loads(sys.argv[1]))


class Coordinator(Fuzzer):
    """The soak: this process runs the node and judges; worker processes (on the other
    core) generate, send and check replies, a round at a time."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, args: argparse.Namespace, seed: int, gateway_settings: dict | None):
        super().__init__(nursery, workdir, 0, gateway_settings)
        self.args = args
        self.seed = seed
        self.workers: list[tuple[Any, _Lines]] = []

    async def start(self) -> None:
        self.server = await self.new_server()
        self.before = await self.server.snapshot()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), root]).strip(os.pathsep))
        a = self.args
        for w in range(a.workers):
            cfg = {"seed": self.seed + 7919 * w, "corpus": a.corpus // a.workers, "conns": a.conns, "batch": a.batch,
                   "havoc": a.havoc, "fresh": a.fresh, "proto_timeout": 0.3, "url": self.server.url, "port": self.server.port,
                   "admin": self.server.node.admin.secret}
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", "from benchmarks.fuzz import worker_main; worker_main()", orjson.dumps(cfg).decode()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, env=env)
            self.workers.append((proc, _Lines(proc.stdout)))
        for proc, lines in self.workers:
            if await lines.next_tagged() != "ready":
                raise RuntimeError("a fuzz worker did not start")

    async def _tell(self, cmd: dict) -> list:
        line = orjson.dumps(cmd) + b"\n"
        for proc, _ in self.workers:
            await proc.stdin.send_all(line)
        out = []
        for proc, lines in self.workers:
            r = await lines.next_tagged()
            if r is None:
                raise RuntimeError(f"fuzz worker exited (code {proc.poll()})")
            out.append(r)
        return out

    async def _restart(self) -> None:
        self.server.stop()
        self.server = await self.new_server()
        await self._tell({"cmd": "reconnect", "url": self.server.url, "port": self.server.port, "admin": self.server.node.admin.secret})
        self.before = await self.server.snapshot()

    async def round_all(self, strict: bool) -> list[Violation]:
        results: list[RoundResult] = await self._tell({"cmd": "round", "strict": strict})
        merged = RoundResult([], [], 0, Stats())
        closed = False
        for r in results:
            merge_stats(self.stats, r.stats)
            closed = closed or any(k == "closed" for k, _ in r.problems)
            merged.problems += [p for p in r.problems if p[0] != "closed"]
            merged.specs += r.specs
            merged.could += r.could
        return await self.judge(merged, strict, closed)

    async def close(self) -> None:
        for proc, _ in self.workers:
            with trio.move_on_after(5) as cs:
                cs.shield = True
                try:
                    await proc.stdin.send_all(b'{"cmd":"quit"}\n')
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        await super().close()


# ---------------------------------------------------------------- naming the culprit


@dataclass
class Finding:
    kind: str
    spec: Any
    frame: bytes
    binary: bool
    detail: str
    traceback: str = ""
    shrunk: bytes | None = None

    def report(self) -> str:
        lines = [f"[{self.kind}] {self.detail}",
                 f"  frame ({'binary' if self.binary else 'text'}, {len(self.frame)} bytes): {describe_bytes(self.frame, 600)}"]
        if self.shrunk is not None and self.shrunk != self.frame:
            lines.append(f"  shrunk ({len(self.shrunk)} bytes): {describe_bytes(self.shrunk, 600)}")
        lines.append(f"  spec: {_short(repr(self.spec), 600)}")
        if self.traceback:
            lines.append("  traceback:\n" + "\n".join("    " + ln for ln in self.traceback.rstrip().splitlines()[-30:]))
        return "\n".join(lines)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


async def _send_one(server: LiveServer, renderer: Renderer, data: bytes, binary: bool, proto: bool, silent_ok: bool,
                    eof: bool = False) -> tuple[str, str, str]:
    """Send one frame on a fresh connection, then a sentinel. Returns (kind, detail, traceback);
    kind is "" when every oracle held."""
    stats = Stats()
    if proto:
        try:
            outcome = await raw_exchange(server.port, data, eof=eof)
        except OSError as exc:
            outcome = f"error:{exc!r}"
        if not server.alive:
            return "node_exit", server.crash_key(), server.crash_report()
        return "", outcome, ""
    before = await server.snapshot()
    async with trio.open_nursery() as n:
        conn = FuzzConn(server, renderer, stats)
        try:
            await conn.open(n)
        except (OSError, ConnectionClosed, trio.BrokenResourceError) as exc:
            n.cancel_scope.cancel()
            return ("node_exit", server.crash_key(), server.crash_report()) if not server.alive else ("probe", f"cannot connect: {exc!r}", "")
        f = Frame(None, data, binary, silent_ok=silent_ok)
        problems = await conn.run_batch([f], timeout=20)
        n.cancel_scope.cancel()
    if problems:
        with trio.move_on_after(2):  # a dying node takes a moment to unwind
            await server.stopped.wait()
    if not server.alive:
        return "node_exit", server.crash_key(), server.crash_report()
    if problems:
        return problems[0][0], problems[0][1], ""
    after = await server.snapshot()
    if before != after and not could_sequence(data):
        return "state_change", f"txs {before[1]} -> {after[1]}", ""
    return "", "", ""


async def isolate(nursery: trio.Nursery, workdir: Path, specs: list, kind: str, gateway_settings: dict | None = None,
                  shrink_budget: float = 60.0, target: str | None = None) -> Finding | None:
    """Replay ``specs`` one at a time on a fresh node until one breaks an oracle of
    ``kind`` (for a node exit: with the crash key ``target``, if given); failing that,
    the first frame that broke any. A node-killing frame is then shrunk."""
    settings_ = gateway_settings if gateway_settings is not None else {"rate_per_second": 1e9, "rate_burst": 1e9}
    counter = itertools.count()

    async def fresh() -> LiveServer:
        return await LiveServer(Path(workdir) / f"iso{next(counter)}", **settings_).start(nursery)

    server = await fresh()
    renderer = Renderer(server.node.admin)
    found: Finding | None = None
    fallback: Finding | None = None
    try:
        for spec in specs:
            f = renderer.render(spec)
            got, detail, tb = await _send_one(server, renderer, f.data, f.binary, f.proto, f.silent_ok,
                                              eof=isinstance(spec, Proto) and spec.op == "truncated")
            if not got:
                continue
            hit = Finding(got, spec, f.data, f.binary, detail, tb)
            if got == kind and (target is None or got != "node_exit" or detail == target):
                found = hit
                break
            fallback = fallback or hit
            if not server.alive:
                server = await fresh()
                renderer.admin = server.node.admin
        found = found or fallback
        if found is None:
            return None
        if found.kind == "node_exit" and not isinstance(found.spec, Proto):
            found.shrunk = await _shrink(fresh, renderer, found, shrink_budget)
        return found
    finally:
        server.stop()


async def _shrink(fresh: Any, renderer: Renderer, found: Finding, budget: float) -> bytes:
    """Remove chunks of the frame while it still kills a fresh node the same way."""
    deadline = time.monotonic() + budget
    target = found.detail
    data = found.frame
    server = await fresh()

    async def kills(candidate: bytes) -> bool:
        nonlocal server
        if not found.binary:
            try:
                candidate.decode()
            except UnicodeDecodeError:  # a cut through a character: not a text frame any more
                return False
        if not server.alive:
            server = await fresh()
        got, detail, _ = await _send_one(server, renderer, candidate, found.binary, False, True)
        if got == "node_exit":
            server = await fresh()
            return detail == target
        return False

    try:
        # first the long runs ('[' * 1112): the shortest run that still kills it
        i = 0
        while i < len(data) and time.monotonic() < deadline:
            j = i
            while j < len(data) and data[j] == data[i]:
                j += 1
            if j - i >= 16:
                lo, hi = 0, j - i  # hi kills
                while hi - lo > 1 and time.monotonic() < deadline:
                    mid = (lo + hi) // 2
                    if await kills(data[:i] + data[i:i + 1] * mid + data[j:]):
                        hi = mid
                    else:
                        lo = mid
                data = data[:i] + data[i:i + 1] * hi + data[j:]
                j = i + hi
            i = j
        chunk = max(1, len(data) // 2)
        while chunk >= 1 and time.monotonic() < deadline:
            i = 0
            progressed = False
            while i < len(data) and time.monotonic() < deadline:
                candidate = data[:i] + data[i + chunk:]
                if candidate and await kills(candidate):
                    data = candidate
                    progressed = True
                else:
                    i += chunk
            if not progressed:
                chunk //= 2
        return data
    finally:
        server.stop()


# ---------------------------------------------------------------- the soak


def _mix(corpus: list, rng: random.Random, n: int, havoc_share: float, fresh_share: float) -> list:
    """A batch: specs from the hypothesis corpus (re-rendered: fresh ids, keys, timestamps),
    fresh specs from the same generators with a seeded Random, and byte havoc on either."""
    src = RandSrc(rng)
    out = []
    for _ in range(n):
        spec = gen_frame(src) if rng.random() < fresh_share else rng.choice(corpus)
        if rng.random() < havoc_share and not isinstance(spec, (Proto, Big)):
            spec = Havoc(spec, rng.randrange(2**32), rng.random() < 0.3)
        out.append(spec)
    return out


def print_stats(stats: Stats, elapsed: float) -> None:
    print(f"frames:              {stats.frames:,} in {elapsed:.1f} s = {stats.frames / max(elapsed, 1e-9):,.0f} frames/s "
          f"({stats.rounds:,} rounds, {stats.strict_rounds:,} strict)")
    print(f"node exits:          {stats.node_exits} (0 expected)")
    for key, n in stats.crash_keys.most_common():
        print(f"  {n} x {key}")
    print(f"server closes:       {stats.server_closes} fuzzing connections closed by the server (0 expected)")
    print(f"protocol garbage:    {stats.proto_frames:,} frames on throwaway connections: "
          + ", ".join(f"{k} {v}" for k, v in sorted(stats.proto_outcomes.items())) + " (server closed 1002/1007/1009, or dropped/ignored)")
    print(f"accepted requests:   {stats.accepted:,} result replies to writes; {stats.sequenced:,} transactions sequenced; "
          f"{stats.could_seq:,} frames carried a valid signature ({stats.dropped_strict:,} left out of strict rounds)")
    print(f"state changes:       {stats.state_changes} from rejected input (0 expected)")
    if stats.dropped_node_stats:
        print(f"nodeStats:           {stats.dropped_node_stats:,} frames left out (one per {NODE_STATS_EVERY:,} frames is sent: each costs ~50 ms of the event loop)")
    print(f"replies:             {stats.replies:,} (+{stats.stream_frames:,} stream frames); results by method: "
          + ", ".join(f"{k} {v}" for k, v in stats.results.most_common()))
    print("error codes:         " + ", ".join(f"{k} {v:,}" for k, v in stats.codes.most_common()))
    for note, n in stats.notes.items():
        print(f"note:                {n:,} {note}")
    others = Counter(v.kind for v in stats.violations if v.kind != "node_exit")
    print(f"oracle violations:   {sum(others.values())}" + (" (" + ", ".join(f"{k} {v}" for k, v in others.items()) + ")" if others else ""))


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    conns = args.conns * max(1, args.workers)
    print(f"fuzz: {args.frames:,} frames over {conns} connections ({max(1, args.workers)} x {args.conns}"
          f"{' in worker processes' if args.workers else ''}), batches of {args.batch}, seed {seed}", flush=True)
    limits = {} if args.default_limits else None
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="satchel-fuzz-") as d:
        async with trio.open_nursery() as nursery:
            if args.workers:
                fz: Fuzzer = Coordinator(nursery, Path(d), args, seed, limits)
                await fz.start()  # the workers draw their corpora with hypothesis meanwhile
                print(f"  corpus: {args.corpus:,} specs drawn by hypothesis in the workers in {time.perf_counter() - t:.1f} s", flush=True)
                corpus, rng = [], None
            else:
                corpus = harvest(args.corpus, seed)
                print(f"  corpus: {len(corpus):,} specs drawn by hypothesis in {time.perf_counter() - t:.1f} s", flush=True)
                rng = random.Random(seed)
                fz = Fuzzer(nursery, Path(d), args.conns, limits)
                await fz.start()
                fz.renderer.cache_specs = True
            t0 = time.perf_counter()
            last = t0
            strict = True
            isolate_todo: list[Violation] = []
            seen_kinds: set = set()
            while fz.stats.frames < args.frames:
                if args.workers:
                    violations = await fz.round_all(strict)
                else:
                    violations = await fz.round([_mix(corpus, rng, args.batch, args.havoc, args.fresh) for _ in range(args.conns)], strict)
                for v in violations:
                    key = v.detail if v.kind == "node_exit" else v.kind
                    if key not in seen_kinds and len(isolate_todo) < 6:
                        seen_kinds.add(key)
                        isolate_todo.append(v)
                strict = not strict
                now = time.perf_counter()
                if now - last >= 10:
                    last = now
                    s = fz.stats
                    print(f"  {s.frames:,} frames, {s.frames / (now - t0):,.0f}/s, node exits {s.node_exits}, "
                          f"violations {len(s.violations)}, accepted {s.accepted}, sequenced {s.sequenced}", flush=True)
            elapsed = time.perf_counter() - t0
            await fz.close()
            print_stats(fz.stats, elapsed)
            for v in isolate_todo:
                print(f"\nisolating [{v.kind}] {v.detail} ({len(v.specs)} frames in the round)...", flush=True)
                target = v.detail.removeprefix("the node exited: ") if v.kind == "node_exit" else None
                found = await isolate(nursery, Path(d) / "iso", v.specs, v.kind, target=target) if v.specs else None
                print(found.report() if found else "  did not reproduce frame by frame (an interaction between frames?)")
                if v.kind == "node_exit" and (found is None or not found.traceback):
                    key = v.detail.removeprefix("the node exited: ")
                    print("  traceback of the soak's crash:\n" + "\n".join(
                        "    " + ln for ln in fz.stats.crash_reports.get(key, "").rstrip().splitlines()[-30:]))
            nursery.cancel_scope.cancel()
    s = fz.stats
    failed = s.node_exits or s.state_changes or s.violations
    print("\nFAIL" if failed else "\nOK")
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--conns", type=int, default=2, help="connections per worker")
    ap.add_argument("--batch", type=int, default=400, help="frames per connection per round")
    ap.add_argument("--corpus", type=int, default=10_000, help="specs drawn by hypothesis, then replayed with fresh ids/keys/timestamps")
    ap.add_argument("--havoc", type=float, default=0.15, help="share of frames byte-mutated after rendering")
    ap.add_argument("--fresh", type=float, default=0.3, help="share of frames from fresh Random-driven specs (the rest: the hypothesis corpus)")
    ap.add_argument("--workers", type=int, default=2, help="client processes (0: everything in this process)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--default-limits", action="store_true", help="keep the gateway's rate limits (default: lifted, so frames reach the checks)")
    ap.add_argument("--cluster", action="store_true",
                    help="fuzz a gateway node following a sequencer over NATS (satchel.cluster) instead of one node")
    args = ap.parse_args()
    global CLUSTER
    CLUSTER = args.cluster
    sys.exit(trio.run(soak, args))


if __name__ == "__main__":
    # run as benchmarks.fuzz, not __main__: the workers' pickled specs name that module
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.fuzz import main as _main

    _main()
