"""``--ha`` on the decision loop: follow what ``coordinator.ha`` learnt from etcd.

Taking the lead, a coordinator starts from a blank picture (a standby ingests nothing)
that the agents' next heartbeats fill (they send everything to a coordinator new to them),
plus what its state store keeps (checkpoint records, suspect nodes); every silence clock
starts at the take-over, so no node is judged silent before a full node timeout. Losing
the lead, it drops its picture and its queued verbs (they were decided under an epoch that
is over) and ends every stream: the agents ask again and are sent to the leader.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import log
from ..core.model import Incident, Verdict
from ..core.state import COORDINATOR, Decision
from ..proto import watchdog_pb2 as pb

if TYPE_CHECKING:
    from .server import Coordinator


def standby_ack(c: "Coordinator", seq: int) -> pb.HeartbeatAck:
    """A standby's answer: nothing ingested; where the leader is, when known."""
    assert c.ha is not None
    return pb.HeartbeatAck(seq=seq, standby=True, leader=c.ha.leader_address(), epoch=c.epoch)


async def follow(c: "Coordinator", now: float) -> tuple[bool, list[Decision]]:
    """(each pass) (may this pass decide, the decisions of what changed: an alert)."""
    ha = c.ha
    assert ha is not None
    with ha.lock:
        changes = ha.state.take_changes()
        leading, epoch = ha.state.leading, ha.state.epoch
        may, silence = ha.state.may_decide(now), ha.state.judges_silence(now)
    out: list[Decision] = []
    for change in changes:
        if change.kind == "leading":
            c.epoch = epoch
            _take_over(c, now)
            log.warn("ha_leading", name=ha.name, epoch=epoch)
        elif change.kind == "deposed":
            _step_down(c)
            log.warn("ha_deposed", name=ha.name, epoch=c.epoch, reason=change.detail,
                     effect="standing by; its queued verbs dropped")
        elif change.kind == "etcd_unreachable":
            log.warn("etcd_unreachable", role=ha.state.role, error=change.detail,
                     effect="the leader keeps deciding; nothing is torn down because of etcd")
            if leading:
                v = Verdict(job=COORDINATOR, kind="etcd_unreachable", cause=change.detail,
                            remedy="bring etcd back (the coordinators' --ha store); the leader "
                                   "decides on meanwhile, and no standby can take over",
                            advisory=True)
                out.append(Decision(COORDINATOR, "none", (), Incident(0.0, v, "none"), alert=True))
        elif change.kind == "etcd_back":
            log.log("etcd_back", role=ha.state.role)
    c.deciding = may
    if leading != c.leading:
        c.leading = leading
        await c.health.standing_by(not leading)
    if leading and not silence:
        # the lease in doubt (etcd unreachable past it): a node gone quiet may be following
        # a leader etcd's other side elected; judged again a full node timeout after
        c.cluster.silence.restart_at = now
    return may, out


def _take_over(c: "Coordinator", now: float) -> None:
    c.blank_picture()
    c.cluster.silence.restart_at = now


def _step_down(c: "Coordinator") -> None:
    c.blank_picture()
    dropped = c.sender.drop_all()          # the next leader delivers them (they are in etcd)
    if dropped:
        log.log("alerts_handed_over", count=dropped)
    for box in c.outboxes.values():
        box.pending.clear()
        q = box.stream
        if q is not None:          # (a Stream's queue: its acks may go, its verbs not)
            kept = [q.get_nowait() for _ in range(q.qsize())]
            for item in kept:
                if not isinstance(item, pb.Command):
                    q.put_nowait(item)
            q.put_nowait(None)
