"""``watchdog-d diagnose PATH...``: classify the failures in log files, offline.

Each PATH is one job: a log file, a directory of them (ours: attempt-N/rank-R.log),
or a torchrun ``--log-dir`` tree (attempt_N/LOCAL_RANK/{stdout,stderr}.log and
error.json). Files are streamed in blocks (bounded memory whatever their size);
the same catalogue and the same root-cause rule as the live watchdog decide:
causes outrank consequences, certain causes probable ones, specific wordings generic
ones (the entry's priority), then the earliest (by the line's own timestamp when it
has one, else by file and line order). The launcher's own log (``launcher.log``
next to the ranks', torchrun's exit codes and signals) is read like any other.
Each root cause comes with its evidence: the lines (file:line) that back it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..core.rootcause import SEVERITY, explained_by
from .fingerprints import Catalogue, Finding, rank_from_text
from .redact import redact

BLOCK = 4 << 20                  # bytes scanned at a time
MAX_FILES = 20_000               # per PATH
MAX_JSON = 16 << 20              # error.json larger than this is scanned as text
MAX_EVIDENCE = 8                 # lines shown per root cause
LOG_NAMES = re.compile(r"(\.(log|txt|out|err)(\.\d+)?|^(stdout|stderr)|^error\.json)$")

# line timestamps, most specific first: glog header (E1122 05:24:32.301000), ISO 8601
_GLOG = re.compile(r"\b[EWIF](\d{1,2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d+)")   # (c10 writes "E626")
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?")


def line_time(line: str) -> float | None:
    """Seconds (comparable between lines of one job) from the line's own stamp."""
    m = _ISO.search(line)
    if m:
        y, mo, d, h, mi, s, frac = m.groups()
        try:
            return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s)).timestamp() + \
                float("0." + (frac or "0"))
        except ValueError:
            return None
    m = _GLOG.search(line)
    if m:
        mo, d, h, mi, s, frac = m.groups()
        try:   # glog carries no year: any fixed one keeps lines of one job comparable
            return datetime(2000, int(mo), int(d), int(h), int(mi), int(s)).timestamp() + \
                float("0." + frac)
        except ValueError:
            return None
    return None


@dataclass
class FileReport:
    path: str
    rank: int | None
    findings: list[Finding] = field(default_factory=list)
    skipped: str = ""                 # why (part of) the file was not read

    def root_cause(self) -> Finding | None:
        usable = [f for f in self.findings if f.severity in ("fatal", "error")]
        if not usable:
            return None
        return self.explained(min(usable, key=lambda f: (
            f.role != "cause", f.confidence != "certain", f.priority, SEVERITY[f.severity], f.line_no)))

    def explained(self, best: Finding) -> Finding:
        """A generic exception yields to the cause this file warned of just before it."""
        return explained_by(best, [f for f in self.findings if f.severity == "warning"
                                   and f.role == "cause" and f.line_no < best.line_no])


def rank_from_path(path: Path) -> int | None:
    m = re.search(r"rank[-_]?(\d+)", path.name)
    if m:
        return int(m.group(1))
    # torchrun --log-dir: .../attempt_N/<local_rank>/stderr.log (a local rank: the
    # best a path can tell; a [rankN]: prefix in the line wins when present)
    if path.parent.name.isdigit() and path.parent.parent.name.startswith("attempt_"):
        return int(path.parent.name)
    return None


def _lines_of_error_json(path: Path) -> bytes | None:
    try:
        if path.stat().st_size > MAX_JSON:
            return None
        data = json.loads(path.read_bytes())
        msg = data.get("message", data)
        if isinstance(msg, dict):
            text = str(msg.get("message", ""))
            extra = msg.get("extraInfo", {}) or {}
            text += "\n" + str(extra.get("py_callstack", ""))
            if extra.get("timestamp"):
                stamp = datetime.fromtimestamp(int(extra["timestamp"])).isoformat(sep=" ")
                text = "\n".join(f"{stamp} {line}" for line in text.splitlines())
        else:
            text = str(msg)
        return text.encode("utf-8", "replace")
    except (OSError, ValueError, TypeError, AttributeError, OverflowError):
        return None


def scan_file(path: Path, catalogue: Catalogue) -> FileReport:
    report = FileReport(str(path), rank_from_path(path))
    if path.name == "error.json":
        text = _lines_of_error_json(path)
        if text is not None:
            report.findings = catalogue.scan(text)
            return report
    try:
        with open(path, "rb") as f:
            offset, line_no, pending = 0, 1, b""
            while True:
                chunk = f.read(BLOCK)
                block = pending + chunk
                if not chunk:
                    if block:
                        report.findings += catalogue.scan(block, offset, line_no)
                    break
                cut = block.rfind(b"\n") + 1
                if cut == 0 and len(block) >= BLOCK:
                    cut = len(block)          # a line longer than a block: scan it in pieces
                if cut:
                    found, lines = catalogue.scan_counted(block[:cut], offset, line_no)
                    report.findings += found
                    line_no += lines
                    offset += cut
                pending = block[cut:]
    except OSError as e:
        report.skipped = f"unreadable: {e.strerror}"
    return report


