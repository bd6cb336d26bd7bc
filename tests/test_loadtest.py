"""A few-second embedded load test: its JSON report adds up and shows a correct exchange."""

from __future__ import annotations

import json
import subprocess
import sys


def test_embedded_loadtest_report(tmp_path):
    out = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-m", "satchel.cli", "loadtest", "--embedded", "--traders", "4", "--workers", "2",
         "--duration", "2", "--warmup", "0.5", "--subscribers", "2", "--slow-subscribers", "1",
         "--scenario", "mixed", "--out", str(out), "--max-error-rate", "0.01"],
        capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    o = rep["orders"]
    assert o["sent"] > 100
    assert o["acked"] + o["errors"] + o["cancel_races"] == o["sent"]  # every request answered once
    assert sum(o["errors_by_code"].values()) == o["errors"]
    c = rep["correctness"]
    assert c["lost_acks"] == 0 and c["depth_gaps"] == 0 and c["book_mismatches"] == 0
    assert c["books_checked"] == 2 * 3  # two subscribers x three markets
    assert c["conservation_ok"] is True
    for key in ("ack_latency_us", "feed_lag_us", "fill_to_trade_us"):
        s = rep[key]
        assert s["count"] > 0
        assert s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["max"]
    assert rep["feed"]["frames"] > 0
    assert rep["slow_subscribers"] == {**rep["slow_subscribers"], "count": 1}
    assert rep["passed"] is True
