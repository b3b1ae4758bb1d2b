"""Cheap heartbeats (proto/convert.py, agent/reporter.py): a report leaves out what the
coordinator already holds, and the coordinator completes it exactly."""
from __future__ import annotations

from dataclasses import replace

import pytest
from wdtest_helpers import STACK_IN_COLLECTIVE, dead, rank, report, spec

from watchdog_d.agent.reporter import Reporter, signatures
from watchdog_d.core.model import LogFinding, NodeReport
from watchdog_d.proto import convert
from watchdog_d.proto import watchdog_pb2 as pb

FINDING = LogFinding(kind="cuda_oom", line="CUDA out of memory", line_no=7, age_s=2.0,
                     explanation="oom", remedy="smaller batch")


def picture(seq: int, step: int, *, stack: str = STACK_IN_COLLECTIVE, note: str = "",
            findings: tuple = ()) -> NodeReport:
    ranks = [rank(r, step=step, last_step_age_s=0.1, stack=stack, excerpt="x" * 5000,
                  findings=findings, ckpt_path="/c/step-10.pt", ckpt_step=10) for r in range(8)]
    base = report("a", ranks, job_spec=spec(alert_urls=("json://127.0.0.1:1/x",),
                                            command="torchrun train.py " * 20))
    return replace(base, seq=seq, jobs=(replace(base.jobs[0], note=note),))


def roundtrip(reporter: Reporter, coord: dict, r: NodeReport, now: float) -> tuple[NodeReport, pb.Heartbeat]:
    """One report from the agent's Reporter to a coordinator's decoder and back (ack)."""
    hb = pb.Heartbeat.FromString(reporter.heartbeat(r).SerializeToString())
    try:
        got = convert.report_from_pb(hb, coord.get("base"), now)
    except convert.MissingBase:
        reporter.acked(r, pb.HeartbeatAck(seq=hb.seq, send_all=True, deltas=True))
        return None, hb  # type: ignore[return-value]
    assert got.sent_mono_s > 0          # (the agent's clock when it sent it: core.straggler maps it)
    got = replace(got, sent_mono_s=0.0)
    coord["base"] = convert.Base(got.seq, now, {p.spec.job_id: p for p in got.jobs})
    reporter.acked(r, pb.HeartbeatAck(seq=hb.seq, deltas=True))
    return got, hb


def test_unchanged_parts_are_left_out_and_restored_exactly() -> None:
    reporter, coord = Reporter(), {}
    first, hb1 = roundtrip(reporter, coord, picture(1, 10), 0.0)
    assert first == picture(1, 10) and not hb1.base_seq          # everything, the first time
    second, hb2 = roundtrip(reporter, coord, picture(2, 11), 1.0)
    assert second == picture(2, 11)
    assert hb2.base_seq == 1 and hb2.jobs[0].same_spec and all(r.same_text for r in hb2.jobs[0].ranks)
    assert hb2.jobs[0].spec.job_id == "j1" and not hb2.jobs[0].spec.command
    assert len(hb2.SerializeToString()) * 20 < len(hb1.SerializeToString())


def test_a_changed_stack_or_note_travels_once() -> None:
    reporter, coord = Reporter(), {}
    roundtrip(reporter, coord, picture(1, 10), 0.0)
    got, hb = roundtrip(reporter, coord, picture(2, 10, stack="new stack", note="n"), 1.0)
    assert got == picture(2, 10, stack="new stack", note="n")
    assert not hb.jobs[0].same_spec and not any(r.same_text for r in hb.jobs[0].ranks)
    got, hb = roundtrip(reporter, coord, picture(3, 11, stack="new stack", note="n"), 2.0)
    assert got == picture(3, 11, stack="new stack", note="n") and hb.jobs[0].ranks[0].same_text


def test_findings_left_out_keep_their_point_in_time() -> None:
    """A finding read 2 s before report 1 is 5 s old at report 2, 3 s later."""
    reporter, coord = Reporter(), {}
    roundtrip(reporter, coord, picture(1, 10, findings=(FINDING,)), 10.0)
    aged = (replace(FINDING, age_s=5.0),)
    got, hb = roundtrip(reporter, coord, picture(2, 10, findings=aged), 13.0)
    assert hb.jobs[0].ranks[0].same_text
    assert got.jobs[0].ranks[0].findings[0].age_s == pytest.approx(5.0)


def test_a_coordinator_without_the_base_asks_for_everything() -> None:
    reporter, coord = Reporter(), {}
    roundtrip(reporter, coord, picture(1, 10), 0.0)
    restarted: dict = {}                                  # a coordinator that restarted
    got, hb = roundtrip(reporter, restarted, picture(2, 11), 1.0)
    assert got is None and hb.base_seq == 1
    got, hb = roundtrip(reporter, restarted, picture(3, 12), 2.0)
    assert got == picture(3, 12) and not hb.base_seq


def test_a_lost_ack_makes_the_next_report_complete() -> None:
    """Report 2 reached the coordinator, its ack did not: the agent still deltas against
    1, the coordinator holds 2: it asks for everything rather than guess."""
    reporter, coord = Reporter(), {}
    roundtrip(reporter, coord, picture(1, 10), 0.0)
    hb2 = reporter.heartbeat(picture(2, 11))
    got2 = convert.report_from_pb(hb2, coord["base"], 1.0)
    coord["base"] = convert.Base(2, 1.0, {p.spec.job_id: p for p in got2.jobs})
    got, _ = roundtrip(reporter, coord, picture(3, 12), 2.0)      # deltas against 1
    assert got is None
    got, _ = roundtrip(reporter, coord, picture(4, 13), 3.0)
    assert got == picture(4, 13)


def test_a_new_rank_or_job_is_sent_whole() -> None:
    reporter, coord = Reporter(), {}
    roundtrip(reporter, coord, picture(1, 10), 0.0)
    more = picture(2, 10)
    other = report("a", [rank(0, stack="s")], job_spec=spec("j2")).jobs[0]
    more = replace(more, jobs=(replace(more.jobs[0], ranks=more.jobs[0].ranks + (rank(8, stack="s8"),)),
                               other))
    got, hb = roundtrip(reporter, coord, more, 1.0)
    assert got == more
    assert [r.same_text for r in hb.jobs[0].ranks][-1] is False and not hb.jobs[1].same_spec


def test_an_old_coordinator_gets_everything_every_time() -> None:
    reporter = Reporter()
    for seq in range(1, 4):
        hb = reporter.heartbeat(picture(seq, seq))
        reporter.acked(picture(seq, seq), pb.HeartbeatAck(seq=seq))      # no deltas field
        assert not hb.base_seq and not hb.jobs[0].same_spec
    assert reporter.sent_full == 3


def test_an_old_agent_is_understood() -> None:
    hb = convert.report_to_pb(picture(5, 10))
    assert convert.report_from_pb(hb, None, 0.0) == picture(5, 10)


def test_running_and_sleeping_is_no_reason_to_report() -> None:
    def part(state: str, alive: bool = True) -> tuple:
        r = rank(0, proc_state=state) if alive else dead(0, sig=9)
        return report("a", [r]).jobs

    assert signatures(part("R")) == signatures(part("S"))
    assert signatures(part("R"))[0] == signatures(part("T"))[0]
    assert signatures(part("R"))[1] != signatures(part("T"))[1]          # frozen: soon
    assert signatures(part("R"))[0] != signatures(part("R", alive=False))[0]   # exit: now


def test_a_leaving_report_says_so() -> None:
    hb = Reporter().heartbeat(picture(1, 1), leaving=True)
    assert convert.report_from_pb(hb, None, 0.0).leaving
