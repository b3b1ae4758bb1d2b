"""Two hosts for real: node B lives in its own network namespace behind a veth
pair; cutting the link makes node B lost. Needs root and iproute2.

Addresses are on our own veth pair only (10.213.N.0/30), torn down at the end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, Guarded, free_port, kill_job, train_env

ASYNC_JOB = str(Path(__file__).parent / "jobs" / "async_job.py")

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                 reason="needs root and iproute2 for network namespaces")]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def host_b():
    n = os.getpid() % 200 + 20
    ns, host_if, ns_if = f"wd-b-{n}", f"wdh{n}", f"wdn{n}"
    a_ip, b_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{a_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{b_ip}/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield {"ns": ns, "host_if": host_if, "ns_if": ns_if, "a_ip": a_ip, "b_ip": b_ip}
    finally:
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in out.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _job_on_two_hosts(tmp_path, host_b, cluster, job: str, run_args: list[str],
                      script: list[str] = ("-m", "watchdog_d.demo.train"), **env_extra):
    """Node B's agent inside the namespace; one wrapper per host (B's inside it too).
    Returns (agent_b, [wrapper_a, wrapper_b])."""
    sock_b = str(tmp_path / "node-b.sock")
    agent_b = subprocess.Popen(
        ["ip", "netns", "exec", host_b["ns"], *WATCHDOG, "agent", "--coordinator",
         f"{host_b['a_ip']}:{cluster.port}", "--node-id", "node-b", "--socket", sock_b,
         "--state-dir", str(tmp_path / "node-b")],
        env=train_env(), stdout=open(tmp_path / "node-b.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock_b):
        assert time.monotonic() < deadline, "agent in the namespace did not come up"
        time.sleep(0.05)
    master = free_port()
    wrappers = []
    for node_rank, (sock, ifname, prefix) in enumerate((
            (cluster.sockets["node-a"], host_b["host_if"], []),
            (sock_b, host_b["ns_if"], ["ip", "netns", "exec", host_b["ns"]]))):
        env = train_env(WD_PG_TIMEOUT=600, GLOO_SOCKET_IFNAME=ifname, **env_extra)
        cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
               f"--master-addr={host_b['a_ip']}", f"--master-port={master}",
               *script]
        # on host B the whole wrapper (and so the job) runs inside the namespace
        wrappers.append(Guarded(tmp_path, job, ["--agent-socket", sock, "--grace", "3", *run_args],
                                cmd, env, prefix=prefix))
    return agent_b, wrappers


def _events(cluster: Cluster, job: str) -> list[dict]:
    out = subprocess.run([*WATCHDOG, "events", "--json", "--job", job, "--state-dir",
                          str(cluster.state_dir)], capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _wait_for_steps(a: Guarded, b: Guarded, marker: str = "step 10 ") -> None:
    deadline = time.monotonic() + 90
    while marker not in a.stdout():
        assert time.monotonic() < deadline, a.stderr() + b.stderr()
        assert a.proc.poll() is None and b.proc.poll() is None, a.stderr() + b.stderr()
        time.sleep(0.2)


def test_cut_link_makes_node_lost_and_node_a_stops(tmp_path, host_b, alert_sink):
    port = free_port()
    cluster = Cluster(tmp_path, ["node-a"], alert_url=alert_sink.url,
                      listen=f"0.0.0.0:{port}")
    agent_b = None
    job = f"netns-{port}"
    wrappers: list[Guarded] = []
    try:
        agent_b, wrappers = _job_on_two_hosts(tmp_path, host_b, cluster, job, [], WD_STEPS=100000)
        a, b = wrappers
        _wait_for_steps(a, b)            # both ranks step: now cut the cable
        cut = time.monotonic()
        _ip("link", "set", host_b["host_if"], "down")
        assert a.wait(timeout=60) == 75, a.stderr()
        took = time.monotonic() - cut
        assert "node_lost rank - on node-b" in a.last_stderr_line(), a.last_stderr_line()
        assert took < 30, f"node A went down {took:.1f}s after the cut"
        # the link comes back: node B's agent reconnects and gets the queued teardown
        _ip("link", "set", host_b["host_if"], "up")
        assert b.wait(timeout=60) == 75, b.stderr()
        assert "node_lost" in b.last_stderr_line(), b.last_stderr_line()
    finally:
        _cleanup(wrappers, job, agent_b, cluster)


def test_cut_link_under_restart_node_b_catches_up_with_the_relaunch(tmp_path, host_b):
    # node B is lost; node A relaunches attempt 1 without it and waits in the rendezvous;
    # the link comes back: node B is told to relaunch attempt 1 too, and the job finishes
    port = free_port()
    cluster = Cluster(tmp_path, ["node-a"], listen=f"0.0.0.0:{port}")
    agent_b = None
    job = f"netns-restart-{port}"
    wrappers: list[Guarded] = []
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    try:
        agent_b, wrappers = _job_on_two_hosts(
            tmp_path, host_b, cluster, job, ["-v", "--on-failure", "restart", "--max-restarts", "1"],
            WD_STEPS=60, WD_CKPT_DIR=ckpt)
        a, b = wrappers
        _wait_for_steps(a, b, "step 20 ")
        _ip("link", "set", host_b["host_if"], "down")
        deadline = time.monotonic() + 60
        while "relaunching as attempt 1" not in a.stderr():
            assert time.monotonic() < deadline and a.proc.poll() is None, a.stderr()
            time.sleep(0.2)
        _ip("link", "set", host_b["host_if"], "up")
        assert a.wait(timeout=120) == 0, a.stderr()
        assert b.wait(timeout=30) == 0, b.stderr()
        assert "relaunching as attempt 1 from" in b.stderr(), b.stderr()
        resumed = [re.findall(r"resumed from (\S+) at step (\d+)", w.stdout()) for w in (a, b)]
        assert resumed[0] == resumed[1] and len(resumed[0]) == 1, resumed   # the same checkpoint
    finally:
        _cleanup(wrappers, job, agent_b, cluster)


@pytest.fixture
def iptables():
    """iptables, installed from the package registry when missing (we are root)."""
    if not shutil.which("iptables"):
        subprocess.run(["apt-get", "install", "-y", "-q", "iptables"], capture_output=True,
                       timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("iptables"):
        pytest.skip("iptables is not installed and apt-get could not install it")
    return shutil.which("iptables")


def test_link_cut_between_two_live_spinning_ranks_is_a_collective_timeout(
        tmp_path, host_b, iptables, alert_sink):
    # NCCL's host-side shape (async all_reduce, hosts spinning on is_completed()); the
    # ranks' own gloo connections are cut, while the agents, the coordinator and torchrun's
    # store still talk: every rank alive, busy, outside any collective frame. The flight
    # recorders show the all_reduce pending on both.
    port = free_port()
    cluster = Cluster(tmp_path, ["node-a"], alert_url=alert_sink.url, listen=f"0.0.0.0:{port}")
    agent_b = None
    job = f"netns-cut-{port}"
    wrappers: list[Guarded] = []
    floor = 4.0
    try:
        agent_b, wrappers = _job_on_two_hosts(
            tmp_path, host_b, cluster, job, ["--min-stall-timeout", str(floor)],
            script=[ASYNC_JOB], WD_FAULT="none", WD_STEPS=100000)
        a, b = wrappers
        _wait_for_steps(a, b, "step 40")
        master = re.search(r"--master-port=(\d+)", " ".join(a.argv)).group(1)
        keep = f"{port},{master}"            # the coordinator and torchrun's store stay up
        ns = ["ip", "netns", "exec", host_b["ns"], iptables]
        for rule in (["INPUT", "-s", host_b["a_ip"], "-p", "tcp", "-m", "multiport", "!",
                      "--sports", keep, "-j", "DROP"],
                     ["OUTPUT", "-d", host_b["a_ip"], "-p", "tcp", "-m", "multiport", "!",
                      "--dports", keep, "-j", "DROP"]):
            subprocess.run([*ns, "-A", *rule], check=True, capture_output=True, timeout=10)
        assert a.wait(timeout=90) == 75, a.stderr()
        assert b.wait(timeout=60) == 75, b.stderr()
        ev = [e for e in _events(cluster, job) if e["action"] == "teardown"]
        assert len(ev) == 1 and ev[0]["kind"] == "collective_timeout", ev
        assert ev[0]["detected_after_s"] <= floor + 5.0, ev[0]
        assert ev[0]["cause"].startswith("flight recorder: all_reduce #"), ev[0]["cause"]
        assert "on default_pg [2 ranks]" in ev[0]["cause"], ev[0]["cause"]
        assert "pending on every rank" in ev[0]["cause"], ev[0]["cause"]
        assert "flight recorder: all_reduce" in alert_sink.wait_for(1)[0]["message"]
    finally:
        _cleanup(wrappers, job, agent_b, cluster)


def test_twin_the_same_job_uncut_under_the_same_rules_ends_well(tmp_path, host_b, iptables):
    # the rules in place but matching nothing the job uses: no verdict
    port = free_port()
    cluster = Cluster(tmp_path, ["node-a"], listen=f"0.0.0.0:{port}")
    agent_b = None
    job = f"netns-uncut-{port}"
    wrappers: list[Guarded] = []
    try:
        ns = ["ip", "netns", "exec", host_b["ns"], iptables]
        subprocess.run([*ns, "-A", "INPUT", "-s", "10.213.255.1", "-j", "DROP"], check=True,
                       capture_output=True, timeout=10)
        agent_b, wrappers = _job_on_two_hosts(
            tmp_path, host_b, cluster, job, ["--min-stall-timeout", "4"],
            script=[ASYNC_JOB], WD_FAULT="none", WD_STEPS=300)
        a, b = wrappers
        assert a.wait(timeout=120) == 0, a.stderr()
        assert b.wait(timeout=60) == 0, b.stderr()
        assert [e["kind"] for e in _events(cluster, job)] == ["job_succeeded"], _events(cluster, job)
    finally:
        _cleanup(wrappers, job, agent_b, cluster)


def _cleanup(wrappers: list[Guarded], job: str, agent_b, cluster: Cluster) -> None:
    for g in wrappers:
        if g.proc.poll() is None:
            g.proc.kill()
    kill_job(job)
    if agent_b and agent_b.poll() is None:
        agent_b.terminate()
    cluster.stop()
