"""A few-second embedded load test: its JSON report adds up and shows a correct exchange."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from satchel.config import DEFAULTS


def test_embedded_loadtest_report(tmp_path):
    out = tmp_path / "report.json"
    # The node drops a connection once this many frames wait for it. At the default (4096) a
    # subscriber that never reads outlasts a 2 s run (it was not dropped, and the runner waited
    # 10 s for it); at 256 (or even 1024) it is dropped, while the subscribers that read are kept.
    cfg = tmp_path / "node.toml"
    text, n = re.subn(r"(?m)^send_buffer_frames\s*=\s*\d+", "send_buffer_frames = 256", DEFAULTS.read_text())
    assert n == 1
    cfg.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "satchel.tools.cli", "loadtest", "--embedded", "--traders", "4", "--workers", "2",
         "--duration", "2", "--warmup", "0.5", "--subscribers", "2", "--slow-subscribers", "1",
         "--scenario", "mixed", "--out", str(out), "--max-error-rate", "0.01", "--config", str(cfg)],
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
    assert rep["feed"]["disconnects"] == 0  # the subscribers that read were all kept
    s = rep["slow_subscribers"]
    assert (s["count"], s["dropped"]) == (1, 1), s  # the one that never read was disconnected
    assert rep["passed"] is True
