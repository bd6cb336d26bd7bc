"""The load test's conservation verdict comes from the node's own ``ledgerTotals``, so fills
that land after a trader stopped reading its private stream no longer raise a false alarm."""

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
    """A WebSocket server in its own thread that answers ``ledgerTotals`` and ``balanceQuery``
    the way the gateway does (check_conservation runs its own trio loop)."""

    def __init__(self, totals: list[dict] | None, balances: dict[str, dict]):
        self.totals = totals  # successive ledgerTotals answers (the last repeats); None: unknown method
        self.balances = balances
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
                elif msg["method"] == "balanceQuery":
                    reply = {"id": msg["id"], "result": self.balances[msg["signature"][0]]}
                else:
                    reply = {"id": msg["id"], "error": {"code": "UNKNOWN_METHOD", "message": f"Unknown method {msg['method']}"}}
                await ws.send_message(orjson.dumps(reply).decode())
        except ConnectionClosed:
            pass


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
