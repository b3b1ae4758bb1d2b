"""``watchdog-d drill`` on live jobs: the fault goes in through the node's agent, the
watchdog does what it must (verdict, teardown on every node, alert, relaunch), the drill
prints the timeline and PASS; the verdict and the alert say it was a drill. On one node
(the embedded default) and on two (a coordinator, two agents)."""
from __future__ import annotations

import json
import subprocess
import time

from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, free_port, train_env

DEMO = ["-m", "watchdog_d.demo.train"]


def _drill(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*WATCHDOG, "drill", *args], capture_output=True, text=True,
                          timeout=timeout, env=train_env())


def _stepping(g, marker: str = "step 10 ") -> None:
    deadline = time.monotonic() + 90
    while marker not in g.stdout():
        assert time.monotonic() < deadline and g.proc.poll() is None, g.stderr()
        time.sleep(0.2)


def test_a_kill_drill_on_the_embedded_default(guarded, alert_sink) -> None:
    g = guarded(["--alert", alert_sink.url, "--grace", "3"],
                [*TORCHRUN, "--standalone", "--nproc-per-node=2", *DEMO], train_env(WD_STEPS=100000))
    _stepping(g)
    out = _drill("--job", g.job_id, "kill", "--rank", "1", "--state-dir", str(g.state_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "injected" in lines[0] and "kill into rank 1" in lines[0], lines
    assert any("verdict" in l and "rank_exited rank 1" in l for l in lines), lines
    assert any("torn down" in l for l in lines) and lines[-1] == "PASS", lines
    assert g.wait(60) == 75
    ev = g.events()
    assert ev[0]["kind"] == "rank_exited" and ev[0]["cause"].startswith("[drill: kill rank 1 ("), ev
    assert "[drill: kill rank 1" in alert_sink.wait_for(1)[0]["message"]
    assert_no_leftovers(g.job_id)


def test_a_hang_drill_on_two_nodes_is_torn_down_everywhere_and_relaunched(guarded, tmp_path,
                                                                          alert_sink) -> None:
    cluster = Cluster(tmp_path, ["node-a", "node-b"], alert_url=alert_sink.url)
    job = f"drill-{free_port()}"
    try:
        port = free_port()
        env = train_env(WD_PG_TIMEOUT=300, WD_STEPS=100000)
        wrappers = []
        for node_rank, node in enumerate(("node-a", "node-b")):
            cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
                   "--master-addr=127.0.0.1", f"--master-port={port}", *DEMO]
            wrappers.append(guarded(["--agent-socket", cluster.sockets[node], "--min-stall-timeout", "3",
                                     "--grace", "3", "--on-failure", "restart", "--max-restarts", "1"],
                                    cmd, env, job_id=job))
        _stepping(wrappers[0])
        # asked on node A, for a rank that runs on node B
        out = _drill("--job", job, "hang", "--rank", "1", "--json", "--agent-socket",
                     cluster.sockets["node-a"])
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        events = [e["event"] for e in result["timeline"]]
        assert result["result"] == "PASS" and events[:2] == ["injected", "verdict"], result
        assert sorted(events[2:]) == ["alerted", "relaunched", "torn down"], result   # (in any order)
        assert "on node-b" in result["timeline"][0]["detail"]
        assert result["timeline"][1]["detail"].startswith("rank_stalled rank 1 on node-b"), result
        assert "drill_injected" in cluster.log("node-b")
    finally:
        for g in wrappers:
            if g.proc.poll() is None:
                g.proc.terminate()
        cluster.stop()


def test_a_drill_that_cannot_be_is_refused_and_touches_nothing(guarded) -> None:
    g = guarded(["--grace", "3"], [*TORCHRUN, "--standalone", "--nproc-per-node=2", *DEMO],
                train_env(WD_STEPS=100000))
    _stepping(g)
    out = _drill("--job", g.job_id, "kill", "--rank", "7", "--state-dir", str(g.state_dir))
    assert out.returncode == 2 and "drill refused: no live rank 7 in the job (live: 0, 1)" in out.stderr, \
        out.stdout + out.stderr
    out = _drill("--job", "no-such-job", "kill", "--rank", "0", "--state-dir", str(g.state_dir))
    assert out.returncode == 2, out.stderr
    time.sleep(1)
    assert g.proc.poll() is None and g.events() == []
    g.proc.terminate()
    g.wait(60)
