"""From a job's picture and the time, the one verdict that matters (or none).

Order of questions, most certain first:
1. did a rank exit badly?            -> rank_exited   (the earliest exit is the culprit)
2. did a node's launcher fail alone? -> job_failed
3. did a node go silent?             -> node_lost when its peers corroborate
                                        (``lost``), agent_lost when they step on
4. is nobody making progress?        -> rank_stalled  (a culprit can be named)
                                        collective_timeout (all ranks stuck alike)
Half-way to a stall timeout the detector asks for stack dumps (SUSPECT), so the
culprit can be named from stacks when the timeout expires.
"""
from __future__ import annotations

import math
import re
import signal as _signal
from dataclasses import replace

from . import finish, flight, lost, rootcause
from .book import JobBook, NodeView
from .model import RankReport, Verdict
from .silence import QUIET_S, Silence
from .stall import rank_timeout, stall_timeout

SUSPECT = "suspect"
FR_UNAVAILABLE = "flight recorder not available"   # said in one verdict per job
FRESH_STACKS = "fresh_stacks"     # a suspect whose stacks must be dumped again, now

# a frame of the main thread in one of these files, or of one of these names, means the
# rank is inside (or waiting on) a collective. Only the main thread: a DataLoader's
# pin-memory thread and any other helper always wait on something (threading's ``wait``)
_COLLECTIVE_FILE = re.compile(r"torch/distributed/|torch/nn/parallel/distributed\.py|torch/autograd/")
_COLLECTIVE_NAME = re.compile(r"(all_reduce|barrier|all_gather|broadcast|reduce_scatter)$")


def _in_collective(r: RankReport) -> bool | None:
    """None: no main thread found in the rank's stack (nothing to go by)."""
    frames = rootcause.main_frames(r.stack)
    if not frames:
        return None
    return any(_COLLECTIVE_FILE.search(path) or _COLLECTIVE_NAME.match(fn) for path, _, fn in frames)


def exit_cause(r: RankReport) -> str:
    if r.exit_signal:
        return f"rank process was killed by {rootcause.signame(r.exit_signal)}"
    if r.exit_code is None:
        return ("rank process vanished without a clean exit (killed by a signal such as "
                "SIGKILL from the OOM killer, or os._exit)")
    detail = f": {r.exit_detail}" if r.exit_detail else ""
    return f"rank process exited with status {r.exit_code}{detail}"


def _verdict(book: JobBook, kind: str, node: NodeView | None, r: RankReport | None,
             after: float, cause: str, remedy: str, excerpt: str = "") -> Verdict:
    return Verdict(job=book.spec.job_id, kind=kind, rank=None if r is None else r.rank,
                   node="" if node is None else node.node_id,
                   host="" if node is None else node.host,
                   step=None if r is None else r.step, detected_after_s=max(0.0, after),
                   cause=cause, remedy=remedy, excerpt=excerpt, attempt=book.attempt)


def detect(book: JobBook, now: float, silence: Silence) -> Verdict | str | None:
    for node in book.nodes.values():      # a node that refused to start it: nothing else matters
        if node.part.state == "preflight_failed":
            return _verdict(book, "preflight_failed", node, None, 0.0,
                            f"preflight on {node.node_id} failed: {node.part.note or 'no detail'}",
                            f"run 'watchdog-d doctor' on {node.node_id} and fix what it reports")
    picked = rootcause.pick(book, now)
    if picked is not None:
        return _failure_verdict(book, now, *picked)
    if any(r.failed for _, r in book.ranks()):
        return None   # only consequences so far: the cause may be on its way (SETTLE_S)
    for node in book.nodes.values():
        if node.ended_at is not None and node.part.state == "exited" and node.part.exit_code != 0:
            return _verdict(book, "job_failed", node, None, now - node.ended_at,
                            f"the launcher on {node.node_id} exited with status "
                            f"{node.part.exit_code} before any rank failure was seen",
                            "read the launcher's output on that node")
    silent = lost.silent_nodes(book, now, silence)
    decisive, warning = lost.judge(book, now, silence, silent)
    if decisive is not None:
        return decisive
    found = _detect_stall(book, now, silence, silent)
    # a silent agent is worth a warning only when nothing graver is going on
    return warning if found is None and warning is not None else found


_OOM_REMEDY = ("check the node's kernel log (dmesg) for the OOM killer; lower host memory "
               "use (data loader workers, pinned memory) or ask for more")


