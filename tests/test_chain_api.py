"""Deposits and withdrawals at the edges, on a live node: deposit addresses, the deposit
and withdrawal histories, ``withdraw`` over REST and WebSocket, refusals, the
``chainStatus`` stream and ``chainStatusQuery`` (``GET /api/v1/chains``, ``satchel
status``). The chain adapter is not running here: the tests sign its reports with the
chain's adapter key (``node.chain_keys``) and submit them as it would."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import ccxt
import httpx
import msgspec
import orjson
import pytest
import trio

from conftest import LISTING
from satchel.api.chains import Addresses
from satchel.api.format import Formatter
from satchel.chains.addresses import sim_address
from satchel.core.errors import RequestError
from satchel.core.messages import (
    ApproveSweep, BlockHeader, ChainCredited, ChainDeposit, ChainStatus, Deposited, ReportedDeposit, TxRejected,
    WithdrawalConfirmed, WithdrawalFailed, WithdrawalSent, WithdrawalUpdate,
)
from satchel.history import queries, views
from satchel.ledger.chain import decode_block
from satchel.ledger.journal import read_records
from satchel.history.schema import open_db
from satchel.history.writes import Batch
from satchel.rest import serve
from satchel.signing import Keypair, auth_for, sign_request
from satchel.tools.client import ReplyError, connect

USDC = 10**6
CHAIN = "sim"


@pytest.fixture
async def rest(nursery, server):
    return await nursery.start(serve, server.gateway, "127.0.0.1", 0)


def headers(key: Keypair, instruction: str, params: dict | None = None) -> dict:
    _, (api_key, sig, ts, window) = sign_request(key, instruction, params or {})
    return {"X-API-Key": api_key, "X-Signature": sig, "X-Timestamp": ts, "X-Window": window}


class Account:
    """One account's signed REST calls."""

    def __init__(self, http: httpx.AsyncClient, key: Keypair):
        self.http = http
        self.key = key

    async def get(self, path: str, instruction: str, **params: str) -> httpx.Response:
        return await self.http.get(path, params=params, headers=headers(self.key, instruction, params))

    async def ok(self, path: str, instruction: str, **params: str):
        r = await self.get(path, instruction, **params)
        assert r.status_code == 200, r.text
        return r.json()

    async def withdraw(self, quantity: str, **extra) -> httpx.Response:
        body = {"address": "sim1destination", "blockchain": CHAIN, "quantity": quantity, "symbol": "USDC", **extra}
        return await self.http.post("/wapi/v1/capital/withdrawals", json=body,
                                    headers=headers(self.key, "withdraw", body))

    async def address(self, chain: str = CHAIN) -> str:
        return (await self.ok("/wapi/v1/capital/deposit/address", "depositAddressQuery", blockchain=chain))["address"]

    async def deposits(self, **params: str) -> list[dict]:
        return await self.ok("/wapi/v1/capital/deposits", "depositQueryAll", **params)

    async def withdrawals(self, **params: str) -> list[dict]:
        return await self.ok("/wapi/v1/capital/withdrawals", "withdrawalQueryAll", **params)

    async def usdc(self) -> dict:
        return (await self.ok("/api/v1/capital", "balanceQuery")).get("USDC")


class Adapter:
    """The simulated chain's adapter reports, signed with its key."""

    def __init__(self, server):
        self.node = server.node
        self.key = server.node.chain_keys[CHAIN]

    async def submit(self, instruction: str, params: dict, tx) -> list:
        return await self.node.submit_wait(msgspec.structs.replace(tx, auth=auth_for(self.key, instruction, params)))

    async def deposit(self, account: Keypair, quantity: str, tx_hash: str, log_index: int = 0) -> list:
        params = {"chain": CHAIN, "txHash": tx_hash, "logIndex": str(log_index), "account": account.api_key,
                  "symbol": "USDC", "quantity": quantity}
        units = int(float(quantity) * USDC)
        return await self.submit("depositConfirmed", params, ChainDeposit(
            self.key.api_key, CHAIN, (ReportedDeposit(tx_hash, log_index, account.api_key, "USDC", units),)))

    async def sent(self, wid: int, tx_hash: str) -> list:
        return await self.submit("withdrawalSent", {"chain": CHAIN, "withdrawalId": str(wid), "txHash": tx_hash},
                                 WithdrawalSent(self.key.api_key, CHAIN, wid, tx_hash))

    async def confirmed(self, wid: int) -> list:
        return await self.submit("withdrawalConfirmed", {"chain": CHAIN, "withdrawalId": str(wid)},
                                 WithdrawalConfirmed(self.key.api_key, CHAIN, wid))

    async def failed(self, wid: int, reason: str) -> list:
        return await self.submit("withdrawalFailed", {"chain": CHAIN, "withdrawalId": str(wid), "reason": reason},
                                 WithdrawalFailed(self.key.api_key, CHAIN, wid, reason))

    async def pause(self, paused: bool, reason: str, key: Keypair | None = None) -> list:
        key = key or self.key
        params = {"chain": CHAIN, "paused": "true" if paused else "false", "reason": reason}
        return await self.node.submit_wait(ChainStatus(key.api_key, CHAIN, paused, reason,
                                                       auth_for(key, "chainStatus", params)))


