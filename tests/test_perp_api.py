"""Perpetuals at the edges, without a node: the formatter's Backpack-shaped payloads, the
market-data streams built from synthetic events, and the API's perp methods against a
stand-in node that answers reads and transactions with canned replies."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from satchel.api.format import Formatter, fraction, naive_iso
from satchel.api.handlers import Api
from satchel.api.listing import Listing
from satchel.api.marketdata import MarketData
from satchel.core.messages import (
    ASK, BID, BY_LAST, MARKET, PPB, AssetSpec, BlockHeader, CollateralOf, CollateralRow, CollateralView,
    ConfigChanged, FundingPayment, HistoryOf, LeverageSet, Liquidation, MarketSpec, MarkPrice, MarksOf, MarkView,
    OpenInterest, PerpPrices, PerpSpec, PositionChanged, PositionsOf, PositionsView, TriggerPlaced, TxRejected,
)
from satchel.core.state import PositionState
from satchel.signing import Keypair, sign_request, verify

PERP = "SOL_USDC_PERP"
SPOT = "SOL_USDC"
ACCOUNT = "alice"
USDC = 10**6
TS = 1_754_064_000_000_000  # 2025-08-01T16:00:00 UTC, us


def perp_spec(**overrides: int) -> PerpSpec:
    # Backpack's SOL_USDC_PERP functions: imf sqrt(base 0.02, factor 0.0001275), mmf sqrt(0.0125, 0.0000765)
    fields = dict(imf_base=20_000_000, imf_factor=127_500, mmf_base=12_500_000, mmf_factor=76_500, max_leverage=50,
                  open_interest_limit=10**12, band_min=750_000_000, band_max=1_250_000_000, impact_max=1_030_000_000,
                  impact_min=970_000_000, mark_band=50_000_000, funding_interval_us=3_600_000_000,
                  funding_floor=-10_000_000, funding_cap=10_000_000, stale_index_us=60_000_000)
    return PerpSpec(**{**fields, **overrides})


def market(symbol: str, perp: PerpSpec | None) -> MarketSpec:
    # price and quantity at 2 decimals, USDC at 6: one price unit x one quantity unit = 100 USDC units
    return MarketSpec(symbol, "SOL", "USDC", 2, 1, 2, 1, 1, USDC, 2, 5, 0, 100, 10**7, perp)


def formatter() -> Formatter:
    return Formatter({SPOT: market(SPOT, None), PERP: market(PERP, perp_spec())},
                     {"USDC": AssetSpec("USDC", 6), "SOL": AssetSpec("SOL", 9, 800_000_000, 20_000)})


def header(ts: int = TS) -> BlockHeader:
    return BlockHeader(1, 1, ts, b"", 1, 0, b"", b"")


class Sink:
    def __init__(self) -> None:
        self.frames: list[str] = []

    def push(self, frame: str) -> None:
        self.frames.append(frame)

    def data(self) -> list[dict]:
        return [json.loads(f)["data"] for f in self.frames]


T_US = 1_700_000_000_000_000


def position(size: int, net_cost: int, entry_notional: int | None = None, *, mark: int = 15_000, realized: int = 0,
             funding: int = 0) -> PositionChanged:
    return PositionChanged(7, ACCOUNT, PERP, size, net_cost, net_cost if entry_notional is None else entry_notional,
                           realized, funding, mark, 7 if size else 0)


# ---------------------------------------------------------------- formatter


def test_fractions_and_times_are_backpack_strings():
    assert fraction(20_000_000) == "0.02"
    assert fraction(PPB) == "1"
    assert fraction(-125_000) == "-0.000125"
    assert naive_iso(TS) == "2025-08-01T16:00:00"
    assert datetime.fromisoformat(naive_iso(TS + 999)) == datetime(2025, 8, 1, 16)


def test_a_long_position_as_rest_item():
    fmt = formatter()
    # 2 SOL bought at 150 (net cost 300 USDC), marked at 155, 0.005 USDC of funding paid
    pos = PositionState(ACCOUNT, PERP, 200, 300 * USDC, 300 * USDC, 2 * USDC, 5_000, 0, 42)
    item = fmt.position(pos, 15_500)
    assert item == {
        "positionId": "42", "symbol": PERP, "netQuantity": "2", "netCost": "300", "entryPrice": "150",
        "breakEvenPrice": "150", "markPrice": "155", "estLiquidationPrice": "0", "imf": "0.02",
        "imfFunction": {"type": "sqrt", "base": "0.02", "factor": "0.0001275"}, "mmf": "0.0125",
        "mmfFunction": {"type": "sqrt", "base": "0.0125", "factor": "0.0000765"}, "netExposureQuantity": "2",
        "netExposureNotional": "310", "pnlRealized": "2", "pnlUnrealized": "10", "cumulativeFundingPayment": "-0.005",
        "subaccountId": None, "userId": ACCOUNT,
    }


def test_a_short_position_shows_its_side_in_net_cost_and_positive_contracts():
    fmt = formatter()
    pos = PositionState(ACCOUNT, PERP, -200, -300 * USDC, -300 * USDC, 0, -7_000, 0, 9)
    item = fmt.position(pos, 14_000)
    # ccxt: side from the sign of netCost, contracts from netExposureQuantity
    assert (item["netCost"], item["netQuantity"], item["netExposureQuantity"]) == ("-300", "-2", "2")
    assert (item["entryPrice"], item["pnlUnrealized"], item["cumulativeFundingPayment"]) == ("150", "20", "0.007")


def test_entry_and_break_even_prices_round_toward_zero_to_the_quote_decimals():
    fmt = formatter()
    # 1 @ 150 then 2 @ 151: average 150.6666...; net cost since reset at a 150.5 settlement
    entry = 100 * 15_000 * 100 + 200 * 15_100 * 100
    f = fmt.position_figures(PERP, 300, 300 * 15_050 * 100, entry, 15_100)
    assert (f.break_even, f.entry) == ("150.666666", "150.5")
    short = fmt.position_figures(PERP, -300, -entry, -entry, 15_100)
    assert short.break_even == "150.666666"


def test_margin_fractions_grow_with_the_square_root_of_notional():
    fmt = formatter()
    # 20,000 SOL at 150: 3,000,000 USDC, sqrt = 1732
    f = fmt.position_figures(PERP, 2_000_000, 3 * 10**6 * USDC, 3 * 10**6 * USDC, 15_000)
    assert (f.imf, f.mmf) == (fraction(127_500 * 1732), fraction(76_500 * 1732)) == ("0.22083", "0.132498")


def test_a_position_without_a_mark_shows_no_unrealized_pnl():
    f = formatter().position_figures(PERP, 200, 300 * USDC, 300 * USDC, 0)
    assert (f.unrealized, f.mark, f.exposure_notional) == ("0", "0", "0")


def test_a_flat_position_has_zero_prices():
    f = formatter().position_figures(PERP, 0, 0, 0, 15_000)
    assert (f.entry, f.break_even, f.exposure_quantity) == ("0", "0", "0")


def test_collateral_in_the_settlement_asset():
    fmt = formatter()
    rows = [
        # 10 SOL at 150 USDC, weight 0.8; 2 SOL of it held for orders
        CollateralRow("SOL", 10 * 10**9, 2 * 10**9, 150 * USDC, 800_000_000, 1_200 * USDC),
        CollateralRow("USDC", -50 * USDC, 0, USDC, PPB, -50 * USDC),  # a realized loss not yet covered
    ]
    view = CollateralView(rows, 1_150 * USDC, 10 * USDC, 1_160 * USDC, 310 * USDC, 6_200_000, 3_875_000, 20_000_000,
                          12_500_000, 3_741_935_483, False)
    out = fmt.collateral(view)
    assert out["collateral"] == [
        {"symbol": "SOL", "assetMarkPrice": "150", "totalQuantity": "10", "balanceNotional": "1500",
         "collateralWeight": "0.8", "collateralValue": "1200", "openOrderQuantity": "2", "lendQuantity": "0",
         "availableQuantity": "8"},
        {"symbol": "USDC", "assetMarkPrice": "1", "totalQuantity": "-50", "balanceNotional": "-50",
         "collateralWeight": "1", "collateralValue": "-50", "openOrderQuantity": "0", "lendQuantity": "0",
         "availableQuantity": "-50"},
    ]
    assert {k: v for k, v in out.items() if k != "collateral"} == {
        "assetsValue": "1500", "borrowLiability": "0", "liabilitiesValue": "50", "imf": "0.02", "mmf": "0.0125",
        "marginFraction": "3.741935483", "netEquity": "1160", "netEquityAvailable": "1153.8", "netEquityLocked": "6.2",
        "netExposureFutures": "310", "pnlUnrealized": "10", "liquidating": False,
    }


def test_collateral_without_exposure_has_no_margin_fraction():
    view = CollateralView([], 0, 0, 0, 0, 0, 0, 0, 0, 0, False)
    assert formatter().collateral(view)["marginFraction"] is None


def test_funding_payment_is_what_the_account_received():
    paid = FundingPayment(3, ACCOUNT, PERP, 1_301, 200, 100_000, TS)
    assert formatter().funding_payment(paid) == {
        "userId": ACCOUNT, "subaccountId": None, "symbol": PERP, "quantity": "-0.001301",
        "intervalEndTimestamp": "2025-08-01T16:00:00", "fundingRate": "0.0001",
    }
    received = FundingPayment(3, ACCOUNT, PERP, -1_301, -200, 100_000, TS)
    assert formatter().funding_payment(received)["quantity"] == "0.001301"


def test_mark_prices_and_open_interest_items():
    fmt = formatter()
    prices = PerpPrices(15_012, 15_000, 15_010, -12_500, TS + 3_600_000_000, 12_345)
    assert fmt.mark_price(PERP, prices) == {
        "symbol": PERP, "markPrice": "150.12", "indexPrice": "150", "fundingRate": "-0.0000125",
        "nextFundingTimestamp": (TS + 3_600_000_000) // 1000,
    }
    assert fmt.open_interest(PERP, 12_345, TS) == {"symbol": PERP, "openInterest": "123.45", "timestamp": TS // 1000}


def test_liquidation_history_items_name_their_tier():
    fmt = formatter()
    unwind = Liquidation(9, ACCOUNT, 2, PERP, ASK, 100, 14_000, 14_010, 5 * USDC, 4 * USDC, 2 * USDC, 140 * USDC, "", T_US)
    assert fmt.liquidation(unwind) == {
        "seq": 9, "userId": ACCOUNT, "tier": 2, "tierName": "bookUnwind", "symbol": PERP, "side": "Ask",
        "quantity": "1", "price": "140", "markPrice": "140.1", "equity": "5", "maintenance": "4", "autoclose": "2",
        "amount": "140", "counterparty": None, "timestamp": "2023-11-14T22:13:20",
    }
    cover = Liquidation(9, ACCOUNT, 4, "", BID, 0, 0, 0, -3 * USDC, 4 * USDC, 2 * USDC, 3 * USDC, "@insurance", T_US)
    item = fmt.liquidation(cover)
    assert (item["tierName"], item["symbol"], item["quantity"], item["price"]) == ("insuranceFund", None, None, None)
    assert (item["equity"], item["amount"], item["counterparty"]) == ("-3", "3", "@insurance")
    names = [fmt.liquidation(Liquidation(1, ACCOUNT, t, "", BID, 0, 0, 0, 0, 0, 0, 0, "", T_US))["tierName"]
             for t in range(1, 6)]
    assert names == ["cancelOrders", "bookUnwind", "backstop", "insuranceFund", "autoDeleverage"]


def test_orders_show_reduce_only_and_triggers_truthfully():
    fmt = formatter()
    spot = fmt.order(SPOT, 1, None, BID, 15_000, 100, 0, 0, "New")
    assert spot["reduceOnly"] is False and "triggerPrice" not in spot
    stop = fmt.order(PERP, 2, 7, ASK, 0, 200, 0, 0, "TriggerPending", order_type=MARKET, reduce_only=True,
                     trigger_price=14_000, trigger_by=BY_LAST)
    assert (stop["reduceOnly"], stop["status"]) == (True, "TriggerPending")
    trigger = (stop["triggerPrice"], stop["triggerBy"], stop["triggerQuantity"], stop["quantity"])
    assert trigger == ("140", "LastPrice", "2", "2")


# ---------------------------------------------------------------- streams


def test_perp_streams_are_valid_for_perps_only():
    md = MarketData(formatter())
    assert md.valid_public(f"markPrice.{PERP}") and md.valid_public(f"openInterest.{PERP}")
    assert not md.valid_public(f"markPrice.{SPOT}") and not md.valid_public(f"openInterest.{SPOT}")
    assert md.valid_public(f"depth.{PERP}") and md.valid_public("liquidation")
    assert not md.valid_public(f"liquidation.{PERP}") and not md.valid_public("markPrice.NOPE_PERP")
    assert md.valid_private("account.positionUpdate") and md.valid_private(f"account.positionUpdate.{PERP}")
    assert not md.valid_private(f"account.positionUpdate.{SPOT}")
    assert md.valid_private(f"account.orderUpdate.{SPOT}") and md.valid_private(f"account.orderUpdate.{PERP}")
    assert not md.valid_private(f"account.balanceUpdate.{SPOT}") and not md.valid_private("account.nope")


def test_a_perp_listed_later_gets_its_streams():
    fmt = formatter()
    md = MarketData(fmt)
    spec = market("BTC_USDC_PERP", perp_spec())
    assert not md.valid_public("markPrice.BTC_USDC_PERP")
    fmt.markets[spec.symbol] = spec  # the listing takes the event first (api.listing.Listing)
    md.publish(header(), [ConfigChanged(1, "listMarket", spec.symbol, market=spec)])
    assert md.valid_public("markPrice.BTC_USDC_PERP") and md.valid_private("account.positionUpdate.BTC_USDC_PERP")


def test_mark_price_and_open_interest_frames():
    md = MarketData(formatter())
    marks, oi, spot = Sink(), Sink(), Sink()
    md.subscribe(f"markPrice.{PERP}", marks)
    md.subscribe(f"openInterest.{PERP}", oi)
    md.subscribe(f"trade.{SPOT}", spot)
    md.publish(header(), [MarkPrice(5, PERP, 15_012, 15_000, 12_500, TS + 3_600_000_000),
                          OpenInterest(5, PERP, 12_345)])
    [m] = marks.data()
    assert {k: v for k, v in m.items() if k != "E"} == {
        "e": "markPrice", "s": PERP, "p": "150.12", "f": "0.0000125", "i": "150",
        "n": (TS + 3_600_000_000) // 1000, "T": TS,
    }
    [o] = oi.data()
    assert (o["e"], o["s"], o["o"]) == ("openInterest", PERP, "123.45") and isinstance(o["E"], int)
    assert json.loads(marks.frames[0])["stream"] == f"markPrice.{PERP}" and not spot.frames


def test_public_liquidations_are_the_steps_that_trade_a_position():
    md = MarketData(formatter())
    a, b = Sink(), Sink()
    md.subscribe("liquidation", a)
    md.subscribe("liquidation", b)
    steps = [Liquidation(9, ACCOUNT, tier, PERP if tier != 4 else "", ASK, 100, 14_000, 14_010, 0, 0, 0, 0, "", T_US)
             for tier in range(1, 6)]
    md.publish(header(), steps)
    assert len(a.frames) == 3
    assert all(x is y for x, y in zip(a.frames, b.frames))  # encoded once, the same text to every subscriber
    first = a.data()[0]
    assert {k: v for k, v in first.items() if k != "E"} == {
        "e": "liquidation", "q": "1", "p": "140", "S": "Ask", "s": PERP, "T": TS,
    }


def test_position_updates_say_opened_adjusted_closed():
    md = MarketData(formatter())
    everything, one_market, other = Sink(), Sink(), Sink()
    md.subscribe(f"account.positionUpdate:{ACCOUNT}", everything)
    md.subscribe(f"account.positionUpdate.{PERP}:{ACCOUNT}", one_market)
    md.subscribe("account.positionUpdate:bob", other)
    md.publish(header(), [position(200, 300 * USDC)])
    md.publish(header(), [position(300, 450 * USDC, mark=15_500, funding=1_000)])
    md.publish(header(), [position(0, 0, realized=15 * USDC)])
    md.publish(header(), [position(-100, -150 * USDC)])
    kinds = [d["e"] for d in everything.data()]
    assert kinds == ["positionOpened", "positionAdjusted", "positionClosed", "positionOpened"]
    assert one_market.data() == everything.data()
    assert [json.loads(f)["stream"] for f in one_market.frames] == [f"account.positionUpdate.{PERP}"] * 4
    assert [json.loads(f)["stream"] for f in everything.frames] == ["account.positionUpdate"] * 4
    assert not other.frames
    adjusted = everything.data()[1]
    assert {k: v for k, v in adjusted.items() if k != "E"} == {
        "e": "positionAdjusted", "s": PERP, "b": "150", "B": "150", "f": "0.02", "M": "155", "m": "0.0125",
        "q": "3", "Q": "3", "n": "465", "i": "7", "p": "0", "P": "15", "l": "0", "T": TS,
    }
    closed = everything.data()[2]
    assert (closed["q"], closed["p"], closed["P"]) == ("0", "15", "0")
    assert everything.data()[3]["q"] == "-1"


def test_position_sizes_are_followed_while_nobody_watches():
    md = MarketData(formatter())
    md.publish(header(), [position(200, 300 * USDC)])  # opened before anyone subscribed
    sink = Sink()
    md.subscribe(f"account.positionUpdate:{ACCOUNT}", sink)
    md.publish(header(), [position(100, 150 * USDC)])
    assert [d["e"] for d in sink.data()] == ["positionAdjusted"]


def test_trigger_placed_is_an_order_update():
    md = MarketData(formatter())
    sink = Sink()
    md.subscribe(f"account.orderUpdate.{PERP}:{ACCOUNT}", sink)
    md.publish(header(), [TriggerPlaced(11, 11, ACCOUNT, PERP, ASK, MARKET, 0, 200, 14_000, BY_LAST, True, 5),
                          FundingPayment(11, ACCOUNT, PERP, 10, 200, 1, TS)])  # funding is in no stream
    [d] = sink.data()
    assert {k: v for k, v in d.items() if k != "E"} == {
        "e": "triggerPlaced", "s": PERP, "c": 5, "S": "Ask", "o": "MARKET", "q": "2", "p": None, "P": "140",
        "B": "LastPrice", "Y": "2", "X": "TriggerPending", "i": "11", "r": True, "T": TS, "O": "USER",
    }


# ---------------------------------------------------------------- API methods, against a stand-in node


class Replies:
    closed = False

    def __init__(self) -> None:
        self.results: list = []
        self.errors: list = []

    def result(self, req_id, result) -> None:
        self.results.append(result)

    def error(self, req_id, code, message) -> None:
        self.errors.append(code)

    def failed(self, req_id, exc) -> None:
        raise exc


class Verifier:
    def check(self, public, candidates, signature, done) -> None:
        done(verify(public, candidates, signature))


class Latency:
    def sampled(self) -> bool:
        return False


class Node:
    """Answers each read by its message type and each transaction with ``events``."""

    def __init__(self, answers: dict, events: list | None = None):
        self.answers = answers
        self.events = events or []
        self.read_messages: list = []
        self.submitted: list = []
        self.sequencer = self
        self.latency = Latency()
        self.block_timestamp = TS

    def read(self, query, reply) -> None:
        self.read_messages.append(query.message)
        reply(self.answers[type(query.message)])

    def submit(self, tx, done) -> None:
        self.submitted.append(tx)
        done(self.events)


KEY = Keypair.generate()


def api_for(node: Node) -> Api:
    fmt = formatter()
    listing = Listing(fmt.markets, fmt.assets)
    return Api(node, listing, Formatter(listing.markets, listing.assets), Verifier(), MarketData(fmt), max_page=2)


def call(api: Api, method: str, params: dict, *, signed: bool = True) -> Replies:
    replies = Replies()
    texts = {k: str(v) for k, v in params.items()}
    sig = sign_request(KEY, method, texts)[1] if signed else None
    getattr(api, method)(api.caller(replies), 1, texts, sig)
    return replies


def view() -> PositionsView:
    rows = [PositionState(KEY.api_key, PERP, 200, 300 * USDC, 300 * USDC, 0, 0, 0, 42),
            PositionState(KEY.api_key, "OTHER_PERP", 0, 0, 0, 0, 0, 0, 43)]  # flat: not shown
    return PositionsView(rows, {PERP: MarkView(15_500, 15_490, TS, 15_510)})


async def test_position_query_reads_the_signers_positions():
    node = Node({PositionsOf: view()})
    r = call(api_for(node), "positionQuery", {})
    assert node.read_messages == [PositionsOf(KEY.api_key)]
    [item] = r.results[0]
    assert (item["symbol"], item["markPrice"], item["pnlUnrealized"]) == (PERP, "155", "10")
    assert call(api_for(node), "positionQuery", {"symbol": PERP}).results[0][0]["positionId"] == "42"
    assert call(api_for(node), "positionQuery", {"symbol": SPOT}).errors == ["INVALID_SYMBOL"]
    assert call(api_for(node), "positionQuery", {}, signed=False).errors == ["UNAUTHORIZED"]


async def test_collateral_query():
    v = CollateralView([CollateralRow("USDC", 100 * USDC, 0, USDC, PPB, 100 * USDC)], 100 * USDC, 0, 100 * USDC, 0, 0,
                       0, 0, 0, 0, False)
    node = Node({CollateralOf: v})
    r = call(api_for(node), "collateralQuery", {})
    assert node.read_messages == [CollateralOf(KEY.api_key)]
    assert (r.results[0]["netEquity"], r.results[0]["marginFraction"]) == ("100", None)


async def test_histories_filter_by_market_and_page():
    payments = [FundingPayment(s, KEY.api_key, PERP if s % 2 else "ETH_USDC_PERP", s, 200, 100, TS) for s in (5, 4, 3, 1)]
    node = Node({HistoryOf: payments})
    api = api_for(node)
    api.listing.markets["ETH_USDC_PERP"] = market("ETH_USDC_PERP", perp_spec())
    r = call(api, "fundingHistoryQueryAll", {})
    assert node.read_messages == [HistoryOf(KEY.api_key, "funding")]
    assert [p["quantity"] for p in r.results[0]] == ["-0.000005", "-0.000004"]  # newest first, max_page 2
    r = call(api, "fundingHistoryQueryAll", {"symbol": PERP, "offset": 1, "limit": 2})
    assert [p["quantity"] for p in r.results[0]] == ["-0.000003", "-0.000001"]
    assert call(api, "fundingHistoryQueryAll", {"limit": 3}).errors == ["INVALID_CLIENT_REQUEST"]
    steps = [Liquidation(9, KEY.api_key, 2, PERP, ASK, 100, 14_000, 14_010, 0, 0, 0, 0, "", T_US)]
    node = Node({HistoryOf: steps})
    r = call(api_for(node), "liquidationHistoryQueryAll", {"symbol": PERP})
    assert node.read_messages == [HistoryOf(KEY.api_key, "liquidation")]
    assert r.results[0][0]["tierName"] == "bookUnwind"


async def test_mark_prices_and_open_interest_are_public():
    prices = {PERP: PerpPrices(15_012, 15_000, 15_010, 12_500, TS + 3_600_000_000, 12_345)}
    api = api_for(Node({MarksOf: prices}))
    api.marketdata.last_timestamp = TS
    r = call(api, "markPrices", {}, signed=False)
    assert r.results == [[{"symbol": PERP, "markPrice": "150.12", "indexPrice": "150", "fundingRate": "0.0000125",
                           "nextFundingTimestamp": (TS + 3_600_000_000) // 1000}]]
    assert call(api, "markPrices", {"symbol": SPOT}, signed=False).errors == ["INVALID_SYMBOL"]
    r = call(api, "openInterest", {"symbol": PERP}, signed=False)
    assert r.results == [[{"symbol": PERP, "openInterest": "123.45", "timestamp": TS // 1000}]]


@pytest.mark.parametrize("events, expect", [
    ([LeverageSet(3, "x", 10)], ("result", {"leverageLimit": "10"})),
    ([TxRejected(3, "x", "INVALID_LEVERAGE", "no")], ("error", "INVALID_LEVERAGE")),
])
async def test_account_update_sets_the_leverage_limit(events, expect):
    node = Node({}, events)
    r = call(api_for(node), "accountUpdate", {"leverageLimit": 10})
    assert [(tx.account, tx.leverage) for tx in node.submitted] == [(KEY.api_key, 10)]
    assert (("result", r.results[0]) if r.results else ("error", r.errors[0])) == expect


async def test_order_execute_answers_trigger_pending():
    placed = TriggerPlaced(3, 3, KEY.api_key, PERP, ASK, MARKET, 0, 200, 14_000, 0, True, None)
    node = Node({}, [placed])
    r = call(api_for(node), "orderExecute", {"symbol": PERP, "side": "Ask", "orderType": "Market",
                                             "triggerPrice": "140", "triggerQuantity": "2", "reduceOnly": "true"})
    [order] = r.results
    assert (order["status"], order["reduceOnly"], order["triggerPrice"], order["triggerQuantity"]) == (
        "TriggerPending", True, "140", "2")
    limit = call(api_for(Node({}, [])), "orderExecute",
                 {"symbol": PERP, "side": "Bid", "orderType": "Limit", "price": "150", "quantity": "1"})
    assert limit.results[0]["status"] == "New"
