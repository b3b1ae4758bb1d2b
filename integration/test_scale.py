"""256 simulated nodes (the agent's own reporting code, real gRPC, each node its own
connection and Watch stream) against a real ``watchdog-d coordinator`` process: a dead
rank, a lost node and a silent agent are told apart; a blackout of every node and a
paused coordinator tear nothing down; the 29 other jobs, under the same load, get no
verdict at all. (``bench_coordinator.py`` is the same at up to 2,048 nodes, measured.)"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import scale

NODES = 256
KILL_AT, MUTE, LOSE_AT = 6.0, (6.0, 16.0), 7.0
BLACKOUT, PAUSE = (18.0, 8.0), (30.0, 7.0)
END = 44.0


def test_a_256_node_cluster_tells_faults_from_silence(tmp_path: Path) -> None:
    coordinator = scale.start_server("coordinator", tmp_path)
    try:
        t0 = time.monotonic() + 4.0
        sims = scale.start_sims(
            coordinator.port, NODES, 2, t0=t0, end=t0 + END, measure=(t0 + 2, t0 + 5),
            workdir=tmp_path,
            faults={"kill": [{"at": t0 + KILL_AT, "node": 3, "rank": 26}],
                    "lose": [{"at": t0 + LOSE_AT, "node": 9}],
                    "mute": [{"at": t0 + MUTE[0], "until": t0 + MUTE[1], "node": 17}]})
        try:
            time.sleep(max(0.0, t0 + 5 - time.monotonic()))
            status = subprocess.run(
                [sys.executable, "-m", "watchdog_d", "status", "--json", "--coordinator",
                 f"127.0.0.1:{coordinator.port}"], capture_output=True, text=True, timeout=30,
                cwd=scale.ROOT)
            assert status.returncode == 0, status.stderr
            snap = json.loads(status.stdout)
            assert len(snap["jobs"]) == NODES // 8
            assert sum(len(j["nodes"]) for j in snap["jobs"]) == NODES
            time.sleep(max(0.0, t0 + BLACKOUT[0] - time.monotonic()))
            sims.pause()                              # every node silent (their link, say)
            time.sleep(BLACKOUT[1])
            sims.resume()
            time.sleep(max(0.0, t0 + PAUSE[0] - time.monotonic()))
            coordinator.proc.send_signal(signal.SIGSTOP)    # the coordinator's VM paused
            time.sleep(PAUSE[1])
            coordinator.proc.send_signal(signal.SIGCONT)
            got = sims.wait()
        finally:
            sims.kill()
        events = coordinator.events()
    finally:
        coordinator.stop()
    kinds = sorted((e["job"], e["kind"], e["node"], e["action"]) for e in events
                   if e["kind"] != "coordinator_isolated")
    assert kinds == [("job0", "rank_exited", "n00003", "teardown"),
                     ("job1", "node_lost", "n00009", "teardown"),
                     ("job2", "agent_lost", "n00017", "none")], events
    isolated = [e for e in events if e["kind"] == "coordinator_isolated"]
    assert len(isolated) >= 2 and {e["action"] for e in isolated} == {"none"}
    assert any("fell silent together" in e["cause"] for e in isolated)
    assert any("own loop stalled" in e["cause"] for e in isolated)
    # who was told to tear down: every node of job0 and job1, nobody else
    torn = {(job, node) for node, job, verb, _t, _via in got["commands"] if verb == "teardown"}
    assert torn == {(f"job{j}", f"n{j * 8 + k:05d}") for j in (0, 1) for k in range(8)
                    if (j, k) != (1, 1)}       # n00009 is lost: it hears nothing
    job0 = scale.told(got["commands"], "job0")
    assert max(job0.values()) - (t0 + KILL_AT) < 2.0
    assert got["errors"] == [] and len(got["latency"]) > NODES * 2
    assert got["delta"] > 5 * got["full"]      # reports leave out what did not change
