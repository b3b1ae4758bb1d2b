"""Conversions between the gRPC messages and the core's dataclasses."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from ..core import frsummary, frtiming
from ..core.model import (JOB_STATES, MAX_NODES, MAX_SECONDS, MAX_TEXT, GpuState, GroupRecord, JobOnNode, JobSpec,
                          LogFinding, NodeReport, PendingCollective, RankReport, SpecError, Verdict)
from . import watchdog_pb2 as pb
from .local import NOTE_MAX, RUN_MAX, from_plain


class WireError(ValueError):
    """A message that cannot be a valid report."""


def spec_to_pb(s: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(job_id=s.job_id, on_failure=s.on_failure, max_restarts=s.max_restarts,
                      min_stall_timeout_s=s.min_stall_timeout_s, stall_factor=s.stall_factor,
                      startup_timeout_s=s.startup_timeout_s, node_timeout_s=s.node_timeout_s,
                      alert_urls=list(s.alert_urls), command=s.command,
                      restart_backoff_s=s.restart_backoff_s, crash_loop=s.crash_loop,
                      shutdown_timeout_s=s.shutdown_timeout_s, nnodes_min=s.nnodes_min,
                      nnodes_max=s.nnodes_max, shape=s.shape, straggler_window=s.straggler_window,
                      straggler_lag=s.straggler_lag, exclude_stragglers=s.exclude_stragglers)


_DEFAULT = JobSpec(job_id="-")      # (fields older agents do not send: 0)


def spec_from_pb(m: pb.JobSpec) -> JobSpec:
    """The spec an agent forwarded, checked by the same rules the agent applied."""
    try:
        return JobSpec(job_id=m.job_id, on_failure=m.on_failure, max_restarts=m.max_restarts,
                       min_stall_timeout_s=m.min_stall_timeout_s, stall_factor=m.stall_factor,
                       startup_timeout_s=m.startup_timeout_s, node_timeout_s=m.node_timeout_s,
                       alert_urls=tuple(m.alert_urls), command=m.command,
                       restart_backoff_s=m.restart_backoff_s, crash_loop=m.crash_loop,
                       shutdown_timeout_s=m.shutdown_timeout_s or _DEFAULT.shutdown_timeout_s,
                       nnodes_min=m.nnodes_min, nnodes_max=m.nnodes_max, shape=m.shape,
                       straggler_window=m.straggler_window or _DEFAULT.straggler_window,
                       straggler_lag=m.straggler_lag or _DEFAULT.straggler_lag,
                       exclude_stragglers=m.exclude_stragglers).checked()
    except SpecError as e:
        raise WireError(f"job spec: {e}") from None


MAX_FINDINGS = 16      # per rank and heartbeat
MAX_FIELDS = 64        # a finding's extracted fields (the catalogue's take a handful)
# What one heartbeat may hold. Decoding costs ~7 us a rank on the coordinator's one loop:
# 2 million empty ranks (4 MB on the wire) held it for 14 s. No node runs more processes.
MAX_JOBS, MAX_RANKS = 256, 4096
MAX_UID = 2**32 - 2           # (uid_t; 2**32 - 1 is "no uid")


def _duration(x: float) -> float:
    """A measured age or duration, finite already: within [0, MAX_SECONDS]. Past 30 days
    means nothing more, and a 1e308 step time would push the job's learned stall timeout
    to inf (for all its nodes): no rank of it would ever be judged stalled."""
    return x if 0.0 < x <= MAX_SECONDS else (0.0 if x <= 0.0 else MAX_SECONDS)


def _name(what: str, text: str) -> str:
    """A node id or host: it keys the coordinator's state and goes into log lines."""
    text = text[:200]
    if not text.isprintable():
        raise WireError(f"{what} holds control characters")
    return text


def finding_to_pb(f: LogFinding) -> pb.Finding:
    return pb.Finding(kind=f.kind, severity=f.severity, role=f.role, line=f.line[:500],
                      line_no=f.line_no, age_s=f.age_s, fields=dict(f.fields),
                      explanation=f.explanation, remedy=f.remedy)


def finding_from_pb(m: pb.Finding) -> LogFinding:
    if not m.kind:
        raise WireError("finding without kind")
    if not math.isfinite(m.age_s):
        raise WireError("finding age is not a finite number")
    if len(m.fields) > MAX_FIELDS:
        raise WireError(f"finding with {len(m.fields)} fields, at most {MAX_FIELDS}")
    return LogFinding(kind=m.kind[:64], severity=m.severity[:16], role=m.role[:16],
                      line=m.line[:500], line_no=m.line_no, age_s=_duration(m.age_s),
                      fields=tuple(sorted((k[:64], v[:200]) for k, v in m.fields.items()))[:16],
                      explanation=m.explanation[:300], remedy=m.remedy[:300])


