"""Chains in the core: deposits credited exactly once, withdrawals held, sent, confirmed or
released, a chain paused while trading goes on, hot wallet limits and cold sweeps,
conservation with withdrawals, and replay from a snapshot."""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ADMIN, Exchange, order
from satchel import config
from satchel.actors.custody import MAX_OPEN_WITHDRAWALS
from satchel.core.amounts import MAX_UNITS
from satchel.core.engine import Engine
from satchel.core.messages import (
    ASK, BID, IOC, ApproveSweep, ChainCredited, ChainDeposit, ChainsOf, ChainSpec, ChainStatus, CustodyMoved, Deposited,
    MoveDone, MovesOf, ReportedDeposit, SetChain, SetLeverage, TxRejected, Withdraw, WithdrawalConfirmed, WithdrawalFailed, WithdrawalSent, WithdrawalsOf,
    WithdrawalUpdate,
)

USDC = 10**6
ADAPTER = "ADAPTER"
SPEC = ChainSpec("sim", ADAPTER, ["USDC", "ETH"], 3, [("USDC", 1_000 * USDC)])


async def start(nursery) -> Exchange:
    ex = Exchange(Engine(nursery))
    await ex.block(config.genesis(config.load(), ADMIN))
    await ex.block([SetChain(ADMIN, SPEC)])
    return ex


def credit(account: str, amount: int, tx_hash: str = "0xa", log_index: int = 0, asset: str = "USDC") -> ChainDeposit:
    return ChainDeposit(ADAPTER, "sim", (ReportedDeposit(tx_hash, log_index, account, asset, amount),))


def codes(events: list) -> list[str]:
    return [e.code for e in events if e.__class__ is TxRejected]


def statuses(events: list) -> list[tuple[int, str]]:
    return [(e.withdrawal_id, e.status) for e in events if e.__class__ is WithdrawalUpdate]


async def chain(ex: Exchange):
    return (await ex.engine.risk.call(ChainsOf()))[0]


async def conserved(ex: Exchange) -> None:
    """Balances + fees + pools' cash + confirmed withdrawals = deposits; hot + cold = what
    the chain credited less what it sent."""
    assert await ex.totals() == await ex.deposits()


async def test_a_deposit_is_credited_once(nursery):
    ex = await start(nursery)
    events = await ex.block([credit("a", 100 * USDC)])
    assert [e.__class__ for e in events if e.__class__ in (Deposited, ChainCredited)] == [Deposited, ChainCredited]
    assert await ex.balance("a", "USDC") == (100 * USDC, 0)
    # the same (chain, tx hash, log index) again, in the same block or later: nothing changes
    assert codes(await ex.block([credit("a", 100 * USDC), credit("b", 5 * USDC)])) == ["ALREADY_CREDITED", "ALREADY_CREDITED"]
    assert codes(await ex.block([credit("a", 100 * USDC, log_index=1)])) == []  # another log of the same tx is another deposit
    assert await ex.balance("a", "USDC") == (200 * USDC, 0)
    # only the chain's adapter may report, only the chain's assets
    assert codes(await ex.block([ChainDeposit("someone", "sim", (ReportedDeposit("0xb", 0, "a", "USDC", 1),))])) == ["UNAUTHORIZED"]
    assert codes(await ex.block([credit("a", 1, "0xc", asset="SOL"), ChainDeposit(ADAPTER, "nope", (ReportedDeposit("0xd", 0, "a", "USDC", 1),))])) \
        == ["INVALID_DEPOSIT", "INVALID_CHAIN"]
    # a snapshot keeps the keys: a restored engine refuses the re-delivery as well
    copy = Engine(nursery)
    await copy.restore(await ex.engine.canonical())
    ex.engine = copy
    assert codes(await ex.block([credit("a", 100 * USDC)])) == ["ALREADY_CREDITED"]
    await conserved(ex)