def rejected(events: list) -> list[str]:
    return [e.code for e in events if e.__class__ is TxRejected]


async def test_deposit_addresses(rest, server):
    """One address per account and chain: the same on every request (REST or WebSocket),
    derived from the account key and the custody seed, recorded for the adapter; another
    account's differs."""
    alice, bob = Keypair.generate(), Keypair.generate()
    async with httpx.AsyncClient(base_url=rest) as http:
        a, b = Account(http, alice), Account(http, bob)
        first = await a.address()
        assert await a.address() == first == sim_address(server.node.custody_seed, CHAIN, alice.api_key)
        assert first.startswith("sim1") and server.node.addresses.owner(CHAIN, first) == alice.api_key
        other = await b.address()
        assert other != first and server.node.addresses.owner(CHAIN, other) == bob.api_key
        async with connect(server.url, alice) as c:
            assert await c.request("depositAddressQuery", {"blockchain": CHAIN}) == {"address": first}
            # Backpack's clients capitalise chain names ("Solana"): a listed chain's name in any case
            assert await c.request("depositAddressQuery", {"blockchain": CHAIN.upper()}) == {"address": first}
        r = await a.get("/wapi/v1/capital/deposit/address", "depositAddressQuery", blockchain="Ethereum")
        assert (r.status_code, r.json()["code"]) == (400, "INVALID_CHAIN")
        r = await a.get("/wapi/v1/capital/deposit/address", "depositAddressQuery")
        assert (r.status_code, r.json()["code"]) == (400, "INVALID_CLIENT_REQUEST")  # blockchain is required
        r = await http.get("/wapi/v1/capital/deposit/address", params={"blockchain": CHAIN})
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")


def test_deposit_addresses_by_chain_kind():
    """A simulated chain's address is the derived bytes, an EVM chain's the address of the
    deposit wallet the derived bytes are the key of; a chain of another kind, or not
    listed, hands out none (INVALID_CHAIN)."""
    from satchel.chains.evm.transactions import deposit_wallet

    chains = {"sim": SimpleNamespace(kind="sim"), "eth": SimpleNamespace(kind="evm"), "btc": SimpleNamespace(kind="utxo")}
    node = SimpleNamespace(cfg=SimpleNamespace(chains=chains), custody_seed=b"s" * 32)
    addresses = Addresses(node)
    addresses.require("sim", chains)
    addresses.require("eth", chains)
    assert addresses.derive("sim", "k") == sim_address(b"s" * 32, "sim", "k")
    assert addresses.derive("eth", "k") == deposit_wallet(b"s" * 32, "eth", "k").address
    assert addresses.derive("eth", "k").startswith("0x") and addresses.derive("btc", "k") is None
    for chain, listed in (("btc", chains), ("nope", chains), ("other", {"other": None})):
        with pytest.raises(RequestError) as refused:
            addresses.require(chain, listed)
        assert refused.value.code == "INVALID_CHAIN"
    with pytest.raises(RequestError, match="not supported yet"):
        addresses.issue("btc", "k")


