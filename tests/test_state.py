"""Cluster bookkeeping and decisions (watchdog_d/core/state.py): job lifecycle, policy, attempts."""
from __future__ import annotations

import pytest

from watchdog_d.core.model import Incident
from watchdog_d.core.state import Cluster, Decision
from wdtest_helpers import SIGKILL, SIGTERM, dead, rank, report, spec


def verbs(decisions: list[Decision]) -> list[tuple[str, tuple[str, ...]]]:
    return [(d.verb, d.nodes) for d in decisions]


def incidents(decisions: list[Decision]) -> list[Incident]:
    return [d.incident for d in decisions if d.incident is not None]


def running(c: Cluster, t: float, s=None, attempt: int = 0, step: int = 0) -> None:
    """A healthy heartbeat of both nodes: a (ranks 0, 1) and b (ranks 2, 3)."""
    s = s or spec()
    c.ingest(report("a", [rank(0, step=step), rank(1, step=step)], job_spec=s, attempt=attempt), t)
    c.ingest(report("b", [rank(2, step=step), rank(3, step=step)], job_spec=s, attempt=attempt), t)


def ended(c: Cluster, node: str, t: float, *, code: int = 0, s=None, attempt: int = 0,
          state: str = "exited", sig: int | None = None, rank_code: int = 0) -> None:
    """Node's part over: launcher exit ``code``; its ranks exited ``rank_code`` or by ``sig``."""
    ranks = (0, 1) if node == "a" else (2, 3)
    rs = [dead(r, code=None if sig else rank_code, sig=sig) for r in ranks]
    c.ingest(report(node, rs, state=state, exit_code=code, job_spec=s or spec(), attempt=attempt), t)


# -- a clean job ---------------------------------------------------------------------------
def test_clean_job_no_verdict_then_success() -> None:
    c = Cluster()
    for i, t in enumerate((0.0, 1.0, 2.0, 3.0)):
        running(c, t, step=i)
        assert c.evaluate(t) == []
    book = c.jobs["j1"]
    assert (book.status, book.verdict, book.outcome) == ("running", None, "")
    ended(c, "a", 4.0)
    ended(c, "b", 4.0)
    decisions = c.evaluate(4.0)
    assert verbs(decisions) == [("done", ("a",)), ("done", ("b",)), ("none", ())]
    (inc,) = incidents(decisions)
    assert inc.verdict.kind == "job_succeeded" and inc.verdict.job == "j1"
    assert inc.action == "none"
    assert decisions[-1].alert is False            # success is recorded, not alerted
    assert (book.status, book.outcome) == ("ended", "succeeded")
    assert c.evaluate(5.0) == []                   # said once
    assert c.evaluate(500.0) == []                 # an ended job is never lost


def test_nodes_ending_one_by_one_each_get_done_once() -> None:
    c = Cluster()
    running(c, 0.0)
    ended(c, "a", 1.0)
    c.ingest(report("b", [2, 3]), 1.0)
    assert verbs(c.evaluate(1.0)) == [("done", ("a",))]
    c.ingest(report("b", [2, 3]), 2.0)
    assert c.evaluate(2.0) == []
    ended(c, "b", 3.0)
    decisions = c.evaluate(3.0)
    assert verbs(decisions) == [("done", ("b",)), ("none", ())]
    assert incidents(decisions)[0].verdict.kind == "job_succeeded"


def test_launchers_exited_nonzero_means_failed_not_success() -> None:
    c = Cluster()
    running(c, 0.0)
    ended(c, "a", 1.0, code=1)
    ended(c, "b", 1.0, code=1)
    decisions = c.evaluate(1.0)
    (inc,) = incidents(decisions)
    assert inc.verdict.kind == "job_failed"
    assert [d.verb for d in decisions] == ["teardown"]     # no "done": the teardown is the answer
    assert c.jobs["j1"].outcome == "torn_down"


# -- one verdict per attempt ----------------------------------------------------------------
def test_verdict_is_made_once() -> None:
    c = Cluster()
    running(c, 0.0)
    c.ingest(report("a", [rank(0), dead(1, sig=SIGKILL)]), 1.0)
    first = c.evaluate(1.0)
    assert verbs(first) == [("teardown", ("a", "b"))]
    book = c.jobs["j1"]
    assert book.status == "stopping" and book.verdict is not None and book.action == "teardown"
    # the teardown kills the others (SIGTERM) and silences nodes: nothing new is said
    c.ingest(report("a", [dead(0, sig=SIGTERM), dead(1, sig=SIGKILL)]), 2.0)
    assert c.evaluate(2.0) == []
    assert c.evaluate(60.0) == []                  # node b silent long past node_timeout
    ended(c, "a", 61.0, sig=SIGTERM, code=1)
    ended(c, "b", 61.0, sig=SIGTERM, code=1)
    assert c.evaluate(61.0) == []
    assert (book.status, book.outcome) == ("ended", "torn_down")


