"""Proof of liabilities: a Merkle root over every (account, asset, total balance) at a height.

A leaf commits to everything a proof shows::

    sha256(0x00 || msgpack([height, account, asset, total, decimals]))

in (account, asset) order, where total = free + held in the asset's smallest unit (a
negative balance -- a perp loss owed against other collateral -- is owed *to* the
exchange, not a liability, and counts as 0; unrealized perp PnL is realized into the
balance every few seconds and is not in the leaf) and decimals is the asset's; an inner node is ``sha256(0x01 || left || right)`` (the prefixes
keep a leaf from passing as a node); an odd node at the end of a level is carried up
unchanged. The root, ``root(state, height)``, is recorded in every snapshot.

``prove`` gives an account one inclusion path per asset. ``check`` / ``verify`` recompute
the root from a proof alone, with no access to the node, and accept it only if every
figure it displays is the one hashed: ``balance`` must be exactly ``total`` formatted
with ``decimals`` (``satchel.core.amounts.format_units``), and height, account and asset are
in the leaf. A proof shows inclusion only when checked against a root published
independently of it (``expected_root``); against its own ``root`` field it only shows
that it is self-consistent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from satchel.core.amounts import asset_decimals, format_units
from satchel.core.state import EngineState

_leaf_encoder = msgspec.msgpack.Encoder()

MAX_DECIMALS = 64  # sanity bound for untrusted proof files (no listed asset comes near it)
MAX_PATH = 64  # a tree of 2**64 leaves


def ledger_of(state: EngineState) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """The one place that reads an ``Engine.canonical()`` state: every (account, asset,
    free + held) and each listed asset's decimals."""
    decimals = asset_decimals(state.assets)
    balances = [(row.account, b.asset, b.free + b.held) for row in state.risk.balances for b in row.assets]
    return balances, decimals


def leaf_hash(height: int, account: str, asset: str, total: int, decimals: int) -> bytes:
    return hashlib.sha256(b"\x00" + _leaf_encoder.encode([height, account, asset, total, decimals])).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaves_of(state: EngineState, height: int) -> list[tuple[int, str, str, int, int]]:
    """(height, account, asset, total, decimals) in (account, asset) order."""
    balances, decimals = ledger_of(state)
    return [(height, acct, asset, max(total, 0), decimals.get(asset, 0)) for acct, asset, total in sorted(balances)]


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    levels = [hashes]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [_node(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def _empty_root(height: int) -> bytes:
    return hashlib.sha256(b"\x02" + _leaf_encoder.encode([height])).digest()


def root(state: EngineState, height: int) -> bytes:
    """The liabilities root of ``state`` at block ``height`` (recorded in its snapshot)."""
    hashes = [leaf_hash(*leaf) for leaf in leaves_of(state, height)]
    return _levels(hashes)[-1][0] if hashes else _empty_root(height)


def prove(state: EngineState, account: str, height: int) -> list[dict[str, Any]]:
    """One inclusion proof per asset the account holds."""
    leaves = leaves_of(state, height)
    levels = _levels([leaf_hash(*leaf) for leaf in leaves])
    top = levels[-1][0].hex() if leaves else _empty_root(height).hex()
    proofs = []
    for index, (h, acct, asset, total, decimals) in enumerate(leaves):
        if acct != account:
            continue
        path = []
        i = index
        for level in levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(["left" if sibling < i else "right", level[sibling].hex()])
            i //= 2
        proofs.append({"height": h, "root": top, "account": acct, "asset": asset, "total": total,
                       "decimals": decimals, "balance": format_units(total, decimals), "path": path})
    return proofs


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hash(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def normalize_root(text: str) -> str | None:
    """A root as given on a command line ("0x" prefix and upper case allowed), or None."""
    t = text.strip().lower()
    t = t[2:] if t.startswith("0x") else t
    return t if _is_hash(t) else None


def check(proof: Any, expected_root: str | None = None) -> str | None:
    """Why ``proof`` fails (None: it holds). Every displayed field is checked against the
    leaf; with ``expected_root`` the recomputed root must also equal it."""
    if not isinstance(proof, dict):
        return "not a proof object"
    height, account, asset = proof.get("height"), proof.get("account"), proof.get("asset")
    total, decimals, balance = proof.get("total"), proof.get("decimals"), proof.get("balance")
    path, claimed = proof.get("path"), proof.get("root")
    if not _is_int(height) or height < 0:
        return "height missing or not a non-negative integer"
    if not isinstance(account, str) or not isinstance(asset, str):
        return "account or asset missing"
    if not _is_int(total) or not 0 <= total < 2**64:
        return "total missing or not a non-negative integer"
    if not _is_int(decimals) or not 0 <= decimals <= MAX_DECIMALS:
        return "decimals missing or out of range"
    if not isinstance(balance, str) or balance != format_units(total, decimals):
        return f"balance {balance!r} is not the hashed total {total} at {decimals} decimals"
    if not _is_hash(claimed):
        return "root missing or not 64 lower-case hex digits"
    if not isinstance(path, list) or len(path) > MAX_PATH:
        return "path missing or too long"
    try:
        h = leaf_hash(height, account, asset, total, decimals)
    except (ValueError, TypeError, OverflowError):
        return "leaf cannot be encoded"
    for step in path:
        if not isinstance(step, list) or len(step) != 2 or step[0] not in ("left", "right") or not _is_hash(step[1]):
            return "malformed path step (want [\"left\"|\"right\", 64 lower-case hex digits])"
        other = bytes.fromhex(step[1])
        h = _node(other, h) if step[0] == "left" else _node(h, other)
    if h.hex() != claimed:
        return "path does not lead to the proof's root"
    if expected_root is not None and h.hex() != normalize_root(expected_root):
        return "not included in the given root"
    return None


def verify(proof: Any, expected_root: str | None = None) -> bool:
    """The proof holds (see ``check``)."""
    return check(proof, expected_root) is None
