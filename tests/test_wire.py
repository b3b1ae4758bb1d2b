"""gRPC <-> core conversions (watchdog_d/convert.py)."""
from __future__ import annotations

import math

import pytest

from watchdog_d.proto import convert
from watchdog_d.core.model import JobOnNode, JobSpec, NodeReport, RankReport, Verdict
from watchdog_d.proto import watchdog_pb2 as pb


def sample_report() -> NodeReport:
    s = JobSpec(job_id="llama-7b", on_failure="restart", max_restarts=3, min_stall_timeout_s=30.0,
                stall_factor=4.0, startup_timeout_s=600.0, node_timeout_s=7.5,
                alert_urls=("json://h/p", "dingtalk://tok"), command="torchrun train.py")
    ranks = (
        RankReport(rank=0, local_rank=0, pid=4242, alive=True, proc_state="S", step=120,
                   last_step_age_s=1.25, last_step_dt_s=0.5, cpu_percent=97.5, log_offset=12345,
                   stack="Thread 0x1 (most recent call first):\n  File \"x.py\", line 1 in f\n"),
        RankReport(rank=1, local_rank=1, pid=4243, alive=True, proc_state="R", step=120,
                   section="checkpoint", section_remaining_s=812.5),
        RankReport(rank=2, local_rank=0, pid=4244, alive=False, exit_code=None, exit_signal=9,
                   exit_age_s=0.3, proc_state="X", step=119),
        RankReport(rank=3, local_rank=1, pid=4245, alive=False, exit_code=1, exit_signal=None,
                   exit_detail="RuntimeError: boom", exit_age_s=2.0, step=119,
                   excerpt="Traceback (most recent call last):\nRuntimeError: boom\n"),
        RankReport(rank=4, alive=False, exit_code=None, exit_signal=None, step=-1),  # vanished
        RankReport(rank=5, alive=False, exit_code=0, step=200),
    )
    return NodeReport(node_id="node-a", host="10.0.0.1", seq=77, jobs=(
        JobOnNode(spec=s, attempt=2, state="running", exit_code=0, ranks=ranks),
        JobOnNode(spec=JobSpec(job_id="other"), attempt=0, state="exited", exit_code=3, ranks=()),
    ))


def round_trip(r: NodeReport) -> NodeReport:
    data = convert.report_to_pb(r).SerializeToString()
    return convert.report_from_pb(pb.Heartbeat.FromString(data))


def test_round_trip_is_lossless() -> None:
    r = sample_report()
    back = round_trip(r)
    assert back == r


def test_special_values_survive() -> None:
    back = round_trip(sample_report())
    ranks = {x.rank: x for x in back.jobs[0].ranks}
    assert math.isinf(ranks[0].section_remaining_s) and ranks[0].section_remaining_s > 0
    assert ranks[1].section_remaining_s == 812.5
    assert ranks[2].exit_code is None and ranks[2].exit_signal == 9
    assert ranks[3].exit_code == 1 and ranks[3].exit_signal is None
    assert ranks[4].exit_code is None and ranks[4].exit_signal is None and ranks[4].failed
    assert ranks[5].exit_code == 0 and not ranks[5].failed
    assert ranks[4].step == -1


def test_negative_section_remaining_survives() -> None:
    r = NodeReport(node_id="n", jobs=(JobOnNode(spec=JobSpec("j"), ranks=(
        RankReport(rank=0, section="eval", section_remaining_s=-4.5),)),))
    assert round_trip(r).jobs[0].ranks[0].section_remaining_s == -4.5


def test_empty_report_round_trip() -> None:
    r = NodeReport(node_id="n")
    assert round_trip(r) == r


def test_long_texts_are_cut_from_the_front() -> None:
    big = "x" * 10 + "y" * convert.MAX_TEXT
    r = NodeReport(node_id="n", jobs=(JobOnNode(spec=JobSpec("j"), ranks=(
        RankReport(rank=0, stack=big, excerpt=big),)),))
    back = round_trip(r).jobs[0].ranks[0]
    assert back.stack == "y" * convert.MAX_TEXT and back.excerpt == "y" * convert.MAX_TEXT


