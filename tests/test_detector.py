"""Detector rules (watchdog_d/core/detector.py), driven through Cluster with hand-built reports.

Every clock is a plain float; nothing sleeps.
"""
from __future__ import annotations

import pytest

from watchdog_d.core import detector
from watchdog_d.core.model import RankReport, Verdict
from watchdog_d.core.state import Cluster, Decision
from wdtest_helpers import (SIGKILL, SIGSEGV, SIGTERM, STACK_IN_COLLECTIVE, STACK_OUTSIDE, dead,
                            rank, report, spec)


def verdict_decisions(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.incident is not None]


def only_verdict(decisions: list[Decision]) -> tuple[Decision, Verdict]:
    found = verdict_decisions(decisions)
    assert len(found) == 1, decisions
    assert found[0].incident is not None
    return found[0], found[0].incident.verdict


def two_nodes(t: float = 100.0, **spec_kw: object) -> Cluster:
    """Job j1 on nodes a (ranks 0, 1) and b (ranks 2, 3), all healthy at time t."""
    c = Cluster()
    s = spec(**spec_kw)
    c.ingest(report("a", [0, 1], job_spec=s), t)
    c.ingest(report("b", [2, 3], job_spec=s), t)
    assert c.evaluate(t) == []
    return c


# -- rank_exited ---------------------------------------------------------------------------
def test_sigkill_rank_exited_names_rank_and_tears_down_every_node() -> None:
    c = two_nodes(100.0)
    c.ingest(report("b", [rank(2, step=7), dead(3, sig=SIGKILL, age=0.3, step=7)]), 101.0)
    d, v = only_verdict(c.evaluate(101.2))
    assert (v.kind, v.rank, v.node, v.host, v.step, v.job) == ("rank_exited", 3, "b", "host-b", 7, "j1")
    assert "SIGKILL" in v.cause
    assert "dmesg" in v.remedy or "OOM" in v.remedy
    # exit_at = 101.0 - 0.3 = 100.7 on the coordinator's clock; evaluated at 101.2
    assert v.detected_after_s == pytest.approx(0.5)
    assert d.verb == "teardown"
    assert d.nodes == ("a", "b")
    assert d.incident is not None and d.incident.action == "teardown"
    assert d.alert is True
    assert d.job_id == "j1"


def test_detected_after_counts_from_exit_not_from_report() -> None:
    c = two_nodes(100.0)
    c.ingest(report("a", [dead(0, sig=SIGKILL, age=2.0), 1]), 110.0)
    _, v = only_verdict(c.evaluate(110.0))
    assert v.detected_after_s == pytest.approx(2.0)
    # the exit time is fixed at first sight: a later report with a larger age does not move it
    c2 = two_nodes(100.0)
    c2.ingest(report("a", [dead(0, sig=SIGKILL, age=0.5), 1]), 110.0)
    c2.ingest(report("a", [dead(0, sig=SIGKILL, age=9.0), 1]), 111.0)
    _, v2 = only_verdict(c2.evaluate(111.0))
    assert v2.detected_after_s == pytest.approx(1.5)


def test_vanished_rank_counts_as_failed() -> None:
    c = two_nodes()
    c.ingest(report("a", [dead(0, code=None, sig=None), 1]), 101.0)
    d, v = only_verdict(c.evaluate(101.0))
    assert (v.kind, v.rank) == ("rank_exited", 0)
    assert "vanished" in v.cause
    assert d.verb == "teardown"


def test_exception_exit_carries_detail_and_excerpt() -> None:
    c = two_nodes()
    tb = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"
    c.ingest(report("b", [dead(2, code=1, exit_detail="RuntimeError: CUDA out of memory",
                               excerpt=tb, step=3), 3]), 101.0)
    _, v = only_verdict(c.evaluate(101.0))
    assert (v.kind, v.rank, v.step) == ("rank_exited", 2, 3)
    assert v.cause == "rank process exited with status 1: RuntimeError: CUDA out of memory"
    assert v.excerpt == tb


