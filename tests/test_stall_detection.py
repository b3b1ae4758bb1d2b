"""Stall detection (watchdog_d/core/detector.py, stall.py): which timeout applies, the stack
dumps half-way, and who the culprit is. Driven through Cluster with hand-built reports;
every clock is a plain float, nothing sleeps.
"""
from __future__ import annotations

import pytest

from watchdog_d.core import detector
from watchdog_d.core.model import Verdict
from watchdog_d.core.state import Cluster
from wdtest_helpers import (STACK_IN_COLLECTIVE, STACK_OUTSIDE, dead, only_verdict, rank, report,
                            spec, two_nodes, verdict_decisions)


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
    c.ingest(report("a", [rank(0, step=5, last_step_age_s=500.0, section="checkpoint: torch.save",
                               section_remaining_s=100.0, section_age_s=1700.0)], job_spec=s), 1000.0)
    assert c.evaluate(1000.0) == []
    assert c.evaluate(1099.0) == []           # no half-way suspect inside a section either
    _, v = only_verdict(c.evaluate(1101.0))
    assert (v.kind, v.rank) == ("rank_stalled", 0)
    assert v.cause == "rank 0 in checkpoint: torch.save for 30 min (its timeout 30 min)"


def test_section_past_its_deadline_is_stalled_at_once() -> None:
    c = Cluster()
    c.ingest(report("a", [rank(0, step=5, section="eval", section_remaining_s=-0.5,
                               section_age_s=60.5)]), 10.0)
    _, v = only_verdict(c.evaluate(10.0))
    assert v.cause == "rank 0 in eval for 60s (its timeout 60s)"


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
    assert v.kind == "long_pause"       # the stacks never came: no evidence of a hang


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
        assert detector.detect(c.jobs["j1"], 0.0, c.silence) == expected
    c.ingest(report("a", [rank(0, step=1, last_step_age_s=61.0)]), 0.0)
    found = detector.detect(c.jobs["j1"], 0.0, c.silence)
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


def test_culprit_process_held_in_state_D_without_io() -> None:
    c = _stuck_job({1: dict(proc_state="D", d_held_s=20.0, io_still_s=20.0)})
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank) == ("rank_stalled", 1)
    assert "state D" in v.cause and "no I/O progress" in v.cause


def test_one_D_sample_is_ordinary_io() -> None:
    # a rank that writes a scratch file is in D now and then: seen once, it is nobody's culprit
    c = _stuck_job({1: dict(proc_state="D", d_held_s=0.5, io_still_s=0.0, cpu_percent=60.0)})
    _, v = only_verdict(c.evaluate(1000.0))
    assert v.kind == "long_pause"


def test_D_with_io_moving_is_a_slow_filesystem() -> None:
    # reading from a slow network filesystem: D all the time, bytes moving
    c = _stuck_job({1: dict(proc_state="D", d_held_s=50.0, io_still_s=0.4, cpu_percent=3.0)})
    _, v = only_verdict(c.evaluate(1000.0))
    assert not (v.kind == "rank_stalled" and "state D" in v.cause)
    # ... even when it is the one behind: at no CPU, its I/O says it works
    behind = _stuck_job({1: dict(step=9, proc_state="D", d_held_s=50.0, io_still_s=0.4,
                                 cpu_percent=0.0)})
    _, v = only_verdict(behind.evaluate(1000.0))
    assert (v.kind, v.rank) == ("long_pause", 1) and "I/O moving" in v.cause, v.cause
    # its twin: behind, no CPU, no I/O for long: hung
    idle = _stuck_job({1: dict(step=9, proc_state="S", io_still_s=60.0, cpu_percent=0.0)})
    _, v = only_verdict(idle.evaluate(1000.0))
    assert (v.kind, v.rank) == ("rank_stalled", 1), v.cause


def test_D_held_with_io_unreadable_needs_longer() -> None:
    short = _stuck_job({1: dict(proc_state="D", d_held_s=10.0, io_still_s=-1.0, cpu_percent=50.0)})
    _, v = only_verdict(short.evaluate(1000.0))
    assert v.kind == "long_pause"
    held = _stuck_job({1: dict(proc_state="D", d_held_s=40.0, io_still_s=-1.0, cpu_percent=50.0)})
    _, v = only_verdict(held.evaluate(1000.0))
    assert (v.kind, v.rank) == ("rank_stalled", 1)


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
    d, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, d.verb) == ("long_pause", None, "none")
    assert "no step for 61.0s" in v.cause and "not torn down" in v.cause


def test_two_ranks_outside_is_no_single_culprit() -> None:
    stacks = {r: dict(stack=STACK_IN_COLLECTIVE) for r in range(4)}
    stacks[0] = stacks[3] = dict(stack=STACK_OUTSIDE)
    c = _stuck_job(stacks)
    d, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, d.verb) == ("long_pause", None, "none")
    assert "2 of 4 ranks are outside any collective" in v.cause


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


