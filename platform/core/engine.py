"""The deterministic engine: applies a block's transactions through the actors in phases.

For each block (DESIGN §2):

0. guard -- signed transactions outside their validity window, or whose signature was
   already seen, are rejected (``EXPIRED`` / ``DUPLICATE_REQUEST``); admin transactions
   must name the admin key;
1. pre-trade -- the margin actor credits deposits, holds funds for new spot orders and
   checks perp orders against initial margin;
2. matching -- each market's book actor matches its share, all markets concurrently;
3. settlement -- the margin actor applies fills (balances, positions) and releases holds;
4. periodic, once per block after every part -- the funding actor samples premiums and
   moves marks (``Mark``); the margin actor pays funding, settles PnL, checks maintenance
   and fires triggers (``Remark``); the liquidation and trigger orders it generates run
   through phases 1-3 again, then the margin actor escalates what the book could not
   resolve (``Escalate``). Other periodic actors (``periodic=``) are ticked too.

Configuration transactions (listing an asset or a market) take effect exactly at their
sequence number: the block is split around them and the phases run for each part.
A consequence users should know: an order's pre-trade check sees the balances as of
the start of its part of the block, so funds received from a fill earlier in the same
block are not yet spendable; this is deterministic because block boundaries are in
the journal.

The engine's output for a block is its event list; the hash of its msgpack encoding is
the block's event commitment. ``state_hash`` is sha256 over a canonical serialization
of every actor's state.

Nothing here reads a clock, randomness, the environment or files: time is the block's
timestamp, the only input is the block.
"""

from __future__ import annotations

import hashlib
from heapq import heapify, heappop, heappush
from operator import attrgetter
from typing import Any

import msgspec
import trio

from satchel.core.amounts import MAX_UNITS
from satchel.core.actor import Actor, Mailbox, spawn
from satchel.core.instructions import INSTRUCTIONS
from satchel.actors.book import Book
from satchel.actors.funding import Funding
from satchel.actors.lending import Lending
from satchel.core import lending
from satchel.actors.margin import Margin
from satchel.actors.rewards import Rewards
from satchel.core.errors import Code
from satchel.core.state import EngineState, PeriodicState, SeenSignature
from satchel.core.messages import (
    Accrue,
    ApproveSweep,
    ChainCommand,
    ChainStatus,
    CommitPools,
    ComplianceCommand,
    Transfer,
    AccruePoints,
    Fill,
    LendMoved,
    ReferralCode,
    RewardsCommand,
    SetMultiplier,
    SetSeason,
    UseReferral,
    SetProfile,
    SetRule,
    SetTierLimits,
    SetChain,
    Escalate,
    PoolsOf,
    UsePools,
    ListLendingSpec,
    PoolsUsed,
    SetLending,
    ListMarginSpec,
    Mark,
    MarkPrice,
    Remark,
    SetIndex,
    SetMargin,
    ConfigChanged,
    Deposit,
    ListAsset,
    ListAssetSpec,
    ListMarket,
    ListMarketSpec,
    MarginSpec,
    Match,
    MarketSpec,
    PreTrade,
    Query,
    Restore,
    SetAdmin,
    SetPermission,
    Settle,
    StateHashOf,
    StateOf,
    SetFees,
    SetTrading,
    Tick,
    TxRejected,
    events_encoder,
)

