"""Detector rules (watchdog_d/core/detector.py), driven through Cluster with hand-built reports.

Every clock is a plain float; nothing sleeps.
"""
from __future__ import annotations

import pytest

from watchdog_d.core.model import RankReport, Verdict
from watchdog_d.core.state import Cluster
from wdtest_helpers import (SIGKILL, SIGSEGV, SIGTERM, dead, only_verdict, rank, report, spec,
                            two_nodes, verdict_decisions)



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
    """Ranks 0 and 1, alive, whose last step (of 0.5 s: the job's pace) was at t0 (node
    a's peers of a lost node stop stepping: every step ends in a collective with the lost
    ranks)."""
    return [rank(r, step=0, last_step_age_s=t - t0, last_step_dt_s=0.5) for r in (0, 1)]


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


# -- verdict helpers -------------------------------------------------------------------------
def test_verdict_one_line_and_rank_label() -> None:
    v = Verdict(job="j1", kind="rank_exited", rank=3, node="b", step=7, cause="boom")
    assert v.one_line() == "rank_exited rank 3 on b at step 7: boom"
    w = Verdict(job="j1", kind="collective_timeout", cause="hang")
    assert w.rank_label == "-" and w.one_line() == "collective_timeout rank -: hang"


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


def test_a_generic_exception_is_explained_by_the_cause_the_rank_warned_of() -> None:
    # Megatron: "Dataset does not exist: <path>" (said, and it went on), then an
    # AttributeError on the None it got: the missing dataset is what failed
    warned = _finding("file_not_found", severity="warning", age=4.0, line="Dataset does not exist: /data/x")
    exc = _finding("python_exception", severity="error", age=1.0,
                   line="AttributeError: 'NoneType' object has no attribute 'sizes'")
    c = Cluster()
    c.ingest(report("a", [dead(0, code=1, findings=(warned, exc)), rank(1, step=3)]), 100.0)
    _, v = only_verdict(c.evaluate(100.0))
    assert (v.kind, v.rank) == ("file_not_found", 0) and "/data/x" in v.cause
    # a warning after the exception, or one that names no cause, explains nothing
    later = _finding("file_not_found", severity="warning", age=0.5, line="Dataset does not exist: /data/y")
    c2 = Cluster()
    c2.ingest(report("a", [dead(0, code=1, findings=(exc, later)), rank(1, step=3)]), 100.0)
    _, v2 = only_verdict(c2.evaluate(100.0))
    assert v2.kind == "rank_exited" and "AttributeError" in v2.cause


def test_a_warning_and_an_exception_on_a_live_rank_are_no_verdict() -> None:
    # the twin: the rank warned, printed a handled exception and trains on
    warned = _finding("file_not_found", severity="warning", age=4.0, line="Dataset does not exist: /data/x")
    exc = _finding("python_exception", severity="error", age=1.0, line="KeyError: 'extra'")
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3, findings=(warned, exc)), rank(1, step=3)]), 100.0)
    assert [d for d in c.evaluate(100.0) if d.incident] == []
