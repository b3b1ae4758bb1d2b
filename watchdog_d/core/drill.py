"""``watchdog-d drill``: a fault injected on purpose into a live job, to see the watchdog
do its work (the verdict, the teardown on every node, the alert, the relaunch). Pure: the
rules for a drill request, the verdict's words, and whether what followed passes."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .model import Verdict
from . import owner

# fault -> the verdict it must bring
FAULTS = {"kill": "rank_exited", "exit": "rank_exited", "freeze": "rank_stalled", "hang": "rank_stalled"}
WINDOW_S = 900.0            # a verdict this long after a drill is still the drill's


class DrillRefused(ValueError):
    """The drill cannot be done; the text says why."""


@dataclass(frozen=True)
class Drill:
    fault: str
    rank: int
    node: str
    uid: int
    at: float               # coordinator clock
    attempt: int

    @property
    def words(self) -> str:
        return f"drill: {self.fault} rank {self.rank} (watchdog-d drill by uid {self.uid})"


def check(fault: str, rank: int, job_owner: int, uid: int, status: str,
          ranks_on: dict[int, str], node: str) -> str:
    """The node the fault goes to, or DrillRefused. ``ranks_on``: live rank -> its node."""
    if fault not in FAULTS:
        raise DrillRefused(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
    if not owner.may_join(job_owner, uid) or (job_owner == owner.UNKNOWN and uid != owner.ROOT):
        raise DrillRefused(f"the job belongs to uid {job_owner}: only its owner or root may drill it")
    if status != "running":
        raise DrillRefused(f"the job is {status}, not running")
    where = ranks_on.get(rank)
    if where is None:
        raise DrillRefused(f"no live rank {rank} in the job (live: {_ranks(ranks_on)})")
    if node and node != where:
        raise DrillRefused(f"rank {rank} runs on {where}, not on {node}")
    return where


def mark(verdict: Verdict, drill: Drill) -> Verdict:
    """The verdict says it came from a drill (its alert, ``events``, the wrapper's line)."""
    return replace(verdict, cause=f"[{drill.words}] {verdict.cause}")


def _ranks(ranks_on: dict[int, str]) -> str:
    r = sorted(ranks_on)
    return ", ".join(map(str, r[:16])) + (" ..." if len(r) > 16 else "") if r else "none"


@dataclass
class Follow:
    """What followed a drill, from the job's status as the coordinator shows it (one dict
    a look, ``status.job_status``): the verdict, the teardown on every node, the relaunch
    when the job's policy restarts it. Pure: the caller looks and passes the time."""

    fault: str
    rank: int
    attempt: int
    timeline: list = None      # type: ignore[assignment]   # [(seconds, event, detail)]
    verdict: str = ""
    down: bool = False
    relaunched: bool = False
    restarting: bool = False
    alert_to: int = 0                  # URLs the verdict's alert goes to (0: none, not awaited)
    alerts_before: int = -1            # drill alerts sent for the job before this one
    alerted: bool = False

    def __post_init__(self) -> None:
        self.timeline = []

    def look(self, t: float, job: dict | None) -> None:
        if job is None:
            return
        alerts = job.get("alerts") or {}
        if self.alerts_before < 0 and alerts:
            self.alerts_before, self.alert_to = alerts.get("drill_sent", 0), alerts.get("to", 0)
        verdict = job.get("verdict") or ""
        if not self.verdict and verdict and f"[drill: {self.fault} rank {self.rank}" in verdict:
            self.verdict = verdict
            self.restarting = str(job.get("action", "")).startswith("restart")
            self.timeline.append((t, "verdict", verdict))
        if self.verdict and not self.down and (
                job.get("attempt", 0) > self.attempt or job.get("status") == "ended"
                or all(n.get("state") != "running" for n in job.get("nodes", ()))):
            self.down = True
            nodes = len(job.get("nodes", ()))
            self.timeline.append((t, "torn down", f"on every node ({nodes})" if nodes else "the job ended"))
        if self.verdict and not self.alerted and self.alert_to and \
                alerts.get("drill_sent", 0) > self.alerts_before:
            self.alerted = True
            self.timeline.append((t, "alerted", f"{self.alert_to} receiver(s)"))
        if self.down and self.restarting and not self.relaunched and \
                job.get("attempt", 0) > self.attempt and job.get("status") == "running":
            self.relaunched = True
            self.timeline.append((t, "relaunched", f"attempt {job['attempt']}"))

    @property
    def done(self) -> bool:
        return self.down and (self.relaunched or not self.restarting) and \
            (self.alerted or not self.alert_to)

    @property
    def passed(self) -> bool:
        kind = FAULTS[self.fault]
        return self.done and self.verdict.startswith(f"{kind} rank {self.rank}")


def start(book, job_id: str, fault: str, rank: int, node: str, uid: int, now: float) -> Drill:
    """Start a drill on ``book`` (a ``JobBook``, None: no such job): the next verdict of the
    job says it was one. ``DrillRefused`` when it cannot be."""
    if book is None:
        raise DrillRefused(f"no job {job_id} at this coordinator")
    ranks_on = {r.rank: n.node_id for n in book.nodes.values() if n.attempt_seen == book.attempt
                for r in n.part.ranks if r.alive}
    where = check(fault, rank, book.owner, uid, book.status, ranks_on, node)
    book.drill = Drill(fault, rank, where, uid, now, book.attempt)
    return book.drill


def claim(book, verdict, now: float) -> Drill | None:
    """The drill this verdict of ``book``'s is (one verdict is the drill's), if any."""
    d = book.drill
    if d is None or verdict.advisory or now - d.at > WINDOW_S:
        return None
    book.drill = None
    return d