async def test_a_report_of_a_blocks_deposits_credits_each_once(nursery):
    """One ``ChainDeposit`` carries a chain block's deposits: each is credited once (also
    twice in the same report), what was credited before is skipped, a report of nothing
    new is refused ALREADY_CREDITED, and one deposit the chain does not take refuses the
    whole report with nothing changed. The hot wallet's limit is applied once per asset."""
    ex = await start(nursery)

    def report(*deposits: tuple) -> ChainDeposit:
        return ChainDeposit(ADAPTER, "sim", tuple(ReportedDeposit(h, i, acct, "USDC", amt) for h, i, acct, amt in deposits))

    events = await ex.block([report(("0x1", 0, "a", 10 * USDC), ("0x1", 1, "b", 20 * USDC), ("0x1", 0, "a", 10 * USDC))])
    assert codes(events) == []
    assert [(e.account, e.amount) for e in events if e.__class__ is ChainCredited] == [("a", 10 * USDC), ("b", 20 * USDC)]
    events = await ex.block([report(("0x1", 0, "a", 10 * USDC), ("0x2", 0, "a", 5 * USDC))])  # one new among them
    assert codes(events) == [] and [e.tx_hash for e in events if e.__class__ is ChainCredited] == ["0x2"]
    assert codes(await ex.block([report(("0x1", 1, "b", 20 * USDC), ("0x2", 0, "a", 5 * USDC))])) == ["ALREADY_CREDITED"]
    bad = ChainDeposit(ADAPTER, "sim", (ReportedDeposit("0x3", 0, "a", "USDC", USDC), ReportedDeposit("0x4", 0, "a", "SOL", 1)))
    assert codes(await ex.block([bad])) == ["INVALID_DEPOSIT"]
    assert await ex.balance("a", "USDC") == (15 * USDC, 0) and await ex.balance("b", "USDC") == (20 * USDC, 0)
    # past the hot wallet's limit (1,000 USDC) the excess of the whole report goes to cold storage at once
    events = await ex.block([report(("0x5", 0, "c", 600 * USDC), ("0x5", 1, "c", 600 * USDC))])
    assert [e.amount for e in events if e.__class__ is CustodyMoved] == [235 * USDC]
    view = await chain(ex)
    assert dict(view.hot)["USDC"] == 1_000 * USDC and dict(view.cold)["USDC"] == 235 * USDC
    await conserved(ex)


async def test_withdrawal_held_sent_confirmed_or_failed_and_released(nursery):
    ex = await start(nursery)
    await ex.block([credit("a", 500 * USDC), SetLeverage("a", 0, auto_lend=0)])
    events = await ex.block([Withdraw("a", "sim", "USDC", 200 * USDC, "0xdest")])
    [(wid, status)] = statuses(events)
    assert status == "Pending" and await ex.balance("a", "USDC") == (300 * USDC, 200 * USDC)
    assert codes(await ex.block([WithdrawalConfirmed(ADAPTER, "sim", wid)])) == ["INVALID_WITHDRAWAL"]  # not sent yet
    assert statuses(await ex.block([WithdrawalSent(ADAPTER, "sim", wid, "0xout")])) == [(wid, "Sent")]
    assert codes(await ex.block([WithdrawalSent(ADAPTER, "sim", wid, "0xout2")])) == ["INVALID_WITHDRAWAL"]  # never twice
    assert statuses(await ex.block([WithdrawalConfirmed(ADAPTER, "sim", wid)])) == [(wid, "Confirmed")]
    assert await ex.balance("a", "USDC") == (300 * USDC, 0)
    assert codes(await ex.block([WithdrawalConfirmed(ADAPTER, "sim", wid)])) == ["INVALID_WITHDRAWAL"]  # nor debited twice
    # a failed one is released
    [(wid2, _)] = statuses(await ex.block([Withdraw("a", "sim", "USDC", 100 * USDC, "0xdest")]))
    await ex.block([WithdrawalSent(ADAPTER, "sim", wid2, "0xout3")])
    assert statuses(await ex.block([WithdrawalFailed(ADAPTER, "sim", wid2, "reverted")])) == [(wid2, "Failed")]
    assert await ex.balance("a", "USDC") == (300 * USDC, 0)
    # refusals change nothing
    events = await ex.block([Withdraw("a", "sim", "USDC", 301 * USDC, "0xdest"), Withdraw("a", "sim", "SOL", 1, "0xdest"),
                             Withdraw("a", "sim", "USDC", 1, ""), Withdraw("a", "nope", "USDC", 1, "0x")])
    assert codes(events) == ["INSUFFICIENT_FUNDS", "INVALID_ASSET", "INVALID_ADDRESS", "INVALID_CHAIN"]
    assert events[0].message == "cannot withdraw 301 USDC"  # in the asset's units, as it was asked for
    assert await ex.balance("a", "USDC") == (300 * USDC, 0)
    view = await chain(ex)
    assert dict(view.hot)["USDC"] == 300 * USDC and dict(view.reserved)["USDC"] == 0
    await conserved(ex)


