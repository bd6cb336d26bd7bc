"""The lending workload of ``benchmarks.engine``: accounts lending and borrowing, and what
interest and auto-lend cost the engine.

The engine is driven directly, block by block (``Engine.apply``; no sequencer, journal or
network), so the figures are the state machine's own. Blocks hold ``BLOCK_TXS``
transactions and the sequenced clock advances ``BLOCK_US`` per block: 100,000 tx/s of
sequenced time, the engine's target, so the auto-lend sweep (once per second of sequenced
time) runs every ``SECOND_US // BLOCK_US`` blocks.

Lending accounts ``lend0``.. (``setup_lending``): each deposits ``DEPOSIT_USDC`` and
``DEPOSIT_SOL``; four in five lend all of it (auto-lend, the default: the sweep after the
deposits lends it); one in five turns auto-lend off, keeps its deposits as collateral and
borrows ``BORROW_USDC`` and ``BORROW_SOL`` (``BorrowLend``; SOL is valued at the SOL
perp's index, set first). At 10,000 accounts: 80M USDC and 800k SOL lent, 40M USDC
(U = 50%) and 80k SOL (U = 10%) borrowed.

What is measured:

* **spot** -- ``benchmarks.engine.workload`` (the matching mix over three spot markets,
  200 accounts) in blocks, tx/s, with the traders' auto-lend off (pools listed, nobody
  lends), on (the default: their idle balances are lent every second, and an order
  short of funds redeems its account's lend), and with ``--lenders`` lending accounts
  beside them (the traders' auto-lend off); the variants run back to back in each run; per
  block kind, the median time of the blocks in which the sweep ran and of the others;
* **accrual** -- at 100, 1,000 and 10,000 lending accounts, per block: interest accrual
  and commit alone (``Accrue`` to the lending actor, ``UsePools`` / ``PoolsUsed`` to the
  margin engine, ``CommitPools`` back: what ``Engine.apply`` sends when lending is on), a
  whole empty block, and a block whose only transaction moves the SOL index -- a moved
  mark re-checks every debtor's margin (``Margin._remark``), so that one is O(borrowers);
  and the empty blocks whose sweep lends a new deposit of every lender: the sweep is
  O(accounts touched since the last one), by design, and takes ``loans.SWEEP_MAX``
  accounts a block (its total and its largest block are shown).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import trio

from satchel import config
from satchel.core import lending as pools
from satchel.core.engine import Engine
from satchel.core.messages import (
    BORROW, Accrue, BorrowLend, CommitPools, Deposit, LendMoved, PoolsOf, PoolsUsed, SetIndex, SetLeverage,
    StateOf, Totals, TxRejected, UsePools,
)
from satchel.runtime import tune_gc

ADMIN = "ADMIN"  # engine-level: unsigned admin transactions (the engine checks the name)
USDC, SOL = 10**6, 10**9
SOL_PERP = "SOL_USDC_PERP"
SOL_INDEX = 15_000  # $150.00 in the perp's price units
BLOCK_TXS = 1_000
BLOCK_US = 10_000  # 1,000 transactions per 10 ms: 100k tx/s of sequenced time
SECOND_US = 1_000_000
SETUP_BLOCK = 1_000  # setup transactions per block
BORROWER_EVERY = 5  # one lending account in five borrows
DEPOSIT_USDC, DEPOSIT_SOL = 10_000 * USDC, 100 * SOL
BORROW_USDC, BORROW_SOL = 20_000 * USDC, 40 * SOL  # $26,000 of debt on $10,000: 2.6x, within the 10% borrow IMF
TRADERS = 200  # acct0..acct199: the spot stream's accounts
TRADER_DEPOSIT = 10**16  # units of each asset, as benchmarks.engine's spot run
ACCOUNT_STEPS = (100, 1_000, 10_000)
SWEEPS = 7  # sweeps timed per account count
SWEPT_USDC = USDC  # each lender's new deposit before a timed sweep


class Chain:
    """An engine and its sequence numbers and sequenced clock."""

    def __init__(self, engine: Engine, ts: int):
        self.engine = engine
        self.seq = 1
        self.ts = ts

    async def block(self, txs: list, dt_us: int = BLOCK_US) -> list:
        self.ts += dt_us
        events = await self.engine.apply(self.seq, self.ts, txs)
        self.seq += len(txs)
        return events

    async def blocks(self, txs: list, size: int = SETUP_BLOCK) -> list:
        """``txs`` in blocks of ``size``; the refusals among their events."""
        refused = []
        for i in range(0, len(txs), size):
            refused += [e for e in await self.block(txs[i:i + size]) if e.__class__ is TxRejected]
        return refused


async def genesis(nursery: trio.Nursery) -> Chain:
    """A fresh engine with the default configuration (its pools listed: lending is on), the
    SOL perp's index set so that SOL has a value, its clock at the wall clock's (signed
    transactions must fall within their window)."""
    chain = Chain(Engine(nursery), time.time_ns() // 1000)
    await chain.block(config.genesis(config.load(), ADMIN))
    await chain.block([SetIndex(ADMIN, SOL_PERP, SOL_INDEX)])
    return chain


def lending_accounts(n: int) -> tuple[list, list]:
    """(settings and deposits, borrows) of ``n`` lending accounts. Lenders lend by auto-lend,
    the default: the sweep after their deposits lends all of it."""
    funding: list = []
    borrows: list = []
    for i in range(n):
        account = f"lend{i}"
        if i % BORROWER_EVERY == BORROWER_EVERY - 1:
            funding.append(SetLeverage(account, 0, auto_lend=0))
            borrows += [BorrowLend(account, "USDC", BORROW, BORROW_USDC), BorrowLend(account, "SOL", BORROW, BORROW_SOL)]
        funding += [Deposit(ADMIN, account, "USDC", DEPOSIT_USDC), Deposit(ADMIN, account, "SOL", DEPOSIT_SOL)]
    return funding, borrows


async def sweep_all(chain: Chain) -> None:
    """Blocks at second boundaries until the sweep lends (a balance is lent once it was
    idle a whole interval), then as many blocks as it takes (``loans.SWEEP_MAX`` accounts
    a block)."""
    for _ in range(3):
        events = await chain.block([], SECOND_US)
        if any(e.__class__ is LendMoved for e in events):
            break
    while any(e.__class__ is LendMoved for e in events):
        events = await chain.block([])


async def setup_lending(chain: Chain, n: int) -> None:
    funding, borrows = lending_accounts(n)
    refused = await chain.blocks(funding)
    await sweep_all(chain)  # the sweep lends the lenders' deposits
    refused += await chain.blocks(borrows)
    if refused:
        raise RuntimeError(f"lending setup refused {len(refused)} transactions, e.g. {refused[0]}")
    await chain.block([], SECOND_US)


async def setup_traders(chain: Chain, auto_lend: bool) -> None:
    txs: list = []
    for i in range(TRADERS):
        account = f"acct{i}"
        if not auto_lend:
            txs.append(SetLeverage(account, 0, auto_lend=0))
        txs += [Deposit(ADMIN, account, asset, TRADER_DEPOSIT) for asset in ("USDC", "SOL", "ETH", "BTC")]
    await chain.blocks(txs)
    await sweep_all(chain)  # with auto-lend on, the traders' balances are lent now


async def conserved(chain: Chain) -> bool:
    """Balances + fees + pools' cash (+ insurance - unsettled) = deposits, every pool solvent."""
    engine = chain.engine
    deposits = {d.asset: d.amount for d in (await engine.risk.call(StateOf())).deposits}
    return await engine.risk.call(Totals()) == deposits and all(
        pools.solvent(p) for p in await engine.lending.call(PoolsOf()))