MAX_GPUS = 64          # per node: 8 today, 72 in a rack is one NVLink domain, not one host
# What a GPU's numbers may be; -1 is "not read". Beyond: not a reading but a hostile or
# broken sender, and the report is refused (a 1e300 W would poison sums and graphs).
_GPU_FLOATS = (("util_ratio", 1.0), ("temperature_c", 1000.0), ("power_w", 100_000.0))
_GPU_COUNTS = (("mem_used_bytes", 1 << 50), ("mem_total_bytes", 1 << 50),
               ("ecc_uncorrected", 1 << 40), ("remapped_pending", 1 << 40),
               ("recovery_action", 1 << 16), ("xid_count", 1 << 40), ("sm_clock_mhz", 100_000),
               ("sm_clock_max_mhz", 100_000))


def gpu_to_pb(g: GpuState) -> pb.GpuState:
    return pb.GpuState(index=g.index, uuid=g.uuid[:96], name=g.name[:96], pci_bus_id=g.pci_bus_id[:32],
                       util_ratio=g.util_ratio, mem_used_bytes=g.mem_used_bytes,
                       mem_total_bytes=g.mem_total_bytes, temperature_c=g.temperature_c,
                       power_w=g.power_w, clocks_event_reasons=g.clocks_event_reasons & (2**64 - 1),
                       ecc_uncorrected=g.ecc_uncorrected, remapped_pending=g.remapped_pending,
                       remap_failure=g.remap_failure, recovery_action=g.recovery_action,
                       lost=g.lost, last_xid=g.last_xid, xid_count=g.xid_count,
                       sm_clock_mhz=max(0, g.sm_clock_mhz), sm_clock_max_mhz=max(0, g.sm_clock_max_mhz))


def gpu_from_pb(m: pb.GpuState) -> GpuState:
    if not 0 <= m.index < 1024:
        raise WireError(f"gpu index {m.index}")
    for name, top in _GPU_FLOATS:
        x = getattr(m, name)
        if not math.isfinite(x) or not (x == -1.0 or 0.0 <= x <= top):
            raise WireError(f"gpu {m.index}: {name} {x!r} is not a reading")
    for name, top in _GPU_COUNTS:
        if not -1 <= getattr(m, name) <= top:
            raise WireError(f"gpu {m.index}: {name} {getattr(m, name)} is not a reading")
    if not 0 <= m.last_xid < 1 << 16:
        raise WireError(f"gpu {m.index}: Xid {m.last_xid}")
    return GpuState(index=m.index, uuid=_name("gpu uuid", m.uuid[:96]), name=_name("gpu name", m.name[:96]),
                    pci_bus_id=_name("gpu pci bus id", m.pci_bus_id[:32]), util_ratio=m.util_ratio,
                    mem_used_bytes=m.mem_used_bytes, mem_total_bytes=m.mem_total_bytes,
                    temperature_c=m.temperature_c, power_w=m.power_w,
                    clocks_event_reasons=m.clocks_event_reasons, ecc_uncorrected=m.ecc_uncorrected,
                    remapped_pending=m.remapped_pending, remap_failure=m.remap_failure,
                    recovery_action=m.recovery_action, lost=m.lost, last_xid=m.last_xid,
                    xid_count=m.xid_count, sm_clock_mhz=m.sm_clock_mhz or -1,
                    sm_clock_max_mhz=m.sm_clock_max_mhz or -1)


def gpus_from_pb(ms) -> tuple[GpuState, ...]:
    """A node's GPUs, by index; refused when more than MAX_GPUS or an index twice (each
    is one series of the metrics: twice would be a broken exposition)."""
    if len(ms) > MAX_GPUS:
        raise WireError(f"{len(ms)} GPUs, at most {MAX_GPUS}")
    gpus = tuple(sorted((gpu_from_pb(m) for m in ms), key=lambda g: g.index))
    if len({g.index for g in gpus}) != len(gpus):
        raise WireError("a GPU index twice")
    return gpus


def group_to_pb(g: GroupRecord) -> pb.CollectiveGroup:
    m = pb.CollectiveGroup(name=g.name, desc=g.desc, size=g.size, ranks=g.ranks,
                           last_enqueued=g.last_enqueued, last_started=g.last_started,
                           last_completed=g.last_completed)
    if g.pending is not None:
        m.pending.CopyFrom(_pending_to_pb(g.pending))
        m.later.extend(_pending_to_pb(p) for p in g.later[:frsummary.MAX_LATER])
    return m


