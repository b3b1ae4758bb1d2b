"""``watchdog-d status``: the picture of every job, node and rank.

``snapshot`` is pure (cluster + clock -> dict); ``render`` turns it into the
table an operator reads.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from .. import log
from ..core.stall import stall_timeout
from ..core.book import JobBook
from ..core.state import Cluster


STATUS_FILE = "status.json"     # the daemon coordinator's, in its state dir
EMBEDDED_DIR = "status.d"       # one file per job guarded by an embedded coordinator
EMBEDDED_KEEP_S = 3600.0        # ... shown by `status` this long after it was last written


def embedded_status_path(state_dir: str, job_id: str) -> Path:
    """Where the coordinator embedded in ``watchdog-d run`` for ``job_id`` writes: two
    jobs on one machine share the state dir, not their status."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:120].lstrip(".") or "_"
    return Path(state_dir) / EMBEDDED_DIR / f"{name}.json"


def read_local(state_dir: str, now: float | None = None) -> dict:
    """`watchdog-d status` without --coordinator: the daemon's picture and those of the
    embedded coordinators written lately, merged (a job in both: the newer)."""
    now = time.time() if now is None else now
    files = [Path(state_dir) / STATUS_FILE]
    try:
        files += sorted((Path(state_dir) / EMBEDDED_DIR).glob("*.json"))
    except OSError:
        pass
    jobs: dict[str, tuple[float, dict]] = {}
    written = 0.0
    for i, path in enumerate(files):
        try:
            snap = json.loads(path.read_text())
            at = float(snap.get("written_at", 0.0))
            listed = list(snap["jobs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue        # none yet, or half-written by an older version: skip it
        if i > 0 and now - at > EMBEDDED_KEEP_S:
            continue
        written = max(written, at)
        for job in listed:
            if isinstance(job, dict) and (job.get("job") not in jobs or jobs[job["job"]][0] < at):
                jobs[job["job"]] = (at, job)
    return {"written_at": written, "jobs": [job for _, (_, job) in sorted(jobs.items())]}


def snapshot(cluster: Cluster, now: float) -> dict:
    return {"written_at": time.time(),
            "jobs": [job_status(cluster, book, now) for _, book in sorted(cluster.jobs.items())]}


def job_status(cluster: Cluster, book: JobBook, now: float) -> dict:
    """One job's part of the snapshot (the shell builds a large one a few jobs at a time)."""
    nodes = []
    for node_id, node in sorted(book.nodes.items()):
        seen = cluster.silence.seen.get(node_id, node.seen_at)
        since = now - node.seen_at
        ranks = []
        for r in sorted(node.part.ranks, key=lambda r: r.rank):
            ranks.append({
                "rank": r.rank, "local_rank": r.local_rank, "pid": r.pid,
                "state": ("alive:" + (r.proc_state or "?")) if r.alive else "exited",
                "exit_code": r.exit_code, "exit_signal": r.exit_signal,
                "step": r.step,
                "last_step_age_s": round(r.last_step_age_s + (since if r.alive else 0.0), 2),
                "section": r.section,
                "section_age_s": round(r.section_age_s + since, 2) if r.section else None,
                "cpu_percent": r.cpu_percent,
                "log_offset": r.log_offset,
            })
        marked = cluster.suspects.marked.get(node_id)
        nodes.append({"node": node_id, "host": node.host, "state": node.part.state,
                      "heartbeat_age_s": round(now - seen, 2), "ranks": ranks,
                      "suspect": marked.reason if marked else None,
                      "gpus": [asdict(g) for g in node.gpus]})
    p99 = book.steps.p99()
    return {
        "job": book.spec.job_id, "owner_uid": None if book.owner < 0 else book.owner,
        "attempt": book.attempt, "status": book.status,
        "outcome": book.outcome, "on_failure": book.spec.on_failure, "action": book.action,
        "restarts": book.restarts,
        "step_time_p99_s": round(p99, 4),
        "step_time_median_s": round(book.steps.median(), 4),
        "longest_pause_s": round(book.pauses.longest(), 2),
        "stall_timeout_s": round(stall_timeout(book.spec.min_stall_timeout_s,
                                               book.spec.stall_factor, p99), 2),
        "verdict": None if book.verdict is None else book.verdict.one_line(),
        "nodes": nodes,
        # standbys of the job, first come first; the nodes that left it (suspect) and why
        "spares": [{"node": s.node, "heartbeat_age_s": round(now - s.seen_at, 2)}
                   for s in sorted(cluster.standby.of(book.spec.job_id).values(),
                                   key=lambda s: (s.since, s.node))],
        "left": [{"node": n, "reason": why} for n, why in sorted({**book.left, **book.leaving}.items())],
        "stragglers": [{"rank": s.rank, "node": s.node, "lag_s": round(s.lag_s, 4),
                        "share": round(s.share, 3), "samples": s.samples, "basis": s.basis,
                        "loss": round(s.loss, 3)} for s in book.stragglers],
    }


def to_json(snap: dict) -> str:
    return status_text(snap["written_at"], [json.dumps(job) for job in snap["jobs"]],
                       snap.get("coordinator"))


def status_text(written_at: float, jobs: list[str], coordinator: dict | None = None) -> str:
    """The snapshot's JSON from its jobs' (made one at a time, between other work);
    ``coordinator``: --ha, who answers and who leads."""
    head = f'"coordinator": {json.dumps(coordinator)}, ' if coordinator else ""
    return f'{{{head}"written_at": {json.dumps(written_at)}, "jobs": [{",".join(jobs)}]}}'


def _age(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f}s"


GIB = float(1 << 30)


def gpu_flags(g: dict) -> list[str]:
    """What is wrong with a GPU, in words (none: healthy, as far as NVML says)."""
    flags = ["LOST"] if g.get("lost") else []
    if g.get("last_xid"):
        flags.append(f"Xid {g['last_xid']}" + (f" x{g['xid_count']}" if g.get("xid_count", 0) > 1 else ""))
    if g.get("ecc_uncorrected", -1) > 0:
        flags.append(f"ECC {g['ecc_uncorrected']}")
    if g.get("remapped_pending", -1) > 0:
        flags.append("remap pending")
    if g.get("remap_failure"):
        flags.append("remap failed")
    if g.get("recovery_action", -1) > 0:
        flags.append(f"recovery action {g['recovery_action']}")
    return flags


def gpu_line(g: dict) -> str:
    """One compact line: index, util %, mem used/total GiB, temp, power, flags ('-': not read)."""
    def read(key: str, fmt: str, scale: float = 1.0) -> str:
        x = g.get(key, -1)
        return "-" if x is None or x < 0 else fmt.format(x * scale)
    line = (f"    gpu {g['index']:<3} util {read('util_ratio', '{:.0f}%', 100.0):>4}  "
            f"mem {read('mem_used_bytes', '{:.1f}', 1 / GIB)}/{read('mem_total_bytes', '{:.0f}', 1 / GIB)} GiB  "
            f"{read('temperature_c', '{:.0f}')}°C  {read('power_w', '{:.0f}')} W")
    flags = gpu_flags(g)
    return line + ("  " + ", ".join(flags) if flags else "")


def _owner(uid: int | None) -> str:
    """``uid 1001 (alice)``: the name as this host knows the uid (the coordinator's host
    may not; users have one uid on every node of a cluster)."""
    if uid is None:
        return "-"
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def render(snap: dict) -> str:
    ha = snap.get("coordinator")
    lines = [] if not ha else [
        f"coordinator {ha['name']} ({ha['role']}, epoch {ha['epoch']})  leader: {ha['leader'] or 'none now'}"]
    if not snap.get("jobs"):
        return "\n".join([*lines, "no jobs"])
    for job in snap["jobs"]:
        lines.append(f"job {job['job']}  owner {_owner(job.get('owner_uid'))}  "
                     f"attempt {job['attempt']}  {job['status']}"
                     f"{'/' + job['outcome'] if job['outcome'] else ''}  "
                     f"stall timeout {job['stall_timeout_s']}s  policy {job['on_failure']}")
        if job["verdict"]:
            lines.append(f"  verdict: {job['verdict']}")
        for node in job["nodes"]:
            lines.append(f"  node {node['node']} ({node['host']})  {node['state']}  "
                         f"heartbeat {_age(node['heartbeat_age_s'])} ago")
            if node.get("suspect"):
                lines.append(f"    SUSPECT: {node['suspect']}")
            lines.extend(gpu_line(g) for g in node.get("gpus", ()))
            lines.append("    rank  pid      state      step     last step  section       log offset")
            for r in node["ranks"]:
                state = r["state"]
                if state == "exited":
                    state = f"exit:{r['exit_code'] if r['exit_signal'] is None else 'sig' + str(r['exit_signal'])}"
                lines.append(f"    {r['rank']:<5} {r['pid']:<8} {state:<10} {r['step']:<8} "
                             f"{_age(r['last_step_age_s']):>9}  {r['section'] or '-':<13} {r['log_offset']}")
        lines.extend(_extra(job))
    return "\n".join(lines)


def _extra(job: dict) -> list[str]:
    """Spares, nodes that left, stragglers."""
    out = [f"  spare {s['node']}  standing by, heartbeat {_age(s['heartbeat_age_s'])} ago"
           for s in job.get("spares", ())]
    out += [f"  left: {x['node']}  suspect ({x['reason']})" for x in job.get("left", ())]
    out += [f"  STRAGGLER: rank {s['rank']} on {s['node']}  {s['lag_s'] * 1000:.0f} ms behind its peers "
            f"in {s['share'] * 100:.0f} % of collectives" for s in job.get("stragglers", ())]
    return out


def write_status(path: Path, text: str, failing: bool) -> bool:
    """Replace the status file atomically; returns whether writing fails now (said once
    per episode, not every second)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
        if failing:
            log.log("status_write_recovered", path=str(path))
        return False
    except OSError as e:
        if not failing:
            log.warn("status_write_failed", path=str(path), error=e.strerror,
                     effect="'watchdog-d status' without --coordinator shows an old picture")
        return True