@dataclass
class SpotRun:
    rate: float  # tx/s
    cpu_rate: float  # tx per CPU second
    blocks: int
    rejected: int
    lend_moves: int  # LendMoved events during the stream (the sweep's lends, the orders' redeems)
    sweep_block_us: list[float] = field(default_factory=list)  # blocks in which the sweep ran
    other_block_us: list[float] = field(default_factory=list)
    conserved: bool = False


async def _spot(stream: list, auto_lend: bool, lenders: int, sign) -> SpotRun:
    async with trio.open_nursery() as nursery:
        chain = await genesis(nursery)
        await setup_traders(chain, auto_lend)
        if lenders:
            await setup_lending(chain, lenders)
        txs = sign(stream, chain.seq)
        blocks = [txs[i:i + BLOCK_TXS] for i in range(0, len(txs), BLOCK_TXS)]
        engine = chain.engine
        seq, ts = chain.seq, chain.ts
        times: list[float] = []
        outs: list[list] = []
        clock, cpu = time.perf_counter, time.process_time
        t0, c0 = clock(), cpu()
        for block in blocks:
            ts += BLOCK_US
            t = clock()
            outs.append(await engine.apply(seq, ts, block))
            times.append(clock() - t)
            seq += len(block)
        dt, dc = clock() - t0, cpu() - c0
        chain.seq, chain.ts = seq, ts
        run = SpotRun(len(txs) / dt, len(txs) / dc, len(blocks), 0, 0)
        start = ts - BLOCK_US * len(blocks)
        for k, (events, us) in enumerate(zip(outs, times)):
            run.rejected += sum(1 for e in events if e.__class__ is TxRejected)
            run.lend_moves += sum(1 for e in events if e.__class__ is LendMoved)
            block_ts = start + (k + 1) * BLOCK_US
            swept = block_ts // SECOND_US > (block_ts - BLOCK_US) // SECOND_US  # a second boundary: the sweep
            (run.sweep_block_us if swept else run.other_block_us).append(us * 1e6)
        run.conserved = await conserved(chain)
        nursery.cancel_scope.cancel()
    return run


