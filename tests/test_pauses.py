"""Pauses are not stalls (DESIGN §2): a rank inside a section holds its peers up, pauses are
learned apart from steps, and a stall without positive evidence of a hang is a warning.
Every fault has its no-fault twin here. Pure core, plain-float clock."""
from __future__ import annotations

import pytest

from watchdog_d.core.state import Cluster
from wdtest_helpers import (STACK_IN_COLLECTIVE, STACK_OUTSIDE, only_verdict, rank, report, spec,
                            verdict_decisions)

S = spec(node_timeout_s=1e9)            # node silence is not what these tests are about
SAVE = "checkpoint: torch.save"


def _steady(c: Cluster, n: int = 40, dt: float = 1.0, t0: float = 0.0) -> float:
    """Ranks 0 (node a) and 1 (node b) step together every ``dt``; returns the last time."""
    t = t0
    for i in range(1, n + 1):
        t = t0 + i * dt
        for node, r in (("a", 0), ("b", 1)):
            c.ingest(report(node, [rank(r, step=i, last_step_dt_s=dt)], job_spec=S), t)
        assert verdict_decisions(c.evaluate(t)) == []
    return t


def _tick(c: Cluster, t: float, r0: dict, r1: dict) -> list:
    c.ingest(report("a", [rank(0, **r0)], job_spec=S), t)
    c.ingest(report("b", [rank(1, **r1)], job_spec=S), t)
    return c.evaluate(t)


def test_peers_wait_for_a_rank_in_a_checkpoint_section() -> None:
    """Rank 0 saves for 200 s (its section), rank 1 waits in a collective: no verdict, no
    warning; the clocks restart when the save ends. (Before: collective_timeout at 60 s.)"""
    c = Cluster()
    t = _steady(c)
    for dt in range(5, 200, 5):
        decisions = _tick(c, t + dt,
                          dict(step=40, last_step_age_s=dt, section=SAVE, section_remaining_s=1800.0 - dt,
                               section_age_s=dt, stack=STACK_OUTSIDE),
                          dict(step=40, last_step_age_s=dt, stack=STACK_IN_COLLECTIVE))
        assert decisions == [], dt
    # the save is over; 30 s later neither rank has stepped (a slow first step after it)
    decisions = _tick(c, t + 230, dict(step=40, last_step_age_s=230), dict(step=40, last_step_age_s=230))
    assert verdict_decisions(decisions) == [], "the wait counts from the end of the section"
    # twin: now a real freeze; it is caught at the floor, counted from the section's end
    decisions = _tick(c, t + 261, dict(step=40, last_step_age_s=261, proc_state="T"),
                      dict(step=40, last_step_age_s=261, stack=STACK_IN_COLLECTIVE))
    _, v = only_verdict(decisions)
    assert (v.kind, v.rank) == ("rank_stalled", 0)
    assert v.detected_after_s == pytest.approx(66.0)     # 261 - 195, the last report inside it


def test_a_checkpoint_does_not_stretch_the_learned_timeout() -> None:
    """The step that waited for an 80 s save is a pause, not a step: the next freeze is
    caught at the floor, not at 5 x 80 s."""
    c = Cluster()
    t = _steady(c)
    _tick(c, t + 40, dict(step=40, last_step_age_s=40, section=SAVE, section_remaining_s=1760,
                          section_age_s=40), dict(step=40, last_step_age_s=40))
    # both step again: rank 0's step excludes the save (rebased), rank 1's includes the wait
    t2 = t + 81
    _tick(c, t2, dict(step=41, last_step_age_s=0.0, last_step_dt_s=1.0),
          dict(step=41, last_step_age_s=0.0, last_step_dt_s=80.0))
    book = c.jobs["j1"]
    assert book.steps.p99() == 1.0 and book.pauses.longest() == 80.0
    decisions = _tick(c, t2 + 61, dict(step=41, last_step_age_s=61, proc_state="T"),
                      dict(step=41, last_step_age_s=61, stack=STACK_IN_COLLECTIVE))
    _, v = only_verdict(decisions)
    assert (v.kind, v.rank) == ("rank_stalled", 0) and "timeout 60s" not in v.cause


def test_an_undeclared_long_step_is_a_pause_too() -> None:
    c = Cluster()
    t = _steady(c)                                  # 40 steps of 1 s
    _tick(c, t + 30, dict(step=41, last_step_age_s=0, last_step_dt_s=30.0),
          dict(step=41, last_step_age_s=0, last_step_dt_s=30.0))     # an evaluation nobody declared
    book = c.jobs["j1"]
    assert book.steps.p99() == 1.0 and book.pauses.longest() == 30.0


def test_a_section_past_its_timeout_names_the_rank_and_the_section() -> None:
    c = Cluster()
    t = _steady(c)
    decisions = _tick(c, t + 1801, dict(step=40, last_step_age_s=1801, section=SAVE,
                                        section_remaining_s=-1.0, section_age_s=1801),
                      dict(step=40, last_step_age_s=1801, stack=STACK_IN_COLLECTIVE))
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb) == ("rank_stalled", 0, "teardown")
    assert v.cause == "rank 0 in checkpoint: torch.save for 30 min (its timeout 30 min)"


