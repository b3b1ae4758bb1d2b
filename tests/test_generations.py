"""Restart across nodes, as the coordinator's pure core sees it: the generation barrier,
backoff, the crash-loop guard, the recorded checkpoint, nodes that fall behind."""
from __future__ import annotations

from wdtest_helpers import SIGKILL, dead, rank, report, spec

from watchdog_d.core.book import BARRIER_CAP_S
from watchdog_d.core.state import Cluster

RESTART = spec(on_failure="restart", max_restarts=2, node_timeout_s=5.0)


def _kill_on_b(c: Cluster, t: float, attempt: int = 0, job_spec=RESTART, stepped: bool = True,
               on: str = "b"):
    """A job on nodes a (ranks 0, 1) and b (ranks 2, 3); rank 3 dies at t (``on="a"``:
    rank 0; the same node the culprit twice in a row would make it suspect: it would
    leave the job, core.exclusion)."""
    s = 0 if stepped else -1
    c.ingest(report("a", [rank(0, step=s), rank(1, step=s, ckpt_path="/c/step-10.pt", ckpt_step=10)],
                    attempt=attempt, job_spec=job_spec), t - 1)
    c.ingest(report("b", [rank(2, step=s), rank(3, step=s)], attempt=attempt, job_spec=job_spec), t - 1)
    if on == "a":
        c.ingest(report("a", [dead(0, sig=SIGKILL), rank(1, step=s, ckpt_path="/c/step-10.pt",
                                                         ckpt_step=10)],
                        attempt=attempt, job_spec=job_spec), t)
    else:
        c.ingest(report("b", [rank(2, step=s), dead(3, sig=SIGKILL)], attempt=attempt, job_spec=job_spec), t)
    return c.evaluate(t + 2)


def _waiting(c: Cluster, node: str, t: float, attempt: int = 0, job_spec=RESTART, note: str = ""):
    from dataclasses import replace

    r = report(node, [], state="waiting", attempt=attempt, job_spec=job_spec)
    if note:
        r = replace(r, jobs=(replace(r.jobs[0], note=note),))
    c.ingest(r, t)
    return c.evaluate(t)


def test_every_node_restarts_and_relaunches_together_from_the_same_checkpoint() -> None:
    c = Cluster()
    d = _kill_on_b(c, 100.0)
    assert [(x.verb, x.nodes, x.incident.action) for x in d] == [("restart", ("a", "b"), "restart 1/2")]
    assert (d[0].resume_from, d[0].resume_step) == ("/c/step-10.pt", 10)
    # a is down, b is still stopping its ranks: nobody starts yet
    assert _waiting(c, "a", 103.0) == []
    c.ingest(report("b", [rank(2, step=0)], job_spec=RESTART), 103.5)
    assert c.evaluate(103.5) == []
    d = _waiting(c, "b", 104.0)
    assert [(x.verb, x.nodes, x.attempt, x.resume_from, x.resume_step) for x in d] == [
        ("relaunch", ("a", "b"), 1, "/c/step-10.pt", 10)]
    assert d[0].incident is None             # nothing to tell people: the restart was told
    assert c.jobs["j1"].attempt == 1 and c.jobs["j1"].status == "running"


def test_backoff_doubles_per_restart() -> None:
    s = spec(on_failure="restart", max_restarts=3, restart_backoff_s=10.0)
    c = Cluster()
    _kill_on_b(c, 100.0, job_spec=s)
    _waiting(c, "a", 101.0, job_spec=s)
    assert _waiting(c, "b", 101.0, job_spec=s) == []
    assert c.evaluate(110.9) == []
    assert [x.verb for x in c.evaluate(111.0)] == ["relaunch"]
    _kill_on_b(c, 200.0, attempt=1, job_spec=s, on="a")
    _waiting(c, "a", 201.0, attempt=1, job_spec=s)
    _waiting(c, "b", 201.0, attempt=1, job_spec=s)
    assert c.evaluate(220.9) == [] and [x.attempt for x in c.evaluate(221.0)] == [2]


