"""The oracle adapter: its sources (seeded random walk, price files) without a node, its
runner against a stand-in node on a virtual clock, and end to end on a real node."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import msgspec
import pytest
import trio

from satchel import config, oracle
from satchel.core import instructions
from satchel.core.amounts import to_units
from satchel.core.messages import MarksOf, PerpPrices, SetIndex, TxRejected
from satchel.signing import Keypair, signed_message, verify

CFG = config.load()
MARKETS = {m.symbol: m for m in CFG.market_specs()}
PERPS = oracle.perps(MARKETS.values())
SOL = MARKETS["SOL_USDC_PERP"]


def walk(settings: oracle.OracleSettings = oracle.OracleSettings(), n: int = 300, resume=None) -> list[oracle.IndexUpdate]:
    starts = oracle.start_prices(MARKETS, settings, CFG.demo.prices)
    return list(itertools.islice(oracle.random_walk(PERPS, starts, settings, resume), n))


def first(settings: oracle.OracleSettings, resume: dict, symbol: str = "SOL_USDC_PERP") -> str:
    """The first price the walk publishes for ``symbol``."""
    return next(u.price for u in walk(settings, n=len(PERPS), resume=resume) if u.symbol == symbol)


def units(update: oracle.IndexUpdate) -> int:
    return to_units(update.price, MARKETS[update.symbol].price_decimals)


# ---------------------------------------------------------------- starting prices


def test_start_prices_come_from_the_spot_markets_demo_prices():
    assert oracle.start_prices(MARKETS, oracle.OracleSettings(), CFG.demo.prices) == {
        "BTC_USDC_PERP": 900_000, "ETH_USDC_PERP": 300_000, "SOL_USDC_PERP": 15_000}


def test_start_prices_from_the_settings_win_and_are_put_on_the_tick():
    s = oracle.OracleSettings(start={"SOL_USDC_PERP": "142.347"})
    starts = oracle.start_prices(MARKETS, s, {})
    assert starts == {"SOL_USDC_PERP": 14_235}  # no demo prices: only the perp given a start


@pytest.mark.parametrize("start, message", [
    ({"DOGE_USDC_PERP": "1"}, "not listed perpetuals: DOGE_USDC_PERP"),
    ({"SOL_USDC": "150"}, "not listed perpetuals: SOL_USDC"),
    ({"SOL_USDC_PERP": "-1"}, "SOL_USDC_PERP: price '-1' is not a positive decimal"),
    ({"SOL_USDC_PERP": "abc"}, "SOL_USDC_PERP: price 'abc' is not a positive decimal"),
])
def test_bad_start_prices_are_named(start, message):
    with pytest.raises(ValueError, match=message):
        oracle.start_prices(MARKETS, oracle.OracleSettings(start=start), CFG.demo.prices)


def test_settings_are_checked_as_configuration():
    s = msgspec.convert({"seed": 1, "interval_s": 0.5, "step_bps": 5, "file": "p.csv", "speed": 2,
                         "start": {"SOL_USDC_PERP": "140"}}, oracle.OracleSettings)
    assert (s.seed, s.interval_s, s.step_bps, s.file, s.speed) == (1, 0.5, 5.0, "p.csv", 2.0)
    for bad in ({"interval_s": 0}, {"speed": -1}, {"max_deviation": 1}, {"step_bps": -1}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, oracle.OracleSettings)
    assert CFG.oracle == oracle.OracleSettings()  # [oracle] in defaults.toml holds the defaults


# ---------------------------------------------------------------- the random walk


def test_the_walk_is_reproducible_from_its_seed():
    assert walk() == walk()
    assert walk(oracle.OracleSettings(seed=8)) != walk()


def test_a_markets_walk_does_not_depend_on_the_other_markets():
    s = oracle.OracleSettings()
    starts = oracle.start_prices(MARKETS, s, CFG.demo.prices)
    alone = itertools.islice(oracle.random_walk([SOL], starts, s), 50)
    together = [u for u in walk(n=150) if u.symbol == "SOL_USDC_PERP"]
    assert [u.price for u in alone] == [u.price for u in together]


def test_the_walk_starts_at_the_start_and_steps_every_interval():
    updates = walk(oracle.OracleSettings(interval_s=0.25), n=9)
    assert [(u.delay_s, u.symbol) for u in updates[:3]] == [
        (0.0, "BTC_USDC_PERP"), (0.0, "ETH_USDC_PERP"), (0.0, "SOL_USDC_PERP")]
    assert [u.price for u in updates[:3]] == ["90000", "3000", "150"]
    assert [u.delay_s for u in updates[3:]] == [0.25, 0.0, 0.0] * 2
    assert updates[3:] != updates[:3]  # it moves


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_walk_stays_within_its_bounds_on_the_tick(seed):
    # big steps in a narrow band: it reaches both bounds many times
    s = oracle.OracleSettings(seed=seed, step_bps=300, max_deviation=0.05)
    bounds = {"BTC_USDC_PERP": (855_000, 945_000), "ETH_USDC_PERP": (285_000, 315_000),
              "SOL_USDC_PERP": (14_250, 15_750)}
    seen: dict[str, set] = {sym: set() for sym in bounds}
    for u in walk(s, n=6000):
        p = units(u)
        lo, hi = bounds[u.symbol]
        assert lo <= p <= hi and p % MARKETS[u.symbol].tick == 0, u
        seen[u.symbol].add(p)
    for sym, (lo, hi) in bounds.items():
        prices = sorted(seen[sym])
        assert prices[0] < lo + (hi - lo) * 0.1 and prices[-1] > hi - (hi - lo) * 0.1, sym  # not stuck at one side
        assert len(prices) > 100, sym


def test_the_walk_bounds_are_exact():
    # 102.60 * 1.15 is 117.99 exactly, but 11798.999... in floats: the bound is still 117.99
    s = oracle.OracleSettings(max_deviation=0.15, start={"SOL_USDC_PERP": "102.60"})
    assert first(s, {"SOL_USDC_PERP": 10**9}) == "117.99"
    assert first(s, {"SOL_USDC_PERP": 1}) == "87.21"


def test_a_tiny_step_still_moves_the_price():
    # 1 bps of 150 is under a tick: the level accumulates steps rather than rounding them away
    s = oracle.OracleSettings(step_bps=0.5, start={"SOL_USDC_PERP": "150"})
    assert len({u.price for u in walk(s, n=500)}) > 3


def test_the_walk_resumes_from_the_ledgers_index_within_the_bounds():
    s = oracle.OracleSettings(start={"SOL_USDC_PERP": "150"})
    assert first(s, {"SOL_USDC_PERP": 16_012}) == "160.12"
    assert first(s, {"SOL_USDC_PERP": 99_999}) == "180"  # clamped to start * 1.2


def test_no_start_prices_no_updates():
    assert list(oracle.random_walk(PERPS, {}, oracle.OracleSettings())) == []


# ---------------------------------------------------------------- price files


CSV = """timestamp_ms,symbol,price
1700000000000,SOL_USDC_PERP,150
1700000000000,BTC_USDC_PERP,90000.5
1700000000250,SOL_USDC_PERP,150.10
1700000001250,SOL_USDC_PERP,149.9
1700000060000,SOL_USDC_PERP,151
"""


def test_a_csv_file_replays_at_its_timestamps_relative_to_the_first(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text(CSV)
    rows = oracle.load_prices(path, MARKETS)
    assert rows[2] == oracle.PriceRow(1_700_000_000_250, "SOL_USDC_PERP", "150.1")  # canonical text
    assert list(oracle.replay(rows)) == [
        (0.0, "SOL_USDC_PERP", "150"), (0.0, "BTC_USDC_PERP", "90000.5"), (0.25, "SOL_USDC_PERP", "150.1"),
        (1.0, "SOL_USDC_PERP", "149.9"), (58.75, "SOL_USDC_PERP", "151")]
    # a 60 s file takes 60 s, or 6 s at ten times the speed
    assert sum(u.delay_s for u in oracle.replay(rows)) == pytest.approx(60.0)
    fast = list(oracle.replay(rows, speed=10))
    assert [u.delay_s for u in fast] == pytest.approx([0, 0, 0.025, 0.1, 5.875])
    assert sum(u.delay_s for u in fast) == pytest.approx(6.0)


def test_a_json_file_and_a_reordered_csv_read_the_same(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(CSV)
    rows = oracle.load_prices(csv_path, MARKETS)
    json_path = tmp_path / "a.json"
    json_path.write_text("[\n" + ",\n".join(
        f'  {{"timestamp_ms": {r.timestamp_ms}, "symbol": "{r.symbol}", "price": {r.price}}}' if i % 2 else
        f'  {{"timestamp_ms": "{r.timestamp_ms}", "symbol": "{r.symbol}", "price": "{r.price}"}}'
        for i, r in enumerate(rows)) + "\n]\n")
    assert oracle.load_prices(json_path, MARKETS) == rows
    reordered = tmp_path / "b.csv"
    reordered.write_text("\ufeffsymbol, price ,timestamp_ms\n\n" + "\n".join(
        f"{r.symbol},{r.price},{r.timestamp_ms}" for r in rows) + "\n")
    assert oracle.load_prices(reordered, PERPS) == rows


@pytest.mark.parametrize("text, message", [
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,150\n1000,SOL_USDC_PERP,150.005\n",
     "line 3: price '150.005' is not a positive multiple of SOL_USDC_PERP's tick 0.01"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,150\n1000,BTC_USDC_PERP,90000.05\n",
     "line 3: price '90000.05' is not a positive multiple of BTC_USDC_PERP's tick 0.1"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,0\n", "line 2: price '0' is not a positive multiple"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,-150\n", "line 2: price '-150' is not a positive multiple"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,1e2\n", "line 2: price '1e2' is not a positive multiple"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC,150\n",
     "line 2: 'SOL_USDC' is not a listed perpetual market (BTC_USDC_PERP, ETH_USDC_PERP, SOL_USDC_PERP)"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,150\n\n12.5,SOL_USDC_PERP,150\n",
     "line 4: timestamp_ms must be a whole number of milliseconds, not '12.5'"),
    ("timestamp_ms,symbol,price\n5000,SOL_USDC_PERP,150\n4999,SOL_USDC_PERP,150\n",
     "line 3: timestamp_ms 4999 is earlier than the previous row's 5000"),
    ("timestamp_ms,symbol,price\n0,SOL_USDC_PERP\n", "line 2: 2 fields, expected 3 (timestamp_ms,symbol,price)"),
    ("time,symbol,price\n0,SOL_USDC_PERP,150\n", "line 1: the header must be timestamp_ms,symbol,price, not 'time,symbol,price'"),
    ("timestamp_ms,symbol,price\n0,\"SOL_USDC_PERP,150\n", "line 2: not CSV"),
    ("timestamp_ms,symbol,price\n", ": no price rows"),
    ('[\n  {"timestamp_ms": 0, "symbol": "SOL_USDC_PERP", "price": "150"},\n'
     '  {"timestamp_ms": 1, "symbol": "SOL_USDC_PERP", "price": 150.001}\n]',
     "line 3: price '150.001' is not a positive multiple of SOL_USDC_PERP's tick 0.01"),
    ('[\n  {"timestamp_ms": 0, "symbol": "SOL_USDC_PERP", "price": "150"},\n  {"timestamp_ms": 1, "price": "150"}\n]',
     "line 3: missing symbol"),
    ('[\n  {"timestamp_ms": 0, "symbol": "SOL_USDC_PERP", "price": "150"},\n  ["SOL_USDC_PERP"]\n]',
     "line 3: expected an object with timestamp_ms, symbol, price"),
    ('[\n  {"timestamp_ms": 0, "symbol": "SOL_USDC_PERP", "price": "150"}\n  {"timestamp_ms": 1}\n]',
     "line 3: expected ',' or ']' after an item"),
    ('[\n  {"timestamp_ms": 0, "symbol": "SOL_USDC_PERP",\n   "price": "150"},\n  {"timestamp_ms": 1,, }\n]',
     "line 4: not JSON"),
    ('[{"timestamp_ms": true, "symbol": "SOL_USDC_PERP", "price": "150"}]',
     "line 1: timestamp_ms must be a whole number of milliseconds, not True"),
    ('[{"timestamp_ms": 0, "symbol": "SOL_USDC_PERP", "price": "150"}] x', "line 1: unexpected text after the list"),
    ("[]", ": no price rows"),
])
def test_a_malformed_file_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / ("prices.json" if text.startswith("[") else "prices.csv")
    path.write_text(text)
    with pytest.raises(oracle.PriceFileError) as err:
        oracle.load_prices(path, MARKETS)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(oracle.PriceFileError, match="nope.csv: cannot read"):
        oracle.load_prices(tmp_path / "nope.csv", MARKETS)


def test_hold_repeats_the_last_prices_every_interval():
    held = list(itertools.islice(oracle.hold({"SOL_USDC_PERP": "151", "BTC_USDC_PERP": "90000"}, 2.0), 4))
    assert held == [(2.0, "SOL_USDC_PERP", "151"), (0.0, "BTC_USDC_PERP", "90000"),
                    (2.0, "SOL_USDC_PERP", "151"), (0.0, "BTC_USDC_PERP", "90000")]
    assert list(oracle.hold({}, 1.0)) == []


# ---------------------------------------------------------------- the runner, against a stand-in node


class _Engine:
    markets = MARKETS
    assets = {a.symbol: a for a in CFG.asset_specs()}


class FakeNode:
    """What the runner uses of a node: listing, admin key, config, submit and ask."""

    def __init__(self, fail_on: str | None = None, reject_on: str | None = None, marks: dict | None = None):
        self.engine = _Engine()
        self.admin = Keypair.generate()
        self.cfg = CFG
        self.submitted: list[tuple[float, SetIndex]] = []
        self.fail_on = fail_on
        self.reject_on = reject_on
        self.marks = marks or {}
        self.closed = False

    def submit(self, tx, callback) -> None:
        if self.closed:
            raise trio.ClosedResourceError("sequencer is shut down")
        if tx.price == self.fail_on:
            raise RuntimeError("the sequencer hiccuped")
        self.submitted.append((trio.current_time(), tx))
        callback([TxRejected(1, tx.admin, "INVALID_PRICE", "no")] if self.reject_on == tx.price else [])

    async def ask(self, target: str, message) -> dict:
        assert (target, type(message)) == ("risk", MarksOf)
        return self.marks




async def test_the_runner_signs_and_submits_on_the_files_schedule(tmp_path, autojump_clock):
    path = tmp_path / "prices.csv"
    path.write_text(CSV)
    node = FakeNode(fail_on=14_990, reject_on=15_010)  # 149.9 fails to submit, 150.10 is rejected
    runner = oracle.Oracle(node, oracle.OracleSettings(speed=2.0, interval_s=5.0), oracle.load_prices(path, MARKETS))
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(runner.run)
        await trio.sleep(37)  # the file takes 30 s at speed 2, then the last prices are held
        nursery.cancel_scope.cancel()
    sent = [(round(t - t0, 3), tx.symbol, tx.price) for t, tx in node.submitted]
    assert sent[:4] == [(0.0, "SOL_USDC_PERP", 15_000), (0.0, "BTC_USDC_PERP", 900_005),
                        (0.125, "SOL_USDC_PERP", 15_010), (30.0, "SOL_USDC_PERP", 15_100)]
    # held every interval_s after the end, each market at its last price
    assert sent[4:6] == [(35.0, "SOL_USDC_PERP", 15_100), (35.0, "BTC_USDC_PERP", 900_005)]
    assert len(sent) == 6
    assert runner.rejected == 1 and runner.sent == 6
    for _, tx in node.submitted:
        # signed by the admin key over exactly the parameters the validator rebuilds it from
        texts = dict(tx.auth.params)
        assert instructions.build("oracleIndex", texts, node.admin.api_key, _Engine()) == msgspec.structs.replace(tx, auth=None)
        assert verify(node.admin.public, (signed_message("oracleIndex", tx.auth),), tx.auth.signature)


async def test_the_runner_walks_from_the_ledgers_index_and_stops_quietly(autojump_clock):
    current = {"SOL_USDC_PERP": PerpPrices(16_000, 16_000, 0, 0, 0, 0), "BTC_USDC_PERP": PerpPrices(1, 0, 0, 0, 0, 0)}
    node = FakeNode(marks=current)
    runner = oracle.Oracle(node, oracle.OracleSettings(interval_s=0.5))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.sleep(2.1)
        node.closed = True  # the node shuts down under the oracle: it stops without an error
        await trio.sleep(1)
    first = {tx.symbol: tx.price for _, tx in node.submitted[:3]}
    assert first == {"BTC_USDC_PERP": 900_000, "ETH_USDC_PERP": 300_000, "SOL_USDC_PERP": 16_000}
    assert len(node.submitted) == 3 * 5  # at 0, 0.5, 1, 1.5 and 2 s
    expected = walk(oracle.OracleSettings(interval_s=0.5), n=15, resume={"SOL_USDC_PERP": 16_000})
    assert [tx.price for _, tx in node.submitted] == [units(u) for u in expected]


async def test_a_bad_file_in_the_settings_is_logged_not_fatal(tmp_path, autojump_clock):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp_ms,symbol,price\n0,DOGE,1\n")
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(oracle.Oracle(node, oracle.OracleSettings(file=str(path))).run)
        await trio.sleep(5)
    assert node.submitted == []


# ---------------------------------------------------------------- the command line


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satchel.tools.cli", "serve", "--port", "0", "--replication-port", "-1",
                           "--no-demo", "--rest-port", "-1", *args], capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_bad_price_file_before_starting(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("timestamp_ms,symbol,price\n0,SOL_USDC_PERP,150\n1000,SOL_USDC_PERP,150.005\n")
    r = _serve("--data", str(tmp_path / "data"), "--oracle-file", str(path))
    assert r.returncode == 2
    assert f"satchel serve: {path} line 3: price '150.005' is not a positive multiple" in r.stderr
    assert not (tmp_path / "data").exists()  # refused before the node started


def test_serve_oracle_flags_are_checked(tmp_path):
    r = _serve("--data", str(tmp_path / "data"), "--no-oracle", "--oracle-file", "x.csv")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    r = _serve("--data", str(tmp_path / "data"), "--oracle-speed", "0")
    assert r.returncode == 2 and "must be positive" in r.stderr


# ---------------------------------------------------------------- end to end


async def test_the_oracle_sets_the_index_on_a_live_node_and_a_validator_agrees(nursery, tmp_path):
    from conftest import start_server
    from satchel.verify.validator import Validator

    path = tmp_path / "prices.json"
    path.write_text(json.dumps([
        {"timestamp_ms": 0, "symbol": "SOL_USDC_PERP", "price": "150"},
        {"timestamp_ms": 0, "symbol": "ETH_USDC_PERP", "price": "3000.5"},
        {"timestamp_ms": 500, "symbol": "SOL_USDC_PERP", "price": "151.25"},
        {"timestamp_ms": 1000, "symbol": "SOL_USDC_PERP", "price": "152"},
    ]))
    server = await start_server(nursery, tmp_path)
    node = server.node
    runner = oracle.Oracle(node, oracle.OracleSettings(speed=5.0, interval_s=0.2), oracle.load_prices(path, MARKETS))
    async with trio.open_nursery() as edges:
        await edges.start(runner.run)
        with trio.fail_after(10):
            while True:
                marks = await node.ask("risk", MarksOf())
                if "SOL_USDC_PERP" in marks and marks["SOL_USDC_PERP"].index == 15_200:
                    break
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # a few held updates too
        edges.cancel_scope.cancel()
    assert marks["ETH_USDC_PERP"].index == 300_050
    assert runner.rejected == 0 and runner.sent >= 6
    node.shutdown()
    await node.wait_stopped()
    # every oracle transaction re-verifies: the admin's signature over the params it is rebuilt from
    v = Validator(tmp_path / "validator")
    height = await v.check_journal(node.data / "journal")
    assert height == node.chain.height and v.verified_signatures >= runner.sent
