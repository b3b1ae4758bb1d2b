"""Bad hardware leaves the job (core/exclusion.py, core/standby.py, through core/state.py):
on a relaunch a suspect node stays out; a spare takes its place, or an elastic job goes on
smaller, or the job ends gave_up with the reason."""
from __future__ import annotations

from dataclasses import replace

from watchdog_d.core import exclusion as X
from watchdog_d.core.model import LogFinding
from watchdog_d.core.state import Cluster
from wdtest_helpers import dead, rank, report, spec

XID = LogFinding(kind="gpu_xid", severity="fatal", role="cause",
                 line="NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus",
                 explanation="GPU lost", remedy="drain the node")
FIXED = spec(on_failure="restart", max_restarts=3, nnodes_min=2, nnodes_max=2, shape="s1")
ELASTIC = replace(FIXED, nnodes_min=1)


def sp(node: str, since: float = 0.0, shape: str = "s1") -> X.Spare:
    return X.Spare(node, since, since, shape)


def test_no_suspect_no_change() -> None:
    assert X.plan({"a": 0, "b": 1}, {}, [sp("c")], 2, 2) == X.Plan()


def test_a_spare_takes_the_suspect_nodes_place_and_its_node_rank() -> None:
    p = X.plan({"a": 0, "b": 1}, {"b": "gpu_xid"}, [sp("d", 5.0), sp("c", 1.0)], 2, 2)
    assert p.leaving == (("b", "gpu_xid"),) and p.taking == (("c", "b", 1),) and not p.gave_up
    assert "spare c takes the place of b (node rank 1)" in p.says()


def test_without_a_spare_a_fixed_job_gives_up_and_an_elastic_one_goes_on() -> None:
    p = X.plan({"a": 0, "b": 1}, {"b": "gpu_xid"}, [], 2, 2)
    assert p.gave_up == "no spare for b (fixed --nnodes 2)"
    assert X.plan({"a": -1, "b": -1}, {"b": "x"}, [], 1, 2).gave_up == ""
    assert "needs 2, 1 left" in X.plan({"a": -1, "b": -1, "c": -1}, {"b": "x", "c": "y"}, [], 2, 3).gave_up
    assert "not an elastic torchrun job" in X.plan({"a": -1, "b": -1}, {"b": "x"}, [], 0, 0).gave_up
    assert "no node of the job is left" in X.plan({"a": -1}, {"a": "x"}, [], 1, 2).gave_up


def test_two_exclusions_one_spare() -> None:
    p = X.plan({"a": 0, "b": 1, "c": 2}, {"a": "x", "c": "y"}, [sp("s")], 3, 3)
    assert p.taking == (("s", "a", 0),) and p.gave_up == "no spare for c (fixed --nnodes 3)"


def test_a_spare_gone_at_the_relaunch_is_replaced_by_another_or_the_job_gives_up() -> None:
    taking = (("s1", "b", 1),)
    assert X.reassign(taking, [sp("s1")], 1, 2, 2) == (taking, "")
    assert X.reassign(taking, [sp("s2")], 1, 2, 2) == ((("s2", "b", 1),), "")
    out, why = X.reassign(taking, [], 1, 2, 2)
    assert out == () and why.startswith("no spare for b") and "a spare left" in why


def test_usable_spares_are_alive_and_run_the_jobs_command() -> None:
    spares = {"c": X.Spare("c", 0.0, 10.0, "s1"), "d": X.Spare("d", 0.0, 1.0, "s1"),
              "e": X.Spare("e", 0.0, 10.0, "other")}
    assert [s.node for s in X.usable(spares, "s1", 11.0, 5.0)] == ["c"]


# -- through the coordinator's core -------------------------------------------------------
def _job(c: Cluster, job_spec=FIXED, t: float = 0.0) -> None:
    ra = report("a", [rank(0, step=5)], job_spec=job_spec)
    rb = report("b", [rank(1, step=5)], job_spec=job_spec)
    c.ingest(replace(ra, jobs=(replace(ra.jobs[0], node_rank=0),)), t)
    c.ingest(replace(rb, jobs=(replace(rb.jobs[0], node_rank=1),)), t)
    assert c.evaluate(t) == []


def _spare(c: Cluster, node: str, t: float, job_spec=FIXED) -> None:
    c.ingest(report(node, [], state="spare", job_spec=job_spec), t)


def _xid_on_b(c: Cluster, t: float, job_spec=FIXED):
    rb = report("b", [rank(1, step=5, findings=(XID,))], job_spec=job_spec)
    c.ingest(replace(rb, jobs=(replace(rb.jobs[0], node_rank=1),)), t)
    return c.evaluate(t)


def _down(c: Cluster, t: float, job_spec=FIXED, leaving: str = "b") -> list:
    c.ingest(report("a", [], state="waiting", job_spec=job_spec), t)
    c.ingest(report(leaving, [], state="exited", exit_code=75, job_spec=job_spec), t)
    return c.evaluate(t)