def _pending_to_pb(p: PendingCollective) -> pb.PendingCollective:
    return pb.PendingCollective(seq=p.seq, op=p.op, sizes=p.sizes, nbytes=p.nbytes, age_s=p.age_s,
                                state=p.state)


def _pending_from_pb(p: pb.PendingCollective) -> PendingCollective:
    return PendingCollective(seq=p.seq, op=_name("op", p.op[:64]), sizes=_name("sizes", p.sizes[:64]),
                             nbytes=p.nbytes, age_s=p.age_s, state=p.state[:16])


def group_from_pb(m: pb.CollectiveGroup) -> GroupRecord:
    """One group of a rank's flight-recorder summary; WireError when no recorder could
    have written it (``frsummary.checked``: absurd sequence ids, sizes or ages), or it
    holds control characters."""
    if len(m.later) > frsummary.MAX_LATER:
        raise WireError(f"collective group: {len(m.later)} later pending collectives")
    pending = _pending_from_pb(m.pending) if m.HasField("pending") else None
    try:
        return frsummary.checked(GroupRecord(
            name=_name("group name", m.name[:64]), desc=_name("group desc", m.desc[:64]),
            size=m.size, ranks=m.ranks[:frsummary.MAX_RANKS_TEXT + 1], last_enqueued=m.last_enqueued,
            last_started=m.last_started, last_completed=m.last_completed, pending=pending,
            later=tuple(_pending_from_pb(p) for p in m.later) if pending else ()))
    except ValueError as e:
        raise WireError(str(e)) from None


def rank_to_pb(r: RankReport, same_text: bool = False) -> pb.RankState:
    m = pb.RankState(
        rank=r.rank, local_rank=r.local_rank, pid=r.pid, alive=r.alive,
        has_exit_code=r.exit_code is not None, exit_code=r.exit_code or 0,
        exit_signal=r.exit_signal or 0, exit_age_s=r.exit_age_s,
        proc_state=r.proc_state, step=r.step, last_step_age_s=r.last_step_age_s,
        last_step_dt_s=r.last_step_dt_s, section=r.section,
        section_remaining_s=r.section_remaining_s, section_age_s=r.section_age_s,
        cpu_percent=r.cpu_percent, log_offset=r.log_offset, ckpt_step=r.ckpt_step,
        same_text=same_text,
        stack_age_s=max(r.stack_age_s, 1e-6) if math.isfinite(r.stack_age_s) and r.stack else 0.0,
        fr_age_s=max(r.fr_age_s, 1e-6) if math.isfinite(r.fr_age_s) else 0.0,
        io_still_s=r.io_still_s, d_held_s=r.d_held_s, stack_still_s=r.stack_still_s)
    if not same_text:
        m.collectives.extend(group_to_pb(g) for g in r.collectives[:frsummary.MAX_GROUPS])
        m.fr_note = r.fr_note[:300]
        m.exit_detail, m.stack, m.excerpt = r.exit_detail, r.stack[-MAX_TEXT:], r.excerpt[-MAX_TEXT:]
        m.findings.extend(finding_to_pb(f) for f in r.findings[:MAX_FINDINGS])
        m.ckpt_path = r.ckpt_path[:4096]
        m.timings.extend(timing_to_pb(t) for t in r.timings[:frtiming.MAX_GROUPS])
    m.timing_batch = r.timing_batch
    return m


def timing_to_pb(t) -> pb.CollectiveTiming:
    return pb.CollectiveTiming(group=t.name, size=t.size, seqs=t.seqs, enq_us=t.enq_us, dur_us=t.dur_us)


def timings_from_pb(rank: int, ms) -> tuple:
    """A rank's timing batch; WireError when no recorder could have written it."""
    if len(ms) > frtiming.MAX_GROUPS:
        raise WireError(f"rank {rank}: timings of {len(ms)} process groups, at most {frtiming.MAX_GROUPS}")
    try:
        return frtiming.from_doc({"groups": [
            {"name": m.group, "size": m.size, "seqs": list(m.seqs), "enq_us": list(m.enq_us),
             "dur_us": list(m.dur_us)} for m in ms]})
    except ValueError as e:
        raise WireError(f"rank {rank}: timings: {e}") from None


