"""The end of training (core/finish.py): once a rank exited 0 or destroyed its process
group, not stepping is no evidence; a collective a finished peer left, or a hang inside
destroy_process_group(), still is. Every fault with its no-fault twin. Pure core, plain clock."""
from __future__ import annotations

import math

import pytest

from watchdog_d.core import deadline
from watchdog_d.core.state import Cluster
from watchdog_d.proto import convert
from wdtest_helpers import (STACK_IN_COLLECTIVE, dead, only_verdict, rank, report, spec,
                            verdict_decisions)

S = spec(node_timeout_s=1e9)              # node silence is not what these tests are about
SHUTDOWN = "shutdown: destroy_process_group"
STACK_IN_DESTROY = (
    'Current thread 0x00007f0000000003 (most recent call first):\n'
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", '
    'line 2301 in destroy_process_group\n'
    '  File "/job/train.py", line 120 in main\n'
    '  File "/job/train.py", line 130 in <module>\n'
)
STACK_UPLOAD = (
    'Thread 0x00007f0000000009 (most recent call first):\n'
    '  File "/usr/lib/python3.11/threading.py", line 331 in wait\n'
    '  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap\n'
    '\n'
    'Current thread 0x00007f0000000004 (most recent call first):\n'
    '  File "/venv/lib/python3.11/site-packages/requests/adapters.py", line 486 in send\n'
    '  File "/job/upload.py", line 30 in upload\n'
    '  File "/job/train.py", line 125 in main\n'
    '  File "/job/train.py", line 130 in <module>\n'
)


def _steady(c: Cluster, n: int = 40) -> float:
    t = 0.0
    for i in range(1, n + 1):
        t = float(i)
        for node, r in (("a", 0), ("b", 1)):
            c.ingest(report(node, [rank(r, step=i, last_step_dt_s=1.0)], job_spec=S), t)
        assert verdict_decisions(c.evaluate(t)) == []
    return t


def _tick(c: Cluster, t: float, r0, r1) -> list:
    c.ingest(report("a", [r0], job_spec=S), t)
    c.ingest(report("b", [r1], job_spec=S), t)
    return c.evaluate(t)


def _run(c: Cluster, t0: float, seconds: range, r0, r1) -> list:
    """Reports every second; r0/r1(dt) give each rank's report dt seconds after t0."""
    out = []
    for dt in seconds:
        out += _tick(c, t0 + dt, r0(dt), r1(dt))
    return out


def test_a_rank_that_works_on_after_its_peer_exited_is_not_stalled() -> None:
    """Rank 1 finished (exit 0); rank 0 uploads the final model for 10 minutes, idle, not
    in a collective. Before: rank_stalled at the 60 s floor. Now: nothing."""
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 600, 3),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_UPLOAD, stack_age_s=1.0),
                     lambda dt: dead(1, code=0, age=dt, step=40))
    assert verdict_decisions(decisions) == []
    assert c.jobs["j1"].status == "running"


def test_twin_a_rank_waiting_in_a_collective_its_peer_left_is_stalled_at_the_floor() -> None:
    """Uneven data: rank 1 ran out of batches and exited 0; rank 0 waits in all_reduce for it
    (an NCCL hang). Its stack, dumped after the exit, is the evidence: caught at the floor."""
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 70),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_IN_COLLECTIVE,
                                     stack_age_s=0.5 if dt > 31 else math.inf),   # (dumped when asked)
                     lambda dt: dead(1, code=0, age=dt, step=40))
    assert "dump_stacks" in [d.verb for d in decisions]     # asked at half the floor
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb) == ("rank_stalled", 0, "teardown")
    assert v.detected_after_s == pytest.approx(61.0)
    assert "rank 0 waits in a collective that cannot complete: rank 1 exited with status 0" in v.cause
    assert "all_reduce (distributed_c10d.py:2050)" in v.cause
    assert "same number of batches" in v.remedy