async def test_an_account_has_at_most_sixteen_withdrawals_on_their_way(nursery):
    """Dust withdrawals (no fee, no minimum) cannot fill the chain's queue: past
    MAX_OPEN_WITHDRAWALS of its own not yet confirmed or failed an account is refused
    WITHDRAWAL_LIMIT, nothing held; one finishing makes room; others are not affected."""
    ex = await start(nursery)
    await ex.block([credit("a", 100 * USDC), credit("b", 100 * USDC, "0xb")])
    first = statuses(await ex.block([Withdraw("a", "sim", "USDC", 1, f"0x{i}") for i in range(MAX_OPEN_WITHDRAWALS)]))
    assert len(first) == MAX_OPEN_WITHDRAWALS
    events = await ex.block([Withdraw("a", "sim", "USDC", 1, "0xmore"), Withdraw("b", "sim", "USDC", 1, "0xb")])
    assert codes(events) == ["WITHDRAWAL_LIMIT"] and len(statuses(events)) == 1  # b's goes
    assert await ex.balance("a", "USDC") == (100 * USDC - MAX_OPEN_WITHDRAWALS, MAX_OPEN_WITHDRAWALS)
    wid = first[0][0]
    await ex.block([WithdrawalSent(ADAPTER, "sim", wid, "0xout"), WithdrawalFailed(ADAPTER, "sim", wid, "reverted")])
    assert codes(await ex.block([Withdraw("a", "sim", "USDC", 1, "0xmore")])) == []
    assert codes(await ex.block([Withdraw("a", "sim", "USDC", 1, "0xmore")])) == ["WITHDRAWAL_LIMIT"]
    await conserved(ex)


async def test_deposits_past_the_ledgers_limit_are_refused_whole(nursery):
    """Each amount fits, their sum would not: every balance and total stays below
    MAX_UNITS (the journal's integers), as for the faucet -- else the block's events and
    the snapshot could not be encoded and the node would stop, and not start again."""
    ex = await start(nursery)
    big = MAX_UNITS // 2 + 1
    report = ChainDeposit(ADAPTER, "sim", (ReportedDeposit("0x1", 0, "a", "USDC", big), ReportedDeposit("0x2", 0, "b", "USDC", big)))
    events = await ex.block([report])
    assert codes(events) == ["INVALID_DEPOSIT"] and events[0].message == "USDC deposits would exceed the ledger's limit"
    assert codes(await ex.block([credit("a", big, "0x1")])) == []
    assert codes(await ex.block([credit("b", big, "0x2")])) == ["INVALID_DEPOSIT"]  # in another report alike
    assert await ex.balance("a", "USDC") == (big, 0) and await ex.balance("b", "USDC") == (0, 0)
    await ex.engine.state_hash()  # the state still encodes
    await conserved(ex)


async def test_a_paused_chain_refuses_withdrawals_and_deposits_while_trading_goes_on(nursery):
    ex = await start(nursery)
    await ex.block([credit("a", 500 * USDC), credit("b", 10**9, "0xe", asset="ETH")])
    await ex.deposit("s", "SOL", 10**10)
    events = await ex.block([ChainStatus(ADAPTER, "sim", True, "every provider failing")])
    assert any(e.__class__.__name__ == "ChainStatusChanged" and e.paused for e in events)
    assert codes(await ex.block([Withdraw("a", "sim", "USDC", 1 * USDC, "0xdest"), credit("a", 5, "0xf")])) == [
        "CHAIN_PAUSED", "CHAIN_PAUSED"]
    fills = await ex.block([order("s", ASK, 10_000, 100), order("a", BID, 10_000, 100, tif=IOC)])
    assert any(e.__class__.__name__ == "Fill" for e in fills)  # trading is unaffected
    assert codes(await ex.block([ChainStatus("someone", "sim", False, "")])) == ["UNAUTHORIZED"]
    await ex.block([ChainStatus(ADMIN, "sim", False, "providers healthy")])
    assert codes(await ex.block([credit("a", 5, "0xf")])) == []  # the deposit seen while paused is credited now
    await conserved(ex)


