// The trading page: markets, the selected market's book (kept in sync by U/u, resynced on
// a gap), trades, candles, an order form signed in the browser, open orders, balances,
// positions and lending.
import { CandlestickSeries, createChart } from "lightweight-charts";
import { Client, Keys, config, rows } from "./client.js";

const $ = (id) => document.getElementById(id);
const keys = new Keys();
let client, symbol, markets = {}, book, chart, candles;

const toTime = (text) => Math.floor(Date.parse(text.replace(" ", "T") + "Z") / 1000);

async function main() {
  const cfg = await config();
  client = new Client(cfg.ws);
  await keys.load();
  showKey();
  wireForms();  // before the network waits below: a click while the page loads is not lost
  const list = await (await fetch("/api/v1/markets")).json();
  for (const m of list) markets[m.symbol] = m;
  chart = createChart($("chart"), { layout: { background: { color: "#182028" }, textColor: "#dde3ea" },
                                    grid: { vertLines: { color: "#222a33" }, horzLines: { color: "#222a33" } },
                                    timeScale: { timeVisible: true, secondsVisible: true } });
  candles = chart.addSeries(CandlestickSeries, {});
  await showMarkets();
  setInterval(showMarkets, 5000);
  await select(location.hash.slice(1) in markets ? location.hash.slice(1) : list[0].symbol);
  setInterval(refreshAccount, 2000);
}

async function showMarkets() {
  const tickers = await (await fetch("/api/v1/tickers")).json();
  const nav = $("markets");
  nav.replaceChildren();
  for (const t of tickers) {
    const b = document.createElement("button");
    const change = Number(t.priceChangePercent) * 100;
    b.innerHTML = `${t.symbol} <span class="last">${t.lastPrice ?? "-"}</span> <span class="chg ${change >= 0 ? "up" : "down"}">${change.toFixed(2)}%</span>`;
    b.dataset.symbol = t.symbol;
    b.className = t.symbol === symbol ? "on" : "";
    b.onclick = () => select(t.symbol);
    nav.append(b);
  }
}

async function select(next) {
  if (symbol) for (const s of [`depth.${symbol}`, `trade.${symbol}`, `kline.1m.${symbol}`]) await client.unsubscribe(s);
  symbol = next;
  location.hash = next;
  $("title").textContent = next;
  document.body.classList.toggle("perp", markets[next].marketType === "PERP");
  for (const b of $("markets").children) b.className = b.dataset.symbol === next ? "on" : "";
  book = null;
  rows($("trades"), ["price", "quantity", "time"], []);
  const start = Math.floor(Date.now() / 1000) - 6 * 3600;
  const bars = await (await fetch(`/api/v1/klines?symbol=${next}&interval=1m&startTime=${start}`)).json();
  const data = bars.map((k) => ({ time: toTime(k.start), open: +k.open, high: +k.high, low: +k.low, close: +k.close }));
  candles.setData(data);
  markCandle(data.at(-1), data.length);
  await client.subscribe(`depth.${next}`, onDepth);
  await client.subscribe(`trade.${next}`, onTrade);
  await client.subscribe(`kline.1m.${next}`, onKline);
  await refreshAccount();
}

function markCandle(bar, count) {
  $("chart").dataset.lastClose = bar ? String(bar.close) : "";
  if (count !== undefined) $("chart").dataset.candles = String(count);
}

// ---------------------------------------------------------------- the book, in sync by U/u

function onDepth(d) {
  if (d.s !== symbol) return;
  if (d.e === "depthSnapshot") {
    book = { bids: new Map(d.bids), asks: new Map(d.asks), u: Number(d.lastUpdateId) };
  } else if (book) {
    const U = Number(d.U), u = Number(d.u);
    if (U === book.u && u === book.u) return;  // a heartbeat: nothing changed
    if (U !== book.u + 1) { resync(); return; }  // a gap: a fresh snapshot
    for (const [side, changes] of [["bids", d.b], ["asks", d.a]]) {
      for (const [price, qty] of changes) {
        if (Number(qty) === 0) book[side].delete(price); else book[side].set(price, qty);
      }
    }
    book.u = u;
  } else {
    return;
  }
  drawBook();
}

async function resync() {
  book = null;
  await client.unsubscribe(`depth.${symbol}`);
  await client.subscribe(`depth.${symbol}`, onDepth);
}

function drawBook() {
  const bids = [...book.bids].sort((a, b) => b[0] - a[0]).slice(0, 15);
  const asks = [...book.asks].sort((a, b) => a[0] - b[0]).slice(0, 15).reverse();
  rows($("asks"), ["price", "quantity"], asks);
  rows($("bids"), null, bids);
  if (bids.length && asks.length) {
    const [ask, bid] = [asks.at(-1)[0], bids[0][0]];
    const decimals = Math.max(...[ask, bid].map((p) => (p.split(".")[1] ?? "").length));
    $("spread").textContent = `spread ${(ask - bid).toFixed(decimals)}`;
  } else {
    $("spread").textContent = "-";
  }
}

