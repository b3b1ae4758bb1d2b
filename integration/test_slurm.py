"""Under a real Slurm (a one-node cluster the fixture starts: integration/slurm.py):
``srun watchdog-d run -- torchrun ...`` is named by Slurm (JOBID.STEPID), a killed rank is
torn down and alerted as under a plain shell, and ``scancel`` stops the job as asked: no
verdict, no alert, nothing left behind, the job CANCELLED in Slurm."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, kill_job, train_env
from slurm import Slurm, install

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = install()
    if why:
        pytest.skip(why)
    s = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        yield s
    finally:
        s.stop()


def _run(tmp: Path, alert_url: str, *extra: str) -> list[str]:
    return [*WATCHDOG, "run", "--state-dir", str(tmp / "state"), "--alert", alert_url,
            "--grace", "3", *extra, "--", *TORCHRUN, "--standalone", "--nproc-per-node=2",
            "-m", "watchdog_d.demo.train"]


def _events(tmp: Path) -> list[dict]:
    out = subprocess.run([*WATCHDOG, "events", "--json", "--state-dir", str(tmp / "state")],
                         capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_srun_names_the_job_by_slurm_and_a_killed_rank_is_torn_down(slurm, tmp_path, alert_sink):
    out = subprocess.run(["srun", "-N1", "-n1", f"--chdir={tmp_path}", *_run(tmp_path, alert_sink.url)],
                         env={**train_env(WD_FAULT="kill", WD_FAULT_RANK=1, WD_STEPS=200),
                              "SLURM_CONF": str(slurm.conf)},
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 75, out.stderr[-3000:]
    events = _events(tmp_path)
    assert [(e["kind"], e["rank"]) for e in events] == [("rank_exited", 1)], events
    job = events[0]["job"]
    assert re.fullmatch(r"\d+\.0", job), job                  # Slurm's job id, step 0
    # the verdict is watchdog-d's last line; srun adds its own after it
    lines = [line for line in out.stderr.splitlines() if not line.startswith("srun: ")]
    assert f"watchdog-d: job {job} torn down: rank_exited rank 1" in lines[-1], lines[-3:]
    assert f"[watchdog-d] {job}: rank_exited rank 1" in alert_sink.wait_for(1)[0]["title"]
    assert slurm.job_state(job.split(".")[0]) in ("FAILED", "COMPLETED")
    assert_no_leftovers(job)


@contextlib.contextmanager
def _stepping_under_srun(slurm, tmp_path, alert_url: str):
    """A long healthy job under srun, stepping: (its srun process, its log, Slurm's job id).
    Whatever is left of it afterwards is killed."""
    log = tmp_path / "srun.out"
    p = subprocess.Popen(["srun", "-N1", "-n1", f"--chdir={tmp_path}", *_run(tmp_path, alert_url)],
                         env={**train_env(WD_STEPS=100000), "SLURM_CONF": str(slurm.conf)},
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    slurm_id = ""
    try:
        deadline = time.monotonic() + 120
        while "step 10 " not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline and p.poll() is None, log.read_text(errors="replace")
            time.sleep(0.2)
        slurm_id = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm.env, capture_output=True,
                                  text=True, timeout=30).stdout.split()[0]
        yield p, log, slurm_id
    finally:
        if p.poll() is None:
            p.kill()
        if slurm_id:
            kill_job(f"{slurm_id}.0")


def test_scancel_stops_the_job_as_asked_without_a_verdict(slurm, tmp_path, alert_sink):
    with _stepping_under_srun(slurm, tmp_path, alert_sink.url) as (p, _, slurm_id):
        subprocess.run(["scancel", slurm_id], env=slurm.env, check=True, timeout=30)
        p.wait(timeout=60)
        time.sleep(2)                                     # an alert would have come by now
        assert alert_sink.received == [], alert_sink.received
        assert [e for e in _events(tmp_path) if e["action"] != "none"] == [], _events(tmp_path)
        assert slurm.job_state(slurm_id) == "CANCELLED"
        assert_no_leftovers(f"{slurm_id}.0")


def test_sbatch_requeue_resumes_this_runs_newest_checkpoint(slurm, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "job.out"
    ckpt.mkdir()
    run = [*WATCHDOG, "run", "--state-dir", str(tmp_path / "state"), "--checkpoint-dir", str(ckpt),
           "--grace", "3", "--", *TORCHRUN, "--standalone", "--nproc-per-node=2",
           "-m", "watchdog_d.demo.train"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nexec " + shlex.join(run) + "\n")
    env = {**train_env(WD_STEPS=150, WD_CKPT_DIR=ckpt, WD_CKPT_EVERY=10), "SLURM_CONF": str(slurm.conf)}
    slurm_id = subprocess.run(["sbatch", "--parsable", "--requeue", f"--output={out}",
                               f"--chdir={tmp_path}", str(script)], env=env, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 120
        while "step 40 " not in (out.read_text(errors="replace") if out.exists() else ""):
            assert time.monotonic() < deadline, out.read_text(errors="replace") if out.exists() else ""
            time.sleep(0.2)
        subprocess.run(["scontrol", "requeue", slurm_id], env=slurm.env, check=True, timeout=30)
        # (Slurm holds a requeued batch job back for two minutes: let it start now)
        deadline = time.monotonic() + 60
        while slurm.job_state(slurm_id) != "PENDING" and time.monotonic() < deadline:
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], env=slurm.env,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + 240
        while slurm.job_state(slurm_id) != "COMPLETED":
            assert time.monotonic() < deadline, (slurm.job_state(slurm_id), out.read_text(errors="replace"))
            time.sleep(0.5)
        text = out.read_text(errors="replace")           # (the requeued run's output)
        said = re.search(r"requeued by Slurm \(1x\); resuming from (\S+step-(\d+)\.pt)", text)
        assert said and int(said.group(2)) >= 40, text[-3000:]
        assert f"resumed from {said.group(1)} at step {said.group(2)}" in text
    finally:
        subprocess.run(["scancel", slurm_id], env=slurm.env, capture_output=True, timeout=30)
        kill_job(slurm_id)


def _environ(p) -> dict:
    try:
        return p.environ()
    except Exception:
        return {}


@contextlib.contextmanager
def _suspect_node(slurm, tmp_path, slurm_node: str, alert_url: str = ""):
    """A coordinator and an agent set to drain; a job whose rank 1 the kernel's OOM killer
    kills (a line in the agent's kernel log, then SIGKILL): a host_oom verdict, a failed
    health check, so the node is suspect. Returns (agent log, job)."""
    cluster = Cluster(tmp_path, [], alert_url=alert_url)
    sock, agent_log, kmsg = tmp_path / "n.sock", tmp_path / "agent.log", tmp_path / "kmsg"
    kmsg.write_text("")
    agent = subprocess.Popen(
        [*WATCHDOG, "agent", "--coordinator", cluster.address, "--node-id", "gpu-node-1",
         "--socket", str(sock), "--state-dir", str(tmp_path / "agent"), "--on-suspect", "drain",
         "--slurm-node", slurm_node],
        env={**train_env(), "SLURM_CONF": str(slurm.conf), "WATCHDOG_D_KMSG_PATH": str(kmsg)},
        stdout=open(agent_log, "wb"), stderr=subprocess.STDOUT)
    job = f"drain-{int(time.time())}"
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline and agent.poll() is None, agent_log.read_text()
            time.sleep(0.05)
        run = subprocess.Popen(
            [*WATCHDOG, "run", "--agent-socket", str(sock), "--job-id", job, "--state-dir",
             str(tmp_path / "state"), "--on-failure", "restart", "--max-restarts", "1", "--grace", "3",
             "--", *TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "watchdog_d.demo.train"],
            env=train_env(WD_STEPS=400), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline, rank1 = time.monotonic() + 60, None
        while rank1 is None:
            assert time.monotonic() < deadline and run.poll() is None, "rank 1 never started"
            time.sleep(0.5)
            rank1 = next((p for p in psutil.Process(run.pid).children(recursive=True)
                          if _environ(p).get("RANK") == "1"), None)
        time.sleep(2.0)                                   # (it steps; the agent sees it)
        with open(kmsg, "a") as f:                        # as the kernel does it
            f.write(f"3,101,2,-;Out of memory: Killed process {rank1.pid} (python) "
                    f"total-vm:9000000kB, anon-rss:8000000kB\n")
        rank1.kill()
        _, err = run.communicate(timeout=120)
        assert run.returncode == 75, err[-3000:]
        # a job of one node whose only node is suspect cannot relaunch (core.exclusion)
        assert "gave up: no spare for gpu-node-1" in err, err[-3000:]
        yield agent_log, job
    finally:
        agent.terminate()
        agent.wait(timeout=15)
        cluster.stop()
        kill_job(job)


def test_a_suspect_node_is_drained_from_slurm_when_the_agent_is_set_to(slurm, tmp_path):
    # a failed health check (the OOM killer took a rank) makes the node suspect: its agent, set to
    # on_suspect = "drain", takes the node out of Slurm's pool, with the reason
    try:
        with _suspect_node(slurm, tmp_path, slurm.node) as (agent_log, job):
            deadline = time.monotonic() + 30
            while True:
                state = subprocess.run(["sinfo", "-h", "-n", slurm.node, "-o", "%t|%E"], env=slurm.env,
                                       capture_output=True, text=True, timeout=30).stdout.strip()
                if state.startswith("drain"):
                    break
                assert time.monotonic() < deadline, (state, agent_log.read_text()[-3000:])
                time.sleep(0.5)
            assert "watchdog-d: host_oom rank 1" in state, state
            assert "node_drained" in agent_log.read_text()
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={slurm.node}", "State=RESUME"],
                       env=slurm.env, capture_output=True, timeout=30)


def test_a_drain_slurm_refuses_is_said_once_and_alerted(slurm, tmp_path, alert_sink):
    with _suspect_node(slurm, tmp_path, "no-such-node", alert_sink.url) as (agent_log, _):
        deadline = time.monotonic() + 30
        while not any("drain_failed" in a["title"] for a in alert_sink.received):
            assert time.monotonic() < deadline, (alert_sink.received, agent_log.read_text()[-2000:])
            time.sleep(0.2)
        alert = next(a for a in alert_sink.received if "drain_failed" in a["title"])
        assert "gpu-node-1 could not be drained from Slurm: scontrol exited 1" in alert["message"], alert
        assert agent_log.read_text().count("drain_failed") == 1


def test_the_example_sbatch_script_runs_as_shipped(slurm, tmp_path):
    # examples/slurm/train.sbatch, unchanged, on the one-node cluster: 2 CPU ranks (no GPUs
    # here: --gpus-per-node=0 on the command line), the demo trainer
    env = {**train_env(WD_STEPS=40), "SLURM_CONF": str(slurm.conf), "NPROC_PER_NODE": "2",
           "TRAIN": "-m watchdog_d.demo.train", "WATCHDOG_D_STATE_DIR": str(tmp_path / "state"),
           "PATH": f"{Path(WATCHDOG[0]).parent}:{os.environ['PATH']}"}
    script = Path(__file__).parents[1] / "examples" / "slurm" / "train.sbatch"
    slurm_id = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0",
                               f"--chdir={tmp_path}", str(script)], env=env, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 180
        while slurm.job_state(slurm_id) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            assert time.monotonic() < deadline, slurm.job_state(slurm_id)
            time.sleep(0.5)
        out = (tmp_path / f"train-{slurm_id}.out").read_text(errors="replace")
        assert slurm.job_state(slurm_id) == "COMPLETED", out[-3000:]
        assert "done after 40 steps" in out
        events = _events(tmp_path)
        assert [(e["job"], e["kind"]) for e in events] == [(slurm_id, "job_succeeded")], events
    finally:
        subprocess.run(["scancel", slurm_id], env=slurm.env, capture_output=True, timeout=30)
        kill_job(slurm_id)


def test_on_failure_restart_inside_an_allocation(slurm, tmp_path, alert_sink):
    # rank 1 dies once under srun: torn down, relaunched in the same step from the latest
    # checkpoint, and the job completes
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = subprocess.run(
        ["srun", "-N1", "-n1", f"--chdir={tmp_path}",
         *_run(tmp_path, alert_sink.url, "--on-failure", "restart", "--max-restarts", "1",
               "--checkpoint-dir", str(ckpt))],
        env={**train_env(WD_FAULT="kill", WD_FAULT_RANK=1, WD_FAULT_STEP=12, WD_STEPS=60,
                         WD_CKPT_DIR=ckpt, WD_CKPT_EVERY=5), "SLURM_CONF": str(slurm.conf)},
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"relaunching as attempt 1 from \S+step-10\.pt", out.stderr), out.stderr[-3000:]
    assert "resumed from" in out.stdout and "done after 60 steps" in out.stdout
    kinds = [(e["kind"], e["action"]) for e in _events(tmp_path)]
    assert kinds[0] == ("rank_exited", "restart 1/1") and kinds[-1][0] == "job_succeeded", kinds


def test_the_schedulers_warning_signal_stops_the_job_as_asked(slurm, tmp_path, alert_sink):
    # what --signal=TERM@N does at the warning time (and preemption before the kill): slurmd
    # sends SIGTERM to the step's tasks, the job still allocated. Sent here with scancel
    # --signal (Slurm's own --signal may come up to a minute early: too slow for a test)
    with _stepping_under_srun(slurm, tmp_path, alert_sink.url) as (p, log, slurm_id):
        subprocess.run(["scancel", "--signal=TERM", slurm_id], env=slurm.env, check=True, timeout=30)
        assert p.wait(timeout=60) == 128 + 15, log.read_text(errors="replace")[-2000:]
        time.sleep(2)
        assert alert_sink.received == [], alert_sink.received
        assert [e for e in _events(tmp_path) if e["action"] != "none"] == [], _events(tmp_path)
        assert_no_leftovers(f"{slurm_id}.0")
