"""The agent: one per node. Observes, never decides.

Threads: the unix-socket server (one thread per wrapper, ``wrappers``), the observer (polls
beacons and processes every ``poll_interval``), the reporter (sends the newest
heartbeat on the uplink's stream; a report is the whole state, so a coordinator that was
away gets everything it missed with the next one that goes through), the stream's reader
(acks, and verbs pushed by the coordinator, handed to the job's wrapper), and the watcher
(the verbs of a coordinator older than the stream, on its Watch stream).
"""
from __future__ import annotations

import socket
import threading
import time
import grpc

from .. import log
from ..config import Config
from ..core.model import JobOnNode, NodeReport
from ..logs.fingerprints import Catalogue
from ..proto import localsock, rpc
from ..proto import watchdog_pb2 as pb
from ..sdnotify import Liveness, notify, supervise
from . import drain, drills, glance
from .exits import ExitWatcher
from .hardware import Hardware
from .link import WATCH_RETRY_S, Link
from .metrics import AgentMetrics
from .observe import observe_job
from .ranklogs import POLL_S as LOG_POLL_S
from .ranklogs import QUIET_POLL_S as LOG_QUIET_POLL_S
from .ranklogs import with_logs
from .reporter import MIN_GAP_S, Reporter, signatures
from .uplink import Uplink
from .wrappers import LocalJob, WrapperSide

# a loop silent for 5 of its longest passes, and 10 s at least (a log burst on a slow disk is
# no wedge), is stalled: no more pings to systemd. (The watcher blocks on its Watch stream.)
LOOP_PASSES, LOOP_FLOOR_S = 5, 10.0
# between glances (agent/glance.py) the observer still observes in full this often: what a
# glance does not see (a stack written, a GPU's or the kernel's finding) waits at most this
FULL_EVERY_S = 1.0
# a heartbeat waits this long at most for the observer's fresh observation (a pass takes
# ~1 ms; one held up by a big log read does not hold the heartbeat up with it)
REFRESH_WAIT_S = 0.2


