"""``watchdog-d run --spare -- torchrun ...``: a standby of the job on another node.

It registers with its node's agent as a spare of the job (the same command as the job's
nodes, its per-node arguments aside) and starts nothing. When a relaunch leaves a suspect
node out, the coordinator hands its place to one spare: that spare's wrapper gets the
relaunch (with the node's --node-rank, for a static rendezvous) and from then on is a
node of the job like any other. A spare of a job that ends exits with the job's end: 0
when it succeeded, 75 when it was torn down; a spare the coordinator refuses (another
command, another user's job) exits 2 with the reason.
"""
from __future__ import annotations

import queue
import sys
import time
from typing import TYPE_CHECKING

from .. import log
from ..proto.local import Command, Ended
from . import checkpoints, launch, shape

if TYPE_CHECKING:
    from .supervisor import Wrapper


def stand_by(w: "Wrapper") -> int | tuple[int, launch.Resume]:
    """Wait for a place in the job: (the attempt to start, what to resume from), or the
    exit status when the job ended, the user stopped it, or the coordinator refused it."""
    from .supervisor import EXIT_TORN_DOWN, USER_SIGNAL

    print(f"watchdog-d: job {w.job_id}: standing by as a spare on {w.node_id}; no ranks until a "
          f"node of the job is excluded", file=sys.stderr, flush=True)
    log.log("spare_standing_by", job=w.job_id, node=w.node_id)
    while True:
        try:
            msg = w.inbox.get(timeout=0.5)
        except queue.Empty:
            msg = ""
        if msg is None:
            log.warn("agent_connection_lost", job=w.job_id, effect="spare; reattaching every second")
            w.conn, w.next_reattach = None, time.monotonic()
        w._try_reattach(time.monotonic())
        if msg == USER_SIGNAL:
            return w._user_stop()             # (no attempt: nothing to stop)
        if not isinstance(msg, Command):
            continue
        if msg.verb == "relaunch":
            return _take_place(w, msg)
        if msg.verb == "done":
            w._send(Ended(state="exited", exit_code=0))
            w.final_line = f"watchdog-d: job {w.job_id} ended; the spare on {w.node_id} was not needed"
            return 0
        if msg.verb in ("teardown", "leave"):
            what = msg.verdict.one_line() if msg.verdict else "the job was torn down"
            w._send(Ended(state="exited", exit_code=EXIT_TORN_DOWN))
            w.final_line = (f"watchdog-d: job {w.job_id} is over ({what}) [action: "
                            f"{msg.action or msg.verb}]; the spare on {w.node_id} leaves")
            return EXIT_TORN_DOWN
        if msg.verb == "refuse":
            return w._refused(msg.action)


def _take_place(w: "Wrapper", cmd: Command) -> tuple[int, launch.Resume]:
    if cmd.node_rank >= 0:
        w.command = shape.with_node_rank(w.command, cmd.node_rank)
        w.node_rank = cmd.node_rank
    offered = [cmd.offered] if cmd.resume_from else []
    w.recorded = offered
    resume = launch.choose_resume(offered, w.cfg.checkpoint_dir, checkpoints.Rule.of(w.cfg))
    log.warn("spare_joined", job=w.job_id, node=w.node_id, attempt=cmd.attempt,
             node_rank=cmd.node_rank, resume_from=resume.path or "-")
    print(f"watchdog-d: job {w.job_id}: the spare on {w.node_id} takes a place"
          + (f" (node rank {cmd.node_rank})" if cmd.node_rank >= 0 else "")
          + f" as attempt {cmd.attempt}"
          + (f" from {resume.path}" if resume.path else " from scratch (no checkpoint found)"),
          file=sys.stderr, flush=True)
    w.spare = False
    return cmd.attempt, resume
