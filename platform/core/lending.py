"""The borrow/lend pool's arithmetic: rate curve, interest indices, scaled balances.

Pure functions over small frozen records, integers only: amounts in the asset's smallest
unit, rates and fractions in parts per billion (``PPB``), times in microseconds of
sequenced time, interest indices in fixed point with ``RAY = 10**18`` (1.0). The pool
actor (and the margin engine it serves) call these; nothing here keeps state of its own.

**Utilization.** ``U = borrowed / supplied`` where *supplied* is what the pool holds or is
owed: ``cash + borrowed`` (= the lenders' claims plus the reserve, see the invariant). It is
taken from the exact debt ``B * borrow_index / RAY`` and floored, so ``0 <= U <= PPB``:
0 when nothing is supplied, ``PPB`` exactly when the pool has no cash left.

**Rates** (annual, PPB). Below the kink ``borrow = base + ceil(slope1 * U / optimal)``;
above it ``borrow = base + slope1 + ceil(slope2 * (U - optimal) / (PPB - optimal))``. Both
divisions round **up** (borrowers never pay less than the curve); the curve is
non-decreasing in U and continuous at the kink (``U = optimal`` gives ``base + slope1``
on both sides). ``lend = floor(borrow * U * (PPB - reserve_factor) / PPB**2)``, rounded
**down** (lenders never earn more than the curve). Both are recomputed after every change
of utilization: each operation and each accrual.

**Indices.** A lender holds a *scaled* balance ``s``, worth ``s * lend_index / RAY``; a
borrower owes ``s * borrow_index / RAY``. Both indices start at ``RAY``. ``accrue(pool,
now)`` applies simple interest over the elapsed sequenced time ``dt`` at the stored rates
(per block, so blocks compound; see ``apy_from_apr``):

    borrow_index += ceil(borrow_index * borrow_rate * dt / (PPB * YEAR_US))    (up)
    lend_index   += floor(lend_index * lend_rate * dt / (PPB * YEAR_US))       (down)

A year is 365 days. Call ``accrue`` for the operation's time before the operation:
operations do not accrue by themselves.

**Rounding of balances.** A lender's claim rounds **down**, a borrower's debt **up**
(``to_amount``); totals likewise (``lent_total``, ``borrowed_total``). Money entering the
pool is scaled **down** (``lend`` credits ``floor(amount * RAY / lend_index)``, ``repay``
cancels ``floor(amount * RAY / borrow_index)`` of debt); money leaving it is scaled
**up** (``redeem`` burns ``ceil(amount * RAY / lend_index)``, ``borrow`` books
``ceil(amount * RAY / borrow_index)``). So every operation moves exactly the amount asked
and the pool never owes more than it received; the difference, under ``index / RAY + 1``
units per operation (a unit or two while the indices are near 1), stays in the pool as
reserve. An amount that scales to zero is refused.

**The invariant** (``surplus``, ``solvent``):

    cash + borrowed_total (up) - lent_total (down) = reserve >= 0

``reserve`` is kept per step -- each accrual adds the borrowers' interest minus the
lenders' interest, each operation its rounding remainder -- so interest is conserved
exactly: borrowers' interest = lenders' interest + reserve. Why the reserve never goes
negative: the exact surplus ``cash + B * bi / RAY - L * li / RAY`` never decreases
(operations round the pool's way; an accrual grows the lenders' exact claims by at most
``lend_rate * claims <= borrow_rate * debt * (1 - reserve_factor)``, because ``U`` is at most
``debt / claims`` while that surplus is non-negative), and the rounded surplus is at least
the exact one. A single accrual may lower the reserve by a unit when the rounded totals
step unevenly, never below the exact surplus. Per account, claims round down and debts
up, so the sum of what accounts can take out is at most the pool's totals.

**Refusals** (``LendingError`` with a ``Refusal`` code) change nothing: pools are
immutable, every operation returns a new one. A redeem or borrow larger than the pool's
cash is ``INSUFFICIENT_LIQUIDITY`` -- at 100% utilization there is no cash to redeem.

**Bounds.** Indices stay below ``MAX_INDEX`` (2**63 - 1, 9.2 x RAY) so a pool encodes in
msgpack's 64-bit integers; an accrual that would pass it accrues nothing (both indices
stop: lenders never earn what borrowers are not charged). At a 20% APR that is about 11
years away; at the SOL curve's 334% ceiling, eight months of a fully borrowed pool.

**Display.** ``apy_from_apr`` turns an APR into the APY of compounding it (integers); the
edges format it. Neither is state.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from satchel.core.amounts import MAX_UNITS
from satchel.core.messages import PPB, LendingSpec  # the spec is a journaled record: it lives with the others

RAY = 10**18  # an index of 1.0
MAX_INDEX = 2**63 - 1  # indices fit a signed 64-bit msgpack integer
MIN_LEND_INDEX = 1  # an index stays positive (divisions), even when the lenders lost everything
YEAR_US = 365 * 86_400 * 1_000_000  # one year of sequenced time
HOURS_PER_YEAR = 365 * 24


def spec_problem(spec: LendingSpec) -> str:
    """Why a spec cannot be used ("" when it can); config and admin transactions ask."""
    if min(spec.base_rate, spec.slope1, spec.slope2) < 0:
        return f"{spec.asset}: rates must not be negative"
    if not 0 < spec.optimal_utilization <= PPB:
        return f"{spec.asset}: optimal utilization must lie in (0, 1]"
    if not 0 < spec.max_utilization <= PPB:
        return f"{spec.asset}: max utilization must lie in (0, 1]"
    if not 0 <= spec.reserve_factor <= PPB:
        return f"{spec.asset}: reserve factor must lie in [0, 1]"
    if spec.base_rate + spec.slope1 + spec.slope2 > 100 * PPB:
        return f"{spec.asset}: the curve's top rate must not exceed 10000%"
    if not 0 < spec.borrow_mmf <= spec.borrow_imf <= PPB:
        return f"{spec.asset}: borrow margins need 0 < borrow_mmf <= borrow_imf <= 1"
    return ""


class Pool(msgspec.Struct, array_like=True, frozen=True):
    """One asset's pool. Amounts in the asset's units, indices in RAY, rates in PPB a year."""

    spec: LendingSpec
    lent_scaled: int  # sum of lenders' scaled balances
    borrowed_scaled: int  # sum of borrowers' scaled debts
    lend_index: int
    borrow_index: int
    cash: int  # units the pool holds
    reserve: int  # units owed to nobody: the reserve factor's share plus rounding
    last_us: int  # sequenced time of the last accrual
    borrow_rate: int  # in force since last_us
    lend_rate: int


class Refusal(StrEnum):
    """Why an operation was refused; the values never change meaning."""

    INVALID_AMOUNT = "INVALID_AMOUNT"  # not a positive amount within MAX_UNITS
    AMOUNT_TOO_SMALL = "AMOUNT_TOO_SMALL"  # worth no scaled balance at the current index
    INSUFFICIENT_LIQUIDITY = "INSUFFICIENT_LIQUIDITY"  # more than the pool's cash
    EXCEEDS_LEND = "EXCEEDS_LEND"  # a redeem larger than the account's claim
    EXCEEDS_DEBT = "EXCEEDS_DEBT"  # a repay larger than the account's debt


class LendingError(ValueError):
    def __init__(self, code: Refusal, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------- fixed point


def _up(a: int, b: int) -> int:
    """a / b rounded up (a >= 0, b > 0)."""
    return -(-a // b)


def to_scaled(amount: int, index: int, up: bool) -> int:
    """``amount * RAY / index``, rounded up or down."""
    return _up(amount * RAY, index) if up else amount * RAY // index


def to_amount(scaled: int, index: int, up: bool) -> int:
    """``scaled * index / RAY``, rounded up or down."""
    return _up(scaled * index, RAY) if up else scaled * index // RAY


def grow(index: int, rate: int, dt_us: int, up: bool) -> int:
    """The index after ``dt_us`` of simple interest at ``rate`` (PPB a year):
    ``index * (1 + rate * dt / year)``, the increment rounded up or down."""
    step = index * rate * dt_us
    return index + (_up(step, PPB * YEAR_US) if up else step // (PPB * YEAR_US))


# ---------------------------------------------------------------- rate curve


def utilization(borrowed: int, supplied: int) -> int:
    """``borrowed / supplied`` in PPB, rounded down; 0 when nothing is supplied, at most
    PPB (both in the same unit, which may be RAY-scaled)."""
    if supplied <= 0:
        return 0
    return min(PPB, max(0, borrowed) * PPB // supplied)


def borrow_rate(spec: LendingSpec, u: int) -> int:
    """The annual borrow rate (PPB) at utilization ``u`` (PPB): the two-slope curve, each
    division rounded up. ``u`` is clamped to [0, PPB]."""
    u = max(0, min(PPB, u))
    opt = spec.optimal_utilization
    if u <= opt:
        return spec.base_rate + _up(spec.slope1 * u, opt)
    return spec.base_rate + spec.slope1 + _up(spec.slope2 * (u - opt), PPB - opt)


def lend_rate(spec: LendingSpec, borrow: int, u: int) -> int:
    """The annual lend rate (PPB): ``borrow * u * (1 - reserve_factor)``, rounded down."""
    return borrow * u * (PPB - spec.reserve_factor) // (PPB * PPB)


# ---------------------------------------------------------------- the pool


def lent_total(pool: Pool) -> int:
    """What all lenders together may claim, rounded down."""
    return to_amount(pool.lent_scaled, pool.lend_index, up=False)


def borrowed_total(pool: Pool) -> int:
    """What all borrowers together owe, rounded up."""
    return to_amount(pool.borrowed_scaled, pool.borrow_index, up=True)


def claim(pool: Pool, scaled: int) -> int:
    """A lender's redeemable amount for a scaled balance (rounded down)."""
    return to_amount(scaled, pool.lend_index, up=False)