async def test_a_pause_the_admin_signed_is_lifted_by_the_admin_only(nursery):
    ex = await start(nursery)
    await ex.block([ChainStatus(ADMIN, "sim", True, "maintenance")])
    assert codes(await ex.block([ChainStatus(ADAPTER, "sim", False, "providers healthy")])) == ["UNAUTHORIZED"]
    assert (await chain(ex)).paused
    await ex.block([ChainStatus(ADMIN, "sim", False, "done")])
    # the adapter lifts its own pause, but not once the admin paused on top of it
    await ex.block([ChainStatus(ADAPTER, "sim", True, "every provider failing")])
    assert codes(await ex.block([ChainStatus(ADAPTER, "sim", False, "providers healthy")])) == []
    assert not (await chain(ex)).paused
    await ex.block([ChainStatus(ADAPTER, "sim", True, "every provider failing"), ChainStatus(ADMIN, "sim", True, "hold")])
    assert codes(await ex.block([ChainStatus(ADAPTER, "sim", False, "providers healthy")])) == ["UNAUTHORIZED"]
    # nor taken over by pausing again on top of it
    assert codes(await ex.block([ChainStatus(ADAPTER, "sim", True, "mine"),
                                 ChainStatus(ADAPTER, "sim", False, "providers healthy")])) == ["UNAUTHORIZED"] * 2
    view = await chain(ex)
    assert view.paused and view.reason == "hold"
    await ex.block([ChainStatus(ADMIN, "sim", False, "")])
    assert not (await chain(ex)).paused


async def test_withdrawals_beyond_the_hot_wallet_wait_for_a_cold_sweep(nursery):
    ex = await start(nursery)
    events = await ex.block([credit("a", 1_500 * USDC), SetLeverage("a", 0, auto_lend=0)])
    moved = [e for e in events if e.__class__ is CustodyMoved]
    assert [(m.amount, m.to_cold) for m in moved] == [(500 * USDC, True)]  # the hot wallet keeps 1,000
    first = statuses(await ex.block([Withdraw("a", "sim", "USDC", 800 * USDC, "0x1")]))
    second = statuses(await ex.block([Withdraw("a", "sim", "USDC", 300 * USDC, "0x2")]))
    assert first[0][1] == "Pending" and second[0][1] == "Queued"  # 200 left in the hot wallet
    events = await ex.block([ApproveSweep(ADMIN, "sim", "USDC", 600 * USDC)])
    assert codes(events) == ["INVALID_QUANTITY"] and events[0].message == "cold storage holds 500 USDC on sim"
    events = await ex.block([ApproveSweep(ADMIN, "sim", "USDC", 500 * USDC)])
    assert statuses(events) == [(second[0][0], "Pending")]
    assert codes(await ex.block([ApproveSweep(ADAPTER, "sim", "USDC", 1)])) == ["UNAUTHORIZED"]
    view = await chain(ex)
    assert dict(view.hot)["USDC"] == 1_500 * USDC and dict(view.cold)["USDC"] == 0
    assert dict(view.reserved)["USDC"] == 1_100 * USDC
    await conserved(ex)


async def test_a_custody_move_stays_open_until_its_adapter_reports_it_done(nursery):
    """What the adapter is asked for after a restart of either side: ledger state, kept
    in snapshots, closed only by the chain's adapter, once."""
    ex = await start(nursery)
    events = await ex.block([credit("a", 1_200 * USDC, "0xm"), SetLeverage("a", 0, auto_lend=0)])
    (moved,) = [e for e in events if e.__class__ is CustodyMoved]
    open_ = await ex.engine.risk.call(MovesOf("sim"))
    assert [(m.seq, m.asset, m.amount, m.to_cold) for m in open_] == [(moved.seq, "USDC", 200 * USDC, True)]
    copy = Engine(nursery)  # a node restarted from a snapshot still asks for it
    await copy.restore(await ex.engine.canonical())
    assert await copy.risk.call(MovesOf("sim")) == open_
    assert codes(await ex.block([MoveDone("OTHER", "sim", moved.seq, "USDC")])) == ["UNAUTHORIZED"]
    assert codes(await ex.block([MoveDone(ADAPTER, "sim", moved.seq, "ETH")])) == ["RESOURCE_NOT_FOUND"]
    assert codes(await ex.block([MoveDone(ADAPTER, "sim", moved.seq, "USDC")])) == []
    assert await ex.engine.risk.call(MovesOf("sim")) == []
    assert codes(await ex.block([MoveDone(ADAPTER, "sim", moved.seq, "USDC")])) == ["RESOURCE_NOT_FOUND"]  # once
    await conserved(ex)