async def test_deposit_then_withdrawal_sent_confirmed_and_failed(rest, server):
    alice = Keypair.generate()
    adapter = Adapter(server)
    async with httpx.AsyncClient(base_url=rest) as http:
        a = Account(http, alice)
        r = await a.http.patch("/api/v1/account", json={"autoLend": False},
                               headers=headers(alice, "accountUpdate", {"autoLend": False}))
        assert r.status_code == 200, r.text
        address = await a.address()

        # a deposit reported by the adapter: credited once, in the balance and the history
        assert rejected(await adapter.deposit(alice, "1000", "0xdead", 2)) == []
        assert rejected(await adapter.deposit(alice, "1000", "0xdead", 2)) == ["ALREADY_CREDITED"]
        assert await a.usdc() == {"available": "1000", "locked": "0", "staked": "0"}
        await server.fund(alice, USDC=5 * USDC)  # the admin faucet: Backpack's "administrator" source
        faucet, chain = await a.deposits()
        assert set(chain) == {"id", "symbol", "quantity", "source", "status", "fromAddress", "toAddress",
                              "transactionHash", "createdAt"}
        assert {k: chain[k] for k in ("symbol", "quantity", "source", "status", "fromAddress", "toAddress",
                                      "transactionHash")} == {
            "symbol": "USDC", "quantity": "1000", "source": CHAIN, "status": "confirmed", "fromAddress": None,
            "toAddress": address, "transactionHash": "0xdead"}
        assert isinstance(chain["id"], int) and time.strptime(chain["createdAt"][:19], "%Y-%m-%dT%H:%M:%S")
        assert (faucet["source"], faucet["quantity"], faucet["toAddress"], faucet["transactionHash"]) == (
            "administrator", "5", None, None)
        assert faucet["id"] > chain["id"]
        assert [d["source"] for d in await a.deposits(excludePlatform="true")] == [CHAIN]
        assert [d["source"] for d in await a.deposits(limit="1", offset="1")] == [CHAIN]
        now = int(time.time() * 1000)
        assert await a.deposits(**{"from": str(now + 60_000)}) == []

        # a withdrawal: pending at once (the hot wallet's books cover it), the amount held
        r = await a.withdraw("100", clientId=7, twoFactorToken="123456", autoLendRedeem=True)
        assert r.status_code == 200, r.text
        w = r.json()
        assert {k: w[k] for k in ("blockchain", "clientId", "quantity", "fee", "symbol", "status", "toAddress",
                                  "transactionHash", "isInternal", "state", "reason")} == {
            "blockchain": CHAIN, "clientId": "7", "quantity": "100", "fee": "0", "symbol": "USDC", "status": "pending",
            "toAddress": "sim1destination", "transactionHash": None, "isInternal": False, "state": "pending",
            "reason": None}
        wid = w["id"]
        assert isinstance(wid, int) and time.strptime(w["createdAt"][:19], "%Y-%m-%dT%H:%M:%S")
        assert await a.usdc() == {"available": "905", "locked": "100", "staked": "0"}
        [listed] = await a.withdrawals()
        assert listed == w

        # the adapter sends it, then it is confirmed: debited, the history shows the hash
        assert rejected(await adapter.sent(wid, "0xbeef")) == []
        [sent] = await a.withdrawals()
        assert (sent["status"], sent["state"], sent["transactionHash"]) == ("pending", "sent", "0xbeef")
        assert rejected(await adapter.confirmed(wid)) == []
        [done] = await a.withdrawals()
        assert (done["status"], done["state"], done["transactionHash"], done["createdAt"]) == (
            "confirmed", "confirmed", "0xbeef", w["createdAt"])
        assert await a.usdc() == {"available": "905", "locked": "0", "staked": "0"}
        assert rejected(await adapter.confirmed(wid)) == ["INVALID_WITHDRAWAL"]  # reported twice: nothing changes
        async with connect(server.url, alice) as c:
            ledger = await c.request("ledgerTotals", sign=False)
        assert ledger["USDC"]["withdrawals"] == "100"

        # one that fails on chain: released
        async with connect(server.url, alice) as c:
            w2 = await c.request("withdraw", {"address": "sim1other", "blockchain": CHAIN.capitalize(), "quantity": "50",
                                              "symbol": "USDC"})
            assert (w2["status"], w2["state"], w2["clientId"], w2["blockchain"]) == ("pending", "pending", None, CHAIN)
            assert await a.usdc() == {"available": "855", "locked": "50", "staked": "0"}
            assert rejected(await adapter.failed(w2["id"], "reverted")) == []
            assert await a.usdc() == {"available": "905", "locked": "0", "staked": "0"}
            failed, confirmed = await c.request("withdrawalQueryAll")
        assert (failed["id"], failed["status"], failed["state"], failed["reason"]) == (w2["id"], "void", "failed",
                                                                                      "reverted")
        assert confirmed == done

        # filters
        assert [x["id"] for x in await a.withdrawals(id=str(wid))] == [wid]
        assert [x["id"] for x in await a.withdrawals(clientId="7")] == [wid]
        assert await a.withdrawals(clientId="8") == []
        assert [x["id"] for x in await a.withdrawals(limit="1")] == [w2["id"]]
        assert await a.withdrawals(**{"from": str(now + 60_000)}) == []
        assert len(await a.withdrawals(**{"from": str(now - 60_000), "to": str(now + 60_000)})) == 2
        for bad in ({"id": "x"}, {"clientId": "-1"}, {"limit": "1001"}):
            r = await a.get("/wapi/v1/capital/withdrawals", "withdrawalQueryAll", **bad)
            assert r.status_code == 400, (bad, r.text)
        other = Account(http, Keypair.generate())
        assert await other.withdrawals() == [] and await other.deposits() == []


