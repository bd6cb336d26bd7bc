"""The load test's conservation verdict comes from the node's own ``ledgerTotals``, so fills
that land after a trader stopped reading its private stream no longer raise a false alarm;
with lending, the pools' cash, reserve and rounding are part of it, every pool must be
solvent and interest must add up."""

from __future__ import annotations

import threading
from decimal import Decimal as D

import orjson
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from satchel.tools.loadtest.report import verdict
from satchel.tools.loadtest.runner import check_conservation, conservation
from satchel.signing import Keypair

DEPOSITED = {"USDC": D("20000000"), "SOL": D("2000000")}


def node_totals(fees_usdc: str, fees_sol: str = "0", *, extra_usdc: str = "0") -> dict:
    """What a conserved node answers after trading moved fees out of the traders' balances."""
    return {
        "USDC": {"deposits": "20000000", "withdrawals": "0", "fees": fees_usdc,
                 "balances": str(D(20000000) - D(fees_usdc) + D(extra_usdc))},
        "SOL": {"deposits": "2000000", "withdrawals": "0", "fees": fees_sol, "balances": str(D(2000000) - D(fees_sol))},
    }


def as_decimal(totals: dict) -> dict:
    return {a: {k: D(v) for k, v in f.items()} for a, f in totals.items()}


def test_late_fills_missing_from_the_streams_do_not_fail_conservation():
    totals = as_decimal(node_totals("12.345678", "0.5"))
    traders = {"USDC": D("19999987.654322"), "SOL": D("1999999.5")}
    # the traders' streams missed the last maker fills: they saw only part of the fees
    stream_fees = {"USDC": D("12.000001"), "SOL": D("0.25")}
    assert traders["USDC"] + stream_fees["USDC"] != DEPOSITED["USDC"]  # what the old check raised the alarm on
    rows, ok = conservation(DEPOSITED, traders, totals, stream_fees)
    assert ok, rows
    assert rows["USDC"]["node_fees"] == "12.345678" and rows["USDC"]["stream_fees"] == "12.000001"
    assert all(D(v) == 0 for row in rows.values() for k, v in row.items() if k.endswith("_diff"))


def test_a_node_that_loses_or_makes_money_fails_conservation():
    traders = {"USDC": D("19999987.654322"), "SOL": D("1999999.5")}
    # one unit vanished from the node's balances
    lost = as_decimal(node_totals("12.345678", "0.5"))
    lost["USDC"]["balances"] -= D("0.000001")
    rows, ok = conservation(DEPOSITED, traders, lost)
    assert not ok and rows["USDC"]["ledger_diff"] == "0.000001"
    # fees counted that nobody paid
    made = as_decimal(node_totals("12.345678", "0.5"))
    made["USDC"]["fees"] += 1
    assert not conservation(DEPOSITED, traders, made)[1]
    # a deposit the load test did not make (it must be the only depositor)
    extra = as_decimal(node_totals("12.345678", "0.5", extra_usdc="5"))
    extra["USDC"]["deposits"] += 5
    rows, ok = conservation(DEPOSITED, traders, extra)
    assert not ok and rows["USDC"]["deposits_diff"] == "5" and rows["USDC"]["ledger_diff"] == "0"
    # an asset the node does not report at all
    assert not conservation(DEPOSITED, traders, {"USDC": as_decimal(node_totals("12.345678"))["USDC"]})[1]
    # the traders' balances disagree with the node's
    assert not conservation(DEPOSITED, {**traders, "SOL": D("1999999.4")}, as_decimal(node_totals("12.345678", "0.5")))[1]


