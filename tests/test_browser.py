"""The trading and operations pages in a real browser: Debian's chromium driven by
Playwright (its sync API, in these plain test functions), against a `satchel serve` node
on loopback. Screenshots go to test-artifacts/ (the README's are taken from there).

Skipped with the reason where no chromium or Playwright is installed, except under
SATCHEL_REQUIRE_BROWSER=1 (set by .ci/run once it installed chromium), where that fails.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from conftest import wait_ready
from satchel.signing import Keypair, load_key
from satchel.tools.client import connect, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# as root in a closed network: no sandbox, no background connections (each refused, slowly)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _missing() -> str:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed"
    if not os.path.exists(CHROMIUM):
        return "no chromium (Debian's package chromium; .ci/run installs it)"
    return ""


if _missing():
    if os.environ.get("SATCHEL_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"browser tests required but {_missing()}")
    pytest.skip(_missing(), allow_module_level=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from satchel.verify.validator import validator_key

    data = tmp_path_factory.mktemp("browser") / "data"
    validator = data.parent / "validator"
    port, rest, stream = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "satchel.tools.cli", "serve", "--data", str(data), "--port", str(port), "--rest-port",
         str(rest), "--no-demo", "--no-oracle", "--replication-port", str(stream), "--allow-follower",
         validator_key(validator).api_key],
        stdout=subprocess.DEVNULL, stderr=open(data.parent / "node.log", "wb"))
    url = f"ws://127.0.0.1:{port}"
    trio.run(wait_ready, url, proc)
    yield {"url": url, "http": f"http://127.0.0.1:{rest}", "data": data, "stream": f"ws://127.0.0.1:{stream}",
           "validator": validator}
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def run(node: dict, work) -> object:
    """A coroutine against the node, with the admin key's client, from a sync test."""
    async def go():
        async with connect(node["url"], load_key(node["data"], "admin.key")) as admin:
            return await work(admin)

    return trio.run(go)


def fund(node: dict, account: str, **amounts: str) -> None:
    async def work(admin):
        for asset, qty in amounts.items():
            await admin.request("deposit", {"account": account, "asset": asset, "quantity": qty})

    run(node, work)


def orders(node: dict, key: Keypair, *params: dict) -> list:
    async def work(_admin):
        async with connect(node["url"], key) as c:
            return [await c.request("orderExecute", p) for p in params]

    return run(node, work)


def limit(side: str, price: str, qty: str, symbol: str = "SOL_USDC") -> dict:
    return {"symbol": symbol, "side": side, "orderType": "Limit", "price": price, "quantity": qty}


def test_the_book_renders_the_levels_of_a_seeded_node(node, page):
    maker = Keypair.generate()
    fund(node, maker.api_key, USDC="100000", SOL="1000")
    orders(node, maker, limit("Ask", "151.5", "2"), limit("Ask", "152", "3"), limit("Bid", "149", "4"),
           limit("Bid", "148.25", "1"))
    t0 = time.perf_counter()
    page.goto(f"{node['http']}/#SOL_USDC")
    page.wait_for_function("document.querySelectorAll('#asks tr').length >= 3 && document.querySelectorAll('#bids tr').length >= 2")
    load_ms = (time.perf_counter() - t0) * 1000
    asks = page.locator("#asks tr").all_inner_texts()
    bids = page.locator("#bids tr").all_inner_texts()
    assert any("151.5" in r and "2" in r for r in asks) and any("152" in r for r in asks)
    assert any("149" in r and "4" in r for r in bids) and any("148.25" in r for r in bids)
    print(f"page load to a rendered book: {load_ms:.0f} ms")
    shot(page, "book")


def test_an_order_signed_in_the_page_rests_and_is_cancelled_from_it(node, page):
    page.goto(f"{node['http']}/#SOL_USDC")
    page.click("#key-new")
    page.wait_for_function("document.querySelector('#key-status').dataset.apiKey.length === 44")
    api_key = page.locator("#key-status").get_attribute("data-api-key")
    fund(node, api_key, USDC="10000")
    page.check("input[name=side][value=Bid]")
    page.fill("input[name=price]", "140.5")
    page.fill("input[name=quantity]", "1.5")
    page.click("#place")
    page.wait_for_function("document.querySelector('#order-result').textContent.startsWith('New')")
    page.wait_for_selector("#open-orders button.cancel")
    page.wait_for_function("[...document.querySelectorAll('#bids tr')].some(r => r.textContent.includes('140.5'))")
    assert "140.5" in page.locator("#open-orders").inner_text()
    shot(page, "trading")
    page.click("#open-orders button.cancel")
    page.wait_for_function("!document.querySelector('#open-orders button.cancel')")
    page.wait_for_function("![...document.querySelectorAll('#bids tr')].some(r => r.textContent.includes('140.5'))")
    # the key stays in this browser until forgotten
    assert page.evaluate("localStorage.getItem('satchel.secret')")
    page.click("#key-forget")
    assert page.evaluate("localStorage.getItem('satchel.secret')") is None