def test_other_signal_named_in_cause() -> None:
    c = two_nodes()
    c.ingest(report("a", [0, dead(1, sig=SIGSEGV)]), 101.0)
    _, v = only_verdict(c.evaluate(101.0))
    assert v.cause == "rank process was killed by SIGSEGV"


def test_other_signal_gets_native_crash_remedy() -> None:
    c = two_nodes()
    # exactly what the agent reports for a rank killed by SIGSEGV: a signal, no exit code
    c.ingest(report("a", [0, dead(1, code=None, sig=SIGSEGV)]), 101.0)
    _, v = only_verdict(c.evaluate(101.0))
    assert "SIGSEGV" in v.remedy and "OOM" not in v.remedy


def test_earliest_exit_is_the_culprit() -> None:
    c = two_nodes(100.0)
    # rank 3 crashed 1 s ago; rank 1 raised 5 s ago: rank 1 went first
    c.ingest(report("a", [0, dead(1, code=1, age=5.0)]), 110.0)
    c.ingest(report("b", [2, dead(3, sig=SIGKILL, age=1.0)]), 110.0)
    _, v = only_verdict(c.evaluate(110.0))
    assert v.rank == 1
    assert v.detected_after_s == pytest.approx(5.0)


def test_earliest_exit_across_heartbeats() -> None:
    c = two_nodes(100.0)
    c.ingest(report("b", [2, dead(3, sig=SIGKILL, age=0.0)]), 105.0)     # exit at 105
    c.ingest(report("a", [0, dead(1, code=1, age=2.0)]), 105.5)          # exit at 103.5
    _, v = only_verdict(c.evaluate(105.5))
    assert v.rank == 1


@pytest.mark.parametrize("ranks, expected", [
    # at equal times: SIGKILL beats an exception exit, SIGTERM comes last
    ([dead(0, code=1), dead(1, sig=SIGKILL), dead(2, sig=SIGTERM)], 1),
    ([dead(0, sig=SIGTERM), dead(1, code=1), dead(2, sig=SIGKILL)], 2),
    # a vanished rank (no exit code) beats an exception
    ([dead(0, code=1), dead(1, code=None)], 1),
    # an exception beats SIGTERM (the launcher cleaning up)
    ([dead(0, sig=SIGTERM), dead(1, code=1)], 1),
    # all alike: the lowest rank
    ([dead(0, sig=SIGTERM), dead(1, sig=SIGTERM)], 0),
    ([dead(1, code=1), dead(0, code=1)], 0),
])
def test_tie_break_at_equal_exit_time(ranks: list, expected: int) -> None:
    # (only SIGTERMs -- consequences -- wait rootcause.SETTLE_S for a cause: evaluate later)
    c = Cluster()
    c.ingest(report("a", [rank(r.rank, step=0) for r in ranks]), 100.0)
    c.ingest(report("a", [*(dead(r.rank, code=r.exit_code, sig=r.exit_signal, age=0.5) for r in ranks)]),
             101.0)
    _, v = only_verdict(c.evaluate(101.5))
    assert v.rank == expected


def test_earlier_sigterm_still_beats_later_sigkill() -> None:
    """A cause outranks a consequence, but not one that came much (> 5 s) earlier:
    a clearly earlier exit wins whatever it was."""
    c = Cluster()
    c.ingest(report("a", [dead(0, sig=SIGKILL, age=0.0), dead(1, sig=SIGTERM, age=6.0)]), 100.0)
    _, v = only_verdict(c.evaluate(100.0))
    assert v.rank == 1


def test_clean_exit_of_one_rank_is_not_a_failure() -> None:
    c = two_nodes(100.0)
    c.ingest(report("a", [0, dead(1, code=0)]), 101.0)
    assert c.evaluate(101.0) == []
    assert c.evaluate(102.0) == []