def test_decision_carries_alert_urls_and_sorted_nodes() -> None:
    c = Cluster()
    s = spec(alert_urls=("json://x/y", "dingtalk://t"))
    for node, r in (("zeta", 0), ("alpha", 1), ("mid", 2)):
        c.ingest(report(node, [r], job_spec=s), 0.0)
    c.ingest(report("mid", [dead(2, code=None)], job_spec=s), 1.0)
    (d,) = c.evaluate(1.0)
    assert d.nodes == ("alpha", "mid", "zeta")
    assert d.alert_urls == ("json://x/y", "dingtalk://t") and d.alert is True
    assert d.incident is not None and d.incident.verdict.attempt == 0


def test_jobs_are_independent() -> None:
    c = Cluster()
    c.ingest(report("a", [0], job_spec=spec("one")), 0.0)
    c.ingest(report("a", [1], job_spec=spec("two")), 0.0)
    c.ingest(report("a", [dead(1, code=1)], job_spec=spec("two")), 1.0)
    c.ingest(report("a", [0], job_spec=spec("one")), 1.0)
    (d,) = c.evaluate(1.0)
    assert d.job_id == "two" and d.verb == "teardown"
    assert c.jobs["one"].status == "running"


def test_a_job_whose_evaluation_raises_does_not_stop_the_others(monkeypatch) -> None:
    """A bug tripped by one job's state: the other jobs are still judged in the same
    pass, the error is handed to the shell, and the broken job is tried again later."""
    from watchdog_d.core import detector, state

    c = Cluster()
    for job in ("aaa-broken", "zzz-fine"):
        c.ingest(report("a", [0], job_spec=spec(job)), 0.0)
        c.ingest(report("a", [dead(0, code=1)], job_spec=spec(job)), 1.0)
    real = detector.detect

    def detect(book, now, silence):  # type: ignore[no-untyped-def]
        if book.spec.job_id == "aaa-broken":
            raise ZeroDivisionError("a bug")
        return real(book, now, silence)

    monkeypatch.setattr(detector, "detect", detect)
    (d,) = c.evaluate(1.0)
    assert d.job_id == "zzz-fine" and d.verb == "teardown"
    assert [(job, type(e)) for job, e in c.errors] == [("aaa-broken", ZeroDivisionError)]
    monkeypatch.setattr(detector, "detect", real)      # the bug cleared: judged again
    assert c.evaluate(1.0 + state.RETRY_ERROR_S / 2) == []
    (d,) = c.evaluate(1.0 + state.RETRY_ERROR_S)
    assert d.job_id == "aaa-broken" and d.verb == "teardown"


# -- user stop -----------------------------------------------------------------------------
def test_user_stopped_job_is_not_a_failure_and_wrapper_gets_done() -> None:
    c = Cluster()
    running(c, 0.0)
    # Ctrl-C on node a: its ranks die of SIGTERM, the part is "stopped"
    ended(c, "a", 1.0, state="stopped", sig=SIGTERM, code=130)
    decisions = c.evaluate(1.0)
    assert incidents(decisions) == []
    assert verbs(decisions) == [("done", ("a",))]
    book = c.jobs["j1"]
    assert (book.status, book.outcome) == ("stopping", "stopped")
    # node b follows (its ranks lose their peers and crash): still no verdict
    c.ingest(report("b", [dead(2, code=1), dead(3, sig=SIGKILL)]), 2.0)
    assert c.evaluate(2.0) == []
    ended(c, "b", 3.0, code=1)
    assert verbs(c.evaluate(3.0)) == [("done", ("b",))]
    assert (book.status, book.outcome) == ("ended", "stopped")
    assert c.evaluate(4.0) == []


# -- policy ----------------------------------------------------------------------------------
def test_alert_policy_reports_but_touches_nothing() -> None:
    c = Cluster()
    s = spec(on_failure="alert", alert_urls=("json://h/p",))
    running(c, 0.0, s)
    c.ingest(report("b", [rank(2), dead(3, sig=SIGKILL)], job_spec=s), 1.0)
    (d,) = c.evaluate(1.0)
    assert d.verb == "none"
    assert d.alert is True and d.alert_urls == ("json://h/p",)
    assert d.incident is not None
    assert d.incident.action == "none"
    assert (d.incident.verdict.kind, d.incident.verdict.rank) == ("rank_exited", 3)
    assert c.jobs["j1"].status == "running"


