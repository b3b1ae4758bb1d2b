"""Standby coordinators (``--ha etcd://``) on a real etcd, real coordinators and agents, a
real two-node job: the leader killed, paused past its lease, cut off from etcd; each
fault with its twin that must tear nothing down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from etcd import etcd  # noqa: F401  (fixture)
from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, free_port, train_env
from cluster import cluster_status, job_events, kill_rank, stepping, two_node_job
from hacluster import TTL, HACluster

pytestmark = pytest.mark.integration


@pytest.fixture
def ha(tmp_path, etcd, alert_sink):  # noqa: F811
    c = HACluster(tmp_path, etcd.url, ["A", "B"], ["node-a", "node-b"], alert_url=alert_sink.url)
    yield c
    c.stop()


def _take_over(ha: HACluster) -> float:
    """kill -9 the leader A: seconds until B leads."""
    assert ha.leader() == "A"
    killed = time.monotonic()
    ha.kill("A")
    ha.wait_leader({"B"}, timeout=TTL + 10)
    return time.monotonic() - killed


def test_the_standby_leads_within_the_lease_and_catches_the_next_fault(guarded, ha, alert_sink):
    job = f"ha-kill-{free_port()}"
    a, b = two_node_job(guarded, ha.sockets, job, WD_STEPS=100000)
    stepping(ha.address("A"), job)
    import grpc

    from watchdog_d.proto import watchdog_pb2 as pb
    from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(ha.address("B"))
    try:                                             # the standby itself says who leads
        said = json.loads(pb_grpc.CoordinatorStub(channel).Status(pb.StatusRequest(), timeout=5).json)
    finally:
        channel.close()
    said = said["coordinator"]
    assert said["name"] == "B" and said["role"] == "standby", said
    assert said["leader"] == f"A@{ha.address('A')}" and said["epoch"] > 0, said
    snap = cluster_status(ha.address("B"))                          # `status` asked of a standby: the leader answers
    assert snap["coordinator"]["role"] == "leader" and snap["coordinator"]["name"] == "A", snap
    assert job in [j["job"] for j in snap["jobs"]], snap
    took = _take_over(ha)
    assert took <= TTL + 1.0, f"B led {took:.2f}s after A died (lease {TTL}s)"
    stepping(ha.address("B"), job)                   # every node reports to B now
    assert a.proc.poll() is None and b.proc.poll() is None, "the switch cost the job"
    kill_rank(b, 1)
    for w in (a, b):
        assert w.wait(timeout=30) == 75, w.stderr()
        assert "rank_exited rank 1 on node-b" in w.last_stderr_line(), w.last_stderr_line()
    assert [e["kind"] for e in job_events(ha.state_dir("B"), job)] == ["rank_exited"]
    alerts = alert_sink.wait_for(1)
    time.sleep(1.0)
    assert [x["title"] for x in alert_sink.received if job in x.get("title", "")] == [
        f"[watchdog-d] {job}: rank_exited rank 1 on node-b"]
    assert alerts
    assert_no_leftovers(job)


def test_a_leader_killed_under_a_healthy_job_costs_it_nothing(guarded, ha, alert_sink):
    """The twin: the same switch, no fault; the job ends by itself, exit 0, no verdict."""
    job = f"ha-ok-{free_port()}"
    a, b = two_node_job(guarded, ha.sockets, job, WD_STEPS=400, WD_STEP_TIME=0.05)
    stepping(ha.address("A"), job)
    _take_over(ha)
    for w in (a, b):
        assert w.wait(timeout=90) == 0, w.stderr()
    assert [e["kind"] for e in job_events(ha.state_dir("B"), job)] == ["job_succeeded"]
    assert [x for x in alert_sink.received if job in x.get("title", "")] == []


def test_a_leader_paused_past_its_lease_is_fenced_when_it_wakes(guarded, ha):
    """A SIGSTOPped past its lease: B leads; A, woken, learns it lost the lease and stands
    by; nothing it had is carried out; the job runs on."""
    job = f"ha-stop-{free_port()}"
    a, b = two_node_job(guarded, ha.sockets, job, WD_STEPS=100000)
    stepping(ha.address("A"), job)
    ha.signal("A", signal.SIGSTOP)
    ha.wait_leader({"B"}, timeout=TTL + 10)
    stepping(ha.address("B"), job)
    ha.signal("A", signal.SIGCONT)
    deadline = time.monotonic() + 10
    while "ha_deposed" not in ha.log("coordinator-A"):
        assert time.monotonic() < deadline, ha.log("coordinator-A")
        time.sleep(0.1)
    assert not ha.serving("A") and ha.leader() == "B"
    time.sleep(2.0)
    assert a.proc.poll() is None and b.proc.poll() is None
    assert job_events(ha.state_dir("B"), job) == [] and job_events(ha.state_dir("A"), job) == []


def _failing_job(guarded, c: HACluster, node: str, job: str):
    """One node, one rank that dies at step 5 (torchrun --standalone)."""
    env = train_env(WD_PG_TIMEOUT=300, WD_STEPS=100000, WD_FAULT="kill", WD_FAULT_RANK=0,
                    WD_FAULT_STEP=5)
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node=1", "-m", "watchdog_d.demo.train"]
    return guarded(["--agent-socket", c.sockets[node], "--grace", "3"], cmd, env, job_id=job)


def _wait_log(c: HACluster, name: str, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in c.log(name):
        assert time.monotonic() < deadline, f"{text!r} not in {name}'s log:\n{c.log(name)[-3000:]}"
        time.sleep(0.1)


def test_three_coordinators_leader_killed_twice_history_is_one(guarded, tmp_path, etcd):  # noqa: F811
    c = HACluster(tmp_path, etcd.url, ["A", "B", "C"], ["node-a", "node-b"])
    try:
        jobs = [f"ha-hist-{k}-{free_port()}" for k in range(3)]
        alive = {"A", "B", "C"}
        for k in range(3):
            leader = c.leader()
            assert leader in alive
            w = _failing_job(guarded, c, "node-a", jobs[k])
            assert w.wait(timeout=60) == 75, w.stderr()
            assert "rank_exited rank 0 on node-a" in w.last_stderr_line()
            if k < 2:
                c.kill(leader)
                alive.discard(leader)
                c.wait_leader(alive, timeout=TTL + 10)
        last = alive.pop()
        # one history at the leader: every incident, whichever coordinator decided it
        got = [(e["job"], e["kind"]) for job in jobs for e in job_events(c.state_dir(last), job)]
        assert got == [(job, "rank_exited") for job in jobs], got
        # ... and at the first one, started again (a standby pulls the records)
        c.start_coordinator("A")                # (its name's old lease runs out first: TTL)
        deadline = time.monotonic() + 30
        while [e["job"] for job in jobs for e in job_events(c.state_dir("A"), job)] != jobs:
            assert time.monotonic() < deadline, [e for job in jobs for e in job_events(c.state_dir("A"), job)]
            time.sleep(0.3)
        assert c.leader() == last
    finally:
        c.stop()


def test_an_alert_pending_when_the_leader_dies_is_sent_once_by_the_next(guarded, tmp_path, etcd):  # noqa: F811
    from harness import AlertSink

    port = free_port()                       # the channel: down at first (nothing listens)
    c = HACluster(tmp_path, etcd.url, ["A", "B"], ["node-a", "node-b"],
                  alert_url=f"json://127.0.0.1:{port}/hook")
    sink = None
    try:
        job = f"ha-alert-{free_port()}"
        w = _failing_job(guarded, c, "node-a", job)
        assert w.wait(timeout=60) == 75, w.stderr()
        _wait_log(c, "coordinator-A", "alert_failed")
        c.kill("A")
        c.wait_leader({"B"}, timeout=TTL + 10)
        _wait_log(c, "coordinator-B", "alerts_adopted count=1")
        sink = AlertSink(port)                # the channel is back
        deadline = time.monotonic() + 45
        while not sink.received:
            assert time.monotonic() < deadline, c.log("coordinator-B")[-3000:]
            time.sleep(0.2)
        time.sleep(3.0)
        assert [x["title"] for x in sink.received] == [f"[watchdog-d] {job}: rank_exited rank 0 on node-a"]
    finally:
        c.stop()
        if sink is not None:
            sink.close()


@pytest.mark.slow      # (40 s; CI's 30 minutes: make test-all runs it)
def test_etcd_down_30s_the_leader_decides_on_and_tears_down_nothing_for_it(guarded, ha, etcd,  # noqa: F811
                                                                          alert_sink):
    healthy = f"ha-etcd-ok-{free_port()}"
    a, b = two_node_job(guarded, ha.sockets, healthy, WD_STEPS=100000)
    stepping(ha.address("A"), healthy)
    etcd.kill()
    _wait_log(ha, "coordinator-A", "etcd_unreachable")
    time.sleep(10.0)                              # past the lease: the leader decides on
    failing = f"ha-etcd-fail-{free_port()}"
    w = _failing_job(guarded, ha, "node-a", failing)
    assert w.wait(timeout=60) == 75, w.stderr()   # decided without etcd
    time.sleep(max(0.0, 30.0 - 10.0 - 5.0))
    etcd.start()
    _wait_log(ha, "coordinator-A", "etcd_back", timeout=20)
    deadline = time.monotonic() + 10
    while ha.leader() != "A":                     # the lease renewed (or taken anew) by A
        assert time.monotonic() < deadline, ha.log("coordinator-A")[-3000:]
        time.sleep(0.2)
    time.sleep(2.0)
    assert a.proc.poll() is None and b.proc.poll() is None, "a job was touched for etcd's sake"
    assert job_events(ha.state_dir("A"), healthy) == []
    assert [e["kind"] for e in job_events(ha.state_dir("A"), failing)] == ["rank_exited"]
    alert_sink.wait_for(2)
    time.sleep(1.0)
    titles = [x.get("title", "") for x in alert_sink.received]
    assert sum("etcd_unreachable" in t for t in titles) == 1, titles
    assert sum(failing in t for t in titles) == 1, titles
    assert not [t for t in titles if healthy in t], titles


def test_a_verb_of_an_older_epoch_is_refused_by_the_agent(guarded, ha):
    """The second line of fencing. A real leader never sends a verb of an epoch that is over
    (unsure of its lease it decides nothing; deposed, it drops its queued verbs), so the
    stale peer here is a bare gRPC server of the test: after the agent heard the real
    leader's epoch, a "leader" of an older one answers its heartbeats with a teardown of the
    agent's job. The agent refuses it, says so and counts it; the job runs on."""
    from concurrent import futures
    import urllib.request

    import grpc

    from watchdog_d.proto import watchdog_pb2 as pb

    job = f"ha-fence-{free_port()}"
    stale_port = free_port()

    def stream(requests, context):  # type: ignore[no-untyped-def]
        for hb in requests:
            yield pb.HeartbeatAck(seq=hb.seq, deltas=True, epoch=1, commands=[
                pb.Command(job_id=job, verb="teardown", attempt=0, action="teardown", epoch=1)])

    stale = grpc.server(futures.ThreadPoolExecutor(4))
    stale.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("watchdog_d.v1.Coordinator", {
        "Stream": grpc.stream_stream_rpc_method_handler(stream, pb.Heartbeat.FromString,
                                                        lambda m: m.SerializeToString())}),))
    stale.add_insecure_port(f"127.0.0.1:{stale_port}")
    stale.start()
    try:
        metrics = free_port()
        agent = ha.start_agent("node-c", ["--metrics-port", str(metrics)],
                               coordinators=f"{ha.address('A')},127.0.0.1:{stale_port}")
        deadline = time.monotonic() + 20
        while not os.path.exists(ha.sockets["node-c"]):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.05)
        env = train_env(WD_PG_TIMEOUT=300, WD_STEPS=100000)
        w = guarded(["--agent-socket", ha.sockets["node-c"], "--grace", "3"],
                    [*TORCHRUN, "--standalone", "--nproc-per-node=1", "-m", "watchdog_d.demo.train"],
                    env, job_id=job)
        stepping(ha.address("A"), job, nodes=1)                    # the agent knows A's epoch now
        ha.signal("A", signal.SIGSTOP)                 # only the stale one answers
        _wait_log(ha, "node-c", "command_fenced", timeout=30)
        time.sleep(2.0)
        assert w.proc.poll() is None, "a verb of an older epoch was carried out"
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        fenced = [line for line in text.splitlines()
                  if line.startswith("watchdogd_agent_commands_fenced_total ")]
        assert fenced and float(fenced[0].split()[1]) >= 1, fenced
        assert "command_received" not in ha.log("node-c").split("command_fenced", 1)[1]
        ha.signal("A", signal.SIGCONT)
        w.proc.terminate()
        w.wait(timeout=30)
    finally:
        ha.signal("A", signal.SIGCONT)
        stale.stop(0)


