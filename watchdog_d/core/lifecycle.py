"""A job's life, attempt by attempt: the verdict's action, the generation barrier before a
relaunch, the end. Pure: a job's book and a clock in, decisions out (``state.Cluster``
calls these)."""
from __future__ import annotations

from dataclasses import replace

from . import exclusion, policy
from .book import BARRIER_CAP_S, JobBook, NodeView
from .decision import Decision
from .model import Incident, JobOnNode, Verdict
from .silence import Silence


def new_attempt(book: JobBook, attempt: int, now: float) -> None:
    """Forget everything that belonged to the attempt before."""
    book.attempt, book.status, book.verdict, book.action = attempt, "running", None, ""
    book.attempt_started_at = now
    book.stacks_asked_at, book.outcome, book.ended_at = None, "", None
    book.restart_asked_at = book.torn_down_at = None
    book.last_step.clear()            # a first step's duration includes start-up
    book.reported.clear()
    if book.lags is not None:         # (other ranks, maybe other nodes, other places)
        book.lags.reset()
    book.timing_seen.clear()
    book.stragglers = []
    for node in book.nodes.values():
        # nodes that have not reported the new attempt yet: nothing known of it
        node.part = replace(node.part, attempt=attempt, state="running", ranks=(), note="")
        node.exit_at.clear()
        node.ended_at, node.answered = None, False


def relaunch_when_down(book: JobBook, now: float, silence: Silence,
                       spares: list[exclusion.Spare] | None = None) -> list[Decision]:
    """The generation barrier: the next attempt starts only once every node of this
    one has its ranks down (or is silent, or BARRIER_CAP_S passed), plus the
    backoff; then every waiting node gets the same attempt number and checkpoint, and
    the spares planned to replace the nodes that leave (``spares``: those usable now)
    get their places."""
    asked = book.restart_asked_at if book.restart_asked_at is not None else now
    if book.verdict is None and now - book.created_at < book.spec.node_timeout_s:
        return []    # a restart inherited from a coordinator before us: let every node report
    if book.torn_down_at is None:
        def pending(n: NodeView) -> bool:
            silent = silence.silent_for(n.node_id, now, n.seen_at)
            if n.node_id in book.leaving:     # its ranks down, its wrapper gone
                return n.part.state in ("running", "waiting") and silent <= book.spec.node_timeout_s
            return (n.attempt_seen == book.attempt and n.part.state != "waiting"
                    and silent <= book.spec.node_timeout_s)
        if any(pending(n) for n in book.nodes.values()) and now - asked < BARRIER_CAP_S:
            return []
        book.torn_down_at = now
    if now < book.torn_down_at + policy.backoff_s(book.spec.restart_backoff_s, book.restarts):
        return []
    ready = tuple(sorted(n.node_id for n in book.nodes.values()
                         if n.part.state == "waiting" and n.node_id not in book.leaving))
    if not ready:
        return []                    # nobody can start it (yet): they get it when back
    taking = book.taking
    if book.leaving:
        taking, why = exclusion.reassign(book.taking, spares or [], len(ready),
                                         book.spec.nnodes_min, book.spec.nnodes_max)
        if why:
            return [_give_up(book, ready, why)]
    notes = [f"{n.node_id}: {n.part.note}" for n in book.nodes.values()
             if n.part.state == "waiting" and n.part.note]
    why = book.verdict or Verdict(book.spec.job_id, "")   # the restart's cause (kind "": unknown)
    _leave_for_good(book, taking, now)
    new_attempt(book, book.attempt + 1, now)
    (step, path), incident = book.offer, None
    if notes:   # something people must know about this relaunch (a checkpoint problem)
        after = "" if not why.kind else \
            f" after {why.kind} rank {why.rank_label}" + (f" on {why.node}" if why.node else "")
        v = Verdict(job=book.spec.job_id, kind="restart", attempt=book.attempt, rank=why.rank,
                    node=why.node, host=why.host,   # the title says whose failure it was
                    cause=f"attempt {book.attempt} relaunched{after}; " + "; ".join(notes),
                    remedy="check the checkpoint directory and what the job resumed from")
        incident = Incident(0.0, v, f"restart {book.restarts}/{book.spec.max_restarts}")
    return [Decision(book.spec.job_id, "relaunch", ready, incident, alert=incident is not None,
                     alert_urls=book.spec.alert_urls, attempt=book.attempt,
                     resume_from=path, resume_step=step)] + [
        Decision(book.spec.job_id, "relaunch", (spare,), attempt=book.attempt, resume_from=path,
                 resume_step=step, node_rank=rank) for spare, _, rank in taking]


