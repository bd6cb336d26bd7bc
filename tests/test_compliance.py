"""Compliance: KYC profiles, tier limits, product and market rules, enforced in pre-trade
from their sequence number, readable with their sources, and replayed by validators."""

from __future__ import annotations

import msgspec
import pytest

from conftest import ADMIN, ASK, BID, order, leaves, older_permissions_rule
from satchel.actors import compliance
from satchel.core.engine import Engine
from satchel.core.messages import (
    LEND, BorrowLend, ComplianceChanged, OrderDone, PermissionsOf, PlaceOrder, SetLeverage, SetProfile, SetRule,
    SetIndex, SetTierLimits, StateHashOf, TxRejected, Withdraw, block_decoder,
)
from satchel.ledger.journal import read_records
from satchel.signing import Keypair
from satchel.tools.client import ReplyError, connect
from satchel.verify.validator import Divergence, Validator

USDC = 10**6
SOL = 10**9
PERP = "SOL_USDC_PERP"


def reasons(events: list) -> list[str]:
    return [e.reason for e in events if isinstance(e, OrderDone)]


def codes(events: list) -> list[str]:
    return [e.code for e in events if isinstance(e, TxRejected)]


async def funded(ex) -> None:
    for who in ("alice", "bob", "carol"):
        await ex.deposit(who, "USDC", 100_000 * USDC)
        await ex.deposit(who, "SOL", 1_000 * SOL)


async def permissions(ex, account: str) -> dict:
    return await ex.engine.risk.call(PermissionsOf(account))


async def test_product_rules_take_effect_at_their_sequence_number_account_first(ex):
    await funded(ex)
    ev = await ex.block([SetProfile(ADMIN, "alice", 1, "XX", ("vip",)), SetProfile(ADMIN, "bob", 1, "YY", ())])
    assert [e.what for e in ev if isinstance(e, ComplianceChanged)] == ["profile", "profile"]
    # in one block: alice's spot bid before the rule rests, the one after it is refused
    ev = await ex.block([order("alice", BID, 14_000, 100), SetRule(ADMIN, "jurisdiction", "XX", "spot", False),
                         order("alice", BID, 14_000, 100), order("bob", BID, 14_000, 100)])
    assert reasons(ev) == ["ProductRestricted"]
    # the account's own rule comes before its jurisdiction's
    ev = await ex.block([SetRule(ADMIN, "account", "alice", "spot", True), order("alice", BID, 14_000, 100)])
    assert reasons(ev) == []
    # a platform-wide rule applies to every jurisdiction without its own rule (and to no jurisdiction)
    ev = await ex.block([SetRule(ADMIN, "jurisdiction", "*", "spot", False), order("bob", BID, 14_000, 100),
                         order("carol", BID, 14_000, 100), order("alice", BID, 14_000, 100)])
    assert reasons(ev) == ["ProductRestricted", "ProductRestricted"]
    ev = await ex.block([SetRule(ADMIN, "jurisdiction", "YY", "spot", True), order("bob", BID, 14_000, 100)])
    assert reasons(ev) == []
    view = await permissions(ex, "bob")
    assert view["products"]["spot"] == {"allowed": True, "source": "jurisdiction:YY", "seq": ex.seq - 2}
    assert view["products"]["perps"] == {"allowed": True, "source": "default", "seq": 0}
    assert (await permissions(ex, "carol"))["products"]["spot"]["source"] == "jurisdiction:*"
    assert (await permissions(ex, "alice"))["products"]["spot"]["source"] == "account"
    profile = (await permissions(ex, "alice"))["profile"]
    assert profile == {"kycTier": 1, "jurisdiction": "XX", "tags": ["vip"], "seq": view["profile"]["seq"] - 1}
    # inherit removes a rule: carol falls back to the default
    ev = await ex.block([SetRule(ADMIN, "jurisdiction", "*", "spot", None), order("carol", BID, 14_000, 100)])
    assert reasons(ev) == []


async def test_perps_restricted_leave_reduce_only_and_cancels(ex):
    await funded(ex)
    await ex.block([SetIndex(ADMIN, PERP, 15_000)])  # perps trade once their index is known
    await ex.block([order("bob", ASK, 15_000, 100, symbol=PERP), order("alice", BID, 15_000, 100, symbol=PERP)])
    resting = ex.seq
    await ex.block([order("alice", BID, 14_000, 100, symbol=PERP)])
    ev = await ex.block([SetRule(ADMIN, "account", "alice", "perps", False), order("alice", BID, 14_000, 100, symbol=PERP),
                         order("alice", ASK, 16_000, 100, symbol=PERP, reduce_only=True)])
    assert reasons(ev) == ["ProductRestricted"]  # the reduce-only ask rests: a restriction never traps a position
    from conftest import cancel

    ev = await ex.block([cancel("alice", resting, symbol=PERP)])
    assert [e.status for e in ev if isinstance(e, OrderDone)] and not codes(ev)


