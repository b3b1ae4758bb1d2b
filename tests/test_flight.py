"""Flight-recorder evidence (core.frsummary, core.flight, the detector's use of them,
the wire and the offline diagnose): pure, plain clock.

The NCCL-shaped dumps are built here to the schema torch 2.13's flight recorder writes
(field names and states as in a gloo dump taken on this machine; op names, start states,
``pg_config`` ranks and ``last_started_collective`` as NCCL writes them with timing on).
They are not recordings from a GPU: none was lent to this work.
"""
from __future__ import annotations

import json
import math
import pickle

import pytest

from watchdog_d.core import flight, frsummary
from watchdog_d.core.model import GroupRecord, PendingCollective, RankReport
from watchdog_d.core.state import Cluster
from watchdog_d.logs import frdumps
from watchdog_d.proto import convert
from watchdog_d.proto import watchdog_pb2 as pb

from wdtest_helpers import only_verdict, rank, report

T0 = 1_796_000_000_000_000_000


def entry(seq, op="all_reduce", sizes=(1048576,), state="scheduled", created_s=0.0,
          pg=("0", "default_pg"), backend="nccl", dtype="Float"):
    return {"record_id": seq, "pg_id": 0, "process_group": list(pg), "collective_seq_id": seq,
            "p2p_seq_id": 0, "op_id": seq, "profiling_name": f"{backend}:{op}",
            "time_created_ns": T0 + int(created_s * 1e9), "input_sizes": [list(sizes)],
            "input_dtypes": [dtype], "output_sizes": [list(sizes)], "output_dtypes": [dtype],
            "state": state, "time_discovered_started_ns": None, "time_discovered_completed_ns": None,
            "retired": state == "completed", "timeout_ms": 600000, "is_p2p": False, "frames": []}


def dump(entries, enq, done, start=-1, ranks="[0, 1, 2, 3]", name="0", desc="default_pg"):
    return {"version": "2.10", "comm_lib_version": "2.27.5",
            "pg_config": {name: {"name": name, "desc": desc, "ranks": ranks}},
            "pg_status": {name: {"last_enqueued_collective": str(enq),
                                 "last_started_collective": str(start),
                                 "last_completed_collective": str(done)}},
            "entries": entries}


def at(seconds: float) -> int:
    return T0 + int(seconds * 1e9)


# -- the summary -------------------------------------------------------------------------------
def test_summary_of_an_nccl_dump_with_start_states() -> None:
    d = dump([entry(1186, state="completed", created_s=-1), entry(1187, state="started")],
             1187, 1186, start=1187)
    (g,) = frsummary.summarise(d, at(61))
    assert (g.name, g.desc, g.size, g.ranks) == ("0", "default_pg", 4, "0-3")
    assert (g.last_enqueued, g.last_started, g.last_completed) == (1187, 1187, 1186)
    p = g.pending
    assert (p.seq, p.op, p.sizes, p.nbytes, p.state) == (1187, "nccl:all_reduce", "[1048576]", 4194304, "started")
    assert p.age_s == pytest.approx(61.0)


def test_summary_of_an_older_torch_dump_without_pg_status() -> None:
    old = {"version": "1.5", "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1]"}},
           "entries": [entry(5, state="completed", created_s=-2), entry(6, "broadcast", (10,))],
           "some_new_field": {"x": 1}}
    raw = pickle.dumps(old, protocol=2)           # _dump_nccl_trace's form
    (g,) = frsummary.summarise(pickle.loads(raw), at(3))
    assert g.pending.seq == 6 and g.pending.op == "nccl:broadcast" and g.last_enqueued == 6


@pytest.mark.parametrize("bad", [None, [], "x", {"entries": 3}, {"pg_status": []}])
def test_not_a_dump_is_no_evidence(bad) -> None:
    with pytest.raises(frsummary.BrokenDump):
        frsummary.summarise(bad, at(0))