# -- job_failed ----------------------------------------------------------------------------
def test_launcher_exit_nonzero_without_rank_failure_is_job_failed() -> None:
    c = two_nodes(100.0)
    c.ingest(report("a", [dead(0, code=0), dead(1, code=0)], state="exited", exit_code=2), 101.0)
    d, v = only_verdict(c.evaluate(103.0))
    assert (v.kind, v.rank, v.node, v.step) == ("job_failed", None, "a", None)
    assert "status 2" in v.cause
    assert v.detected_after_s == pytest.approx(2.0)
    assert d.verb == "teardown" and d.nodes == ("a", "b")


def test_rank_failure_wins_over_launcher_failure() -> None:
    c = two_nodes(100.0)
    c.ingest(report("a", [dead(0, code=1), dead(1, sig=SIGTERM)], state="exited", exit_code=1), 101.0)
    _, v = only_verdict(c.evaluate(101.0))
    assert (v.kind, v.rank) == ("rank_exited", 0)


# -- node_lost -----------------------------------------------------------------------------
def stuck_since(t0: float, t: float) -> list[RankReport]:
    """Ranks 0 and 1, alive, whose last step was at t0 (node a's peers of a lost node
    stop stepping: every step ends in a collective with the lost ranks)."""
    return [rank(r, step=0, last_step_age_s=t - t0) for r in (0, 1)]


def test_silent_node_is_lost_after_node_timeout() -> None:
    c = two_nodes(0.0)
    c.ingest(report("a", stuck_since(0.0, 3.0)), 3.0)
    assert c.evaluate(4.9) == []
    c.ingest(report("a", stuck_since(0.0, 5.5)), 5.5)
    d, v = only_verdict(c.evaluate(6.0))
    assert (v.kind, v.node, v.rank) == ("node_lost", "b", None)
    assert v.detected_after_s == pytest.approx(6.0)
    assert "b" in v.cause
    assert d.verb == "teardown" and d.nodes == ("a", "b")


def test_node_timeout_comes_from_the_job_spec() -> None:
    c = two_nodes(0.0, node_timeout_s=20.0)
    c.ingest(report("a", stuck_since(0.0, 15.0), job_spec=spec(node_timeout_s=20.0)), 15.0)
    assert c.evaluate(15.0) == []
    c.ingest(report("a", stuck_since(0.0, 20.5), job_spec=spec(node_timeout_s=20.0)), 20.5)
    _, v = only_verdict(c.evaluate(20.5))
    assert (v.kind, v.node) == ("node_lost", "b")


def test_a_node_whose_job_ended_is_not_lost() -> None:
    c = two_nodes(0.0)
    c.ingest(report("b", [dead(2, code=0), dead(3, code=0)], state="exited", exit_code=0), 1.0)
    decisions = c.evaluate(1.0)
    assert [(d.verb, d.nodes) for d in decisions] == [("done", ("b",))]
    for t in (10.0, 60.0, 600.0):
        c.ingest(report("a", [0, 1]), t)
        assert c.evaluate(t) == []


def test_any_heartbeat_of_the_node_keeps_it_alive() -> None:
    """node_seen is per node: a heartbeat about another job counts too."""
    c = two_nodes(0.0)
    for t in (4.0, 8.0):
        c.ingest(report("a", [0, 1]), t)
        c.ingest(report("b", [9], job_spec=spec("other")), t)
    assert verdict_decisions(c.evaluate(8.0)) == []


# -- stall: which timeout applies ------------------------------------------------------------
def _learn(c: Cluster, node: str, r: int, dts: list[float], t0: float = 0.0) -> float:
    """Feed step changes of one rank with the given step durations; returns the time of the last."""
    t = t0
    c.ingest(report(node, [rank(r, step=0)]), t)
    for i, dt in enumerate(dts, start=1):
        t += dt
        c.ingest(report(node, [rank(r, step=i, last_step_dt_s=dt)]), t)
        assert verdict_decisions(c.evaluate(t)) == []
    return t


