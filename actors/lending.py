"""The lending pool actor: one borrow/lend pool per asset (``core.lending``).

State: per asset its ``Pool`` -- the curve (``LendingSpec``, from genesis or an admin
``SetLending``), scaled lent and borrowed totals, the two cumulative indices, the pool's
cash and reserve, and the rates in force since the last change. Inputs, all sequenced:

* ``ListLendingSpec`` (configuration, at its sequence number): a new pool, or a new
  curve for an existing one after accruing at the old rates;
* ``Accrue`` (before a block's trading phases): every pool accrues interest up to the
  block's time at the rates set after the previous block -- O(pools), never per
  account -- and the margin engine gets the pools to work on for the block;
* ``CommitPools`` (the block's end): the pools the block changed (lends, borrows, ...)
  are kept and repriced for their new utilization; once per second of sequenced time
  every pool's figures go out as a ``PoolUpdate`` event;
* ``PoolsOf`` (a read between blocks): the pools, for the edges' borrow-lend markets.

Accounts' own scaled positions belong to the margin engine (``actors.loans``).
"""

from __future__ import annotations

from satchel.core import lending as pools
from satchel.core.actor import dispatcher
from satchel.core.messages import Accrue, CommitPools, ListLendingSpec, PoolUpdate, PoolsOf, Restore, StateOf

SECOND_US = 1_000_000


def update(seq: int, pool: pools.Pool, timestamp: int) -> PoolUpdate:
    return PoolUpdate(seq, pool.spec.asset, pools.lent_total(pool), pools.borrowed_total(pool), pool.cash, pool.reserve,
                      pools.pool_utilization(pool), pool.borrow_rate, pool.lend_rate, pool.lend_index, pool.borrow_index,
                      timestamp)


class Lending:
    def __init__(self) -> None:
        self.pools: dict[str, pools.Pool] = {}
        self.now = 0
        self.reported = 0  # the second of sequenced time whose figures went out last

    def _list(self, msg: ListLendingSpec) -> list[PoolUpdate]:
        spec = msg.spec
        pool = self.pools.get(spec.asset)
        pool = self.pools[spec.asset] = (pools.new_pool(spec, self.now) if pool is None
                                         else pools.set_spec(pool, spec, max(self.now, pool.last_us)))
        return [update(msg.seq, pool, self.now)]

    def _accrue(self, msg: Accrue) -> list[pools.Pool]:
        self.now = max(self.now, msg.timestamp)
        for asset, pool in self.pools.items():
            if msg.timestamp > pool.last_us:
                self.pools[asset] = pools.accrue(pool, msg.timestamp)
        return [self.pools[a] for a in sorted(self.pools)]

    def _commit(self, msg: CommitPools) -> list[PoolUpdate]:
        for pool in msg.pools:
            self.pools[pool.spec.asset] = pools.reprice(pool)
        second = msg.timestamp // SECOND_US
        if second <= self.reported:
            return []
        self.reported = second
        return [update(msg.last_seq, self.pools[a], msg.timestamp) for a in sorted(self.pools)]

    def _pools_of(self, msg: PoolsOf) -> list[pools.Pool]:
        return [self.pools[a] for a in sorted(self.pools)]

    def _state(self, msg: StateOf) -> list[pools.Pool]:
        return [self.pools[a] for a in sorted(self.pools)]

    def _restore(self, msg: Restore) -> None:
        self.pools = {p.spec.asset: p for p in msg.state}
        self.now = max((p.last_us for p in msg.state), default=0)
        self.reported = self.now // SECOND_US

    handle = dispatcher({
        ListLendingSpec: _list, Accrue: _accrue, CommitPools: _commit, PoolsOf: _pools_of, StateOf: _state, Restore: _restore,
    })
