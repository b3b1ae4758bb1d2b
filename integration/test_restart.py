"""--on-failure restart: relaunch from the latest checkpoint on every node, in
generations; backoff; the crash-loop guard; a user's stop is never restarted; bad
input (no checkpoint dir, a launcher that cannot start again)."""
from __future__ import annotations

import os
import re
import signal
import stat
import sys
import time

import pytest

from harness import TORCHRUN, assert_no_leftovers, free_port, torchrun_cmd, train_env


def test_restart_resumes_from_the_recorded_checkpoint(guarded, alert_sink, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--grace", "3",
                 "--checkpoint-dir", str(ckpt), "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_FAULT="kill", WD_FAULT_STEP=12, WD_STEPS=30, WD_CKPT_DIR=ckpt))
    assert g.wait() == 0, g.stderr()
    out = g.stdout()
    assert f"resumed from {ckpt}/step-10.pt at step 10" in out
    assert "[rank 0] done after 30 steps" in out
    assert "relaunching as attempt 1 from" in g.stderr()
    kinds = [(e["kind"], e["action"]) for e in g.events()]
    assert kinds == [("rank_exited", "restart 1/1"), ("job_succeeded", "none")], kinds
    alert = alert_sink.wait_for(1)[0]
    assert "action: restart 1/1" in alert["message"].splitlines()
    assert_no_leftovers(g.job_id)


def test_restart_budget_spent_gives_up(guarded, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--grace", "3"],
                torchrun_cmd(), train_env(WD_FAULT="kill", WD_FAULT_ALWAYS=1, WD_FAULT_STEP=12,
                                          WD_STEPS=30, WD_CKPT_DIR=ckpt))
    assert g.wait() == 75, g.stderr()
    assert "[action: gave_up]" in g.last_stderr_line(), g.last_stderr_line()
    assert [e["action"] for e in g.events()] == ["restart 1/1", "gave_up"]
    assert_no_leftovers(g.job_id)


def test_crash_loop_gives_up_before_the_budget(guarded, alert_sink):
    # every attempt dies before its first step: two in a row is a crash loop
    g = guarded(["--on-failure", "restart", "--max-restarts", "5", "--crash-loop", "2",
                 "--grace", "3", "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_FAULT="raise", WD_FAULT_ALWAYS=1, WD_FAULT_STEP=0, WD_STEPS=30))
    assert g.wait() == 75, g.stderr()
    assert [e["action"] for e in g.events()] == ["restart 1/5", "gave_up"]
    assert "crash loop" in g.last_stderr_line() and "[action: gave_up]" in g.last_stderr_line()
    actions = [[ln for ln in a["message"].splitlines() if ln.startswith("action: ")]
               for a in alert_sink.wait_for(2)]
    assert actions == [["action: restart 1/5"], ["action: gave_up"]], actions
    assert_no_leftovers(g.job_id)


def test_backoff_waits_before_the_relaunch(guarded):
    g = guarded(["-v", "--on-failure", "restart", "--max-restarts", "1", "--restart-backoff", "2",
                 "--grace", "3"], torchrun_cmd(),
                train_env(WD_FAULT="kill", WD_FAULT_STEP=5, WD_STEPS=15))
    assert g.wait() == 0, g.stderr()
    stamps = {}
    for line in g.stderr().splitlines():
        m = re.match(r"(\S+Z) \w+ (attempt_stopped|relaunch) ", line)
        if m:
            stamps[m.group(2)] = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) \
                + float("0" + m.group(1)[19:-1])
    assert stamps["relaunch"] - stamps["attempt_stopped"] >= 1.9, stamps
    assert "from scratch (no checkpoint found)" in g.stderr()
    assert_no_leftovers(g.job_id)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_user_stop_under_restart_means_stop(guarded, signum):
    g = guarded(["--on-failure", "restart", "--max-restarts", "3", "--grace", "3"],
                torchrun_cmd(), train_env(WD_STEPS=400))
    deadline = time.monotonic() + 60
    while "[rank 0] step 10 " not in g.stdout() and time.monotonic() < deadline:
        time.sleep(0.2)
    g.proc.send_signal(signum)
    assert g.wait() == 128 + signum, g.stderr()
    assert "relaunching" not in g.stderr()
    assert [e["action"] for e in g.events() if e["action"].startswith("restart")] == []
    assert_no_leftovers(g.job_id)


def test_missing_checkpoint_dir_is_an_alert_and_the_job_comes_back_from_scratch(
        guarded, alert_sink, tmp_path):
    missing = tmp_path / "no-such-dir"
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--grace", "3",
                 "--checkpoint-dir", str(missing), "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_FAULT="kill", WD_FAULT_STEP=5, WD_STEPS=15))
    assert g.wait() == 0, g.stderr()
    assert [e["kind"] for e in g.events()] == ["rank_exited", "restart", "job_succeeded"]
    alerts = alert_sink.wait_for(2)
    assert f"checkpoint dir {missing} does not exist" in alerts[1]["message"], alerts[1]
    assert alerts[1]["title"].startswith(f"[watchdog-d] {g.job_id}: restart"), alerts[1]["title"]
    assert_no_leftovers(g.job_id)


def test_a_relaunch_that_cannot_start_ends_in_gave_up(guarded, tmp_path):
    # the launcher is a script the faulty rank deletes: the relaunch cannot exec it
    launcher = tmp_path / "launch-torchrun"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m torch.distributed.run \"$@\"\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    cmd = [str(launcher), "--standalone", "--nproc-per-node=2", "-m", "watchdog_d.demo.train"]
    g = guarded(["--on-failure", "restart", "--max-restarts", "3", "--crash-loop", "2",
                 "--grace", "3"], cmd,
                train_env(WD_FAULT="kill", WD_FAULT_STEP=5, WD_FAULT_UNLINK=launcher))
    assert g.wait(timeout=120) == 75, g.stderr()
    assert "cannot relaunch" in g.stderr() and "No such file or directory" in g.stderr()
    assert [(e["kind"], e["action"]) for e in g.events()] == [
        ("rank_exited", "restart 1/3"), ("job_failed", "restart 2/3"), ("job_failed", "gave_up")]
    assert_no_leftovers(g.job_id)
    assert not os.path.exists(launcher)


def test_a_recorded_checkpoint_deleted_before_the_restart(guarded, alert_sink, tmp_path):
    # rank 1 deletes step-10.pt (recorded by rank 0) as it dies: the relaunch takes the
    # newest complete one left in --checkpoint-dir, and says so
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--grace", "3",
                 "--checkpoint-dir", str(ckpt), "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_FAULT="kill", WD_FAULT_STEP=12, WD_STEPS=20, WD_CKPT_DIR=ckpt,
                          WD_FAULT_UNLINK=ckpt / "step-10.pt"))
    assert g.wait() == 0, g.stderr()
    assert f"resumed from {ckpt}/step-5.pt at step 5" in g.stdout()
    assert [e["kind"] for e in g.events()] == ["rank_exited", "restart", "job_succeeded"]
    message = alert_sink.wait_for(2)[1]["message"]
    assert f"recorded checkpoint {ckpt}/step-10.pt (step 10) is gone" in message, message
    assert_no_leftovers(g.job_id)


