"""A job's stragglers as the coordinator follows them: timing batches in, one ``straggler``
warning per episode out (pure; ``core.straggler`` does the measuring).

A straggler slows every rank of a synchronous job without failing anything: the verdict
is a warning, never a teardown, whatever the job's policy. An episode begins when some
rank is judged a straggler and ends when, at a later judgment, none is: one alert for
it, naming the worst rank (and the others, if several straggle), how late it is, what
share of the step the job loses, and what its node's GPUs say. With
``exclude_stragglers`` the node is also marked suspect, so it leaves the job at its next
relaunch (``core.exclusion``).
"""
from __future__ import annotations

from typing import Callable

from .book import JobBook
from .model import JobOnNode, Verdict
from .straggler import Lags, Straggler, gpu_note

JUDGE_EVERY_S = 5.0       # a job's stragglers are judged at most this often (timings come in batches)
MIN_STEPS = 10            # step times observed before the job's pace counts as known


def ingest(book: JobBook, node: str, part: JobOnNode, to_local: Callable[[float], float | None],
           now: float) -> bool:
    """The part's new timing batches into the job's lags; True when there were any."""
    new = False
    for r in part.ranks:
        if not r.timing_batch or book.timing_seen.get(r.rank) == r.timing_batch or not r.timings:
            continue
        book.timing_seen[r.rank] = r.timing_batch
        if book.lags is None:
            book.lags = Lags(book.spec.straggler_window, book.spec.straggler_lag)
        book.lags.add(r.rank, node, r.timings, to_local, now)
        new = True
    return new


def judge(book: JobBook, now: float) -> Verdict | None:
    """The warning that begins an episode, or None (the stragglers now: ``book.stragglers``)."""
    if book.lags is None or now - book.straggler_judged_at < JUDGE_EVERY_S:
        return None
    book.straggler_judged_at = now
    # the job's pace: the median step, never the first steps of an attempt (start-up)
    known = len(book.steps.samples) >= MIN_STEPS
    found = book.lags.judge(now, book.steps.median() if known else 0.0)
    began = found and not book.stragglers
    book.stragglers = found
    return _verdict(book, found) if began else None


def _verdict(book: JobBook, found: list[Straggler]) -> Verdict:
    worst = found[0]
    view = book.nodes.get(worst.node)
    rank = next((r for r in view.part.ranks if r.rank == worst.rank), None) if view else None
    local = rank.local_rank if rank is not None else -1
    basis = ("its GPU kernels are the shortest of its groups (NCCL timing)" if worst.basis == "gpu"
             else "it enqueues its collectives last")
    others = ", ".join(f"rank {s.rank} on {s.node} ({s.lag_s * 1000:.0f} ms)" for s in found[1:6])
    cause = (f"rank {worst.rank} on {worst.node} reaches {worst.share * 100:.0f} % of its collectives "
             f"late, {worst.lag_s * 1000:.0f} ms behind the median of its peers ({basis}; "
             f"judged on {worst.samples} collectives); the job "
             f"loses ~{worst.loss * 100:.0f} % of its step time; node {worst.node}: "
             f"{gpu_note(view.gpus if view else (), local)}" + (f"; also late: {others}" if others else ""))
    remedy = ("look at the node: GPU throttling (power, thermal), clocks, a degraded link or NIC, a "
              "noisy neighbour; " + ("it is marked suspect and leaves the job at its next relaunch"
                                     if book.spec.exclude_stragglers else
                                     "exclude_stragglers = true makes it leave the job at its next relaunch"))
    return Verdict(job=book.spec.job_id, kind="straggler", rank=worst.rank, node=worst.node,
                   host=view.host if view else "", step=book.last_step.get(worst.rank),
                   cause=cause, remedy=remedy, attempt=book.attempt, advisory=True)
