"""The ``perps`` scenario: leveraged traders, a crash from the oracle file, liquidations
through every tier, and the checks that money and open interest survive them.

The runner writes two files for the embedded node: a configuration naming a backstop
account whose key it holds, and an index price file (``satchel serve --oracle-file``): a
calm walk, then every perp falls by ``CRASH_DROP`` in ``CRASH_STEPS`` steps, then a calm
walk at the bottom. Takers (``plan.Flow`` roles ``long`` and ``short``) deposit a little
USDC and trade up to the leverage set for them here, so one step of the crash takes a
20x long below zero and two steps a 10x one: such an account is not unwound in the book
(tiers 1-2) for long but closed out at its bankruptcy price. The insurance fund's seed
covers the first deficits (tier 4); the backstop, at a low leverage, takes a part of
each position its margin allows (tier 3); the rest is auto-deleveraged against the shorts
(tier 5), all of it once the fund cannot cover an account's deficit. The makers' few
quotes near the index are what the book offers the unwinding orders.

Meanwhile everyone's idle USDC is auto-lent (on by default: orders redeem what they
need), and the makers lend and borrow SOL (``lending``): interest accrues through the run,
and the final checks include the pools and the interest.

The index file runs on its own clock, from when the node's oracle starts; the runner
starts the traders ``LEAD_S`` after it first sees an index price, so the crash falls
``CRASH_AT`` of the way into the measured run -- earlier if setting up took longer, as on
a loaded machine (the report says where it fell). Halfway leaves the takers the time to
build their positions even then: a crash before that liquidates nobody.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import trio

from satchel.actors.margin import HISTORY
from satchel.config import Config
from satchel.core.amounts import format_units
from satchel.signing import Keypair
from satchel.tools.client import Client, connect
from satchel.tools.loadtest import lending
from satchel.tools.loadtest.plan import LendPlan, MarketPlan
from satchel.tools.loadtest.report import decimal_text

ROW_S = 0.25  # an index price per perp this often
LEAD_S = 4.0  # from the first index price to the traders' start: deposits, leverage, worker start-up
CRASH_AT = 0.5  # of the measured duration
CRASH_DROP = 0.25
CRASH_STEPS = 5  # steps of about -5.6%: more than a 20x long's margin
CRASH_STEP_S = 0.5
WALK_BPS = 50  # the calm walk stays within this of its level
TAIL_S = 10.0  # the walk goes on through the traders' drain; after the last row the oracle holds the prices

# USDC per role: makers can never be liquidated; a taker's position is 10-20x its deposit
DEPOSITS = {"mm": "1000000", "long": "100", "short": "100"}
TAKER_LEVERAGE = (10, 20)
BACKSTOP_DEPOSIT = "300"
BACKSTOP_LEVERAGE = 2  # an initial margin of 50%: it takes 600 USDC of positions in all, then halves of them
INSURANCE_SEED = "250"  # the first deficits are paid (tier 4) and the backstop may take over (tier 3)
INSURANCE_ACCOUNT = "@insurance"
RESCUED = (4, 5)  # tiers after which an account may be left below zero


@dataclass(frozen=True)
class Markets:
    """What the final checks need to know of the perps traded."""

    symbols: list[str]
    settlement_asset: str


@dataclass(frozen=True)
class Timeline:
    """Seconds of the oracle file's clock (0: its first row)."""

    start_s: float  # the traders start
    crash_s: float  # the first step down
    end_s: float  # the last row


def timeline(warmup: float, duration: float) -> Timeline:
    start = LEAD_S
    return Timeline(start, start + warmup + CRASH_AT * duration, start + warmup + duration + TAIL_S)


def _fall(t: float, tl: Timeline) -> float:
    """The crash's factor at ``t``: 1 before it, then down in equal-ratio steps to 1 - CRASH_DROP."""
    if t < tl.crash_s:
        return 1.0
    steps = min(CRASH_STEPS, 1 + int((t - tl.crash_s) / CRASH_STEP_S))
    return (1 - CRASH_DROP) ** (steps / CRASH_STEPS)