RULES_VERSION = 15  # 4: batch orders (one signature covers several transactions); 5: lending pools;
# 6: accounts lend and borrow (borrowLendExecute, spot-margin order flags, auto-lend); 7: chains (deposits,
# withdrawals, custody books); 8: a depositConfirmed carries a block's deposits under one signature;
# 9: compliance (KYC profiles, tier limits, product and market rules), rewards (seasons, points, referrals);
# 10: a report's record may leave out its items' texts, rebuilt from the transaction (``instructions.full_auth``);
# custody moves stay open in the books until the adapter reports them done (``MoveDone``);
# 11: a chain the admin paused is resumed only by the admin (``ChainState.paused_by``); refusals of
# withdrawals, sweeps and transfers name amounts in the asset's units ("cannot withdraw 301 USDC"); a
# chain's deposits keep an asset's total below MAX_UNITS; an account has at most 16 withdrawals on their way
# 12: an account's reduce-only orders on a side together close at most its position; this block's
# orders count toward the open-interest limit; open spot bids count in the initial requirement as the
# conversion they become; money held for a withdrawal is not collateral; a trigger order needs equity,
# and an account holds at most 1,000 pending in a market
# 13: an account's own borrows stop at the pool's max_utilization (LendingSpec.max_utilization)
# 14: a perp order's loss against the mark counts: a limit order's at its price (initial margin for one
# adding risk, equity for one reducing it), a market order's fills stop where its margin is spent
# 15: the auto-lend sweep lends for no account compliance denies lending
# Longest validity window a signed request may ask for (Backpack's maximum). Part of
# the rules, not the configuration: replay must judge windows exactly as the node did.
MAX_WINDOW_MS = 60_000

_by_seq = attrgetter("seq")
_state_encoder = msgspec.msgpack.Encoder()


class Guard:
    """Validity windows and replay protection for signed transactions (engine state).

    A signature is remembered only until its own window closes (timestamp + window):
    after that a replay is refused as EXPIRED anyway. So memory is bounded by the
    requests of the last window, not by a fixed horizon; a min-heap of expiries makes
    forgetting O(log n) per signature.
    """

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}  # signature -> expiry (ms)
        self._expiries: list[tuple[int, bytes]] = []

    def check(self, auth: Any, now_ms: int, max_window_ms: int) -> str | None:
        if auth.window <= 0 or auth.window > max_window_ms:
            return Code.INVALID_WINDOW
        expiry = auth.timestamp + auth.window
        if expiry < now_ms or auth.timestamp - max_window_ms > now_ms:
            return Code.EXPIRED
        sig = auth.signature
        if auth.batch:  # one signature, many transactions: each item is its own request
            sig += auth.item.to_bytes(2, "big")
        if sig in self._seen:
            return Code.DUPLICATE_REQUEST
        self._seen[sig] = expiry
        heappush(self._expiries, (expiry, sig))
        return None

    def expire(self, now_ms: int) -> None:
        heap = self._expiries
        seen = self._seen
        while heap and heap[0][0] < now_ms:
            del seen[heappop(heap)[1]]

    def canonical(self) -> list[SeenSignature]:
        return [SeenSignature(sig, expiry) for sig, expiry in sorted(self._seen.items())]

    def restore(self, state: list[SeenSignature]) -> None:
        self._seen = {s.signature: s.expiry for s in state}
        self._expiries = [(s.expiry, s.signature) for s in state]
        heapify(self._expiries)

    def __len__(self) -> int:
        return len(self._seen)


class _Work:
    """One pass of a block part through the phases: what each phase hands the next."""

    __slots__ = ("batch", "timestamp", "routed", "events", "deltas", "settled")

    def __init__(self, batch: list, timestamp: int):
        self.batch = batch  # (seq, tx) in sequence order
        self.timestamp = timestamp
        self.routed: dict = {}
        self.events: list = []  # pre-trade and matching events, in (sequence, fill) order
        self.deltas: list = []
        self.settled: list = []


# Transactions that go through the trading phases; the rest change the configuration.
_PHASED = frozenset(i.tx for i in INSTRUCTIONS if i.phase == "trade")
# Engine-generated transactions (liquidations, ...) are numbered from here, apart from
# the journal's sequence numbers, so their order ids never collide with a user's.
INTERNAL_SEQ_BASE = 1 << 61


