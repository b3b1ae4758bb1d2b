"""Stragglers, zero code: real ``watchdog-d run -- torchrun`` jobs (DDP on gloo,
integration/jobs/straggle.py) whose ranks take uneven time before their collectives. The
agent reads each rank's flight recorder now and then; the coordinator maps the node's
clock onto its own and compares when each rank enqueued each collective with its peers.

- one rank 40 % late every step: one ``straggler`` warning naming it, the job runs on and
  exits 0, ``status`` shows it;
- the twins: every rank randomly slow now and then (uniform jitter), and one long stop of
  one rank in one step (a GC pause): no straggler.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, train_env

JOB = str(Path(__file__).resolve().parent / "jobs" / "straggle.py")
RUN = ["--straggler-window", "30", "--min-stall-timeout", "20"]


def start(guarded, alert_sink, nproc: int, steps: int, **env):
    return guarded([*RUN, "--alert", alert_sink.url],
                   [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", JOB],
                   train_env(WD_STEPS=steps, WD_STEP_TIME=0.1, **env))


def status(g) -> dict:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--state-dir", str(g.state_dir)],
                         capture_output=True, text=True, timeout=15)
    return json.loads(out.stdout) if out.returncode == 0 else {"jobs": []}


@pytest.mark.parametrize("nproc", [2, 3])
def test_a_rank_late_every_step_is_named_a_straggler_and_the_job_runs_on(guarded, alert_sink, nproc):
    g = start(guarded, alert_sink, nproc, steps=200, WD_LATE_RANK=1, WD_LATE_FRACTION=0.4)
    deadline, seen = time.monotonic() + 60, None
    while seen is None:
        assert g.proc.poll() is None, f"the job ended before its straggler was named\n{g.stderr()}"
        assert time.monotonic() < deadline, f"no straggler in status\n{g.stderr()}"
        jobs = [j for j in status(g)["jobs"] if j["job"] == g.job_id]
        if jobs and jobs[0].get("stragglers"):
            seen = jobs[0]["stragglers"]
        time.sleep(0.5)
    assert [s["rank"] for s in seen] == [1], seen
    assert 0.025 <= seen[0]["lag_s"] <= 0.08 and seen[0]["share"] >= 0.75, seen
    assert g.wait(90) == 0, g.stderr()                     # a warning, never a teardown
    kinds = [e["kind"] for e in g.events()]
    assert kinds == ["straggler", "job_succeeded"], kinds
    (alert,) = [a for a in alert_sink.wait_for(1) if "straggler" in a["title"]]
    assert "straggler rank 1" in alert["title"], alert
    body = alert["message"]
    assert "rank 1 on" in body and "behind the median of its peers" in body and "loses ~" in body, body
    assert "no GPU data from the node" in body, body
    assert_no_leftovers(g.job_id)


@pytest.mark.parametrize("stress", [{"WD_JITTER": 0.2}, {"WD_PAUSE_STEP": 60, "WD_PAUSE_S": 3.0}],
                         ids=["uniform-jitter", "one-gc-pause"])
def test_twin_no_straggler_without_a_persistently_late_rank(guarded, alert_sink, stress):
    g = start(guarded, alert_sink, 3, steps=200, **stress)
    assert g.wait(120) == 0, g.stderr()
    kinds = [e["kind"] for e in g.events()]
    assert kinds == ["job_succeeded"], kinds
    assert_no_leftovers(g.job_id)
