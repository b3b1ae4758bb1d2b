"""Heartbeats on a stream (protocol 3), on real processes: a stream that breaks is opened
again and the agent sends everything; a coordinator killed mid-stream and started again
hears every node again; old agents (a unary Report per heartbeat, a Watch stream) and
stream agents side by side against one coordinator. Each with its twin: no verdict
while nothing failed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

import scale
from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, free_port, train_env
from tcpproxy import Proxy


def _job(guarded, cluster: Cluster, job_id: str, **env: object):
    port = free_port()
    env = train_env(**{"WD_PG_TIMEOUT": 300, "WD_STEPS": 100000, **env})
    wrappers = []
    for node_rank, node in enumerate(("node-a", "node-b")):
        cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
               "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "watchdog_d.demo.train"]
        wrappers.append(guarded(["--agent-socket", cluster.sockets[node], "--min-stall-timeout",
                                 "3", "--grace", "3"], cmd, env, job_id=job_id))
    return wrappers


def _status(cluster: Cluster) -> dict:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--coordinator", cluster.address],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout or '{"jobs": []}')


def _stepping(cluster: Cluster, job: str, above: int = 2, timeout: float = 60.0) -> dict:
    """The job's status once both nodes' ranks stepped past ``above``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in _status(cluster)["jobs"] if j["job"] == job]
        if jobs and len(jobs[0]["nodes"]) == 2 and all(
                n["ranks"] and all(r["step"] > above for r in n["ranks"]) for n in jobs[0]["nodes"]):
            return jobs[0]
        time.sleep(0.3)
    raise AssertionError(f"job {job} never stepped past {above} on both nodes")


def _kill_rank(wrapper, rank: int) -> None:
    ranks = [p for p in psutil.Process(wrapper.proc.pid).children(recursive=True)
             if p.environ().get("RANK") == str(rank)]
    assert ranks, f"rank {rank} not found"
    os.kill(ranks[0].pid, signal.SIGKILL)


def _events(cluster: Cluster, job: str) -> list[dict]:
    out = subprocess.run([*WATCHDOG, "events", "--json", "--job", job, "--state-dir",
                          str(cluster.state_dir)], capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture
def proxied(tmp_path, alert_sink):
    """Node B's agent reaches the coordinator through a proxy that the test can cut."""
    port = free_port()
    proxy = Proxy(("127.0.0.1", port))
    c = Cluster(tmp_path, ["node-a", "node-b"], alert_url=alert_sink.url, listen=f"127.0.0.1:{port}",
                agent_coordinator={"node-b": proxy.address})
    yield c, proxy
    c.stop()
    proxy.close()


def _cut_three_times(cluster: Cluster, proxy: Proxy, job: str) -> None:
    for _ in range(3):
        opened = cluster.log("coordinator").count("node_streaming node=node-b")
        proxy.cut()
        deadline = time.monotonic() + 20
        while cluster.log("coordinator").count("node_streaming node=node-b") <= opened:
            assert time.monotonic() < deadline, cluster.log("node-b")
            time.sleep(0.1)
        time.sleep(1.0)


def test_broken_streams_are_opened_again_and_the_job_is_still_guarded(guarded, proxied):
    cluster, proxy = proxied
    job = f"st-cut-{free_port()}"
    a, b = _job(guarded, cluster, job)
    _stepping(cluster, job)
    _cut_three_times(cluster, proxy, job)
    _stepping(cluster, job, above=_stepping(cluster, job)["nodes"][1]["ranks"][0]["step"])
    assert a.proc.poll() is None and b.proc.poll() is None
    _kill_rank(b, 1)
    for w in (a, b):
        assert w.wait(timeout=30) == 75, w.stderr()
        assert "rank_exited rank 1 on node-b" in w.last_stderr_line(), w.last_stderr_line()
    assert [e["kind"] for e in _events(cluster, job)] == ["rank_exited"]
    assert_no_leftovers(job)


def test_broken_streams_alone_make_no_verdict(guarded, proxied):
    """The twin: the same cuts, nothing fails; the job ends by itself, exit 0."""
    cluster, proxy = proxied
    job = f"st-cut-ok-{free_port()}"
    a, b = _job(guarded, cluster, job, WD_STEPS=300, WD_STEP_TIME=0.05)
    _stepping(cluster, job)
    _cut_three_times(cluster, proxy, job)
    for w in (a, b):
        assert w.wait(timeout=60) == 0, w.stderr()
    assert [e["kind"] for e in _events(cluster, job)] == ["job_succeeded"]
    assert "node_streaming node=node-b" in cluster.log("coordinator")


@pytest.fixture
def cluster(tmp_path, alert_sink):
    c = Cluster(tmp_path, ["node-a", "node-b"], alert_url=alert_sink.url)
    yield c
    c.stop()


def test_a_coordinator_killed_mid_stream_hears_every_node_again(guarded, cluster):
    job = f"st-restart-{free_port()}"
    a, b = _job(guarded, cluster, job)
    _stepping(cluster, job)
    cluster.restart_coordinator()
    _stepping(cluster, job, above=_stepping(cluster, job, timeout=30)["nodes"][0]["ranks"][0]["step"])
    for node in ("node-a", "node-b"):       # a stream to each process (one log file)
        assert cluster.log("coordinator").count(f"node_streaming node={node}") >= 2
    assert a.proc.poll() is None and b.proc.poll() is None, "the restart cost the job"
    assert _events(cluster, job) == []
    _kill_rank(a, 0)
    for w in (a, b):
        assert w.wait(timeout=30) == 75, w.stderr()
        assert "rank_exited rank 0 on node-a" in w.last_stderr_line(), w.last_stderr_line()
    assert_no_leftovers(job)


NODES, KILL_AT = 32, 6.0


def test_old_unary_agents_and_stream_agents_side_by_side(tmp_path):
    """Half the nodes are old agents (a Report per heartbeat, a Watch stream), half stream:
    a rank dies on an old one (job0) and on a stream one (job2, node 16): every node of
    both jobs is told, the other two jobs nothing, no Report fails."""
    coordinator = scale.start_server("coordinator", tmp_path)
    try:
        t0 = time.monotonic() + 3.0
        sims = scale.start_sims(coordinator.port, NODES, 2, t0=t0, end=t0 + 12.0,
                                measure=(t0 + 1, t0 + 11), workdir=tmp_path, transport="mixed",
                                faults={"kill": [{"at": t0 + KILL_AT, "node": 3, "rank": 26},
                                                 {"at": t0 + KILL_AT, "node": 16, "rank": 2}]})
        try:
            got = sims.wait()
        finally:
            sims.kill()
        events = coordinator.events()
        log = coordinator.log.read_text()
    finally:
        coordinator.stop()
    # (the simulation's end is a mass silence: a coordinator_isolated warning, no verdict)
    assert sorted((e["job"], e["kind"], e["node"]) for e in events
                  if e["kind"] != "coordinator_isolated") == [
        ("job0", "rank_exited", "n00003"), ("job2", "rank_exited", "n00016")], events
    torn = {(job, node) for node, job, verb, _t, _via in got["commands"] if verb == "teardown"}
    assert torn == {(f"job{j}", f"n{j * 8 + k:05d}") for j in (0, 2) for k in range(8)}
    assert got["errors"] == [] and len(got["latency"]) > NODES * 8
    assert log.count("node_streaming") == NODES // 2 and log.count("node_watching") == NODES // 2
