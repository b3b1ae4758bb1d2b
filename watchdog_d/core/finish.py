"""The end of training (pure).

A job is *finishing* once one of its ranks has exited with status 0, or has destroyed
its default process group (the rank then holds a ``shutdown`` section until it exits).
No step will come any more, so not stepping is evidence of nothing: the rank that
uploads the final model while its peers have left, or waits on a metrics sync, is
healthy. What is still judged:

- a rank that waits inside a collective while a peer has finished: that collective
  cannot complete (uneven data across ranks, a rank that skipped a collective, an
  exception that sent one rank into destroy_process_group()). Judged at the stall
  timeout, as in training, on stacks dumped after the finishing began (an older stack
  can show the final barrier the rank has long left);
- a rank still inside destroy_process_group() past ``shutdown_timeout``: it hangs on
  its way out (a communicator that never closes) and holds its GPUs: torn down;
- any other rank that has not exited ``shutdown_timeout`` after the finishing began:
  a warning (``long_pause``), never a teardown: its work may be real.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import rootcause
from .book import JobBook, NodeView
from .model import RankReport
from .stall import STACKS_REFRESH_S, rank_timeout

SHUTDOWN = "shutdown:"        # the section a rank holds from destroy_process_group() to its exit
STACK_WAIT_S = 5.0            # stacks asked for arrive within this (dump + report): looked for


def waits_on_peers(r: RankReport) -> bool:
    """Is the rank's main thread blocked in torch.distributed (a collective, a store-based
    barrier, a send/recv)? Not in destroy_process_group(), its own way out, and not in a
    distributed checkpoint's file I/O. Only the main thread: a background thread always
    waits on something."""
    frames = rootcause.main_frames(r.stack)
    if not frames:
        return False
    path, _, fn = frames[0]
    return "torch/distributed/" in path and "torch/distributed/checkpoint/" not in path \
        and not any(f == "destroy_process_group" for _, _, f in frames)


def in_destroy(r: RankReport) -> bool:
    return any(fn == "destroy_process_group" for _, _, fn in rootcause.main_frames(r.stack))


@dataclass(frozen=True)
class Ending:
    since: float       # coordinator clock: when the first rank finished
    who: str           # "rank 1 exited with status 0", "rank 1 destroyed its process group"


@dataclass(frozen=True)
class Judgement:
    """What the finishing rules found: ``kind`` is ``rank_stalled`` (a teardown),
    ``long_pause`` (a warning), ``fresh_stacks`` (ask for stacks dumped from now) or
    ``suspect`` (watching, nothing to say)."""

    kind: str
    node: NodeView | None = None
    rank: RankReport | None = None
    after: float = 0.0
    cause: str = ""
    remedy: str = ""


def in_shutdown(r: RankReport) -> bool:
    return r.section.startswith(SHUTDOWN)


def began(book: JobBook) -> Ending | None:
    """When the job began to finish, or None while it trains."""
    first: tuple[float, RankReport] | None = None
    for node, r in book.ranks():
        if not r.alive and not r.failed:
            at = node.exit_at.get(r.rank, node.seen_at - r.exit_age_s)
        elif r.alive and in_shutdown(r):
            at = node.seen_at - r.section_age_s
        else:
            continue
        if first is None or at < first[0]:
            first = (at, r)
    if first is None:
        return None
    at, r = first
    return Ending(at, f"rank {r.rank} " + ("destroyed its process group" if r.alive
                                           else "exited with status 0"))


def _fresh(node: NodeView, r: RankReport, ending: Ending, now: float) -> bool:
    """Was the rank's stack dumped after the finishing began, and lately? (A rank that
    uploads, then waits in a barrier for a peer that left, is seen there by the next dump.)"""
    return node.seen_at - r.stack_age_s >= max(ending.since, now - STACKS_REFRESH_S - STACK_WAIT_S)


def judge(book: JobBook, now: float, ending: Ending, alive: list, learned: float) -> Judgement | None:
    """``alive``: (node, rank, its report's age) of the ranks that run and report."""
    timeout = book.spec.shutdown_timeout_s
    left, hung, lingering, stale = [], [], [], False
    for node, r, since in alive:
        fresh = _fresh(node, r, ending, now)
        if in_shutdown(r):
            inside = r.section_age_s + since
            if inside > timeout / 2 and not fresh:
                stale = True
            elif inside > timeout and in_destroy(r):
                hung.append((node, r, inside))
            elif inside > timeout:
                lingering.append((node, r, inside, fresh))
            continue
        _, limit = rank_timeout(r.step, math.inf, learned, book.spec.startup_timeout_s)   # (no section)
        age = r.last_step_age_s + since
        if age > limit / 2 and not fresh:
            stale = True       # (asked for at half the limit: fresh by the time it is reached)
        elif age > limit and waits_on_peers(r):
            left.append((node, r, age))
        # (a rank that still steps, its peers done: work of its own; its clock starts then)
        idle = min(age, now - ending.since)
        if idle > timeout:
            lingering.append((node, r, idle, fresh))
    if left:
        node, r, age = min(left, key=lambda x: x[1].rank)
        where = rootcause.where(r) or "unknown code"
        return Judgement("rank_stalled", node, r, age,
                         f"rank {r.rank} waits in a collective that cannot complete: "
                         f"{ending.who} {now - ending.since:.0f}s ago (it is in {where})",
                         "a rank ended training before its peers: give every rank the same "
                         "number of batches (DistributedSampler(drop_last=True), torch's Join) "
                         "and the same collectives; read the finished rank's log")
    if hung:
        node, r, age = min(hung, key=lambda x: x[1].rank)
        return Judgement("rank_stalled", node, r, age,
                         f"rank {r.rank} hangs in destroy_process_group() for {rootcause.duration(age)} "
                         f"after the end of training (timeout {rootcause.duration(timeout)})",
                         "training is over; the process hangs on its way out (a communicator "
                         "that does not close) and held its GPUs: check the final checkpoint")
    if lingering:
        node, r, idle, fresh = min(lingering, key=lambda x: x[1].rank)
        where = rootcause.where(r, frame_first=fresh)
        return Judgement("long_pause", node, r, idle,
                         f"rank {r.rank} has not exited {rootcause.duration(idle)} after the end of "
                         f"training ({ending.who})" + (f"; it is in {where}" if where else "") +
                         ": not torn down, still watched",
                         "nothing to do if it is busy on purpose (uploading the final model, a "
                         "metrics sync); if it hangs, its stack is below: stop the job yourself")
    if stale:
        asked = book.stacks_asked_at
        due = asked is None or asked < ending.since or now - asked >= STACKS_REFRESH_S
        return Judgement("fresh_stacks" if due else "suspect")
    return None
