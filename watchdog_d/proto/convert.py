"""Conversions between the gRPC messages and the core's dataclasses."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

from ..core.model import MAX_TEXT, JobOnNode, JobSpec, LogFinding, NodeReport, RankReport, SpecError, Verdict
from . import watchdog_pb2 as pb
from .local import NOTE_MAX, RUN_MAX, from_plain



class WireError(ValueError):
    """A message that cannot be a valid report."""


def spec_to_pb(s: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(job_id=s.job_id, on_failure=s.on_failure, max_restarts=s.max_restarts,
                      min_stall_timeout_s=s.min_stall_timeout_s, stall_factor=s.stall_factor,
                      startup_timeout_s=s.startup_timeout_s, node_timeout_s=s.node_timeout_s,
                      alert_urls=list(s.alert_urls), command=s.command,
                      restart_backoff_s=s.restart_backoff_s, crash_loop=s.crash_loop)


def spec_from_pb(m: pb.JobSpec) -> JobSpec:
    """The spec an agent forwarded, checked by the same rules the agent applied."""
    try:
        return JobSpec(job_id=m.job_id, on_failure=m.on_failure, max_restarts=m.max_restarts,
                       min_stall_timeout_s=m.min_stall_timeout_s, stall_factor=m.stall_factor,
                       startup_timeout_s=m.startup_timeout_s, node_timeout_s=m.node_timeout_s,
                       alert_urls=tuple(m.alert_urls), command=m.command,
                       restart_backoff_s=m.restart_backoff_s, crash_loop=m.crash_loop).checked()
    except SpecError as e:
        raise WireError(f"job spec: {e}") from None


MAX_FINDINGS = 16      # per rank and heartbeat


def finding_to_pb(f: LogFinding) -> pb.Finding:
    return pb.Finding(kind=f.kind, severity=f.severity, role=f.role, line=f.line[:500],
                      line_no=f.line_no, age_s=f.age_s, fields=dict(f.fields),
                      explanation=f.explanation, remedy=f.remedy)


def finding_from_pb(m: pb.Finding) -> LogFinding:
    if not m.kind:
        raise WireError("finding without kind")
    if not math.isfinite(m.age_s):
        raise WireError("finding age is not a finite number")
    return LogFinding(kind=m.kind[:64], severity=m.severity[:16], role=m.role[:16],
                      line=m.line[:500], line_no=m.line_no, age_s=max(0.0, m.age_s),
                      fields=tuple(sorted((k[:64], v[:200]) for k, v in m.fields.items()))[:16],
                      explanation=m.explanation[:300], remedy=m.remedy[:300])


def rank_to_pb(r: RankReport) -> pb.RankState:
    return pb.RankState(
        rank=r.rank, local_rank=r.local_rank, pid=r.pid, alive=r.alive,
        has_exit_code=r.exit_code is not None, exit_code=r.exit_code or 0,
        exit_signal=r.exit_signal or 0, exit_detail=r.exit_detail, exit_age_s=r.exit_age_s,
        proc_state=r.proc_state, step=r.step, last_step_age_s=r.last_step_age_s,
        last_step_dt_s=r.last_step_dt_s, section=r.section,
        section_remaining_s=r.section_remaining_s, section_age_s=r.section_age_s,
        cpu_percent=r.cpu_percent,
        log_offset=r.log_offset, stack=r.stack[-MAX_TEXT:], excerpt=r.excerpt[-MAX_TEXT:],
        findings=[finding_to_pb(f) for f in r.findings[:MAX_FINDINGS]],
        ckpt_path=r.ckpt_path[:4096], ckpt_step=r.ckpt_step)


def rank_from_pb(m: pb.RankState) -> RankReport:
    for name in ("exit_age_s", "last_step_age_s", "last_step_dt_s", "cpu_percent", "section_age_s"):
        if not math.isfinite(getattr(m, name)):
            raise WireError(f"rank {m.rank}: {name} is not a finite number")
    if math.isnan(m.section_remaining_s):
        raise WireError(f"rank {m.rank}: section_remaining_s is NaN")
    return RankReport(
        rank=m.rank, local_rank=m.local_rank, pid=m.pid, alive=m.alive,
        exit_code=m.exit_code if m.has_exit_code else None, exit_signal=m.exit_signal or None,
        exit_detail=m.exit_detail[:500], exit_age_s=max(0.0, m.exit_age_s),
        proc_state=m.proc_state[:2], step=m.step, last_step_age_s=max(0.0, m.last_step_age_s),
        last_step_dt_s=max(0.0, m.last_step_dt_s), section=m.section[:64],
        section_remaining_s=m.section_remaining_s, section_age_s=max(0.0, m.section_age_s),
        cpu_percent=m.cpu_percent,
        log_offset=m.log_offset, stack=m.stack[-MAX_TEXT:], excerpt=m.excerpt[-MAX_TEXT:],
        findings=tuple(finding_from_pb(f) for f in m.findings[:MAX_FINDINGS]),
        ckpt_path=m.ckpt_path[:4096], ckpt_step=m.ckpt_step if m.ckpt_path else -1)


def report_to_pb(r: NodeReport) -> pb.Heartbeat:
    return pb.Heartbeat(node_id=r.node_id, host=r.host, seq=r.seq, jobs=[
        pb.JobOnNode(spec=spec_to_pb(j.spec), attempt=j.attempt, state=j.state,
                     exit_code=j.exit_code, ranks=[rank_to_pb(x) for x in j.ranks],
                     note=j.note[:NOTE_MAX], run=j.run)
        for j in r.jobs])


def report_from_pb(m: pb.Heartbeat) -> NodeReport:
    if not m.node_id:
        raise WireError("heartbeat without node_id")
    jobs = []
    for j in m.jobs:
        if j.state not in ("running", "exited", "stopped", "waiting"):
            raise WireError(f"bad job state {j.state!r}")
        jobs.append(JobOnNode(spec=spec_from_pb(j.spec), attempt=max(0, j.attempt), state=j.state,
                              exit_code=j.exit_code, ranks=tuple(rank_from_pb(x) for x in j.ranks),
                              note=j.note[:NOTE_MAX], run=j.run[:RUN_MAX]))
    return NodeReport(node_id=m.node_id[:200], host=m.host[:200], seq=m.seq, jobs=tuple(jobs))


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