def owed(pool: Pool, scaled: int) -> int:
    """A borrower's debt for a scaled debt (rounded up): what ``repay`` takes to clear it."""
    return to_amount(scaled, pool.borrow_index, up=True)


def pool_utilization(pool: Pool) -> int:
    """The pool's utilization (PPB): exact debt over exact debt plus cash, rounded down."""
    debt = pool.borrowed_scaled * pool.borrow_index  # units x RAY, exact
    return utilization(debt, debt + pool.cash * RAY)


def surplus(pool: Pool) -> int:
    """``cash + borrowed_total - lent_total``: what the pool has beyond its lenders' claims."""
    return pool.cash + borrowed_total(pool) - lent_total(pool)


def solvent(pool: Pool) -> bool:
    """The invariant: the surplus is the reserve, the reserve is not negative, utilization
    is at most 100%, and nothing is negative."""
    return (surplus(pool) == pool.reserve >= 0 and pool_utilization(pool) <= PPB
            and min(pool.cash, pool.lent_scaled, pool.borrowed_scaled) >= 0)


def _priced(pool: Pool, **changes: object) -> Pool:
    """The pool with ``changes`` applied and its rates recomputed for the new utilization."""
    new = msgspec.structs.replace(pool, **changes)
    u = pool_utilization(new)
    b = borrow_rate(new.spec, u)
    return msgspec.structs.replace(new, borrow_rate=b, lend_rate=lend_rate(new.spec, b, u))