def test_learned_timeout_is_factor_times_p99_above_the_floor() -> None:
    c = Cluster()
    t = _learn(c, "a", 0, [20.0] * 10)
    book = c.jobs["j1"]
    assert book.steps.p99() == 20.0          # the first sighting (step 0) is not a duration
    # learned = max(60, 5 * 20) = 100: at 70 s without a step, only a suspect
    c.ingest(report("a", [rank(0, step=10, last_step_age_s=70.0)]), t + 70)
    decisions = c.evaluate(t + 70)
    assert [d.verb for d in decisions] == ["dump_stacks"]
    c.ingest(report("a", [rank(0, step=10, last_step_age_s=99.0)]), t + 99)
    assert c.evaluate(t + 99) == []
    c.ingest(report("a", [rank(0, step=10, last_step_age_s=101.0)]), t + 101)
    d, v = only_verdict(c.evaluate(t + 101))
    assert (v.kind, v.rank, v.step) == ("rank_stalled", 0, 10)
    assert "timeout 100s" in v.cause
    assert v.detected_after_s == pytest.approx(101.0)
    assert d.verb == "teardown"


def test_floor_applies_to_fast_jobs() -> None:
    c = Cluster()
    t = _learn(c, "a", 0, [0.5] * 20)
    assert c.jobs["j1"].steps.p99() == 0.5
    c.ingest(report("a", [rank(0, step=20, last_step_age_s=59.0)]), t + 59)
    assert verdict_decisions(c.evaluate(t + 59)) == []
    c.ingest(report("a", [rank(0, step=20, last_step_age_s=61.0)]), t + 61)
    _, v = only_verdict(c.evaluate(t + 61))
    assert v.kind == "rank_stalled" and "timeout 60s" in v.cause


def test_spec_overrides_floor_and_factor() -> None:
    c = Cluster()
    s = spec(min_stall_timeout_s=10.0, stall_factor=2.0)
    c.ingest(report("a", [rank(0, step=0)], job_spec=s), 0.0)
    c.ingest(report("a", [rank(0, step=1, last_step_dt_s=8.0)], job_spec=s), 8.0)
    # learned = max(10, 2 * 8) = 16
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=15.0)], job_spec=s), 23.0)
    assert verdict_decisions(c.evaluate(23.0)) == []
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=17.0)], job_spec=s), 25.0)
    _, v = only_verdict(c.evaluate(25.0))
    assert "timeout 16s" in v.cause


def test_age_grows_with_time_since_the_report() -> None:
    """A report's last_step_age_s plus the time since it arrived."""
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3, last_step_age_s=40.0)], job_spec=spec(node_timeout_s=1e9)), 0.0)
    c.evaluate(0.0)
    assert verdict_decisions(c.evaluate(19.0)) == []
    _, v = only_verdict(c.evaluate(21.0))
    assert v.kind == "rank_stalled" and v.detected_after_s == pytest.approx(61.0)


def test_startup_timeout_before_the_first_step() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=0.0)]), 0.0)
    # far beyond the learned 60 s, still within startup_timeout (900 s)
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=800.0)]), 800.0)
    assert [d.verb for d in c.evaluate(800.0)] == ["dump_stacks"]   # half-way: suspect
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=899.0)]), 899.0)
    assert c.evaluate(899.0) == []
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=901.0)]), 901.0)
    _, v = only_verdict(c.evaluate(901.0))
    assert (v.kind, v.rank, v.step) == ("rank_stalled", 0, -1)
    assert "no step since start" in v.cause and "timeout 900s" in v.cause


def test_startup_timeout_from_the_spec() -> None:
    c = Cluster()
    s = spec(startup_timeout_s=30.0)
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=29.0)], job_spec=s), 29.0)
    assert verdict_decisions(c.evaluate(29.0)) == []
    c.ingest(report("a", [rank(0, step=-1, last_step_age_s=31.0)], job_spec=s), 31.0)
    _, v = only_verdict(c.evaluate(31.0))
    assert v.kind == "rank_stalled" and "since start" in v.cause


