"""Proof of liabilities: a Merkle root over every (account, asset, total balance).

Leaves are ``sha256(0x00 || msgpack([account, asset, total]))`` in (account, asset)
order, where total = free + held in the asset's smallest unit; an inner node is
``sha256(0x01 || left || right)`` (the prefixes keep a leaf from passing as a node);
an odd node at the end of a level is carried up unchanged. The root is recorded in
every snapshot. ``prove`` gives an account one inclusion path per asset;
``verify`` recomputes the root from a path alone, with no access to the node.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

_leaf_encoder = msgspec.msgpack.Encoder()


def leaf_hash(account: str, asset: str, total: int) -> bytes:
    return hashlib.sha256(b"\x00" + _leaf_encoder.encode([account, asset, total])).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaves_of(state: list) -> list[tuple[str, str, int]]:
    """(account, asset, free + held), sorted, from an Engine.canonical() state."""
    risk = state[4]
    return sorted((acct, asset, free + held) for acct, assets in risk[0] for asset, free, held in assets)


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    levels = [hashes]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [_node(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def root(state: list) -> bytes:
    hashes = [leaf_hash(*leaf) for leaf in leaves_of(state)]
    return _levels(hashes)[-1][0] if hashes else hashlib.sha256(b"").digest()


def prove(state: list, account: str, height: int, decimals: dict[str, int]) -> list[dict[str, Any]]:
    """One inclusion proof per asset the account holds."""
    from satchel.amounts import format_units

    leaves = leaves_of(state)
    levels = _levels([leaf_hash(*leaf) for leaf in leaves])
    top = levels[-1][0].hex()
    proofs = []
    for index, (acct, asset, total) in enumerate(leaves):
        if acct != account:
            continue
        path = []
        i = index
        for level in levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(["left" if sibling < i else "right", level[sibling].hex()])
            i //= 2
        proofs.append({"height": height, "root": top, "account": acct, "asset": asset, "total": total,
                       "balance": format_units(total, decimals.get(asset, 0)), "path": path})
    return proofs


def verify(proof: dict[str, Any], expected_root: str | None = None) -> bool:
    """Recompute the root from the leaf and its path; compare with the proof's (and a given) root."""
    try:
        h = leaf_hash(proof["account"], proof["asset"], int(proof["total"]))
        for side, sibling in proof["path"]:
            other = bytes.fromhex(sibling)
            h = _node(other, h) if side == "left" else _node(h, other)
    except (KeyError, ValueError, TypeError):
        return False
    if h.hex() != proof.get("root"):
        return False
    return expected_root is None or h.hex() == expected_root