def test_a_silent_node_does_not_hold_the_others_and_catches_up_later() -> None:
    c = Cluster()
    _kill_on_b(c, 100.0)
    _waiting(c, "a", 101.0)
    assert c.evaluate(103.0) == []           # b was seen at 100: maybe still stopping
    d = c.evaluate(106.0)                    # b silent for > node_timeout
    assert [(x.verb, x.nodes, x.attempt) for x in d] == [("relaunch", ("a",), 1)]
    # b comes back still at attempt 0, its ranks down: told to start attempt 1
    c.ingest(report("b", [], state="waiting", job_spec=RESTART), 120.0)
    orders = c.standing_orders("b")
    assert [(o.verb, o.attempt, o.resume_from) for o in orders] == [("relaunch", 1, "/c/step-10.pt")]
    assert [o.verb for o in c.standing_orders("a")] == ["relaunch"]     # not started it yet
    c.ingest(report("a", [rank(0, step=-1)], attempt=1, job_spec=RESTART), 120.0)
    assert [o.verb for o in c.standing_orders("a")] == []


def test_the_barrier_gives_up_waiting_after_its_cap() -> None:
    c = Cluster()
    _kill_on_b(c, 100.0)
    _waiting(c, "a", 101.0)
    for t in range(101, int(102 + BARRIER_CAP_S), 2):     # b keeps reporting its ranks up
        c.ingest(report("b", [rank(2, step=0)], job_spec=RESTART), float(t))
        assert c.evaluate(float(t)) == []
    c.ingest(report("b", [rank(2, step=0)], job_spec=RESTART), 102 + BARRIER_CAP_S)   # asked at 102
    assert [(x.verb, x.nodes) for x in c.evaluate(102 + BARRIER_CAP_S)] == [("relaunch", ("a",))]


def test_crash_loop_gives_up_before_the_budget_is_spent() -> None:
    s = spec(on_failure="restart", max_restarts=5, crash_loop=2)
    c = Cluster()
    d = _kill_on_b(c, 100.0, job_spec=s, stepped=False)
    assert d[0].incident.action == "restart 1/5"
    _waiting(c, "a", 101.0, job_spec=s)
    _waiting(c, "b", 101.0, job_spec=s)
    d = _kill_on_b(c, 200.0, attempt=1, job_spec=s, stepped=False)
    assert d[0].incident.action == "gave_up" and d[0].verb == "teardown"
    assert "2 attempts in a row ended before their first step" in d[0].incident.verdict.cause


def test_an_attempt_that_stepped_resets_the_crash_loop_count() -> None:
    s = spec(on_failure="restart", max_restarts=5, crash_loop=2)
    c = Cluster()
    _kill_on_b(c, 100.0, job_spec=s, stepped=False)
    _waiting(c, "a", 101.0, job_spec=s)
    _waiting(c, "b", 101.0, job_spec=s)
    d = _kill_on_b(c, 200.0, attempt=1, job_spec=s, stepped=True, on="a")
    assert d[0].incident.action == "restart 2/5" and c.jobs["j1"].no_progress == 0


def test_a_user_stop_between_attempts_cancels_the_relaunch() -> None:
    c = Cluster()
    _kill_on_b(c, 100.0)
    _waiting(c, "a", 101.0)
    c.ingest(report("b", [], state="stopped", exit_code=130, job_spec=RESTART), 102.0)
    assert [x.verb for x in c.evaluate(102.0) if x.verb == "relaunch"] == []
    assert [(o.verb, o.action) for o in c.standing_orders("a")] == [("teardown", "stopped")]


def test_a_node_that_missed_the_restart_is_told_to_relaunch() -> None:
    c = Cluster()
    _kill_on_b(c, 100.0)
    _waiting(c, "a", 101.0)
    _waiting(c, "b", 101.0)
    c.ingest(report("b", [rank(2, step=5)], job_spec=RESTART), 102.0)   # a stale report
    assert c.jobs["j1"].attempt == 1 and c.jobs["j1"].nodes["b"].attempt_seen == 0
    assert [(o.verb, o.attempt) for o in c.standing_orders("b")] == [("relaunch", 1)]