function onTrade(t) {
  if (t.s !== symbol) return;
  const tr = $("trades").insertRow(1);
  tr.className = t.m ? "sell" : "buy";
  for (const v of [t.p, t.q, new Date(t.T / 1000).toLocaleTimeString()]) tr.insertCell().textContent = v;
  while ($("trades").rows.length > 40) $("trades").deleteRow(-1);
}

function onKline(k) {
  if (k.s !== symbol) return;
  const bar = { time: toTime(k.t), open: +k.o, high: +k.h, low: +k.l, close: +k.c };
  candles.update(bar);
  markCandle(bar);
}

// ---------------------------------------------------------------- the account

function showKey() {
  $("key-status").textContent = keys.apiKey ? `API key ${keys.apiKey}` : "no key: make one or import one";
  $("key-status").dataset.apiKey = keys.apiKey ?? "";
}

async function refreshAccount() {
  if (!keys.apiKey || !symbol) {
    for (const t of ["open-orders", "balances", "positions", "lending"]) rows($(t), null, []);
    return;
  }
  const [orders, balances] = await Promise.all([
    client.request("orderQueryAll", { symbol }, keys).catch(() => []),
    client.request("balanceQuery", {}, keys).catch(() => ({})),
  ]);
  rows($("open-orders"), ["side", "price", "quantity", "filled", ""], orders.map((o) => {
    const cancel = document.createElement("button");
    cancel.textContent = "cancel";
    cancel.className = "cancel";
    cancel.dataset.orderId = o.id;
    cancel.onclick = async () => {
      await client.request("orderCancel", { symbol, orderId: o.id }, keys).catch((e) => say(e.message, true));
      await refreshAccount();
    };
    return [o.side, o.price, o.quantity, o.executedQuantity, cancel];
  }));
  rows($("balances"), ["asset", "available", "locked"],
       Object.entries(balances).map(([a, b]) => [a, b.available, b.locked]));
  if (markets[symbol].marketType === "PERP") {
    const positions = await client.request("positionQuery", {}, keys).catch(() => []);
    rows($("positions"), ["market", "size", "entry", "mark", "liq. price", "PnL"],
         positions.map((p) => [p.symbol, p.netQuantity, p.entryPrice, p.markPrice, p.estLiquidationPrice, p.pnlUnrealized]));
  } else {
    rows($("positions"), null, []);
  }
  const [rates, lent] = await Promise.all([
    client.request("borrowLendMarkets", {}).catch(() => []),
    client.request("borrowLendPositionQuery", {}, keys).catch(() => []),
  ]);
  const mine = Object.fromEntries(lent.map((p) => [p.symbol, p.netQuantity]));
  rows($("lending"), ["asset", "lend APR", "borrow APR", "mine (+lent/-borrowed)"],
       rates.map((r) => [r.symbol, r.lendInterestRate, r.borrowInterestRate, mine[r.symbol] ?? "0"]));
}

function say(text, bad = false) {
  $("order-result").textContent = text;
  $("order-result").className = bad ? "error" : "ok";
}

function wireForms() {
  $("key-new").onclick = async () => { await keys.create(); showKey(); await refreshAccount(); };
  $("key-load").onclick = async () => {
    try { await keys.import($("key-import").value); $("key-import").value = ""; showKey(); await refreshAccount(); }
    catch (e) { $("key-status").textContent = e.message; }
  };
  $("key-forget").onclick = async () => { keys.forget(); showKey(); await refreshAccount(); };
  $("order").onsubmit = async (event) => {
    event.preventDefault();
    if (!keys.apiKey) return say("make or import a key first", true);
    const f = new FormData(event.target);
    const params = { symbol, side: f.get("side"), orderType: f.get("orderType"), quantity: f.get("quantity") };
    if (params.orderType === "Limit") {
      params.price = f.get("price");
      params.timeInForce = f.get("timeInForce");
      if (f.get("postOnly")) params.postOnly = "true";
    } else if (f.get("timeInForce") !== "GTC") {
      params.timeInForce = f.get("timeInForce");
    }
    if (f.get("reduceOnly") && markets[symbol].marketType === "PERP") params.reduceOnly = "true";
    try {
      const o = await client.request("orderExecute", params, keys);
      say(`${o.status}${o.reason ? ` (${o.reason})` : ""}: order ${o.id}`, o.status === "Rejected");
    } catch (e) {
      say(`${e.code ?? "error"}: ${e.message}`, true);
    }
    await refreshAccount();
  };
}

main().catch((e) => { document.body.dataset.error = e.message; console.error(e); });
