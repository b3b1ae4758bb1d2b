"""The agent's reading of one job attempt's rank logs: findings, tails, offsets.

Every poll reads what the ranks' tees appended (``rank-R.log`` under the
attempt's log directory), runs the fingerprint catalogue over it in blocks, and
keeps per rank: the findings worth reporting, the last lines (for the alert
excerpt), and the offset. Offsets and derived state are saved together, so an
agent restart neither reads a line twice nor skips one.
"""
from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import log
from .core.model import LogFinding
from .fingerprints import Catalogue, Finding
from .logtail import DirectoryTailer, OffsetStore

TAIL_LINES = 40
KEEP_FINDINGS = 8               # the first few causes and the latest few, per rank
READ_PER_POLL = 8 << 20         # bytes per poll for the whole attempt (back-pressure)
SAVE_EVERY_S = 1.0
_RANK_FILE = re.compile(r"^rank-(\d+)\.log$")


@dataclass
class RankLog:
    findings: list[tuple[float, Finding]] = field(default_factory=list)   # (seen, finding)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    offset: int = 0
    lines: int = 0

    def add(self, seen: float, f: Finding) -> None:
        self.findings.append((seen, f))
        if len(self.findings) > 2 * KEEP_FINDINGS:
            causes = [x for x in self.findings if x[1].role == "cause"][:KEEP_FINDINGS]
            latest = self.findings[-KEEP_FINDINGS:]
            keep = {id(x) for x in causes + latest}
            self.findings = [x for x in self.findings if id(x) in keep]


class AttemptLogs:
    def __init__(self, log_dir: str, state_file: str, catalogue: Catalogue,
                 clock=time.monotonic):
        self.log_dir = log_dir
        self.catalogue = catalogue
        self.clock = clock
        self.store = OffsetStore(state_file)
        positions, payload = ({}, {}) if not os.path.exists(state_file) else self.store.load_all()
        self.tailer = DirectoryTailer(log_dir, "rank-*.log", positions=positions)
        self.ranks: dict[int, RankLog] = {}
        self._restore(payload)
        self._dirty = False
        self._saved_at = float("-inf")

    def _restore(self, payload: dict) -> None:
        now = self.clock()
        for key, data in payload.get("ranks", {}).items():
            rl = self.ranks.setdefault(int(key), RankLog())
            rl.offset, rl.lines = int(data.get("offset", 0)), int(data.get("lines", 0))
            rl.tail.extend(data.get("tail", [])[-TAIL_LINES:])
            for f in data.get("findings", []):
                # ages restart at the agent restart: what matters is the order, kept
                rl.findings.append((now - float(f.pop("age_s", 0.0)), Finding(**f)))

    def _payload(self) -> dict:
        now = self.clock()
        return {"ranks": {str(r): {
            "offset": rl.offset, "lines": rl.lines, "tail": list(rl.tail),
            "findings": [{**f.as_dict(), "age_s": now - seen} for seen, f in rl.findings]}
            for r, rl in self.ranks.items()}}

    def poll(self) -> None:
        now = self.clock()
        for name, lines in self.tailer.read(READ_PER_POLL).items():
            m = _RANK_FILE.match(name)
            if not m or not lines:
                continue
            rl = self.ranks.setdefault(int(m.group(1)), RankLog())
            block = b"\n".join(l.data for l in lines) + b"\n"
            for f in self.catalogue.scan(block, lines[0].offset, rl.lines + 1):
                rl.add(now, f)
            rl.lines += len(lines)
            last = lines[-1]
            rl.offset = last.offset + len(last.data) + 1
            rl.tail.extend(l.data[:1000].decode("utf-8", "replace") for l in lines[-TAIL_LINES:])
            self._dirty = True
        if self._dirty and now - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        try:
            Path(self.store.path).parent.mkdir(parents=True, exist_ok=True)
            self.store.save(self.tailer.positions(), self._payload())
            self._dirty, self._saved_at = False, self.clock()
        except OSError as e:
            log.warn("offsets_save_failed", path=self.store.path, error=e.strerror)

    def view(self, rank: int) -> tuple[tuple[LogFinding, ...], int, str]:
        """(findings, log offset, tail text) of one rank, as of now."""
        rl = self.ranks.get(rank)
        if rl is None:
            return (), 0, ""
        now = self.clock()
        findings = tuple(LogFinding(
            kind=f.kind, severity=f.severity, role=f.role, line=f.line, line_no=f.line_no,
            age_s=max(0.0, now - seen), fields=tuple(sorted(f.fields.items())),
            explanation=f.explanation, remedy=f.remedy) for seen, f in rl.findings)
        return findings, rl.offset, "\n".join(rl.tail)

    def close(self) -> None:
        if self._dirty:
            self.save()
        self.tailer.close()


def with_logs(ranks: tuple, logs: AttemptLogs | None, stale_after_s: float) -> tuple:
    """The agent's rank reports, completed from the logs: findings, offset, and the
    log's last lines as excerpt where someone may need them (a dead rank, a rank
    with findings, a rank that stopped stepping)."""
    from dataclasses import replace

    if logs is None:
        return ranks
    out = []
    for r in ranks:
        findings, offset, tail = logs.view(r.rank)
        wanted = (not r.alive) or bool(findings) or r.last_step_age_s > stale_after_s
        out.append(replace(r, findings=findings, log_offset=offset,
                           excerpt=(tail or r.excerpt) if wanted else r.excerpt))
    return tuple(out)