class FakeNode:
    """A WebSocket server in its own thread that answers ``ledgerTotals``, ``collateralQuery``
    and ``borrowLendMarkets`` the way the gateway does (check_conservation runs its own trio loop)."""

    def __init__(self, totals: list[dict] | None, balances: dict[str, dict], pools: list[dict] | None = None):
        self.totals = totals  # successive ledgerTotals answers (the last repeats); None: unknown method
        self.balances = balances  # per account, per asset: available, locked and (optional) lent, borrowed
        self.pools = pools  # borrowLendMarkets' answer; None: unknown method
        self.ledger_requests: list[dict] = []
        self._ready = threading.Event()

    def __enter__(self) -> "FakeNode":
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self._token = trio.lowlevel.current_trio_token()
            server = await nursery.start(serve_websocket, self._handle, "127.0.0.1", 0, None)
            self.url = f"ws://127.0.0.1:{server.port}"
            self._ready.set()

    async def _handle(self, request) -> None:
        ws = await request.accept()
        try:
            while True:
                msg = orjson.loads(await ws.get_message())
                if msg["method"] == "ledgerTotals" and self.totals is not None:
                    self.ledger_requests.append(msg)
                    answer = self.totals.pop(0) if len(self.totals) > 1 else self.totals[0]
                    reply = {"id": msg["id"], "result": answer}
                elif msg["method"] == "collateralQuery":
                    reply = {"id": msg["id"], "result": collateral(self.balances[msg["signature"][0]])}
                elif msg["method"] == "borrowLendMarkets" and self.pools is not None:
                    reply = {"id": msg["id"], "result": self.pools}
                else:
                    reply = {"id": msg["id"], "error": {"code": "UNKNOWN_METHOD", "message": f"Unknown method {msg['method']}"}}
                await ws.send_message(orjson.dumps(reply).decode())
        except ConnectionClosed:
            pass


def collateral(balances: dict[str, dict]) -> dict:
    """A ``collateralQuery`` answer's quantities: total = free + held + lent - borrowed."""
    rows = []
    for asset, b in balances.items():
        free, held, lent, owed = (D(b.get(k, "0")) for k in ("available", "locked", "lent", "borrowed"))
        rows.append({"symbol": asset, "totalQuantity": str(free + held + lent - owed), "lendQuantity": str(lent),
                     "availableQuantity": str(free), "openOrderQuantity": str(held)})
    return {"netEquity": "0", "collateral": rows}


def two_traders() -> tuple[list[Keypair], dict[str, dict]]:
    keys = [Keypair.generate(), Keypair.generate()]
    balances = {
        keys[0].api_key: {"USDC": {"available": "9999990", "locked": "0.654322", "staked": "0"},
                          "SOL": {"available": "1000000.5", "locked": "0", "staked": "0"}},
        keys[1].api_key: {"USDC": {"available": "9999997", "locked": "0", "staked": "0"},
                          "SOL": {"available": "999999", "locked": "0", "staked": "0"}},
    }
    return keys, balances


def report_with(correctness: dict) -> dict:
    return {"orders": {"error_rate": 0.0}, "ack_latency_us": {"p99": 0},
            "correctness": {"lost_acks": 0, "depth_gaps": 0, "book_mismatches": 0, **correctness}}


def test_check_conservation_reads_the_node_once_it_stands_still():
    keys, balances = two_traders()
    moving = node_totals("12.3", "0.4")  # a fill still landing when the first read is taken
    with FakeNode([moving, node_totals("12.345678", "0.5")], balances) as node:
        stream_fees = {"USDC": D("12"), "SOL": D("0")}  # missed the late fills
        out = check_conservation(node.url, keys, DEPOSITED, stream_fees)
        # no params and no signature: the method is public
        assert all(set(m) == {"id", "method"} for m in node.ledger_requests)
    assert out["conservation_ok"] is True, out
    assert "conservation_unsettled" not in out
    assert out["conservation"]["USDC"]["node_fees"] == "12.345678"
    assert verdict(report_with(out), None, None) == []


def test_check_conservation_fails_on_a_node_that_does_not_add_up():
    keys, balances = two_traders()
    broken = node_totals("12.345678", "0.5")
    broken["USDC"]["fees"] = "13.345678"
    with FakeNode([broken], balances) as node:
        out = check_conservation(node.url, keys, DEPOSITED)
    assert out["conservation_ok"] is False
    (why,) = verdict(report_with(out), None, None)
    assert "USDC ledger off by -1" in why and "USDC traders off by -1" in why