def test_alert_policy_makes_the_verdict_once() -> None:
    c = Cluster()
    s = spec(on_failure="alert")
    running(c, 0.0, s)
    c.ingest(report("b", [rank(2), dead(3, sig=SIGKILL)], job_spec=s), 1.0)
    assert len(incidents(c.evaluate(1.0))) == 1
    c.ingest(report("a", [0, 1], job_spec=s), 1.1)
    assert incidents(c.evaluate(1.1)) == []


def test_alert_policy_reports_a_later_separate_stall_again() -> None:
    c = Cluster()
    s = spec(on_failure="alert")
    c.ingest(report("a", [rank(0, step=5, last_step_age_s=61.0)], job_spec=s), 100.0)
    assert [i.verdict.kind for i in incidents(c.evaluate(100.0))] == ["rank_stalled"]
    for i, t in enumerate(range(110, 3700, 10), start=6):      # it recovers and runs for an hour
        c.ingest(report("a", [rank(0, step=i, last_step_dt_s=1.0)], job_spec=s), float(t))
        assert incidents(c.evaluate(float(t))) == []
    c.ingest(report("a", [rank(0, step=9999, last_step_age_s=61.0)], job_spec=s), 5000.0)
    assert [i.verdict.kind for i in incidents(c.evaluate(5000.0))] == ["rank_stalled"]


def test_restart_policy_counts_then_gives_up() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=2)
    expected = [("restart", "restart 1/2"), ("restart", "restart 2/2"), ("teardown", "gave_up")]
    for attempt, (verb, action) in enumerate(expected):
        c.ingest(report("a", [rank(0, step=1)], job_spec=s, attempt=attempt), 10.0 * attempt)
        assert c.evaluate(10.0 * attempt) == []
        c.ingest(report("a", [dead(0, code=1, step=1)], job_spec=s, attempt=attempt), 10.0 * attempt + 1)
        (d,) = c.evaluate(10.0 * attempt + 1)
        assert (d.verb, d.incident.action) == (verb, action)          # type: ignore[union-attr]
        assert d.incident.verdict.attempt == attempt                   # type: ignore[union-attr]
        c.ingest(report("a", [dead(0, code=1, step=1)], job_spec=s, attempt=attempt,
                        state="exited", exit_code=1), 10.0 * attempt + 2)
        assert c.evaluate(10.0 * attempt + 2) == []
    assert c.jobs["j1"].restarts == 2


def test_restart_with_zero_budget_gives_up_at_once() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=0)
    c.ingest(report("a", [dead(0, code=None)], job_spec=s), 0.0)
    (d,) = c.evaluate(0.0)
    assert (d.verb, d.incident.action) == ("teardown", "gave_up")  # type: ignore[union-attr]


# -- attempts ------------------------------------------------------------------------------
def test_new_attempt_resets_the_verdict() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=3)
    c.ingest(report("a", [rank(0, step=5)], job_spec=s), 0.0)
    c.ingest(report("a", [dead(0, sig=SIGKILL, step=5)], job_spec=s), 1.0)
    (d,) = c.evaluate(1.0)
    assert d.verb == "restart"
    c.ingest(report("a", [dead(0, sig=SIGKILL, step=5)], job_spec=s, state="exited", exit_code=1), 2.0)
    assert c.evaluate(2.0) == []
    book = c.jobs["j1"]
    assert book.status == "stopping"      # the launcher's end is not the job's: a relaunch is due
    # the wrapper relaunched: attempt 1
    c.ingest(report("a", [rank(0, step=-1)], job_spec=s, attempt=1), 3.0)
    assert c.evaluate(3.0) == []
    assert (book.attempt, book.status, book.verdict, book.action) == (1, "running", None, "")
    assert c.jobs["j1"] is book
    # a late report about attempt 0 changes nothing
    c.ingest(report("a", [dead(0, sig=SIGKILL, step=5)], job_spec=s, attempt=0), 3.5)
    assert c.evaluate(3.5) == []
    # a new failure in attempt 1 is a new verdict
    c.ingest(report("a", [dead(0, code=1, step=2)], job_spec=s, attempt=1), 4.0)
    (d2,) = c.evaluate(4.0)
    assert (d2.verb, d2.incident.action, d2.incident.verdict.attempt) == (  # type: ignore[union-attr]
        "restart", "restart 2/3", 1)
    assert d2.incident.verdict.detected_after_s == pytest.approx(0.0)    # type: ignore[union-attr]


def test_new_attempt_can_succeed() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=1)
    c.ingest(report("a", [dead(0, code=1)], job_spec=s), 0.0)
    assert [d.verb for d in c.evaluate(0.0)] == ["restart"]
    c.ingest(report("a", [dead(0, code=1)], job_spec=s, state="exited", exit_code=1), 1.0)
    c.evaluate(1.0)
    c.ingest(report("a", [rank(0, step=0)], job_spec=s, attempt=1), 2.0)
    assert c.evaluate(2.0) == []
    c.ingest(report("a", [dead(0, code=0)], job_spec=s, attempt=1, state="exited"), 3.0)
    decisions = c.evaluate(3.0)
    assert verbs(decisions) == [("done", ("a",)), ("none", ())]
    (inc,) = incidents(decisions)
    assert (inc.verdict.kind, inc.verdict.attempt) == ("job_succeeded", 1)


