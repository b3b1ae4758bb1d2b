"""What to do about a verdict: the job's policy, applied.

alert     -> tell people, touch nothing
teardown  -> stop every rank on every node
restart   -> teardown, then relaunch from the latest checkpoint while the
             budget lasts and the job is not crash-looping; after that,
             gave_up (teardown and stay down)
"""
from __future__ import annotations

from .model import JobSpec

LIFECYCLE = {"job_succeeded", "job_failed", "restart", "gave_up", "job_stopped"}
ALERT_ONLY = {"straggler", "long_pause", "agent_lost", "coordinator_isolated"}   # warnings
BACKOFF_CAP_S = 600.0
# a node refused to start the job (its checks failed): whatever the policy, its other nodes
# are stopped (they would wait in the rendezvous until it times out), and not restarted
# (the same checks fail again until someone fixes the node)
NOT_STARTED = {"preflight_failed"}


def decide(kind: str, spec: JobSpec, restarts_done: int, no_progress_streak: int = 0) -> str:
    """``no_progress_streak``: attempts in a row, this one included, that ended before
    any rank completed a step (each attempt counts steps from where it resumed)."""
    if kind in NOT_STARTED:
        return "teardown"
    if kind in ALERT_ONLY or spec.on_failure == "alert":
        return "none"
    if kind == "job_succeeded":
        return "none"
    if spec.on_failure == "restart":
        if crash_looping(spec, no_progress_streak):
            return "gave_up"
        if restarts_done < spec.max_restarts:
            return f"restart {restarts_done + 1}/{spec.max_restarts}"
        return "gave_up"
    return "teardown"


def crash_looping(spec: JobSpec, no_progress_streak: int) -> bool:
    # a job that dies before its first step again and again (bad config, a broken
    # node, a corrupt checkpoint) will not get better by burning the budget
    return spec.crash_loop > 0 and no_progress_streak >= spec.crash_loop


def backoff_s(base_s: float, restart_number: int) -> float:
    """Wait before relaunch ``restart_number`` (1-based): base, 2 x base, 4 x base, ..."""
    if base_s <= 0 or restart_number < 1:
        return 0.0
    return min(BACKOFF_CAP_S, base_s * 2 ** min(restart_number - 1, 30))


def stops_job(action: str) -> bool:
    return action == "teardown" or action == "gave_up" or action.startswith("restart")


def wants_alert(kind: str) -> bool:
    return kind != "job_succeeded"