async def test_refused_withdrawals_change_nothing(rest, server):
    bob = Keypair.generate()
    adapter = Adapter(server)
    async with httpx.AsyncClient(base_url=rest) as http:
        b = Account(http, bob)
        assert rejected(await adapter.deposit(bob, "10", "0xfeed")) == []
        before = await b.usdc()

        async def refused(code: str, quantity: str = "1", **extra) -> None:
            r = await b.withdraw(quantity, **extra)
            assert (r.status_code, r.json()["code"]) == (400, code), r.text
            assert await b.usdc() == before and await b.withdrawals() == []

        await refused("INSUFFICIENT_FUNDS", "1000000")
        await refused("INVALID_CHAIN", blockchain="Solana")
        await refused("INVALID_ASSET", symbol="NOPE")
        await refused("INVALID_CLIENT_REQUEST", address="")
        await refused("INVALID_CLIENT_REQUEST", address="x" * 200)
        await refused("INVALID_QUANTITY", "0")
        r = await http.post("/wapi/v1/capital/withdrawals", json={"address": "a", "blockchain": CHAIN,
                                                                   "quantity": "1", "symbol": "USDC"})
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")

        # the adapter's circuit breaker pauses the chain: withdrawals are refused, funds stay put
        assert rejected(await adapter.pause(True, "every provider failing")) == []
        await refused("CHAIN_PAUSED", "5")
        async with connect(server.url, bob) as c:
            with pytest.raises(ReplyError) as ws_refused:
                await c.request("withdraw", {"address": "a", "blockchain": CHAIN, "quantity": "5", "symbol": "USDC"})
        assert ws_refused.value.code == "CHAIN_PAUSED"
        assert rejected(await adapter.deposit(bob, "1", "0xlate")) == ["CHAIN_PAUSED"]  # deposits wait too
        assert await b.usdc() == before

        # the admin resumes it: the same request goes through
        assert rejected(await adapter.pause(False, "providers back", key=server.node.admin)) == []
        r = await b.withdraw("5")
        assert (r.status_code, r.json()["state"]) == (200, "pending"), r.text


