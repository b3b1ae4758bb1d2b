"""The agent's side that faces the wrappers (``watchdog-d run``) of its node: one thread
per connection; registration, attempts, the end of a job; each attempt's rank logs opened
and closed. Mixed into ``daemon.Agent``, whose state (jobs, locks) it shares."""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from .. import log
from ..core import owner
from ..core.model import JobOnNode, JobSpec
from ..logs.fingerprints import Catalogue, CatalogueError
from ..proto import convert, localsock
from ..proto import watchdog_pb2 as pb
from . import drills, pidns
from ..proto.local import (AttemptStarted, Command, DrillAsk, Ended, Message, MessageError,
                           Refused, Register, Registered, StatusAsk, Waiting)
from .observe import RankTrack
from .ranklogs import AttemptLogs

if TYPE_CHECKING:
    from ..config import Config
    from .exits import ExitWatcher


@dataclass
class LocalJob:
    spec: JobSpec
    conn: localsock.Conn
    uid: int
    attempt: int = 0
    run: str = ""
    launcher_pid: int = 0
    beacon_dir: str = ""
    state: str = "running"             # running | exited | stopped | waiting (for a relaunch) | spare
    node_rank: int = -1                # torchrun's --node-rank (-1: none)
    exit_code: int = 0
    note: str = ""
    tracks: dict[int, RankTrack] = field(default_factory=dict)
    last: JobOnNode | None = None
    logs: AttemptLogs | None = None
    logs_read_at: float = float("-inf")
    delivered: set = field(default_factory=set)    # (verb, attempt) handed to the wrapper
    # the coordinator's word on its owner: set once a report with the job was acked
    # (``refusal``: why it was refused, "" accepted)
    settled: threading.Event = field(default_factory=threading.Event)
    refusal: str = ""
    registered: bool = False                       # its wrapper was told Registered
    # commands that came before it was: sent right after Registered (a wrapper waiting for
    # Registered that read a command instead would take it for a refusal)
    held: list = field(default_factory=list)
    wrapper: psutil.Process | None = None          # the wrapper's process (its socket peer)
    # its ranks' PIDs as the node sees them (a wrapper in another PID namespace: a pod)
    pids: pidns.Translator = field(default_factory=lambda: pidns.Translator(pidns.OWN))


# how long a registration waits for the coordinator's word on the job's owner (it is
# asked with the next report, sent at once); unanswered (unreachable), the job starts
# and a refusal that comes later stops it
OWNER_WAIT_S = 3.0


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid > 0 else None
    except psutil.Error:
        return None