async def test_an_auto_lent_balance_is_redeemed_for_a_withdrawal_and_margin_is_kept(nursery):
    ex = await start(nursery)
    await ex.block([credit("a", 100 * USDC)])
    for _ in range(2):  # idle for a whole sweep interval: lent
        ex.ts += 10**6
        await ex.block([])
    events = await ex.block([Withdraw("a", "sim", "USDC", 60 * USDC, "0xdest")])
    assert statuses(events)[0][1] == "Pending"
    assert any(e.__class__.__name__ == "LendMoved" and e.kind == "LendRedeem" for e in events)
    await conserved(ex)


# ---------------------------------------------------------------- generated workloads

ACCOUNTS = ("a", "b", "c")
op_st = st.one_of(
    st.tuples(st.just("credit"), st.sampled_from(ACCOUNTS), st.integers(1, 900), st.integers(0, 5)),
    st.tuples(st.just("withdraw"), st.sampled_from(ACCOUNTS), st.integers(1, 900), st.just(0)),
    st.tuples(st.just("sent"), st.just(""), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("confirmed"), st.just(""), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("failed"), st.just(""), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("pause"), st.just(""), st.integers(0, 1), st.just(0)),
    st.tuples(st.just("sweep"), st.just(""), st.integers(1, 900), st.just(0)),
    st.tuples(st.just("moved"), st.just(""), st.integers(0, 9), st.just(0)),
)


async def run(blocks: list, restore_at: int | None) -> list[str]:
    async with trio.open_nursery() as nursery:
        ex = await start(nursery)
        ids: list[int] = []
        moves: list[int] = []  # the booking seqs of custody moves
        hashes = []
        custody = 0
        for n, ops in enumerate(blocks):
            if n == restore_at:
                copy = Engine(nursery)
                await copy.restore(await ex.engine.canonical())
                ex.engine = copy
            txs = []
            for kind, account, amount, log in ops:
                pick = ids[amount % len(ids)] if ids else 0
                move = moves[amount % len(moves)] if moves else 0
                txs.append({
                    "credit": lambda: credit(account, amount * USDC, f"0x{amount}", log),
                    "withdraw": lambda: Withdraw(account, "sim", "USDC", amount * USDC, "0xdest"),
                    "sent": lambda: WithdrawalSent(ADAPTER, "sim", pick, f"0xs{pick}"),
                    "confirmed": lambda: WithdrawalConfirmed(ADAPTER, "sim", pick),
                    "failed": lambda: WithdrawalFailed(ADAPTER, "sim", pick, "reverted"),
                    "pause": lambda: ChainStatus(ADAPTER, "sim", bool(amount), "test"),
                    "sweep": lambda: ApproveSweep(ADMIN, "sim", "USDC", amount * USDC),
                    "moved": lambda: MoveDone(ADAPTER, "sim", move, "USDC"),
                }[kind]())
            ex.ts += 400_000
            events = await ex.block(txs)
            ids += [e.withdrawal_id for e in events if e.__class__ is WithdrawalUpdate and e.status in ("Queued", "Pending")]
            moves += [e.seq for e in events if e.__class__ is CustodyMoved]
            custody += sum(e.amount for e in events if e.__class__ is ChainCredited)
            custody -= sum(e.amount for e in events if e.__class__ is WithdrawalUpdate and e.status == "Confirmed")
            await conserved(ex)
            view = await chain(ex)
            hot, cold, reserved = dict(view.hot), dict(view.cold), dict(view.reserved)
            assert hot.get("USDC", 0) + cold.get("USDC", 0) == custody  # the books follow the chain
            assert hot.get("USDC", 0) >= reserved.get("USDC", 0) >= 0 and cold.get("USDC", 0) >= 0
            # every open withdrawal is held, and the reserve is what Pending and Sent ones promise
            open_ = await ex.engine.risk.call(WithdrawalsOf())
            assert reserved.get("USDC", 0) == sum(w.amount for _, w in open_ if w.status in ("Pending", "Sent"))
            # a custody move stays open until its adapter reports it done, and only then
            open_moves = {m.seq for m in await ex.engine.risk.call(MovesOf("sim"))}
            assert open_moves <= set(moves)
            hashes.append(await ex.engine.state_hash())
        nursery.cancel_scope.cancel()
    return hashes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(op_st, max_size=6), min_size=1, max_size=10))
def test_custody_conserves_money_and_replays_identically(blocks):
    assert trio.run(run, blocks, None) == trio.run(run, blocks, len(blocks) // 2)