def test_bad_ha_settings_are_refused_at_start_with_one_line(tmp_path, etcd):  # noqa: F811
    def start(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*WATCHDOG, "coordinator", "--listen", f"127.0.0.1:{free_port()}",
                               "--state-dir", str(tmp_path / f"s{free_port()}"), *args],
                              capture_output=True, text=True, timeout=30, env=train_env())

    dead = f"127.0.0.1:{free_port()}"
    for args, words in (
            (["--ha", f"etcd://{dead}", "--name", "A"], "etcd does not answer"),
            (["--ha", "http://127.0.0.1:2379"], "must start with etcd://"),
            (["--ha", f"etcd://{etcd.url}", "--lease-ttl", "1"], "lease_ttl must be at least 2 s")):
        out = start(*args)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and words in lines[0], (args, out.stderr)
    first = subprocess.Popen([*WATCHDOG, "coordinator", "--listen", f"127.0.0.1:{free_port()}",
                              "--state-dir", str(tmp_path / "first"), "--ha", f"etcd://{etcd.url}",
                              "--name", "A", "--lease-ttl", "3"], env=train_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        out = start("--ha", f"etcd://{etcd.url}", "--name", "A", "--lease-ttl", "3")
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and "name 'A' is taken" in lines[0], out.stderr
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_a_forged_epoch_is_refused_like_any_bad_report(ha):
    import grpc

    from watchdog_d.proto import watchdog_pb2 as pb
    from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(ha.address("A"))
    try:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.CoordinatorStub(channel).Report(
                pb.Heartbeat(node_id="hostile", seq=1, epoch=1 << 60), timeout=5)
    finally:
        channel.close()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "epoch" in e.value.details()
    time.sleep(1.0)
    assert ha.leader() == "A"            # not deposed by it
