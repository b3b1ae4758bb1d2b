"""Suspect nodes: the ones a person should look at before the next job lands there.

A node is suspect when
- it failed a health check: a verdict of a hardware or environment kind named it (an Xid,
  a GPU lost, the kernel's OOM killer, a failed pre-flight);
- or it keeps being the culprit: the last REPEAT verdicts of one job (a restart that fails
  on the same node again) named it, or CLUSTER_K verdicts of any jobs within WINDOW_S;
  only verdicts of jobs of several nodes count (the only node of a job is the culprit of
  each of its failures: that says nothing of the node).
It stays suspect for KEEP_S (a person replaces the GPU, or the node is drained and the
marking ages out). It is said in ``status``, ``/metrics`` and in the next alerts that
involve it, and it leaves a job on its next relaunch (``core.exclusion``). Pure: verdicts
and a clock in.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .model import Verdict

# verdicts that are a node's health, not the job's code
HEALTH_KINDS = frozenset({"gpu_xid", "gpu_lost", "gpu_ecc", "gpu_remap_failure", "host_oom",
                          "preflight_failed"})
REPEAT = 2                  # the same job's last verdicts all on one node ...
CLUSTER_K = 3               # ... or this many verdicts of any jobs on one node ...
WINDOW_S = 6 * 3600.0       # ... within this long
KEEP_S = 24 * 3600.0        # a node stays suspect this long after the last reason
MAX_NODES = 10_000          # bounded memory: the oldest markings go first


@dataclass(frozen=True)
class Suspicion:
    node: str
    reason: str              # one line, for people
    since: float             # when (the caller's clock) it became suspect for this reason


class Suspects:
    def __init__(self) -> None:
        self.marked: dict[str, Suspicion] = {}
        self._by_job: dict[str, deque[str]] = {}          # job -> its last culprit nodes
        self._culprit_at: dict[str, deque[float]] = {}    # node -> when it was the culprit

    def record(self, verdict: Verdict, now: float, job_nodes: int = 2) -> Suspicion | None:
        """A verdict was made (in a job of ``job_nodes`` nodes): the suspicion it adds
        (None: none new)."""
        node = verdict.node
        if not node or verdict.advisory or verdict.job.startswith("("):
            return None
        if verdict.kind in HEALTH_KINDS:
            return self._mark(node, f"{verdict.kind} rank {verdict.rank_label}: "
                                    f"{' '.join(verdict.cause.split())[:160]}", now)
        if job_nodes < 2:
            return None
        last = self._by_job.setdefault(verdict.job, deque(maxlen=REPEAT))
        last.append(node)
        times = self._culprit_at.setdefault(node, deque(maxlen=CLUSTER_K))
        times.append(now)
        if len(last) == REPEAT and len(set(last)) == 1:
            last.clear()
            return self._mark(node, f"the culprit of {REPEAT} verdicts in a row of job "
                                    f"{verdict.job} (last: {verdict.kind})", now)
        if len(times) == CLUSTER_K and now - times[0] <= WINDOW_S:
            times.clear()
            return self._mark(node, f"the culprit of {CLUSTER_K} verdicts within "
                                    f"{WINDOW_S / 3600:.0f} h (last: {verdict.kind} in job {verdict.job})",
                              now)
        return None

    def note(self, node: str, reason: str, now: float) -> Suspicion:
        """A reason found elsewhere (a persistent straggler, where the job asked for it)."""
        return self._mark(node, reason, now)

    def restore(self, node: str, reason: str, since: float) -> None:
        """A marking a coordinator before this one made (``since`` on this one's clock)."""
        if node not in self.marked or self.marked[node].since < since:
            self._mark(node, reason, since)

    def of(self, nodes: object, now: float) -> list[Suspicion]:
        """The suspect ones among ``nodes`` (an iterable of node ids), oldest marking first."""
        self._expire(now)
        found = [self.marked[n] for n in nodes if n in self.marked]  # type: ignore[attr-defined]
        return sorted(found, key=lambda s: (s.since, s.node))

    def forget_job(self, job: str) -> None:
        self._by_job.pop(job, None)

    def _mark(self, node: str, reason: str, now: float) -> Suspicion:
        s = self.marked[node] = Suspicion(node, reason, now)
        if len(self.marked) > MAX_NODES:
            oldest = min(self.marked.values(), key=lambda x: x.since)
            del self.marked[oldest.node]
        return s

    def _expire(self, now: float) -> None:
        gone = [n for n, s in self.marked.items() if now - s.since > KEEP_S]
        for n in gone:
            del self.marked[n]
        for n in [n for n, t in self._culprit_at.items() if t and now - t[-1] > WINDOW_S]:
            del self._culprit_at[n]


def describe(suspicions: list[Suspicion]) -> str:
    """The alert's ``suspect`` line: every suspect node of the job and why."""
    return "; ".join(f"{s.node} ({s.reason})" for s in suspicions)
