"""GPU state on the wire: the heartbeat's ``gpus`` both ways, hostile values refused, what
makes a report go sooner, and what the coordinator keeps and shows (status)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from watchdog_d.agent.reporter import Reporter, signatures
from watchdog_d.coordinator.status import gpu_line, render, snapshot
from watchdog_d.core.model import GpuState, JobOnNode, JobSpec, NodeReport, RankReport
from watchdog_d.core.state import Cluster
from watchdog_d.proto import convert
from watchdog_d.proto import watchdog_pb2 as pb

HEALTHY = GpuState(0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:1B:00.0",
                   util_ratio=0.9, mem_used_bytes=40 << 30, mem_total_bytes=80 << 30,
                   temperature_c=61.0, power_w=512.5, clocks_event_reasons=4, ecc_uncorrected=0,
                   remapped_pending=0, recovery_action=0)
BROKEN = GpuState(1, uuid="GPU-1", lost=True, last_xid=79, xid_count=2, remap_failure=True)


def report(gpus=(HEALTHY, BROKEN), seq: int = 1) -> NodeReport:
    part = JobOnNode(spec=JobSpec(job_id="j"), attempt=0, state="running",
                     ranks=(RankReport(rank=0, pid=10, alive=True, step=5),))
    return NodeReport(node_id="n1", host="h1", seq=seq, jobs=(part,), gpus=tuple(gpus))


def through(r: NodeReport, base=None) -> NodeReport:
    data = Reporter().heartbeat(r).SerializeToString() if base is None else \
        convert.report_to_pb(r, base, 1).SerializeToString()
    got = convert.report_from_pb(pb.Heartbeat.FromString(data),
                                 convert.Base(1, 0.0, {j.spec.job_id: j for j in r.jobs}), 1.0)
    return replace(got, sent_mono_s=0.0)      # (the sender's clock: core.straggler)


def test_gpus_round_trip_in_full_and_delta_reports() -> None:
    r = report()
    assert through(r) == r
    # a delta report leaves the job's texts out, never the GPUs
    assert through(replace(r, seq=2), base={j.spec.job_id: j for j in r.jobs}).gpus == r.gpus


def test_old_peers_both_ways() -> None:
    """An old agent sends no field 7: no GPUs. An old coordinator skips it (unknown field)."""
    old = pb.Heartbeat(node_id="n1", seq=1)
    assert convert.report_from_pb(pb.Heartbeat.FromString(old.SerializeToString())).gpus == ()
    data = convert.report_to_pb(report()).SerializeToString()
    old_view = pb.Heartbeat()
    old_view.MergeFromString(data)
    old_view.ClearField("gpus")          # what a coordinator without the field reads
    assert convert.report_from_pb(old_view).jobs == report().jobs


@pytest.mark.parametrize("change", [
    {"util_ratio": math.nan}, {"util_ratio": 1.5}, {"temperature_c": math.inf},
    {"power_w": -math.inf}, {"power_w": 1e300}, {"mem_used_bytes": 2**62},
    {"ecc_uncorrected": -5}, {"xid_count": 2**63 - 1}, {"index": -1}, {"last_xid": -3},
    {"uuid": "GPU-\n0"},
])
def test_hostile_gpu_values_refuse_the_report(change: dict) -> None:
    m = convert.report_to_pb(report())
    for k, v in change.items():
        setattr(m.gpus[0], k, v)
    with pytest.raises(convert.WireError):
        convert.report_from_pb(m)


def test_too_many_gpus_or_one_twice_refuse_the_report() -> None:
    m = convert.report_to_pb(report(gpus=[GpuState(i) for i in range(convert.MAX_GPUS + 1)]))
    assert len(m.gpus) == convert.MAX_GPUS            # the agent never sends more
    m.gpus.add(index=999)
    with pytest.raises(convert.WireError, match="GPUs, at most"):
        convert.report_from_pb(m)
    with pytest.raises(convert.WireError, match="twice"):
        convert.report_from_pb(convert.report_to_pb(report(gpus=[HEALTHY, HEALTHY])))


def test_gpu_load_does_not_hasten_a_report_a_lost_gpu_or_new_xid_does() -> None:
    parts = report().jobs
    base = signatures(parts, (HEALTHY,))
    busy = replace(HEALTHY, util_ratio=0.1, mem_used_bytes=1, temperature_c=80.0, power_w=700.0)
    assert signatures(parts, (busy,)) == base
    assert signatures(parts, (replace(HEALTHY, lost=True),))[1] != base[1]
    assert signatures(parts, (replace(HEALTHY, last_xid=79, xid_count=1),))[1] != base[1]
    assert signatures(parts, (replace(HEALTHY, lost=True),))[0] == base[0]    # soon, not now


def test_status_shows_each_nodes_gpus() -> None:
    c = Cluster()
    c.ingest(through(report()), 100.0)
    snap = snapshot(c, 100.0)
    gpus = snap["jobs"][0]["nodes"][0]["gpus"]
    assert [g["index"] for g in gpus] == [0, 1] and gpus[1]["lost"] and gpus[1]["last_xid"] == 79
    text = render(snap)
    assert "gpu 0   util  90%  mem 40.0/80 GiB  61°C  512 W" in text
    assert "gpu 1   util    -  mem -/- GiB  -°C  - W  LOST, Xid 79 x2, remap failed" in text
    c.ingest(through(report(gpus=(), seq=2)), 101.0)            # GPU checks went off
    assert snapshot(c, 101.0)["jobs"][0]["nodes"][0]["gpus"] == []


def test_gpu_line_flags() -> None:
    line = gpu_line({"index": 3, "ecc_uncorrected": 2, "remapped_pending": 1, "recovery_action": 2})
    assert line.endswith("ECC 2, remap pending, recovery action 2")