def test_garbage_inside_a_dump_is_skipped() -> None:
    d = dump([None, 7, {"collective_seq_id": "x"}, {"process_group": 5, "collective_seq_id": 3},
              entry(9, sizes=("a",)), entry(10, created_s=5)], "zz", True)
    (g,) = frsummary.summarise(d, at(1))
    assert g.pending.seq == 9 and g.pending.sizes == "" and g.pending.age_s == pytest.approx(1.0)


def test_a_huge_dump_is_cut_to_a_bounded_summary() -> None:
    entries = [entry(i, state="completed") for i in range(20_000)]
    entries += [entry(20_000 + i, pg=(f"g{i % 200}", "tp")) for i in range(2000)]
    status = {f"g{i}": {"last_enqueued_collective": "1"} for i in range(200)}
    d = {"entries": entries, "pg_status": status}
    groups = frsummary.summarise(d, at(10))
    assert len(groups) == frsummary.MAX_GROUPS
    assert all(len(g.later) <= frsummary.MAX_LATER for g in groups)
    doc = {"v": 1, "note": "", "groups": [__import__("dataclasses").asdict(g) for g in groups]}
    assert len(json.dumps(doc)) < 200_000


def test_ranges_round_trip() -> None:
    for ranks in ([0, 1, 2, 3], list(range(0, 1024, 8)), [0, 3, 9], [5], [], [0, 1, 2, 10, 20, 30, 31]):
        assert frsummary.parse_ranges(frsummary.ranges(ranks)) == tuple(sorted(ranks))
    assert frsummary.ranges(list(range(0, 16384))) == "0-16383"
    with pytest.raises(ValueError):
        frsummary.parse_ranges("5-1")


def test_summary_file_read_back_and_refused_when_hostile() -> None:
    g = GroupRecord("0", "default_pg", 2, "0-1", 5, -1, 4, PendingCollective(5, "gloo:all_reduce", "[4]", 16, 3.0))
    doc = json.loads(json.dumps({"v": 1, "note": "", "groups": [__import__("dataclasses").asdict(g)]}))
    assert frsummary.from_doc(doc) == ((g,), "")
    doc["groups"][0]["pending"]["age_s"] = float("nan")
    assert frsummary.from_doc(doc) == ((), "unreadable flight-recorder summary")
    assert frsummary.from_doc({"v": 2})[0] == ()


# -- the rules ---------------------------------------------------------------------------------
def member(r: int, groups, fr_age: float = 1.0, **kw) -> flight.Member:
    return flight.Member(RankReport(rank=r, collectives=tuple(groups), **kw), fr_age)


def rec(seq_pending: int | None, enq: int, age: float = 70.0, op="nccl:all_reduce", sizes="[4096]",
        state="scheduled", ranks="0-3", later=()) -> GroupRecord:
    p = None if seq_pending is None else PendingCollective(seq_pending, op, sizes, 16384, age, state)
    return GroupRecord("0", "default_pg", len(frsummary.parse_ranges(ranks)), ranks, enq, -1,
                       (seq_pending or enq + 1) - 1, p, tuple(later))


def test_pending_on_every_member_past_the_timeout_is_a_timeout_naming_never_started() -> None:
    ms = [member(r, [rec(1187, 1187, state="scheduled" if r == 2 else "started")]) for r in range(4)]
    f = flight.judge(ms, 60.0, 2.0, 5.0)
    assert f.kind == "timeout" and f.seq == 1187 and f.culprits == (2,)
    assert f.text.startswith("all_reduce #1187 on default_pg [4 ranks], 16.4 KB: pending on every rank for 70s")
    assert "never started by rank 2" in f.text


def test_twin_pending_shorter_than_the_timeout_is_nothing() -> None:
    ms = [member(r, [rec(1187, 1187, age=20.0)]) for r in range(4)]
    assert flight.judge(ms, 60.0, 2.0, 5.0).kind == "none"


def test_pending_just_under_the_timeout_waits_rather_than_calls_it_a_pause() -> None:
    ms = [member(r, [rec(1187, 1187, age=40.0)], fr_age=0.5) for r in range(4)]
    assert flight.judge(ms, 60.0, 2.0, 5.0).kind == "wait"