def test_a_busy_rank_outside_the_collective_is_a_long_pause_then_a_hang_when_it_idles() -> None:
    """Rank 0 works alone (an evaluation nobody declared: CPU busy, outside the collective)
    while rank 1 waits: a warning, not a teardown. When rank 0 falls idle and still makes no
    step, that is positive evidence: the verdict comes."""
    c = Cluster()
    t = _steady(c)
    busy = dict(step=40, last_step_age_s=61, cpu_percent=99.0, stack=STACK_OUTSIDE)
    decisions = _tick(c, t + 61, busy, dict(step=40, last_step_age_s=61, stack=STACK_IN_COLLECTIVE))
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb, d.incident.action, d.alert) == ("long_pause", 0, "none", "none", True)
    assert "busy (CPU 99%)" in v.cause and "it is in read_shard (data.py:12)" in v.cause
    assert "not torn down" in v.cause
    # the pause goes on: one warning, fresh stacks every 30 s
    for dt in (70, 80, 91, 95):
        decisions = _tick(c, t + dt, dict(busy, last_step_age_s=dt),
                          dict(step=40, last_step_age_s=dt, stack=STACK_IN_COLLECTIVE))
        assert verdict_decisions(decisions) == []
        assert [x.verb for x in decisions] == (["dump_stacks"] if dt == 91 else []), dt
    idle = dict(busy, last_step_age_s=100, cpu_percent=0.0)
    _, v = only_verdict(_tick(c, t + 100, idle, dict(step=40, last_step_age_s=100,
                                                     stack=STACK_IN_COLLECTIVE)))
    assert (v.kind, v.rank) == ("rank_stalled", 0) and "not in a collective" in v.cause


def test_every_rank_inside_the_collective_is_a_hang() -> None:
    c = Cluster()
    t = _steady(c)
    decisions = _tick(c, t + 61, dict(step=40, last_step_age_s=61, stack=STACK_IN_COLLECTIVE),
                      dict(step=40, last_step_age_s=61, stack=STACK_IN_COLLECTIVE))
    d, v = only_verdict(decisions)
    assert (v.kind, d.verb) == ("collective_timeout", "teardown")
    assert "wait inside a collective" in v.cause


def test_every_rank_outside_any_collective_is_a_long_pause() -> None:
    """Twin of the above: every rank busy in its own code (an evaluation loop without a
    section): a warning with action none, and the job keeps running."""
    c = Cluster()
    t = _steady(c)
    decisions = _tick(c, t + 61, dict(step=40, last_step_age_s=61, stack=STACK_OUTSIDE, cpu_percent=90),
                      dict(step=40, last_step_age_s=61, stack=STACK_OUTSIDE, cpu_percent=90))
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb) == ("long_pause", None, "none")
    assert c.jobs["j1"].status == "running"
    # progress again: the episode is over, and the next pause gets its own warning
    _tick(c, t + 70, dict(step=41, last_step_age_s=0), dict(step=41, last_step_age_s=0))
    decisions = _tick(c, t + 140, dict(step=41, last_step_age_s=70, stack=STACK_OUTSIDE),
                      dict(step=41, last_step_age_s=70, stack=STACK_OUTSIDE))
    assert [v.kind for v in (x.incident.verdict for x in verdict_decisions(decisions))] == ["long_pause"]


# a DataLoader's pin-memory thread: always waiting on a queue (threading's ``wait``)
PIN_THREAD = (
    'Thread 0x00007f00000000aa (most recent call first):\n'
    '  File "/usr/lib/python3.11/threading.py", line 331 in wait\n'
    '  File "/usr/lib/python3.11/queue.py", line 180 in get\n'
    '  File "/venv/lib/python3.11/site-packages/torch/utils/data/_utils/pin_memory.py", line 41 in do_one_step\n'
    '  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap\n\n')
MAIN_EVALUATING = (
    'Current thread 0x00007f0000000001 (most recent call first):\n'
    '  File "/job/eval.py", line 12 in score\n'
    '  File "/job/train.py", line 80 in main\n'
    '  File "/job/train.py", line 90 in <module>\n')
MAIN_IN_ALL_REDUCE = (
    'Current thread 0x00007f0000000001 (most recent call first):\n'
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 2050 in all_reduce\n'
    '  File "/job/train.py", line 88 in main\n'
    '  File "/job/train.py", line 90 in <module>\n')


def test_a_helper_thread_waiting_is_not_the_rank_waiting_in_a_collective() -> None:
    """Every rank busy in an undeclared evaluation, each with a DataLoader pin-memory thread
    in threading's ``wait``: a long pause. (Before: any thread's ``wait`` counted as the rank
    inside a collective, and this healthy job was torn down as collective_timeout.)"""
    c = Cluster()
    t = _steady(c)
    busy = dict(step=40, last_step_age_s=61, cpu_percent=95.0, stack=PIN_THREAD + MAIN_EVALUATING)
    d, v = only_verdict(_tick(c, t + 61, busy, busy))
    assert (v.kind, d.verb) == ("long_pause", "none"), v.cause
    assert "it is in" not in v.cause or "score (eval.py:12)" in v.cause


def test_twin_the_main_thread_in_a_collective_with_a_helper_thread_is_a_hang() -> None:
    c = Cluster()
    t = _steady(c)
    stuck = dict(step=40, last_step_age_s=61, stack=PIN_THREAD + MAIN_IN_ALL_REDUCE)
    d, v = only_verdict(_tick(c, t + 61, stuck, stuck))
    assert (v.kind, d.verb) == ("collective_timeout", "teardown")
    # and one rank's main thread outside, idle, while the other waits in all_reduce: the culprit
    c = Cluster()
    t = _steady(c)
    idle = dict(step=40, last_step_age_s=61, stack=PIN_THREAD + MAIN_EVALUATING)
    d, v = only_verdict(_tick(c, t + 61, idle, stuck))
    assert (v.kind, v.rank) == ("rank_stalled", 0) and "score (eval.py:12)" in v.cause
