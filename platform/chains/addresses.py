"""Deposit addresses: one per account and chain, derived from the account's key and the
node's custody seed, so the same account always gets the same address and nobody
without the seed can tell which address belongs to whom.

On a simulated chain the address is the derived bytes themselves (``sim_address``); on an
EVM chain the derived bytes are the private key of the address (``evm.transactions.
deposit_wallet``), so the chain's adapter can sign the sweep of any address it handed out.

The seed is 32 random bytes in ``custody.seed`` in the node's data directory (file
mode 0600 from the start), created on first use; losing it loses the mapping, not funds
(the addresses' keys live with the wallet, see the chain's adapter).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

import orjson

SEED_FILE = "custody.seed"


def load_seed(directory: Path) -> bytes:
    """The custody seed kept in ``directory``, created on first use."""
    path = Path(directory) / SEED_FILE
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    seed = os.urandom(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
    tmp.rename(path)
    return seed


def address_key(seed: bytes, chain: str, account: str) -> bytes:
    """32 bytes that determine the account's address on ``chain`` (HMAC-SHA256 keyed by
    the seed): for the simulated chain the address itself, for an EVM chain the private
    key of the deposit address."""
    return hmac.new(seed, f"{chain}\0{account}".encode(), hashlib.sha256).digest()


def sim_address(seed: bytes, chain: str, account: str) -> str:
    """The account's deposit address on a simulated chain."""
    return "sim1" + address_key(seed, chain, account)[:20].hex()


def evm_address(seed: bytes, chain: str, account: str) -> str:
    """The account's deposit wallet's address on an EVM chain (lowercase 0x hex, as blocks
    report it)."""
    # imported here: eth-account is heavy, and a node with only sim chains never needs it
    from satchel.chains.evm.transactions import deposit_wallet

    return deposit_wallet(seed, chain, account).address


# chain kind -> (custody seed, chain, account) -> the account's deposit address there:
# the one place that knows which kinds hand out addresses
DERIVATIONS: dict[str, Callable[[bytes, str, str], str]] = {"sim": sim_address, "evm": evm_address}


class AddressBook:
    """The deposit addresses handed out, so an adapter knows whose a transfer is: one line
    per (chain, address, account) in ``deposit-addresses.jsonl`` in the data directory,
    appended and flushed before the address is answered (an address a client was given is
    never unknown to the adapter after a restart)."""

    FILE = "deposit-addresses.jsonl"

    def __init__(self, directory: Path, seed: bytes, kinds: dict[str, str] | None = None):
        self.path = Path(directory) / self.FILE
        self.seed = seed
        # chain name -> kind ("sim" | "evm"), as configured; a chain not named here is a
        # simulated one (what every node had before EVM chains). ``chains.embedded.Chains``
        # fills it from the node's configuration.
        self.kinds: dict[str, str] = dict(kinds or {})
        self.owners: dict[tuple[str, str], str] = {}
        self._read = 0  # bytes of the file taken so far (whole lines)
        self.refresh()

    def refresh(self) -> None:
        """Take the lines appended since the last read, by this process or another: in
        ``satchel chains`` the node hands the addresses out and the adapters' process
        reads them here before each scan (a stat when nothing changed)."""
        try:
            if self.path.stat().st_size <= self._read:
                return
        except FileNotFoundError:
            return
        with open(self.path, "rb") as f:
            f.seek(self._read)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is taken next time
        for line in data[:end].splitlines():
            if line.strip():
                row = orjson.loads(line)
                self.owners[(row["chain"], row["address"])] = row["account"]
        self._read += end

    def issue(self, chain: str, account: str) -> str:
        """The account's address on ``chain`` by the chain kind's derivation, recorded."""
        address = self.derive(chain, account)
        self.record(chain, address, account)
        return address

    def derive(self, chain: str, account: str) -> str:
        """The account's address on ``chain`` by its kind's derivation (a chain not in
        ``kinds`` is a simulated one)."""
        return DERIVATIONS[self.kinds.get(chain, "sim")](self.seed, chain, account)

    def record(self, chain: str, address: str, account: str) -> None:
        if (chain, address) in self.owners:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(orjson.dumps({"chain": chain, "address": address, "account": account}) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.owners[(chain, address)] = account

    def owner(self, chain: str, address: str) -> str | None:
        return self.owners.get((chain, address))
