"""When must a job be looked at again? (pure)

The coordinator does not re-judge every job on every tick: a job is looked at when
a report changed something that matters (an exit, a finding, a section, a state) or
when the earliest moment comes at which the detector's answer could change with no
new report: a node's silence reaching the node timeout, a rank's step age reaching
half its timeout (stacks) or all of it, a section reaching its deadline. Steps that
keep coming only move those moments later, so a healthy job is looked at about once
per node timeout, at a cost of its own ranks. Every moment computed here is at or
before the real one (never late, at worst a look that finds nothing).
"""
from __future__ import annotations

import heapq
import math

from . import policy
from .book import BARRIER_CAP_S, JobBook
from .model import JobOnNode
from .lost import CATCH_UP_S
from .rootcause import failures
from .silence import Silence
from .finish import STACK_WAIT_S, began
from .stall import STACKS_REFRESH_S, rank_timeout, stall_timeout

SOON_S = 0.25        # something unsettled (a silence, a failure settling, a long pause)
MAX_WAIT_S = 5.0     # however quiet a job is, it is looked at this often
STACK_LOOK_S = 0.5   # while asked-for stacks are on their way
SILENT_S = 1.0       # a job with a node silent past node_timeout (its peers may stop yet)


def next_check(book: JobBook, now: float, silence: Silence) -> float:
    soon, latest = now + SOON_S, now + MAX_WAIT_S
    if book.relaunch_due:
        return _relaunch_moment(book, now, silence)
    if book.status != "running":
        return latest
    moments = [latest]
    if book.stacks_asked_at is not None:
        # a suspect or a long pause: its stacks come in by themselves (a report that
        # changes what matters); the timeout below, or the next refresh, is the moment
        moments.append(book.stacks_asked_at + STACKS_REFRESH_S)
    learned = stall_timeout(book.spec.min_stall_timeout_s, book.spec.stall_factor, book.steps.p99())
    ending = began(book)
    if ending is not None:
        # finishing (``finish``): past their limits, ranks are judged on fresh stacks and
        # the shutdown timeout, not looked at again and again
        moments.append(ending.since + book.spec.shutdown_timeout_s)
    if book.stacks_asked_at is not None and now - book.stacks_asked_at < STACK_WAIT_S:
        # stacks and flight-recorder summaries on their way: are they fresh yet? (and if
        # they never come, the rules go on without them once the wait is over)
        moments.append(min(now + STACK_LOOK_S, book.stacks_asked_at + STACK_WAIT_S))
    for node in book.nodes.values():
        if node.ended_at is not None:
            continue
        seen = silence.since(silence.seen.get(node.node_id, node.seen_at))
        lost_at = seen + book.spec.node_timeout_s
        if node.attempt_seen < book.attempt and book.attempt_started_at is not None:
            lost_at = max(lost_at, book.attempt_started_at + CATCH_UP_S + book.spec.node_timeout_s)
        if lost_at <= now:
            # silent: judged at once, then as its peers (the witnesses) report
            moments.append(now if lost_at == now else
                           now + (SOON_S if now - lost_at < SILENT_S else SILENT_S))
            continue
        moments.append(lost_at)
        fresh = silence.since(node.seen_at)
        for r in node.part.ranks:
            if not r.alive:
                continue
            rule, limit = rank_timeout(r.step, r.section_remaining_s, learned,
                                       book.spec.startup_timeout_s)
            halves, limits = [], []
            if rule == "section":
                limits.append(fresh + r.section_remaining_s)
            if rule != "section" or ending is not None:
                # (finishing: the step clock counts for a rank in a collective, section or not)
                if rule == "section":
                    _, limit = rank_timeout(r.step, math.inf, learned, book.spec.startup_timeout_s)
                stepped = fresh - r.last_step_age_s
                halves.append(stepped + limit / 2)
                limits.append(stepped + limit)
            # (a moment that is now: the detector's limits are strict, look again next tick)
            moments.extend(t for t in halves + limits if t >= now)
            past = max((t for t in limits if t <= now), default=None)
            if past is not None and (ending is None or now - past < SOON_S):
                # past its timeout: a verdict or a pause is being made; just past it, the
                # very next look (finishing: only then, then the stacks' and shutdown's moments)
                moments.append(now if now - past < SOON_S else soon)
    if ending is not None:
        moments = [t if t >= now else soon for t in moments if t >= now - SOON_S]
    if any(True for _ in failures(book)):
        return soon              # a consequence waits for its cause to arrive
    return max(now, min(min(moments), latest))


_FROZEN = ("T", "t", "D", "Z")


def signature(part: JobOnNode) -> tuple:
    """What of a job's part can bring a verdict sooner than the job's next deadline:
    not steps, ages or CPU (they only move deadlines later), but exits, frozen
    processes, sections, stacks, findings, checkpoints, the first step, states."""
    return (part.state, part.exit_code, part.note, part.run,
            tuple((r.rank, r.alive, r.proc_state in _FROZEN, r.section,
                   math.isfinite(r.section_remaining_s), len(r.stack), len(r.findings),
                   r.ckpt_step, r.step < 0, r.collectives) for r in part.ranks))


def _relaunch_moment(book: JobBook, now: float, silence: Silence) -> float:
    """The barrier waits for reports (a node's teardown done), a node's silence, its cap,
    then the backoff (``state.Cluster._relaunch_when_down``)."""
    if book.torn_down_at is not None:
        return max(now, min(now + MAX_WAIT_S, book.torn_down_at + policy.backoff_s(
            book.spec.restart_backoff_s, book.restarts)))
    asked = book.restart_asked_at if book.restart_asked_at is not None else now
    moments = [now + MAX_WAIT_S, asked + BARRIER_CAP_S, book.created_at + book.spec.node_timeout_s]
    moments += [silence.since(silence.seen.get(n.node_id, n.seen_at)) + book.spec.node_timeout_s
                for n in book.nodes.values()]
    later = [t for t in moments if t >= now]
    return min(later) if later else now


class Due:
    """Jobs to look at, by time: a heap with lazy deletion (a job's latest time wins)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}

    def at(self, job_id: str, when: float) -> None:
        if not math.isfinite(when):
            when = 0.0
        if self._at.get(job_id) == when:
            return
        self._at[job_id] = when
        heapq.heappush(self._heap, (when, job_id))

    def forget(self, job_id: str) -> None:
        self._at.pop(job_id, None)

    def pop_due(self, now: float) -> list[str]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, job_id = heapq.heappop(self._heap)
            if self._at.get(job_id) == when:
                del self._at[job_id]
                out.append(job_id)
        if len(self._heap) > 4 * len(self._at) + 64:      # stale entries: rebuild
            self._heap = [(t, j) for j, t in self._at.items()]
            heapq.heapify(self._heap)
        return out

    def next_at(self) -> float:
        while self._heap and self._at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._at)