def _alive(proc: psutil.Process | None) -> bool:
    """(is_running() also tells a reused PID from the process it was)"""
    try:
        return proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class WrapperSide:
    cfg: "Config"
    node_id: str
    target: str
    jobs: dict[str, LocalJob]
    lock: threading.Lock
    observing: threading.Lock
    exits: "ExitWatcher"
    catalogue: Catalogue | None
    _stop: threading.Event
    _send_now: threading.Event
    _urgent: bool
    _refusals_said: set
    metrics: Any

    def observe_now(self) -> None:   # (the agent's)
        raise NotImplementedError

    # -- wrappers ---------------------------------------------------------------------
    def _serve_wrapper(self, conn: localsock.Conn) -> None:
        job: LocalJob | None = None
        try:
            peer, uid, _ = conn.peer()
            while not self._stop.is_set():
                try:
                    msg = conn.recv()
                except MessageError as e:
                    # this wrapper's problem alone: it is told, every other job goes on
                    log.warn("wrapper_message_refused", job=job.spec.job_id if job else None,
                             error=str(e)[:300])
                    conn.send(Refused(f"bad message: {e}"))
                    continue
                if msg is None:
                    break
                job = self._handle(conn, uid, msg, job, peer)
        except Exception as e:
            log.error("wrapper_connection_error", error=repr(e))
        finally:
            conn.close()
            if job is not None:
                self._detach(job)

    def _detach(self, job: LocalJob) -> None:
        """The wrapper's connection ended. Without its word that the job ended: a wrapper
        that lives on is reattaching (it lost us, or its registration answer): the job is
        only forgotten until it is back, as after an agent restart; one that died took
        the job's launcher with it: exited."""
        with self.lock:
            said = {}
            if job.state == "running":
                if _alive(job.wrapper):
                    said = {"wrapper": "alive", "effect": "forgotten until it reattaches"}
                else:
                    said = {"wrapper": "gone", "effect": "reported exited"}
                    job.state, job.exit_code = "exited", 1
        self.observe_now()
        with self.observing, self.lock:
            if self.jobs.get(job.spec.job_id) is job:
                del self.jobs[job.spec.job_id]
            self._close_logs(job)
            self.exits.forget({t.pid for t in job.tracks.values()})
        log.log("job_detached", job=job.spec.job_id, **said)

    def _handle(self, conn: localsock.Conn, uid: int, msg: Message,
                job: LocalJob | None, peer: int = 0) -> LocalJob | None:
        if isinstance(msg, Register) and job is None:
            space = pidns.namespace_of(peer) if peer else pidns.OWN
            foreign = space not in (0, pidns.OWN)
            if foreign:
                # a wrapper in a PID namespace of its own: its PIDs are not the node's;
                # the launcher is the wrapper itself, known by the node's PID from the socket
                msg = dataclasses.replace(msg, launcher_pid=peer)
            try:
                launcher_uid = psutil.Process(msg.launcher_pid).uids().real
            except psutil.Error as e:
                conn.send(Refused(f"bad registration: launcher {msg.launcher_pid}: {e!r}"))
                return None
            if uid != 0 and launcher_uid != uid:
                self._refuse(conn, msg.spec.job_id, uid, "launcher", "the launcher is not your process")
                return None
            if foreign:
                log.log("job_in_pid_namespace", job=msg.spec.job_id, namespace=space)
            return self._register(conn, uid, msg, pidns.Translator(space), peer)
        elif isinstance(msg, DrillAsk) and job is None:
            drills.ask(self, conn, uid, msg)
        elif isinstance(msg, StatusAsk) and job is None:
            drills.status(self, conn, msg)
        elif isinstance(msg, AttemptStarted) and job is not None:
            with self.observing, self.lock:      # (that order, always)
                job.attempt, job.beacon_dir = msg.attempt, msg.beacon_dir
                job.launcher_pid = job.pids.host_pid(msg.launcher_pid) or msg.launcher_pid
                self.exits.forget({t.pid for t in job.tracks.values()})
                job.state, job.exit_code, job.tracks, job.note = "running", 0, {}, ""
                if msg.node_rank >= 0:         # (a spare that took a place)
                    job.node_rank = msg.node_rank
                self._open_logs(job, msg.log_dir)
            self._send_now.set()
        elif isinstance(msg, Waiting) and job is not None:
            with self.lock:   # the attempt's ranks are down; the next generation is awaited
                job.state, job.note = "waiting", msg.note
            self.observe_now()
        elif isinstance(msg, Ended) and job is not None:
            with self.lock:
                job.state, job.exit_code = msg.state, msg.exit_code
                if msg.note:
                    job.note = msg.note
            self.observe_now()
        else:
            conn.send(Refused(f"unexpected message {msg.OP!r}"
                              + (" before register" if job is None else "")))
        return job

    def _register(self, conn: localsock.Conn, uid: int, msg: Register,
                  pids: pidns.Translator, peer: int = 0) -> LocalJob | None:
        """A job belongs to the uid that registered it: on this node one wrapper a job;
        across nodes the coordinator says (asked with the next report, waited for)."""
        job_id = msg.spec.job_id
        job = LocalJob(spec=msg.spec, conn=conn, uid=uid, attempt=msg.attempt, run=msg.run,
                       launcher_pid=msg.launcher_pid, pids=pids, node_rank=msg.node_rank,
                       state="spare" if msg.spare else "running", wrapper=_process(peer))
        with self.lock:
            there = self.jobs.get(job_id)
            if there is None:
                self.jobs[job_id] = job
        if there is not None:
            if not owner.may_join(there.uid, uid):
                self._refuse(conn, job_id, uid, "owner",
                             f"job {job_id} belongs to uid {there.uid} on this node, not to uid "
                             f"{uid}: pick another --job-id")
            else:
                self._refuse(conn, job_id, uid, "duplicate",
                             f"job {job_id} already runs on this node (wrapper pid "
                             f"{there.launcher_pid}): one wrapper a job on each node")
            return None
        self._urgent = True
        self._send_now.set()
        if not job.settled.wait(OWNER_WAIT_S):
            log.warn("owner_unchecked", job=job_id, uid=uid,
                     effect="the coordinator did not answer; started, and stopped should it refuse")
        if job.refusal:
            with self.observing, self.lock:
                if self.jobs.get(job_id) is job:
                    del self.jobs[job_id]
            self._refuse(conn, job_id, uid, "owner", job.refusal)
            return None
        with self.lock:   # (held: nothing can be sent to it before Registered)
            conn.send(Registered(node_id=self.node_id, coordinator=self.target))
            job.registered = True
            for command in job.held:
                conn.send(command)
            job.held.clear()
        log.log("job_attached", job=job_id, launcher_pid=msg.launcher_pid, attempt=job.attempt,
                uid=uid)
        self._send_now.set()
        return job

    def _to_wrapper(self, cmd: pb.Command) -> None:
        """A coordinator's verb about a job, handed to its wrapper."""
        with self.lock:
            job = self.jobs.get(cmd.job_id)
            if job is None or cmd.attempt < job.attempt and cmd.verb != "done":
                return
            if cmd.verb == "refuse" and not job.registered:
                return      # (its registration is refused by the thread that waits for it)
            if cmd.verb in ("teardown", "restart", "relaunch", "refuse", "leave"):   # re-sent with every ack: once
                key = (cmd.verb, cmd.attempt)
                if key in job.delivered:
                    return
                job.delivered.add(key)
        try:
            verdict = convert.verdict_from_json(cmd.verdict_json)
        except convert.WireError as e:
            log.warn("command_verdict_unreadable", job=cmd.job_id, error=str(e)[:200])
            verdict = None
        log.log("command_received", job=cmd.job_id, verb=cmd.verb, attempt=cmd.attempt)
        try:
            command = Command(verb=cmd.verb, attempt=cmd.attempt, verdict=verdict, action=cmd.action,
                              resume_from=cmd.resume_from, resume_step=cmd.resume_step,
                              node_rank=cmd.node_rank if cmd.HasField("node_rank") else -1).check()
        except MessageError as e:
            log.warn("command_refused", job=cmd.job_id, error=str(e)[:200])
            return
        with self.lock:
            if not job.registered:       # (its wrapper still waits for Registered)
                job.held.append(command)
                return
        job.conn.send(command)

    def _refuse(self, conn: localsock.Conn, job_id: str, uid: int, reason: str, text: str) -> None:
        """Said to the wrapper every time; counted; logged once per job and uid."""
        conn.send(Refused(text))
        self.metrics.refused.labels(reason).inc()
        key = (job_id, uid, reason)
        if key not in self._refusals_said:
            if len(self._refusals_said) > 1000:
                self._refusals_said.clear()
            self._refusals_said.add(key)
            log.warn("wrapper_refused", job=job_id, uid=uid, reason=reason, detail=text[:300])

    def _settle_owners(self, sent: tuple[JobOnNode, ...], refused: dict[str, str]) -> None:
        """A report was acked: the coordinator's word on each job it held (its refusals
        came with the ack)."""
        with self.lock:
            for job in self.jobs.values():
                if not job.settled.is_set() and any(job.last is part for part in sent):
                    job.refusal = refused.get(job.spec.job_id, "")
                    job.settled.set()

    # -- rank logs ----------------------------------------------------------------------
    def _catalogue(self) -> Catalogue | None:
        if self.catalogue is None:
            try:
                self.catalogue = Catalogue.load()
            except CatalogueError as e:
                log.error("catalogue_unusable", error=str(e))
        return self.catalogue

    def _open_logs(self, job: LocalJob, log_dir: str) -> None:
        self._close_logs(job)
        catalogue = self._catalogue()
        if not log_dir or catalogue is None:
            return
        try:   # read only what the job's owner could read: a directory of its own
            owner = os.stat(log_dir).st_uid
        except OSError:
            owner = -1
        if job.uid != 0 and owner != job.uid:
            log.warn("log_dir_refused", job=job.spec.job_id, path=log_dir,
                     reason="not owned by the job's user")
            return
        state = os.path.join(self.cfg.state_dir, "offsets",
                             f"{job.spec.job_id}-attempt-{job.attempt}.json")
        job.logs = AttemptLogs(log_dir, state, catalogue)

    def _close_logs(self, job: LocalJob) -> None:
        """The attempt is over (a new one, or the wrapper left): its offsets are of no
        further use. (An agent that dies keeps them: that is what they are for.)"""
        if job.logs is None:
            return
        job.logs.close()
        try:
            os.unlink(job.logs.store.path)
        except OSError:
            pass
        job.logs = None