def test_a_gpu_verdict_with_a_spare_relaunches_at_full_size_on_the_spare() -> None:
    c = Cluster()
    _job(c)
    _spare(c, "c", 1.0)
    _spare(c, "d", 2.0)                           # two spares: the first come takes the place
    d = _xid_on_b(c, 3.0)
    verbs = {x.verb: x for x in d}
    restart = verbs["restart"]
    assert restart.nodes == ("a",) and restart.incident.action == "restart 1/3"
    assert "b leaves the job (suspect: gpu_xid" in restart.incident.verdict.cause
    assert "spare c takes the place of b (node rank 1)" in restart.incident.verdict.cause
    leave = verbs["leave"]
    assert leave.nodes == ("b",) and leave.note.startswith("suspect (gpu_xid")
    assert leave.incident.verdict.kind == "node_left" and not leave.alert
    assert [(o.verb, o.action[:17]) for o in c.standing_orders("b")] == [("leave", "suspect (gpu_xid ")]
    d = _down(c, 4.0)
    assert sorted((x.verb, x.nodes, x.attempt, x.node_rank) for x in d) == [
        ("relaunch", ("a",), 1, -1), ("relaunch", ("c",), 1, 1)]
    book = c.jobs["j1"]
    assert sorted(book.nodes) == ["a", "c"] and "b" in book.left
    assert [(o.verb, o.node_rank) for o in c.standing_orders("c")] == [("relaunch", 1)]
    # the spare reports itself (still a spare, launching): no change; then its attempt runs
    _spare(c, "c", 4.5)
    assert [(o.verb, o.node_rank) for o in c.standing_orders("c")] == [("relaunch", 1)]
    rc = report("c", [rank(1, step=5)], attempt=1, job_spec=FIXED)
    c.ingest(replace(rc, jobs=(replace(rc.jobs[0], node_rank=1),)), 5.0)
    c.ingest(report("a", [rank(0, step=5)], attempt=1, job_spec=FIXED), 5.0)
    assert c.evaluate(5.0) == [] and c.standing_orders("c") == []
    # the job ends well: the spare still standing by is told so
    for node, r in (("a", 0), ("c", 1)):
        c.ingest(report(node, [dead(r, code=0)], state="exited", attempt=1, job_spec=FIXED), 6.0)
    d = c.evaluate(6.0)
    assert "job_succeeded" in [x.incident.verdict.kind for x in d if x.incident]
    assert [o.verb for o in c.standing_orders("d")] == ["done"]


def test_a_gpu_verdict_without_a_spare_gives_up_with_the_reason() -> None:
    c = Cluster()
    _job(c)
    d = _xid_on_b(c, 3.0)
    (x,) = [x for x in d if x.incident]
    assert x.verb == "teardown" and x.nodes == ("a", "b") and x.incident.action == "gave_up"
    assert "gave up: no spare for b (fixed --nnodes 2)" in x.incident.verdict.cause


def test_an_elastic_job_relaunches_without_the_suspect_node() -> None:
    c = Cluster()
    _job(c, ELASTIC)
    d = _xid_on_b(c, 3.0, ELASTIC)
    assert [(x.verb, x.nodes) for x in d] == [("restart", ("a",)), ("leave", ("b",))]
    assert "the job relaunches with fewer nodes" in d[0].incident.verdict.cause
    d = _down(c, 4.0, ELASTIC)
    assert [(x.verb, x.nodes, x.attempt) for x in d] == [("relaunch", ("a",), 1)]
    # b, still reporting the job's old attempt, is told to leave, never to relaunch
    c.ingest(report("b", [rank(1, step=5)], job_spec=ELASTIC), 4.5)
    assert [o.verb for o in c.standing_orders("b")] == ["leave"]
    c.ingest(report("b", [], state="exited", exit_code=75, job_spec=ELASTIC), 5.0)
    assert c.standing_orders("b") == []


def test_a_non_hardware_failure_relaunches_on_every_node_as_before() -> None:
    c = Cluster()
    _spare(c, "c", 0.0)
    _job(c)
    c.ingest(report("b", [dead(1, code=1)], job_spec=FIXED), 3.0)
    d = c.evaluate(3.0)
    assert [(x.verb, x.nodes) for x in d] == [("restart", ("a", "b"))]
    c.ingest(report("a", [], state="waiting", job_spec=FIXED), 4.0)
    c.ingest(report("b", [], state="waiting", job_spec=FIXED), 4.0)
    assert [(x.verb, x.nodes) for x in c.evaluate(4.0)] == [("relaunch", ("a", "b"))]
    assert c.standing_orders("c") == []             # the spare keeps standing by


def test_the_spare_left_while_the_job_was_down_gives_up_then() -> None:
    c = Cluster()
    _job(c)
    _spare(c, "c", 1.0)
    _xid_on_b(c, 3.0)
    c.ingest(report("c", [], job_spec=FIXED).__class__(node_id="c", host="h", seq=9), 3.5)  # its wrapper is gone
    d = _down(c, 4.0)
    (x,) = d
    assert x.verb == "teardown" and x.incident.action == "gave_up" and x.nodes == ("a",)
    assert "no spare for b" in x.incident.verdict.cause and "a spare left" in x.incident.verdict.cause
    assert [(o.verb, o.action) for o in c.standing_orders("a")] == [("teardown", "gave_up")]


