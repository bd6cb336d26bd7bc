"""Points seasons: accrual from fills, streaks, achievements, referrals, multipliers (also
after the fact), the leaderboard, and rewards state replayed and hashed like the ledger."""

from __future__ import annotations

import pytest

from conftest import ADMIN, ASK, BID, order
from satchel.actors import rewards
from satchel.core.engine import Engine
from satchel.core.messages import (
    ConfigChanged, LeaderboardOf, ReferralCode, RewardsOf, RewardUpdate, SeasonSpec, SetMultiplier, SetProfile,
    SetSeason, TxRejected, UseReferral,
)

USDC = 10**6
SOL = 10**9
P = rewards.MICRO  # one point
DAY = rewards.DAY_US
FAR = 2**62


def season(first: int = 0, last: int = FAR, sid: int = 1, maker: int = 100, taker: int = 50, referral: int = 1000) -> SetSeason:
    return SetSeason(ADMIN, SeasonSpec(sid, f"season {sid}", first, last, "USDC", maker, taker, referral))


def updates(events: list) -> list[RewardUpdate]:
    return [e for e in events if isinstance(e, RewardUpdate)]


def codes(events: list) -> list[str]:
    return [e.code for e in events if isinstance(e, TxRejected)]


async def funded(ex, *who: str) -> None:
    for account in who:
        await ex.deposit(account, "USDC", 10_000_000 * USDC)
        await ex.deposit(account, "SOL", 100_000 * SOL)


async def trade(ex, maker: str, taker: str, qty: int = 100, price: int = 15_000) -> list:
    """``maker`` rests an ask, ``taker`` lifts it (1 SOL = qty 100 at 150.00 USDC)."""
    return await ex.block([order(maker, ASK, price, qty), order(taker, BID, price, qty)])


async def of(ex, account: str, sid: int | None = None) -> dict:
    return await ex.engine.rewards.call(RewardsOf(account, sid))


async def test_fills_earn_points_by_role_only_inside_the_season(ex):
    await funded(ex, "alice", "bob")
    await trade(ex, "alice", "bob")  # before any season: nothing
    assert await of(ex, "alice") is None
    await ex.block([season(ex.ts + 3000, ex.ts + 5000)])  # the block after next opens it, two blocks long
    assert updates(await trade(ex, "alice", "bob")) == []  # not yet: the window opens with the next block
    ev = await trade(ex, "alice", "bob")
    got = {u.account: u for u in updates(ev)}
    assert got["alice"].delta == 150 * P + 10 * P  # maker 100 % of 150 USDC, + the day's first streak bonus
    assert got["bob"].delta == 75 * P + 10 * P  # taker 50 %
    assert got["alice"].achievements == ("first-trade", "first-maker", ) and got["bob"].achievements == ("first-trade",)
    ev = await trade(ex, "alice", "bob")
    assert {u.account: u.delta for u in updates(ev)} == {"alice": 150 * P, "bob": 75 * P}
    assert updates(await trade(ex, "alice", "bob")) == []  # past the end
    view = await of(ex, "alice")
    assert view["points"] == 310 * P and view["kinds"]["maker"] == 300 * P and view["kinds"]["streak"] == 10 * P
    assert view["volume"] == 300 * USDC and view["rank"] == 1 and (await of(ex, "bob"))["rank"] == 2
    assert [h for h, _ in view["history"]] == [ex.engine.height - 2, ex.engine.height - 1]