def test_a_checkpoint_problem_is_an_incident_of_the_relaunch() -> None:
    c = Cluster()
    _kill_on_b(c, 100.0)
    _waiting(c, "a", 101.0, note="checkpoint dir /c does not exist: relaunching from scratch")
    d = _waiting(c, "b", 101.0)
    assert d[0].verb == "relaunch" and d[0].alert
    v = d[0].incident.verdict
    assert v.kind == "restart" and "a: checkpoint dir /c does not exist" in v.cause


def test_recorded_checkpoints_outlive_the_job_book() -> None:
    # a restarted coordinator: the store knows this run's record by its nodes' run tokens
    c = Cluster(checkpoints={"r1a": (5, "/c/step-5.pt")})
    c.ingest(report("a", [rank(0, step=1)], job_spec=RESTART), 1.0)
    assert c.jobs["j1"].checkpoint == (5, "/c/step-5.pt")
    c.ingest(report("a", [rank(0, step=9, ckpt_path="/c/step-3.pt", ckpt_step=3)], job_spec=RESTART), 2.0)
    assert c.checkpoints["r1a"] == (3, "/c/step-3.pt")   # a rank of this attempt saved it: newer
    c.ingest(report("a", [rank(0, step=9, ckpt_path="/c/step-9.pt", ckpt_step=9)], job_spec=RESTART), 3.0)
    c.ingest(report("b", [rank(1, step=9)], job_spec=RESTART), 3.0)          # the run's other node
    assert c.checkpoints["r1a"] == c.checkpoints["r1b"] == (9, "/c/step-9.pt") == c.jobs["j1"].checkpoint
    assert c.take_new_checkpoints() == {("j1", "r1a"): (9, "/c/step-9.pt"),   # for the shell to store
                                        ("j1", "r1b"): (9, "/c/step-9.pt")}
    assert c.take_new_checkpoints() == {}
    c.ingest(report("a", [rank(0, step=10, ckpt_path="/c/step-4.pt", ckpt_step=4)], job_spec=RESTART), 4.0)
    assert c.jobs["j1"].checkpoint == (9, "/c/step-9.pt")     # the same attempt: older is not newer


def test_a_new_run_under_a_used_job_id_does_not_inherit_its_checkpoint() -> None:
    """Run 1 of "exp" finished at step 60; run 2 (same --job-id, another --checkpoint-dir) is
    killed at step 25: its relaunch offers what run 2 recorded, never run 1's step 60."""
    c = Cluster()
    c.ingest(report("a", [rank(0, step=60, ckpt_path="/A/step_60.pt", ckpt_step=60)],
                    job_spec=RESTART, run="run1"), 1.0)
    c.ingest(report("a", [dead(0, code=0)], state="exited", job_spec=RESTART, run="run1"), 2.0)
    c.evaluate(2.0)
    assert c.jobs["j1"].status == "ended"
    c.ingest(report("a", [rank(0, step=1)], job_spec=RESTART, run="run2"), 10.0)
    book = c.jobs["j1"]
    assert book.status == "running" and book.checkpoint is None and book.runs == {"run2"}
    c.ingest(report("a", [rank(0, step=25, ckpt_path="/B/step_20.pt", ckpt_step=20)],
                    job_spec=RESTART, run="run2"), 11.0)
    c.ingest(report("a", [dead(0, sig=SIGKILL, step=25, ckpt_path="/B/step_20.pt", ckpt_step=20)],
                    job_spec=RESTART, run="run2"), 12.0)
    d = [x for x in c.evaluate(12.0) if x.verb == "restart"]
    assert d and (d[0].resume_step, d[0].resume_from) == (20, "/B/step_20.pt")
    # a coordinator restarted now knows each run's own record
    assert c.checkpoints == {"run1": (60, "/A/step_60.pt"), "run2": (20, "/B/step_20.pt")}