async def test_chain_status_stream_query_and_custody_books(rest, server):
    carol = Keypair.generate()
    adapter = Adapter(server)
    admin = server.node.admin
    async with httpx.AsyncClient(base_url=rest) as http, connect(server.url, carol) as c:
        await c.subscribe(["chainStatus"])
        first = (await c.next_frame("chainStatus"))["data"]
        assert {k: first[k] for k in ("e", "chain", "paused", "reason", "signer", "by")} == {
            "e": "chainStatus", "chain": CHAIN, "paused": False, "reason": "", "signer": None, "by": None}
        assert isinstance(first["E"], int) and isinstance(first["T"], int)

        [sim] = await c.request("chainStatusQuery", sign=False)
        assert {k: sim[k] for k in ("chain", "kind", "assets", "confirmations", "paused", "reason",
                                    "queuedWithdrawals", "depositsCredited")} == {
            "chain": CHAIN, "kind": "sim", "assets": ["USDC", "BTC", "ETH", "SOL"], "confirmations": 3,
            "paused": False, "reason": "", "queuedWithdrawals": 0, "depositsCredited": 0}
        books = {b["symbol"]: b for b in sim["custody"]}
        assert books["USDC"] == {"symbol": "USDC", "hot": "0", "cold": "0", "reserved": "0", "hotLimit": "1000000"}
        assert (await http.get("/api/v1/chains")).json() == [sim]
        tokens = {a["symbol"]: a["tokens"] for a in (await http.get("/api/v1/assets")).json()}
        assert [(t["blockchain"], t["withdrawEnabled"], t["withdrawalFee"]) for t in tokens["USDC"]] == [
            (CHAIN, True, "0")]

        # paused by the adapter, resumed by the admin: a frame each, and the query follows
        await adapter.pause(True, "every provider failing")
        paused = (await c.next_frame("chainStatus"))["data"]
        assert (paused["paused"], paused["reason"], paused["by"], paused["signer"]) == (
            True, "every provider failing", "adapter", adapter.key.api_key)
        [sim] = (await http.get("/api/v1/chains")).json()
        assert (sim["paused"], sim["reason"]) == (True, "every provider failing")
        tokens = {a["symbol"]: a["tokens"] for a in (await http.get("/api/v1/assets")).json()}
        assert (tokens["SOL"][0]["depositEnabled"], tokens["SOL"][0]["withdrawEnabled"]) == (False, False)
        async with connect(server.url) as late:  # a new subscriber gets the status now
            await late.subscribe(["chainStatus"])
            now = (await late.next_frame("chainStatus"))["data"]
            assert (now["paused"], now["reason"], now["by"]) == (True, "every provider failing", "adapter")
        await adapter.pause(False, "back", key=admin)
        resumed = (await c.next_frame("chainStatus"))["data"]
        assert (resumed["paused"], resumed["by"]) == (False, "admin")

        # deposits past the hot wallet's limit go to cold storage; a withdrawal larger than the
        # hot wallet queues until the admin approves a sweep
        assert rejected(await adapter.deposit(carol, "1500000", "0xbig")) == []
        [sim] = (await http.get("/api/v1/chains")).json()
        books = {b["symbol"]: b for b in sim["custody"]}
        assert (books["USDC"]["hot"], books["USDC"]["cold"], sim["depositsCredited"]) == ("1000000", "500000", 1)
        w = await c.request("withdraw", {"address": "sim1far", "blockchain": CHAIN, "quantity": "1200000",
                                         "symbol": "USDC"})
        assert (w["status"], w["state"]) == ("pending", "queued")
        [sim] = await c.request("chainStatusQuery", sign=False)
        assert (sim["queuedWithdrawals"], sim["custody"][0]["reserved"]) == (1, "0")
        params = {"chain": CHAIN, "symbol": "USDC", "quantity": "300000"}
        await server.node.submit_wait(ApproveSweep(admin.api_key, CHAIN, "USDC", 300_000 * USDC,
                                                   auth_for(admin, "approveSweep", params)))
        [sim] = (await http.get("/api/v1/chains")).json()
        assert sim["queuedWithdrawals"] == 0
        assert {k: sim["custody"][0][k] for k in ("hot", "cold", "reserved")} == {
            "hot": "1300000", "cold": "200000", "reserved": "1200000"}
        [listed] = await c.request("withdrawalQueryAll")
        assert (listed["id"], listed["state"]) == (w["id"], "pending")

        # satchel status prints the chains' lines
        out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", "status", "--url", server.url],
                                     capture_stdout=True, capture_stderr=True)
        lines = out.stdout.decode().splitlines()
        assert lines[0] == (f"chain {CHAIN} (sim): running; 3 confirmations, 1 deposits credited, "
                            "0 withdrawals queued"), out.stdout
        assert "  USDC: hot 1300000 (reserved 1200000, limit 1000000), cold 200000" in lines


async def test_ccxt_deposits_withdrawals_and_address(rest, server):
    """An unmodified ccxt client: the chain is a network of every asset (``GET
    /api/v1/assets``), so ``withdraw`` with ``network='sim'``, ``fetch_deposits``,
    ``fetch_withdrawals`` and ``fetch_deposit_address`` parse as against Backpack."""
    dave = Keypair.generate()
    adapter = Adapter(server)
    assert rejected(await adapter.deposit(dave, "250", "0xccxt")) == []

    def scenario() -> tuple:
        x = ccxt.backpack({"apiKey": dave.api_key, "secret": dave.secret})
        x.urls["api"] = {"public": rest, "private": rest}
        x.load_markets()
        sent = x.withdraw("USDC", 20, "sim1ccxt", params={"network": CHAIN})
        return (x.currencies["USDC"]["networks"], sent, x.fetch_withdrawals(), x.fetch_deposits(),
                x.fetch_deposit_address("USDC", params={"network": CHAIN}))

    networks, sent, withdrawals, deposits, address = await trio.to_thread.run_sync(scenario)
    assert list(networks) == [CHAIN] and networks[CHAIN]["withdraw"] is True
    assert (sent["status"], sent["amount"], sent["addressTo"], sent["network"], sent["fee"]["cost"]) == (
        "pending", 20, "sim1ccxt", CHAIN, 0)
    [w] = withdrawals
    assert (w["id"], w["status"], w["currency"]) == (sent["id"], "pending", "USDC")
    [d] = deposits
    assert (d["status"], d["amount"], d["txid"], d["network"], d["addressTo"]) == (
        "ok", 250, "0xccxt", CHAIN, sim_address(server.node.custody_seed, CHAIN, dave.api_key))
    assert address["address"] == d["addressTo"]