def test_section_uses_its_own_timeout() -> None:
    c = Cluster()
    s = spec(node_timeout_s=1e9)
    # last step 500 s ago (far past the learned 60 s), but inside a section with 100 s left
    c.ingest(report("a", [rank(0, step=5, last_step_age_s=500.0, section="checkpoint",
                               section_remaining_s=100.0)], job_spec=s), 1000.0)
    assert c.evaluate(1000.0) == []
    assert c.evaluate(1099.0) == []           # no half-way suspect inside a section either
    _, v = only_verdict(c.evaluate(1101.0))
    assert (v.kind, v.rank) == ("rank_stalled", 0)
    assert "section 'checkpoint' overran its timeout" in v.cause


def test_section_past_its_deadline_is_stalled_at_once() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=5, section="eval", section_remaining_s=-0.5)]), 10.0)
    _, v = only_verdict(c.evaluate(10.0))
    assert "section 'eval'" in v.cause


def test_section_longer_than_learned_timeout_is_fine() -> None:
    c = Cluster()
    for t in (0.0, 100.0, 200.0, 300.0):
        c.ingest(report("a", [rank(0, step=5, last_step_age_s=t, section="checkpoint",
                                   section_remaining_s=900.0 - t)]), t)
        assert c.evaluate(t) == []


# -- SUSPECT -> dump_stacks ------------------------------------------------------------------
def test_suspect_asks_for_stacks_once_half_way() -> None:
    c = two_nodes(0.0)
    stuck = lambda age: ([rank(0, step=0, last_step_age_s=age), rank(1, step=0, last_step_age_s=age)],  # noqa: E731
                         [rank(2, step=0, last_step_age_s=age), rank(3, step=0, last_step_age_s=age)])
    for age, expect in ((29.0, []), (31.0, ["dump_stacks"]), (40.0, []), (50.0, [])):
        a, b = stuck(age)
        c.ingest(report("a", a), age)
        c.ingest(report("b", b), age)
        decisions = c.evaluate(age)
        assert [d.verb for d in decisions] == expect, age
        if expect:
            assert decisions[0].nodes == ("a", "b")
            assert decisions[0].incident is None and decisions[0].alert is False
    assert c.jobs["j1"].stacks_asked_at == 31.0
    a, b = stuck(61.0)
    c.ingest(report("a", a), 61.0)
    c.ingest(report("b", b), 61.0)
    _, v = only_verdict(c.evaluate(61.0))
    assert v.kind == "collective_timeout"


def test_suspect_is_asked_again_after_progress_resumed() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=31.0)]), 100.0)
    assert [d.verb for d in c.evaluate(100.0)] == ["dump_stacks"]
    # the slow phase passes: steps again, for hours
    for i, t in enumerate(range(110, 3700, 10), start=2):
        c.ingest(report("a", [rank(0, step=i, last_step_dt_s=0.5)]), float(t))
        assert c.evaluate(float(t)) == []
    # a new, unrelated hang
    c.ingest(report("a", [rank(0, step=999, last_step_age_s=31.0)]), 3800.0)
    assert [d.verb for d in c.evaluate(3800.0)] == ["dump_stacks"]


def test_detect_returns_suspect_marker() -> None:
    c = Cluster()
    for age, expected in ((25.0, None), (45.0, detector.SUSPECT)):
        c.ingest(report("a", [rank(0, step=1, last_step_age_s=age)]), 0.0)
        assert detector.detect(c.jobs["j1"], 0.0, {"a": 0.0}) == expected
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=61.0)]), 0.0)
    found = detector.detect(c.jobs["j1"], 0.0, {"a": 0.0})
    assert isinstance(found, Verdict) and found.kind == "rank_stalled"


# -- stall: who is the culprit ---------------------------------------------------------------
def _stuck_job(per_rank: dict[int, dict], age: float = 61.0) -> Cluster:
    """Ranks 0, 1 on node a and 2, 3 on node b, all without a step for ``age`` seconds."""
    c = Cluster()
    for node, ranks in (("a", (0, 1)), ("b", (2, 3))):
        rs = []
        for r in ranks:
            kw = dict(step=10, last_step_age_s=age)
            kw.update(per_rank.get(r, {}))
            rs.append(rank(r, **kw))
        c.ingest(report(node, rs), 1000.0)
    return c