def test_a_rank_that_never_enqueued_it_is_the_culprit() -> None:
    ms = [member(r, [rec(42, 42)]) for r in (0, 1, 3)] + [member(2, [rec(None, 41)])]
    f = flight.judge(ms, 60.0, 2.0, 5.0)
    assert (f.kind, f.culprits, f.waiters) == ("behind", (2,), (0, 1, 3))
    assert "never enqueued by rank 2 (last enqueued #41)" in f.text


def test_a_rank_that_completed_it_means_no_hang_of_it() -> None:
    ms = [member(r, [rec(42, 42)]) for r in (0, 1, 3)] + [member(2, [rec(None, 43)])]
    assert flight.judge(ms, 60.0, 2.0, 5.0).kind == "none"


def test_mismatch_names_both_sides_among_the_pending() -> None:
    later_ar = [PendingCollective(77, "nccl:all_reduce", "[4096]", 16384, 69.0)]
    later_ag = [PendingCollective(77, "nccl:all_gather", "[1024]", 4096, 69.0)]
    ms = [member(0, [rec(76, 77, ranks="0-1", later=later_ar)]),
          member(1, [rec(76, 77, ranks="0-1", later=later_ag)])]
    f = flight.judge(ms, 60.0, 2.0, 5.0)
    assert f.kind == "mismatch"
    assert f.text.startswith("rank 0 all_reduce [4096] vs rank 1 all_gather [1024] at #77 on default_pg")


def test_sizes_that_may_differ_are_no_mismatch() -> None:
    ms = [member(r, [rec(9, 9, op="nccl:all_to_all", sizes=f"[{r + 1}]", ranks="0-1")]) for r in (0, 1)]
    assert flight.judge(ms, 60.0, 2.0, 5.0).kind == "timeout"


def test_old_dumps_are_asked_again_and_waited_for() -> None:
    # the waiters' entries were young when dumped 40 s ago: now they would be old enough
    ms = [member(r, [rec(5, 5, age=25.0)], fr_age=40.0) for r in range(4)]
    assert flight.judge(ms, 60.0, math.inf, 5.0).kind == "stale"
    assert flight.judge(ms, 60.0, 1.0, 5.0).kind == "wait"
    # asked 6 s ago and nobody answered: named, and the stack rules decide
    f = flight.judge(ms, 60.0, 6.0, 5.0)
    assert f.kind == "none" and f.silent == (0, 1, 2, 3)


def test_a_member_without_a_summary_is_named_when_it_does_not_answer() -> None:
    ms = [member(r, [rec(5, 5)]) for r in range(3)] + [member(3, [], fr_age=math.inf)]
    assert flight.judge(ms, 60.0, 1.0, 5.0).kind == "wait"
    f = flight.judge(ms, 60.0, 6.0, 5.0)
    assert f.kind == "none" and f.silent == (3,)


def test_unknown_membership_says_nothing_of_every() -> None:
    g = GroupRecord("0", "", 0, "", 5, -1, 4, PendingCollective(5, "gloo:all_reduce", "", 0, 90.0))
    assert flight.judge([member(0, [g]), member(1, [g])], 60.0, 1.0, 5.0).kind == "none"
    g2 = GroupRecord("0", "", 2, "", 5, -1, 4, PendingCollective(5, "gloo:all_reduce", "", 0, 90.0))
    assert flight.judge([member(0, [g2]), member(1, [g2])], 60.0, 1.0, 5.0).kind == "timeout"
    g8 = GroupRecord("0", "", 8, "", 5, -1, 4, PendingCollective(5, "gloo:all_reduce", "", 0, 90.0))
    assert flight.judge([member(0, [g8]), member(1, [g8])], 60.0, 1.0, 5.0).kind == "none"


