"""Two hosts for real: node B lives in its own network namespace behind a veth
pair; cutting the link makes node B lost. Needs root and iproute2.

Addresses are on our own veth pair only (10.213.N.0/30), torn down at the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, Guarded, free_port, kill_job, train_env

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


def test_cut_link_makes_node_lost_and_node_a_stops(tmp_path, host_b, alert_sink):
    port = free_port()
    cluster = Cluster(tmp_path, ["node-a"], alert_url=alert_sink.url,
                      listen=f"0.0.0.0:{port}")
    agent_b = None
    job = f"netns-{port}"
    wrappers: list[Guarded] = []
    try:
        sock_b = str(tmp_path / "node-b.sock")
        agent_b = subprocess.Popen(
            ["ip", "netns", "exec", host_b["ns"], *WATCHDOG, "agent", "--coordinator",
             f"{host_b['a_ip']}:{port}", "--node-id", "node-b", "--socket", sock_b,
             "--state-dir", str(tmp_path / "node-b")],
            env=train_env(), stdout=open(tmp_path / "node-b.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(sock_b):
            assert time.monotonic() < deadline, "agent in the namespace did not come up"
            time.sleep(0.05)
        master = free_port()
        for node_rank, (sock, ifname, prefix) in enumerate((
                (cluster.sockets["node-a"], host_b["host_if"], []),
                (sock_b, host_b["ns_if"], ["ip", "netns", "exec", host_b["ns"]]))):
            env = train_env(WD_PG_TIMEOUT=600, WD_STEPS=100000, GLOO_SOCKET_IFNAME=ifname)
            cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
                   f"--master-addr={host_b['a_ip']}", f"--master-port={master}",
                   "-m", "watchdog_d.demo_train"]
            # on host B the whole wrapper (and so the job) runs inside the namespace
            wrappers.append(Guarded(tmp_path, job, ["--agent-socket", sock, "--grace", "3"],
                                    cmd, env, prefix=prefix))
        a, b = wrappers
        # wait until both ranks step, then cut the cable
        deadline = time.monotonic() + 90
        while "step 10 " not in a.stdout():
            assert time.monotonic() < deadline, a.stderr() + b.stderr()
            assert a.proc.poll() is None and b.proc.poll() is None, a.stderr() + b.stderr()
            time.sleep(0.2)
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
        for g in wrappers:
            if g.proc.poll() is None:
                g.proc.kill()
        kill_job(job)
        if agent_b and agent_b.poll() is None:
            agent_b.terminate()
        cluster.stop()
