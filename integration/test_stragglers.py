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
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, train_env

JOB = str(Path(__file__).resolve().parent / "jobs" / "straggle.py")
RUN = ["--straggler-window", "30", "--min-stall-timeout", "20"]


def start(guarded, alert_sink, nproc: int, steps: int, gpus: Path | None = None, **env):
    e = train_env(WD_STEPS=steps, WD_STEP_TIME=0.1, **env)
    if gpus is not None:      # the embedded agent reads a fake NVML (tests/fakenvml)
        fake_dir = Path(__file__).resolve().parents[1] / "tests" / "fakenvml"
        e.update(WD_FAKE_NVML=str(gpus), WATCHDOG_D_GPU_POLL_INTERVAL="0.5",
                 WATCHDOG_D_KMSG_PATH=str(gpus.with_suffix(".kmsg")),
                 PYTHONPATH=os.pathsep.join(p for p in (str(fake_dir), e.get("PYTHONPATH", "")) if p))
        gpus.with_suffix(".kmsg").write_text("")
    return guarded([*RUN, "--alert", alert_sink.url],
                   [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", JOB], e)


def status(g) -> dict:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--state-dir", str(g.state_dir)],
                         capture_output=True, text=True, timeout=15)
    return json.loads(out.stdout) if out.returncode == 0 else {"jobs": []}


@pytest.mark.parametrize("nproc", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_a_rank_late_every_step_is_named_a_straggler_and_the_job_runs_on(guarded, alert_sink, nproc,
                                                                          tmp_path):
    # rank 1's GPU (local rank 1) throttles: the warning says what the node's GPUs say
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fakenvml_load import write as write_json

    fake = tmp_path / "nvml.json"
    write_json(fake, {"devices": [
        {"uuid": f"GPU-{i}", "pci": f"00000000:{0x1B + i:02X}:00.0", "name": "NVIDIA H100 80GB HBM3",
         "temp": 89 if i == 1 else 60, "sm_clock": 1095 if i == 1 else 1980, "sm_clock_max": 1980,
         "clocks_event_reasons": 0x40 if i == 1 else 0} for i in range(nproc)]})
    g = start(guarded, alert_sink, nproc, steps=200, gpus=fake, WD_LATE_RANK=1, WD_LATE_FRACTION=0.4)
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
    assert "GPU 1: HW thermal slowdown, SM 1095/1980 MHz, 89 C" in body, body
    assert_no_leftovers(g.job_id)


@pytest.mark.parametrize("stress", [{"WD_JITTER": 0.2}, {"WD_PAUSE_STEP": 60, "WD_PAUSE_S": 3.0}],
                         ids=["uniform-jitter", "one-gc-pause"])
def test_twin_no_straggler_without_a_persistently_late_rank(guarded, alert_sink, stress):
    g = start(guarded, alert_sink, 3, steps=200, **stress)
    assert g.wait(120) == 0, g.stderr()
    kinds = [e["kind"] for e in g.events()]
    assert kinds == ["job_succeeded"], kinds
    assert_no_leftovers(g.job_id)


# -- two nodes whose clocks disagree -------------------------------------------------------
SKEW_S = 100_000     # node B's monotonic clock runs this far ahead (booted a day earlier)


@pytest.fixture
def skewed(tmp_path, alert_sink):
    """A coordinator and two agents; node B's agent, and the wrappers started with
    ``skewed.on_b``, live in a time namespace whose monotonic clock is SKEW_S ahead."""
    import psutil

    from cluster import Cluster

    probe = subprocess.run(["unshare", "--fork", "--time", "--monotonic", "1", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no time namespaces here (unshare --time: {probe.stderr.strip()[:200]})")
    c = Cluster(tmp_path, ["node-a", "node-b"], alert_url=alert_sink.url, agent_prefix={
        "node-b": ["unshare", "--fork", "--kill-child", "--time", "--monotonic", str(SKEW_S)]})
    agent_b = psutil.Process(c.agents["node-b"].pid).children()[0].pid
    with open(f"/proc/{agent_b}/timens_offsets") as f:      # "monotonic  100000  0"
        assert f.readline().split()[1] == str(SKEW_S)
    c.on_b = ["nsenter", "--time", "--target", str(agent_b), "--"]
    yield c
    c.stop()


def two_node_job(guarded, cluster, **env):
    from harness import free_port

    port, job = free_port(), f"skew-{free_port()}"
    out = []
    for node_rank, node in enumerate(("node-a", "node-b")):
        cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
               "--master-addr=127.0.0.1", f"--master-port={port}", JOB]
        out.append(guarded([*RUN, "--agent-socket", cluster.sockets[node]], cmd,
                           train_env(WD_STEPS=200, WD_STEP_TIME=0.1, **env), job_id=job,
                           prefix=cluster.on_b if node == "node-b" else None))
    return job, out


def cluster_events(cluster, job):
    out = subprocess.run([*WATCHDOG, "events", "--json", "--job", job, "--state-dir",
                          str(cluster.state_dir)], capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_clock_skew_between_nodes_makes_no_straggler(guarded, skewed):
    job, ws = two_node_job(guarded, skewed)
    for w in ws:
        assert w.wait(120) == 0, w.stderr()
    assert [e["kind"] for e in cluster_events(skewed, job)] == ["job_succeeded"]
    assert_no_leftovers(job)


def test_a_straggler_on_the_skewed_node_is_found_with_its_true_lag(guarded, skewed):
    job, ws = two_node_job(guarded, skewed, WD_LATE_RANK=1, WD_LATE_FRACTION=0.4)
    for w in ws:
        assert w.wait(120) == 0, w.stderr()
    got = cluster_events(skewed, job)
    assert [e["kind"] for e in got] == ["straggler", "job_succeeded"], got
    assert (got[0]["rank"], got[0]["node"]) == (1, "node-b"), got[0]
    lag_ms = float(got[0]["cause"].split(" ms behind")[0].rsplit(" ", 1)[1])
    assert 25 <= lag_ms <= 80, got[0]["cause"]


# -- reading the timings never ends a healthy job ------------------------------------------------
def _asked_often(guarded, runs: int) -> None:
    """Short 3-rank DDP jobs whose ranks are asked for their timings every 0.2 s (25 x the
    default): every one exits 0. A gloo worker that frees the last collective's Python state
    after the interpreter began to finalize aborts its rank (SIGABRT after the last step, a
    false rank_exited); with the dumps competing for the GIL that happened in one run of ten
    until the rank side left the GIL to other threads at exit (rank/flight.py ``close``)."""
    for n in range(runs):
        g = guarded(["--min-stall-timeout", "30"],
                    [*TORCHRUN, "--standalone", "--nproc-per-node=3", JOB],
                    train_env(WD_STEPS=40, WD_STEP_TIME=0.02, WATCHDOG_D_TIMING_INTERVAL=0.2))
        assert g.wait(120) == 0, f"run {n}: {g.stderr()[-2000:]}"
        assert [e["kind"] for e in g.events()] == ["job_succeeded"]
        assert_no_leftovers(g.job_id)


def test_timings_asked_often_never_end_a_healthy_job(guarded):
    _asked_often(guarded, 2)


@pytest.mark.slow
def test_timings_asked_often_never_end_a_healthy_job_many_times(guarded):
    _asked_often(guarded, 30)