def test_stuck_or_busy_by_its_own_evidence() -> None:
    assert "state T" in flight.stuck(RankReport(0, proc_state="T"))
    assert "idle" in flight.stuck(RankReport(0, cpu_percent=2.0))
    spinning = RankReport(0, cpu_percent=99.0, stack_still_s=30.0, io_still_s=60.0)
    assert "did not move" in flight.stuck(spinning)
    assert flight.stuck(RankReport(0, cpu_percent=99.0, stack_still_s=30.0, io_still_s=1.0)) is None
    assert flight.stuck(RankReport(0, cpu_percent=99.0, stack_still_s=0.0, io_still_s=60.0)) is None
    assert flight.stuck(RankReport(0, cpu_percent=99.0, stack_still_s=30.0, io_still_s=-1.0)) is None
    # a slow filesystem: D nearly always, no CPU, bytes arriving
    assert flight.stuck(RankReport(0, proc_state="D", d_held_s=40.0, io_still_s=0.5)) is None
    assert flight.stuck(RankReport(0, cpu_percent=0.0, io_still_s=2.0)) is None
    assert "idle" in flight.stuck(RankReport(0, cpu_percent=0.0, io_still_s=3.0))


# -- the detector on it ------------------------------------------------------------------------
def _job(groups_of, age: float = 62.0, **kw) -> Cluster:
    c = Cluster()
    for node, ranks in (("a", (0, 1)), ("b", (2, 3))):
        rs = [rank(r, step=10, last_step_age_s=age, cpu_percent=99.0, collectives=(groups_of(r),),
                   fr_age_s=0.5, **kw) for r in ranks]
        c.ingest(report(node, rs), 1000.0)
    c.jobs["j1"].stacks_asked_at = 998.0
    return c


def test_busy_spinning_ranks_all_pending_are_a_collective_timeout() -> None:
    c = _job(lambda r: rec(1187, 1187, age=61.0, state="scheduled" if r == 2 else "started"))
    d, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank, v.node) == ("collective_timeout", 2, "b") and d.verb == "teardown"
    assert v.cause.startswith("flight recorder: all_reduce #1187 on default_pg [4 ranks]")


def test_twin_an_entry_enqueued_before_the_last_step_is_not_waited_in() -> None:
    """gloo retires some entries late: the last all_reduce of the step before an undeclared
    evaluation looks pending on every rank for minutes. The ranks stepped after it."""
    c = _job(lambda r: rec(76, 76, age=90.0))
    _, v = only_verdict(c.evaluate(1000.0))
    assert v.kind == "long_pause", v


def test_a_late_retired_entry_does_not_hide_the_culprit() -> None:
    # rank 0 shows #76 (before its last step, retired late) and #77 (after it) pending; rank 1 stopped at #76
    late = PendingCollective(76, "gloo:all_reduce", "[1]", 4, 90.0)
    real = PendingCollective(77, "gloo:all_reduce", "[64,32]", 8192, 61.0)
    g0 = GroupRecord("0", "default_pg", 4, "0-3", 80, -1, 75, late, (real,))
    g1 = GroupRecord("0", "default_pg", 4, "0-3", 76, -1, 74, PendingCollective(75, "gloo:all_reduce", "[1,64]", 256, 90.0),
                     (late,))
    c = _job(lambda r: g1 if r == 2 else g0, io_still_s=60.0, stack_still_s=20.0)
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank) == ("rank_stalled", 2) and "all_reduce #77" in v.cause, v


def test_collective_mismatch_is_a_verdict_of_its_own() -> None:
    later = lambda r: [PendingCollective(77, "nccl:all_reduce" if r else "nccl:all_gather", "[4]", 16, 61.0)]
    c = _job(lambda r: rec(76, 77, age=61.0, later=later(r)))
    _, v = only_verdict(c.evaluate(1000.0))
    assert v.kind == "collective_mismatch" and "at #77 on default_pg" in v.cause


def test_culprit_busy_with_moving_evidence_stays_a_long_pause() -> None:
    c = _job(lambda r: rec(None, 41) if r == 2 else rec(42, 42, age=61.0), io_still_s=0.3, stack_still_s=20.0)
    _, v = only_verdict(c.evaluate(1000.0))
    assert v.kind == "long_pause" and "rank 2 is busy" in v.cause