def _moved(pool: Pool, priced: bool, **changes: object) -> Pool:
    """The pool after an operation: repriced, or (``priced=False``) with the rates left as
    they were -- the margin engine's working copy within a block, where rates matter
    only at the next accrual and ``reprice`` sets them once when the block commits."""
    return _priced(pool, **changes) if priced else msgspec.structs.replace(pool, **changes)


def reprice(pool: Pool) -> Pool:
    """The pool with its rates recomputed for its utilization."""
    return _priced(pool)


def new_pool(spec: LendingSpec, now_us: int) -> Pool:
    """An empty pool listed at ``now_us``."""
    return _priced(Pool(spec, 0, 0, RAY, RAY, 0, 0, now_us, 0, 0))


def accrue(pool: Pool, now_us: int) -> Pool:
    """Interest from ``last_us`` to ``now_us`` at the stored rates (borrow index up, lend
    index down); the reserve gains the borrowers' interest minus the lenders'. Rates are
    then recomputed. A time not after ``last_us`` changes nothing."""
    dt = now_us - pool.last_us
    if dt <= 0:
        return pool
    bi = grow(pool.borrow_index, pool.borrow_rate, dt, up=True)
    li = grow(pool.lend_index, pool.lend_rate, dt, up=False)
    if max(bi, li) > MAX_INDEX:
        return msgspec.structs.replace(pool, last_us=now_us)
    paid = to_amount(pool.borrowed_scaled, bi, up=True) - borrowed_total(pool)
    earned = to_amount(pool.lent_scaled, li, up=False) - lent_total(pool)
    return _priced(pool, borrow_index=bi, lend_index=li, last_us=now_us, reserve=pool.reserve + paid - earned)


