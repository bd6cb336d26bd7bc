"""The sequencer's background lane: a chain adapter's reports ride along in blocks cut for
others, a budget of weight (deposits) a block, oldest first; they all go, alone if need be,
once the oldest has waited ``background_wait``; reads and shutdown take them too."""

from __future__ import annotations

import trio
import trio.testing

from satchel.core.messages import ChainDeposit, Query, ReportedDeposit, WithdrawalSent
from satchel.ledger.sequencer import Read, Sequencer
from satchel.node import BACKGROUND


class Order:  # any transaction class not declared background
    pass


def report(deposits: int = 8) -> ChainDeposit:
    return ChainDeposit("adapter", "sim", tuple(ReportedDeposit(f"0x{i}", 0, "acct", "USDC", 1) for i in range(deposits)))


def new(wait: float = 10.0, max_txs: int = 64) -> Sequencer:
    return Sequencer(1, 1, 0, max_txs=max_txs, clock=lambda: 1, background=BACKGROUND, background_budget=8,
                     background_wait=wait)


def test_adapter_reports_are_declared_background_by_weight():
    assert BACKGROUND[ChainDeposit](report(5)) == 5
    assert BACKGROUND[WithdrawalSent](WithdrawalSent("adapter", "sim", 1, "0xabc")) == 1
    assert Order not in BACKGROUND


async def test_a_report_rides_along_in_the_next_block_cut_for_an_order():
    seq = new()
    seq.submit(report(), None)
    assert seq.idle and seq.backlog == 1  # waiting for a ride is not work for the pipeline
    with trio.move_on_after(0.5) as waited:  # alone, it does not make a block yet
        await seq.next_item()
    assert waited.cancelled_caught
    order = Order()
    seq.submit(order, None)
    block = await seq.next_item()
    assert block.txs[0] is order and block.txs[1].__class__ is ChainDeposit  # after the others
    assert seq.idle and seq.backlog == 0


async def test_a_block_takes_the_budget_of_background_oldest_first():
    seq = new()
    reports = [report(8), report(8), report(3)]
    for r in reports:
        seq.submit(r, None)
    for expected in reports[:2]:
        order = Order()
        seq.submit(order, None)
        assert (await seq.next_item()).txs == [order, expected]  # one report of 8 a block
    order = Order()
    seq.submit(order, None)
    assert (await seq.next_item()).txs == [order, reports[2]]
    heavy = report(20)  # heavier than the budget: waits until it is due
    seq.submit(heavy, None)
    seq.submit(order, None)
    assert (await seq.next_item()).txs == [order] and seq.backlog == 1


def test_when_the_oldest_is_due_all_go_alone_or_along():
    async def main() -> None:
        seq = new(wait=0.25)
        for _ in range(3):
            seq.submit(report(8), None)
        start = trio.current_time()
        block = await seq.next_item()  # no order comes: they go alone, together, once due
        assert len(block.txs) == 3 and abs(trio.current_time() - start - 0.25) < 1e-9
        for _ in range(3):
            seq.submit(report(8), None)
        await trio.sleep(0.25)
        order = Order()
        seq.submit(order, None)
        assert len((await seq.next_item()).txs) == 4  # due: all ride with the order, past the budget

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_the_block_limit_counts_the_background_and_the_rest_waits_its_turn():
    seq = new(max_txs=4)
    orders = [Order() for _ in range(3)]
    for _ in range(3):
        seq.submit(report(1), None)
    for o in orders:
        seq.submit(o, None)
    block = await seq.next_item()
    assert block.txs[:3] == orders and len(block.txs) == 4  # max_txs 4: one report rides along
    assert seq.backlog == 2


async def test_a_read_and_a_shutdown_take_the_background_with_them():
    seq = new()
    seq.submit(report(), None)
    seq.read(Query("risk", None), lambda _: None)
    block = await seq.next_item()
    assert len(block.txs) == 1 and (await seq.next_item()).__class__ is Read
    seq.submit(report(), None)
    seq.close()
    assert len((await seq.next_item()).txs) == 1
    assert await seq.next_item() is None
