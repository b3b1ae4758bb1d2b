"""Collective timings on the wire (proto/convert.py): a batch travels once, is left out of
the next reports while it is the same (deltas), and a batch no flight recorder could have
written (absurd times: negative, past any clock, NaN where a float is) is refused."""
from __future__ import annotations

import pytest

from watchdog_d.agent.reporter import Reporter
from watchdog_d.core.frtiming import GroupTiming
from watchdog_d.core.model import JobOnNode, JobSpec, NodeReport, RankReport
from watchdog_d.proto import convert
from watchdog_d.proto import watchdog_pb2 as pb

T = (GroupTiming("0", 2, (5, 6, 7), (1_000_000, 1_100_000, 1_200_000), (-1, -1, -1)),)


def node(batch: int, timings=T, seq: int = 1) -> NodeReport:
    r = RankReport(rank=0, pid=10, step=5, timings=timings, timing_batch=batch)
    return NodeReport("n", "h", seq, (JobOnNode(spec=JobSpec(job_id="j"), ranks=(r,)),))


def through(reporter: Reporter, r: NodeReport, base=None) -> tuple[NodeReport, pb.Heartbeat]:
    hb = pb.Heartbeat.FromString(reporter.heartbeat(r).SerializeToString())
    return convert.report_from_pb(hb, base, 1.0), hb


def test_a_batch_goes_once_and_is_restored_from_the_base_while_the_same() -> None:
    reporter = Reporter()
    first, hb1 = through(reporter, node(3))
    assert first.jobs[0].ranks[0].timings == T and first.jobs[0].ranks[0].timing_batch == 3
    reporter.acked(node(3), pb.HeartbeatAck(seq=1, deltas=True))
    base = convert.Base(1, 0.0, {p.spec.job_id: p for p in first.jobs})
    second, hb2 = through(reporter, node(3, seq=2), base)
    assert hb2.jobs[0].ranks[0].same_text and not hb2.jobs[0].ranks[0].timings
    assert second.jobs[0].ranks[0].timings == T and second.jobs[0].ranks[0].timing_batch == 3
    third, hb3 = through(reporter, node(4, seq=3), base)       # a new batch: sent in full
    assert not hb3.jobs[0].ranks[0].same_text and len(hb3.jobs[0].ranks[0].timings) == 1


@pytest.mark.parametrize("bad", [
    dict(enq_us=[-5, 1, 2]),                      # before the clock began
    dict(enq_us=[1, 2, 1 << 62]),                 # past any monotonic clock
    dict(dur_us=[-7, -1, -1]),                    # a negative duration (-1: unknown)
    dict(dur_us=[10**15, -1, -1]),                # a collective running for 30 years
    dict(seqs=[7, 6, 5]),                         # not ascending
    dict(seqs=[1, 2]),                            # lengths differ
])
def test_absurd_timings_are_refused(bad: dict) -> None:
    m = pb.CollectiveTiming(group="0", size=2, seqs=[5, 6, 7], enq_us=[1, 2, 3], dur_us=[-1, -1, -1])
    for k, v in bad.items():
        getattr(m, k)[:] = v
    with pytest.raises(convert.WireError):
        convert.timings_from_pb(0, [m])


def test_a_heartbeat_with_an_absurd_clock_keeps_nothing_of_it() -> None:
    hb = pb.Heartbeat.FromString(Reporter().heartbeat(node(1)).SerializeToString())
    for value in (float("nan"), float("inf"), -3.0, 1e308):
        hb.sent_mono_s = value
        assert convert.report_from_pb(hb).sent_mono_s == 0.0      # (not said: the clock is not mapped)