def oracle_csv(plans: list[MarketPlan], tl: Timeline, seed: int) -> str:
    """The index price file: ``timestamp_ms,symbol,price`` rows, every perp every ``ROW_S``."""
    rng = random.Random(seed)
    walk = {p.symbol: 0 for p in plans}  # basis points off the level
    lines = ["timestamp_ms,symbol,price"]
    for n in range(int(tl.end_s / ROW_S) + 1):
        t = n * ROW_S
        fall = _fall(t, tl)
        for p in plans:
            walk[p.symbol] = max(-WALK_BPS, min(WALK_BPS, walk[p.symbol] + rng.randint(-2, 2)))
            units = round(p.mid * fall * (10_000 + walk[p.symbol]) / 10_000 / p.tick) * p.tick
            lines.append(f"{round(t * 1000)},{p.symbol},{format_units(units, p.price_decimals)}")
    return "\n".join(lines) + "\n"


def with_backstop(toml: str, backstop: str) -> str:
    """A node configuration's text with ``[margin] backstop`` set to ``backstop``."""
    line = f'backstop = "{backstop}"'
    text, n = re.subn(r'(?m)^backstop\s*=.*$', line, toml)
    if not n:
        text, n = re.subn(r"(?m)^\[margin\][ \t]*$", f"[margin]\n{line}", toml)
    return text if n else f"{toml}\n[margin]\n{line}\n"


async def wait_for_index(url: str, symbols: list[str], timeout: float = 20.0) -> float | None:
    """The wall-clock time at which every perp first had a mark (the oracle is running);
    None if that did not happen within ``timeout``."""
    with trio.move_on_after(timeout):
        while True:
            async with connect(url) as c:
                marks = await c.request("markPrices", sign=False)
            if set(symbols) <= {m["symbol"] for m in marks}:
                return time.time()
            await trio.sleep(0.1)
    return None


class CrashRun:
    """One run of the scenario: the backstop's key, the node's files, deposits and leverage limits."""

    def __init__(self, cfg: Config, config_text: str, plans: list[MarketPlan], keys: list[Keypair], roles: list[str],
                 warmup: float, duration: float, seed: int):
        self.backstop = Keypair.generate()
        self.plans = plans
        self.keys = keys
        self.roles = roles
        self.seed = seed
        self.timeline = timeline(warmup, duration)
        self.markets = Markets([p.symbol for p in plans], cfg.margin.settlement_asset)
        self.config_text = with_backstop(config_text, self.backstop.api_key)
        self.warmup = warmup
        decimals = cfg.decimals()
        self.lending: list[LendPlan | None] = lending.cohort(roles, decimals[lending.ASSET]) \
            if lending.ASSET in decimals else [None] * len(roles)

    def serve_args(self, directory: Path) -> list[str]:
        """Write the node's configuration and index file into ``directory``; the ``satchel serve`` flags that use them."""
        cfg, index = directory / "perps.toml", directory / "index.csv"
        cfg.write_text(self.config_text)
        index.write_text(oracle_csv(self.plans, self.timeline, self.seed))
        return ["--config", str(cfg), "--oracle-file", str(index)]

    def deposits(self) -> list[tuple[str, str, str]]:
        """(account, asset, quantity) of every deposit the scenario makes, the insurance fund's
        seed and the lending cohort's included."""
        asset = self.markets.settlement_asset
        out = [(k.api_key, asset, DEPOSITS[r]) for k, r in zip(self.keys, self.roles)]
        out += lending.deposits(self.keys, self.lending)
        return out + [(self.backstop.api_key, asset, BACKSTOP_DEPOSIT), (INSURANCE_ACCOUNT, asset, INSURANCE_SEED)]

    def leverage(self) -> list[tuple[Keypair, int]]:
        """Each taker's leverage limit (seeded, within ``TAKER_LEVERAGE``), and the backstop's."""
        rng = random.Random(self.seed)
        out = [(k, rng.randint(*TAKER_LEVERAGE)) for k, r in zip(self.keys, self.roles) if r != "mm"]
        return out + [(self.backstop, BACKSTOP_LEVERAGE)]

    async def set_leverage(self, url: str) -> None:
        """The takers' and the backstop's leverage limits; the borrowers' auto-lend off."""
        for key, limit in self.leverage():
            async with connect(url, key) as c:
                await c.request("accountUpdate", {"leverageLimit": str(limit)})
        await lending.configure(url, self.keys, self.lending)

    def describe(self, index_seen: float, start_at: float) -> dict:
        """The report's ``perps`` section: the crash as planned, on the traders' clock."""
        crash = index_seen + self.timeline.crash_s - start_at - self.warmup
        return {"crash_drop": CRASH_DROP, "crash_steps": CRASH_STEPS, "crash_seconds": CRASH_STEPS * CRASH_STEP_S,
                "crash_after_warmup_s": round(crash, 2), "taker_leverage": list(TAKER_LEVERAGE),
                "taker_deposit": DEPOSITS["long"], "backstop": self.backstop.api_key, "backstop_deposit": BACKSTOP_DEPOSIT,
                "backstop_leverage": BACKSTOP_LEVERAGE, "insurance_seed": INSURANCE_SEED}

    def describe_lending(self) -> dict:
        """The report's ``lending`` plan: who lends and borrows what."""
        borrowers = [p for p in self.lending if p is not None and p.role == "borrow"]
        return {"asset": lending.ASSET, **lending.counts(self.lending), "lender_deposit": lending.LENDER_DEPOSIT,
                "borrower_buffer": lending.BORROWER_BUFFER, "borrow_share": str(lending.BORROW_SHARE),
                "borrow_cap": format_units(borrowers[0].cap, borrowers[0].decimals) if borrowers else "0"}


