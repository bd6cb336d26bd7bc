// The operations page: platform statistics, block height and rate, the pipeline's latency
// (journal fsync included), backlog, rejects by code, connections, chain adapters. Read
// only: it signs nothing.
import { Client, config, rows } from "./client.js";

const $ = (id) => document.getElementById(id);
let client, last = null;
// what each stage of nodeStats measures (satchel.latency)
const STAGES = { verify: "verify (signatures)", sequence: "sequence (wait for the engine)", apply: "apply (engine)",
                 durable: "durable (journal fsync)", reply: "reply", total: "total" };

async function main() {
  client = new Client((await config()).ws);
  await client.subscribe("platformStats", onStats);
  await client.subscribe("chainStatus", () => chains());
  await node();
  await chains();
  setInterval(node, 1000);
}

function onStats(s) {
  rows($("figures"), null, [["24 h volume", s.volume24h], ["open interest", s.openInterestValue],
                            ["assets under custody", s.custodyValue], ["total lent", s.lentValue],
                            ["total borrowed", s.borrowedValue]]);
  rows($("tickers"), ["market", "last", "change", "volume"],
       s.markets.map((m) => [m.symbol, m.lastPrice, `${(Number(m.priceChangePercent) * 100).toFixed(2)}%`, m.quoteVolume]));
}

async function node() {
  const n = await client.request("nodeStats", {});
  const now = performance.now();
  $("height").textContent = n.height;
  if (last) $("rate").textContent = ((n.height - last.height) / ((now - last.at) / 1000)).toFixed(1);
  last = { height: n.height, at: now };
  $("backlog").textContent = n.backlog;
  $("sessions").textContent = n.sessions;
  $("slow").textContent = n.slowConsumers;
  $("errors").textContent = n.handlerErrors;
  $("followers").textContent = n.followers ?? "-";
  rows($("stages"), ["stage", "count", "p50", "p99", "max"],
       Object.entries(n.stages).map(([k, v]) => [STAGES[k] ?? k, v.count, Math.round(v.p50), Math.round(v.p99),
                                                 Math.round(v.max)]));
  rows($("rejects"), ["code", "count"], Object.entries(n.rejects ?? {}).sort((a, b) => b[1] - a[1]));
  rows($("validators"), ["key", "verified", "lag", "agrees", ""],
       (n.validators ?? []).map((v) => [v.key.slice(0, 12) + "...", v.height, v.lag,
                                        v.agrees ? "yes" : `NO: diverged at ${v.diverged}`, v.connected ? "following" : "gone"]));
}

async function chains() {
  const list = await client.request("chainStatusQuery", {}).catch(() => []);
  rows($("chains"), ["chain", "state", "why", "deposits credited", "withdrawals queued"],
       list.map((x) => [x.chain, x.paused ? "paused" : "running", x.reason || "", x.depositsCredited, x.queuedWithdrawals]));
}

main().catch((e) => { document.body.dataset.error = e.message; console.error(e); });