def good_pb() -> pb.Heartbeat:
    return convert.report_to_pb(sample_report())


def _job(m: pb.Heartbeat) -> pb.JobOnNode:
    return m.jobs[0]


@pytest.mark.parametrize("mutate, match", [
    (lambda m: setattr(m, "node_id", ""), "node_id"),
    (lambda m: setattr(_job(m), "state", "paused"), "state"),
    (lambda m: setattr(_job(m), "state", ""), "state"),
    (lambda m: setattr(_job(m).spec, "job_id", ""), "job_id"),
    (lambda m: setattr(_job(m).spec, "on_failure", "reboot"), "on_failure"),
    (lambda m: setattr(_job(m).spec, "stall_factor", 0.0), "stall_factor"),
    (lambda m: setattr(_job(m).spec, "stall_factor", -5.0), "stall_factor"),
    (lambda m: setattr(_job(m).spec, "stall_factor", math.nan), "stall_factor"),
    (lambda m: setattr(_job(m).spec, "min_stall_timeout_s", 0.0), "min_stall_timeout_s"),
    (lambda m: setattr(_job(m).spec, "startup_timeout_s", math.inf), "startup_timeout_s"),
    (lambda m: setattr(_job(m).spec, "node_timeout_s", -1.0), "node_timeout_s"),
    (lambda m: setattr(_job(m).spec, "max_restarts", -1), "max_restarts"),
    (lambda m: setattr(_job(m).spec, "crash_loop", -1), "crash_loop"),
    (lambda m: setattr(_job(m).spec, "restart_backoff_s", math.nan), "restart_backoff_s"),
    (lambda m: setattr(_job(m).spec, "job_id", "a b"), "job_id"),
    (lambda m: setattr(_job(m).spec, "job_id", "j" * 200), "job_id"),
    (lambda m: _job(m).spec.alert_urls.extend(["json://h/x"] * 40), "alert_urls"),
    (lambda m: setattr(_job(m).ranks[0], "last_step_age_s", math.nan), "last_step_age_s"),
    (lambda m: setattr(_job(m).ranks[0], "exit_age_s", math.nan), "exit_age_s"),
    (lambda m: setattr(_job(m).ranks[0], "exit_age_s", math.inf), "exit_age_s"),
    (lambda m: setattr(_job(m).ranks[0], "last_step_dt_s", -math.inf), "last_step_dt_s"),
    (lambda m: setattr(_job(m).ranks[0], "cpu_percent", math.nan), "cpu_percent"),
    (lambda m: setattr(_job(m).ranks[1], "section_remaining_s", math.nan), "section_remaining_s"),
])
def test_bad_messages_raise_wire_error(mutate, match: str) -> None:
    m = good_pb()
    mutate(m)
    with pytest.raises(convert.WireError, match=match):
        convert.report_from_pb(pb.Heartbeat.FromString(m.SerializeToString()))


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(convert.WireError, ValueError)


def test_hostile_values_are_clamped() -> None:
    m = good_pb()
    m.node_id = "n" * 1000
    job = _job(m)
    job.attempt = -3
    job.spec.command = "c" * 5000
    r0 = job.ranks[0]
    r0.last_step_age_s = -5.0
    r0.proc_state = "RUNNING"
    r0.section = "s" * 500
    r0.exit_detail = "d" * 5000
    back = convert.report_from_pb(m)
    j = back.jobs[0]
    assert len(back.node_id) == 200
    assert j.attempt == 0 and len(j.spec.command) == 1000
    x = j.ranks[0]
    assert x.last_step_age_s == 0.0 and x.proc_state == "RU" and len(x.section) == 64
    assert len(x.exit_detail) == 500


def test_verdict_json_round_trip() -> None:
    v = Verdict(job="j", kind="rank_stalled", rank=2, node="b", host="h", step=9,
                detected_after_s=61.5, cause="c", remedy="r", excerpt="e", attempt=1,
                evidence=("one", "two"))
    assert convert.verdict_from_json(convert.verdict_to_json(v)) == v
    w = Verdict(job="j", kind="collective_timeout")
    assert convert.verdict_from_json(convert.verdict_to_json(w)) == w
    assert convert.verdict_from_json("") is None