def test_history_rows_do_not_depend_on_the_order_blocks_are_written(tmp_path):
    """A withdrawal's row keeps its latest status (by position in the chain) and its first
    block's time, and a chain deposit's two events make one row, whichever blocks a
    catch-up writes after later live ones."""
    t = 1_754_064_000_000_000

    def update(height: int, status: str, tx_hash: str = "") -> WithdrawalUpdate:
        return WithdrawalUpdate(9, 9, "a", CHAIN, "USDC", 7 * USDC, "sim1x", status, tx_hash, "", t + height, 3)

    blocks = [
        (1, [Deposited(5, "a", "USDC", 100 * USDC), ChainCredited(5, CHAIN, "0xd", 1, "a", "USDC", 100 * USDC, t)]),
        (2, [Deposited(6, "a", "USDC", USDC), update(2, "Queued")]),
        (3, [update(3, "Pending")]),
        (4, [update(4, "Sent", "0xw")]),
        (5, [update(5, "Confirmed", "0xw")]),
    ]
    for name, order in (("forward", blocks), ("backward", blocks[::-1]), ("one batch", [None])):
        conn = open_db(tmp_path / f"{name}.sqlite")
        batches = [blocks] if order == [None] else [[b] for b in order]
        for group in batches:
            batch = Batch()
            for height, events in group:
                batch.add(BlockHeader(height, height, t + height, b"", 1, 0, b"", b""), events)
            conn.execute("BEGIN")
            batch.write(conn)
            conn.execute("COMMIT")
        [w] = queries.WithdrawalHistory("a").run(conn)
        assert (w.id, w.status, w.tx_hash, w.created, w.client_id) == (9, "Confirmed", "0xw", t + 2, 3)
        deposits = queries.DepositHistory("a").run(conn)
        assert [(d.id, d.source, d.tx_hash) for d in deposits] == [(6, "administrator", None), (5, CHAIN, "0xd")]
        assert [d.id for d in queries.DepositHistory("a", chains_only=True).run(conn)] == [5]
        conn.close()
    fmt = Formatter(LISTING.markets, LISTING.assets)
    [item] = views.withdrawals(fmt, [w])
    assert (item["status"], item["state"], item["clientId"], item["quantity"]) == ("confirmed", "confirmed", "3", "7")
    items = views.deposits(fmt, deposits, lambda chain, account: f"{chain}:{account}")
    assert [d["toAddress"] for d in items] == [None, f"{CHAIN}:a"]


