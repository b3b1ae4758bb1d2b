"""Evidence from the collectives themselves: the ranks' flight recorders (pure).

On a GPU a hung collective leaves every rank alive, busy and outside any collective
frame: the host enqueued it and spins later in a CUDA sync. Stacks and CPU cannot tell
that from work; the flight recorder can. Per process group, each rank summarised (in
``core.frsummary``) its last enqueued / completed sequence id and its oldest pending
collective. Across the members of a group:

- the same collective pending on **every** member for longer than the stall timeout:
  it will not finish (``timeout``); where start states exist (NCCL with timing), the
  members that never started it are the culprits;
- the same sequence id with a different op, or different sizes where they must agree,
  on different members: NCCL waits forever on these (``mismatch``);
- some members wait in it, others never enqueued it (``behind``): those are the
  culprits. Whether a culprit is hung or busy is its own evidence (``stuck``).

Evidence must be current. "Pending for longer than the timeout" is read off each
waiter's dump (the entry's age when dumped); every member's dump must have been taken
after the waiters had waited that long, or the one that "never enqueued it" may have
done so since. Older dumps ask for fresh ones (``stale``); a member that does not
answer within the wait is named, and the stack rules decide instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .frsummary import describe, human_bytes, parse_ranges
from .model import GroupRecord, RankReport

# ops whose input sizes must agree on every member (all_to_all, gather, scatter and
# the v-collectives legitimately differ)
SAME_SIZES = ("all_reduce", "broadcast", "reduce", "allreduce_coalesced", "_allgather_base",
              "all_gather_into_tensor", "allgather", "all_gather", "_reduce_scatter_base",
              "reduce_scatter_tensor", "barrier")
D_HOLD_S = 3.0        # in D in every observation this long with no I/O: stuck in the kernel
D_HOLD_BLIND_S = 30.0  # ... this long when its I/O counters cannot be read
BUSY_CPU = 25.0       # % of a core: a rank this busy is working, or spinning
IO_MOVING_S = 3.0     # its I/O grew this recently: working on data (a slow filesystem), at 0% CPU


@dataclass(frozen=True)
class Finding:
    """What the flight recorders say of a job that made no step past its timeout.

    kind: timeout | mismatch | behind | stale (ask for fresh dumps) | wait (asked, the
    answers are on their way) | none (nothing decisive: the stack rules decide)."""

    kind: str
    group: GroupRecord | None = None
    seq: int = -1
    culprits: tuple[int, ...] = ()
    waiters: tuple[int, ...] = ()
    age_s: float = 0.0                  # pending on the waiters at least this long
    text: str = ""
    silent: tuple[int, ...] = ()        # ranks that did not answer the last request
    sides: tuple[tuple[int, str, str], ...] = field(default=())   # mismatch: (rank, op, sizes)


@dataclass(frozen=True)
class Member:
    rank: RankReport
    fr_age_s: float                     # since its summary was made, on the coordinator's clock
    step_age_s: float = math.inf        # since its last step, on the same clock


def op_name(op: str) -> str:
    """"nccl:all_reduce" -> "all_reduce"."""
    return op.rsplit(":", 1)[-1]


def what(g: GroupRecord, seq: int, op: str, nbytes: int) -> str:
    size = f", {human_bytes(nbytes)}" if nbytes > 0 else ""
    return f"{op_name(op)} #{seq} on {describe(g)}{size}"


def judge(members: list[Member], limit: float, asked_age_s: float, wait_s: float) -> Finding:
    """``members``: the job's live ranks with the age of their summaries (math.inf: none);
    ``limit``: the stall timeout; ``asked_age_s``: since summaries were last asked for
    (math.inf: never); ``wait_s``: how long an answer may take."""
    by_rank = {m.rank.rank: m for m in members}
    have = {r: m for r, m in by_rank.items() if m.rank.collectives and math.isfinite(m.fr_age_s)}
    if not have:
        return Finding("none")
    found: list[Finding] = []
    for name in sorted({g.name for m in have.values() for g in m.rank.collectives}):
        f = _group(name, by_rank, have, limit, asked_age_s, wait_s)
        if f is not None:
            found.append(f)
    if not found:
        return Finding("none")
    order = ("mismatch", "behind", "timeout", "wait", "stale", "none")
    return min(found, key=lambda f: (order.index(f.kind), -f.age_s))


STEP_SLACK_S = 0.25    # the rank's clocks (beacon, dump, file) agree to within this


def _records(name: str, have: dict[int, Member]) -> dict[int, GroupRecord]:
    out = {}
    for r, m in have.items():
        for g in m.rank.collectives:
            if g.name == name:
                out[r] = g
                break
    return out


def _waiting(records: dict[int, GroupRecord], have: dict[int, Member]) -> dict[int, GroupRecord]:
    """Each member's record with only the pending entries it can be waiting in (members
    without one left out): not one another member completed (every member entered
    that), nor one enqueued before its latest step (the step came after it), whatever
    the record says (gloo retires some entries late: they look pending for minutes)."""
    done = max(g.last_completed for g in records.values())
    out = {}
    for r, g in records.items():
        m = have[r]
        live = [p for p in (g.pending, *g.later) if p is not None and p.seq > done
                and p.age_s + m.fr_age_s <= m.step_age_s + STEP_SLACK_S]
        if live:
            out[r] = replace(g, pending=live[0], later=tuple(live[1:]))
    return out


def _group(name: str, by_rank: dict[int, Member], have: dict[int, Member], limit: float,
           asked_age_s: float, wait_s: float) -> Finding | None:
    records = _records(name, have)
    pending = _waiting(records, have)
    if not pending:
        return None
    sample = next(iter(pending.values()))
    members = _members(records)
    if members is None:
        return None                     # who belongs is unknown: nothing can be said of "every"
    seq = min(g.pending.seq for g in pending.values())
    waiters = {r: g for r, g in pending.items() if g.pending.seq == seq}
    # how long the waiters have waited, now: each waiter's entry age at its dump + since
    waited = min(g.pending.age_s + have[r].fr_age_s for r, g in waiters.items())
    if waited < limit:
        # enqueued after the last step, it reaches the timeout a little after the step
        # clock does: wait for it rather than call the stall a pause (and its dumps are
        # asked again once it is old enough); younger than half: nothing to say
        return Finding("wait", sample, seq) if waited >= limit / 2 else None
    if any(r not in by_rank for r in members):
        return None                     # a member this job's picture lacks (a silent node)
    for r in members:                   # answered, but never used the group: nothing enqueued
        if r in have and r not in records:
            records[r] = GroupRecord(name=name)
    silent = [r for r in members if r not in have]
    # every member's dump after the waiters had waited `limit`; else ask again
    oldest = max((have[r].fr_age_s for r in members if r in have), default=math.inf)
    if silent or waited - oldest < limit:
        late = sorted(r for r in members if r in silent or have[r].fr_age_s > asked_age_s)
        if late and asked_age_s < wait_s:
            return Finding("wait", sample, seq)
        if late and math.isfinite(asked_age_s):
            # asked, waited, and these never answered: the stack rules decide
            return Finding("none", sample, seq, silent=tuple(late))
        return Finding("stale", sample, seq)
    g0 = waiters[min(waiters)]
    label = what(g0, seq, g0.pending.op, g0.pending.nbytes)
    confirmed = min(g.pending.age_s for g in waiters.values())
    sides = _mismatch(waiters)
    if sides:
        (ra, opa, sa), (rb, opb, sb), at = sides
        text = (f"rank {ra} {op_name(opa)} {sa} vs rank {rb} {op_name(opb)} {sb} at #{at} "
                f"on {describe(g0)}: pending on every rank for {confirmed:.0f}s")
        sides = sides[:2]
        return Finding("mismatch", g0, seq, (rb,), tuple(sorted(waiters)), confirmed, text,
                       sides=sides)
    behind = tuple(sorted(r for r in members if r not in waiters
                          and records[r].last_enqueued < seq))
    if behind:
        who = ", ".join(f"rank {r} (last enqueued #{records[r].last_enqueued})" for r in behind[:8])
        more = f" and {len(behind) - 8} more" if len(behind) > 8 else ""
        text = (f"{label}: {len(waiters)} of {len(members)} ranks have waited in it for "
                f"{confirmed:.0f}s; never enqueued by {who}{more}")
        return Finding("behind", g0, seq, behind, tuple(sorted(waiters)), confirmed, text)
    if len(waiters) != len(members):
        return None                     # some member already completed it: not a hang of it
    started = {r for r, g in waiters.items() if g.pending.state == "started"}
    never = tuple(sorted(set(waiters) - started)) if started else ()
    text = f"{label}: pending on every rank for {confirmed:.0f}s, nothing in that group completing"
    if never:
        text += "; never started by " + ", ".join(f"rank {r}" for r in never[:8])
    return Finding("timeout", g0, seq, never, tuple(sorted(waiters)), confirmed, text)


def _members(records: dict[int, GroupRecord]) -> tuple[int, ...] | None:
    """The group's global ranks, from any member's record; without them, the reporting
    ranks when as many as the size (else unknown)."""
    for g in records.values():
        if g.ranks:
            try:
                return parse_ranges(g.ranks)
            except ValueError:
                continue
    sizes = {g.size for g in records.values() if g.size > 0}
    if len(sizes) == 1 and len(records) == next(iter(sizes)):
        return tuple(sorted(records))
    return None


def _mismatch(waiters: dict[int, GroupRecord]) -> tuple | None:
    """The first sequence id pending on two members as different collectives."""
    seen: dict[int, tuple[int, object]] = {}
    for r, g in sorted(waiters.items()):
        for b in (g.pending, *g.later):
            first = seen.setdefault(b.seq, (r, b))
            r0, a = first
            if r0 != r and (op_name(a.op) != op_name(b.op) or (
                    op_name(a.op) in SAME_SIZES and a.sizes and b.sizes and a.sizes != b.sizes)):
                return (r0, a.op, a.sizes), (r, b.op, b.sizes), b.seq
    return None


def stuck(r: RankReport) -> str | None:
    """Why this rank is hung rather than busy, from its own evidence; None: it may be
    working (CPU, its stack or its I/O moving)."""
    if r.proc_state in ("T", "t"):
        return "it is stopped (state T: SIGSTOP or a debugger)"
    held = held_in_d(r)
    if held:
        return held
    if io_moving(r):
        return None
    if r.cpu_percent < BUSY_CPU:
        return f"it is idle (CPU {r.cpu_percent:.0f}%)"
    if r.stack_still_s > 0 and r.io_still_s >= r.stack_still_s:
        return (f"it spins (CPU {r.cpu_percent:.0f}%) with a stack that did not move across dumps "
                f"{r.stack_still_s:.0f}s apart and no I/O for {r.io_still_s:.0f}s")
    return None


def io_moving(r: RankReport) -> bool:
    """Bytes still flow (a read from a slow network filesystem sits in D at no CPU); a
    chatty thread of a hung rank reads as working too: the cautious side."""
    return 0.0 <= r.io_still_s < IO_MOVING_S


def held_in_d(r: RankReport) -> str | None:
    """D is evidence only when it holds across observations with no I/O progress: one D
    sample is ordinary I/O (a write-back, a page fault, an NFS read)."""
    if r.proc_state != "D" or r.d_held_s <= 0:
        return None
    if r.io_still_s >= 0:
        if r.d_held_s >= D_HOLD_S and r.io_still_s >= D_HOLD_S:
            return (f"it is in uninterruptible sleep (state D) for {r.d_held_s:.0f}s with no "
                    f"I/O progress: stuck in the kernel (storage, a GPU driver)")
        return None
    if r.d_held_s >= D_HOLD_BLIND_S:
        return (f"it is in uninterruptible sleep (state D) for {r.d_held_s:.0f}s "
                f"(its I/O counters unreadable): stuck in the kernel")
    return None