def test_a_spare_with_another_command_is_refused() -> None:
    c = Cluster()
    _job(c)
    _spare(c, "c", 1.0, replace(FIXED, shape="other"))
    (o,) = c.standing_orders("c")
    assert o.verb == "refuse" and "must run the job's command" in o.action


def test_a_spare_of_a_job_that_was_torn_down_is_told_so() -> None:
    c = Cluster()
    s = replace(FIXED, on_failure="teardown")
    _job(c, s)
    _spare(c, "c", 1.0, s)
    c.ingest(report("b", [dead(1, code=1)], job_spec=s), 2.0)
    c.evaluate(2.0)
    for node in ("a", "b"):
        c.ingest(report(node, [], state="exited", exit_code=75, job_spec=s), 3.0)
    c.evaluate(3.0)
    assert [(o.verb, o.action) for o in c.standing_orders("c")] == [("teardown", "teardown")]


def test_a_single_node_job_failing_again_and_again_marks_nothing() -> None:
    c = Cluster()
    s = spec(on_failure="restart", max_restarts=5)
    for attempt in range(3):
        c.ingest(report("a", [rank(0, step=5)], attempt=attempt, job_spec=s), 10.0 * attempt)
        c.ingest(report("a", [dead(0, code=1)], attempt=attempt, job_spec=s), 10.0 * attempt + 1)
        (d,) = c.evaluate(10.0 * attempt + 1)
        assert d.verb == "restart"
        c.ingest(report("a", [], state="waiting", attempt=attempt, job_spec=s), 10.0 * attempt + 2)
        c.evaluate(10.0 * attempt + 2)
    assert c.suspects.marked == {}


def _straggling(c: Cluster, job_spec, until: float) -> list:
    """Nodes a (rank 0) and b (rank 1) step every 0.1 s; rank 1 enqueues every collective
    40 ms after rank 0; timing batches every 5 s, heartbeats every second (one clock)."""
    from watchdog_d.core.frtiming import GroupTiming

    out, seq = [], 0
    t = 0.0
    while t <= until:
        step = int(t * 10)
        batch = int(t // 5)
        first, last = (batch - 1) * 50, batch * 50       # the collectives of the last 5 s
        for node, r, late in (("a", 0, 0.0), ("b", 1, 0.04)):
            timings = ()
            if batch > 0:
                seqs = tuple(range(first, last))
                timings = (GroupTiming("0", 2, seqs, tuple(int((s * 0.1 + late) * 1e6) for s in seqs),
                                       (-1,) * len(seqs)),)
            rr = rank(r, step=step, last_step_dt_s=0.1, timings=timings, timing_batch=batch)
            rep = report(node, [rr], job_spec=job_spec)
            c.ingest(replace(rep, sent_mono_s=t), t)
        out += c.evaluate(t)
        t += 1.0
    return out


def test_a_straggler_is_one_warning_and_with_exclude_stragglers_its_node_is_suspect() -> None:
    c = Cluster()
    s = replace(FIXED, exclude_stragglers=True)
    got = [d for d in _straggling(c, s, 60.0) if d.incident]
    assert [(d.verb, d.incident.verdict.kind, d.incident.verdict.rank, d.incident.verdict.node)
            for d in got] == [("none", "straggler", 1, "b")]
    v = got[0].incident.verdict
    assert v.advisory and "40 ms behind the median of its peers" in v.cause, v.cause
    assert "b" in c.suspects.marked and c.suspects.marked["b"].reason.startswith("straggler: ")
    assert [x["rank"] for x in __import__("watchdog_d.coordinator.status", fromlist=["x"]).job_status(
        c, c.jobs["j1"], 60.0)["stragglers"]] == [1]


def test_a_straggler_without_exclude_stragglers_marks_nothing() -> None:
    c = Cluster()
    got = [d for d in _straggling(c, FIXED, 60.0) if d.incident]
    assert [d.incident.verdict.kind for d in got] == ["straggler"]
    assert c.suspects.marked == {}


def test_status_shows_spares_the_nodes_that_left_and_stragglers() -> None:
    from watchdog_d.coordinator.status import render, snapshot

    c = Cluster()
    _job(c)
    _spare(c, "c", 1.0)
    _spare(c, "d", 2.0)
    _xid_on_b(c, 3.0)
    _down(c, 4.0)
    snap = snapshot(c, 4.0)
    (job,) = snap["jobs"]
    assert [s["node"] for s in job["spares"]] == ["d"]            # c took b's place
    assert [x["node"] for x in job["left"]] == ["b"] and job["left"][0]["reason"].startswith("gpu_xid")
    text = render(snap)
    assert "  spare d  standing by" in text and "  left: b  suspect (gpu_xid" in text
    c2 = Cluster()
    _straggling(c2, FIXED, 60.0)
    assert "STRAGGLER: rank 1 on b  40 ms behind its peers in 100 % of collectives" in render(snapshot(c2, 60.0))
