"""The lending pool actor: one borrow/lend pool per asset (``core.lending``).

State: per asset its ``Pool`` -- the curve (``LendingSpec``, from genesis or an admin
``SetLending``), scaled lent and borrowed totals, the two cumulative indices, the pool's
cash and reserve, and the rates in force since the last change. Inputs, all sequenced:

* ``ListLendingSpec`` (configuration, at its sequence number): a new pool, or a new
  curve for an existing one after accruing at the old rates;
* ``Accrue`` (the periodic phase of every block): every pool accrues interest up to the
  block's time at the rates set by the previous change -- O(pools), never per account;
* ``PoolsOf`` (a read between blocks): the pools, for the edges' borrow-lend markets.

Accounts' own scaled positions belong to the margin engine (docs/ARCHITECTURE.md,
"Lending"); wiring ``borrowLendExecute`` through it is the next step of issue 10.
"""

from __future__ import annotations

from satchel.core import lending as pools
from satchel.core.actor import dispatcher
from satchel.core.messages import Accrue, ListLendingSpec, PoolsOf, Restore, StateOf


class Lending:
    def __init__(self) -> None:
        self.pools: dict[str, pools.Pool] = {}
        self.now = 0

    def _list(self, msg: ListLendingSpec) -> None:
        spec = msg.spec
        pool = self.pools.get(spec.asset)
        self.pools[spec.asset] = (pools.new_pool(spec, self.now) if pool is None
                                  else pools.set_spec(pool, spec, max(self.now, pool.last_us)))

    def _accrue(self, msg: Accrue) -> None:
        self.now = msg.timestamp
        for asset, pool in self.pools.items():
            if msg.timestamp > pool.last_us:
                self.pools[asset] = pools.accrue(pool, msg.timestamp)

    def _pools_of(self, msg: PoolsOf) -> list[pools.Pool]:
        return [self.pools[a] for a in sorted(self.pools)]

    def _state(self, msg: StateOf) -> list[pools.Pool]:
        return [self.pools[a] for a in sorted(self.pools)]

    def _restore(self, msg: Restore) -> None:
        self.pools = {p.spec.asset: p for p in msg.state}
        self.now = max((p.last_us for p in msg.state), default=0)

    handle = dispatcher({
        ListLendingSpec: _list, Accrue: _accrue, PoolsOf: _pools_of, StateOf: _state, Restore: _restore,
    })
