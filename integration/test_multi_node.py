"""Two "nodes" on one machine: a coordinator, two agents, two wrappers, one job.

The point of the project: a rank that fails on node B makes node A's ranks stop
at once, instead of waiting in the collective for its timeout.
"""
from __future__ import annotations

import time

import pytest

from cluster import Cluster, job_events, kill_rank, stepping, two_node_job
from harness import TORCHRUN, assert_no_leftovers, free_port, train_env


@pytest.fixture
def cluster(tmp_path, alert_sink):
    c = Cluster(tmp_path, ["node-a", "node-b"], alert_url=alert_sink.url)
    yield c
    c.stop()


def test_kill_on_node_b_stops_node_a(guarded, cluster, alert_sink, tmp_path):
    job = f"mn-kill-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_FAULT="kill", WD_FAULT_RANK=1)
    assert b.wait() == 75, b.stderr()
    assert a.wait() == 75, a.stderr()
    for w in (a, b):
        assert "rank_exited rank 1 on node-b" in w.last_stderr_line(), w.last_stderr_line()
    alerts = alert_sink.wait_for(1)
    assert alerts[0]["title"] == f"[watchdog-d] {job}: rank_exited rank 1 on node-b"
    ev = job_events(cluster.state_dir, job)
    assert [e["kind"] for e in ev] == ["rank_exited"] and ev[0]["node"] == "node-b"
    assert_no_leftovers(job)


def test_frozen_rank_on_node_b_stops_node_a(guarded, cluster, alert_sink):
    # node A's rank would sit in the gloo collective for WD_PG_TIMEOUT (300 s)
    job = f"mn-stop-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_FAULT="stop", WD_FAULT_RANK=1)
    assert a.wait(timeout=60) == 75, a.stderr()
    assert b.wait(timeout=30) == 75, b.stderr()
    assert "rank_stalled rank 1 on node-b" in a.last_stderr_line(), a.last_stderr_line()
    assert_no_leftovers(job)


def test_status_shows_both_nodes(guarded, cluster):
    import json
    import subprocess
    import time

    from harness import WATCHDOG

    job = f"mn-status-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_STEPS=150)
    deadline = time.monotonic() + 60
    seen: dict = {}
    while time.monotonic() < deadline:
        out = subprocess.run([*WATCHDOG, "status", "--json", "--coordinator", cluster.address],
                             capture_output=True, text=True, timeout=30)
        snap = json.loads(out.stdout)
        jobs = [j for j in snap["jobs"] if j["job"] == job]
        if jobs and all(r["step"] > 2 for n in jobs[0]["nodes"] for r in n["ranks"]) \
                and len(jobs[0]["nodes"]) == 2:
            seen = jobs[0]
            break
        time.sleep(0.5)
    assert seen, "status never showed both nodes stepping"
    assert {n["node"] for n in seen["nodes"]} == {"node-a", "node-b"}
    assert a.wait() == 0 and b.wait() == 0


def test_lost_node_stops_the_other(guarded, cluster, alert_sink):
    """Node B freezes whole (agent, wrapper, launcher, ranks): node_lost, node A torn down."""
    import os
    import signal

    import psutil

    job = f"mn-lost-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job)
    stepping(cluster.address, job)
    frozen = [cluster.agents["node-b"].pid, b.proc.pid] + \
        [p.pid for p in psutil.Process(b.proc.pid).children(recursive=True)]
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        assert a.wait(timeout=60) == 75, a.stderr()
        assert "node_lost rank - on node-b" in a.last_stderr_line(), a.last_stderr_line()
        assert alert_sink.wait_for(1)[0]["title"] == f"[watchdog-d] {job}: node_lost rank - on node-b"
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_embedded_agent_reporting_to_remote_coordinator(guarded, cluster):
    """Node A has no agent: its wrapper embeds one that reports to --coordinator."""
    port = free_port()
    job = f"mn-embed-{port}"
    env = train_env(WD_PG_TIMEOUT=300, WD_FAULT="kill", WD_FAULT_RANK=1)
    wrappers = []
    for node_rank, attach in enumerate((["--coordinator", cluster.address],
                                        ["--agent-socket", cluster.sockets["node-b"]])):
        cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
               "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "watchdog_d.demo.train"]
        wrappers.append(guarded([*attach, "--min-stall-timeout", "3", "--grace", "3"], cmd, env,
                                job_id=job))
    for w in wrappers:
        assert w.wait() == 75, w.stderr()
        assert "rank_exited rank 1 on node-b" in w.last_stderr_line(), w.last_stderr_line()
    assert_no_leftovers(job)


def test_restarted_agent_keeps_guarding(guarded, cluster, tmp_path):
    """Node B's agent dies (SIGKILL) and comes back (as systemd would restart it): the
    job runs on, is not declared lost, and a rank killed afterwards is still caught."""
    job = f"mn-agent-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_STEPS=100000)
    stepping(cluster.address, job)
    cluster.agents["node-b"].kill()
    cluster.agents["node-b"].wait()
    time.sleep(2.0)                       # silent, but node A keeps stepping
    cluster.start_agent("node-b")
    deadline = time.monotonic() + 20
    while "agent_reattached" not in b.stderr():
        assert time.monotonic() < deadline, b.stderr()
        time.sleep(0.1)
    time.sleep(1.5)                       # a heartbeat or two from the new agent
    assert a.proc.poll() is None and b.proc.poll() is None, "the job did not survive"
    kill_rank(b, 1)
    for w in (a, b):
        assert w.wait(timeout=30) == 75, w.stderr()
        assert "rank_exited rank 1 on node-b" in w.last_stderr_line(), w.last_stderr_line()
    assert_no_leftovers(job)