class Engine:
    """Owns the actors; ``apply`` is the state-transition function of one block."""

    def __init__(self, nursery: trio.Nursery, periodic: dict[str, Actor] | None = None):
        self._nursery = nursery
        self.admin: str | None = None
        self.margin: MarginSpec | None = None
        self.assets: dict[str, Any] = {}
        self.markets: dict[str, Any] = {}
        self.risk = spawn(nursery, "risk", Margin())  # the margin engine; reached only through its mailbox
        self.funding = spawn(nursery, "funding", Funding())
        self.lending = spawn(nursery, "lending", Lending())
        self.lending_on = False  # a pool is listed: blocks accrue and commit interest
        self.rewards = spawn(nursery, "rewards", Rewards())  # seasons, points, achievements, referrals
        self.rewards_on = False  # a season is set: blocks' fills accrue points
        self.height = 0  # the last block applied
        self.chains: dict[str, Any] = {}  # name -> ChainSpec (who may pause a chain)
        self._block_ts = 0
        self.books: dict[str, Mailbox] = {}
        self.marks: dict[str, int] = {}  # perp -> mark, as the funding actor last set it (books' price bands)
        self._tops: dict[str, tuple] = {}  # perp -> (bid, ask, last) of books matched in this block
        # actors ticked once per block after the trading phases (funding, lending, liquidation)
        self.periodic = {name: spawn(nursery, name, actor) for name, actor in sorted((periodic or {}).items())}
        self._guard = Guard()
        self.last_seq = 0
        self.last_timestamp = 0
        self.internal_seq = INTERNAL_SEQ_BASE
        # The phases of a block part, in order (DESIGN §2): new actors add rows here.
        self._phases = (self._pretrade, self._match, self._settle)

    async def apply(self, first_seq: int, timestamp_us: int, txs: list, height: int | None = None) -> list:
        """Apply one block (``height``: the next one unless given); returns its events in deterministic order."""
        self.height = self.height + 1 if height is None else height
        now_ms = timestamp_us // 1000
        guard = self._guard
        guard.expire(now_ms)
        events: list = []
        self._block_ts = timestamp_us
        if self.lending_on:  # interest to this block's time, at the rates set after the last one
            await self.risk.call(UsePools(await self.lending.call(Accrue(timestamp_us))))
        part: list[tuple[int, Any]] = []
        indexes: list = []  # the block's oracle index updates, in sequence order
        seq = first_seq
        for tx in txs:
            cls = tx.__class__
            auth = tx.auth
            if auth is not None:
                err = guard.check(auth, now_ms, MAX_WINDOW_MS)
                if err:
                    events.append(TxRejected(seq, getattr(tx, "account", ""), err, _GUARD_MESSAGES[err]))
                    seq += 1
                    continue
            if cls in _PHASED:
                if (cls is Deposit or cls is Transfer) and tx.admin != self.admin:
                    events.append(TxRejected(seq, getattr(tx, "account", tx.admin), Code.UNAUTHORIZED,
                                             f"{cls.__name__} not signed by the admin key"))
                else:
                    part.append((seq, tx))
            elif cls is SetIndex:
                # prices move in the periodic phase, once per block: an index update needs no
                # split of the block (pre-trade values orders at the marks of the block before)
                err = self._index_error(tx)
                if err:
                    events.append(TxRejected(seq, tx.admin, *err))
                else:
                    indexes.append(tx)
            else:
                # a configuration change takes effect exactly at its sequence number
                if part:
                    await self._run_phases(part, events, timestamp_us)
                    part = []
                await self._configure(seq, tx, events)
            seq += 1
        if part:
            await self._run_phases(part, events, timestamp_us)
        await self._tick(events, timestamp_us, seq - 1, indexes)
        if self.lending_on:
            await self._commit_pools(seq - 1, events)
        self.last_seq = seq - 1
        self.last_timestamp = timestamp_us
        return events

    async def _run_phases(self, part: list, events: list, timestamp_us: int) -> None:
        work = _Work(part, timestamp_us)
        for phase in self._phases:
            await phase(work)
        events.extend(work.events)
        events.extend(work.deltas)
        events.extend(work.settled)
        if self.rewards_on:  # points from what the phases produced: O(fills + accounts touched)
            await self._accrue(events, timestamp_us, work.batch[-1][0], work.events, work.settled)

    async def _pretrade(self, work: _Work) -> None:
        reply = await self.risk.call(PreTrade(work.batch, work.timestamp))
        work.routed = reply.routed
        work.events = reply.events

    async def _match(self, work: _Work) -> None:
        routed = work.routed
        # fan out to every book with work, gather in listing order
        active = [sym for sym in self.markets if sym in routed]
        if not active:
            return
        marks = self.marks
        for sym in active:
            await self.books[sym].send(Match(routed[sym], work.timestamp, marks.get(sym, 0)))
        outs = [work.events]
        for sym in active:
            matched = await self.books[sym].receive()
            outs.append(matched.events)
            if matched.delta is not None:
                work.deltas.append(matched.delta)
            if self.markets[sym].perp is not None:
                self._tops[sym] = matched.top
        # each list is already in sequence order: a stable sort of the concatenation
        # merges the runs in C (faster than heapq.merge's generator)
        merged = [ev for out in outs for ev in out]
        merged.sort(key=_by_seq)
        work.events = merged

    async def _settle(self, work: _Work) -> None:
        work.settled = (await self.risk.call(Settle(work.events, work.batch[-1][0]))).events

    async def _accrue(self, events: list, timestamp_us: int, seq: int, *produced: list) -> None:
        """The rewards actor's share of what the phases produced: fills and lending movements."""
        fills: list = []
        moves: list = []
        for out in produced:
            for ev in out:
                cls = ev.__class__
                if cls is Fill:
                    fills.append(ev)
                elif cls is LendMoved:
                    moves.append(ev)
        if fills or moves:
            events.extend(await self.rewards.call(AccruePoints(self.height, timestamp_us, seq, fills, moves)))

    async def _tick(self, events: list, timestamp_us: int, last_seq: int, indexes: list) -> None:
        """The periodic phase: marks and funding, then margin (funding payments, PnL
        settlement, maintenance, triggers), then other periodic actors; the orders they
        generate go through the trading phases again within this block, and the margin
        actor escalates what they could not resolve."""
        previous = self.last_timestamp
        marked = await self.funding.call(Mark(timestamp_us, previous, last_seq, self._tops, indexes))
        self._tops = {}
        events.extend(marked.events)
        for sym, view in marked.marks.items():
            self.marks[sym] = view.mark
        prices = [ev for ev in marked.events if ev.__class__ is MarkPrice]
        ticked = await self.risk.call(Remark(timestamp_us, previous, last_seq, marked.marks, marked.funding, prices))
        events.extend(ticked.events)
        if self.rewards_on:  # the auto-lend sweep's movements
            await self._accrue(events, timestamp_us, last_seq, ticked.events)
        orders: list = list(ticked.orders)
        for box in self.periodic.values():
            other = await box.call(Tick(timestamp_us, previous))
            events.extend(other.events)
            orders.extend(other.orders)
        if orders:
            part = []
            for item in orders:
                if item.__class__ is tuple:  # a trigger keeps its order id
                    part.append(item)
                else:
                    self.internal_seq += 1
                    part.append((self.internal_seq, item))
            await self._run_phases(part, events, timestamp_us)
        if orders or ticked.more:
            events.extend((await self.risk.call(Escalate(last_seq, timestamp_us))).events)

    # ------------------------------------------------------------------ configuration

    async def _configure(self, seq: int, tx: Any, events: list) -> None:
        if tx.__class__ is ChainStatus:  # the chain's adapter may sign it too
            await self._chain_status(seq, tx, events)
            return
        if tx.__class__ is ReferralCode or tx.__class__ is UseReferral:  # an account's own, at its sequence number
            await self._rewards(seq, tx, events)
            return
        if tx.__class__ is not SetAdmin and tx.admin != self.admin:
            events.append(TxRejected(seq, tx.admin, Code.UNAUTHORIZED, "Not signed by the admin key"))
            return
        await _CONFIGURE[tx.__class__](self, seq, tx, events)

    async def _set_admin(self, seq: int, tx: SetAdmin, events: list) -> None:
        if self.admin is not None:
            events.append(TxRejected(seq, tx.key, Code.UNAUTHORIZED, "Admin key is already set"))
            return
        self.admin = tx.key
        events.append(ConfigChanged(seq, "admin", tx.key))

    async def _list_asset(self, seq: int, tx: ListAsset, events: list) -> None:
        self.assets[tx.spec.symbol] = tx.spec
        await self.risk.call(ListAssetSpec(tx.spec))
        await self.rewards.call(ListAssetSpec(tx.spec))
        events.append(ConfigChanged(seq, "asset", tx.spec.symbol, asset=tx.spec))

    async def _list_market(self, seq: int, tx: ListMarket, events: list) -> None:
        spec = tx.spec
        if spec.base not in self.assets or spec.quote not in self.assets or spec.symbol in self.markets:
            events.append(TxRejected(seq, tx.admin, Code.INVALID_MARKET, f"Cannot list {spec.symbol}"))
            return
        await self._add_market(spec)
        events.append(ConfigChanged(seq, "market", spec.symbol, market=spec))

    async def _add_market(self, spec: MarketSpec) -> None:
        self.markets[spec.symbol] = spec
        await self.risk.call(ListMarketSpec(spec))
        await self.funding.call(ListMarketSpec(spec))
        await self.rewards.call(ListMarketSpec(spec))
        self.books[spec.symbol] = spawn(self._nursery, f"book:{spec.symbol}", Book(spec))

    async def _set_margin(self, seq: int, tx: SetMargin, events: list) -> None:
        spec = tx.spec
        if spec.settlement_asset not in self.assets or spec.autoclose_divisor < 0 or spec.settle_interval_us <= 0 \
                or spec.sample_interval_us <= 0 or spec.open_interest_interval_us <= 0:
            events.append(TxRejected(seq, tx.admin, Code.INVALID_MARKET, "Bad margin rules"))
            return
        self.margin = spec
        await self.risk.call(ListMarginSpec(spec))
        await self.funding.call(ListMarginSpec(spec))
        events.append(ConfigChanged(seq, "margin", spec.settlement_asset, margin=spec))

    async def _set_lending(self, seq: int, tx: SetLending, events: list) -> None:
        spec = tx.spec
        problem = lending.spec_problem(spec) if spec.asset in self.assets else f"Unknown asset {spec.asset}"
        if problem:
            events.append(TxRejected(seq, tx.admin, Code.INVALID_ASSET, problem))
            return
        if self.lending_on:  # the block's movements so far belong to the old curve
            await self._commit_pools(seq, events)
        await self.lending.call(Accrue(self._block_ts))
        events.extend(await self.lending.call(ListLendingSpec(spec, seq)))
        self.lending_on = True
        await self.risk.call(UsePools(await self.lending.call(PoolsOf())))
        events.append(ConfigChanged(seq, "lending", spec.asset, lending=spec))

    async def _commit_pools(self, seq: int, events: list) -> None:
        """The pools the margin engine changed go back to the lending actor, which keeps
        them and sets the rates the next block accrues at."""
        changed = await self.risk.call(PoolsUsed())
        events.extend(await self.lending.call(CommitPools(changed, self._block_ts, seq)))

    async def _set_chain(self, seq: int, tx: SetChain, events: list) -> None:
        spec = tx.spec
        unknown = [a for a in spec.assets if a not in self.assets]
        if not spec.name or not spec.adapter or unknown or spec.confirmations < 0 or not spec.assets or any(
                a not in spec.assets or v < 0 for a, v in spec.hot_limit):
            events.append(TxRejected(seq, tx.admin, Code.INVALID_CHAIN, f"Bad chain spec {spec.name} (unknown assets {unknown})"))
            return
        self.chains[spec.name] = spec
        events.extend(await self.risk.call(ChainCommand(seq, tx, self._block_ts)))
        events.append(ConfigChanged(seq, "chain", spec.name, chain=spec))

    async def _chain_status(self, seq: int, tx: ChainStatus, events: list) -> None:
        spec = self.chains.get(tx.chain)
        if spec is None:
            events.append(TxRejected(seq, tx.signer, Code.INVALID_CHAIN, f"Unknown chain {tx.chain}"))
        elif tx.signer not in (self.admin, spec.adapter):
            events.append(TxRejected(seq, tx.signer, Code.UNAUTHORIZED, f"Not signed by the admin or {tx.chain}'s adapter"))
        else:
            events.extend(await self.risk.call(ChainCommand(seq, tx, self._block_ts)))

    async def _compliance(self, seq: int, tx: SetProfile | SetTierLimits | SetRule, events: list) -> None:
        events.extend(await self.risk.call(ComplianceCommand(seq, tx)))
        if tx.__class__ is SetProfile:  # its tags name communities for points multipliers
            await self.rewards.call(RewardsCommand(seq, self.height, self._block_ts, tx))

    async def _rewards(self, seq: int, tx: Any, events: list) -> None:
        answer = await self.rewards.call(RewardsCommand(seq, self.height, self._block_ts, tx))
        events.extend(answer)
        if tx.__class__ is SetSeason and answer and answer[0].__class__ is not TxRejected:
            self.rewards_on = True

    async def _approve_sweep(self, seq: int, tx: ApproveSweep, events: list) -> None:
        if tx.chain not in self.chains:
            events.append(TxRejected(seq, tx.admin, Code.INVALID_CHAIN, f"Unknown chain {tx.chain}"))
            return
        events.extend(await self.risk.call(ChainCommand(seq, tx, self._block_ts)))

    def _index_error(self, tx: SetIndex) -> tuple[str, str] | None:
        if tx.admin != self.admin:
            return Code.UNAUTHORIZED, "Not signed by the admin key"
        spec = self.markets.get(tx.symbol)
        if spec is None or spec.perp is None or not 0 < tx.price < MAX_UNITS:
            return Code.INVALID_SYMBOL, f"{tx.symbol} is not a perpetual market"
        return None

    async def _set_trading(self, seq: int, tx: SetTrading, events: list) -> None:
        if (tx.symbol is not None and tx.symbol not in self.markets) or (tx.account is None and tx.symbol is None):
            events.append(TxRejected(seq, tx.admin, Code.INVALID_SYMBOL, "Unknown market"))
            return
        await self.risk.call(SetPermission(tx.account, tx.symbol, tx.enabled))
        what = "trading.on" if tx.enabled else "trading.off"
        events.append(ConfigChanged(seq, what, f"{tx.account or '*'}:{tx.symbol or '*'}"))

    async def _set_fees(self, seq: int, tx: SetFees, events: list) -> None:
        spec = self.markets.get(tx.symbol)
        if spec is None or tx.taker_fee_bps < 0 or tx.taker_fee_bps + tx.maker_fee_bps < 0 or tx.taker_fee_bps > 1000:
            events.append(TxRejected(seq, tx.admin, Code.INVALID_FEES, "Unknown market or fee schedule out of range"))
            return
        spec = msgspec.structs.replace(spec, maker_fee_bps=tx.maker_fee_bps, taker_fee_bps=tx.taker_fee_bps)
        self.markets[tx.symbol] = spec
        await self.risk.call(ListMarketSpec(spec))
        await self.books[tx.symbol].call(ListMarketSpec(spec))
        events.append(ConfigChanged(seq, "fees", tx.symbol, market=spec))

    # ------------------------------------------------------------------ reads

    async def ask(self, query: Query) -> Any:
        """Answer a typed query between blocks (the only way edges read engine state)."""
        target = query.target
        if target == "engine":
            if query.message.__class__ is StateHashOf:
                return await self.state_hash()
            raise ValueError(f"the engine does not answer {query.message.__class__.__name__}")
        box = {"risk": self.risk, "lending": self.lending, "rewards": self.rewards}.get(target) or self.books.get(target)
        if box is None:
            raise ValueError(f"no actor {target!r}")
        return await box.call(query.message)

    async def state_hash(self) -> str:
        return hashlib.sha256(_state_encoder.encode(await self.canonical())).hexdigest()

    async def canonical(self) -> EngineState:
        """All ledger state, named, with every collection in a fixed order: the state
        hash's input and a snapshot's content (``restore`` takes it back)."""
        return EngineState(
            rules_version=RULES_VERSION,
            admin=self.admin,
            margin=self.margin,
            assets=[self.assets[symbol] for symbol in sorted(self.assets)],
            # listing order matters (matching fans out in it), so it is kept, not sorted
            markets=list(self.markets.values()),
            risk=await self.risk.call(StateOf()),
            books=[await self.books[sym].call(StateOf()) for sym in sorted(self.books)],
            guard=self._guard.canonical(),
            last_seq=self.last_seq,
            last_timestamp=self.last_timestamp,
            internal_seq=self.internal_seq,
            periodic=[PeriodicState(name, await box.call(StateOf())) for name, box in self.periodic.items()],
            funding=await self.funding.call(StateOf()),
            lending=await self.lending.call(StateOf()),
            height=self.height,
            rewards=await self.rewards.call(StateOf()),
        )

    async def restore(self, state: EngineState) -> None:
        """Load a snapshot into a fresh engine (no blocks applied yet)."""
        if state.rules_version != RULES_VERSION:
            raise ValueError(f"snapshot has rules version {state.rules_version}; this code runs {RULES_VERSION}")
        self.admin = state.admin
        for spec in state.assets:
            self.assets[spec.symbol] = spec
            await self.risk.call(ListAssetSpec(spec))
            await self.rewards.call(ListAssetSpec(spec))
        for spec in state.markets:
            await self._add_market(spec)
        if state.margin is not None:
            self.margin = state.margin
            await self.risk.call(ListMarginSpec(state.margin))
            await self.funding.call(ListMarginSpec(state.margin))
        await self.risk.call(Restore(state.risk))
        custody = state.risk.margin.custody if state.risk.margin is not None else None
        if custody is not None:
            self.chains = {c.spec.name: c.spec for c in custody.chains}
        if state.funding is not None:
            await self.funding.call(Restore(state.funding))
            self.marks = {row.symbol: row.mark for row in state.funding.markets if row.mark}
        await self.lending.call(Restore(state.lending))
        if state.lending:
            self.lending_on = True
            await self.risk.call(UsePools(state.lending))
        for book_state in state.books:
            await self.books[book_state.symbol].call(Restore(book_state))
        for periodic in state.periodic:
            await self.periodic[periodic.name].call(Restore(periodic.state))
        self._guard.restore(state.guard)
        self.last_seq = state.last_seq
        self.last_timestamp = state.last_timestamp
        self.internal_seq = state.internal_seq
        self.height = state.height
        await self.rewards.call(Restore(state.rewards))
        self.rewards_on = bool(state.rewards and state.rewards.seasons)


_CONFIGURE = {
    SetAdmin: Engine._set_admin, ListAsset: Engine._list_asset, ListMarket: Engine._list_market,
    SetTrading: Engine._set_trading, SetFees: Engine._set_fees, SetMargin: Engine._set_margin,
    SetLending: Engine._set_lending, SetChain: Engine._set_chain, ApproveSweep: Engine._approve_sweep,
    SetProfile: Engine._compliance, SetTierLimits: Engine._compliance, SetRule: Engine._compliance,
    SetSeason: Engine._rewards, SetMultiplier: Engine._rewards,
}


_GUARD_MESSAGES = {
    Code.INVALID_WINDOW: "Window must be between 1 and the maximum window",
    Code.EXPIRED: "Request timestamp is outside its window",
    Code.DUPLICATE_REQUEST: "This signed request was already received",
}


def events_hash(events: list) -> bytes:
    """The block's commitment to the events it produced."""
    return hashlib.sha256(events_encoder.encode(events)).digest()