def _leave_for_good(book: JobBook, taking: tuple[tuple[str, str, int], ...], now: float) -> None:
    """The relaunch goes ahead: the nodes that leave are no longer the job's, the spares
    that take their places are."""
    for node in book.leaving:
        book.nodes.pop(node, None)
    book.left.update(book.leaving)
    book.leaving, book.taking = {}, ()
    for spare, _, rank in taking:
        book.nodes[spare] = NodeView(spare, "", now, JobOnNode(spec=book.spec), attempt_seen=-1)
        book.handed[spare] = rank


def _give_up(book: JobBook, ready: tuple[str, ...], why: str) -> Decision:
    """The relaunch cannot go ahead (the spare it counted on left): the job is over."""
    cause = book.verdict.cause if book.verdict is not None else "restart"
    v = replace(book.verdict or Verdict(book.spec.job_id, "gave_up"), kind="gave_up",
                cause=f"{cause}; gave up: {why}",
                remedy="bring a spare (watchdog-d run --spare ...) or fix the suspect node, then "
                       "relaunch the job from its checkpoint")
    book.verdict, book.action, book.leaving, book.taking = v, "gave_up", {}, ()
    return Decision(book.spec.job_id, "teardown", ready, Incident(0.0, v, "gave_up"), alert=True,
                    alert_urls=book.spec.alert_urls)


def leave(book: JobBook, verdict: Verdict) -> list[Decision]:
    """The nodes that leave the job at this restart (``decide`` set them): told, and
    recorded (``events``: each one, its suspect marking and the reason)."""
    out = []
    for node, why in sorted(book.leaving.items()):
        spare = next((s for s, n, _ in book.taking if n == node), "")
        v = Verdict(job=book.spec.job_id, kind="node_left", node=node, attempt=book.attempt,
                    cause=f"{node} leaves job {book.spec.job_id}: suspect ({why}); "
                          + (f"spare {spare} takes its place" if spare else
                             "the job relaunches without it"),
                    remedy="look at the node (GPU health, links) before it runs a job again; "
                           "it stays suspect for a day", advisory=True)
        out.append(Decision(book.spec.job_id, "leave", (node,), Incident(0.0, v, "none"),
                            note=f"suspect ({why})"))
    return out

def decide(book: JobBook, verdict: Verdict, now: float,
           plan: exclusion.Plan = exclusion.Plan()) -> Decision:
    if verdict.advisory:       # a warning: the job runs on whatever its policy
        return Decision(book.spec.job_id, "none", (), Incident(0.0, verdict, "none"),
                        alert=True, alert_urls=book.spec.alert_urls)
    book.no_progress = 0 if book.last_step else book.no_progress + 1
    action = policy.decide(verdict.kind, book.spec, book.restarts, book.no_progress)
    if action == "gave_up" and policy.crash_looping(book.spec, book.no_progress):
        verdict = replace(verdict, cause=f"{verdict.cause}; gave up: {book.no_progress} attempts "
                                         f"in a row ended before their first step (crash loop)")
    elif action.startswith("restart") and plan.leaving:
        # bad hardware leaves the job: a spare takes its place, or it goes on smaller, or not at all
        verdict = replace(verdict, cause=f"{verdict.cause}; {plan.says()}")
        if plan.gave_up:
            action = "gave_up"
        else:
            book.leaving, book.taking = dict(plan.leaving), plan.taking
    if verdict.kind not in policy.ALERT_ONLY:   # (a warning is no verdict on how the job ends)
        book.verdict, book.action = verdict, action
    verb = "none"
    if policy.stops_job(action):
        book.status = "stopping"
        verb = "restart" if action.startswith("restart") else "teardown"
        if verb == "restart":
            book.restarts += 1
            book.restart_asked_at = now
    incident = Incident(ts=0.0, verdict=verdict, action=action)
    step, path = book.offer
    return Decision(book.spec.job_id, verb, tuple(sorted(set(book.nodes) - set(book.leaving))), incident,
                    alert=policy.wants_alert(verdict.kind), alert_urls=book.spec.alert_urls,
                    resume_from=path, resume_step=step)

def close(book: JobBook, now: float) -> list[Decision]:
    """Every node reported the job over: record how it ended."""
    stopping = book.status == "stopping"
    book.status, book.ended_at = "ended", now
    parts = [n.part for n in book.nodes.values()]
    if book.outcome == "stopped":
        return []
    if stopping or book.verdict is not None:
        book.outcome = "torn_down" if stopping else "failed"
        return []
    if any(p.state == "stopped" for p in parts):
        book.outcome = "stopped"
        return []
    if all(p.exit_code == 0 for p in parts):
        book.outcome = "succeeded"
        v = Verdict(job=book.spec.job_id, kind="job_succeeded", attempt=book.attempt,
                    cause="every node's launcher exited 0")
        return [Decision(book.spec.job_id, "none", (), Incident(0.0, v, "none"))]
    book.outcome = "failed"
    return []