def test_culprit_spinning_still_is_torn_down() -> None:
    c = _job(lambda r: rec(None, 41) if r == 2 else rec(42, 42, age=61.0), io_still_s=60.0, stack_still_s=20.0)
    _, v = only_verdict(c.evaluate(1000.0))
    assert (v.kind, v.rank) == ("rank_stalled", 2) and "never enqueued by rank 2" in v.cause


def test_no_summaries_the_stack_rules_decide_and_say_why_once() -> None:
    c = Cluster()
    rs = [rank(r, step=10, last_step_age_s=61.0, cpu_percent=99.0, fr_note="TORCH_FR_BUFFER_SIZE=0 set")
          for r in (0, 1)]
    c.ingest(report("a", rs), 1000.0)
    _, v = only_verdict(c.evaluate(1000.0))
    assert v.kind == "long_pause" and "flight recorder not available: TORCH_FR_BUFFER_SIZE=0 set" in v.cause
    assert c.jobs["j1"].fr_note_said


# -- the wire ----------------------------------------------------------------------------------
def test_groups_travel_and_are_left_out_when_unchanged() -> None:
    g = rec(5, 5, later=[PendingCollective(6, "nccl:broadcast", "[8]", 32, 1.0, "started")])
    r = RankReport(0, collectives=(g,), fr_age_s=2.0, fr_note="", io_still_s=-1.0, d_held_s=3.0,
                   stack_still_s=4.0)
    back = convert.rank_from_pb(convert.rank_to_pb(r))
    assert (back.collectives, back.fr_age_s, back.io_still_s, back.d_held_s, back.stack_still_s) == \
        ((g,), 2.0, -1.0, 3.0, 4.0)
    delta = convert.rank_to_pb(r, same_text=True)
    assert not delta.collectives
    assert convert.rank_from_pb(delta, back).collectives == (g,)


@pytest.mark.parametrize("spoil", [
    lambda m: m.collectives.extend([pb.CollectiveGroup(name=f"g{i}") for i in range(10_000)]),
    lambda m: setattr(m.collectives.add(name="x"), "last_enqueued", -5),
    lambda m: setattr(m.collectives.add(name="x"), "last_completed", (1 << 63) - 1),
    lambda m: m.collectives.add(name="x").pending.CopyFrom(pb.PendingCollective(seq=-3, state="scheduled")),
    lambda m: m.collectives.add(name="x").pending.CopyFrom(pb.PendingCollective(seq=1, age_s=float("inf"))),
    lambda m: m.collectives.add(name="x", ranks="0-3; rm -rf"),
    lambda m: m.collectives.add(name="bad\x00name"),
    lambda m: m.collectives.extend([pb.CollectiveGroup(name="x"), pb.CollectiveGroup(name="x")]),
    lambda m: setattr(m, "io_still_s", float("nan")),
])
def test_a_hostile_summary_is_refused_like_any_bad_report(spoil) -> None:
    m = convert.rank_to_pb(RankReport(0))
    spoil(m)
    with pytest.raises(convert.WireError):
        convert.rank_from_pb(m)


# -- offline -----------------------------------------------------------------------------------
def test_diagnose_names_the_culprit_from_torchs_own_dump_on_timeout_files(tmp_path) -> None:
    for r in range(4):
        es = [entry(1186, state="completed", created_s=-1),
              entry(1187, state="scheduled" if r == 2 else "started")]
        d = dump(es, 1187, 1186, start=1186 if r == 2 else 1187)
        (tmp_path / f"nccl_trace_rank_{r}").write_bytes(pickle.dumps(d))
    (tmp_path / "rank-0.log").write_text("hello\n")
    found = frdumps.diagnose([str(tmp_path)])
    assert found["kind"] == "timeout" and found["culprits"] == [2] and found["seq"] == 1187


def test_diagnose_refuses_pickles_that_are_not_plain_data(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "fr_trace_rank_0").write_bytes(pickle.dumps({"entries": [Evil()]}))
    (tmp_path / "fr_trace_rank_1").write_bytes(b"\x80\x04truncated")
    found = frdumps.diagnose([str(tmp_path)])
    assert set(found["broken"]) == {"0", "1"} and found["kind"] == "none"