def test_backoff_is_capped_and_zero_by_default() -> None:
    from watchdog_d.core import policy

    assert [policy.backoff_s(5.0, i) for i in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert policy.backoff_s(5.0, 40) == policy.BACKOFF_CAP_S
    assert policy.backoff_s(spec().restart_backoff_s, 3) == 0.0


def test_restart_fields_cross_the_wire() -> None:
    from dataclasses import replace

    from watchdog_d.proto import convert

    s = spec(on_failure="restart", max_restarts=3, restart_backoff_s=2.5, crash_loop=4)
    r = report("a", [rank(0, step=3, ckpt_path="/c/s.pt", ckpt_step=3)], state="waiting", job_spec=s)
    r = replace(r, jobs=(replace(r.jobs[0], note="no checkpoint"),))
    back = convert.report_from_pb(convert.report_to_pb(r))
    assert back.jobs[0].spec == s and back.jobs[0].state == "waiting" and back.jobs[0].note == "no checkpoint"
    assert (back.jobs[0].ranks[0].ckpt_path, back.jobs[0].ranks[0].ckpt_step) == ("/c/s.pt", 3)


def test_a_launcher_that_ended_by_itself_does_not_end_a_job_due_for_relaunch() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3)], job_spec=RESTART), 1.0)
    c.ingest(report("a", [], state="exited", exit_code=127, job_spec=RESTART), 2.0)
    d = c.evaluate(2.0)
    assert [(x.verb, x.incident.action) for x in d] == [("restart", "restart 1/2")]
    assert c.evaluate(2.5) == [] and c.jobs["j1"].status == "stopping"
    assert [x.verb for x in _waiting(c, "a", 3.0)] == ["relaunch"]


def test_a_node_left_behind_may_rejoin_for_a_while_then_is_lost() -> None:
    c = Cluster()
    _kill_on_b(c, 100.0)
    _waiting(c, "a", 101.0)
    assert [x.nodes for x in c.evaluate(106.0)] == [("a",)]          # relaunched without b
    for t in range(107, 172, 4):
        c.ingest(report("a", [rank(0, step=-1), rank(1, step=-1)], attempt=1, job_spec=RESTART), t)
        # b is still silent: it may rejoin for CATCH_UP_S, no node_lost meanwhile
        assert c.evaluate(float(t)) == [], t
    c.ingest(report("a", [rank(0, step=-1), rank(1, step=-1)], attempt=1, job_spec=RESTART), 172.0)
    d = c.evaluate(172.0)              # relaunched at 106: 60 s to rejoin, then node_timeout
    assert [(x.incident.verdict.kind, x.incident.verdict.node) for x in d] == [("node_lost", "b")]


def test_a_restarted_coordinator_carries_out_a_restart_decided_before_it() -> None:
    # the old coordinator decided "restart 2/2" and died; both nodes wait at attempt 1
    c = Cluster(checkpoints={"r1a": (10, "/c/step-10.pt"), "r0a": (90, "/old-run/step-90.pt")})
    assert _waiting(c, "a", 500.0, attempt=1) == []        # other nodes may not have reported
    assert _waiting(c, "b", 502.0, attempt=1) == []
    d = c.evaluate(505.0)                                   # node_timeout after it learnt of the job
    assert [(x.verb, x.nodes, x.attempt, x.resume_from) for x in d] == [
        ("relaunch", ("a", "b"), 2, "/c/step-10.pt")]
    # the budget was not reset by the coordinator's restart: the next failure gives up
    d = _kill_on_b(c, 600.0, attempt=2)
    assert d[0].incident.action == "gave_up"


def test_a_restarted_coordinator_counts_the_restarts_already_spent() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3)], attempt=2, job_spec=RESTART), 1.0)
    c.ingest(report("a", [dead(0, sig=SIGKILL)], attempt=2, job_spec=RESTART), 2.0)
    assert [x.incident.action for x in c.evaluate(4.0)] == ["gave_up"]     # 2 of 2 spent
