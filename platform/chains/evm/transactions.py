"""Ethereum transactions built and signed locally, then sent raw through :class:`EvmRpc`.

Signing is eth-account's (the Ethereum Foundation's reference signer, the one web3.py uses):
a custody edge should not hand-roll RLP and EIP-155/EIP-1559 serialisation. It is the heavy
import of this package (about 1 s and 49 MB with pydantic and friends), so only this module
imports it, and only code that signs imports this module; reading the chain does not.
With coincurve installed eth-keys signs through libsecp256k1: 0.84 ms per transaction here,
against 5.7 ms in pure Python.

Builders return plain transaction dicts (eth-account's input) so that a caller can inspect
or adjust them before :meth:`Wallet.sign`. Prices are explicit: :class:`Eip1559` (type-2
transactions) or :class:`Legacy` (a gas price, EIP-155 replay-protected), derived from the
node's :class:`~satchel.chains.evm.rpc.FeeQuote` or chosen by the caller.

Deposit addresses: :func:`deposit_wallet` turns the 32 bytes that
:func:`satchel.chains.addresses.address_key` derives from the custody seed, the chain and the
account (HMAC-SHA256 keyed by the seed) into the private key of the account's deposit
address. That is one scheme for every chain, stateless (no index to allocate per account, an
account key of any length), and keyed so that nobody without the seed can link addresses to
accounts. Its cost, against BIP32 with non-hardened paths: deriving an address needs the
seed, not just an extended public key, so the process that hands out deposit addresses holds
the secret that can also sweep them.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

import rlp
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from satchel.chains.evm import erc20
from satchel.chains.evm.rpc import EvmRpc, FeeQuote, Receipt

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ETH_TRANSFER_GAS = 21_000
ERC20_GAS = 100_000  # a transfer or mint to a fresh holder takes about 51k
DEPLOY_GAS = 2_000_000


class Eip1559(NamedTuple):
    """Type-2 pricing, wei per gas: the fee cap and the tip within it."""

    max_fee: int
    priority_fee: int

    @classmethod
    def from_quote(cls, quote: FeeQuote, *, headroom: int = 2) -> Eip1559:
        """``headroom`` x the latest base fee plus the suggested tip: stays valid through
        several full blocks (the base fee rises at most 12.5% per block)."""
        if quote.base_fee is None:
            raise ValueError("this chain reports no base fee (pre-London): price with Legacy")
        return cls(max_fee=headroom * quote.base_fee + quote.priority_fee, priority_fee=quote.priority_fee)


class Legacy(NamedTuple):
    """Type-0 pricing: one gas price."""

    gas_price: int

    @classmethod
    def from_quote(cls, quote: FeeQuote) -> Legacy:
        return cls(gas_price=quote.gas_price)


Pricing = Eip1559 | Legacy


class SignedTx(NamedTuple):
    raw: bytes  # what eth_sendRawTransaction takes
    hash: str  # lowercase 0x hex: known before sending, so it can be journalled first
    sender: str
    nonce: int


class Wallet:
    """One secp256k1 private key and its address (lowercase 0x hex, like everything the RPC returns)."""

    def __init__(self, private_key: bytes | str):
        self._account = Account.from_key(private_key)
        self.address: str = self._account.address.lower()

    @property
    def checksum_address(self) -> str:
        return self._account.address

    @property
    def private_key(self) -> bytes:
        return bytes(self._account.key)

    def __repr__(self) -> str:
        return f"Wallet({self.address})"  # never the key

    def sign(self, tx: dict[str, Any]) -> SignedTx:
        signed = self._account.sign_transaction(tx)
        return SignedTx(raw=bytes(signed.raw_transaction), hash="0x" + bytes(signed.hash).hex(), sender=self.address,
                        nonce=tx["nonce"])


def transaction(*, chain_id: int, nonce: int, to: str | None, pricing: Pricing, gas: int, value: int = 0,
                data: bytes = b"") -> dict[str, Any]:
    """A transaction dict for :meth:`Wallet.sign` (``to`` None creates a contract)."""
    tx: dict[str, Any] = {"chainId": chain_id, "nonce": nonce, "gas": gas, "value": value, "data": data}
    if to is not None:
        tx["to"] = to_checksum_address(to)
    if isinstance(pricing, Eip1559):
        tx.update(type=2, maxFeePerGas=pricing.max_fee, maxPriorityFeePerGas=pricing.priority_fee)
    else:
        tx["gasPrice"] = pricing.gas_price
    return tx


def eth_transfer(*, chain_id: int, nonce: int, to: str, value: int, pricing: Pricing,
                 gas: int = ETH_TRANSFER_GAS) -> dict[str, Any]:
    """Send ``value`` wei to ``to``."""
    return transaction(chain_id=chain_id, nonce=nonce, to=to, value=value, pricing=pricing, gas=gas)


def erc20_transfer(*, chain_id: int, nonce: int, token: str, to: str, amount: int, pricing: Pricing,
                   gas: int = ERC20_GAS) -> dict[str, Any]:
    """Send ``amount`` smallest units of ``token`` to ``to``."""
    return transaction(chain_id=chain_id, nonce=nonce, to=token, data=erc20.encode_transfer(to, amount),
                       pricing=pricing, gas=gas)


def erc20_mint(*, chain_id: int, nonce: int, token: str, to: str, amount: int, pricing: Pricing,
               gas: int = ERC20_GAS) -> dict[str, Any]:
    """Mint ``amount`` of ``token`` to ``to`` (the dev USDC's owner-only ``mint``)."""
    return transaction(chain_id=chain_id, nonce=nonce, to=token, data=erc20.encode_mint(to, amount),
                       pricing=pricing, gas=gas)


def deploy(*, chain_id: int, nonce: int, bytecode: str | bytes, pricing: Pricing, gas: int = DEPLOY_GAS,
           constructor_args: bytes = b"") -> dict[str, Any]:
    """Create a contract from creation bytecode (e.g. ``erc20.load_artifact().bytecode``)."""
    code = bytes.fromhex(bytecode.removeprefix("0x")) if isinstance(bytecode, str) else bytecode
    return transaction(chain_id=chain_id, nonce=nonce, to=None, data=code + constructor_args, pricing=pricing,
                       gas=gas)


def contract_address(deployer: str, nonce: int) -> str:
    """The address a CREATE from ``deployer`` at ``nonce`` gets: known before the deploy is mined."""
    return "0x" + keccak(rlp.encode([bytes.fromhex(deployer.removeprefix("0x")), nonce]))[12:].hex()


async def send(rpc: EvmRpc, signed: SignedTx) -> str:
    """Broadcast a signed transaction; returns its hash (the same as ``signed.hash``)."""
    return await rpc.send_raw_transaction(signed.raw)


async def transact(rpc: EvmRpc, wallet: Wallet, tx: dict[str, Any], *, timeout: float = 30.0) -> Receipt:
    """Sign, send and wait for the receipt (tests and tools; an adapter journals between the steps)."""
    signed = wallet.sign(tx)
    await send(rpc, signed)
    return await rpc.wait_for_receipt(signed.hash, timeout=timeout)


@cache
def dev_wallets(mnemonic: str, count: int) -> tuple[Wallet, ...]:
    """The dev node's funded accounts: BIP44 ``m/44'/60'/0'/0/i`` of ``mnemonic``, as hardhat derives them."""
    Account.enable_unaudited_hdwallet_features()  # BIP39/BIP32 derivation of a public test mnemonic only
    return tuple(Wallet(Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}").key) for i in range(count))


def deposit_wallet(seed: bytes, chain: str, account: str) -> Wallet:
    """The deposit address (and its key) of ``account`` on ``chain``, from the custody seed."""
    from satchel.chains.addresses import address_key

    key = address_key(seed, chain, account)
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:  # probability about 2**-128
        raise ValueError(f"the derived key for {account!r} on {chain!r} is not a valid secp256k1 key")
    return Wallet(key)