async def test_chain_control_and_adapter_reports_through_the_gateway(server):
    """An operator pauses and resumes a chain and approves a cold sweep over the API (signed
    by the admin key; anyone else is refused and nothing changes), and an adapter in another
    process reports deposits and withdrawals over the API with its own key."""
    admin, carol = server.node.admin, Keypair.generate()
    key = server.node.chain_keys[CHAIN]
    async with connect(server.url, admin) as a, connect(server.url, carol) as c, connect(server.url, key) as adapter:
        with pytest.raises(ReplyError, match="UNAUTHORIZED"):
            await c.request("chainStatus", {"chain": CHAIN, "paused": "true", "reason": "mine"})
        with pytest.raises(ReplyError, match="UNAUTHORIZED"):
            await c.request("approveSweep", {"chain": CHAIN, "symbol": "USDC", "quantity": "1"})
        [sim] = await c.request("chainStatusQuery", sign=False)
        assert sim["paused"] is False
        for odd in ("line\nbreak", "\u202eesrever", "x" * 257):  # shown by `satchel status` and the stream as sent
            with pytest.raises(ReplyError, match="INVALID_CLIENT_REQUEST"):
                await a.request("chainStatus", {"chain": CHAIN, "paused": "true", "reason": odd})
        assert (await a.request("chainStatus", {"chain": CHAIN, "paused": "true", "reason": "maintenance"}))["paused"] == "true"
        [sim] = await c.request("chainStatusQuery", sign=False)
        assert (sim["paused"], sim["reason"]) == (True, "maintenance")
        with pytest.raises(ReplyError, match="CHAIN_PAUSED"):
            await adapter.request("depositConfirmed", {"chain": CHAIN, "txHash": "0xfeed", "logIndex": "0",
                                                       "account": carol.api_key, "symbol": "USDC", "quantity": "12"})
        await a.request("chainStatus", {"chain": CHAIN, "paused": "false", "reason": "done"})
        report = {"chain": CHAIN, "txHash": "0xfeed", "logIndex": "0", "account": carol.api_key, "symbol": "USDC",
                  "quantity": "12"}
        await adapter.request("depositConfirmed", report)
        with pytest.raises(ReplyError, match="ALREADY_CREDITED"):
            await adapter.request("depositConfirmed", report)
        with pytest.raises(ReplyError, match="ALREADY_CREDITED"):  # one hexadecimal number, whatever its case
            await adapter.request("depositConfirmed", {**report, "txHash": "0xFEED"})
        with pytest.raises(ReplyError, match="UNAUTHORIZED"):  # only the chain's adapter reports its deposits
            await c.request("depositConfirmed", {**report, "txHash": "0xbeef"})
        assert (await c.request("balanceQuery"))["USDC"]["available"] == "12"
        # a block's deposits under one signature, applied as one transaction: what was credited
        # before is skipped (and said so), the rest credited once
        block = [report, {**report, "txHash": "0XB1", "quantity": "1"}, {**report, "txHash": "0xb2", "quantity": "2"}]
        answer = await adapter.request_batch("depositConfirmedBatch", "depositConfirmed", block)
        assert [(d["txHash"], d["credited"]) for d in answer] == [("0xfeed", False), ("0xb1", True), ("0xb2", True)]
        with pytest.raises(ReplyError, match="ALREADY_CREDITED"):
            await adapter.request_batch("depositConfirmedBatch", "depositConfirmed", block)
        with pytest.raises(ReplyError, match="INVALID_DECIMAL: deposit 1"):  # one bad item refuses the report whole
            await adapter.request_batch("depositConfirmedBatch", "depositConfirmed",
                                        [{**report, "txHash": "0xb3"}, {**report, "txHash": "0xb4", "quantity": "x"}])
        with pytest.raises(ReplyError, match="UNAUTHORIZED"):
            await c.request_batch("depositConfirmedBatch", "depositConfirmed", [{**report, "txHash": "0xb5"}])
        assert (await c.request("balanceQuery"))["USDC"]["available"] == "15"
        w = await c.request("withdraw", {"address": "sim1out", "blockchain": CHAIN, "quantity": "5", "symbol": "USDC"})
        await adapter.request("withdrawalSent", {"chain": CHAIN, "withdrawalId": str(w["id"]), "txHash": "0xout"})
        await adapter.request("withdrawalConfirmed", {"chain": CHAIN, "withdrawalId": str(w["id"])})
        assert (await c.request("balanceQuery"))["USDC"] == {"available": "10", "locked": "0", "staked": "0"}
        # cold storage: nothing there to sweep yet
        with pytest.raises(ReplyError) as refused:
            await a.request("approveSweep", {"chain": CHAIN, "symbol": "USDC", "quantity": "1"})
        assert "UNAUTHORIZED" not in str(refused.value)