class Agent(WrapperSide):
    def __init__(self, cfg: Config, coordinator: str | None = None):
        self.cfg = cfg
        self.target = coordinator or cfg.coordinator
        self.node_id = cfg.node_id
        self.host = socket.gethostname()
        self.jobs: dict[str, LocalJob] = {}
        self.lock = threading.Lock()
        # held while beacons and logs are read (one observation at a time), and while a
        # job's attempt, tracks or logs change; taken before ``lock``, never after it
        self.observing = threading.Lock()
        self._stop = threading.Event()
        self._send_now = threading.Event()
        self._latest: NodeReport | None = None
        self._seq = 0
        self._signature: tuple = ((), ())
        self._urgent = False
        self._sent_at = float("-inf")
        self._refusals_said: set = set()       # (job, uid, reason) logged already
        self._drained_for: set[str] = set()     # suspicions this agent drained the node for
        self._drain_failed = ""                 # why the last drain failed, for the next report
        self.reporter = Reporter()
        self.metrics = AgentMetrics(self)
        self.uplink = Uplink(cfg, [t.strip() for t in self.target.split(",") if t.strip()],
                             on_push=self._deliver_all, on_switch=self._switched,
                             counted=self.metrics.reported, on_stale=self._deliver_all)
        self.metadata = self.uplink.metadata
        self.server: localsock.Server | None = None
        self.reachable = True
        self.link = Link(self.target, tls=bool(cfg.tls_ca or cfg.tls_cert))
        self.liveness = Liveness()             # the observer's and reporter's passes
        self._threads: list[threading.Thread] = []
        self.catalogue: Catalogue | None = None
        self._observe_soon = threading.Event()
        self._fresh = threading.Event()      # the observer finished a full observation
        self._seen: tuple = ()               # what the last full observation's glance saw
        self._glances: dict[str, glance.Glance] = {}       # by beacon directory
        # a rank's death wakes the observer at once (and dates the death exactly)
        self.exits = ExitWatcher(on_exit=lambda pid: self._observe_soon.set())
        # GPUs (NVML) and the kernel log: findings on the ranks they concern, telemetry per GPU
        self.hardware = Hardware(cfg.gpu_poll_interval, cfg.kmsg_path, cfg.gpu_checks)

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self.server = localsock.Server(self.cfg.socket, self._serve_wrapper)
        self.server.start()
        self.hardware.start()
        # a reporter pass: one wait (heartbeat_interval, or link.py's backoff: ≤ 2 s unreachable,
        # ≤ 5 s refused), one Report's deadline: at most ~7 s, well inside the 20 s allowed
        self.liveness.watch("observer", max(LOOP_FLOOR_S, LOOP_PASSES * self.cfg.poll_interval))
        self.liveness.watch("reporter", max(LOOP_FLOOR_S, LOOP_PASSES * (
            max(self.cfg.heartbeat_interval, 2.0) + rpc.REPORT_TIMEOUT_S)))
        for name, target in (("observer", self._observe_loop), ("reporter", self._report_loop),
                             ("watcher", self._watch_loop)):
            t = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.log("agent_started", node=self.node_id, coordinator=self.target, socket=self.cfg.socket)

    def stop(self) -> None:
        self._stop.set()
        self._send_now.set()
        self._observe_soon.set()
        self.exits.stop()
        self.hardware.stop()
        if self.server:
            self.server.close()
        self._say_goodbye()
        self.uplink.close()

    @property
    def stub(self):  # type: ignore[no-untyped-def]
        """The coordinator that answers now (Status, Drill; Watch for an old one)."""
        return self.uplink.stub

    def _switched(self, target: str) -> None:
        """Another coordinator answers from now on: it holds none of our reports."""
        self.reporter.forget()
        log.log("coordinator_switched", coordinator=target)

    def _say_goodbye(self) -> None:
        """One last report saying this agent leaves: its silence from now means nothing."""
        report = self._latest
        if report is None or not self.reachable:
            return
        try:
            self.uplink.send(self.reporter.heartbeat(report, leaving=True), timeout=1.0)
        except (grpc.RpcError, ValueError):
            pass

    # -- observing and reporting -----------------------------------------------------
    def observe_now(self) -> None:
        """Beacons, processes and logs of every job, then the report. Reading a job's
        logs may take long (a big burst, a slow disk): it holds ``observing``, not
        ``lock``, which delivering a command needs."""
        with self.observing:
            self._seen = self._glance(time.monotonic(), relist=True)
            self._observe(time.monotonic())

    def _glance(self, now: float, relist: bool = False) -> tuple:
        """(under ``observing``) What a glance sees of every job; logs that are due are read
        (their findings so far are part of it)."""
        with self.lock:
            jobs = list(self.jobs.values())
        out, dirs = [], set()
        for job in jobs:
            self._read_logs(job, now)
            seen: tuple = ()
            if job.beacon_dir:
                dirs.add(job.beacon_dir)
                g = self._glances.get(job.beacon_dir)
                if g is None:
                    g = self._glances[job.beacon_dir] = glance.Glance(job.beacon_dir,
                                                                      job.pids.host_pid)
                seen = g.key(relist)
            out.append((job.spec.job_id, job.attempt, job.state, seen,
                        job.logs.found if job.logs is not None else 0))
        for gone in set(self._glances) - dirs:        # attempts over: their files let go
            self._glances.pop(gone).close()
        return tuple(out)

    def _moved(self) -> bool:
        """Has anything but steps changed since the last full observation?"""
        with self.observing:
            return self._glance(time.monotonic()) != self._seen

    def _observe(self, now: float) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
        seen: dict[int, tuple[int, tuple]] = {}          # id(job) -> (attempt, ranks)
        for job in jobs:
            seen[id(job)] = (job.attempt, self._observe_job(job, now))
        with self.lock:
            parts = []
            for job in self.jobs.values():
                attempt, ranks = seen.get(id(job), (-1, ()))
                if attempt != job.attempt:    # attached meanwhile: next pass
                    ranks = ()
                job.last = JobOnNode(spec=job.spec, attempt=job.attempt, state=job.state,
                                     exit_code=job.exit_code, ranks=ranks, note=job.note,
                                     run=job.run, owner=job.uid, node_rank=job.node_rank)
                parts.append(job.last)
            self._seq += 1
            gpus = self.hardware.gpus
            self._latest = NodeReport(node_id=self.node_id, host=self.host, seq=self._seq,
                                      jobs=tuple(parts), gpus=gpus)
            self.metrics.observed_at = now
            # what changes deserve a heartbeat now (or soon) rather than at the next interval
            urgent, changed = signatures(parts, gpus)
            if urgent != self._signature[0]:
                self._urgent = True
            send = (urgent, changed) != self._signature
            self._signature = (urgent, changed)
        if send:
            self._send_now.set()

    def _observe_job(self, job: LocalJob, now: float) -> tuple:
        """(under ``observing``)"""
        ranks = observe_job(job.beacon_dir, job.tracks, now, self.exits, job.pids.host_pid,
                            self.cfg.timing_interval if self.cfg.straggler_checks else 0.0) \
            if job.beacon_dir else ()
        # logs at their own pace, but at once when a rank died (its last lines)
        self._read_logs(job, now, force=any(not r.alive for r in ranks))
        if job.logs is not None:
            ranks = with_logs(ranks, job.logs, job.spec.min_stall_timeout_s / 2)
        return self.hardware.with_hardware(ranks, now)

    def _read_logs(self, job: LocalJob, now: float, force: bool = False) -> None:
        """(under ``observing``)"""
        pace = LOG_QUIET_POLL_S if job.logs is not None and job.logs.quiet else LOG_POLL_S
        if job.logs is not None and (force or now - job.logs_read_at >= pace):
            job.logs_read_at = now
            try:
                job.logs.poll()
            except Exception as e:   # a log must never stop the watching
                log.error("log_poll_error", job=job.spec.job_id, error=repr(e)[:200])

    def _observe_loop(self) -> None:
        # a glance every poll_interval; a full observation when it saw a change, when a
        # rank's exit woke us, and every FULL_EVERY_S
        woken, full_at = True, float("-inf")
        while not self._stop.is_set():
            self.liveness.beat("observer")
            try:
                if woken or time.monotonic() - full_at >= FULL_EVERY_S or self._moved():
                    full_at = time.monotonic()
                    self.observe_now()
                    self._fresh.set()
            except Exception as e:
                log.error("observe_error", error=repr(e))
            woken = self._observe_soon.wait(self.cfg.poll_interval)
            self._observe_soon.clear()

    def _refresh(self) -> None:
        """Before a heartbeat: a full observation, by the observer (between changes it only
        glances, so steps and ages would be up to FULL_EVERY_S old; asked for, it is the
        second's one full pass); a change found then goes with this heartbeat."""
        at = self.metrics.observed_at
        if at is not None and time.monotonic() - at <= self.cfg.poll_interval:
            return
        self._fresh.clear()
        self._observe_soon.set()
        self._fresh.wait(REFRESH_WAIT_S)
        self._send_now.clear()

    def _report_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self.liveness.beat("reporter")
            self._send_now.wait(self.cfg.heartbeat_interval if backoff == 0 else backoff)
            self._send_now.clear()
            gap = MIN_GAP_S - (time.monotonic() - self._sent_at)
            if not self._urgent and backoff == 0 and gap > 0 and self._stop.wait(gap):
                return           # changes that come meanwhile go with this report
            self._refresh()
            self._urgent = False
            report = self._latest
            if report is None:
                continue
            if self._stop.is_set():
                return
            try:
                self._sent_at = time.monotonic()
                if not self.uplink.connected:
                    self.reporter.forget()       # a new stream: everything
                heartbeat, problem = self.reporter.heartbeat(report), self._drain_failed
                heartbeat.drain_failed = problem
                ack = self.uplink.send(heartbeat)
                if problem and self._drain_failed == problem:
                    self._drain_failed = ""          # (said once: the coordinator alerts)
                if self.reporter.acked(report, ack):
                    self._send_now.set()       # the coordinator wants everything: now
                self._settle_owners(report.jobs, {c.job_id: c.action for c in ack.commands
                                                  if c.verb == "refuse"})
                for cmd in ack.commands:
                    self._deliver(cmd)
                self.link.ok()
                self.reachable, backoff = True, 0.0
            except ValueError:      # channel closed under us: stopping
                return
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                self.reachable, backoff = False, self.link.after(e, backoff)   # (says why, once)

    def _watch_loop(self) -> None:
        """Only for a coordinator older than the stream (which carries the verbs)."""
        delay = 0.0
        while not self._stop.is_set():
            if self.uplink.streaming:
                self._stop.wait(WATCH_RETRY_S)
                continue
            try:
                stream = self.stub.Watch(pb.WatchRequest(node_id=self.node_id),
                                         metadata=self.metadata)
                for cmd in stream:
                    self._deliver(cmd)
                    if self._stop.is_set():
                        stream.cancel()
            except ValueError:      # channel closed: stopping
                return
            except grpc.RpcError as e:   # refused: said once, backing off (unreachable: by the reports)
                delay = self.link.after(e, delay, say_unreachable=False)
            self._stop.wait(max(WATCH_RETRY_S, delay if self.link.failing else 0.0))

    def _deliver_all(self, ack: pb.HeartbeatAck) -> None:
        """Commands pushed on the stream, or in a stale leader's ack (each is fenced there)."""
        for cmd in ack.commands:
            self._deliver(cmd)

    def _deliver(self, cmd: pb.Command) -> None:
        if cmd.epoch < self.uplink.epoch and cmd.verb != "dump_stacks":
            # --ha fencing: decided by a leader older than one this agent has heard since (a
            # deposed one that woke up): no verb that acts is carried out (a stack dump, which
            # only reads, still is)
            self.metrics.fenced.inc()
            log.warn("command_fenced", job=cmd.job_id or None, verb=cmd.verb, epoch=cmd.epoch,
                     newest_epoch=self.uplink.epoch)
            return
        if cmd.verb == "suspect":             # about the node, not a job
            self._suspected(cmd.action)
            return
        if cmd.verb == "drill":               # the agent injects it, not the wrapper
            drills.deliver(self, cmd)
            return
        self._to_wrapper(cmd)


    def _suspected(self, reason: str) -> None:
        """The coordinator marked this node suspect: said; drained from Slurm once per
        reason when the agent is set to (``on_suspect``)."""
        log.warn("node_suspect", node=self.node_id, reason=reason[:300])
        if self.cfg.on_suspect != "drain" or reason in self._drained_for:
            return
        self._drained_for.add(reason)
        threading.Thread(target=self._drain, args=(reason,), name="agent-drain", daemon=True).start()

    def _drain(self, reason: str) -> None:
        why = drain.drain_and_say(self.cfg.slurm_node, reason)
        if why:
            self._drain_failed = f"{self.node_id} could not be drained from Slurm: {why}"[:300]
            self._send_now.set()


def run_agent(cfg: Config) -> int:
    """``watchdog-d agent``: until SIGTERM; READY=1 when serving, WATCHDOG=1 while loops pass."""
    import signal

    agent = Agent(cfg)
    agent.metrics.serve(cfg)        # first: a port in use stops the start, nothing runs yet
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start()
    notify("READY=1")
    supervise(agent.liveness, done, lambda: _status_line(agent))
    notify("STOPPING=1")
    agent.stop()
    log.log("agent_stopped", node=cfg.node_id)
    return 0


def _status_line(agent: Agent) -> str:
    jobs = agent._latest.jobs if agent._latest else ()     # (no lock: a wedge must not hold us)
    return (f"jobs={len(jobs)} ranks={sum(len(j.ranks) for j in jobs)} "
            f"coordinator={'reachable' if agent.reachable else 'unreachable'}")
