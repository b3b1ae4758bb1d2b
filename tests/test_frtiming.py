"""Collective timings from a flight-recorder dump (watchdog_d/core/frtiming.py): pure,
plain clock.

The dumps are written by hand to the schema torch's ``_dump_fr_trace(True, False, False)``
unpickles to (version "2.10"): gloo-shaped (every entry "scheduled", no start, end or
duration, ``pg_status`` counting the completed ones, ``pg_config`` ranks "[]") and
NCCL-shaped (states, ``duration_ms`` with TORCH_NCCL_ENABLE_TIMING, ``pg_config`` ranks).
They are not recordings from a GPU.
"""
from __future__ import annotations

import json
import math

import pytest

from watchdog_d.core import frtiming as F
from watchdog_d.core.frsummary import BrokenDump

WALL0 = 1_796_000_000_000_000_000        # the rank's wall clock, ns
MONO0 = 86_400_000_000_000               # the node's monotonic clock, ns (a day after boot)


def entry(seq, created_s, state="scheduled", pg=("0", "default_pg"), backend="gloo",
          op="all_reduce", duration_ms=None, p2p=False):
    started = WALL0 + int(created_s * 1e9) + 1000 if state != "scheduled" and backend == "nccl" else None
    return {"record_id": seq, "pg_id": 0, "process_group": list(pg), "collective_seq_id": seq,
            "p2p_seq_id": 0, "op_id": seq, "profiling_name": f"{backend}:{op}",
            "time_created_ns": WALL0 + int(created_s * 1e9), "input_sizes": [[1024]],
            "input_dtypes": ["Float"], "output_sizes": [[1024]], "output_dtypes": ["Float"],
            "state": state, "time_discovered_started_ns": started,
            "time_discovered_completed_ns": started if state == "completed" else None,
            "retired": state == "completed", "timeout_ms": 600000, "is_p2p": p2p,
            "duration_ms": duration_ms, "frames": []}


def dump(entries, status, ranks="[]", names=("0",)):
    """``status``: group -> last completed (as digit strings, as torch writes them)."""
    return {"version": "2.10", "comm_lib_version": "2.27.5",
            "pg_config": {n: {"name": n, "desc": "default_pg" if n == "0" else "undefined", "ranks": ranks}
                          for n in names},
            "pg_status": {n: {"last_enqueued_collective": str(max([e["collective_seq_id"] for e in entries
                                                                    if e["process_group"][0] == n] or [-1])),
                              "last_started_collective": "-1",
                              "last_completed_collective": str(done)} for n, done in status.items()},
            "entries": entries}


def now(s: float) -> tuple[int, int]:
    """(wall, mono) ns, ``s`` seconds into the recording."""
    return WALL0 + int(s * 1e9), MONO0 + int(s * 1e9)


def gloo_dump(n=7, done=5):
    return dump([entry(i, float(i)) for i in range(1, n + 1)], {"0": done})


