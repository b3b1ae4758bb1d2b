"""Cheap heartbeats: what changed since the report the coordinator last acked.

The agent observes ten times a second and reports every second, or sooner when
something changed; a rank's step moves every report, its stack or log excerpt
hardly ever. Once the coordinator says it keeps what it was sent (``ack.deltas``),
a report leaves out a job's spec and note and a rank's texts (stack, excerpt,
findings, exit detail, checkpoint path) that are as in the acked report; a
coordinator that cannot complete one (it restarted, an ack was lost) answers
``send_all`` and gets everything next time. Also used, unchanged, by the simulated
agents of ``integration/bench_coordinator.py``.
"""
from __future__ import annotations

import time

from ..core.model import GpuState, JobOnNode, NodeReport
from ..proto import convert
from ..proto import watchdog_pb2 as pb

MIN_GAP_S = 0.25     # between two reports a change triggered (an exit goes at once)


class Reporter:
    def __init__(self) -> None:
        self.deltas = False                          # the coordinator keeps what it was sent
        self.base: dict[str, JobOnNode] | None = None
        self.base_seq = 0
        self.sent_full = 0                           # reports that carried everything
        self.sent_delta = 0

    def heartbeat(self, report: NodeReport, leaving: bool = False) -> pb.Heartbeat:
        base = self.base if self.deltas else None
        if base is None:
            self.sent_full += 1
        else:
            self.sent_delta += 1
        hb = convert.report_to_pb(report, base, self.base_seq, leaving)
        # (when it leaves: the coordinator maps this node's clock onto its own by it, core.straggler)
        hb.sent_mono_s = time.monotonic()
        return hb

    def forget(self) -> None:
        """A new stream, or another coordinator: it holds nothing of ours, the next
        report carries everything."""
        self.deltas, self.base, self.base_seq = False, None, 0

    def acked(self, report: NodeReport, ack: pb.HeartbeatAck) -> bool:
        """Learn from an ack; True when the coordinator wants everything now."""
        self.deltas = ack.deltas
        if ack.send_all or not ack.deltas:
            self.base, self.base_seq = None, 0
            return ack.send_all
        self.base = {p.spec.job_id: p for p in report.jobs}
        self.base_seq = report.seq
        return False


def signatures(parts: tuple[JobOnNode, ...] | list[JobOnNode],
               gpus: tuple[GpuState, ...] = ()) -> tuple[tuple, tuple]:
    """(urgent, changed): what makes a report go now (an exit, a job's state), and what
    makes it go soon (MIN_GAP_S): a frozen process, a section, a stack, a finding, a
    checkpoint, a GPU lost or a new Xid or remap failure on it. A process flipping between
    running and sleeping is neither, nor a GPU's load, memory, heat or power (they move
    every sample: they go with the next regular report)."""
    urgent = tuple((p.spec.job_id, p.attempt, p.state, p.exit_code,
                    tuple((r.rank, r.alive) for r in p.ranks)) for p in parts)
    changed = tuple((p.spec.job_id, tuple((r.rank, r.proc_state if r.proc_state in "TtDZ" else "",
                                           r.section, len(r.stack), r.ckpt_step, len(r.findings))
                                          for r in p.ranks)) for p in parts)
    changed += tuple((g.index, g.lost, g.xid_count, g.remap_failure, g.recovery_action) for g in gpus)
    return urgent, changed