def test_culprit_process_in_state_T() -> None:
    c = _stuck_job({2: dict(proc_state="T"), 0: dict(proc_state="S"), 1: dict(proc_state="R")})
    d, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, v.node, v.step) == ("rank_stalled", 2, "b", 10)
    assert "state T" in v.cause
    assert d.verb == "teardown"


def test_culprit_process_in_state_D() -> None:
    c = _stuck_job({1: dict(proc_state="D")})
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank) == ("rank_stalled", 1)
    assert "state D" in v.cause


def test_frozen_beats_behind() -> None:
    c = _stuck_job({3: dict(proc_state="T"), 1: dict(step=9)})
    _, v = only_verdict(c.evaluate(1000.0))
    assert v.rank == 3


def test_culprit_rank_behind_in_step() -> None:
    c = _stuck_job({2: dict(step=9, last_step_age_s=70.0)})
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, v.node, v.step) == ("rank_stalled", 2, "b", 9)
    assert "behind at step 9 while peers reached 10" in v.cause
    assert v.detected_after_s == pytest.approx(70.0)


def test_culprit_rank_whose_stack_is_outside_the_collective() -> None:
    stacks = {r: dict(stack=STACK_IN_COLLECTIVE) for r in range(4)}
    stacks[1] = dict(stack=STACK_OUTSIDE)
    c = _stuck_job(stacks)
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, v.node) == ("rank_stalled", 1, "a")
    assert "not in a collective" in v.cause
    assert v.excerpt == STACK_OUTSIDE


def test_stacks_do_not_name_a_culprit_when_one_is_missing() -> None:
    stacks = {r: dict(stack=STACK_IN_COLLECTIVE) for r in (0, 2, 3)}
    stacks[2] = dict(stack=STACK_OUTSIDE)       # rank 1 has no stack: no judgement from stacks
    c = _stuck_job(stacks)
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank) == ("collective_timeout", None)


def test_two_ranks_outside_is_no_single_culprit() -> None:
    stacks = {r: dict(stack=STACK_IN_COLLECTIVE) for r in range(4)}
    stacks[0] = stacks[3] = dict(stack=STACK_OUTSIDE)
    c = _stuck_job(stacks)
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank) == ("collective_timeout", None)


def test_all_alike_is_collective_timeout() -> None:
    c = _stuck_job({r: dict(stack=STACK_IN_COLLECTIVE, proc_state="S") for r in range(4)})
    d, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, v.node, v.host, v.step) == ("collective_timeout", None, "", "", None)
    assert "all 4 ranks" in v.cause and "step 10" in v.cause
    assert v.detected_after_s == pytest.approx(61.0)
    assert d.verb == "teardown" and d.nodes == ("a", "b")


def test_single_rank_job_is_rank_stalled() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=4, last_step_age_s=61.0, stack=STACK_IN_COLLECTIVE)]), 5.0)
    _, v = only_verdict(c.evaluate(5.0))
    assert (v.kind, v.rank, v.node, v.step) == ("rank_stalled", 0, "a", 4)
    assert v.excerpt == STACK_IN_COLLECTIVE


def test_exited_ranks_are_not_stall_candidates() -> None:
    c = Cluster()
    c.ingest(report("a", [dead(0, code=0, step=3, last_step_age_s=0.0),
                          rank(1, step=3, last_step_age_s=10.0)]), 0.0)
    assert c.evaluate(0.0) == []


# -- verdict helpers -------------------------------------------------------------------------
def test_verdict_one_line_and_rank_label() -> None:
    v = Verdict(job="j1", kind="rank_exited", rank=3, node="b", step=7, cause="boom")
    assert v.one_line() == "rank_exited rank 3 on b at step 7: boom"
    w = Verdict(job="j1", kind="collective_timeout", cause="hang")
    assert w.rank_label == "-" and w.one_line() == "collective_timeout rank -: hang"


