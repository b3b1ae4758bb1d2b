"""A wrapper in a PID namespace of its own (a training pod without hostPID) beside an agent
in the node's (a DaemonSet with hostPID): the ranks record the PIDs their namespace gives
them; the agent finds the node's PIDs (/proc/PID/status NSpid, the namespace from the
socket) and judges the right processes. Needs root and unshare."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, Guarded, assert_no_leftovers, free_port, train_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare for a PID namespace")
IN_OWN_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _job(tmp_path, cluster: Cluster, **env) -> Guarded:
    job = f"pidns-{free_port()}"
    return Guarded(tmp_path, job, ["--agent-socket", cluster.sockets["n0"], "--min-stall-timeout", "3",
                                   "--grace", "3"],
                   [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "watchdog_d.demo.train"],
                   train_env(**env), prefix=IN_OWN_PID_NAMESPACE)


def _events(cluster: Cluster, job: str) -> list[dict]:
    out = subprocess.run([*WATCHDOG, "events", "--json", "--job", job, "--state-dir",
                          str(cluster.state_dir)], capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture
def node(tmp_path):
    cluster = Cluster(tmp_path, ["n0"])
    yield cluster
    cluster.stop()


def test_a_killed_rank_in_a_pid_namespace_is_named(tmp_path, node) -> None:
    g = _job(tmp_path, node, WD_FAULT="kill", WD_FAULT_RANK=1, WD_STEPS=200)
    assert g.wait(120) == 75, g.stderr()
    ev = _events(node, g.job_id)
    assert [(e["kind"], e["rank"]) for e in ev] == [("rank_exited", 1)], ev
    assert "SIGKILL" in ev[0]["cause"], ev[0]
    assert "job_in_pid_namespace" in node.log("n0")
    assert_no_leftovers(g.job_id)


def test_a_stopped_rank_in_a_pid_namespace_is_named_by_its_state(tmp_path, node) -> None:
    g = _job(tmp_path, node, WD_FAULT="stop", WD_FAULT_RANK=1, WD_STEPS=400)
    assert g.wait(120) == 75, g.stderr()
    ev = [e for e in _events(node, g.job_id) if e["action"] == "teardown"]
    assert [(e["kind"], e["rank"]) for e in ev] == [("rank_stalled", 1)], ev
    assert "state T" in ev[0]["cause"], ev[0]
    assert_no_leftovers(g.job_id)


def test_twin_a_healthy_job_in_a_pid_namespace_ends_well(tmp_path, node) -> None:
    g = _job(tmp_path, node, WD_STEPS=60)
    assert g.wait(120) == 0, g.stderr()
    assert [e["kind"] for e in _events(node, g.job_id)] == ["job_succeeded"]
