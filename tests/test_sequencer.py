"""The sequencer's background transactions: a chain adapter's reports ride along in blocks
cut for others, or go alone after ``background_wait``; reads and shutdown take them too."""

from __future__ import annotations

import trio
import trio.testing

from satchel.core.messages import ChainDeposit, Query
from satchel.ledger.sequencer import Read, Sequencer
from satchel.node import BACKGROUND


class Order:  # any transaction class not declared background
    pass


def report() -> ChainDeposit:
    return ChainDeposit("adapter", "sim", ())


def new(wait: float = 0.02) -> Sequencer:
    return Sequencer(1, 1, 0, max_txs=4, clock=lambda: 1, background=BACKGROUND, background_wait=wait)


def test_adapter_reports_are_declared_background():
    assert ChainDeposit in BACKGROUND and Order not in BACKGROUND


async def test_a_report_rides_along_in_the_next_block_cut_for_an_order():
    seq = new(wait=10.0)
    seq.submit(report(), None)
    assert not seq.idle and seq.backlog == 1
    with trio.move_on_after(1.0) as waited:  # alone, it does not make a block yet
        await seq.next_item()
    assert waited.cancelled_caught
    order = Order()
    seq.submit(order, None)
    block = await seq.next_item()
    assert block.txs[0] is order and block.txs[1].__class__ is ChainDeposit  # after the others
    assert seq.idle and seq.backlog == 0


def test_a_report_alone_goes_after_the_wait():
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        seq = new(wait=0.02)
        seq.submit(report(), None)
        start = trio.current_time()
        block = await seq.next_item()
        assert len(block.txs) == 1 and abs(trio.current_time() - start - 0.02) < 1e-9

    trio.run(main, clock=clock)


async def test_the_block_limit_counts_the_background_and_the_rest_waits_its_turn():
    seq = new(wait=10.0)
    orders = [Order() for _ in range(3)]
    for _ in range(3):
        seq.submit(report(), None)
    for o in orders:
        seq.submit(o, None)
    block = await seq.next_item()
    assert block.txs[:3] == orders and len(block.txs) == 4  # max_txs 4: one report rides along
    assert seq.backlog == 2


async def test_a_read_and_a_shutdown_take_the_background_with_them():
    seq = new(wait=10.0)
    seq.submit(report(), None)
    seq.read(Query("risk", None), lambda _: None)
    block = await seq.next_item()
    assert len(block.txs) == 1 and (await seq.next_item()).__class__ is Read
    seq.submit(report(), None)
    seq.close()
    assert len((await seq.next_item()).txs) == 1
    assert await seq.next_item() is None