async def test_region_restriction_on_one_market(ex):
    await funded(ex)
    await ex.block([SetProfile(ADMIN, "alice", 0, "XX", ()), SetRule(ADMIN, "jurisdiction", "XX", "market:SOL_USDC", False)])
    ev = await ex.block([order("alice", BID, 14_000, 100), order("alice", BID, 300_000, 100, symbol="ETH_USDC"),
                         order("bob", BID, 14_000, 100)])
    assert reasons(ev) == ["RegionRestricted"]
    view = await permissions(ex, "alice")
    assert view["markets"]["SOL_USDC"]["allowed"] is False and view["markets"]["SOL_USDC"]["source"] == "jurisdiction:XX"
    assert view["markets"]["ETH_USDC"]["allowed"] is True
    # an unknown market is refused and changes nothing
    ev = await ex.block([SetRule(ADMIN, "jurisdiction", "XX", "market:DOGE_USDC", False)])
    assert codes(ev) == ["INVALID_SYMBOL"]
    assert "DOGE_USDC" not in (await permissions(ex, "alice"))["markets"]


async def test_tier_order_notional_limit(ex):
    await funded(ex)
    await ex.block([SetProfile(ADMIN, "alice", 1, "", ()), SetTierLimits(ADMIN, 1, -1, (("USDC", 1_000 * USDC),))])
    ev = await ex.block([
        order("alice", BID, 10_000, 1_000),  # 100 x 10 = 1,000 USDC: at the limit
        order("alice", BID, 10_000, 1_001),  # 1,001 USDC
        order("alice", BID, 0, 0, quote_qty=1_001 * USDC),  # a market order by quote
        order("alice", BID, 0, 10),  # a spot market order by quantity: no price to value it at
        order("bob", BID, 10_000, 2_000),  # tier 0 has no limit
    ])
    assert reasons(ev) == ["OrderNotionalLimit"] * 3
    assert (await permissions(ex, "alice"))["limits"]["maxOrderNotional"] == {"USDC": 1_000 * USDC}


async def test_lending_and_margin_products(ex):
    await funded(ex)
    await ex.block([SetRule(ADMIN, "account", "alice", "lending", False), SetRule(ADMIN, "account", "bob", "margin", False)])
    ev = await ex.block([BorrowLend("alice", "USDC", LEND, 10 * USDC), SetLeverage("alice", 0, auto_lend=1),
                         BorrowLend("bob", "USDC", LEND, 10 * USDC)])
    assert codes(ev) == ["PRODUCT_RESTRICTED", "PRODUCT_RESTRICTED"]
    from satchel.core.messages import AUTO_BORROW

    tx = msgspec.structs.replace(order("bob", BID, 14_000, 100), auto=AUTO_BORROW)
    ev = await ex.block([tx])
    assert reasons(ev) == ["ProductRestricted"]


async def test_a_lending_ban_stops_the_default_auto_lend_too(ex):
    """An account denied lending before its first deposit was still made a lender by the
    auto-lend sweep (on by default): 50,000 USDC lent within 4 s (an outside test)."""
    from satchel.core.messages import Deposit, LendingOf

    await ex.block([SetRule(ADMIN, "account", "dora", "lending", False)])
    await ex.block([Deposit(ADMIN, "dora", "USDC", 50_000 * USDC), Deposit(ADMIN, "erin", "USDC", 50_000 * USDC)])
    for _ in range(3):  # idle a whole sweep interval: the sweep lends erin's, never dora's
        ex.ts += 10**6
        await ex.block([])
    lent = {a: sum(p.lent for p in await ex.engine.risk.call(LendingOf(a))) for a in ("dora", "erin")}
    assert lent["dora"] == 0 and lent["erin"] > 0
    assert await ex.balance("dora", "USDC") == (50_000 * USDC, 0)