def run_spot(stream: list, auto_lend: bool, lenders: int, sign) -> SpotRun:
    return trio.run(_spot, stream, auto_lend, lenders, sign)


@dataclass
class AccrualRun:
    accounts: int
    accrue_us: list[float] = field(default_factory=list)  # Accrue + UsePools + PoolsUsed + CommitPools
    empty_us: list[float] = field(default_factory=list)  # a whole block without transactions
    marked_us: list[float] = field(default_factory=list)  # a block with one SetIndex (the SOL mark moves)
    sweep_us: list[float] = field(default_factory=list)  # the empty blocks whose sweep lends every lender's new deposit
    sweep_largest_us: list[float] = field(default_factory=list)  # the largest of them
    sweep_blocks: int = 0  # how many blocks it took
    second_us: list[float] = field(default_factory=list)  # an empty block at a second boundary, nothing to sweep
    utilization: dict[str, float] = field(default_factory=dict)
    debtors: int = 0


async def _accruals(steps: tuple[int, ...], blocks: int) -> list[AccrualRun]:
    """One engine per account count, all alive at once and measured in turn, block after
    block, so that whatever else the machine does falls on all of them alike (the sweeps,
    which make much garbage, one engine after the other)."""
    async with trio.open_nursery() as nursery:
        chains, runs = [], []
        for n in steps:
            chain = await genesis(nursery)
            await setup_lending(chain, n)
            chains.append(chain)
            runs.append(AccrualRun(n, debtors=n // BORROWER_EVERY))
        clock = time.perf_counter
        for k in range(blocks):
            for chain, run in zip(chains, runs):
                lending, risk = chain.engine.lending, chain.engine.risk
                # the accrual and commit that Engine.apply runs for a block, alone
                chain.ts += BLOCK_US
                t = clock()
                await risk.call(UsePools(await lending.call(Accrue(chain.ts))))
                await lending.call(CommitPools(await risk.call(PoolsUsed()), chain.ts, chain.seq - 1))
                run.accrue_us.append((clock() - t) * 1e6)
                t = clock()
                await chain.block([])
                run.empty_us.append((clock() - t) * 1e6)
                price = SOL_INDEX + (1 if k % 2 else -1)  # the mark moves every time
                t = clock()
                await chain.block([SetIndex(ADMIN, SOL_PERP, price)])
                run.marked_us.append((clock() - t) * 1e6)
        for chain, run in zip(chains, runs):  # one engine after the other: its garbage is collected in its own timing
            lenders = [f"lend{i}" for i in range(run.accounts) if i % BORROWER_EVERY != BORROWER_EVERY - 1]
            for _ in range(SWEEPS):
                # a block at a second boundary with nothing to sweep (the once-a-second work:
                # pool figures, PnL settlement...); then the lenders get a deposit, and the
                # block at the next boundary sweeps them: one lend each
                chain.ts = (chain.ts // SECOND_US + 1) * SECOND_US - BLOCK_US
                t = clock()
                await chain.block([])
                run.second_us.append((clock() - t) * 1e6)
                await chain.blocks([Deposit(ADMIN, a, "USDC", SWEPT_USDC) for a in lenders], len(lenders))
                # the sweep handles loans.SWEEP_MAX accounts a block: timed over the blocks it
                # takes, and its largest block (what an order beside it waits for)
                # (a balance is lent once idle a whole interval: blocks pass until then)
                total = largest = 0.0
                lent = blocks = 0
                dt = (chain.ts // SECOND_US + 1) * SECOND_US - chain.ts
                while lent < len(lenders):
                    t = clock()
                    moved = sum(1 for e in await chain.block([], dt) if e.__class__ is LendMoved)
                    spent, dt = clock() - t, BLOCK_US
                    if moved:
                        lent, blocks, total, largest = lent + moved, blocks + 1, total + spent, max(largest, spent)
                run.sweep_us.append(total * 1e6)
                run.sweep_largest_us.append(largest * 1e6)
                run.sweep_blocks = blocks
                assert lent == len(lenders)
        for chain, run in zip(chains, runs):
            for p in await chain.engine.lending.call(PoolsOf()):
                if p.borrowed_scaled:
                    run.utilization[p.spec.asset] = pools.pool_utilization(p) / pools.PPB
        nursery.cancel_scope.cancel()
    return runs


def run_accruals(steps: tuple[int, ...], blocks: int) -> list[AccrualRun]:
    return trio.run(_accruals, steps, blocks)


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(stream: list, sign, runs: int, lenders: int, accrual_blocks: int) -> None:
    """Print the spot variants' tx/s (medians over ``runs``, alternating; none with 0) and
    the accrual figures per account count."""
    tune_gc()  # as the node runs
    variants = (("auto-lend off", False, 0), ("auto-lend on", True, 0), (f"auto-lend off + {lenders:,} lending", False, lenders))
    print(f"lending: {len(stream):,} spot transactions in blocks of {BLOCK_TXS:,}, {BLOCK_US / 1000:g} ms of sequenced "
          f"time each (the sweep every {SECOND_US // BLOCK_US} blocks); the engine driven directly, no journal")
    results: dict[str, list[SpotRun]] = {name: [] for name, *_ in variants}
    for i in range(runs):
        for name, auto_lend, n in variants:
            r = run_spot(stream, auto_lend, n, sign)
            results[name].append(r)
            print(f"  run {i + 1} spot, {name}: {r.rate:,.0f} tx/s ({r.cpu_rate:,.0f} per CPU-s); {r.blocks} blocks, "
                  f"{r.rejected:,} refused, {r.lend_moves:,} lend movements; block median {_med(r.other_block_us):,.0f} us, "
                  f"with the sweep {_med(r.sweep_block_us):,.0f} us; conserved {r.conserved}", flush=True)
    base = results[variants[0][0]]
    for name, *_ in variants if runs else ():
        rs = results[name]
        rate = statistics.median(r.rate for r in rs)
        cpu = statistics.median(r.cpu_rate for r in rs)
        # each run's variants ran back to back: their ratio is steadier than the medians'
        paired = statistics.median(r.cpu_rate / b.cpu_rate for r, b in zip(rs, base))
        sweep = statistics.median(_med(r.sweep_block_us) for r in rs)
        other = statistics.median(_med(r.other_block_us) for r in rs)
        print(f"engine spot, {name}: median {rate:,.0f} tx/s ({cpu:,.0f} per CPU-s) over {runs} runs; per run "
              f"{paired:.0%} of auto-lend off's tx per CPU-s (median); block median {other:,.0f} us, with the sweep "
              f"{sweep:,.0f} us")
    print(f"accrual per block ({accrual_blocks} blocks each, the account counts in turn; a borrower in {BORROWER_EVERY}):")
    rows = run_accruals(ACCOUNT_STEPS, accrual_blocks)
    for r in rows:
        n = r.accounts
        util = ", ".join(f"{a} U {u:.0%}" for a, u in sorted(r.utilization.items()))
        print(f"  {n:>6,} lending accounts ({r.debtors:,} borrowing; {util}): accrue + commit {_med(r.accrue_us):,.1f} us, "
              f"empty block {_med(r.empty_us):,.1f} us, block moving the SOL mark {_med(r.marked_us):,.1f} us; "
              f"block at a second boundary {_med(r.second_us):,.0f} us; a sweep lending {n - r.debtors:,} new deposits "
              f"{_med(r.sweep_us):,.0f} us over {r.sweep_blocks} blocks (the largest {_med(r.sweep_largest_us):,.0f} us)")
    lo, mid, hi = rows[0], rows[-2], rows[-1]
    debtors = hi.debtors - mid.debtors
    swept = (hi.accounts - hi.debtors) - (mid.accounts - mid.debtors)
    print(f"accrual {hi.accounts:,} / {lo.accounts:,} accounts: accrue + commit x{_med(hi.accrue_us) / _med(lo.accrue_us):.2f}, "
          f"empty block x{_med(hi.empty_us) / _med(lo.empty_us):.2f} (indices: no per-account work); from "
          f"{mid.accounts:,} to {hi.accounts:,} accounts a moved mark costs "
          f"{(_med(hi.marked_us) - _med(mid.marked_us)) / debtors:.1f} us more per debtor (each debtor's margin is "
          f"re-checked), the sweep {(_med(hi.sweep_us) - _med(mid.sweep_us)) / swept:.1f} us more per account it lends for")
