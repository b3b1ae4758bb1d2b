"""Heartbeats on a stream (protocol 3), on real processes: a stream that breaks is opened
again and the agent sends everything; a coordinator killed mid-stream and started again
hears every node again; old agents (a unary Report per heartbeat, a Watch stream) and
stream agents side by side against one coordinator. Each with its twin: no verdict
while nothing failed."""
from __future__ import annotations

import time

import pytest

import scale
from cluster import Cluster, job_events, kill_rank, stepping, two_node_job
from harness import assert_no_leftovers, free_port
from tcpproxy import Proxy


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
    a, b = two_node_job(guarded, cluster.sockets, job, WD_STEPS=100000)
    stepping(cluster.address, job)
    _cut_three_times(cluster, proxy, job)
    stepping(cluster.address, job, above=stepping(cluster.address, job)["nodes"][1]["ranks"][0]["step"])
    assert a.proc.poll() is None and b.proc.poll() is None
    kill_rank(b, 1)
    for w in (a, b):
        assert w.wait(timeout=30) == 75, w.stderr()
        assert "rank_exited rank 1 on node-b" in w.last_stderr_line(), w.last_stderr_line()
    assert [e["kind"] for e in job_events(cluster.state_dir, job)] == ["rank_exited"]
    assert_no_leftovers(job)


def test_broken_streams_alone_make_no_verdict(guarded, proxied):
    """The twin: the same cuts, nothing fails; the job ends by itself, exit 0."""
    cluster, proxy = proxied
    job = f"st-cut-ok-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_STEPS=300, WD_STEP_TIME=0.05)
    stepping(cluster.address, job)
    _cut_three_times(cluster, proxy, job)
    for w in (a, b):
        assert w.wait(timeout=60) == 0, w.stderr()
    assert [e["kind"] for e in job_events(cluster.state_dir, job)] == ["job_succeeded"]
    assert "node_streaming node=node-b" in cluster.log("coordinator")


@pytest.fixture
def cluster(tmp_path, alert_sink):
    c = Cluster(tmp_path, ["node-a", "node-b"], alert_url=alert_sink.url)
    yield c
    c.stop()


def test_a_coordinator_killed_mid_stream_hears_every_node_again(guarded, cluster):
    job = f"st-restart-{free_port()}"
    a, b = two_node_job(guarded, cluster.sockets, job, WD_STEPS=100000)
    stepping(cluster.address, job)
    cluster.restart_coordinator()
    stepping(cluster.address, job, above=stepping(cluster.address, job, timeout=30)["nodes"][0]["ranks"][0]["step"])
    for node in ("node-a", "node-b"):       # a stream to each process (one log file)
        assert cluster.log("coordinator").count(f"node_streaming node={node}") >= 2
    assert a.proc.poll() is None and b.proc.poll() is None, "the restart cost the job"
    assert job_events(cluster.state_dir, job) == []
    kill_rank(a, 0)
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