# -- gloo ---------------------------------------------------------------------------------------
def test_gloo_dump_the_completed_ones_by_pg_status_on_the_monotonic_clock() -> None:
    (g,) = F.timings(gloo_dump(), *now(10.0), after={}, members={"0": [0, 1, 2, 3]})
    assert g.name == "0" and g.size == 4                      # (gloo: pg_config ranks "[]")
    assert g.seqs == (1, 2, 3, 4, 5)                          # 6 and 7 are not done
    assert g.enq_us == tuple((MONO0 + i * 10**9) // 1000 for i in range(1, 6))
    assert g.dur_us == (-1,) * 5


def test_wall_clock_converted_to_the_monotonic_clock() -> None:
    # the same collectives dumped later: the same monotonic times (the rank's "now" pairs move together)
    (a,) = F.timings(gloo_dump(), *now(10.0), after={})
    (b,) = F.timings(gloo_dump(), *now(500.0), after={})
    assert a.enq_us == b.enq_us
    # a wall clock 3 s ahead on another node: the times still land on that node's monotonic clock
    wall, mono = now(10.0)
    skewed = gloo_dump()
    for e in skewed["entries"]:
        e["time_created_ns"] += 3 * 10**9
    (c,) = F.timings(skewed, wall + 3 * 10**9, mono, after={})
    assert c.enq_us == a.enq_us
    assert a.size == 0                                         # unknown without members


def test_after_and_limit() -> None:
    (g,) = F.timings(gloo_dump(), *now(10.0), after={"0": 3})
    assert g.seqs == (4, 5)
    assert F.timings(gloo_dump(), *now(10.0), after={"0": 5}) == ()
    assert F.timings(gloo_dump(), *now(10.0), after={"0": "x"})[0].seqs == (1, 2, 3, 4, 5)  # (garbage: all)
    big = dump([entry(i, i / 100) for i in range(1, 1001)], {"0": 1000})
    (g,) = F.timings(big, *now(20.0), after={}, limit=10)
    assert g.seqs == tuple(range(991, 1001))                  # the latest
    (g,) = F.timings(big, *now(20.0), after={}, limit=10**6)
    assert len(g.seqs) == F.MAX_PER_GROUP and g.seqs[-1] == 1000
    assert F.timings(big, *now(20.0), after={}, limit=0) == ()


def test_entry_retired_before_pg_status_counts_it() -> None:
    d = gloo_dump()
    d["entries"][5]["retired"] = True                         # seq 6
    assert F.timings(d, *now(10.0), after={})[0].seqs == (1, 2, 3, 4, 5, 6)


# -- NCCL ---------------------------------------------------------------------------------------
def nccl_dump():
    entries = [entry(i, float(i), state="completed", backend="nccl", duration_ms=1.5 + i / 1000)
               for i in range(1, 5)]
    entries += [entry(5, 5.0, state="started", backend="nccl"),
                entry(6, 6.0, state="scheduled", backend="nccl")]
    return dump(entries, {"0": 4}, ranks="[0, 1, 2, 3, 4, 5, 6, 7]")


def test_nccl_dump_with_durations() -> None:
    (g,) = F.timings(nccl_dump(), *now(10.0), after={}, members={"0": [0, 1]})
    assert g.size == 8                                        # pg_config wins over the caller's
    assert g.seqs == (1, 2, 3, 4)
    assert g.dur_us == (1501, 1502, 1503, 1504)
    assert g.enq_us[0] == (MONO0 + 10**9) // 1000


def test_nccl_without_timing_and_completed_by_state_only() -> None:
    d = nccl_dump()
    d["pg_status"] = {}                                       # the states alone say it
    for e in d["entries"]:
        e["duration_ms"] = None
    (g,) = F.timings(d, *now(10.0), after={})
    assert g.seqs == (1, 2, 3, 4) and g.dur_us == (-1,) * 4


def test_p2p_left_out_groups_kept_apart_and_bounded() -> None:
    entries = [entry(1, 1.0, pg=("0", "default_pg")), entry(1, 1.5, pg=("3", "tp"), op="send", p2p=True),
               entry(1, 2.0, pg=("1", "tp")), entry(2, 3.0, pg=("1", "tp"))]
    d = dump(entries, {"0": 1, "1": 2, "3": 1}, names=("0", "1", "3"))
    got = {g.name: g.seqs for g in F.timings(d, *now(10.0), after={})}
    assert got == {"0": (1,), "1": (1, 2)}
    many = [entry(1, float(i), pg=(str(i), "undefined")) for i in range(40)]
    d = dump(many, {str(i): 1 for i in range(40)}, names=tuple(str(i) for i in range(40)))
    got = F.timings(d, *now(100.0), after={})
    assert len(got) == F.MAX_GROUPS
    assert {g.name for g in got} == {str(i) for i in range(24, 40)}      # the latest active


# -- garbage ------------------------------------------------------------------------------------
def test_a_dump_that_is_no_dict_is_broken_unknown_shapes_ignored() -> None:
    for bad in (None, [], "dump", 3):
        with pytest.raises(BrokenDump):
            F.timings(bad, *now(1.0), after={})
    for shape in ({}, {"entries": "x"}, {"entries": [], "pg_status": []}, {"entries": [1, "x", None]},
                  {"entries": [{"collective_seq_id": 1}], "pg_status": {"0": "x"}}):
        assert F.timings(shape, *now(1.0), after={}) == ()
    with pytest.raises(ValueError):
        F.timings({}, -1, 0, after={})
    with pytest.raises(ValueError):
        F.timings({}, 0, True, after={})
    with pytest.raises(ValueError):
        F.timings({}, 0, 0, after=[])


@pytest.mark.parametrize("field, value", [
    ("collective_seq_id", -2), ("collective_seq_id", True), ("collective_seq_id", 1.0),
    ("collective_seq_id", 1 << 63), ("time_created_ns", -5), ("time_created_ns", 0),
    ("time_created_ns", 1.5e18), ("time_created_ns", True), ("time_created_ns", None),
    ("time_created_ns", WALL0 + 60 * 10**9),                  # a minute in the future
    ("time_created_ns", WALL0 - 10**6 * 10**9),               # before the node booted
    ("duration_ms", math.nan), ("duration_ms", math.inf), ("duration_ms", 1e308),
    ("duration_ms", -1.0), ("duration_ms", True), ("duration_ms", "1.5"), ("duration_ms", 4e6),
    ("process_group", None), ("process_group", []), ("process_group", [7, "x"]),
    ("process_group", ["\x1b[2J", "x"]), ("process_group", ["x" * 65, "x"]), ("is_p2p", "yes"),
])
def test_absurd_entries_are_skipped(field: str, value: object) -> None:
    d = gloo_dump(n=3, done=3)
    d["entries"][1][field] = value
    groups = F.timings(d, *now(10.0), after={})
    assert groups and groups[0].seqs == (1, 3)


def test_a_few_seconds_in_the_future_is_clock_noise_and_kept() -> None:
    d = gloo_dump(n=1, done=1)
    d["entries"][0]["time_created_ns"] = WALL0 + 12 * 10**9
    assert F.timings(d, *now(10.0), after={})[0].seqs == (1,)


def test_one_seq_twice_the_first_is_kept() -> None:
    d = gloo_dump(n=2, done=2)
    d["entries"].append(entry(2, 9.0))
    (g,) = F.timings(d, *now(10.0), after={})
    assert g.seqs == (1, 2) and g.enq_us[1] == (MONO0 + 2 * 10**9) // 1000


# -- the doc ------------------------------------------------------------------------------------
def test_doc_round_trip_json_and_the_wire_form_without_a_version() -> None:
    groups = F.timings(nccl_dump(), *now(10.0), after={})
    doc = json.loads(json.dumps(F.to_doc(groups)))
    assert F.from_doc(doc) == groups
    del doc["v"]                                              # as proto.convert passes it
    assert F.from_doc(doc) == groups
    assert F.from_doc({"groups": []}) == () == F.from_doc({})


def group_doc(**kw):
    return {"name": "0", "size": 4, "seqs": [1, 2], "enq_us": [10, 20], "dur_us": [-1, 5], **kw}


@pytest.mark.parametrize("doc, words", [
    ([], "a dict, not list"),
    ({"v": 2, "groups": []}, "version"),
    ({"groups": {"0": {}}}, "groups is a dict"),
    ({"groups": ["x"]}, "a group is a str"),
    ({"groups": [group_doc(seqs="12")]}, "must be lists"),
    ({"groups": [group_doc(seqs=[1])]}, "different lengths"),
    ({"groups": [group_doc(name="")]}, "group name"),
    ({"groups": [group_doc(name=7)]}, "group name"),
    ({"groups": [group_doc(name="a\nb")]}, "group name"),
    ({"groups": [group_doc(size=-1)]}, "size"),
    ({"groups": [group_doc(size=True)]}, "size"),
    ({"groups": [group_doc(size=1 << 30)]}, "size"),
    ({"groups": [group_doc(seqs=[2, 1])]}, "ascending"),
    ({"groups": [group_doc(seqs=[1, 1])]}, "ascending"),
    ({"groups": [group_doc(seqs=["1", 2])]}, "sequence id"),
    ({"groups": [group_doc(seqs=[1.0, 2])]}, "sequence id"),
    ({"groups": [group_doc(enq_us=[-1, 20])]}, "enqueued"),
    ({"groups": [group_doc(enq_us=[1e308, 20])]}, "enqueued"),
    ({"groups": [group_doc(enq_us=[1 << 60, 20])]}, "enqueued"),
    ({"groups": [group_doc(dur_us=[-2, 5])]}, "duration"),
    ({"groups": [group_doc(dur_us=[math.nan, 5])]}, "duration"),
    ({"groups": [group_doc(dur_us=[None, 5])]}, "duration"),
    ({"groups": [group_doc(), group_doc()]}, "twice"),
])
def test_from_doc_refuses_what_no_recorder_wrote(doc: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        F.from_doc(doc)


def test_from_doc_drops_what_is_over_the_bounds() -> None:
    n = F.MAX_PER_GROUP + 44
    groups = [{"name": str(i), "size": 0, "seqs": list(range(n)), "enq_us": list(range(n)),
               "dur_us": [-1] * n} for i in range(F.MAX_GROUPS + 5)]
    got = F.from_doc({"groups": groups})
    assert len(got) == F.MAX_GROUPS
    assert got[0].seqs == tuple(range(44, n))                 # the latest kept
    assert len(F.to_doc(got + got)["groups"]) == F.MAX_GROUPS


def test_checked_refuses_lists_and_other_types() -> None:
    with pytest.raises(ValueError, match="tuples"):
        F.checked(F.GroupTiming("0", 2, [1], [1], [1]))      # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a GroupTiming"):
        F.checked("0")                                        # type: ignore[arg-type]
    g = F.GroupTiming("0", 2, (1,), (1,), (-1,))
    assert F.checked(g) is g


def test_a_busy_group_is_sampled_by_a_stride_every_rank_agrees_on() -> None:
    from watchdog_d.core import frtiming as F

    def dump(n: int) -> dict:
        return {"version": "2.10", "pg_status": {"0": {"last_completed_collective": n}},
                "entries": [{"collective_seq_id": s, "profiling_name": "gloo:all_reduce",
                             "process_group": ("0", "default_pg"), "state": "scheduled",
                             "time_created_ns": 10**18 + s * 10**6, "is_p2p": False}
                            for s in range(1, n + 1)]}
    now = 10**18 + 10**9
    (few,) = F.timings(dump(10), now, 5 * 10**12, {}, target=16)
    assert few.seqs == tuple(range(1, 11))                     # few: every one
    (a,) = F.timings(dump(100), now, 5 * 10**12, {}, target=16)   # 100 / 16: stride 4
    (b,) = F.timings(dump(70), now, 5 * 10**12, {}, target=16)    # 70 / 16: stride 4
    (c,) = F.timings(dump(200), now, 5 * 10**12, {}, target=16)   # 200 / 16: stride 8
    assert all(s % 4 == 0 for s in a.seqs) and all(s % 8 == 0 for s in c.seqs)
    assert set(c.seqs) & set(a.seqs) and set(b.seqs) & set(a.seqs)
    assert set(x for x in c.seqs if x <= 100) <= set(a.seqs)      # a coarser stride: a subset
