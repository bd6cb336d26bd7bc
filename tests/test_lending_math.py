"""The borrow/lend pool's integer core: the default SOL curve's APY, the rate curve's shape,
and, over generated sequences of lend/redeem/borrow/repay/accrue, the invariant (reserve
never negative, utilization at most 100%), interest conservation and refusals that change
nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from satchel import config
from satchel.core import lending as lnd
from satchel.core.lending import PPB, RAY, LendingError, LendingSpec, Refusal

HOUR_US = 3_600_000_000
SOL = 10**9  # SOL's smallest units per SOL
T0 = 1_700_000_000_000_000


def default_spec(asset: str) -> LendingSpec:
    return {s.asset: s for s in config.load().lending_specs()}[asset]


def article_pool() -> lnd.Pool:
    """654.8K SOL lent, 289.4K SOL borrowed, on the default SOL curve."""
    pool, _ = lnd.lend(lnd.new_pool(default_spec("SOL"), T0), 654_800 * SOL)
    pool, _ = lnd.borrow(pool, 289_400 * SOL)
    return pool


# ---------------------------------------------------------------- the default SOL curve


def test_sol_default_lend_apy_at_the_article_utilization():
    pool = article_pool()
    assert lnd.pool_utilization(pool) == 289_400 * PPB // 654_800  # 44.1967%
    assert pool.borrow_rate == lnd.borrow_rate(pool.spec, lnd.pool_utilization(pool))
    # compound the lend index's growth at the pool's lend rate over a year, in integers:
    # once an hour, and once a minute (closer to per-block accrual)
    for step_us in (HOUR_US, 60_000_000):
        index = RAY
        for _ in range(lnd.YEAR_US // step_us):
            index = lnd.grow(index, pool.lend_rate, step_us, up=False)
        apy = (index - RAY) * PPB // RAY
        assert 81_700_000 <= apy <= 82_500_000, apy  # 8.17% .. 8.25%
        assert abs(apy - lnd.apy_from_apr(pool.lend_rate)) < 10_000  # within 0.001 point of the display figure
    assert lnd.apy_from_apr(pool.lend_rate) == 82_059_409  # 8.2059%


def test_sol_pool_accrues_at_its_quoted_rates():
    """A day of hourly accruals on the real pool: the lender's claim grows at the quoted
    lend rate, the borrowers' debt at the borrow rate, the rest is reserve."""
    pool = article_pool()
    lend_rate, borrow_rate = pool.lend_rate, pool.borrow_rate
    lent0, debt0 = lnd.lent_total(pool), lnd.borrowed_total(pool)
    for h in range(1, 25):
        pool = lnd.accrue(pool, T0 + h * HOUR_US)
        assert lnd.solvent(pool)
    day = 86_400_000_000
    earned, paid = lnd.lent_total(pool) - lent0, lnd.borrowed_total(pool) - debt0
    assert earned == pytest.approx(lent0 * lend_rate * day // (PPB * lnd.YEAR_US), rel=1e-3)
    assert paid == pytest.approx(debt0 * borrow_rate * day // (PPB * lnd.YEAR_US), rel=1e-3)
    assert pool.reserve == paid - earned > 0
    # ~ 0.0216% a day for lenders: 7.89% APR / 365
    assert 210_000 <= earned * PPB // lent0 <= 218_000


def test_default_curves_are_listed_for_the_main_assets():
    specs = {s.asset: s for s in config.load().lending_specs()}
    assert {"USDC", "SOL", "BTC", "ETH"} <= set(specs)
    for spec in specs.values():
        assert lnd.spec_problem(spec) == ""
        assert 0 < spec.optimal_utilization <= PPB and 0 <= spec.reserve_factor < PPB


def test_config_refuses_bad_curves(tmp_path):
    base = config.DEFAULTS.read_text()
    for extra, words in [
        ('\n[lending.DOGE]\nslope1 = "0.1"\n', "unknown assets"),
        ('\n[lending.SOL]\noptimal_utilization = "0"\n', "optimal utilization"),
        ('\n[lending.SOL]\nreserve_factor = "1.5"\n', "reserve factor"),
        ('\n[lending.SOL]\nslope2 = "-0.1"\n', "negative"),
    ]:
        text = base.split("[lending.USDC]")[0] + extra
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(config.ConfigError, match=words):
            config.load(path)


# ---------------------------------------------------------------- the curve


specs = st.builds(
    LendingSpec,
    asset=st.just("X"),
    base_rate=st.integers(0, PPB // 10),
    slope1=st.integers(0, PPB),
    slope2=st.integers(0, 5 * PPB),
    optimal_utilization=st.integers(1, PPB),
    reserve_factor=st.integers(0, PPB),
)
ppb = st.integers(0, PPB)


@given(specs, ppb, ppb)
def test_rates_are_monotone_in_utilization(spec, u1, u2):
    lo, hi = min(u1, u2), max(u1, u2)
    assert lnd.borrow_rate(spec, lo) <= lnd.borrow_rate(spec, hi)
    b_lo, b_hi = lnd.borrow_rate(spec, lo), lnd.borrow_rate(spec, hi)
    assert lnd.lend_rate(spec, b_lo, lo) <= lnd.lend_rate(spec, b_hi, hi)


@given(specs, ppb)
def test_lend_rate_never_exceeds_the_borrowers_share(spec, u):
    b = lnd.borrow_rate(spec, u)
    lend = lnd.lend_rate(spec, b, u)
    assert lend * PPB * PPB <= b * u * (PPB - spec.reserve_factor)
    assert lend <= b


@given(specs)
def test_curve_is_continuous_at_the_kink_and_exact_at_the_ends(spec):
    opt = spec.optimal_utilization
    at_kink = spec.base_rate + spec.slope1
    assert lnd.borrow_rate(spec, opt) == at_kink
    assert lnd.borrow_rate(spec, 0) == spec.base_rate
    assert lnd.borrow_rate(spec, PPB) == at_kink + (spec.slope2 if opt < PPB else 0)
    # one PPB either side of the kink moves the rate by at most one step of either slope (rounded up)
    if opt > 1:
        assert at_kink - lnd.borrow_rate(spec, opt - 1) <= spec.slope1 // opt + 1
    if opt < PPB:
        assert lnd.borrow_rate(spec, opt + 1) - at_kink <= spec.slope2 // (PPB - opt) + 1
    # utilization outside [0, 1] is clamped
    assert lnd.borrow_rate(spec, -5) == spec.base_rate and lnd.borrow_rate(spec, 2 * PPB) == lnd.borrow_rate(spec, PPB)


def test_utilization_edges():
    assert lnd.utilization(0, 0) == 0 and lnd.utilization(5, 0) == 0
    assert lnd.utilization(10, 10) == PPB and lnd.utilization(11, 10) == PPB
    assert lnd.utilization(1, 3) == 333_333_333  # rounded down


# ---------------------------------------------------------------- rounding directions


@given(st.integers(0, 10**15), st.integers(RAY, 9 * RAY))
def test_scaled_round_trips_never_favour_the_account(amount, index):
    # deposit then claim: a lender gets back at most what went in
    assert lnd.to_amount(lnd.to_scaled(amount, index, up=False), index, up=False) <= amount
    # borrow then owe: a borrower owes at least what came out
    assert lnd.to_amount(lnd.to_scaled(amount, index, up=True), index, up=True) >= amount
    down, up = lnd.to_scaled(amount, index, up=False), lnd.to_scaled(amount, index, up=True)
    assert up - down in (0, 1)


def test_redeem_at_full_utilization_is_refused_and_changes_nothing():
    spec = default_spec("USDC")
    pool, s_lend = lnd.lend(lnd.new_pool(spec, T0), 1_000_000)
    pool, s_borrow = lnd.borrow(pool, 1_000_000)
    assert pool.cash == 0 and lnd.pool_utilization(pool) == PPB
    assert pool.borrow_rate == spec.base_rate + spec.slope1 + spec.slope2
    before = msgspec.msgpack.encode(pool)
    with pytest.raises(LendingError) as err:
        lnd.redeem(pool, 1, s_lend)
    assert err.value.code == Refusal.INSUFFICIENT_LIQUIDITY and "cash 0" in str(err.value)
    with pytest.raises(LendingError) as err:
        lnd.borrow(pool, 1)
    assert err.value.code == Refusal.INSUFFICIENT_LIQUIDITY
    assert msgspec.msgpack.encode(pool) == before
    # interest makes it worse, never above 100%, and repaying frees it
    pool = lnd.accrue(pool, T0 + 30 * 86_400_000_000)
    assert lnd.pool_utilization(pool) == PPB and lnd.solvent(pool) and pool.reserve > 0
    pool, _ = lnd.repay(pool, lnd.owed(pool, s_borrow), s_borrow)
    pool, burnt = lnd.redeem(pool, lnd.claim(pool, s_lend), s_lend)
    assert burnt == s_lend and pool.lent_scaled == pool.borrowed_scaled == 0 and pool.cash == pool.reserve > 0


def test_other_refusals():
    pool, s = lnd.lend(lnd.new_pool(default_spec("SOL"), T0), 1000)
    cases = [
        (lambda: lnd.lend(pool, 0), Refusal.INVALID_AMOUNT),
        (lambda: lnd.lend(pool, -5), Refusal.INVALID_AMOUNT),
        (lambda: lnd.redeem(pool, 1001, s), Refusal.EXCEEDS_LEND),
        (lambda: lnd.repay(pool, 1, 0), Refusal.EXCEEDS_DEBT),
        (lambda: lnd.borrow(pool, 1001), Refusal.INSUFFICIENT_LIQUIDITY),
    ]
    for call, code in cases:
        with pytest.raises(LendingError) as err:
            call()
        assert err.value.code == code
    # an amount worth no scaled balance once the index has grown is refused, not swallowed
    grown = msgspec.structs.replace(pool, lend_index=2 * RAY, lent_scaled=pool.lent_scaled // 2, reserve=0)
    with pytest.raises(LendingError) as err:
        lnd.lend(grown, 1)
    assert err.value.code == Refusal.AMOUNT_TOO_SMALL


def test_indices_stop_before_they_outgrow_64_bits():
    spec = LendingSpec("X", PPB, PPB, 5 * PPB, PPB // 2, 0)
    pool, _ = lnd.lend(lnd.new_pool(spec, T0), 10**12)
    pool, _ = lnd.borrow(pool, 10**12)
    for year in range(1, 6):
        pool = lnd.accrue(pool, T0 + year * lnd.YEAR_US)
        assert max(pool.lend_index, pool.borrow_index) <= lnd.MAX_INDEX and lnd.solvent(pool)
    assert pool.last_us == T0 + 5 * lnd.YEAR_US
    msgspec.msgpack.encode(pool)


def test_the_core_uses_no_floats():
    tree = ast.parse(Path(lnd.__file__).read_text())
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), node.lineno
        assert not isinstance(node, ast.Div), f"true division at line {node.lineno}"
        assert not (isinstance(node, ast.Name) and node.id in ("float", "Decimal")), node.lineno


# ---------------------------------------------------------------- generated sequences

DAY_US = 86_400_000_000
ACCOUNTS = ("a", "b", "c", "d")
amounts = st.one_of(st.integers(1, 50), st.integers(1, 10**6), st.integers(1, 10**15))
# realistic magnitudes as often as arbitrary ones (hypothesis favours small integers)
rates = st.one_of(st.integers(0, 5 * PPB), st.sampled_from([0, 2 * 10**7, 4 * 10**7, 10**8, 3 * 10**8, PPB, 3 * PPB]))
pool_specs = st.builds(
    LendingSpec,
    asset=st.just("X"),
    base_rate=st.one_of(st.just(0), st.integers(0, PPB // 10)),
    slope1=rates,
    slope2=rates,
    optimal_utilization=st.one_of(st.integers(1, PPB), st.sampled_from([PPB // 2, 8 * PPB // 10, 9 * PPB // 10, PPB])),
    reserve_factor=st.one_of(st.sampled_from([0, 5 * 10**7, 10**8, 2 * 10**8]), st.integers(0, PPB)),
)
gaps = st.one_of(st.integers(0, 10**6), st.sampled_from([HOUR_US, DAY_US, 30 * DAY_US, lnd.YEAR_US]),
                 st.integers(0, 90 * DAY_US))
ops = st.one_of(
    st.tuples(st.just("lend"), st.sampled_from(ACCOUNTS), amounts),
    st.tuples(st.just("redeem"), st.sampled_from(ACCOUNTS), st.integers(0, 1100)),  # per mille of the claim
    st.tuples(st.just("borrow"), st.sampled_from(ACCOUNTS), amounts),
    st.tuples(st.just("borrow_cash"), st.sampled_from(ACCOUNTS), st.integers(0, 1100)),  # per mille of the cash
    st.tuples(st.just("repay"), st.sampled_from(ACCOUNTS), st.integers(0, 1100)),  # per mille of the debt
    st.tuples(st.just("accrue"), st.just(""), gaps),
)


class Ledger:
    """The accounts around one pool, with the amounts that actually moved."""

    def __init__(self, spec: LendingSpec):
        self.pool = lnd.new_pool(spec, T0)
        self.now = T0
        self.lends = dict.fromkeys(ACCOUNTS, 0)  # scaled
        self.debts = dict.fromkeys(ACCOUNTS, 0)  # scaled
        self.lent_in = self.redeemed_out = self.borrowed_out = self.repaid_in = 0
        self.lender_ops = 0

    def apply(self, op: str, acct: str, n: int) -> None:
        pool = self.pool
        before = msgspec.msgpack.encode(pool)
        try:
            if op == "accrue":
                self.now += n
                self.pool = lnd.accrue(pool, self.now)
            elif op == "lend":
                self.pool, s = lnd.lend(pool, n)
                self.lends[acct] += s
                self.lent_in += n
                self.lender_ops += 1
            elif op in ("borrow", "borrow_cash"):
                amount = n if op == "borrow" else max(1, pool.cash * n // 1000)
                self.pool, s = lnd.borrow(pool, amount)
                self.debts[acct] += s
                self.borrowed_out += amount
            elif op == "redeem":
                amount = max(1, lnd.claim(pool, self.lends[acct]) * n // 1000)
                self.pool, s = lnd.redeem(pool, amount, self.lends[acct])
                self.lends[acct] -= s
                self.redeemed_out += amount
                self.lender_ops += 1
            elif op == "repay":
                amount = max(1, lnd.owed(pool, self.debts[acct]) * n // 1000)
                self.pool, s = lnd.repay(pool, amount, self.debts[acct])
                self.debts[acct] -= s
                self.repaid_in += amount
        except LendingError as err:
            assert self.pool is pool and msgspec.msgpack.encode(pool) == before  # nothing changed
            self.expect_refusal(err, op, acct, n, pool)
        self.check()

    def expect_refusal(self, err: LendingError, op: str, acct: str, n: int, pool: lnd.Pool) -> None:
        if err.code == Refusal.INSUFFICIENT_LIQUIDITY:
            assert op in ("redeem", "borrow", "borrow_cash")
            if op == "borrow":
                assert n > pool.cash
        elif err.code == Refusal.EXCEEDS_LEND:
            assert op == "redeem" and (n > 1000 or self.lends[acct] == 0 or lnd.claim(pool, self.lends[acct]) == 0)
        elif err.code == Refusal.EXCEEDS_DEBT:
            assert op == "repay" and (n > 1000 or self.debts[acct] == 0)
        elif err.code == Refusal.AMOUNT_TOO_SMALL:
            assert op in ("lend", "repay")
        else:
            assert err.code == Refusal.INVALID_AMOUNT and op == "lend"

    def check(self) -> None:
        pool = self.pool
        assert lnd.solvent(pool)  # cash + borrowed (up) - lent (down) == reserve >= 0
        assert pool.reserve >= 0
        # U = debt / (debt + cash) = borrowed / (lent + reserve): at most 100% because cash >= 0
        debt = pool.borrowed_scaled * pool.borrow_index
        assert lnd.pool_utilization(pool) == (debt * PPB // (debt + pool.cash * RAY) if debt + pool.cash else 0) <= PPB
        assert sum(self.lends.values()) == pool.lent_scaled and sum(self.debts.values()) == pool.borrowed_scaled
        # the exact surplus, no rounding at all, is never negative either
        assert pool.cash * RAY + pool.borrowed_scaled * pool.borrow_index - pool.lent_scaled * pool.lend_index >= 0
        # per account claims round down and debts up: what accounts can take out is covered
        claims = sum(lnd.claim(pool, s) for s in self.lends.values())
        debts = sum(lnd.owed(pool, s) for s in self.debts.values())
        assert pool.cash + debts - claims >= pool.reserve
        # the pool's cash is exactly what moved in and out
        assert pool.cash == self.lent_in - self.redeemed_out - self.borrowed_out + self.repaid_in
        assert lnd.borrow_rate(pool.spec, lnd.pool_utilization(pool)) == pool.borrow_rate
        msgspec.msgpack.encode(pool)  # fits msgpack's integers

    def close_out(self) -> None:
        """Every borrower repays all, then every lender redeems all."""
        for acct in ACCOUNTS:
            if self.debts[acct]:
                amount = lnd.owed(self.pool, self.debts[acct])
                self.pool, s = lnd.repay(self.pool, amount, self.debts[acct])
                assert s == self.debts[acct]
                self.debts[acct] = 0
                self.repaid_in += amount
                self.check()
        for acct in ACCOUNTS:
            amount = lnd.claim(self.pool, self.lends[acct])
            if amount:
                self.pool, s = lnd.redeem(self.pool, amount, self.lends[acct])  # never short of cash now
                assert s == self.lends[acct]
                self.lends[acct] = 0
                self.redeemed_out += amount
                self.check()


# most sequences start with money lent and some of it borrowed, so that interest flows
openings = st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(1, 10**15), st.sampled_from(ACCOUNTS),
                              st.integers(0, 1000), gaps), min_size=1, max_size=3)


@settings(max_examples=400, deadline=None)
@given(pool_specs, openings, st.lists(ops, max_size=40))
def test_generated_sequences_keep_the_pool_solvent_and_conserve_interest(spec, opening, sequence):
    ledger = Ledger(spec)
    for lender, amount, borrower, permille, gap in opening:
        ledger.apply("lend", lender, amount)
        ledger.apply("borrow_cash", borrower, permille)
        ledger.apply("accrue", "", gap)
    for op in sequence:
        ledger.apply(*op)
    ledger.close_out()
    pool = ledger.pool
    # every scaled balance is gone (the lend index is at least RAY, so any share is worth a unit)
    assert pool.borrowed_scaled == pool.lent_scaled == 0
    # (c) what is left is the reserve: lenders got no more than borrowers paid
    assert pool.cash == pool.reserve >= 0
    # (d) from the amounts that actually moved: borrowers' interest = lenders' interest + reserve
    borrowers_interest = ledger.repaid_in - ledger.borrowed_out
    lenders_interest = ledger.redeemed_out - ledger.lent_in
    assert borrowers_interest >= 0
    assert borrowers_interest == lenders_interest + pool.reserve
    # lenders lose at most rounding: under (index + 1) units per lend or redeem
    assert lenders_interest >= -ledger.lender_ops * (pool.lend_index // RAY + 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(10**9, 10**14), st.integers(0, 900)), min_size=1, max_size=6),
       st.lists(st.integers(1, 30 * 86_400_000_000), min_size=1, max_size=24))
def test_lenders_earn_and_the_reserve_takes_its_factor(lends, gaps):
    """With real interest flowing, lenders earn, and the reserve holds about the reserve
    factor's share of the borrowers' interest plus what the curve's U x (1 - f) leaves."""
    ledger = Ledger(default_spec("SOL"))
    for acct, amount, borrow_permille in lends:
        ledger.apply("lend", acct, amount)
        ledger.apply("borrow", acct, amount * borrow_permille // 1000 or 1)
    for gap in gaps:
        ledger.apply("accrue", "", gap)
    ledger.close_out()
    borrowers_interest = ledger.repaid_in - ledger.borrowed_out
    lenders_interest = ledger.redeemed_out - ledger.lent_in
    assert borrowers_interest == lenders_interest + ledger.pool.reserve
    if borrowers_interest > 10**6:
        assert lenders_interest > 0
        assert ledger.pool.reserve * PPB >= borrowers_interest * ledger.pool.spec.reserve_factor * 99 // 100


@settings(max_examples=300, deadline=None)
@given(pool_specs, st.lists(st.integers(1, 10**15), min_size=1, max_size=3), st.integers(1, 1000),
       st.integers(0, 1000), gaps)
def test_bad_debt_written_off_lowers_the_lend_index_and_keeps_the_pool_solvent(spec, lends, permille, share, gap):
    pool = lnd.new_pool(spec, T0)
    for amount in lends:
        pool, _ = lnd.lend(pool, amount)
    pool, bad = lnd.borrow(pool, max(1, pool.cash * permille // 1000))
    if pool.cash > 1:
        pool, _ = lnd.borrow(pool, max(1, pool.cash * share // 1000) if share else 1)
    pool = lnd.accrue(pool, T0 + gap)
    claims, debts = lnd.lent_total(pool), lnd.borrowed_total(pool)
    after, loss = lnd.write_off(pool, bad)
    assert loss == lnd.owed(pool, bad) and after.borrowed_scaled == pool.borrowed_scaled - bad
    assert after.lend_index <= pool.lend_index and lnd.solvent(after)  # reserve = surplus >= 0
    assert claims - lnd.lent_total(after) >= min(loss, claims)  # the lenders bear the whole loss
    assert lnd.borrowed_total(after) <= debts - loss + 1  # the rest of the debt stands (rounded up)
    msgspec.msgpack.encode(after)