def rank_from_pb(m: pb.RankState, before: RankReport | None = None, aged_s: float = 0.0) -> RankReport:
    """``before``: the rank as in the base report (needed when the texts were left out),
    ``aged_s`` after it: its findings' ages grow by that much."""
    if not math.isfinite(m.exit_age_s + m.last_step_age_s + m.last_step_dt_s + m.cpu_percent
                         + m.section_age_s + m.stack_age_s + m.fr_age_s + m.io_still_s + m.d_held_s
                         + m.stack_still_s):   # (one test for ten: NaN and inf carry)
        for name in ("exit_age_s", "last_step_age_s", "last_step_dt_s", "cpu_percent", "section_age_s",
                     "stack_age_s", "fr_age_s", "io_still_s", "d_held_s", "stack_still_s"):
            if not math.isfinite(getattr(m, name)):
                raise WireError(f"rank {m.rank}: {name} is not a finite number")
        raise WireError(f"rank {m.rank}: its times add up to more than a number can hold")
    if math.isnan(m.section_remaining_s):
        raise WireError(f"rank {m.rank}: section_remaining_s is NaN")
    if m.same_text:
        if before is None:
            raise MissingBase(f"rank {m.rank}'s texts were left out")
        detail, stack, excerpt, path = before.exit_detail, before.stack, before.excerpt, before.ckpt_path
        findings = tuple(replace(f, age_s=f.age_s + aged_s) for f in before.findings) \
            if before.findings and aged_s > 0 else before.findings
        groups, note = before.collectives, before.fr_note
        timings = before.timings
    else:
        detail, stack, excerpt = m.exit_detail[:500], m.stack[-MAX_TEXT:], m.excerpt[-MAX_TEXT:]
        findings = tuple(finding_from_pb(f) for f in m.findings[:MAX_FINDINGS])
        path = m.ckpt_path[:4096]
        if len(m.collectives) > frsummary.MAX_GROUPS:
            raise WireError(f"rank {m.rank}: {len(m.collectives)} process groups, at most "
                            f"{frsummary.MAX_GROUPS}")
        groups = tuple(group_from_pb(g) for g in m.collectives)
        if len({g.name for g in groups}) != len(groups):
            raise WireError(f"rank {m.rank}: a process group twice")
        note = _name("fr_note", m.fr_note[:300])
        timings = timings_from_pb(m.rank, m.timings) if m.timings else ()
    remaining = m.section_remaining_s    # +-inf: no deadline (the core tests isfinite)
    remaining = max(-MAX_SECONDS, min(MAX_SECONDS, remaining)) if math.isfinite(remaining) else math.inf
    # positional, in RankReport's field order (a coordinator makes thousands a second)
    return RankReport(
        m.rank, m.local_rank, m.pid, m.alive, m.exit_code if m.has_exit_code else None,
        m.exit_signal or None, detail, _duration(m.exit_age_s), m.proc_state[:2], m.step,
        _duration(m.last_step_age_s), _duration(m.last_step_dt_s), m.section[:64],
        remaining, _duration(m.section_age_s), m.cpu_percent,
        m.log_offset, stack, excerpt, findings, path, m.ckpt_step if path else -1,
        _duration(m.stack_age_s) if m.stack_age_s > 0 and stack else math.inf,
        groups, _duration(m.fr_age_s) if m.fr_age_s > 0 and groups else math.inf, note,
        -1.0 if m.io_still_s < 0 else _duration(m.io_still_s), _duration(m.d_held_s),
        _duration(m.stack_still_s), timings, max(0, m.timing_batch))


def _text(r: RankReport) -> tuple:
    """What a rank's report may leave out when unchanged (findings without their age)."""
    return (r.stack, r.excerpt, r.exit_detail, r.ckpt_path,
            tuple((f.kind, f.line_no, f.line) for f in r.findings), r.collectives, r.fr_note,
            r.timing_batch)