def test_a_trade_moves_the_last_candle(node, page):
    seller, buyer = Keypair.generate(), Keypair.generate()
    fund(node, seller.api_key, ETH="10")
    fund(node, buyer.api_key, USDC="100000")
    page.goto(f"{node['http']}/#ETH_USDC")  # a market nobody else trades here
    page.wait_for_function("document.querySelector('#title').textContent === 'ETH_USDC'")
    time.sleep(0.5)  # subscribed
    orders(node, seller, limit("Ask", "3163.25", "1", "ETH_USDC"))
    t0 = time.perf_counter()
    orders(node, buyer, limit("Bid", "3163.25", "1", "ETH_USDC"))
    page.wait_for_function("document.querySelector('#chart').dataset.lastClose === '3163.25'")
    shown_ms = (time.perf_counter() - t0) * 1000
    print(f"trade to the page's last candle: {shown_ms:.0f} ms")
    assert "3163.25" in page.locator("#trades").inner_text()
    orders(node, seller, limit("Ask", "3170", "1", "ETH_USDC"))
    orders(node, buyer, limit("Bid", "3170", "1", "ETH_USDC"))
    page.wait_for_function("document.querySelector('#chart').dataset.lastClose === '3170'")


def test_the_operations_page_shows_the_height_advancing(node, page):
    validator = subprocess.Popen([sys.executable, "-m", "satchel.tools.cli", "validator", "--follow", node["stream"],
                                  "--data", str(node["validator"])], stdout=subprocess.DEVNULL,
                                 stderr=open(node["validator"].parent / "validator.log", "wb"))
    broke = Keypair.generate()
    orders(node, broke, limit("Bid", "150", "1"))  # no funds: a reject for the table
    page.goto(f"{node['http']}/ops")
    page.wait_for_function("/^[0-9]+$/.test(document.querySelector('#height').textContent)")
    first = int(page.locator("#height").inner_text())
    fund(node, Keypair.generate().api_key, USDC="1")
    fund(node, Keypair.generate().api_key, USDC="1")
    page.wait_for_function(f"Number(document.querySelector('#height').textContent) > {first}", timeout=10_000)
    assert "apply" in page.locator("#stages").inner_text()
    assert "sim" in page.locator("#chains").inner_text()
    assert "InsufficientFunds" in page.locator("#rejects").inner_text()
    # the validator following the node: its verified height and agreement
    lag = "document.querySelector('#validators tr:nth-child(2) td:nth-child(3)')"
    page.wait_for_function(f"{lag} && {lag}.textContent === '0'", timeout=20_000)  # caught up
    assert "yes" in page.locator("#validators").inner_text() and "following" in page.locator("#validators").inner_text()
    shot(page, "ops")
    validator.terminate()
    validator.wait(10)


# drops the next ``window.__drop`` depth deltas that change the book, before the page sees them
DROP_DEPTH = """
const Native = window.WebSocket;
window.__drop = 0;
window.__dropped = 0;
window.WebSocket = class extends Native {
  set onmessage(handler) {
    super.onmessage = (event) => {
      const f = JSON.parse(event.data);
      if (window.__drop > 0 && f.stream?.startsWith("depth.") && f.data.e === "depth" && f.data.a.length + f.data.b.length) {
        window.__drop -= 1;
        window.__dropped += 1;
        return;
      }
      handler(event);
    };
  }
  get onmessage() { return super.onmessage; }
};
"""


def test_a_gap_in_the_depth_stream_resyncs_the_book(node, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.add_init_script(DROP_DEPTH)
    maker = Keypair.generate()
    fund(node, maker.api_key, BTC="1")
    orders(node, maker, limit("Ask", "90001", "0.01", "BTC_USDC"))
    page.goto(f"{node['http']}/#BTC_USDC")
    has = "(p) => [...document.querySelectorAll('#asks tr')].some(r => r.cells[0]?.textContent === p)"
    page.wait_for_function(f"({has})('90001')")
    page.evaluate("window.__drop = 1")
    orders(node, maker, limit("Ask", "90002", "0.01", "BTC_USDC"))  # its delta never reaches the page
    page.wait_for_function("window.__dropped === 1")
    assert not page.evaluate(f"({has})('90002')")
    orders(node, maker, limit("Ask", "90003", "0.01", "BTC_USDC"))  # U skips one: a fresh snapshot
    page.wait_for_function(f"({has})('90002') && ({has})('90003') && ({has})('90001')")
    page.close()
