"""Ethereum JSON-RPC over HTTP, on trio: the one place where Satchel talks to an EVM provider.

:class:`EvmRpc` wraps an ``httpx.AsyncClient``. httpx runs under trio as it is: its transport,
httpcore, picks a trio backend when sniffio reports trio (no asyncio loop, no thread), and
the tests run it inside pytest-trio. Every call has a deadline (``timeout`` seconds for the
whole request, enforced with ``trio.fail_after`` on top of httpx's per-phase timeouts) and
one connection pool per provider bounds its concurrency (``max_connections``).

Failures come in three categories, the inputs of a chain adapter's circuit breaker
(:class:`Fault`):

- ``Fault.DOWN`` (:class:`ProviderDown`): no usable answer: connection refused or reset,
  timeout, an HTTP status other than 200 and 429 (5xx, auth failures), a body that is not
  JSON-RPC. Try another provider; count towards opening the breaker.
- ``Fault.RATE_LIMITED`` (:class:`RateLimited`): HTTP 429, or JSON-RPC error -32005 ("limit
  exceeded", EIP-1474, the code hosted providers use for rate limits). The provider is up
  but over its limit: back off (``retry_after`` seconds when it said so). Some providers
  also answer -32005 to an eth_getLogs whose range holds too many logs: an adapter keeps its
  log ranges small rather than read that as overload.
- ``Fault.REJECTED`` (:class:`JsonRpcError`): the provider answered with a JSON-RPC error
  about this request (nonce too low, execution reverted, unknown method...). The provider is
  healthy; retrying the same request elsewhere will not help.

Results come back as integers and lowercase ``0x`` hex strings (addresses, hashes, data),
in small frozen structs (:class:`Block`, :class:`Receipt`, :class:`Log`, :class:`FeeQuote`).
ERC-20 calls and Transfer decoding live in :mod:`satchel.chains.evm.erc20`; signing lives in
:mod:`satchel.chains.evm.transactions`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import msgspec
import orjson
import trio

BlockId = int | str  # a block number, or "latest" / "pending" / "earliest" / "safe" / "finalized"
RATE_LIMIT_CODES = frozenset({-32005})
_JSON = {"Content-Type": "application/json"}


class Fault(enum.Enum):
    """Why a call failed, as a circuit breaker needs to know it."""

    DOWN = "down"
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"


class RpcFailure(Exception):
    """A JSON-RPC call that did not return a result. ``fault`` says which kind."""

    fault: ClassVar[Fault]

    def __init__(self, message: str, *, url: str, method: str):
        super().__init__(message)
        self.url = url
        self.method = method


class ProviderDown(RpcFailure):
    """No usable answer (refused, reset, timeout, HTTP error status, malformed body)."""

    fault = Fault.DOWN

    def __init__(self, message: str, *, url: str, method: str, status: int | None = None):
        super().__init__(message, url=url, method=method)
        self.status = status


class RateLimited(RpcFailure):
    """The provider is over its rate limit (HTTP 429 or JSON-RPC -32005)."""

    fault = Fault.RATE_LIMITED

    def __init__(self, message: str, *, url: str, method: str, retry_after: float | None = None):
        super().__init__(message, url=url, method=method)
        self.retry_after = retry_after


class JsonRpcError(RpcFailure):
    """The provider answered this request with a JSON-RPC error object."""

    fault = Fault.REJECTED

    def __init__(self, message: str, *, url: str, method: str, code: int, data: Any = None):
        super().__init__(message, url=url, method=method)
        self.code = code
        self.data = data


class Log(msgspec.Struct, frozen=True):
    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool


class Block(msgspec.Struct, frozen=True):
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    base_fee: int | None  # None before London
    transactions: tuple[str, ...]  # hashes


class Receipt(msgspec.Struct, frozen=True):
    tx_hash: str
    block_number: int
    block_hash: str
    status: int  # 1 success, 0 reverted
    sender: str
    to: str | None  # None for a contract creation
    contract_address: str | None
    gas_used: int
    effective_gas_price: int
    logs: tuple[Log, ...]


class FeeQuote(msgspec.Struct, frozen=True):
    """What the node suggests paying now (wei per gas)."""

    base_fee: int | None  # the latest block's; None before London
    priority_fee: int  # eth_maxPriorityFeePerGas
    gas_price: int  # eth_gasPrice, for legacy transactions


def quantity(value: int) -> str:
    """An integer as a JSON-RPC quantity (``0x`` hex without leading zeros)."""
    if value < 0:
        raise ValueError(f"a quantity cannot be negative: {value}")
    return hex(value)


def block_id(block: BlockId) -> str:
    return quantity(block) if isinstance(block, int) else block


def _int(value: str | None) -> int | None:
    return None if value is None else int(value, 16)


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _log(raw: dict) -> Log:
    return Log(address=raw["address"].lower(), topics=tuple(t.lower() for t in raw["topics"]),
               data=raw["data"].lower(), block_number=int(raw["blockNumber"], 16), block_hash=raw["blockHash"].lower(),
               tx_hash=raw["transactionHash"].lower(), log_index=int(raw["logIndex"], 16),
               removed=bool(raw.get("removed", False)))


def _block(raw: dict) -> Block:
    txs = raw.get("transactions", [])
    return Block(number=int(raw["number"], 16), hash=raw["hash"].lower(), parent_hash=raw["parentHash"].lower(),
                 timestamp=int(raw["timestamp"], 16), base_fee=_int(raw.get("baseFeePerGas")),
                 transactions=tuple((t if isinstance(t, str) else t["hash"]).lower() for t in txs))


def _receipt(raw: dict) -> Receipt:
    return Receipt(tx_hash=raw["transactionHash"].lower(), block_number=int(raw["blockNumber"], 16),
                   block_hash=raw["blockHash"].lower(), status=int(raw["status"], 16), sender=raw["from"].lower(),
                   to=_lower(raw.get("to")), contract_address=_lower(raw.get("contractAddress")),
                   gas_used=int(raw["gasUsed"], 16), effective_gas_price=int(raw.get("effectiveGasPrice", "0x0"), 16),
                   logs=tuple(_log(entry) for entry in raw["logs"]))


def _retry_after(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None  # an HTTP date: rare from RPC providers, and the caller backs off anyway


class EvmRpc:
    """A JSON-RPC client for one provider URL. Use as ``async with EvmRpc(url) as rpc:``.

    Safe to share between tasks (httpx pools the connections, ``max_connections`` of them).
    """

    def __init__(self, url: str, *, timeout: float = 10.0, max_connections: int = 10,
                 client: httpx.AsyncClient | None = None):
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_connections=max_connections),
            trust_env=False,  # a provider URL is used as given, never through an environment proxy
        )

    async def __aenter__(self) -> EvmRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One JSON-RPC call: its ``result``, or an :class:`RpcFailure` of the right kind."""
        body = orjson.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)})
        where = {"url": self.url, "method": method}
        try:
            with trio.fail_after(self.timeout):
                response = await self._client.post(self.url, content=body, headers=_JSON)
        except (trio.TooSlowError, httpx.TimeoutException) as e:
            raise ProviderDown(f"{method}: no answer from {self.url} within {self.timeout} s", **where) from e
        except httpx.TransportError as e:
            raise ProviderDown(f"{method}: {self.url} unreachable ({type(e).__name__}: {e})", **where) from e
        if response.status_code == 429:
            retry = _retry_after(response.headers.get("retry-after"))
            raise RateLimited(f"{method}: {self.url} is rate limiting (HTTP 429)", retry_after=retry, **where)
        if response.status_code != 200:
            raise ProviderDown(f"{method}: {self.url} answered HTTP {response.status_code}",
                               status=response.status_code, **where)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError as e:
            raise ProviderDown(f"{method}: {self.url} answered something that is not JSON", status=200, **where) from e
        if not isinstance(payload, dict) or ("result" not in payload and "error" not in payload):
            raise ProviderDown(f"{method}: {self.url} answered something that is not JSON-RPC", status=200, **where)
        error = payload.get("error")
        if error is not None:
            code = error.get("code", 0) if isinstance(error, dict) else 0
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            if code in RATE_LIMIT_CODES:
                raise RateLimited(f"{method}: {message} ({code})", **where)
            raise JsonRpcError(f"{method}: {message} ({code})", code=code,
                               data=error.get("data") if isinstance(error, dict) else None, **where)
        return payload["result"]

    # -- chain state ---------------------------------------------------------------------------

    async def chain_id(self) -> int:
        return int(await self.request("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self.request("eth_blockNumber"), 16)

    async def get_block(self, block: BlockId = "latest") -> Block | None:
        """The block with its transaction hashes; None when there is no such block (yet)."""
        raw = await self.request("eth_getBlockByNumber", [block_id(block), False])
        return None if raw is None else _block(raw)

    async def get_receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of a mined transaction; None while it is pending or unknown."""
        raw = await self.request("eth_getTransactionReceipt", [tx_hash])
        return None if raw is None else _receipt(raw)

    async def get_logs(self, *, address: str | Sequence[str] | None = None,
                       topics: Sequence[str | Sequence[str] | None] = (),
                       from_block: BlockId = "earliest", to_block: BlockId = "latest",
                       block_hash: str | None = None) -> list[Log]:
        """eth_getLogs. ``topics`` positions are AND-ed; a list in one position is an OR; None is any.

        ``block_hash`` (EIP-234) asks for one exact block, which a reorg cannot swap under the
        query; it replaces ``from_block``/``to_block``.
        """
        flt: dict[str, Any] = {"topics": list(topics)}
        if address is not None:
            flt["address"] = address if isinstance(address, str) else list(address)
        if block_hash is not None:
            flt["blockHash"] = block_hash
        else:
            flt["fromBlock"], flt["toBlock"] = block_id(from_block), block_id(to_block)
        return [_log(raw) for raw in await self.request("eth_getLogs", [flt])]

    async def get_balance(self, address: str, block: BlockId = "latest") -> int:
        """Wei held by ``address``."""
        return int(await self.request("eth_getBalance", [address, block_id(block)]), 16)

    async def nonce(self, address: str, block: BlockId = "pending") -> int:
        """eth_getTransactionCount: with "pending", the next nonce counting the mempool."""
        return int(await self.request("eth_getTransactionCount", [address, block_id(block)]), 16)

    async def call(self, to: str, data: bytes | str, block: BlockId = "latest", *, sender: str | None = None) -> bytes:
        """eth_call: run a read-only call, return its output bytes."""
        tx = {"to": to, "data": data if isinstance(data, str) else "0x" + data.hex()}
        if sender is not None:
            tx["from"] = sender
        return bytes.fromhex((await self.request("eth_call", [tx, block_id(block)]))[2:])

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        return int(await self.request("eth_estimateGas", [tx]), 16)

    async def gas_price(self) -> int:
        return int(await self.request("eth_gasPrice"), 16)

    async def max_priority_fee(self) -> int:
        return int(await self.request("eth_maxPriorityFeePerGas"), 16)

    async def fees(self) -> FeeQuote:
        """The latest base fee, the suggested priority fee and the legacy gas price."""
        latest = await self.get_block("latest")
        return FeeQuote(base_fee=latest.base_fee if latest else None, priority_fee=await self.max_priority_fee(),
                        gas_price=await self.gas_price())

    # -- sending ---------------------------------------------------------------------------------

    async def send_raw_transaction(self, raw: bytes | str) -> str:
        """eth_sendRawTransaction: the transaction's hash (lowercase hex)."""
        payload = raw if isinstance(raw, str) else "0x" + raw.hex()
        return (await self.request("eth_sendRawTransaction", [payload])).lower()

    async def wait_for_receipt(self, tx_hash: str, *, timeout: float = 30.0, poll: float = 0.05) -> Receipt:
        """Poll until the transaction is mined; ``trio.TooSlowError`` after ``timeout`` seconds."""
        with trio.fail_after(timeout):
            while (receipt := await self.get_receipt(tx_hash)) is None:
                await trio.sleep(poll)
        return receipt

    # -- development nodes (hardhat, anvil, ganache) -------------------------------------------

    async def accounts(self) -> list[str]:
        return [a.lower() for a in await self.request("eth_accounts")]

    async def snapshot(self) -> str:
        """evm_snapshot: an id to :meth:`revert` to. A snapshot is used up by reverting to it."""
        return await self.request("evm_snapshot")

    async def revert(self, snapshot_id: str) -> bool:
        """evm_revert: drop every block and mempool transaction since the snapshot."""
        return bool(await self.request("evm_revert", [snapshot_id]))

    async def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` blocks now (evm_mine), with whatever the mempool holds in the first."""
        for _ in range(blocks):
            await self.request("evm_mine")

    async def set_automine(self, enabled: bool) -> None:
        await self.request("evm_setAutomine", [enabled])

    async def set_interval_mining(self, interval_ms: int) -> None:
        """Mine a block every ``interval_ms`` (0 stops interval mining)."""
        await self.request("evm_setIntervalMining", [interval_ms])