def set_spec(pool: Pool, spec: LendingSpec, now_us: int) -> Pool:
    """An admin's new curve: interest to ``now_us`` at the old rates, then the new ones."""
    return _priced(accrue(pool, now_us), spec=spec)


def _amount(amount: int) -> None:
    if not 0 < amount <= MAX_UNITS:
        raise LendingError(Refusal.INVALID_AMOUNT, f"amount {amount} is not in (0, {MAX_UNITS}]")


def lend(pool: Pool, amount: int, priced: bool = True) -> tuple[Pool, int]:
    """Lend ``amount``: returns the pool and the scaled balance credited (rounded down)."""
    _amount(amount)
    if pool.cash + amount > MAX_UNITS:
        raise LendingError(Refusal.INVALID_AMOUNT, "the pool would hold more than MAX_UNITS")
    scaled = to_scaled(amount, pool.lend_index, up=False)
    if not scaled:
        raise LendingError(Refusal.AMOUNT_TOO_SMALL, f"{amount} is worth no share at the lend index")
    if pool.lent_scaled + scaled > MAX_INDEX:
        raise LendingError(Refusal.INVALID_AMOUNT, "the pool's scaled lends would pass 64 bits")
    lent = to_amount(pool.lent_scaled + scaled, pool.lend_index, up=False)
    dust = amount - (lent - lent_total(pool))
    return _moved(pool, priced, lent_scaled=pool.lent_scaled + scaled, cash=pool.cash + amount,
                   reserve=pool.reserve + dust), scaled


def redeem(pool: Pool, amount: int, lent_scaled: int, priced: bool = True) -> tuple[Pool, int]:
    """Redeem ``amount`` of a lend whose scaled balance is ``lent_scaled``: returns the pool
    and the scaled balance burnt (rounded up; all of it when ``amount`` is the whole claim)."""
    _amount(amount)
    if amount > claim(pool, lent_scaled):
        raise LendingError(Refusal.EXCEEDS_LEND, f"redeem {amount} exceeds the lend {claim(pool, lent_scaled)}")
    if amount > pool.cash:
        raise LendingError(Refusal.INSUFFICIENT_LIQUIDITY,
                           f"redeem {amount} exceeds the pool's cash {pool.cash} (utilization {pool_utilization(pool)} PPB)")
    # <= lent_scaled, as amount <= its claim; the whole claim burns the whole balance
    scaled = lent_scaled if amount == claim(pool, lent_scaled) else to_scaled(amount, pool.lend_index, up=True)
    lent = to_amount(pool.lent_scaled - scaled, pool.lend_index, up=False)
    dust = (lent_total(pool) - lent) - amount
    return _moved(pool, priced, lent_scaled=pool.lent_scaled - scaled, cash=pool.cash - amount,
                   reserve=pool.reserve + dust), scaled


def within_max(pool: Pool, amount: int) -> bool:
    """Whether borrowing ``amount`` leaves the pool at or below its ``max_utilization``
    (an account's own borrows; those liquidation and settlement force are not held to it)."""
    debt = pool.borrowed_scaled * pool.borrow_index + amount * RAY
    return utilization(debt, debt + (pool.cash - amount) * RAY) <= pool.spec.max_utilization