async def read_account(c: Client, collateral: dict) -> dict:
    """An account's perp figures: positions (size, net cost), equity (from its
    ``collateralQuery`` answer), liquidation tiers (newest first)."""
    positions = {p["symbol"]: (Decimal(p["netQuantity"]), Decimal(p["netCost"])) for p in await c.request("positionQuery")}
    equity = Decimal(collateral["netEquity"])
    steps = await c.request("liquidationHistoryQueryAll", {"limit": 1000})
    return {"positions": positions, "equity": equity, "tiers": [s["tier"] for s in steps],
            "tier_names": {s["tier"]: s["tierName"] for s in steps}}


async def read_open_interest(url: str) -> dict[str, Decimal]:
    async with connect(url) as c:
        return {r["symbol"]: Decimal(r["openInterest"]) for r in await c.request("openInterest", sign=False)}


def net_costs(accounts: dict[str, dict]) -> Decimal:
    """The sum of the accounts' positions' net costs, which ``ledgerTotals`` subtracts from
    the settlement asset's balances (so they count unsettled PnL)."""
    return sum((cost for a in accounts.values() for _, cost in a.get("positions", {}).values()), Decimal(0))


def _open_interest(accounts: dict[str, dict], node: dict[str, Decimal], symbols: list[str]) -> tuple[dict, bool]:
    rows, ok = {}, True
    for s in symbols:
        sizes = [a["positions"][s][0] for a in accounts.values() if s in a["positions"]]
        long, short = sum((q for q in sizes if q > 0), Decimal(0)), -sum((q for q in sizes if q < 0), Decimal(0))
        theirs = node.get(s, Decimal(0))
        ok = ok and long == short == theirs
        rows[s] = {"long": decimal_text(long), "short": decimal_text(short), "node": decimal_text(theirs)}
    return rows, ok


def checks(accounts: dict[str, dict], open_interest: dict[str, Decimal], symbols: list[str]) -> dict:
    """The report's perp fields from the accounts' figures (``read_account``) and the node's open interest:

    * ``open_interest``: per perp, our accounts' long and short sizes, which must be equal
      and equal to the node's figure (every position is ours: traders and backstop);
    * ``negative_equity``: accounts below zero without an insurance-fund or ADL step;
    * ``liquidations``: steps per tier, ``liquidated_accounts``, and how many histories
      may have lost their oldest steps (the node keeps ``HISTORY`` per account).
    """
    oi, oi_ok = _open_interest(accounts, open_interest, symbols)
    names: dict[int, str] = {}
    tiers: Counter[int] = Counter()
    for a in accounts.values():
        tiers.update(a["tiers"])
        names.update(a["tier_names"])
    negative = sorted(k for k, a in accounts.items() if a["equity"] < 0 and not set(RESCUED) & set(a["tiers"]))
    return {
        "open_interest": oi, "open_interest_ok": oi_ok, "negative_equity": negative,
        "liquidations": {f"{t} {names[t]}": tiers[t] for t in sorted(tiers)},
        "liquidation_tiers": sorted(tiers),
        "liquidated_accounts": sum(1 for a in accounts.values() if a["tiers"]),
        # each liquidated account's steps, oldest first, and its equity now
        "liquidation_paths": {k[:8]: {"tiers": "".join(map(str, reversed(a["tiers"]))), "equity": decimal_text(a["equity"])}
                              for k, a in sorted(accounts.items()) if a["tiers"]},
        "liquidation_histories_full": sum(1 for a in accounts.values() if len(a["tiers"]) >= HISTORY),
    }