def report_to_pb(r: NodeReport, base: dict[str, JobOnNode] | None = None, base_seq: int = 0,
                 leaving: bool = False) -> pb.Heartbeat:
    """The heartbeat of ``r``; with ``base`` (the parts of the report ``base_seq``, which
    the coordinator acked and keeps), what did not change since is left out."""
    jobs = []
    for j in r.jobs:
        prev = base.get(j.spec.job_id) if base is not None else None
        same_spec = prev is not None and prev.spec == j.spec and prev.note == j.note
        before = {x.rank: x for x in prev.ranks} if prev is not None else {}
        ranks = [rank_to_pb(x, (b := before.get(x.rank)) is not None and _text(b) == _text(x))
                 for x in j.ranks]
        part = pb.JobOnNode(attempt=j.attempt, state=j.state, exit_code=j.exit_code, ranks=ranks,
                            run=j.run, same_spec=same_spec)
        if j.owner >= 0:
            part.owner_uid = j.owner
        if j.node_rank >= 0:
            part.node_rank = j.node_rank
        if same_spec:
            part.spec.job_id = j.spec.job_id           # which job: the rest is as before
        else:
            part.spec.CopyFrom(spec_to_pb(j.spec))
            part.note = j.note[:NOTE_MAX]
        jobs.append(part)
    # GPUs in every report, whatever the base: small, and never a reason to ask for all
    return pb.Heartbeat(node_id=r.node_id, host=r.host, seq=r.seq, jobs=jobs,
                        base_seq=base_seq if base is not None else 0, leaving=leaving,
                        gpus=[gpu_to_pb(g) for g in r.gpus[:MAX_GPUS]], drain_failed=r.drain_failed[:300],
                        sent_mono_s=r.sent_mono_s)


class MissingBase(WireError):
    """The report leaves out parts of a report this side does not hold: ask for all."""


@dataclass
class Base:
    """What a coordinator keeps of a node's last report, for the next one to leave out."""

    seq: int
    at: float                        # when it came (coordinator clock)
    jobs: dict[str, JobOnNode]


def report_from_pb(m: pb.Heartbeat, base: Base | None = None, now: float = 0.0) -> NodeReport:
    """The report, completed from ``base`` where it left parts out. MissingBase when it
    leaves out what ``base`` does not hold (another seq, a job or rank it lacks)."""
    if not m.node_id:
        raise WireError("heartbeat without node_id")
    node_id, host = _name("node_id", m.node_id), _name("host", m.host)
    if len(m.jobs) > MAX_JOBS:
        raise WireError(f"{len(m.jobs)} jobs, at most {MAX_JOBS}")
    if sum(len(j.ranks) for j in m.jobs) > MAX_RANKS:
        raise WireError(f"more than {MAX_RANKS} ranks")
    gpus = gpus_from_pb(m.gpus)
    if m.base_seq and (base is None or base.seq != m.base_seq):
        if any(j.same_spec or any(x.same_text for x in j.ranks) for j in m.jobs):
            raise MissingBase(f"no report {m.base_seq} to complete this one from")
    jobs = []
    for j in m.jobs:
        if j.state not in JOB_STATES:
            raise WireError(f"bad job state {j.state!r}")
        prev = base.jobs.get(j.spec.job_id) if base is not None else None
        if j.same_spec:
            if prev is None:
                raise MissingBase("a job's spec was left out")
            spec, note = prev.spec, prev.note
        else:
            spec, note = spec_from_pb(j.spec), j.note[:NOTE_MAX]
        before = {x.rank: x for x in prev.ranks} if prev is not None else {}
        aged = max(0.0, now - base.at) if base is not None else 0.0
        owner = j.owner_uid if j.HasField("owner_uid") else -1
        if not -1 <= owner <= MAX_UID:
            raise WireError(f"bad owner uid {owner}")
        node_rank = j.node_rank if j.HasField("node_rank") else -1
        if not -1 <= node_rank < MAX_NODES:
            raise WireError(f"bad node rank {node_rank}")
        jobs.append(JobOnNode(spec=spec, attempt=max(0, j.attempt), state=j.state,
                              exit_code=j.exit_code,
                              ranks=tuple(rank_from_pb(x, before.get(x.rank), aged) for x in j.ranks),
                              note=note, run=j.run[:RUN_MAX], owner=owner, node_rank=node_rank))
    drain_failed = "".join(c if c.isprintable() else " " for c in m.drain_failed[:300])
    sent = m.sent_mono_s if math.isfinite(m.sent_mono_s) and 0.0 <= m.sent_mono_s <= 1e12 else 0.0
    return NodeReport(node_id=node_id, host=host, seq=m.seq, jobs=tuple(jobs),
                      leaving=m.leaving, gpus=gpus, drain_failed=drain_failed, sent_mono_s=sent)


def verdict_to_json(v: Verdict) -> str:
    return json.dumps(asdict(v))


def verdict_from_json(text: str) -> Verdict | None:
    """The verdict a Command carries; None when it carries none. WireError when garbled."""
    if not text:
        return None
    try:
        return from_plain(Verdict, json.loads(text))
    except (ValueError, RecursionError) as e:     # MessageError is a ValueError
        raise WireError(f"verdict: {e}") from None