async def test_odd_but_valid_texts_in_chain_requests_get_an_answer_and_validators_agree(server, tmp_path):
    """Signed chain requests whose free texts hold ``&``, ``=``, ``%`` and unicode get a
    result or an error, never a halt; what was sequenced replays under a validator."""
    node = server.node
    admin, carol = node.admin, Keypair.generate()
    adapter = node.chain_keys[CHAIN]
    odd = ["a&b=c%25d", "k=v&timestamp=1", "%", "ünïcode ✓", "x" * 128]
    async with connect(server.url, admin) as a, connect(server.url, carol) as c, connect(server.url, adapter) as ad:
        await ad.request("depositConfirmed", {"chain": CHAIN, "txHash": "0xa&b=c%", "logIndex": "0",
                                              "account": carol.api_key, "symbol": "USDC", "quantity": "50"})
        answers = []
        for text in odd:
            for method, params, client in (
                ("withdraw", {"address": text, "blockchain": CHAIN, "quantity": "1", "symbol": "USDC"}, c),
                ("chainStatus", {"chain": CHAIN, "paused": "false", "reason": text}, a),
                ("depositConfirmed", {"chain": CHAIN, "txHash": text, "logIndex": "1", "account": carol.api_key,
                                      "symbol": "USDC", "quantity": "1"}, ad),
                ("withdrawalFailed", {"chain": CHAIN, "withdrawalId": "1", "reason": text}, ad),
                ("depositAddressQuery", {"blockchain": text}, c),
                ("withdrawalQueryAll", {"clientId": text}, c),
            ):
                try:
                    answers.append(("result", await client.request(method, params)))
                except ReplyError as exc:
                    answers.append(("error", str(exc)))
        # a whole batch of odd texts in one record, for the validator below to rebuild
        batch = [{"chain": CHAIN, "txHash": text, "logIndex": "2", "account": carol.api_key, "symbol": "USDC",
                  "quantity": "1"} for text in odd if text.isascii()]
        credited = await ad.request_batch("depositConfirmedBatch", "depositConfirmed", batch)
        assert [d["credited"] for d in credited] == [True] * len(batch)
        # journaled once, in the transaction (canonical texts); "1.000" is kept as signed, beside it
        other = [{**item, "logIndex": "3", "quantity": "1.000"} for item in batch]
        credited = await ad.request_batch("depositConfirmedBatch", "depositConfirmed", other)
        assert [d["credited"] for d in credited] == [True] * len(other)
        # a hexadecimal hash in upper case is keyed in lower case; its signed text is kept beside
        upper = [{**batch[0], "txHash": h, "logIndex": "4"} for h in ("0XAB12", "0xcd34")]
        credited = await ad.request_batch("depositConfirmedBatch", "depositConfirmed", upper)
        assert [d["txHash"] for d in credited] == ["0xab12", "0xcd34"]
        assert not any("INTERNAL_ERROR" in str(a) for a in answers)
        assert {kind for kind, _ in answers} == {"result", "error"}
        assert (await c.request("depth", {"symbol": "SOL_USDC"}, sign=False)) is not None  # still serving
    node.shutdown()
    await node.wait_stopped()
    out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", "validator", "--journal",
                                  str(node.data / "journal"), "--data", str(tmp_path / "v")], capture_stdout=True,
                                 capture_stderr=True, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert "blocks=1.." in out.stdout.decode()
    reports = [tx for payload in read_records(node.data / "journal") for tx in decode_block(payload).txs
               if isinstance(tx, ChainDeposit) and len(tx.deposits) > 1]
    assert [(r.auth.batch != (), r.deposits[0].log_index) for r in reports] == [(False, 2), (True, 3), (True, 4)]


async def test_malformed_deposit_batches_are_refused_and_change_nothing(server):
    """``depositConfirmedBatch`` with params that are not a list of deposit objects, an
    empty list, an item missing a field or of another chain, one deposit twice: each gets an error, never
    INTERNAL_ERROR, nothing is credited, and the node keeps serving."""
    key, carol = server.node.chain_keys[CHAIN], Keypair.generate()
    good = {"chain": CHAIN, "txHash": "0xgood", "logIndex": "0", "account": carol.api_key, "symbol": "USDC",
            "quantity": "1"}
    async with connect(server.url, key) as adapter, connect(server.url, carol) as c:
        for params in ({"chain": CHAIN}, "text", 7, [1, 2], [[good]], None):
            _, signature = sign_request(key, "depositConfirmed", {})
            reply = await adapter.exchange(999, orjson.dumps({"id": 999, "method": "depositConfirmedBatch",
                                                               "params": params, "signature": signature}), raw=True)
            assert "error" in reply and reply["error"]["code"] != "INTERNAL_ERROR", (params, reply)
        for items in ([], [{k: v for k, v in good.items() if k != "account"}], [good, {**good, "chain": "other"}],
                      [{**good, "logIndex": "-1"}], [good, {**good, "logIndex": "00", "quantity": "999"}]):
            with pytest.raises(ReplyError) as refused:
                await adapter.request_batch("depositConfirmedBatch", "depositConfirmed", items)
            assert "INTERNAL_ERROR" not in str(refused.value)
        assert (await c.request("balanceQuery")).get("USDC", {}).get("available", "0") == "0"
        assert await adapter.request_batch("depositConfirmedBatch", "depositConfirmed", [good]) == [
            {"txHash": "0xgood", "logIndex": 0, "credited": True}]