def _failure_verdict(book: JobBook, now: float, first: rootcause.Failure,
                     rest: list[rootcause.Failure]) -> Verdict:
    r, f, node = first.rank, first.finding, first.node
    # a generic traceback is just how a rank exits: keep the exit as the kind
    kind = f.kind if f is not None and f.kind != "python_exception" else \
        "rank_exited" if not r.alive else "python_exception"
    parts = []
    if f is not None and f.kind != "python_exception":
        parts.append(f"{f.explanation.rstrip('.')}: {f.line.strip()}" if f.explanation
                     else f.line.strip())
    if not r.alive:
        if parts:           # the finding says what; the exit only how
            parts.append(exit_cause(replace(r, exit_detail="")))
        else:               # a generic traceback: its last line is the detail
            detail = r.exit_detail or (f.line.strip() if f is not None else "")
            parts.append(exit_cause(replace(r, exit_detail=detail)))
    elif not parts and f is not None:
        parts.append(f.line.strip())
    cause = "; ".join(parts) + rootcause.describe_consequences(rest)
    remedy = f.remedy if f is not None and f.remedy else _exit_remedy(r)
    return _verdict(book, kind, node, r, now - first.at, cause, remedy, r.excerpt or r.stack)


def _exit_remedy(r: RankReport) -> str:
    if r.exit_signal == _signal.SIGKILL:
        return _OOM_REMEDY
    if r.exit_signal:
        return f"a {rootcause.signame(r.exit_signal)} usually means a crash in native code: read the rank's log"
    if r.exit_code is None:
        return _OOM_REMEDY
    return "read the rank's traceback below; fix the error and resume from the last checkpoint"


def _detect_stall(book: JobBook, now: float, silence: Silence,
                  silent: dict[str, float]) -> Verdict | str | None:
    learned = stall_timeout(book.spec.min_stall_timeout_s, book.spec.stall_factor, book.steps.p99())
    # a silent node's ranks are not evidence of anything (what it said is stale); its
    # report counts as fresh from the end of any stall of the coordinator's own
    alive = [(n, r, now - silence.since(n.seen_at)) for n, r in book.ranks()
             if r.alive and n.node_id not in silent]
    if not alive:
        return None
    ending = finish.began(book)
    if ending is not None:
        return _finishing(book, now, ending, alive, learned)
    # a node whose last report is older than a couple of heartbeats, but not yet silent
    # for node_timeout, among fresh ones: its ranks' steps are stale, and compared with
    # its fresh peers' it would look "behind" for no reason. Its silence is judged first
    # (``lost``): lost with its peers stuck, or only its agent gone.
    stale = {since > QUIET_S for _, _, since in alive}
    waiting_on_report = stale == {True, False}
    # a rank inside a section holds the job up: its peers wait for it (DESIGN §2), and
    # every rank's wait counts from the moment the last section was seen to end
    held = any(math.isfinite(r.section_remaining_s) and since <= r.section_remaining_s
               for _, r, since in alive)
    stalled, suspect = [], False
    for node, r, since in alive:
        rule, limit = rank_timeout(r.step, r.section_remaining_s, learned,
                                   book.spec.startup_timeout_s)
        if rule == "section":
            over = since - r.section_remaining_s
            if over > 0:
                inside, timeout = r.section_age_s + since, r.section_age_s + r.section_remaining_s
                stalled.append((node, r, f"rank {r.rank} in {r.section} for {rootcause.duration(inside)} "
                                f"(its timeout {rootcause.duration(timeout)})", inside))
            continue
        if held:
            continue
        age = r.last_step_age_s + since
        if book.section_seen_at is not None:
            age = min(age, now - book.section_seen_at)
        if age > limit:
            what = "no step since start" if rule == "startup" else "no step"
            stalled.append((node, r, f"{what} for {age:.1f}s (timeout {limit:.0f}s)", age))
        elif age > limit / 2:
            suspect = True
    if not stalled:
        return SUSPECT if suspect else None
    if waiting_on_report:
        return SUSPECT
    limit = learned if all(r.step >= 0 for _, r, _ in alive) else book.spec.startup_timeout_s
    return _name_culprit(book, stalled, alive, limit, now)


def _finishing(book: JobBook, now: float, ending: finish.Ending, alive: list,
               learned: float) -> Verdict | str | None:
    j = finish.judge(book, now, ending, alive, learned)
    if j is None or j.kind == "suspect":
        return None if j is None else SUSPECT
    if j.kind == "fresh_stacks":
        return FRESH_STACKS
    return _verdict(book, j.kind, j.node, j.rank, j.after, j.cause, j.remedy,
                    "" if j.rank is None else j.rank.stack)


