"""The spares of every job, as their nodes report them (pure bookkeeping).

A spare is a wrapper of the job in state ``spare``: it has no ranks and is no node of
the job until a relaunch hands it a place (``core.exclusion``). Until then it is told,
with every ack, only what ends its wait: the place (a relaunch), the job's end (done or
teardown), or a refusal (its command is not the job's).
"""
from __future__ import annotations

from dataclasses import replace

from .book import JobBook
from .decision import Order
from .exclusion import Spare, usable
from .model import JobOnNode, JobSpec

MAX_SPARES = 1000                   # per job: more is a mistake, not a pool


class Standby:
    def __init__(self) -> None:
        self.spares: dict[str, dict[str, Spare]] = {}      # job -> node -> its spare
        self.of_node: dict[str, set[str]] = {}             # node -> the jobs it stands by for

    def heard(self, node: str, part: JobOnNode, now: float) -> None:
        job = part.spec.job_id
        there = self.spares.setdefault(job, {})
        s = there.get(node)
        if s is None:
            if len(there) >= MAX_SPARES:
                return
            there[node] = Spare(node, now, now, part.spec.shape)
            self.of_node.setdefault(node, set()).add(job)
        else:
            there[node] = replace(s, seen_at=now, shape=part.spec.shape)

    def report(self, node: str, jobs: set[str]) -> None:
        """A node's report holds ``jobs`` (as spares): a spare of any other job is gone
        (its wrapper was stopped, or took its place)."""
        for job in self.of_node.get(node, set()) - jobs:
            self.drop(job, node)

    def drop(self, job: str, node: str) -> None:
        self.spares.get(job, {}).pop(node, None)
        if not self.spares.get(job, True):
            del self.spares[job]
        jobs = self.of_node.get(node)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self.of_node[node]

    def of(self, job: str) -> dict[str, Spare]:
        return self.spares.get(job, {})

    def usable(self, spec: JobSpec, now: float) -> list[Spare]:
        """The job's spares that can take a place now (``exclusion.usable``)."""
        return usable(self.of(spec.job_id), spec.shape, now, spec.node_timeout_s)

    def orders(self, node: str, books: dict[str, JobBook]) -> list[Order]:
        """What ends the wait of this node's spares."""
        out = []
        for job in sorted(self.of_node.get(node, ())):
            book, spare = books.get(job), self.spares[job][node]
            if book is None:
                continue                       # the job is not here (yet): wait
            if not spare.runs(book.spec.shape):
                out.append(Order(job, "refuse", 0, action=(
                    f"a spare must run the job's command: the command on {node} is not the one "
                    f"job {job} runs (its per-node arguments aside)")))
            elif book.status == "ended":
                if book.outcome == "succeeded":
                    out.append(Order(job, "done", book.attempt))
                else:
                    out.append(Order(job, "teardown", book.attempt, book.verdict,
                                     book.action or book.outcome or "teardown"))
        return out
