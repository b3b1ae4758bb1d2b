"""The wrapper <-> agent seam on a real agent process: a bad message is refused with a
clear error to the client that sent it, and every other job on that agent is still
watched (before, a NaN spec from any local client made the coordinator reject the
node's whole heartbeat, and every job of the node would have gone node_lost)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from cluster import Cluster
from harness import WATCHDOG, assert_no_leftovers, free_port, torchrun_cmd, train_env

NAN = float("nan")
GOOD_SPEC = {"job_id": "intruder", "on_failure": "teardown"}

# (what a client sends, what the agent's answer must say)
BAD = [
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "min_stall_timeout_s": NAN}}, "min_stall_timeout_s must be a finite number"),
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "stall_factor": 0.0}}, "stall_factor must be a number >= 1"),
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "on_failure": "reboot"}}, "on_failure must be alert, teardown or restart"),
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "startup_timeout_s": -1}}, "startup_timeout_s must be a number > 0"),
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "job_id": "x" * 5000}}, "job_id must be 1-128"),
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "alert_urls": ["json://127.0.0.1:1/x"] * 100}}, "alert_urls"),
    ({"op": "register", "launcher_pid": os.getpid(),
      "spec": {**GOOD_SPEC, "max_restarts": "3"}}, "max_restarts must be a whole number"),
    ({"op": "register", "launcher_pid": os.getpid()}, "spec is missing"),
    ({"op": "register", "launcher_pid": 0, "spec": GOOD_SPEC}, "launcher_pid must be > 0"),
    ({"op": "reboot"}, "unknown op"),
    ({"op": "attempt", "attempt": 1, "launcher_pid": os.getpid(), "beacon_dir": "/tmp"},
     "unexpected message 'attempt' before register"),
]


def _ask(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "the agent closed the connection without an answer"
            reply += chunk
    return json.loads(reply)


def _job_status(address: str, job: str) -> dict | None:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--coordinator", address],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return next((j for j in json.loads(out.stdout)["jobs"] if j["job"] == job), None)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, ["node-a"])
    yield c
    c.stop()


def test_bad_messages_are_refused_and_the_other_job_is_still_watched(guarded, cluster):
    job = f"seam-{free_port()}"
    env = train_env(WD_STEPS=2000, WD_FAULT="kill", WD_FAULT_RANK=1, WD_FAULT_STEP=150)
    good = guarded(["--agent-socket", cluster.sockets["node-a"], "--grace", "3"],
                   torchrun_cmd(2), env, job_id=job)
    deadline = time.monotonic() + 60
    while True:     # the good job is registered and stepping
        st = _job_status(cluster.address, job)
        if st and any(r["step"] >= 1 for n in st["nodes"] for r in n["ranks"]):
            break
        assert time.monotonic() < deadline and good.proc.poll() is None, good.stderr()
        time.sleep(0.3)

    for msg, says in BAD:
        reply = _ask(cluster.sockets["node-a"], (json.dumps(msg) + "\n").encode())
        assert reply["op"] == "error" and says in reply["error"], (msg, reply)
    for garbage in (b"not json\n", b"[1, 2]\n", b"[" * 100_000 + b"\n"):
        reply = _ask(cluster.sockets["node-a"], garbage)
        assert reply["op"] == "error" and "not a JSON object" in reply["error"], reply

    # the good job is still watched: its node is fresh, and its fault is caught as before
    st = _job_status(cluster.address, job)
    assert st is not None and st["nodes"][0]["heartbeat_age_s"] < 3, st
    assert good.wait(timeout=90) == 75, good.stderr()
    assert "rank_exited rank 1 on node-a" in good.last_stderr_line(), good.last_stderr_line()
    out = subprocess.run([*WATCHDOG, "events", "--json", "--state-dir", str(cluster.state_dir)],
                         capture_output=True, text=True, timeout=30)
    kinds = [json.loads(line)["kind"] for line in out.stdout.splitlines() if line.strip()]
    assert kinds == ["rank_exited"], kinds      # nothing about the refused clients
    assert _job_status(cluster.address, "intruder") is None
    assert cluster.log("node-a").count("wrapper_message_refused") == len(BAD) - 1 + 3
    assert_no_leftovers(job)
