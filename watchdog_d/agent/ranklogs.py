"""The agent's reading of one job attempt's rank logs: findings, tails, offsets.

Every poll reads what the ranks' tees appended (``rank-R.log`` under the
attempt's log directory), runs the fingerprint catalogue over it in blocks, and
keeps per rank: the findings worth reporting, the last lines (for the alert
excerpt), and the offset. Offsets and derived state are saved together, so an
agent restart neither reads a line twice nor skips one.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import log
from ..core.model import LogFinding
from ..logs.directory import DirectoryTailer
from ..logs.fingerprints import Catalogue, Finding
from ..logs.tail import Block, OffsetStore

TAIL_LINES = 40
KEEP_FINDINGS = 8               # the first few causes and the latest few, per rank
READ_PER_POLL = 8 << 20         # bytes per poll for the whole attempt (back-pressure)
SAVE_EVERY_S = 1.0
POLL_S = 0.25                   # the agent reads logs this often (beacons every 0.1 s)
# ... and this often while they are quiet (the last poll read nothing): a poll of 8 quiet
# files was ~0.1 % of a core at 4 a second; what a rank writes before it dies is read at
# its death, and a burst from its second poll on at POLL_S
QUIET_POLL_S = 1.0
TAIL_LINE_MAX = 1000            # bytes of a line kept in the tail
_RANK_FILE = re.compile(r"^rank-(\d+)\.log$")
_FINDING_FIELDS = frozenset(f.name for f in fields(Finding))



@functools.cache
def keep_read_buffers() -> bool:
    """Let glibc keep freed read buffers instead of handing each back to the kernel.

    A poll reads ~256 KiB per rank into a fresh bytes object. glibc serves blocks that
    big with mmap and trims the heap top on free, so every poll page-faulted its
    buffers in again: ~0.3 % of a core at 8 MB/s (bench_tail.py). Blocks under 32 MiB
    from the heap, trimmed past 64 MiB: the agent's heap stays at its peak read size
    (READ_PER_POLL). False where there is no glibc mallopt (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 64 << 20))


def _log_finding(f: Finding, age_s: float, line_no: int | None = None) -> LogFinding:
    """A catalogue finding as it travels in a heartbeat."""
    return LogFinding(kind=f.kind, severity=f.severity, role=f.role, line=f.line,
                      line_no=f.line_no if line_no is None else line_no, age_s=age_s, fields=tuple(sorted(f.fields.items())),
                      explanation=f.explanation, remedy=f.remedy)