def borrow(pool: Pool, amount: int, priced: bool = True) -> tuple[Pool, int]:
    """Borrow ``amount`` (the margin engine decides whether the account may): returns the
    pool and the scaled debt booked (rounded up)."""
    _amount(amount)
    if amount > pool.cash:
        raise LendingError(Refusal.INSUFFICIENT_LIQUIDITY,
                           f"borrow {amount} exceeds the pool's cash {pool.cash} (utilization {pool_utilization(pool)} PPB)")
    scaled = to_scaled(amount, pool.borrow_index, up=True)
    debt = to_amount(pool.borrowed_scaled + scaled, pool.borrow_index, up=True)
    dust = (debt - borrowed_total(pool)) - amount
    return _moved(pool, priced, borrowed_scaled=pool.borrowed_scaled + scaled, cash=pool.cash - amount,
                   reserve=pool.reserve + dust), scaled


def repay(pool: Pool, amount: int, borrowed_scaled: int, priced: bool = True) -> tuple[Pool, int]:
    """Repay ``amount`` of a debt whose scaled balance is ``borrowed_scaled``: returns the
    pool and the scaled debt cancelled (rounded down; all of it when ``amount`` is
    ``owed(pool, borrowed_scaled)``)."""
    _amount(amount)
    if amount > owed(pool, borrowed_scaled):
        raise LendingError(Refusal.EXCEEDS_DEBT, f"repay {amount} exceeds the debt {owed(pool, borrowed_scaled)}")
    if pool.cash + amount > MAX_UNITS:
        raise LendingError(Refusal.INVALID_AMOUNT, "the pool would hold more than MAX_UNITS")
    # <= borrowed_scaled, as amount <= its debt; the whole debt cancels the whole balance
    scaled = borrowed_scaled if amount == owed(pool, borrowed_scaled) else to_scaled(amount, pool.borrow_index, up=False)
    if not scaled:
        raise LendingError(Refusal.AMOUNT_TOO_SMALL, f"{amount} is worth no share at the borrow index")
    debt = to_amount(pool.borrowed_scaled - scaled, pool.borrow_index, up=True)
    dust = amount - (borrowed_total(pool) - debt)
    return _moved(pool, priced, borrowed_scaled=pool.borrowed_scaled - scaled, cash=pool.cash + amount,
                   reserve=pool.reserve + dust), scaled


def write_off(pool: Pool, borrowed_scaled: int, priced: bool = True) -> tuple[Pool, int]:
    """Bad debt: cancel a debt nobody will repay and let the lenders bear it. Returns the
    pool and the loss (the debt, rounded up). The lend index drops so that the lenders'
    claims fall by at least the loss (rounded down: never more than they have), the
    reserve is what is left over. Lenders' claims always cover any one debt
    (``debt <= cash + debt = claims + reserve``), so the reserve stays non-negative; if the
    loss is more than the claims, the reserve takes the rest. Were the lenders wiped out,
    the index ends near zero and the pool refuses new lends (their scaled balances would
    pass 64 bits, see ``lend``): the catastrophe is visible, never papered over."""
    loss = owed(pool, borrowed_scaled)
    claims = lent_total(pool)
    index = pool.lend_index
    if pool.lent_scaled:
        target = max(claims - loss, 0)
        index = target * RAY // pool.lent_scaled  # <= target's exact index: claims fall by >= loss
        index = max(min(index, pool.lend_index), MIN_LEND_INDEX)
    new = msgspec.structs.replace(pool, borrowed_scaled=pool.borrowed_scaled - borrowed_scaled, lend_index=index)
    return _moved(new, priced, reserve=surplus(new)), loss


# ---------------------------------------------------------------- display (derived, never state)


def apy_from_apr(apr: int, periods: int = HOURS_PER_YEAR) -> int:
    """The APY (PPB, rounded down) of an APR (PPB) compounded ``periods`` times a year --
    hourly by default. Per-block accrual compounds more often, which adds about
    ``e**r * r**2 / (2 * periods)``: 0.00004 percentage point at r = 8%, hourly. Integer
    fixed point, so the edges may show it and tests may compare it; never kept in state."""
    step = RAY + apr * RAY // (PPB * periods)
    result, n = RAY, periods
    while n:
        if n & 1:
            result = result * step // RAY
        step = step * step // RAY
        n >>= 1
    return (result - RAY) * PPB // RAY