def _busy(r: RankReport) -> bool:
    """A rank this busy outside a collective is working (or spinning), not idle-hung;
    so is one whose I/O moves at no CPU (reading from a slow filesystem)."""
    return r.cpu_percent >= flight.BUSY_CPU or flight.io_moving(r)


def _io_said(r: RankReport) -> str:
    return f", I/O moving {r.io_still_s:.0f}s ago" if flight.io_moving(r) else ""


def _name_culprit(book: JobBook, stalled: list, alive_since: list, limit: float,
                  now: float) -> Verdict | str:
    """Positive evidence of a hang makes a verdict: a rank frozen (T, or D held with no
    I/O), a section past its timeout, the flight recorders (a collective pending on every
    member, ops that disagree, a rank that never enqueued what its peers wait in and is
    itself stuck), a rank that left its peers waiting (behind, or outside the collective
    they wait in) and is not busy, every rank waiting inside a collective. Anything else
    is a long pause, not a hang: a warning (policy: no action), and the watch goes on."""
    alive = [(n, r) for n, r, _ in alive_since]
    age_of = {r.rank: age for _, r, _, age in stalled}
    by_rank = {r.rank: (n, r) for n, r in alive}
    detected_after = max(age_of.values())
    steps = {r.step for _, r in alive}

    def verdict(n: NodeView, r: RankReport, cause: str, remedy: str) -> Verdict:
        return _verdict(book, "rank_stalled", n, r, age_of.get(r.rank, detected_after),
                        cause, remedy, r.stack)

    frozen = [(n, r) for n, r in alive if r.proc_state in ("T", "t") or flight.held_in_d(r)]
    if frozen:
        n, r = min(frozen, key=lambda nr: nr[1].rank)
        state = flight.stuck(r) or "it is frozen"
        return verdict(n, r, f"rank process is frozen: {state.removeprefix('it is ')}; peers wait for it",
                       "look at the node (dmesg, storage, GPU); the rank cannot make progress")
    overran = [(n, r, why) for n, r, why, _ in stalled if r.section]
    if overran:
        n, r, why = min(overran, key=lambda x: x[1].rank)
        return verdict(n, r, why, f"the rank is stuck in {r.section} (its stack is below); "
                       f"if the work is just slow, give it a longer timeout")
    asked = math.inf if book.stacks_asked_at is None else now - book.stacks_asked_at
    fl = flight.judge([flight.Member(r, r.fr_age_s + since, r.last_step_age_s + since
                                     if r.step >= 0 else math.inf) for _, r, since in alive_since],
                      limit, asked, finish.STACK_WAIT_S)
    if fl.kind == "wait":
        return SUSPECT                 # the summaries asked for are on their way
    if fl.kind == "stale":
        return FRESH_STACKS
    if fl.kind in ("timeout", "mismatch", "behind"):
        return _flight_verdict(book, fl, by_rank, detected_after)
    note = _no_flight(book, fl, by_rank)
    culprit: tuple[NodeView, RankReport, str, str] | None = None
    if len(steps) > 1:
        low = min(steps)
        n, r = max(((n, r) for n, r in alive if r.step == low),
                   key=lambda nr: nr[1].last_step_age_s)
        culprit = (n, r, f"rank is behind at step {low} while peers reached {max(steps)}",
                   "the rank is stuck outside the collective: its stack is below; "
                   "look for a hang in data loading or rank-specific code")
    stacks = {rank: inside for rank, (_, r) in by_rank.items()
              if (inside := _in_collective(r)) is not None}
    outside = [rank for rank, inside in stacks.items() if not inside]
    if culprit is None and len(stacks) == len(by_rank) > 1 and len(outside) == 1:
        n, r = by_rank[outside[0]]
        culprit = (n, r, "rank is not in a collective while its peers wait in one",
                   "the rank is stuck in its own code (see its stack below): "
                   "data loading, I/O, a lock or a sleep")
    if culprit is None and len(by_rank) == 1:
        n, r = next(iter(by_rank.values()))
        culprit = (n, r, stalled[0][2], "the rank's stack is below; look for a hang")
    if culprit is not None:
        n, r, why, remedy = culprit
        where = rootcause.where(r)
        why += f" (it is in {where})" if where else ""
        if not _busy(r):
            return verdict(n, r, why + note, remedy)
        return _long_pause(book, n, r, detected_after,
                           f"{why}, but busy (CPU {r.cpu_percent:.0f}%{_io_said(r)}): working, not hung{note}")
    if len(stacks) == len(by_rank) > 1 and not outside:
        step = next(iter(steps))
        return _verdict(book, "collective_timeout", None, None, detected_after,
                        f"all {len(by_rank)} ranks wait inside a collective at step {step} and "
                        f"none made progress for {detected_after:.1f}s (a hang inside the collective){note}",
                        "check the network fabric and NCCL logs (NCCL_DEBUG=INFO); dump the "
                        "Flight Recorder of each rank", "")
    what = "no stacks yet" if not stacks else \
        f"{len(outside)} of {len(by_rank)} ranks are outside any collective"
    return _long_pause(book, None, None, detected_after,
                       f"all {len(by_rank)} ranks made no step for {detected_after:.1f}s, none "
                       f"frozen, {what}{note}")


