"""Root cause, not symptoms.

When one rank fails, its peers fail after it: they lose their connection, time
out in the collective, are SIGTERMed by their launcher. Reading every rank's
exit and log findings, name the first real cause:

1. causes outrank consequences (an out-of-memory outranks "Connection closed
   by peer", whatever arrived first at the coordinator) -- unless the
   consequence came CONSEQUENCE_LEAD_S earlier: a "cause" that late is itself
   an aftermath (a launcher escalating SIGTERM to SIGKILL, say);
2. then the earliest in time (a failure is dated at its first cause line,
   else at its exit);
3. at equal times a crash outranks an exception, and a SIGTERM (a launcher
   cleaning up) comes last.
The rest are listed as consequences. While the best candidate is only a
consequence, the verdict waits ``SETTLE_S`` for the cause to arrive from
another node: naming the right rank is worth a second, a hang is not.
"""
from __future__ import annotations

import re
import signal as _signal
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .book import JobBook, NodeView
from .model import LogFinding, RankReport

SETTLE_S = 1.0
CONSEQUENCE_LEAD_S = 5.0
SEVERITY = {"fatal": 0, "error": 1, "warning": 2}      # most severe first


class _Said(Protocol):        # a finding, live (LogFinding) or offline (logs.Finding)
    kind: str


F = TypeVar("F", bound=_Said)


@dataclass(frozen=True)
class Failure:
    node: NodeView
    rank: RankReport
    at: float                         # coordinator clock
    finding: LogFinding | None
    is_cause: bool


def signame(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


GENERIC = "python_exception"      # the catalogue's last resort: says how a rank failed, not why


def explained_by(best: F, warned: list[F]) -> F:
    """A generic failure (an uncaught exception the catalogue has no class for) is
    explained by the cause the same rank warned of just before it and went on with: a
    dataset path that does not exist, then an AttributeError on the None it gave.
    ``warned``: the rank's cause-warnings older than ``best``, oldest first."""
    return warned[-1] if warned and best.kind == GENERIC else best


def best_finding(findings: tuple[LogFinding, ...]) -> LogFinding | None:
    """Causes first, then the most severe, then the earliest (largest age); a generic
    exception yields to the warning that explains it (``explained_by``)."""
    usable = [f for f in findings if f.severity in ("fatal", "error")]
    if not usable:
        return None
    best = min(usable, key=lambda f: (f.role != "cause", SEVERITY.get(f.severity, 3), -f.age_s))
    warned = sorted((f for f in findings if f.severity == "warning" and f.role == "cause"
                     and f.age_s > best.age_s), key=lambda f: -f.age_s)
    return explained_by(best, warned)


def _exit_is_cause(r: RankReport) -> bool:
    # a SIGTERM is a launcher cleaning up after someone else; anything else that
    # killed the rank (SIGKILL, SIGSEGV, vanished) is a cause in itself
    return r.exit_signal != _signal.SIGTERM


def _weight(r: RankReport) -> int:
    if r.alive:
        return 1
    if r.exit_signal == _signal.SIGTERM:
        return 2
    if r.exit_signal or r.exit_code is None:
        return 0
    return 1


def failures(book: JobBook) -> list[Failure]:
    """Every rank that failed: exited badly, or alive with a fatal log finding."""
    out = []
    for node, r in book.ranks():
        f = best_finding(r.findings)
        found_at = node.seen_at - f.age_s if f else None
        if r.failed:
            at = node.exit_at.get(r.rank, node.seen_at)
            if found_at is not None:
                at = min(at, found_at)
            is_cause = f.role == "cause" if f else _exit_is_cause(r)
        elif f is not None and f.severity == "fatal" and found_at is not None:
            at, is_cause = found_at, f.role == "cause"
        else:
            continue
        out.append(Failure(node, r, at, f, is_cause))
    return out


def order(failure: Failure) -> tuple:
    return (not failure.is_cause, round(failure.at, 1), _weight(failure.rank), failure.rank.rank)


def pick(book: JobBook, now: float) -> tuple[Failure, list[Failure]] | None:
    """(root cause, consequences), or None: nothing failed, or only consequences so
    far and the cause may still be on its way."""
    found = sorted(failures(book), key=order)
    if not found:
        return None
    earliest = min(found, key=lambda f: (round(f.at, 1), _weight(f.rank), f.rank.rank))
    if found[0].at - earliest.at > CONSEQUENCE_LEAD_S:
        found.remove(earliest)
        found.insert(0, earliest)
    first = found[0]
    if not first.is_cause and now - first.at < SETTLE_S:
        return None
    return first, found[1:]


def describe_consequences(rest: list[Failure], limit: int = 5) -> str:
    if not rest:
        return ""
    parts = []
    for f in rest[:limit]:
        what = f.finding.kind if f.finding else ("exited" if not f.rank.alive else "failing")
        if not f.rank.alive and f.rank.exit_signal:
            what += f" ({signame(f.rank.exit_signal)})"
        parts.append(f"rank {f.rank.rank} {what}")
    more = f" and {len(rest) - limit} more" if len(rest) > limit else ""
    return "; then, as consequences: " + ", ".join(parts) + more


def duration(s: float) -> str:
    """Seconds for people: "31s", "31 min"."""
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f} min"


def where(r: RankReport, frame_first: bool = False) -> str:
    """What the rank is doing, for people: its section, else its main thread's innermost
    frame (``frame_first``: the other way round)."""
    frames = main_frames(r.stack)
    frame = f"{frames[0][2]} ({frames[0][0].rsplit('/', 1)[-1]}:{frames[0][1]})" if frames else ""
    return (frame or r.section) if frame_first else (r.section or frame)


_THREAD = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):$", re.M)
_FRAME = re.compile(r'^\s+File "([^"]+)", line (\d+) in (\S+)$', re.M)


def main_frames(stack: str) -> list[tuple[str, int, str]]:
    """The main thread's frames in a faulthandler dump, innermost first: the thread that
    runs ``<module>``, else one that threading did not start. The latest such: a rank's
    stack file holds its dumps one after another (the main thread comes last in each)."""
    blocks = [[(f, int(n), fn) for f, n, fn in _FRAME.findall(b)] for b in _THREAD.split(stack)[1:]]
    for test in (lambda fr: any(fn == "<module>" for _, _, fn in fr),
                 lambda fr: fr and not any(fn == "_bootstrap" for _, _, fn in fr)):
        for frames in reversed(blocks):
            if test(frames):
                return frames
    return []
