"""The coordinator's picture of every job, node and rank (pure bookkeeping).

Everything here is plain data updated from heartbeats and a clock passed in;
``Cluster.evaluate`` turns the picture into decisions via the detector and the
policy. The gRPC shell owns one Cluster and feeds it.
"""
from __future__ import annotations

import math
from dataclasses import replace

from . import detector, exclusion, lagging, lifecycle, orders, owner
from . import drill as drills
from .book import JobBook, NodeView
from .deadline import STACKS_REFRESH_S, Due, next_check, signature
from .decision import Decision, Order
from .model import Incident, JobOnNode, NodeReport, Verdict
from .silence import Episode, Silence
from .standby import Standby
from .straggler import NodeClocks
from .suspects import Suspects, Suspicion, describe
from .stall import stall_timeout


RETRY_ERROR_S = 1.0                 # a job whose evaluation raised is looked at again after this
KEEP_ENDED_S = 3600.0               # an ended job stays in the picture (status) this long
ONCE_PER_ATTEMPT = ("rank_exited", "job_failed")      # can happen only once per attempt
BY_NODE = ("node_lost", "agent_lost")   # one incident per silent node, not per rank
COORDINATOR = "(coordinator)"       # the "job" of the coordinator's own incidents (no job id has
                                    #   parentheses, so it names no job)