def test_a_stack_from_before_the_end_is_not_evidence() -> None:
    """Rank 0's last stack shows the final barrier, dumped before rank 1 exited; rank 0 has
    long left it (it uploads). The old stack must not make a verdict: fresh ones are asked
    for, and they show the upload."""
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 90),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_IN_COLLECTIVE,
                                     stack_age_s=dt + 5.0),      # dumped before the end began
                     lambda dt: dead(1, code=0, age=dt, step=40))
    assert verdict_decisions(decisions) == []
    asks = [d for d in decisions if d.verb == "dump_stacks"]
    assert 2 <= len(asks) <= 4, asks                           # at half the floor, then every 30 s
    decisions = _run(c, t, range(90, 200, 2),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_UPLOAD, stack_age_s=1.0),
                     lambda dt: dead(1, code=0, age=dt, step=40))
    assert verdict_decisions(decisions) == []


def test_a_rank_in_destroy_process_group_holds_nobody_to_the_step_clock() -> None:
    """Rank 1 is in destroy_process_group() (waiting there for its peer, as NCCL's abort can);
    rank 0 writes the last files for 5 minutes, idle. Nothing."""
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 300, 2),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_UPLOAD, stack_age_s=1.0),
                     lambda dt: rank(1, step=40, last_step_age_s=dt, section=SHUTDOWN,
                                     section_remaining_s=900.0 - dt, section_age_s=dt,
                                     stack=STACK_IN_DESTROY, stack_age_s=1.0))
    assert verdict_decisions(decisions) == []


def test_twin_a_hang_inside_destroy_process_group_is_torn_down_at_the_shutdown_timeout() -> None:
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 910, 3),
                     lambda dt: dead(0, code=0, age=dt, step=40),
                     lambda dt: rank(1, step=40, last_step_age_s=dt, section=SHUTDOWN,
                                     section_remaining_s=900.0 - dt, section_age_s=dt,
                                     stack=STACK_IN_DESTROY, stack_age_s=1.0))
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb) == ("rank_stalled", 1, "teardown")
    assert v.cause == "rank 1 hangs in destroy_process_group() for 15 min after the end of training " \
                      "(timeout 15 min)"


def test_an_exception_that_sends_one_rank_into_destroy_is_still_a_hang_of_its_peer() -> None:
    """Rank 1 raised and its ``finally:`` destroys the process group, which hangs (NCCL);
    rank 0 waits in all_reduce for it. Caught at the floor, as before the end-of-training rules."""
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 70),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_IN_COLLECTIVE,
                                     stack_age_s=1.0),
                     lambda dt: rank(1, step=40, last_step_age_s=dt, section=SHUTDOWN,
                                     section_remaining_s=900.0 - dt, section_age_s=dt,
                                     stack=STACK_IN_DESTROY, stack_age_s=1.0))
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb) == ("rank_stalled", 0, "teardown")
    assert "rank 1 destroyed its process group" in v.cause


def test_lingering_past_the_shutdown_timeout_is_one_warning_and_the_job_still_succeeds() -> None:
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 1000, 3),
                     lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_UPLOAD, stack_age_s=1.0),
                     lambda dt: dead(1, code=0, age=dt, step=40))
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb, d.incident.action) == ("long_pause", 0, "none", "none")
    assert v.cause.startswith("rank 0 has not exited 15 min after the end of training "
                              "(rank 1 exited with status 0); it is in send (adapters.py:486)")
    assert "not torn down" in v.cause
    # the upload ends, the launchers exit 0: the job succeeded (a warning is no verdict)
    c.ingest(report("a", [dead(0, code=0, step=40)], state="exited", job_spec=S), t + 1001)
    c.ingest(report("b", [dead(1, code=0, step=40)], state="exited", job_spec=S), t + 1001)
    kinds = [x.incident.verdict.kind for x in verdict_decisions(c.evaluate(t + 1001))]
    assert kinds == ["job_succeeded"] and c.jobs["j1"].outcome == "succeeded"


