"""ERC-20 on the wire: call data for the calls a custody edge makes, Transfer logs decoded.

Only the fixed-size ABI types these calls need (address, uint256) are encoded, by hand, so
that reading the chain needs no ABI library; the selectors and the Transfer topic are the
standard ones (a test recomputes them with keccak from the compiled artifact's ABI). The
committed artifacts (:func:`load_artifact`) are compiled offline by
``python -m satchel.chains.evm.compile``.

A deposit is identified on chain by (transaction hash, log index): :class:`Transfer` carries
both, and the block hash it was seen in, so that an adapter can tell a log that a reorg
removed from one that is still canonical.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from satchel.chains.evm.rpc import BlockId, EvmRpc, Log

CONTRACTS = Path(__file__).resolve().with_name("contracts")

# keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# the first 4 bytes of keccak256 of each signature
SELECTORS = {
    "transfer(address,uint256)": bytes.fromhex("a9059cbb"),
    "transferFrom(address,address,uint256)": bytes.fromhex("23b872dd"),
    "approve(address,uint256)": bytes.fromhex("095ea7b3"),
    "balanceOf(address)": bytes.fromhex("70a08231"),
    "allowance(address,address)": bytes.fromhex("dd62ed3e"),
    "totalSupply()": bytes.fromhex("18160ddd"),
    "mint(address,uint256)": bytes.fromhex("40c10f19"),
}
UINT256_MAX = 2**256 - 1


class Transfer(msgspec.Struct, frozen=True):
    """One ERC-20 Transfer event (amounts in the token's smallest unit)."""

    token: str
    sender: str  # 0x000...0 for a mint
    recipient: str
    amount: int
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool  # True when a node reports the log as undone by a reorg


class Artifact(msgspec.Struct, frozen=True, rename="camel"):
    """A compiled contract, as committed next to its source (keys as in hardhat's artifacts:
    contractName, sourceName, abi, bytecode, deployedBytecode)."""

    contract_name: str
    source_name: str
    source_sha256: str
    compiler: dict[str, Any]
    settings: dict[str, Any]
    abi: list[dict[str, Any]]
    bytecode: str  # creation code, 0x hex
    deployed_bytecode: str


def _address_word(address: str) -> bytes:
    raw = bytes.fromhex(address[2:] if address.startswith(("0x", "0X")) else address)
    if len(raw) != 20:
        raise ValueError(f"not a 20-byte address: {address!r}")
    return raw.rjust(32, b"\0")


def _uint_word(value: int) -> bytes:
    if not 0 <= value <= UINT256_MAX:
        raise ValueError(f"not a uint256: {value}")
    return value.to_bytes(32, "big")


def address_topic(address: str) -> str:
    """An address as an indexed-event topic (left-padded to 32 bytes)."""
    return "0x" + _address_word(address).hex()


def encode_transfer(to: str, amount: int) -> bytes:
    return SELECTORS["transfer(address,uint256)"] + _address_word(to) + _uint_word(amount)


def encode_transfer_from(sender: str, to: str, amount: int) -> bytes:
    return SELECTORS["transferFrom(address,address,uint256)"] + _address_word(sender) + _address_word(to) + _uint_word(amount)


def encode_approve(spender: str, amount: int) -> bytes:
    return SELECTORS["approve(address,uint256)"] + _address_word(spender) + _uint_word(amount)


def encode_mint(to: str, amount: int) -> bytes:
    return SELECTORS["mint(address,uint256)"] + _address_word(to) + _uint_word(amount)


def encode_balance_of(holder: str) -> bytes:
    return SELECTORS["balanceOf(address)"] + _address_word(holder)


def decode_transfer(log: Log) -> Transfer | None:
    """The Transfer in ``log``, or None if it is not an ERC-20 Transfer.

    ERC-721's Transfer has the same topic but a third indexed argument (four topics, no
    data): it is not a fungible transfer and is not decoded.
    """
    if len(log.topics) != 3 or log.topics[0] != TRANSFER_TOPIC or len(log.data) != 2 + 64:
        return None
    return Transfer(token=log.address, sender="0x" + log.topics[1][-40:], recipient="0x" + log.topics[2][-40:],
                    amount=int(log.data, 16), block_number=log.block_number, block_hash=log.block_hash,
                    tx_hash=log.tx_hash, log_index=log.log_index, removed=log.removed)


async def get_transfers(rpc: EvmRpc, tokens: str | Sequence[str], *, from_block: BlockId = "earliest",
                        to_block: BlockId = "latest", block_hash: str | None = None,
                        senders: Sequence[str] | None = None, recipients: Sequence[str] | None = None) -> list[Transfer]:
    """The Transfer events of ``tokens`` in a block range (or one block by hash), in chain order,
    filtered by the node on sender and/or recipient addresses when given."""
    topics: list[str | list[str] | None] = [
        TRANSFER_TOPIC,
        None if senders is None else [address_topic(a) for a in senders],
        None if recipients is None else [address_topic(a) for a in recipients],
    ]
    while topics[-1] is None:
        topics.pop()
    logs = await rpc.get_logs(address=tokens, topics=topics, from_block=from_block, to_block=to_block,
                              block_hash=block_hash)
    return [t for t in map(decode_transfer, logs) if t is not None]


async def balance_of(rpc: EvmRpc, token: str, holder: str, block: BlockId = "latest") -> int:
    """The token balance of ``holder`` (smallest units), by eth_call."""
    return int.from_bytes(await rpc.call(token, encode_balance_of(holder), block), "big")


@cache
def load_artifact(name: str = "USDC") -> Artifact:
    """The committed artifact ``contracts/<name>.json`` (abi, creation and runtime bytecode)."""
    return msgspec.convert(json.loads((CONTRACTS / f"{name}.json").read_text()), Artifact)
