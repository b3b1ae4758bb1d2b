"""A job's silent nodes, judged with evidence (DESIGN §2).

Silence alone proves nothing about the training: an agent restarting, a
monitoring link cut while the fabric is fine, the coordinator's own trouble.
The job's other nodes are the witnesses, because ranks of one job step in
lock-step (every step ends in a collective with every rank):

- peers that completed steps after the node fell silent prove its ranks alive:
  only its agent is gone -> ``agent_lost``, a warning, nothing torn down;
- peers that stopped stepping for longer than the job's own pace allows
  corroborate the loss -> ``node_lost``, the job's policy applies;
- a node left behind by a relaunch that stayed silent past its time to rejoin: its
  ranks of this attempt never started, the job cannot run without them -> ``node_lost``;
- a job none of whose nodes reports any more -> ``node_lost`` as a warning:
  there is nothing left to tear down, and nothing to witness;
- no pace to judge by (before the first step, a rank inside a checkpoint): wait;
  the startup and section timeouts still bound the wait.
While the coordinator itself is isolated (``silence.Silence``) nobody is judged; while
it is overloaded (some reports wait in its sockets longer than others) there is no
``agent_lost``, and peers corroborate a loss only by what they reported, not by how
long ago that was.
"""
from __future__ import annotations

import math

from .book import JobBook, NodeView
from .model import Verdict
from .silence import Silence

CATCH_UP_S = 60.0       # a node left behind by a relaunch has this long to rejoin it
PACE_STEPS = 3.0        # peers are stopped after this many of the job's steps without one...
PACE_SLACK_S = 2.0      # ... plus this (a heartbeat in flight, a report a second old)

_LOST_REMEDY = ("check the node: power, network link, kernel log; the job cannot go on "
                "without it")


def silent_nodes(book: JobBook, now: float, silence: Silence) -> dict[str, float]:
    """node -> seconds of silence, for the job's nodes silent past its node_timeout."""
    out = {}
    for node in book.nodes.values():
        if node.ended_at is not None:
            continue
        quiet = silence.silent_for(node.node_id, now, node.seen_at)
        if node.attempt_seen < book.attempt and book.attempt_started_at is not None:
            # left behind by the relaunch (silent at the barrier): it may rejoin for a
            # while; a node gone for good is lost after that, not after the startup timeout
            quiet = min(quiet, now - book.attempt_started_at - CATCH_UP_S)
        if quiet > book.spec.node_timeout_s:
            out[node.node_id] = quiet
    return out


def pace(book: JobBook, peers: list[NodeView]) -> float:
    """The job's step time as known (0: unknown): its p99, or the last step of a peer."""
    last = max((r.last_step_dt_s for n in peers for r in n.part.ranks if r.alive), default=0.0)
    return max(book.steps.p99(), last)


def judge(book: JobBook, now: float, silence: Silence,
          silent: dict[str, float]) -> tuple[Verdict | None, Verdict | None]:
    """(a verdict that decides, a warning) about the job's silent nodes."""
    if not silent or silence.isolated:
        return None, None
    peers = [n for n in book.nodes.values() if n.ended_at is None and n.node_id not in silent]
    names = sorted(silent, key=lambda n: (-silent[n], n))
    first = book.nodes[names[0]]
    if not peers:
        which = ", ".join(names)
        return None, _verdict(book, first, silent[names[0]],
                              f"no heartbeat from {which} for {silent[names[0]]:.1f}s and no other "
                              f"node of the job reports: nothing left to tear down, nobody to "
                              f"witness whether the ranks still train", _LOST_REMEDY, advisory=True)
    behind = [n for n in names if book.nodes[n].attempt_seen < book.attempt]
    if behind:
        name = behind[0]
        return _verdict(book, book.nodes[name], silent[name],
                        f"node {name} did not rejoin attempt {book.attempt} (no heartbeat for "
                        f"{silent[name]:.1f}s): its ranks of this attempt never started",
                        _LOST_REMEDY), None
    step_time = pace(book, peers)
    if _stopped(peers, now, silence, step_time, silence.overloaded_since is not None):
        return _verdict(book, first, silent[first.node_id],
                        f"no heartbeat from node {first.node_id} for {silent[first.node_id]:.1f}s "
                        f"(agent and ranks silent), and the ranks of the other nodes stopped "
                        f"stepping with it", _LOST_REMEDY), None
    if silence.overloaded_since is not None:
        return None, None
    for name in names:
        node = book.nodes[name]
        if _stepped_since(peers, silence.since(silence.seen.get(name, node.seen_at)), step_time):
            return None, _verdict(
                book, node, silent[name],
                f"no heartbeat from node {name}'s agent for {silent[name]:.1f}s, but the ranks "
                f"of the other nodes keep stepping: its ranks are alive; the job runs on, "
                f"unwatched on that node",
                "restart the agent on that node (systemctl status watchdog-d-agent); the "
                "wrapper reattaches by itself", advisory=True, kind="agent_lost")
    return None, None


def _stopped(peers: list[NodeView], now: float, silence: Silence, step_time: float,
             as_reported: bool = False) -> bool:
    """Every rank of the reporting nodes went longer without a step than the job's pace
    allows -- and the pace is known, and none of them waits on a section. ``as_reported``:
    by the ages in their reports alone (a report's own age may be the coordinator's delay)."""
    if step_time <= 0:
        return False
    gap = PACE_STEPS * step_time + PACE_SLACK_S
    ranks = [(n, r) for n in peers for r in n.part.ranks if r.alive]
    if not ranks:
        return False
    for node, r in ranks:
        if r.step < 0 or math.isfinite(r.section_remaining_s):
            return False
        stale = 0.0 if as_reported else now - silence.since(node.seen_at)
        if r.last_step_age_s + stale <= gap:
            return False
    return True


def _stepped_since(peers: list[NodeView], quiet_since: float, step_time: float) -> bool:
    # a step that ended just after the silent node's last report may have been all but
    # done when it died: count only steps one whole step (and a second) later
    margin = 1.0 + step_time
    return any(r.alive and r.step >= 0 and n.seen_at - r.last_step_age_s > quiet_since + margin
               for n in peers for r in n.part.ranks)


def _verdict(book: JobBook, node: NodeView, after: float, cause: str, remedy: str, *,
             advisory: bool = False, kind: str = "node_lost") -> Verdict:
    return Verdict(job=book.spec.job_id, kind=kind, node=node.node_id, host=node.host,
                   detected_after_s=max(0.0, after), cause=cause, remedy=remedy,
                   attempt=book.attempt, advisory=advisory)