def test_twin_restarted_agent_without_a_fault_ends_well(guarded, cluster, tmp_path):
    """The same agent restart, nothing else: the stack-dump round the silence starts
    overlaps the wrapper's reattach (its command came before Registered and was taken
    for a refusal; the job was torn down as job_failed), and the job must end exit 0
    with only job_succeeded."""
    job = f"mn-agent-twin-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_STEPS=300)
    stepping(cluster.address, job)
    cluster.agents["node-b"].kill()
    cluster.agents["node-b"].wait()
    time.sleep(2.0)
    cluster.start_agent("node-b")
    for w in (a, b):
        assert w.wait(timeout=90) == 0, w.stderr()
    assert "agent_reattached" in b.stderr(), b.stderr()
    assert [e["kind"] for e in job_events(cluster.state_dir, job)] == ["job_succeeded"]
    assert_no_leftovers(job)


def _restarting_job(guarded, cluster, job: str, launcher_args, ckpt,
                    extra_run_args: list[str] = (), **fault: object):
    """One job on both nodes under --on-failure restart --max-restarts 1; ``launcher_args``
    (node_rank) -> torchrun's node-specific arguments."""
    env = train_env(WD_PG_TIMEOUT=300, WD_CKPT_DIR=ckpt, **fault)
    wrappers = []
    for node_rank, node in enumerate(("node-a", "node-b")):
        cmd = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", *launcher_args(node_rank),
               "-m", "watchdog_d.demo.train"]
        wrappers.append(guarded(["-v", "--agent-socket", cluster.sockets[node], "--on-failure",
                                 "restart", "--max-restarts", "1", "--grace", "3",
                                 "--min-stall-timeout", "5", *extra_run_args], cmd, env, job_id=job))
    return wrappers


def test_kill_on_node_b_restarts_both_nodes_from_the_same_checkpoint(guarded, cluster, tmp_path):
    # rank 0 (node A) saves and records the checkpoints; rank 1 on node B dies at step 12:
    # both nodes tear down, wait for each other, relaunch attempt 1 from step-10.pt
    job, port, ckpt = f"mn-restart-{free_port()}", free_port(), tmp_path / "ckpt"
    ckpt.mkdir()
    a, b = _restarting_job(guarded, cluster, job, lambda node_rank: [
        f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}"],
        ckpt, WD_FAULT="kill", WD_FAULT_RANK=1, WD_FAULT_STEP=12, WD_STEPS=25)
    assert a.wait(timeout=120) == 0, a.stderr()
    assert b.wait(timeout=30) == 0, b.stderr()
    assert f"[rank 0] resumed from {ckpt}/step-10.pt at step 10" in a.stdout()
    assert f"[rank 1] resumed from {ckpt}/step-10.pt at step 10" in b.stdout()
    for w in (a, b):
        assert "relaunching as attempt 1 from" in w.stderr()
    assert [(e["kind"], e["node"], e["action"]) for e in job_events(cluster.state_dir, job)] == [
        ("rank_exited", "node-b", "restart 1/1"), ("job_succeeded", "", "none")]
    assert_no_leftovers(job)


def test_restart_with_a_c10d_rendezvous_gets_a_fresh_rendezvous_id(guarded, cluster, tmp_path):
    # the usual multi-node setup: a dynamic rendezvous, one id for the job; the relaunch
    # rendezvouses as ID-a1 so it cannot meet what is left of round ID
    rdzv, port, ckpt = f"mn-c10d-{free_port()}", free_port(), tmp_path / "ckpt"
    ckpt.mkdir()
    wrappers = _restarting_job(guarded, cluster, rdzv, lambda node_rank: [
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={rdzv}"],
        ckpt, WD_FAULT="raise", WD_FAULT_RANK=0, WD_FAULT_STEP=7, WD_STEPS=15)
    for w in wrappers:
        assert w.wait(timeout=120) == 0, w.stderr()
        assert f"--rdzv-id={rdzv}-a1" in w.stderr()          # the relaunch's command line
    out = "".join(w.stdout() for w in wrappers)
    assert out.count(f"resumed from {ckpt}/step-5.pt at step 5") == 2, out
    assert [e["action"] for e in job_events(cluster.state_dir, rdzv)] == ["restart 1/1", "none"]
    assert_no_leftovers(rdzv)


def test_a_coordinator_restarted_between_two_attempts_still_relaunches(guarded, cluster, tmp_path):
    # the restart is decided, both nodes are down and wait out the backoff; the coordinator
    # dies and comes back: it learns the job from the waiting nodes, and the recorded
    # checkpoint from its state store
    job, port, ckpt = f"mn-coord-{free_port()}", free_port(), tmp_path / "ckpt"
    ckpt.mkdir()
    a, b = _restarting_job(guarded, cluster, job, lambda node_rank: [
        f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}"],
        ckpt, WD_FAULT="kill", WD_FAULT_RANK=1, WD_FAULT_STEP=12, WD_STEPS=25,
        extra_run_args=["--restart-backoff", "10"])
    deadline = time.monotonic() + 60
    while not all("attempt 0 stopped" in w.stderr() for w in (a, b)):
        assert time.monotonic() < deadline, a.stderr() + b.stderr()
        time.sleep(0.2)
    cluster.restart_coordinator()
    assert a.wait(timeout=120) == 0, a.stderr()
    assert b.wait(timeout=30) == 0, b.stderr()
    for w in (a, b):
        assert f"resumed from {ckpt}/step-10.pt at step 10" in w.stdout(), w.stdout()
    assert_no_leftovers(job)