FR_REMEDY = {
    "timeout": "a collective that every rank entered and none completed: check the network "
               "fabric (links, switches, NCCL_DEBUG=INFO) and the GPUs of the ranks named; "
               "the flight-recorder dumps kept in the job's log directory show the last collectives",
    "mismatch": "the ranks called different collectives at the same point (rank-dependent "
                "control flow, a skipped or extra collective, uneven data): NCCL waits forever "
                "on these; fix the code path the ranks diverge on",
}


def _flight_verdict(book: JobBook, fl: flight.Finding, by_rank: dict, after: float) -> Verdict:
    """A verdict the flight recorders decided (``flight``)."""
    if fl.kind == "behind":
        n, r = by_rank[fl.culprits[0]]
        why = flight.stuck(r)
        where = rootcause.where(r)
        at = f" (it is in {where})" if where else ""
        if why is None:
            return _long_pause(book, n, r, after,
                               f"flight recorder: {fl.text}; but rank {r.rank} is busy (CPU "
                               f"{r.cpu_percent:.0f}%{_io_said(r) or ', its stack moving'}){at}: "
                               f"working, not hung")
        return _verdict(book, "rank_stalled", n, r, after,
                        f"flight recorder: {fl.text}; rank {r.rank} is hung: {why.removeprefix('it ')}{at}",
                        "the rank is stuck outside the collective its peers wait in: its stack is "
                        "below; look for a hang in data loading or rank-specific code", r.stack)
    single = fl.culprits[0] if len(fl.culprits) == 1 else \
        fl.waiters[0] if fl.kind == "timeout" and len(by_rank) == 1 else None
    n, r = by_rank[single] if single is not None else (None, None)
    return _verdict(book, "collective_timeout" if fl.kind == "timeout" else "collective_mismatch",
                    n, r, after, f"flight recorder: {fl.text}", FR_REMEDY[fl.kind],
                    "" if r is None else r.stack)


def _no_flight(book: JobBook, fl: flight.Finding, by_rank: dict) -> str:
    """Why the flight recorders did not decide, for the cause (once per job): "" when they
    were there and just saw nothing pending long enough."""
    if fl.silent:
        who = ", ".join(f"rank {r}" for r in fl.silent[:8])
        why = (f"{who} did not answer the request for its flight recorder (its main thread "
               f"may hold the GIL in native code)")
    elif any(r.collectives for _, r in by_rank.values()):
        return ""
    else:
        notes = sorted({r.fr_note for _, r in by_rank.values() if r.fr_note})
        why = "; ".join(notes[:3]) or "no rank sent a summary (a rank side or agent that predates it)"
    if book.fr_note_said:
        return ""
    return f"; {FR_UNAVAILABLE}: {why} (the stack rules decided)"


def _long_pause(book: JobBook, n: NodeView | None, r: RankReport | None, after: float,
                why: str) -> Verdict:
    longest = book.pauses.longest()
    before = f"; the job paused up to {longest:.0f}s before" if longest > 0 else ""
    return _verdict(book, "long_pause", n, r, after,
                    f"{why}: a long pause (evaluation, a checkpoint, slow data?) rather than a "
                    f"hang{before}; not torn down, still watched",
                    "nothing to do if the job is busy on purpose; wrap the pause in "
                    "watchdog_d.section(...) to say so, or look at the stacks if it is not",
                    "" if r is None else r.stack)
