"""The end of training on real torchrun jobs (gloo, 2 ranks, floor 3 s): a rank that works
on after its peer left is healthy; a rank waiting in a collective its peer left, or a hang
inside destroy_process_group(), is not (integration/jobs/finish_job.py)."""
from __future__ import annotations

from pathlib import Path

from harness import TORCHRUN, assert_no_leftovers, train_env

JOB = str(Path(__file__).parent / "jobs" / "finish_job.py")
FAST = ["--min-stall-timeout", "3", "--grace", "3"]


def _job(end: str, **env: object) -> tuple[list[str], dict[str, str]]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node=2", JOB], train_env(WD_END=end, WD_STEPS=15, **env)


def test_an_upload_after_destroy_process_group_is_not_a_stall(guarded, alert_sink) -> None:
    """Rank 0 works 8 s (past the 3 s floor, idle) after destroy_process_group(), rank 1 gone."""
    g = guarded([*FAST, "--alert", alert_sink.url], *_job("upload_after", WD_END_S=8))
    assert g.wait() == 0, g.stderr()
    assert "[rank 0] done" in g.stdout()
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]
    assert alert_sink.received == []
    # the embedded coordinator's own trouble (its process busy ending the job) is not the user's
    assert "coordinator_isolated" not in g.stderr(), g.stderr()
    assert_no_leftovers(g.job_id)


def test_an_upload_before_destroy_process_group_is_not_a_stall(guarded) -> None:
    """Rank 0 works 8 s before its destroy_process_group(), rank 1 inside its own or gone."""
    g = guarded(FAST, *_job("upload_before", WD_END_S=8))
    assert g.wait() == 0, g.stderr()
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]


def test_twin_a_collective_the_peer_left_is_a_hang_caught_at_the_floor(guarded, alert_sink) -> None:
    """Rank 1 runs out of data and exits 0 at step 8; rank 0 waits for it in torch's
    store-based barrier (as an NCCL collective would, forever)."""
    g = guarded([*FAST, "--alert", alert_sink.url], *_job("leave_early"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    assert "rank_stalled rank 0" in last and \
        "waits in a collective that cannot complete: rank 1 exited with status 0" in last, last
    ev = g.events()[-1]
    assert ev["kind"] == "rank_stalled" and ev["action"] == "teardown"
    assert 3.0 <= ev["detected_after_s"] < 5.0, ev
    assert alert_sink.wait_for(1)[0]["title"].endswith(" rank_stalled rank 0 on " + ev["node"])
    assert_no_leftovers(g.job_id)


def test_twin_a_hang_inside_destroy_process_group_is_torn_down(guarded) -> None:
    g = guarded([*FAST, "--shutdown-timeout", "4"], *_job("destroy_hangs"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    assert "rank_stalled rank 1" in last and "hangs in destroy_process_group() for 4s" in last, last
    assert_no_leftovers(g.job_id)


def test_lingering_past_the_shutdown_timeout_is_a_warning_not_a_teardown(guarded, alert_sink) -> None:
    g = guarded([*FAST, "--shutdown-timeout", "4", "--alert", alert_sink.url],
                *_job("upload_after", WD_END_S=8))
    assert g.wait() == 0, g.stderr()
    kinds = [e["kind"] for e in g.events()]
    assert kinds == ["long_pause", "job_succeeded"], kinds
    alert = alert_sink.wait_for(1)[0]
    assert alert["title"].endswith("— no action"), alert["title"]
    assert "rank 0 has not exited 4s after the end of training" in alert["message"]
    assert_no_leftovers(g.job_id)
