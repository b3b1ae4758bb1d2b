"""One node, embedded agent and coordinator: real torchrun jobs with real faults."""
from __future__ import annotations

import socket

from harness import assert_no_leftovers, torchrun_cmd, train_env

FAST = ["--min-stall-timeout", "3", "--grace", "3"]


def test_clean_job_exits_zero_without_alert(guarded, alert_sink):
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), train_env(WD_STEPS=15))
    assert g.wait() == 0, g.stderr()
    assert "[rank 0] done after 15 steps" in g.stdout()
    assert alert_sink.received == []
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]
    assert_no_leftovers(g.job_id)


def test_killed_rank_tears_down_and_alerts(guarded, alert_sink):
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), train_env(WD_FAULT="kill"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    assert "rank_exited rank 1" in last and "SIGKILL" in last, last
    alerts = alert_sink.wait_for(1)
    assert alerts, "no alert arrived"
    title = alerts[0]["title"]
    assert title == f"[watchdog-d] {g.job_id}: rank_exited rank 1 on {socket.gethostname()}", title
    body = alerts[0]["message"].splitlines()
    assert body[0] == f"job: {g.job_id}" and "kind: rank_exited" in body
    assert "action: teardown" in body
    events = g.events()
    assert events[-1]["kind"] == "rank_exited" and events[-1]["rank"] == 1
    assert events[-1]["action"] == "teardown"
    assert_no_leftovers(g.job_id)


def test_frozen_rank_is_named(guarded, alert_sink):
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), train_env(WD_FAULT="stop"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    assert "rank_stalled rank 1" in last and "state T" in last, last
    assert alert_sink.wait_for(1)[0]["title"].endswith(f"rank_stalled rank 1 on {socket.gethostname()}")
    assert_no_leftovers(g.job_id)


def test_a_rank_exported_by_the_batch_script_does_not_blind_the_watchdog(guarded):
    # RANK=0 in the launcher's environment: torchrun's own process must not take rank 0's slot
    g = guarded(FAST, torchrun_cmd(), train_env(WD_FAULT="stop", RANK=0, LOCAL_RANK=0))
    assert g.wait() == 75, g.stderr()
    assert "rank_stalled rank 1" in g.last_stderr_line() and "state T" in g.last_stderr_line()
    assert_no_leftovers(g.job_id)


def test_rank_hanging_before_collective_is_named(guarded):
    g = guarded(FAST, torchrun_cmd(), train_env(WD_FAULT="hang"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    # the flight recorders decide: rank 0 waits in the all_reduce rank 1 never enqueued
    assert "rank_stalled rank 1" in last and "flight recorder: all_reduce #" in last and \
        "never enqueued by rank 1" in last and "rank 1 is hung: is idle" in last, last
    ev = g.events()[-1]
    assert ev["kind"] == "rank_stalled" and ev["rank"] == 1
    assert ev["detected_after_s"] >= 3
    assert_no_leftovers(g.job_id)


def test_exception_names_rank_and_carries_traceback(guarded, alert_sink):
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), train_env(WD_FAULT="raise"))
    assert g.wait() == 75, g.stderr()
    assert "rank_exited rank 1" in g.last_stderr_line()
    message = alert_sink.wait_for(1)[0]["message"]
    assert "injected failure on rank 1" in message
    assert_no_leftovers(g.job_id)


def test_alert_only_policy_passes_exit_status_through(guarded, alert_sink):
    g = guarded([*FAST, "--on-failure", "alert", "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_FAULT="exit"))
    rc = g.wait()
    assert rc not in (0, 75), g.stderr()          # torchrun's own failure status
    alerts = alert_sink.wait_for(1)
    assert alerts and "action: none" in alerts[0]["message"].splitlines()
    assert_no_leftovers(g.job_id)


def test_daemonized_helper_is_not_left_behind(guarded):
    g = guarded(FAST, torchrun_cmd(), train_env(WD_FAULT="kill", WD_SPAWN_DAEMON=1))
    assert g.wait() == 75, g.stderr()
    assert_no_leftovers(g.job_id)


def test_watchdog_torchrun_drop_in(tmp_path, alert_sink):
    """``watchdog-torchrun`` takes torchrun's own arguments; options come from the env."""
    import subprocess
    import sys
    from pathlib import Path

    from harness import kill_job

    drop_in = Path(sys.executable).parent / "watchdog-torchrun"
    if not drop_in.exists():
        import pytest
        pytest.skip("watchdog-torchrun is not installed in this environment")
    job = f"dropin-{tmp_path.name[-8:]}"
    env = train_env(WD_FAULT="kill", WATCHDOG_D_JOB_ID=job,
                    WATCHDOG_D_STATE_DIR=str(tmp_path / "state"), WATCHDOG_D_GRACE="3",
                    WATCHDOG_D_ALERT=alert_sink.url)
    try:
        out = subprocess.run([str(drop_in), "--standalone", "--nproc-per-node=2",
                              "-m", "watchdog_d.demo.train"], env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        kill_job(job)
    assert out.returncode == 75, out.stderr
    assert "rank_exited rank 1" in out.stderr.strip().splitlines()[-1]
    assert alert_sink.wait_for(1)[0]["title"].startswith(f"[watchdog-d] {job}: rank_exited")
    assert_no_leftovers(job)


def test_long_section_is_not_a_stall(guarded):
    """A 5 s pause inside watchdog_d.section(timeout=60) with a 3 s stall timeout: no verdict."""
    g = guarded(FAST, torchrun_cmd(), train_env(WD_STEPS=30, WD_PAUSE_AT=10, WD_PAUSE_S=5))
    assert g.wait() == 0, g.stderr()
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]


def test_section_overrun_is_a_stall(guarded):
    g = guarded(FAST, torchrun_cmd(), train_env(WD_STEPS=30, WD_PAUSE_AT=10, WD_PAUSE_S=60,
                                                WD_PAUSE_TIMEOUT=2))
    assert g.wait() == 75, g.stderr()
    assert "rank_stalled rank 0" in g.last_stderr_line() and "rank 0 in eval for 2s (its timeout 2s)" \
        in g.last_stderr_line(), g.last_stderr_line()
    assert_no_leftovers(g.job_id)


def test_explicit_steps_without_optimizer(guarded):
    import sys
    from pathlib import Path

    from harness import TORCHRUN

    script = str(Path(__file__).parent / "jobs" / "manual_loop.py")
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node=2", script]
    g = guarded(FAST, cmd, train_env(WD_FAULT="hang"))
    assert g.wait() == 75, g.stderr()
    assert "rank_stalled rank 1" in g.last_stderr_line(), g.last_stderr_line()
    ev = g.events()[-1]
    assert ev["step"] == 4            # the last step rank 1 declared before hanging
    assert_no_leftovers(g.job_id)