def collect(root: Path) -> tuple[list[Path], str]:
    """The log files of one PATH (bounded), and a note about what was left out."""
    if root.is_file():
        return [root], ""
    files: list[Path] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if LOG_NAMES.search(name):
                seen += 1
                if len(files) < MAX_FILES:
                    files.append(Path(dirpath) / name)
    note = f"{seen - len(files)} more log files not read (limit {MAX_FILES})" \
        if seen > len(files) else ""
    return files, note


def _rank_of(report: FileReport, f: Finding) -> int | None:
    r = rank_from_text(f.line)
    return r if r is not None else report.rank


def job_root_cause(reports: list[FileReport]) -> tuple[FileReport, Finding] | None:
    """Causes first; then the earliest line time when stamped; then file, line order."""
    best = None
    for i, rep in enumerate(reports):
        for f in rep.findings:
            if f.severity not in ("fatal", "error"):
                continue
            t = line_time(f.line)
            # generic wordings (python_exception, torchrun's summary, "Some NCCL
            # operations have failed") carry a larger priority than specific ones
            key = (f.role != "cause", f.confidence != "certain", f.priority, t is None,
                   t or 0.0, i, f.line_no)
            if best is None or key < best[0]:
                best = (key, rep, f)
    return None if best is None else (best[1], best[1].explained(best[2]))


def _finding_json(rep: FileReport, f: Finding) -> dict:
    d = f.as_dict()
    d["line"] = redact(d.get("line", ""))
    d["rank"] = _rank_of(rep, f)
    return d


def _evidence(reports: list[FileReport], rep: FileReport, cause: Finding) -> list[dict]:
    """The lines behind a root cause: its own, then every other line of the same kind
    (torchrun's report and its table, the same failure on other ranks), file order."""
    lines = [(rep, cause)] + [(r, f) for r in reports for f in r.findings
                              if f.kind == cause.kind and f is not cause]
    return [{"path": r.path, "line": f.line_no, "rank": _rank_of(r, f),
             "text": redact(f.line)} for r, f in lines[:MAX_EVIDENCE]]


def _cause_json(rep: FileReport, f: Finding | None,
                reports: list[FileReport] | None = None) -> dict | None:
    if f is None:
        return None
    return {"kind": f.kind, "rank": _rank_of(rep, f), "line": f.line_no, "path": rep.path,
            "message": redact(f.line), "remedy": f.remedy, "confidence": f.confidence,
            "explanation": f.explanation, "evidence": _evidence(reports or [rep], rep, f)}


def diagnose(paths: list[str], catalogue: Catalogue | None = None) -> dict:
    catalogue = catalogue or Catalogue.load()
    out: dict = {"files": [], "jobs": []}
    for p in paths:
        files, note = collect(Path(p))
        reports = [scan_file(f, catalogue) for f in files]
        for rep in reports:
            out["files"].append({"path": rep.path, "rank": rep.rank,
                                 "root_cause": _cause_json(rep, rep.root_cause()),
                                 "findings": [_finding_json(rep, f) for f in rep.findings],
                                 **({"skipped": rep.skipped} if rep.skipped else {})})
        picked = job_root_cause(reports)
        consequences = []
        if picked:
            for rep in reports:
                for f in rep.findings:
                    if f is not picked[1] and f.severity in ("fatal", "error"):
                        consequences.append({"kind": f.kind, "rank": _rank_of(rep, f),
                                             "path": rep.path, "line": f.line_no})
        out["jobs"].append({"path": p, "files": len(files), "note": note,
                            "root_cause": _cause_json(*picked, reports) if picked else None,
                            "consequences": consequences[:200]})
    out["root_cause"] = next((j["root_cause"] for j in out["jobs"] if j["root_cause"]), None)
    return out


def render(result: dict) -> str:
    lines = []
    for job in result["jobs"]:
        lines.append(f"== {job['path']} ({job['files']} log files)")
        if job["note"]:
            lines.append(f"   note: {job['note']}")
        rc = job["root_cause"]
        if rc is None:
            lines.append("   no failure found")
            continue
        rank = "-" if rc["rank"] is None else rc["rank"]
        probable = " (probable)" if rc.get("confidence") == "probable" else ""
        lines.append(f"   root cause: {rc['kind']}{probable} on rank {rank}  ({rc['path']}:{rc['line']})")
        lines.append(f"   line:       {rc['message'][:300]}")
        if probable:
            lines.append(f"   why:        {rc['explanation']}")
        lines.append(f"   remedy:     {rc['remedy']}")
        for n, ev in enumerate(rc.get("evidence", [])):
            head = "   evidence:   " if n == 0 else " " * 15
            lines.append(f"{head}{ev['path']}:{ev['line']}  {ev['text'][:200]}")
        if job["consequences"]:
            kinds: dict[str, set] = {}
            for c in job["consequences"]:
                kinds.setdefault(c["kind"], set()).add("-" if c["rank"] is None else str(c["rank"]))
            summary = "; ".join(f"{k} on rank(s) {', '.join(sorted(v, key=str)[:12])}"
                                for k, v in sorted(kinds.items()))
            lines.append(f"   then:       {summary}")
    for f in result["files"]:
        if f.get("skipped"):
            lines.append(f"   skipped {f['path']}: {f['skipped']}")
    return "\n".join(lines)


def exit_status(result: dict) -> int:
    return 1 if any(j["root_cause"] for j in result["jobs"]) else 0
