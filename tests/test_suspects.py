"""Suspect nodes (watchdog_d/core/suspects.py): a failed health check or the same culprit
again and again marks a node; status, /metrics and the next alerts say so."""
from __future__ import annotations

import pytest

from watchdog_d.coordinator.message import format_alert
from watchdog_d.coordinator.status import job_status, render, snapshot
from watchdog_d.core import suspects as S
from watchdog_d.core.model import LogFinding, Verdict
from watchdog_d.core.state import Cluster
from wdtest_helpers import dead, rank, report, spec


def v(job: str, kind: str, node: str, **kw: object) -> Verdict:
    return Verdict(**{"job": job, "kind": kind, "node": node, "rank": 0, "cause": "c", **kw})  # type: ignore[arg-type]


def test_a_health_verdict_marks_its_node_at_once() -> None:
    s = S.Suspects()
    marked = s.record(v("j", "gpu_xid", "b", cause="Xid 79: GPU has fallen off the bus"), 0.0)
    assert marked is not None and marked.node == "b" and "gpu_xid rank 0" in marked.reason
    assert [x.node for x in s.of(["a", "b"], 1.0)] == ["b"]
    assert s.of(["b"], S.KEEP_S + 1.0) == []          # it ages out


def test_the_same_culprit_twice_in_one_job_is_suspect_once_is_not() -> None:
    s = S.Suspects()
    assert s.record(v("j", "rank_exited", "b"), 0.0) is None
    assert s.record(v("other", "rank_exited", "c"), 1.0) is None
    marked = s.record(v("j", "rank_stalled", "b"), 2.0)
    assert marked is not None and "2 verdicts in a row of job j" in marked.reason
    assert s.record(v("j", "rank_exited", "a"), 3.0) is None   # the run is broken by a's verdict


def test_three_verdicts_of_different_jobs_within_the_window() -> None:
    s = S.Suspects()
    assert s.record(v("j1", "rank_exited", "c"), 0.0) is None
    assert s.record(v("j2", "rank_exited", "c"), 100.0) is None
    assert s.record(v("j3", "rank_exited", "c"), S.WINDOW_S + 1.0) is None     # the first is too old
    assert s.record(v("j4", "rank_exited", "c"), S.WINDOW_S + 2.0) is not None


def test_warnings_and_the_coordinators_own_trouble_mark_nothing() -> None:
    s = S.Suspects()
    for t in range(5):
        assert s.record(v("j", "agent_lost", "b", advisory=True), float(t)) is None
        assert s.record(Verdict(job="(coordinator)", kind="coordinator_isolated", node="b"), float(t)) is None
    assert s.marked == {}


def test_through_the_cluster_an_xid_marks_the_node_and_the_next_alert_says_so() -> None:
    c = Cluster()
    xid = LogFinding(kind="gpu_xid", severity="fatal", role="cause",
                     line="NVML: Xid 79 on GPU 1: GPU has fallen off the bus", explanation="GPU lost",
                     remedy="drain the node")
    one, two = spec("one", on_failure="alert"), spec("two")
    c.ingest(report("b", [rank(0, step=3)], job_spec=one), 0.0)
    c.ingest(report("a", [rank(0, step=3)], job_spec=two), 0.0)
    c.ingest(report("b", [rank(1, step=3)], job_spec=two), 0.0)
    assert c.evaluate(0.0) == []
    c.ingest(report("b", [rank(0, step=3, findings=(xid,))], job_spec=one), 1.0)
    (d,) = c.evaluate(1.0)
    assert d.incident.verdict.kind == "gpu_xid" and d.incident.verdict.suspect == ""   # type: ignore[union-attr]
    assert [m.node for m in c.suspected] == ["b"]
    snap = snapshot(c, 1.0)
    node_b = next(n for j in snap["jobs"] for n in j["nodes"] if n["node"] == "b")
    assert node_b["suspect"].startswith("gpu_xid rank 0")
    assert "SUSPECT: gpu_xid" in render(snap)
    assert job_status(c, c.jobs["two"], 1.0)["nodes"][0]["suspect"] is None    # node a
    # job two, which also runs on b, fails on a: its alert names b as suspect
    c.ingest(report("a", [dead(0, code=1, step=3)], job_spec=two), 2.0)
    (d,) = c.evaluate(2.0)
    assert d.job_id == "two" and d.incident is not None
    assert d.incident.verdict.suspect.startswith("b (gpu_xid rank 0")
    title, body = format_alert(d.incident)
    assert "\nsuspect: b (gpu_xid rank 0: " in body


def test_metrics_show_the_suspect_node(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import generate_latest

    from watchdog_d.config import Config
    from watchdog_d.coordinator.server import Coordinator

    co = Coordinator(Config(state_dir=str(tmp_path)))
    co.cluster.ingest(report("b", [rank(0, step=3)], job_spec=spec("one", on_failure="alert")), 0.0)
    co.cluster.suspects.record(v("one", "host_oom", "b"), co.clock())
    text = generate_latest(co.metrics.registry).decode()
    assert 'watchdogd_node_suspect{node="b"} 1.0' in text


def test_a_restarted_coordinator_remembers_its_suspect_nodes(tmp_path) -> None:
    """Markings are stored (SQLite, beside the incidents) and restored on start, with their
    age: a node marked an hour before a restart is still suspect after it, and ages out on
    time; a marking already older than KEEP_S is not brought back."""
    import time

    from watchdog_d.config import Config
    from watchdog_d.coordinator.server import Coordinator
    from watchdog_d.core.suspects import KEEP_S, Suspicion

    c = Coordinator(Config(state_dir=str(tmp_path)))
    c.cluster.suspected.append(Suspicion("node-7", "gpu_xid rank 3: Xid 79", c.clock() - 3600))
    c._log_errors()
    c._io.shutdown(wait=True)
    c._status_io.shutdown(wait=True)
    c.store.save_suspect("node-old", "host_oom rank 1", time.time() - KEEP_S - 60, forget_before=0.0)

    again = Coordinator(Config(state_dir=str(tmp_path)))
    try:
        now = again.clock()
        found = again.cluster.suspects.of(["node-7", "node-old", "node-8"], now)
        assert [(s.node, s.reason) for s in found] == [("node-7", "gpu_xid rank 3: Xid 79")]
        assert now - found[0].since == pytest.approx(3600, abs=5)
        assert again.cluster.suspects.of(["node-7"], now + KEEP_S - 3500) == []   # aged out on time
    finally:
        again._io.shutdown(wait=True)
        again._status_io.shutdown(wait=True)
