"""A bounded frame-fuzzing run against a live node and gateway (the soak of a million
frames is ``python -m benchmarks.fuzz``; the strategies and oracles live there).

Each round sends a batch of hypothesis-drawn frames on each of two connections, then
checks: the node is alive and a fresh connection gets a correct ``depth`` reply; no
fuzzing connection was closed by the server; every reply is well formed and every frame
got exactly one; on strict rounds (no frame carries a valid signature) the engine's
state hash and transaction count did not move. A failure is replayed frame by frame on
a fresh node to name the culprit (and shrink it, if it kills the node).

FUZZ_SEED=<n> replays a run; FUZZ_FRAMES=<n> changes its length.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks/

from benchmarks.fuzz import Fuzzer, harvest, isolate, print_stats  # noqa: E402

FRAMES = int(os.environ.get("FUZZ_FRAMES", "3000"))
CONNS = 2
BATCH = 150  # frames per connection per round


async def test_fuzz_frames(tmp_path):
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    started = time.perf_counter()
    specs = harvest(FRAMES, seed)
    failure = None
    async with trio.open_nursery() as nursery:
        fz = Fuzzer(nursery, tmp_path, conns=CONNS, proto_timeout=1.0)
        await fz.start()
        strict = True
        per_round = CONNS * BATCH
        for i in range(0, len(specs), per_round):
            chunk = specs[i:i + per_round]
            violations = await fz.round([chunk[c::CONNS] for c in range(CONNS)], strict)
            strict = not strict
            if violations:
                v = violations[0]
                target = v.detail.removeprefix("the node exited: ") if v.kind == "node_exit" else None
                found = await isolate(nursery, tmp_path / "isolate", v.specs, v.kind, shrink_budget=30, target=target)
                report = found.report() if found else "(no single frame reproduces it on a fresh node)"
                if v.kind == "node_exit" and (found is None or not found.traceback):
                    report += "\n" + fz.stats.crash_reports.get(v.detail.removeprefix("the node exited: "), "")
                failure = f"seed {seed}: [{v.kind}] {v.detail}\nculprit: {report}"
                break
        await fz.close()
        nursery.cancel_scope.cancel()
    if failure:
        pytest.fail(failure, pytrace=False)
    s = fz.stats
    print_stats(s, time.perf_counter() - started)
    assert s.node_exits == 0 and s.server_closes == 0 and s.state_changes == 0 and not s.violations
    # every frame was sent, or left out: on strict rounds for a valid signature, or over the nodeStats budget
    assert s.frames + s.dropped_strict + s.dropped_node_stats == len(specs)
    assert s.frames >= 0.8 * len(specs)
    assert s.strict_rounds >= s.rounds // 2
    assert s.replies >= s.frames * 0.8  # the frames reached the gateway's checks