@dataclass
class RankLog:
    findings: list[tuple[float, Finding]] = field(default_factory=list)   # (seen, finding)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    offset: int = 0             # end of the last line read, in the file it is in
    lines: int = 0              # lines read: the last one's 1-based number

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
        keep_read_buffers()
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
        self._save_failing = False
        self.found = 0              # findings so far (the observer's cue to report)
        self.quiet = False          # the last poll read nothing

    def _restore(self, payload: dict) -> None:
        now = self.clock()
        ranks = payload.get("ranks", {})
        for key, data in (ranks.items() if isinstance(ranks, dict) else ()):
            try:
                rl = RankLog(offset=int(data.get("offset", 0)), lines=int(data.get("lines", 0)))
                rl.tail.extend(str(t) for t in data.get("tail", [])[-TAIL_LINES:])
                for f in data.get("findings", []):
                    # ages restart at the agent restart: what matters is the order, kept
                    kept = {k: v for k, v in f.items() if k in _FINDING_FIELDS}
                    rl.findings.append((now - float(f.get("age_s", 0.0)), Finding(**kept)))
                self.ranks[int(key)] = rl
            except (TypeError, ValueError, AttributeError) as e:
                # lines already read are not read again: this rank's findings are lost
                log.warn("log_state_unreadable", rank=key, error=str(e)[:200])

    def _payload(self) -> dict:
        now = self.clock()
        return {"ranks": {str(r): {
            "offset": rl.offset, "lines": rl.lines, "tail": list(rl.tail),
            "findings": [{**f.as_dict(), "age_s": now - seen} for seen, f in rl.findings]}
            for r, rl in self.ranks.items()}}

    def poll(self) -> None:
        now = self.clock()
        self.quiet = True
        for name, blocks in self.tailer.read_blocks(READ_PER_POLL).items():
            m = _RANK_FILE.match(name)
            if not m or not blocks:
                continue
            self.quiet = False
            rl = self.ranks.setdefault(int(m.group(1)), RankLog())
            for b in blocks:         # a block's lines start at b.offset + their index in b.data
                found, lines = self.catalogue.scan_counted(b.data, b.offset, rl.lines + 1)
                for f in found:
                    rl.add(now, f)
                self.found += len(found)
                rl.lines += lines
            last = blocks[-1]
            rl.offset = last.offset + len(last.data)    # (a cut line: where its first bytes end)
            rl.tail.extend(_last_lines(blocks, TAIL_LINES))
            self._dirty = True
        if self._dirty and now - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        try:
            Path(self.store.path).parent.mkdir(parents=True, exist_ok=True)
            self.store.save(self.tailer.positions(), self._payload())
            self._dirty, self._saved_at = False, self.clock()
            if self._save_failing:
                self._save_failing = False
                log.log("offsets_saved_again", path=self.store.path)
        except OSError as e:
            # a full disk: the logs are still read and classified; only a restarted agent
            # would read them again from the start. Tried again at the usual pace, said once
            self._saved_at = self.clock()
            if not self._save_failing:
                self._save_failing = True
                log.warn("offsets_save_failed", path=self.store.path, error=e.strerror,
                         effect="logs are still read; an agent restart would re-read them")

    def view(self, rank: int) -> tuple[tuple[LogFinding, ...], int, str]:
        """(findings, log offset, tail text) of one rank, as of now."""
        rl = self.ranks.get(rank)
        if rl is None:
            return (), 0, ""
        now = self.clock()
        findings = tuple(_log_finding(f, max(0.0, now - seen)) for seen, f in rl.findings)
        return findings, rl.offset, "\n".join(rl.tail)

    def classify(self, text: str) -> tuple[LogFinding, ...]:
        """Findings of a piece of text that is not (yet) in a log file."""
        found = self.catalogue.scan(text.encode("utf-8", "replace") + b"\n")
        return tuple(_log_finding(f, 0.0, line_no=-1) for f in found)   # not a log line

    def close(self) -> None:
        if self._dirty:
            self.save()
        self.tailer.close()


def _last_lines(blocks: list[Block], n: int) -> list[str]:
    """The last n lines of blocks, each cut to TAIL_LINE_MAX bytes. Found from the end
    (rfind): no pass over, nor copy of, the rest of a block."""
    out: list[bytes] = []
    for b in reversed(blocks):
        data, start = b.data, len(b.data) - 1          # data[start] is the last newline
        for _ in range(n - len(out)):
            if (start := data.rfind(b"\n", 0, start)) < 0:
                break                                   # fewer lines than wanted: all of them
        out[:0] = data[start + 1:-1].split(b"\n")
        if len(out) >= n:
            break
    return [ln[:TAIL_LINE_MAX].decode("utf-8", "replace") for ln in out]


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
        if not r.alive and r.excerpt and not findings:
            # the rank's own traceback (written before it marked its exit) may be ahead
            # of its log file: classify it now, so "Connection reset by peer" is known
            # for the consequence it is before any verdict is made
            findings = logs.classify(r.excerpt)
        wanted = (not r.alive) or bool(findings) or r.last_step_age_s > stale_after_s
        out.append(replace(r, findings=findings, log_offset=offset,
                           excerpt=(tail or r.excerpt) if wanted else r.excerpt))
    return tuple(out)