# -- node_lost needs the peers to be stuck too ---------------------------------------------
def test_silent_node_whose_peers_keep_stepping_is_not_lost() -> None:
    """Only the agent of node b is gone (restarting): node a's ranks keep stepping,
    which they could not do without b's ranks, so b is not lost."""
    c = Cluster()
    c.ingest(report("a", [rank(0, step=10, last_step_age_s=0.0)]), 0.0)
    c.ingest(report("b", [rank(1, step=10, last_step_age_s=0.0)]), 0.0)
    for t in range(1, 12):       # a reports fresh steps every second; b is silent
        c.ingest(report("a", [rank(0, step=10 + t, last_step_age_s=0.0)]), float(t))
    assert [d for d in c.evaluate(11.0) if d.incident] == []


def test_silent_node_whose_peers_are_stuck_is_lost() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=10, last_step_age_s=0.0)]), 0.0)
    c.ingest(report("b", [rank(1, step=10, last_step_age_s=0.0)]), 0.0)
    for t in range(1, 7):        # a keeps reporting, but its rank makes no step
        c.ingest(report("a", [rank(0, step=10, last_step_age_s=float(t))]), float(t))
    d, v = only_verdict(c.evaluate(6.0))
    assert v.kind == "node_lost" and v.node == "b"


# -- root cause across ranks (log findings) ------------------------------------------------
def _finding(kind: str, role: str = "cause", severity: str = "fatal", age: float = 0.0,
             line: str = "") -> "LogFinding":
    from watchdog_d.core.model import LogFinding

    return LogFinding(kind=kind, role=role, severity=severity, age_s=age, line=line or kind,
                      explanation=f"{kind} explained", remedy=f"fix {kind}")


def test_cause_on_a_later_rank_outranks_earlier_consequences() -> None:
    """Rank 3 ran out of GPU memory; ranks 0-2 lost their peer, some reported first."""
    c = Cluster()
    c.ingest(report("a", [dead(0, code=1, age=0.6, findings=(_finding("peer_connection_lost", "consequence", "error", 0.6),)),
                          dead(1, code=1, age=0.5, findings=(_finding("peer_connection_lost", "consequence", "error", 0.5),))]), 100.0)
    assert c.evaluate(100.0) == []            # only consequences so far: wait for the cause
    c.ingest(report("b", [dead(2, sig=SIGTERM, age=0.1),
                          dead(3, code=1, age=0.2, findings=(_finding("cuda_oom", age=0.3, line="torch.OutOfMemoryError: CUDA out of memory."),))]), 100.4)
    _, v = only_verdict(c.evaluate(100.4))
    assert (v.kind, v.rank, v.node) == ("cuda_oom", 3, "b")
    assert "CUDA out of memory" in v.cause and v.remedy == "fix cuda_oom"
    assert "consequences" in v.cause and "rank 0 peer_connection_lost" in v.cause


def test_only_consequences_decide_after_the_settle_time() -> None:
    c = Cluster()
    c.ingest(report("a", [dead(0, code=1, findings=(_finding("peer_connection_lost", "consequence", "error"),)),
                          rank(1, step=3)]), 100.0)
    assert c.evaluate(100.5) == []
    _, v = only_verdict(c.evaluate(101.1))
    assert (v.kind, v.rank) == ("peer_connection_lost", 0)


def test_fatal_finding_on_a_live_rank_is_a_verdict() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3), rank(1, step=3, findings=(_finding("nccl_error", age=0.2),))]), 100.0)
    _, v = only_verdict(c.evaluate(100.0))
    assert (v.kind, v.rank) == ("nccl_error", 1)


def test_error_finding_on_a_live_rank_is_not_a_verdict() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3), rank(1, step=3, findings=(_finding("data_loader_error", severity="error"),))]), 100.0)
    assert [d for d in c.evaluate(100.0) if d.incident] == []


def test_generic_exception_keeps_the_rank_exited_kind() -> None:
    c = Cluster()
    c.ingest(report("a", [dead(1, code=1, findings=(_finding("python_exception", severity="error", line="ValueError: bad"),))]), 100.0)
    _, v = only_verdict(c.evaluate(100.0))
    assert v.kind == "rank_exited" and "ValueError: bad" in v.cause
