"""The coordinator's side of ``watchdog-d drill``: a node's agent asks for a user (the
uid it read from its socket); the rules are ``core.drill``'s; the fault goes to the node
of the rank as a ``drill`` command on its Watch stream."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import log
from ..core.drill import DrillRefused
from ..proto import watchdog_pb2 as pb

if TYPE_CHECKING:
    from .server import Coordinator


def start(c: "Coordinator", request: pb.DrillRequest) -> pb.DrillReply:
    """(on the coordinator's loop)"""
    job, fault, node = request.job_id[:128], request.fault[:16], request.node[:200]
    try:
        d = c.cluster.drill(job, fault, request.rank, node, int(request.uid), c.clock())
    except DrillRefused as e:
        log.warn("drill_refused", job=job, fault=fault, rank=request.rank, uid=request.uid, reason=str(e))
        return pb.DrillReply(error=str(e))
    c.outbox(d.node).put(pb.Command(job_id=job, verb="drill", attempt=d.attempt, action=d.fault,
                                    rank=d.rank))
    c.counters["commands"] += 1
    log.warn("drill_started", job=job, fault=d.fault, rank=d.rank, node=d.node, uid=d.uid)
    return pb.DrillReply(node=d.node, attempt=d.attempt)