def test_a_node_without_ledger_totals_fails_the_check_visibly():
    keys, balances = two_traders()
    with FakeNode(None, balances) as node:
        out = check_conservation(node.url, keys, DEPOSITED)
    assert out["conservation_ok"] is None and "ledgerTotals" in out["conservation_error"]
    (why,) = verdict(report_with(out), None, None)
    assert why.startswith("conservation not checked")


# ---------------------------------------------------------------- lending


def pool(asset: str, lent: str, borrowed: str, cash: str, reserve: str, utilization: str = "0") -> dict:
    """A ``borrowLendMarkets`` item's figures."""
    return {"symbol": asset, "lentQuantity": lent, "borrowedQuantity": borrowed, "availableQuantity": cash,
            "reserveQuantity": reserve, "utilization": utilization, "lendInterestRate": "0.05", "borrowInterestRate": "0.1"}


# 1000 SOL deposited; a lender lent 700 and keeps 300 free, a borrower borrowed 300 and holds
# them. Interest: the borrower owes 0.000001 more, the lender's claim grew 0.0000008 (and
# rounds down a unit), the reserve kept 0.0000002. The node counts free + held + the pool's
# cash (400); the accounts' net holdings are free + held + lent - borrowed.
SOL_TOTALS = {"SOL": {"deposits": D(1000), "withdrawals": D(0), "fees": D(0), "balances": D(300 + 300 + 400)}}
SOL_NET = {"SOL": D(300) + D(300) + (D(700) + D("0.0000008") - D("0.000000001")) - (D(300) + D("0.000001"))}
SOL_RESERVE = {"SOL": D("0.0000002")}
SOL_ALLOWED = {"SOL": D("0.000000002")}  # one claim, one debt


def test_the_pools_reserve_and_rounding_count_in_conservation():
    rows, ok = conservation({"SOL": D(1000)}, SOL_NET, SOL_TOTALS, None, SOL_RESERVE, SOL_ALLOWED)
    assert ok, rows
    assert rows["SOL"]["traders_diff"] == "0.000000001" and rows["SOL"]["pool_reserve"] == "0.0000002"
    assert verdict(report_with({"conservation": rows, "conservation_ok": ok}), None, None) == []
    # without the reserve money is missing; and rounding is never more than a unit per claim or debt
    rows, ok = conservation({"SOL": D(1000)}, SOL_NET, SOL_TOTALS, None, None, SOL_ALLOWED)
    assert not ok
    (why,) = verdict(report_with({"conservation": rows, "conservation_ok": ok}), None, None)
    assert why.endswith("SOL traders off by 0.000000201")
    assert not conservation({"SOL": D(1000)}, SOL_NET, SOL_TOTALS, None, SOL_RESERVE, {"SOL": D(0)})[1]
    # accounts worth more than was deposited: never rounding
    richer = {"SOL": SOL_NET["SOL"] + D("0.000000002")}
    assert not conservation({"SOL": D(1000)}, richer, SOL_TOTALS, None, SOL_RESERVE, SOL_ALLOWED)[1]


def test_check_conservation_with_a_lending_pool():
    keys = [Keypair.generate(), Keypair.generate()]
    balances = {keys[0].api_key: {"SOL": {"available": "300", "locked": "0", "lent": "700.000000799"}},
                keys[1].api_key: {"SOL": {"available": "300", "locked": "0", "borrowed": "300.000001"}}}
    totals = {"SOL": {"deposits": "1000", "withdrawals": "0", "fees": "0", "balances": "1000"}}
    pools = [pool("SOL", "700.0000008", "300.000001", "400", "0.0000002", "0.428571")]
    with FakeNode([totals], balances, pools) as node:
        out = check_conservation(node.url, keys, {"SOL": D(1000)}, decimals={"SOL": 9})
    assert out["conservation_ok"] is True and out["pools_ok"] is True, out
    assert out["conservation"]["SOL"]["traders_diff"] == "0.000000001"
    assert out["conservation"]["SOL"]["traders_rounding_allowed"] == "0.000000002"