class Cluster:
    def __init__(self, checkpoints: dict[str, tuple[int, str]] | None = None) -> None:
        self.jobs: dict[str, JobBook] = {}
        self.silence = Silence()                            # who reports, and when last
        self.node_jobs: dict[str, set[str]] = {}            # node -> the jobs it has a part in
        self.due = Due()                                    # job -> when to look at it again
        self.dirty: set[str] = set()                        # jobs to look at now
        self.episodes: list[Episode] = []                   # the coordinator's own, to say
        self.departed: list[str] = []                       # nodes forgotten (the shell prunes)
        self.errors: list[tuple[str, Exception]] = []       # (job, what its evaluation raised), to log
        self.suspects = Suspects()                          # nodes a person should look at
        self.suspected: list[Suspicion] = []                # new markings, for the shell to log
        # run token -> (step, path) of the newest checkpoint its run's ranks recorded; the
        # shell loads it from the state store and saves what changes (outlives the JobBook)
        self.checkpoints: dict[str, tuple[int, str]] = dict(checkpoints or {})
        self._new_checkpoints: set[tuple[str, str]] = set()   # (job, run) whose record changed
        # (job, node) -> a node that brings a job under another uid than its owner's: its
        # part is not taken, and the node is told with every ack until it drops the job
        self.refused: dict[tuple[str, str], owner.Refusal] = {}
        self.new_refusals: list[owner.Refusal] = []         # for the shell to log and count
        self.drain_failures: list[tuple[str, str]] = []     # (node, why): its agent could not drain it
        self.standby = Standby()                            # the spares of every job
        self.clocks = NodeClocks()                          # each node's clock onto ours (stragglers)

    # -- input ---------------------------------------------------------------
    def ingest(self, report: NodeReport, now: float) -> None:
        """O(ranks in the report). Marks a job dirty only when something changed that
        can change a verdict sooner than its deadline (not a step, an age, a CPU load)."""
        if report.leaving:
            self.silence.left(report.node_id)
        else:
            self.silence.heard(report.node_id, now)
        if report.sent_mono_s > 0:
            self.clocks.observe(report.node_id, report.sent_mono_s, now)
        if report.drain_failed:
            self.drain_failures.append((report.node_id, report.drain_failed))
        for part in report.jobs:
            if self._refused(report.node_id, part):
                continue
            if part.state != "spare":
                self._ingest_part(report, part, now)
                continue
            book = self.jobs.get(part.spec.job_id)
            if book is not None and report.node_id in book.nodes:
                book.nodes[report.node_id].seen_at = now     # handed a place: launching
            else:
                self.standby.heard(report.node_id, part, now)
        self.standby.report(report.node_id, {p.spec.job_id for p in report.jobs if p.state == "spare"})
        for key in [k for k in self.refused if k[1] == report.node_id]:
            if all(p.spec.job_id != key[0] for p in report.jobs):
                del self.refused[key]          # it dropped the job: the episode is over

    def _refused(self, node_id: str, part: JobOnNode) -> bool:
        """Does ``part`` come under another uid than its job's owner's? (A new run of an
        ended job is a new job: its owner is whoever brings it.)"""
        key = (part.spec.job_id, node_id)
        book = self.jobs.get(part.spec.job_id)
        if book is None or self._new_run(book, part) or owner.may_join(book.owner, part.owner):
            self.refused.pop(key, None)
            return False
        if key not in self.refused:
            self.refused[key] = owner.Refusal(part.spec.job_id, node_id, book.owner, part.owner)
            self.new_refusals.append(self.refused[key])
        return True

    def heard(self, node_id: str, now: float) -> None:
        """The node is alive (a report that could not be read in full)."""
        self.silence.heard(node_id, now)

    @staticmethod
    def _new_run(book: JobBook, part: JobOnNode) -> bool:
        """Is ``part`` a new launch of a job id this coordinator has seen run before?
        (the same --job-id or --rdzv-id, another srun step of one allocation)"""
        if book.status != "ended" or part.state not in ("running", "waiting"):
            return False
        if part.run:
            return part.run not in book.runs
        return part.state == "running" and part.attempt <= book.attempt   # an agent without runs

    def _ingest_part(self, report: NodeReport, part: JobOnNode, now: float) -> None:
        job_id = part.spec.job_id
        book = self.jobs.get(job_id)
        if book is None or self._new_run(book, part):
            # a new job, or a new run of it, or a job this coordinator learns of after a
            # restart of its own: attempt N means N restarts were spent already, and the
            # run's recorded checkpoint is in the store under its nodes' run tokens
            book = self.jobs[job_id] = JobBook(spec=part.spec, created_at=now, attempt=part.attempt,
                                               restarts=part.attempt,
                                               checkpoint=self.checkpoints.get(part.run),
                                               owner=part.owner)
            self.dirty.add(job_id)
            if part.state == "waiting" and part.spec.on_failure == "restart":
                # between two attempts when this coordinator started: the restart was
                # decided before; carry it out (the barrier, then the relaunch)
                book.status, book.restart_asked_at = "stopping", now
                book.restarts = part.attempt + 1
                book.action = f"restart {book.restarts}/{part.spec.max_restarts}"
        if book.owner == owner.UNKNOWN:
            book.owner = part.owner            # (first said by a newer agent)
        if part.run and part.run not in book.runs:
            book.runs.add(part.run)            # another node of this run
            if book.checkpoint is not None:
                self._record_checkpoint(book, book.checkpoint, book.checkpoint_attempt)
        if report.node_id in book.left:
            # it left the job (suspect): told so with every ack until its wrapper is gone
            if part.state != "running":
                self.node_jobs.get(report.node_id, set()).discard(job_id)
            return
        node = book.nodes.get(report.node_id)
        if part.attempt < book.attempt:
            # a node still at an attempt already replaced (it missed the relaunch, or
            # its ranks are being stopped): alive, and told to catch up or stop
            if node is not None:
                if (part.state, part.note) != (node.part.state, node.part.note):
                    self.dirty.add(job_id)
                node.seen_at, node.attempt_seen, node.gpus = now, part.attempt, report.gpus
                node.part = replace(node.part, state=part.state, note=part.note)
            return
        if part.attempt > book.attempt:
            lifecycle.new_attempt(book, part.attempt, now)
        sig = signature(part)
        if node is not None and (node.attempt_seen != part.attempt or node.signature != sig):
            self.dirty.add(job_id)
        if node is None:
            node = book.nodes[report.node_id] = NodeView(report.node_id, report.host, now, part)
            self.node_jobs.setdefault(report.node_id, set()).add(job_id)
            self.dirty.add(job_id)
        node.seen_at, node.host, node.part, node.attempt_seen = now, report.host, part, part.attempt
        node.signature, node.gpus = sig, report.gpus      # (GPUs: shown, not judged here)
        self._note_checkpoint(book, part)
        if lagging.ingest(book, report.node_id, part,
                          lambda mono, n=report.node_id: self.clocks.to_local(n, mono), now):
            self.dirty.add(job_id)
        sampled = False
        for r in part.ranks:
            if not r.alive and r.rank not in node.exit_at:
                node.exit_at[r.rank] = now - r.exit_age_s
            if r.step >= 0 and book.last_step.get(r.rank) != r.step:
                if r.rank in book.last_step and not sampled:
                    # ranks step in lock-step: one duration per node and report tells the
                    # job's pace. A step during which some rank was inside a section is a pause
                    began = now - r.last_step_age_s - r.last_step_dt_s
                    book.times.add(r.last_step_dt_s, book.section_seen_at is not None
                                   and book.section_seen_at >= began)
                    sampled = True
                book.last_step[r.rank] = r.step
        if stall_timeout(book.spec.min_stall_timeout_s, book.spec.stall_factor,
                         book.steps.p99()) < book.judged_limit:
            self.dirty.add(job_id)     # faster steps: an earlier deadline than the one planned
        if any(r.alive and math.isfinite(r.section_remaining_s) for r in part.ranks):
            book.section_seen_at = now
        if part.state in ("exited", "stopped", "preflight_failed") and node.ended_at is None:
            node.ended_at = now      # ("waiting": down for a restart, not over)

    def _note_checkpoint(self, book: JobBook, part: JobOnNode) -> None:
        for r in part.ranks:
            if r.ckpt_path and r.ckpt_step >= 0 and (
                    book.checkpoint is None or r.ckpt_step > book.checkpoint[0]
                    or part.attempt > book.checkpoint_attempt):
                self._record_checkpoint(book, (r.ckpt_step, r.ckpt_path), part.attempt)

    def _record_checkpoint(self, book: JobBook, record: tuple[int, str], attempt: int) -> None:
        """This run's newest record (a later attempt's counts as newer even at a lower
        step: it resumed from an older checkpoint), kept under each of its run tokens."""
        book.checkpoint, book.checkpoint_attempt = record, attempt
        for run in book.runs:
            self.checkpoints[run] = record
            self._new_checkpoints.add((book.spec.job_id, run))

    def take_new_checkpoints(self) -> dict[tuple[str, str], tuple[int, str]]:
        """(job, run) -> (step, path) recorded since the last call (for the shell to store)."""
        new = {(job, run): self.checkpoints[run] for job, run in self._new_checkpoints
               if run in self.checkpoints}
        self._new_checkpoints.clear()
        return new

    def standing_orders(self, node_id: str) -> list[Order]:
        """Verbs a node must carry out whatever it heard before (``orders``)."""
        return orders.standing(node_id, self.jobs, self.node_jobs.get(node_id, ()), self.refused,
                               self.standby)

    # -- decisions -------------------------------------------------------------
    def evaluate(self, now: float, limit: int = 0) -> list[Decision]:
        """Look at the jobs that changed and those whose moment came (``deadline``);
        first, at the coordinator's own standing (``silence``). ``limit``: look at no
        more jobs than this now (the rest stay ``pending``); 0: no limit."""
        out: list[Decision] = []
        episode = self.silence.check(now)
        if episode is not None:
            out.extend(self._episode(episode))
        out.extend(self._drain_failed())
        todo = sorted(self.dirty.union(self.due.pop_due(now)))
        if limit and len(todo) > limit:
            todo, later = todo[:limit], todo[limit:]
            self.dirty.difference_update(todo)
            self.dirty.update(later)
        else:
            self.dirty.clear()
        for job_id in todo:
            book = self.jobs.get(job_id)
            if book is None:
                self.due.forget(job_id)
                continue
            if book.ended_at is not None and now - book.ended_at > KEEP_ENDED_S:
                self._forget_job(job_id)
                continue
            try:
                out.extend(self._evaluate_job(book, now))
                book.judged_limit = stall_timeout(book.spec.min_stall_timeout_s,
                                                  book.spec.stall_factor, book.steps.p99())
                self.due.at(job_id, book.ended_at + KEEP_ENDED_S + 1.0 if book.ended_at is not None
                            else next_check(book, now, self.silence))
            except Exception as e:
                # one job's bad state (a bug) must not stop the judging of every other
                # job: the shell logs it; the job is looked at again in a second
                self.errors.append((job_id, e))
                self.due.at(job_id, now + RETRY_ERROR_S)
        return out

    def pending(self) -> bool:
        """Jobs left to look at now (``evaluate`` with a limit)."""
        return bool(self.dirty)

    def own_stall(self, began: float, ended: float) -> list[Decision]:
        """The shell's loop did not run from ``began`` to ``ended`` (see ``silence``)."""
        return self._episode(self.silence.own_stall(began, ended))

    def load(self, now: float, late: bool) -> list[Decision]:
        """Reports waited long for the shell's loop lately, or not (see ``silence``)."""
        episode = self.silence.overload(now, late)
        return [] if episode is None else self._episode(episode)

    def _episode(self, episode: Episode) -> list[Decision]:
        self.episodes.append(episode)
        if not episode.began:
            return []
        v = Verdict(job=COORDINATOR, kind="coordinator_isolated", cause=episode.cause,
                    remedy="check the coordinator's host and network (load, link, a paused "
                           "VM); jobs were not judged on the silence, none was torn down",
                    advisory=True)
        # to the coordinator's own operators (its --alert URLs): nothing was done to any job
        return [Decision(COORDINATOR, "none", (), Incident(0.0, v, "none"), alert=True)]

    def _drain_failed(self) -> list[Decision]:
        """A suspect node its agent could not drain: to the coordinator's operators."""
        out = []
        for node, why in self.drain_failures:
            v = Verdict(job=COORDINATOR, kind="drain_failed", node=node, cause=why, advisory=True,
                        remedy="the node is suspect and still in Slurm's pool: drain it by hand "
                               "(scontrol update NodeName=... State=DRAIN) and look at it")
            out.append(Decision(COORDINATOR, "none", (), Incident(0.0, v, "none"), alert=True))
        self.drain_failures.clear()
        return out

    def _with_suspects(self, book: JobBook, verdict: Verdict, now: float) -> Verdict:
        """The verdict, saying which of the job's nodes were suspect already."""
        marked = self.suspects.of(book.nodes, now)
        return replace(verdict, suspect=describe(marked)) if marked else verdict

    def _plan(self, book: JobBook, verdict: Verdict, now: float) -> exclusion.Plan:
        if verdict.advisory or book.spec.on_failure != "restart":
            return exclusion.Plan()
        suspect = {s.node: s.reason for s in self.suspects.of(book.nodes, now)}
        return exclusion.plan({n: v.part.node_rank for n, v in book.nodes.items()}, suspect,
                              self.standby.usable(book.spec, now), book.spec.nnodes_min, book.spec.nnodes_max)

    def _stragglers(self, book: JobBook, now: float) -> list[Decision]:
        v = lagging.judge(book, now)
        if v is None:
            return []
        if book.spec.exclude_stragglers and v.node:
            self.suspected.append(self.suspects.note(v.node, f"straggler: {v.cause[:160]}", now))
        return [lifecycle.decide(book, self._with_suspects(book, v, now), now)]

    def _relaunch(self, book: JobBook, now: float) -> list[Decision]:
        job = book.spec.job_id
        out = lifecycle.relaunch_when_down(book, now, self.silence, self.standby.usable(book.spec, now))
        for node in set(book.nodes).intersection(self.standby.of(job)):
            self.standby.drop(job, node)          # a spare that took a place: a node of the job
            self.node_jobs.setdefault(node, set()).add(job)
        return out

    def drill(self, job_id: str, fault: str, rank: int, node: str, uid: int,
              now: float) -> drills.Drill:
        """Start a drill (``drills.DrillRefused`` when it cannot be)."""
        return drills.start(self.jobs.get(job_id), job_id, fault, rank, node, uid, now)

    def _forget_job(self, job_id: str) -> None:
        book = self.jobs.pop(job_id)
        self.suspects.forget_job(job_id)
        self.due.forget(job_id)
        for run in book.runs:                  # the store keeps them, if needed
            self.checkpoints.pop(run, None)
        for node_id in book.nodes:
            jobs = self.node_jobs.get(node_id)
            if jobs is not None:
                jobs.discard(job_id)
                if not jobs:
                    del self.node_jobs[node_id]

    def forget_departed(self) -> list[str]:
        """Nodes silent so long they left (``silence.ACTIVE_S``), for the shell to prune."""
        gone, self.silence.departed = self.silence.departed, []
        for key in [k for k in self.refused if k[1] in gone]:
            del self.refused[key]
        for node in gone:
            self.clocks.forget(node)
            self.standby.report(node, set())      # (its spares went with it)
        return gone

    def _evaluate_job(self, book: JobBook, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        nodes = tuple(sorted(book.nodes))
        user_stopped = any(n.part.state == "stopped" for n in book.nodes.values())
        if book.status == "running" and user_stopped:
            book.status = "stopping"      # the user stopped it: what follows is not a failure
            book.outcome = "stopped"
        elif book.relaunch_due and user_stopped:
            book.outcome = "stopped"      # stopped between two attempts: no relaunch
        if book.status == "running":
            decisions.extend(self._stragglers(book, now))
            found = detector.detect(book, now, self.silence)
            if isinstance(found, Verdict):
                # (with an alert-only policy the job runs on and the same finding comes
                # back every tick: one incident per kind and rank and attempt; one
                # long-pause warning per pause, whoever it names; one per silent node)
                key = (found.kind, None if found.kind == "long_pause" else
                       found.node if found.kind in BY_NODE else found.rank)
                if key not in book.reported:
                    book.reported.add(key)
                    book.fr_note_said |= detector.FR_UNAVAILABLE in found.cause
                    found = self._with_suspects(book, found, now)
                    drilled = drills.claim(book, found, now)
                    found = drills.mark(found, drilled) if drilled else found
                    marked = None if drilled else self.suspects.record(found, now, len(book.nodes))
                    if marked is not None:            # (a drill's culprit is no bad node)
                        self.suspected.append(marked)
                    decisions.append(lifecycle.decide(book, found, now, self._plan(book, found, now)))
                    decisions.extend(lifecycle.leave(book, found))
                if found.kind == "long_pause" and (book.stacks_asked_at is None or
                                                   now - book.stacks_asked_at >= STACKS_REFRESH_S):
                    # the pause goes on: fresh stacks, so evidence of a hang can show up
                    book.stacks_asked_at = now
                    decisions.append(Decision(book.spec.job_id, "dump_stacks", nodes))
            elif found == detector.FRESH_STACKS:   # (finishing: stacks from before are stale)
                book.stacks_asked_at = now
                decisions.append(Decision(book.spec.job_id, "dump_stacks", nodes))
            elif found == detector.SUSPECT:
                if book.stacks_asked_at is None:     # once per episode of suspicion
                    book.stacks_asked_at = now
                    decisions.append(Decision(book.spec.job_id, "dump_stacks", nodes))
            elif found is None:
                # progress again: the episode is over; a later stall is a new incident
                book.stacks_asked_at = None
                book.reported = {k for k in book.reported if k[0] in ONCE_PER_ATTEMPT}
        if book.relaunch_due:
            decisions.extend(self._relaunch(book, now))
            return decisions             # (a launcher that ended by itself is not the job's end)
        # answer every wrapper whose job ended by itself and is owed nothing else
        for node in book.nodes.values():
            if node.ended_at is not None and not node.answered and (
                    book.status != "stopping" or book.outcome == "stopped"):
                node.answered = True
                decisions.append(Decision(book.spec.job_id, "done", (node.node_id,)))
        if book.status != "ended" and book.nodes and all(
                n.ended_at is not None for n in book.nodes.values()):
            decisions.extend(lifecycle.close(book, now))
        return decisions
