"""The coordinator's picture of every job, node and rank (pure bookkeeping).

Everything here is plain data updated from heartbeats and a clock passed in;
``Cluster.evaluate`` turns the picture into decisions via the detector and the
policy. The gRPC shell owns one Cluster and feeds it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import detector, policy
from .model import Incident, JobOnNode, JobSpec, NodeReport, Verdict
from .stall import StepTimes


@dataclass
class NodeView:
    node_id: str
    host: str
    seen_at: float                      # coordinator clock of its latest report
    part: JobOnNode                     # this job on this node, latest
    exit_at: dict[int, float] = field(default_factory=dict)   # rank -> when it exited
    ended_at: float | None = None       # when its wrapper reported the job over
    answered: bool = False              # its wrapper was told how the job ended


@dataclass
class JobBook:
    spec: JobSpec
    created_at: float
    attempt: int = 0
    nodes: dict[str, NodeView] = field(default_factory=dict)
    steps: StepTimes = field(default_factory=StepTimes)
    last_step: dict[int, int] = field(default_factory=dict)
    status: str = "running"             # running | stopping | ended
    verdict: Verdict | None = None      # the decisive verdict of this attempt
    action: str = ""
    restarts: int = 0
    stacks_asked_at: float | None = None
    outcome: str = ""                   # succeeded | failed | stopped | torn_down
    ended_at: float | None = None
    reported: set = field(default_factory=set)    # (kind, rank) already made incidents

    def ranks(self):
        for node in self.nodes.values():
            for r in node.part.ranks:
                yield node, r


@dataclass(frozen=True)
class Decision:
    """What the coordinator must do now for one job."""

    job_id: str
    verb: str                           # teardown | restart | dump_stacks | done | none
    nodes: tuple[str, ...] = ()
    incident: Incident | None = None    # to record (and alert, if wanted)
    alert: bool = False
    alert_urls: tuple[str, ...] = ()


KEEP_ENDED_S = 3600.0
ONCE_PER_ATTEMPT = ("rank_exited", "job_failed")      # can happen only once per attempt     # an ended job stays in the picture (status) this long


class Cluster:
    def __init__(self) -> None:
        self.jobs: dict[str, JobBook] = {}
        self.node_seen: dict[str, tuple[str, float]] = {}   # node -> (host, seen_at)

    # -- input ---------------------------------------------------------------
    def ingest(self, report: NodeReport, now: float) -> None:
        self.node_seen[report.node_id] = (report.host, now)
        for part in report.jobs:
            self._ingest_part(report, part, now)

    def _ingest_part(self, report: NodeReport, part: JobOnNode, now: float) -> None:
        job_id = part.spec.job_id
        book = self.jobs.get(job_id)
        if book is None or (book.status == "ended" and part.state == "running"
                            and part.attempt <= book.attempt):
            # a new job, or the same job id run again (same --rdzv-id, another srun step)
            book = self.jobs[job_id] = JobBook(spec=part.spec, created_at=now)
        if part.attempt < book.attempt:
            return  # a report about an attempt already replaced
        if part.attempt > book.attempt:
            self._new_attempt(book, part.attempt)
        node = book.nodes.get(report.node_id)
        if node is None:
            node = book.nodes[report.node_id] = NodeView(report.node_id, report.host, now, part)
        node.seen_at, node.host, node.part = now, report.host, part
        for r in part.ranks:
            if not r.alive and r.rank not in node.exit_at:
                node.exit_at[r.rank] = now - r.exit_age_s
            if r.step >= 0 and book.last_step.get(r.rank) != r.step:
                if r.rank in book.last_step:
                    book.steps.add(r.last_step_dt_s)
                book.last_step[r.rank] = r.step
        if part.state != "running" and node.ended_at is None:
            node.ended_at = now

    @staticmethod
    def _new_attempt(book: JobBook, attempt: int) -> None:
        """Forget everything that belonged to the attempt before."""
        book.attempt, book.status, book.verdict, book.action = attempt, "running", None, ""
        book.stacks_asked_at, book.outcome, book.ended_at = None, "", None
        book.last_step.clear()            # a first step's duration includes start-up
        book.reported.clear()
        for node in book.nodes.values():
            # nodes that have not reported the new attempt yet: nothing known of it
            node.part = replace(node.part, attempt=attempt, state="running", ranks=())
            node.exit_at.clear()
            node.ended_at, node.answered = None, False

    def standing_orders(self, node_id: str) -> list[tuple[str, str, int, Verdict, str]]:
        """Verbs a node must carry out whatever it heard before: the teardown of a job
        of a stopping attempt it is still part of. (job, verb, attempt, verdict, action)"""
        out = []
        for job_id, book in self.jobs.items():
            node = book.nodes.get(node_id)
            if node is None or book.status != "stopping" or book.verdict is None \
                    or book.outcome == "stopped":
                continue
            verb = "restart" if book.action.startswith("restart") else "teardown"
            out.append((job_id, verb, book.attempt, book.verdict, book.action))
        return out

    # -- decisions -------------------------------------------------------------
    def evaluate(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        for book in self.jobs.values():
            out.extend(self._evaluate_job(book, now))
        for job_id in [j for j, b in self.jobs.items()
                       if b.ended_at is not None and now - b.ended_at > KEEP_ENDED_S]:
            del self.jobs[job_id]
        stale = [n for n, (_, seen) in self.node_seen.items() if now - seen > KEEP_ENDED_S]
        for node_id in stale:
            del self.node_seen[node_id]
        return out

    def _evaluate_job(self, book: JobBook, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        nodes = tuple(sorted(book.nodes))
        if book.status == "running" and any(n.part.state == "stopped" for n in book.nodes.values()):
            book.status = "stopping"      # the user stopped it: what follows is not a failure
            book.outcome = "stopped"
        if book.status == "running":
            found = detector.detect(book, now, {n: s for n, (_, s) in self.node_seen.items()})
            if isinstance(found, Verdict) and (found.kind, found.rank) not in book.reported:
                # (with an alert-only policy the job runs on and the same finding comes
                # back every tick: one incident per kind and rank and attempt)
                book.reported.add((found.kind, found.rank))
                decisions.append(self._decide(book, found, now))
            elif found == detector.SUSPECT:
                if book.stacks_asked_at is None:     # once per episode of suspicion
                    book.stacks_asked_at = now
                    decisions.append(Decision(book.spec.job_id, "dump_stacks", nodes))
            elif found is None:
                # progress again: the episode is over; a later stall is a new incident
                book.stacks_asked_at = None
                book.reported = {k for k in book.reported if k[0] in ONCE_PER_ATTEMPT}
        # answer every wrapper whose job ended by itself and is owed nothing else
        for node in book.nodes.values():
            if node.ended_at is not None and not node.answered and (
                    book.status != "stopping" or book.outcome == "stopped"):
                node.answered = True
                decisions.append(Decision(book.spec.job_id, "done", (node.node_id,)))
        if book.status != "ended" and book.nodes and all(
                n.ended_at is not None for n in book.nodes.values()):
            decisions.extend(self._close(book, now))
        return decisions

    def _decide(self, book: JobBook, verdict: Verdict, now: float) -> Decision:
        action = policy.decide(verdict.kind, book.spec, book.restarts)
        book.verdict, book.action = verdict, action
        verb = "none"
        if policy.stops_job(action):
            book.status = "stopping"
            verb = "restart" if action.startswith("restart") else "teardown"
            if verb == "restart":
                book.restarts += 1
        incident = Incident(ts=0.0, verdict=verdict, action=action)
        return Decision(book.spec.job_id, verb, tuple(sorted(book.nodes)), incident,
                        alert=policy.wants_alert(verdict.kind), alert_urls=book.spec.alert_urls)

    def _close(self, book: JobBook, now: float) -> list[Decision]:
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
