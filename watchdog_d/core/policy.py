"""What to do about a verdict: the job's policy, applied.

alert     -> tell people, touch nothing
teardown  -> stop every rank on every node
restart   -> teardown, then relaunch from the latest checkpoint while the
             budget lasts; after that, gave_up (teardown and stay down)
"""
from __future__ import annotations

from .model import JobSpec

LIFECYCLE = {"job_succeeded", "job_failed", "restart", "gave_up", "job_stopped"}
ALERT_ONLY = {"straggler"}


def decide(kind: str, spec: JobSpec, restarts_done: int) -> str:
    if kind in ALERT_ONLY or spec.on_failure == "alert":
        return "none"
    if kind == "job_succeeded":
        return "none"
    if spec.on_failure == "restart":
        if restarts_done < spec.max_restarts:
            return f"restart {restarts_done + 1}/{spec.max_restarts}"
        return "gave_up"
    return "teardown"


def stops_job(action: str) -> bool:
    return action == "teardown" or action == "gave_up" or action.startswith("restart")


def wants_alert(kind: str) -> bool:
    return kind != "job_succeeded"