def test_a_rerun_under_the_same_job_id_resumes_from_its_own_checkpoint(guarded, tmp_path):
    """Run 1 of job "exp" finishes (its last record: A/step-30.pt); run 2 of "exp" (same
    --job-id, another --checkpoint-dir) is killed at step 12 and must come back from
    B/step-10.pt, its own, not from run 1's step 30 (which it would then "finish" without
    training). One coordinator (and its store) sees both runs."""
    from cluster import Cluster

    cluster = Cluster(tmp_path, ["node-a"])
    try:
        job = f"exp-{free_port()}"
        a, b = tmp_path / "A", tmp_path / "B"
        a.mkdir()
        b.mkdir()
        args = ["--agent-socket", cluster.sockets["node-a"], "--on-failure", "restart",
                "--max-restarts", "1", "--grace", "3"]
        run1 = guarded([*args, "--checkpoint-dir", str(a)], torchrun_cmd(),
                       train_env(WD_STEPS=30, WD_CKPT_DIR=a), job_id=job)
        assert run1.wait() == 0, run1.stderr()
        run2 = guarded([*args, "--checkpoint-dir", str(b)], torchrun_cmd(),
                       train_env(WD_FAULT="kill", WD_FAULT_STEP=12, WD_STEPS=30, WD_CKPT_DIR=b),
                       job_id=job)
        assert run2.wait() == 0, run2.stderr()
        assert f"relaunching as attempt 1 from {b}/step-10.pt" in run2.stderr(), run2.stderr()
        assert f"resumed from {b}/step-10.pt at step 10" in run2.stdout()
        assert "[rank 0] done after 30 steps" in run2.stdout()
    finally:
        cluster.stop()
    assert_no_leftovers(job)
