"""Policy (watchdog_d/core/policy.py): what to do about a verdict."""
from __future__ import annotations

import pytest

from watchdog_d.core.policy import decide, stops_job, wants_alert
from wdtest_helpers import spec

FAILURES = ["rank_exited", "rank_stalled", "node_lost", "collective_timeout", "job_failed", "cuda_oom"]


@pytest.mark.parametrize("kind", FAILURES)
def test_alert_policy_never_acts(kind: str) -> None:
    assert decide(kind, spec(on_failure="alert"), 0) == "none"
    assert decide(kind, spec(on_failure="alert", max_restarts=5), 0) == "none"


@pytest.mark.parametrize("kind", FAILURES)
def test_teardown_policy(kind: str) -> None:
    assert decide(kind, spec(), 0) == "teardown"                 # the default policy
    assert decide(kind, spec(on_failure="teardown", max_restarts=3), 0) == "teardown"


def test_restart_counts_i_of_n_then_gives_up() -> None:
    s = spec(on_failure="restart", max_restarts=3)
    assert [decide("rank_exited", s, done) for done in range(5)] == [
        "restart 1/3", "restart 2/3", "restart 3/3", "gave_up", "gave_up"]


def test_restart_without_budget_gives_up() -> None:
    assert decide("rank_stalled", spec(on_failure="restart"), 0) == "gave_up"


@pytest.mark.parametrize("on_failure", ["alert", "teardown", "restart"])
def test_straggler_is_alert_only(on_failure: str) -> None:
    assert decide("straggler", spec(on_failure=on_failure, max_restarts=2), 0) == "none"


@pytest.mark.parametrize("on_failure", ["alert", "teardown", "restart"])
def test_success_needs_no_action(on_failure: str) -> None:
    assert decide("job_succeeded", spec(on_failure=on_failure, max_restarts=2), 0) == "none"


def test_stops_job() -> None:
    for action in ("teardown", "gave_up", "restart 1/3", "restart 3/3"):
        assert stops_job(action)
    assert not stops_job("none")
    assert not stops_job("")


def test_wants_alert() -> None:
    assert not wants_alert("job_succeeded")
    for kind in (*FAILURES, "straggler", "gave_up", "restart"):
        assert wants_alert(kind)