async def test_withdrawals_per_day_and_withdrawals_product(ex):
    await funded(ex)
    day = compliance.DAY_US
    ex.ts = (ex.ts // day + 1) * day  # the start of a UTC day
    await ex.block([SetProfile(ADMIN, "alice", 2, "", ()), SetTierLimits(ADMIN, 2, 2, ())])
    ev = await ex.block([Withdraw("alice", "sim", "USDC", 10 * USDC, "0xabc", None) for _ in range(3)])
    assert codes(ev) == ["TIER_LIMIT"]
    assert (await permissions(ex, "alice"))["withdrawals"] == {"day": ex.ts // day, "count": 2}
    ex.ts += day  # the next UTC day
    ev = await ex.block([Withdraw("alice", "sim", "USDC", 10 * USDC, "0xabc", None)])
    assert codes(ev) == []
    ev = await ex.block([SetRule(ADMIN, "account", "alice", "withdrawals", False),
                         Withdraw("alice", "sim", "USDC", 10 * USDC, "0xabc", None)])
    assert codes(ev) == ["PRODUCT_RESTRICTED"]


async def test_compliance_state_is_hashed_and_restored(ex, nursery):
    await funded(ex)
    await ex.block([SetProfile(ADMIN, "alice", 3, "XX", ("a", "b")), SetTierLimits(ADMIN, 3, 5, (("USDC", 7),)),
                    SetRule(ADMIN, "jurisdiction", "XX", "perps", False), SetRule(ADMIN, "account", "bob", "market:SOL_USDC", True)])
    await ex.block([Withdraw("alice", "sim", "USDC", 10 * USDC, "0xabc", None)])
    before = await ex.engine.state_hash()
    fresh = Engine(nursery)
    await fresh.restore(await ex.engine.canonical())
    assert await fresh.state_hash() == before
    assert await fresh.risk.call(PermissionsOf("alice")) == await permissions(ex, "alice")
    # and the rules are in the hash: a change moves it
    await ex.block([SetRule(ADMIN, "account", "bob", "market:SOL_USDC", None)])
    assert await ex.engine.state_hash() != before


# ---------------------------------------------------------------- through the gateway


async def test_admin_requests_and_the_permissions_query(server):
    alice = Keypair.generate()
    await server.fund(alice, USDC=10_000 * USDC)
    async with connect(server.url, server.node.admin) as admin, connect(server.url, alice) as a:
        await admin.request("adminSetProfile", {"account": alice.api_key, "kycTier": "1", "jurisdiction": "XX",
                                                "tags": "community-a,vip"})
        await admin.request("adminSetTierLimits", {"tier": "1", "withdrawalsPerDay": "3", "maxOrderNotional": "USDC:500"})
        await admin.request("adminSetPermission", {"jurisdiction": "XX", "product": "perps", "allowed": "false"})
        await admin.request("adminSetPermission", {"jurisdiction": "XX", "symbol": "ETH_USDC", "allowed": "false"})
        view = await a.request("accountPermissionsQuery", {})
        assert view["profile"]["tags"] == ["community-a", "vip"] and view["profile"]["jurisdiction"] == "XX"
        assert view["products"]["perps"]["allowed"] is False and view["products"]["perps"]["source"] == "jurisdiction:XX"
        assert view["markets"]["ETH_USDC"]["allowed"] is False and view["markets"]["SOL_USDC"]["allowed"] is True
        assert view["limits"] == {"tier": 1, "seq": view["limits"]["seq"], "withdrawalsPerDay": 3,
                                  "maxOrderNotional": {"USDC": "500"}}
        assert (await admin.request("accountPermissionsQuery", {"account": alice.api_key})) == view
        assert view["withdrawals"] is None
        r = await a.request("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "100",
                                             "quantity": "6"})
        assert (r["status"], r["reason"]) == ("Rejected", "OrderNotionalLimit")
        r = await a.request("orderExecute", {"symbol": "ETH_USDC", "side": "Bid", "orderType": "Limit", "price": "100",
                                             "quantity": "1"})
        assert (r["status"], r["reason"]) == ("Rejected", "RegionRestricted")
        r = await a.request("orderExecute", {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "100",
                                             "quantity": "5"})
        assert r["status"] == "New"
        await a.request("withdraw", {"blockchain": "sim", "symbol": "USDC", "quantity": "1", "address": "addr-1"})
        day = (await a.request("accountPermissionsQuery", {}))["withdrawals"]
        assert day["count"] == 1 and len(day["day"]) == 10 and day["day"][4] == "-"  # the UTC date of sequenced time
        # bad input: a clear error and nothing changed
        before = await server.node.ask("engine", StateHashOf())
        for params, code in [
            ({"jurisdiction": "XX", "account": alice.api_key, "product": "spot", "allowed": "false"}, "INVALID_CLIENT_REQUEST"),
            ({"jurisdiction": "XX", "allowed": "false"}, "INVALID_CLIENT_REQUEST"),
            ({"jurisdiction": "XX", "product": "futures", "allowed": "false"}, "INVALID_CLIENT_REQUEST"),
            ({"jurisdiction": "XX", "symbol": "DOGE_USDC", "allowed": "false"}, "INVALID_SYMBOL"),
            ({"jurisdiction": "X X", "product": "spot", "allowed": "false"}, "INVALID_CLIENT_REQUEST"),
            ({"jurisdiction": "XX", "product": "spot", "allowed": "maybe"}, "INVALID_CLIENT_REQUEST"),
        ]:
            with pytest.raises(ReplyError) as err:
                await admin.request("adminSetPermission", params)
            assert err.value.code == code, params
        for method, params in [("adminSetProfile", {"account": "alice", "kycTier": "1"}),
                               ("adminSetProfile", {"account": alice.api_key, "kycTier": "256"}),
                               ("adminSetTierLimits", {"tier": "1", "maxOrderNotional": "USDC:-5"}),
                               ("adminSetTierLimits", {"tier": "1", "maxOrderNotional": "DOGE:5"})]:
            with pytest.raises(ReplyError):
                await admin.request(method, params)
        # only the admin key may change compliance, or read another account's permissions
        with pytest.raises(ReplyError) as err:
            await a.request("adminSetPermission", {"account": alice.api_key, "product": "perps", "allowed": "true"})
        assert err.value.code == "UNAUTHORIZED"
        with pytest.raises(ReplyError) as err:
            await a.request("accountPermissionsQuery", {"account": server.node.admin.api_key})
        assert err.value.code == "UNAUTHORIZED"
        assert await server.node.ask("engine", StateHashOf()) == before


# ---------------------------------------------------------------- the article's incident, with these rules


async def test_a_validator_on_the_older_permissions_rule_stops_at_the_first_block_it_applies_differently(
        server, tmp_path, monkeypatch):
    """A spot-market permission change (the article's incident began as one): jurisdiction
    XX loses SOL_USDC, dana (in XX) keeps it by an account exemption. A validator running
    the older rule (jurisdiction before account) agrees on every block until dana's first
    SOL_USDC order, and stops there."""
    dana, erin, seller = Keypair.generate(), Keypair.generate(), Keypair.generate()
    await server.fund(dana, USDC=10_000 * USDC)
    await server.fund(erin, USDC=10_000 * USDC)
    await server.fund(seller, SOL=1_000 * SOL)
    bid = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150", "quantity": "1"}
    async with connect(server.url, server.node.admin) as admin, connect(server.url, dana) as d, \
            connect(server.url, erin) as e, connect(server.url, seller) as s:
        for key in (dana, erin):
            await admin.request("adminSetProfile", {"account": key.api_key, "kycTier": "1", "jurisdiction": "XX"})
        await admin.request("adminSetPermission", {"jurisdiction": "XX", "symbol": "SOL_USDC", "allowed": "false"})
        await admin.request("adminSetPermission", {"account": dana.api_key, "symbol": "SOL_USDC", "allowed": "true"})
        for _ in range(5):  # blocks both rules apply alike
            await s.request("orderExecute", {**bid, "side": "Ask", "price": "150"})
            assert (await e.request("orderExecute", bid))["reason"] == "RegionRestricted"
            await d.request("orderExecute", {**bid, "symbol": "ETH_USDC", "price": "100"})
        assert (await d.request("orderExecute", bid))["status"] == "Filled"  # the exemption holds
    journal = server.node.data / "journal"
    first = next(
        b.header.height for b in map(block_decoder.decode, read_records(journal))
        if any(isinstance(tx, PlaceOrder) and tx.account == dana.api_key and tx.symbol == "SOL_USDC" for tx in b.txs))
    # the validator on today's rule agrees with every block
    assert await Validator(tmp_path / "v-today", verify_processes=-1).check_journal(journal) >= first
    monkeypatch.setattr(compliance, "decide", older_permissions_rule)
    with pytest.raises(BaseExceptionGroup) as group:
        await Validator(tmp_path / "v-older", verify_processes=-1).check_journal(journal)
    (stop,) = [x for x in leaves(group.value) if isinstance(x, Divergence)]
    assert stop.report["height"] == first and stop.report["kind"] == "events"