def test_a_rank_that_keeps_stepping_after_its_peer_exited_is_not_warned_about() -> None:
    """Independent work per rank (a shard each): rank 1 is done, rank 0 steps on for 20 min."""
    c = Cluster()
    t = _steady(c)
    decisions = _run(c, t, range(1, 1200, 4),
                     lambda dt: rank(0, step=40 + dt, last_step_age_s=0.5),
                     lambda dt: dead(1, code=0, age=dt, step=40))
    assert verdict_decisions(decisions) == []


def test_a_finishing_job_is_not_looked_at_every_tick() -> None:
    """Past the floor, a lingering rank is judged on its stacks and the shutdown timeout:
    the deadline does not fall back to a look every 0.25 s."""
    c = Cluster()
    t = _steady(c)
    _run(c, t, range(1, 120, 2),
         lambda dt: rank(0, step=40, last_step_age_s=dt, stack=STACK_UPLOAD, stack_age_s=1.0),
         lambda dt: dead(1, code=0, age=dt, step=40))
    book, now = c.jobs["j1"], t + 119
    assert deadline.next_check(book, now, c.silence) - now >= 0.5


def test_a_stack_age_crosses_the_wire_and_an_older_agent_means_unknown() -> None:
    r = rank(0, step=3, stack=STACK_UPLOAD, stack_age_s=2.5)
    assert convert.rank_from_pb(convert.rank_to_pb(r)).stack_age_s == pytest.approx(2.5)
    m = convert.rank_to_pb(r)
    m.stack_age_s = 0.0                                       # an agent before this field
    assert convert.rank_from_pb(m).stack_age_s == math.inf
    m.stack_age_s = float("nan")
    with pytest.raises(convert.WireError):
        convert.rank_from_pb(m)
    assert convert.rank_to_pb(rank(0)).stack_age_s == 0.0     # no stack: nothing to date


def test_the_main_thread_of_the_latest_dump_is_read() -> None:
    """A rank's stack file holds its dumps one after another: the newest main thread counts."""
    from watchdog_d.core import rootcause
    older = STACK_IN_DESTROY.replace("line 2301 in destroy_process_group", "line 9 in barrier")
    r = rank(0, stack=older + "\n" + STACK_UPLOAD)
    assert rootcause.main_frames(r.stack)[0] == ("/venv/lib/python3.11/site-packages/requests/adapters.py",
                                                  486, "send")
    assert rootcause.where(r) == "send (adapters.py:486)"
    assert rootcause.main_frames("garbage\n  File nothing") == []


def test_a_rank_that_uploads_then_waits_for_a_peer_that_left_is_seen_by_the_next_dump() -> None:
    """Rank 0 uploads (its dumps say so), then at 100 s enters a barrier that rank 1, gone,
    never joins: stacks are asked for again every 30 s while it lingers, and the next dump
    is the evidence."""
    c = Cluster()
    t = _steady(c)
    dump: dict = {"at": None, "stack": ""}          # what the rank's last dump showed, and when
    decisions: list = []
    for dt in range(1, 200):
        r0 = rank(0, step=40, last_step_age_s=dt, stack=dump["stack"],
                  stack_age_s=math.inf if dump["at"] is None else dt - dump["at"])
        out = _tick(c, t + dt, r0, dead(1, code=0, age=dt, step=40))
        if any(d.verb == "dump_stacks" for d in out):   # the rank dumps where it is now
            dump = {"at": dt, "stack": STACK_UPLOAD if dt < 100 else STACK_IN_COLLECTIVE}
        decisions += out
        if verdict_decisions(out):
            break
    d, v = only_verdict(decisions)
    assert (v.kind, v.rank, d.verb) == ("rank_stalled", 0, "teardown")
    assert 100 < dt <= 100 + 30 + 6, dt           # within a refresh of entering the barrier