async def test_streaks_over_utc_days_and_volume_milestones(ex):
    await funded(ex, "alice", "bob")
    ex.ts = (ex.ts // DAY + 1) * DAY  # midnight UTC
    await ex.block([season()])
    for day in range(3):
        ev = await trade(ex, "alice", "bob")
        alice = next(u for u in updates(ev) if u.account == "alice")
        assert alice.delta == 150 * P + 10 * (day + 1) * P
        ex.ts += DAY
    assert alice.achievements == ("streak-3",)
    ex.ts += DAY  # a day without trading: the streak starts again
    ev = await trade(ex, "alice", "bob")
    assert next(u for u in updates(ev) if u.account == "alice").delta == 150 * P + 10 * P
    view = await of(ex, "alice")
    assert view["streak"] == 1 and view["achievements"]["streak-3"] > view["achievements"]["first-trade"]
    # 10,000 USDC traded unlocks volume-10k with its bonus, once
    ev = await trade(ex, "alice", "bob", qty=6_700)  # 67 SOL at 150 = 10,050 USDC
    alice = next(u for u in updates(ev) if u.account == "alice")
    assert alice.achievements == ("volume-10k",) and alice.delta == 10_050 * P + 100 * P
    ev = await trade(ex, "alice", "bob")
    assert next(u for u in updates(ev) if u.account == "alice").achievements == ()


async def test_referrals(ex):
    await funded(ex, "alice", "bob", "carol")
    await ex.block([season(referral=1000)])
    ev = await ex.block([ReferralCode("alice", "ALICE"), ReferralCode("bob", "ALICE"), ReferralCode("alice", "OTHER"),
                         UseReferral("bob", "ALICE"), UseReferral("bob", "ALICE"), UseReferral("alice", "ALICE"),
                         UseReferral("carol", "NOPE")])
    assert codes(ev) == ["INVALID_REFERRAL"] * 5  # taken, second code, twice, own, unknown
    got = {u.account: u.achievements for u in updates(ev)}
    assert got == {"bob": ("referred",), "alice": ("first-referral",)}
    ev = await trade(ex, "carol", "bob")  # bob (referred by alice) takes 150 USDC: 75 points
    got = {u.account: u.delta for u in updates(ev)}
    assert got["alice"] == 75 * P // 10  # 10 % of bob's trading points (not of his streak bonus)
    view = await of(ex, "alice")
    assert view["kinds"]["referral"] == 75 * P // 10 and view["referralCode"] == "ALICE" and view["referees"] == 1
    assert (await of(ex, "bob"))["referrer"] == "alice"


async def test_multipliers_for_an_account_a_tag_and_a_past_block_range(ex):
    await funded(ex, "alice", "bob", "carol", "dave")
    await ex.block([season(maker=100, taker=100, referral=0)])
    first = ex.engine.height + 1
    for _ in range(3):
        await trade(ex, "alice", "bob")
    last = ex.engine.height
    await trade(ex, "carol", "dave")
    before = {a: (await of(ex, a))["points"] for a in ("alice", "bob", "carol")}
    # after the fact: x2 on alice's trading points of those three blocks
    ev = await ex.block([SetMultiplier(ADMIN, "account", "alice", 200, first, last)])
    assert {u.account: u.delta for u in updates(ev)} == {"alice": 450 * P}
    assert (await of(ex, "alice"))["points"] == before["alice"] + 450 * P
    assert (await of(ex, "bob"))["points"] == before["bob"]
    # ahead of time: a community tag x1.5 from the next block on, and everyone x2 for one block
    ev = await ex.block([SetProfile(ADMIN, "carol", 0, "", ("community",)),
                         SetMultiplier(ADMIN, "tag", "community", 150, ex.engine.height + 2, 0),
                         SetMultiplier(ADMIN, "all", "", 200, ex.engine.height + 3, ex.engine.height + 3)])
    assert not codes(ev)
    ev = await trade(ex, "carol", "dave")  # the tag's first block
    assert {u.account: u.delta for u in updates(ev)} == {"carol": 225 * P, "dave": 150 * P}
    ev = await trade(ex, "carol", "dave")  # both multiply: x1.5 x2
    assert {u.account: u.delta for u in updates(ev)} == {"carol": 450 * P, "dave": 300 * P}
    ev = await trade(ex, "carol", "dave")
    assert {u.account: u.delta for u in updates(ev)} == {"carol": 225 * P, "dave": 150 * P}
    ev = await ex.block([SetMultiplier(ADMIN, "all", "", 50, 1, 0), SetMultiplier(ADMIN, "nobody", "x", 200, 1, 0),
                         SetMultiplier(ADMIN, "account", "alice", 200, 5, 4)])
    assert codes(ev) == ["INVALID_MULTIPLIER"] * 3


async def test_lending_earns_points_per_unit_and_day(ex):
    from satchel.core.messages import BORROW, LEND, BorrowLend

    await funded(ex, "alice")
    spec = SeasonSpec(1, "s", 0, FAR, "USDC", 100, 50, 0, lend_weight=100)  # a point per USDC lent per day
    await ex.block([SetSeason(ADMIN, spec)])
    ev = await ex.block([BorrowLend("alice", "USDC", LEND, 1_000 * USDC)])
    assert [(u.delta, u.achievements) for u in updates(ev)] == [(0, ("first-lend",))]
    ex.ts += DAY - 1000  # the next movement, a day later, credits the day on the claim as it was
    ev = await ex.block([BorrowLend("alice", "USDC", BORROW, 1 * USDC)])  # redeems 1 USDC of the claim
    (u,) = updates(ev)
    assert 1_000 * P <= u.delta < 1_001 * P  # 1,000 USDC for a day (the claim grew by a little interest)
    assert (await of(ex, "alice"))["kinds"]["lending"] == u.delta


async def test_leaderboard_and_seasons(ex):
    await funded(ex, "alice", "bob", "carol")
    ev = await ex.block([season(0, ex.ts + 10 * DAY, sid=1), season(ex.ts + 5 * DAY, ex.ts + 20 * DAY, sid=2),
                         season(0, 10, sid=3, maker=-1)])
    assert codes(ev) == ["INVALID_SEASON", "INVALID_SEASON"]  # overlapping, bad weight
    await trade(ex, "alice", "bob", qty=200)
    await trade(ex, "carol", "bob", qty=100)
    board = await ex.engine.rewards.call(LeaderboardOf(None, 2))
    assert board["season"]["id"] == 1 and board["accounts"] == 3
    assert [(r["rank"], r["account"]) for r in board["rows"]] == [(1, "alice"), (2, "bob")]


async def test_rewards_state_replays_restores_and_hashes(ex, nursery):
    await funded(ex, "alice", "bob")
    await ex.block([season(), ReferralCode("alice", "A1"), UseReferral("bob", "A1"),
                    SetProfile(ADMIN, "bob", 0, "", ("c",)), SetMultiplier(ADMIN, "tag", "c", 300, 1, 0)])
    for _ in range(3):
        await trade(ex, "alice", "bob")
    before = await ex.engine.state_hash()
    fresh = Engine(nursery)
    await fresh.restore(await ex.engine.canonical())
    assert await fresh.state_hash() == before and fresh.height == ex.engine.height
    for account in ("alice", "bob"):
        assert await fresh.rewards.call(RewardsOf(account)) == await of(ex, account)
    # the restored engine goes on exactly as the original
    ts = ex.ts + 1000
    txs = [order("alice", ASK, 15_000, 100), order("bob", BID, 15_000, 100)]
    a = await ex.engine.apply(ex.seq, ts, txs)
    b = await fresh.apply(ex.seq, ts, txs)
    assert a == b and await fresh.state_hash() == await ex.engine.state_hash()
    assert any(isinstance(e, ConfigChanged) for e in ex.events)


@pytest.mark.parametrize("bad", ["", "x" * 33, "a b", "é"])
def test_referral_codes_are_short_plain_texts(bad):
    from satchel.core import instructions
    from satchel.core.errors import RequestError

    with pytest.raises(RequestError):
        instructions.build("referralCodeCreate", {"code": bad}, "k", None)


# ---------------------------------------------------------------- through the gateway


async def test_rewards_over_the_api_streams_and_cli(server):
    import sys

    import trio

    from satchel.signing import Keypair
    from satchel.tools.client import ReplyError, connect

    alice, bob, carol = Keypair.generate(), Keypair.generate(), Keypair.generate()
    for key in (alice, bob, carol):
        await server.fund(key, USDC=100_000 * USDC, SOL=1_000 * SOL)
    spot = {"symbol": "SOL_USDC", "orderType": "Limit", "price": "150", "quantity": "2"}
    admin_key = server.node.admin
    async with connect(server.url, admin_key) as admin, connect(server.url, alice) as a, \
            connect(server.url, bob) as b, connect(server.url) as watcher:
        with pytest.raises(ReplyError) as err:
            await watcher.request("leaderboard", {}, sign=False)
        assert err.value.code == "RESOURCE_NOT_FOUND"  # no season yet
        await admin.request("adminSetSeason", {"id": "1", "name": "Season 2", "start": "0", "end": "9000000000000",
                                               "makerWeight": "100", "takerWeight": "50", "referralBps": "2000"})
        await a.request("referralCodeCreate", {"code": "alice-1"})
        await b.request("referralCodeUse", {"code": "alice-1"})
        with pytest.raises(ReplyError) as err:
            await b.request("referralCodeUse", {"code": "alice-1"})
        assert err.value.code == "INVALID_REFERRAL"
        await b.subscribe(["account.rewardUpdate"], private=True)
        await watcher.subscribe(["leaderboard"])
        await a.request("orderExecute", {**spot, "side": "Ask"})
        assert (await b.request("orderExecute", {**spot, "side": "Bid"}))["status"] == "Filled"
        update = (await b.next_frame("account.rewardUpdate"))["data"]
        assert update["e"] == "rewardUpdate" and update["d"] == "160" and update["a"] == ["first-trade"]
        # the stream sends at most a frame per second of sequenced time: blocks move it on
        frame = (await watcher.next_frame("leaderboard"))["data"]
        while frame["rows"][0]["points"] == "0":  # a frame from before the trade (the auto-lend sweep's first-lend)
            with trio.move_on_after(0.3):
                frame = (await watcher.next_frame("leaderboard"))["data"]
                continue
            await server.fund(carol, USDC=1)
        assert [r["account"] for r in frame["rows"][:2]] == [alice.api_key, bob.api_key]
        # alice: maker 300 + streak 10 + 20 % of bob's 150 trading points
        mine = await a.request("rewardsQuery", {})
        assert mine["points"] == "340" and mine["kinds"]["referral"] == "30"
        assert mine["achievements"].keys() >= {"first-trade", "first-maker", "first-referral"} and mine["rank"] == 1
        assert (await admin.request("rewardsQuery", {"account": alice.api_key})) == mine
        with pytest.raises(ReplyError) as err:
            await b.request("rewardsQuery", {"account": alice.api_key})
        assert err.value.code == "UNAUTHORIZED"
        board = await watcher.request("leaderboard", {"limit": "1"}, sign=False)
        assert board["rows"] == [{"rank": 1, "account": alice.api_key, "points": "340"}]
        # x2 after the fact on bob's points of the block he traded in
        height = mine["history"][0]["height"]
        await admin.request("adminSetMultiplier", {"factor": "2", "fromHeight": str(height), "toHeight": str(height),
                                                   "account": bob.api_key})
        assert (await b.request("rewardsQuery", {}))["points"] == "310"  # 150 x 2 + 10
    out = await trio.run_process([sys.executable, "-m", "satchel.tools.cli", "rewards", "--url", server.url],
                                 capture_stdout=True, capture_stderr=True)
    text = out.stdout.decode()
    assert "season 1 \"Season 2\": 2 accounts" in text and alice.api_key in text and "340" in text