def test_suspect_is_asked_again_in_a_new_attempt() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=1)
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=40.0)], job_spec=s), 0.0)
    assert [d.verb for d in c.evaluate(0.0)] == ["dump_stacks"]
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=500.0)], job_spec=s, attempt=1), 1.0)
    assert [d.verb for d in c.evaluate(1.0)] == ["dump_stacks"]


def test_new_attempt_on_one_node_does_not_see_the_old_attempt_of_another() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=2)
    c.ingest(report("a", [rank(0, step=5)], job_spec=s), 0.0)
    c.ingest(report("b", [rank(1, step=5)], job_spec=s), 0.0)
    c.ingest(report("b", [dead(1, sig=SIGKILL, step=5)], job_spec=s), 1.0)
    assert [d.verb for d in c.evaluate(1.0)] == ["restart"]
    c.ingest(report("a", [dead(0, sig=SIGTERM, step=5)], job_spec=s, state="exited", exit_code=1), 2.0)
    c.ingest(report("b", [dead(1, sig=SIGKILL, step=5)], job_spec=s, state="exited", exit_code=1), 2.0)
    assert c.evaluate(2.0) == []
    # both wrappers relaunch; node a's heartbeat about attempt 1 arrives first
    c.ingest(report("a", [rank(0, step=-1)], job_spec=s, attempt=1), 3.0)
    assert incidents(c.evaluate(3.0)) == []


def test_first_step_of_a_new_attempt_is_not_a_step_duration() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=1)
    t = 0.0
    for i in range(11):                          # attempt 0: steps of 1 s
        c.ingest(report("a", [rank(0, step=i, last_step_dt_s=1.0)], job_spec=s), t)
        t += 1.0
    c.ingest(report("a", [dead(0, code=1, step=10)], job_spec=s), t)
    assert [d.verb for d in c.evaluate(t)] == ["restart"]
    # attempt 1: the first step took 300 s after process start (imports, data, compile)
    c.ingest(report("a", [rank(0, step=0, last_step_dt_s=300.0)], job_spec=s, attempt=1), t + 300)
    c.ingest(report("a", [rank(0, step=1, last_step_dt_s=1.0)], job_spec=s, attempt=1), t + 301)
    # then it hangs: with 1 s steps the learned timeout is the 60 s floor
    # (actual: p99 = 300 -> timeout 1500 s, the hang goes unseen for 25 minutes)
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=61.0)], job_spec=s, attempt=1), t + 362)
    assert [i.verdict.kind for i in incidents(c.evaluate(t + 362))] == ["rank_stalled"]


def test_rerun_of_an_ended_job_id_on_the_same_node_is_guarded() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=5)]), 0.0)
    c.ingest(report("a", [dead(0, code=0, step=5)], state="exited"), 1.0)
    assert incidents(c.evaluate(1.0))[0].verdict.kind == "job_succeeded"
    # the same command again, an hour later: a new wrapper, a new run
    c.ingest(report("a", [rank(0, step=-1)], run="r2a"), 3600.0)
    assert c.evaluate(3600.0) == []
    c.ingest(report("a", [dead(0, sig=SIGKILL, step=3)], run="r2a"), 3610.0)
    assert [i.verdict.kind for i in incidents(c.evaluate(3610.0))] == ["rank_exited"]


def test_rerun_of_an_ended_job_id_from_a_new_node_gets_a_fresh_book() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=5)]), 0.0)
    c.ingest(report("a", [dead(0, code=0, step=5)], state="exited"), 1.0)
    c.evaluate(1.0)
    old = c.jobs["j1"]
    c.ingest(report("z", [rank(0, step=-1)]), 100.0)
    assert c.jobs["j1"] is not old and c.jobs["j1"].status == "running"
    c.ingest(report("z", [dead(0, code=1)]), 101.0)
    (d,) = c.evaluate(101.0)
    assert d.verb == "teardown" and d.nodes == ("z",)


def test_first_sighting_of_a_rank_is_not_a_step_duration() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=7, last_step_dt_s=500.0)]), 0.0)   # joined mid-run
    c.ingest(report("a", [rank(0, step=7, last_step_dt_s=500.0)]), 0.5)   # same step: no sample
    c.ingest(report("a", [rank(0, step=8, last_step_dt_s=2.0)]), 2.0)
    assert list(c.jobs["j1"].steps.samples) == [2.0]
