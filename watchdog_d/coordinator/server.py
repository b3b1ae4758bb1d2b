"""The coordinator: the only place that decides.

A thin shell around ``core.state.Cluster``, on one asyncio event loop in a thread of
its own (``grpc.aio``, see ``service``): heartbeats come in (Report), verdicts go out
as verbs on each node's Watch stream. The decision loop wakes when a report changed
something that matters, or every TICK_S to look at the jobs whose moment came
(``core.deadline``); it notices when it itself ran late (a paused VM, overload) and
tells the core, which then judges no node on that silence. Slow I/O never runs on
the loop: incidents and checkpoints go to SQLite, the status snapshot to
``STATE_DIR/status.json``, both from a worker thread, after the verbs are queued;
alerts go to the sender's thread.
"""
from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from .. import log
from ..config import Config
from ..core.silence import OWN_STALL_S
from ..core.state import COORDINATOR, Cluster, Decision
from ..proto import convert, rpc
from ..proto import watchdog_pb2 as pb
from ..sdnotify import Liveness, notify, supervise
from .alerts import AlertSender
from .ha import HA, LEADER_KEY, PREFIX
from .health import LoopHealth
from .lead import follow, standby_ack
from .metrics import CoordinatorMetrics
from .picture import Picture
from .records import Records
from .replica import Replica
from .service import BadRequest, Outbox, handlers
from .status import STATUS_FILE
from .store import IncidentStore

TICK_S = 0.1
JOBS_PER_PASS = 16        # jobs judged before reports get a turn
STATUS_WRITE_S = 1.0      # status.json is rewritten this often (or on a decision)
LATE_S = 0.5              # a Report that waited this long for the loop: it is overloaded ...
LOAD_WINDOW_S = 2.0       # ... until none has for this long
GC_EVERY_S = 30.0         # the daemon collects cyclic garbage itself, this often (see run_coordinator)
# the decision loop silent this long is wedged, and systemd's pings stop: 10 x the 1 s that
# already counts as an own stall, and far above a pass's GC (tens of ms, every GC_EVERY_S)
DECIDE_ALLOWANCE_S = 10.0


class Coordinator(Records, Picture):
    def __init__(self, cfg: Config, *, clock=time.monotonic, sender: AlertSender | None = None):
        self.cfg = cfg
        self.clock = clock
        self.store = IncidentStore(Path(cfg.state_dir) / "incidents.sqlite")
        self.bases: dict[str, convert.Base] = {}   # node -> its last report, for the next
        self.blank_picture()
        # (--ha: undelivered alerts are kept in etcd, where the next leader finds them)
        self.sender = sender or AlertSender(tuple(cfg.alert), cooldown_s=cfg.alert_cooldown,
                                            spool_dir=None if cfg.ha else Path(cfg.state_dir) / "alerts")
        self.outboxes: dict[str, Outbox] = {}
        self._late_at = float("-inf")              # a Report waited LATE_S for the loop then
        self.port = 0
        self.counters = {"reports": 0, "reports_refused": 0, "reports_incomplete": 0, "commands": 0,
                         "commands_dropped": 0, "jobs_refused": 0}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="coordinator-io")
        self._status_io = ThreadPoolExecutor(1, thread_name_prefix="coordinator-status")
        self._snap: dict = {"written_at": time.time(), "jobs": []}
        self._snap_at, self._snap_cost = float("-inf"), 0.0
        self._snap_json: tuple[dict, str] | None = None
        self._written_at = float("-inf")
        # the daemon's; an embedded coordinator (one per job) gets its own (wrapper.run)
        self.status_path = Path(cfg.state_dir) / STATUS_FILE
        self._status_failing = False
        self._job_errors: dict[str, str] = {}      # job -> the evaluation error last logged
        self.metrics = CoordinatorMetrics(self)
        self.health = LoopHealth(clock)
        self.collect_garbage = False      # set by run_coordinator, which turns automatic GC off
        # an embedded coordinator shares its process (and its stalls) with the only agent it
        # hears: its own trouble is logged, not recorded or alerted
        self.announce_isolation = True
        self.liveness = Liveness()        # the decision loop beats it each pass (run_coordinator)
        self.last_verdict = ""
        # --ha: one of several coordinators; it decides only while it leads (coordinator.lead)
        self.ha = HA(cfg, clock, lambda: self.health.passed_at) if cfg.ha else None
        self.replica = None if self.ha is None else Replica(self.ha.etcd, PREFIX, LEADER_KEY,
                                                             self.ha.name, self.store)
        if self.ha is not None:
            self.ha.replica, self.ha.on_lead, self.sender.mirror = self.replica, self.sender.adopt, self.replica
        self.leading = self.ha is None
        self.deciding = self.leading      # ... and its lease is known alive (or etcd is down)
        self.health.standby = not self.leading
        self.epoch = 0                    # the leader's epoch (ours while leading); 0: no --ha

    # -- lifecycle ---------------------------------------------------------------
    def start(self, listen: str | None = None) -> int:
        Path(self.cfg.state_dir).mkdir(parents=True, exist_ok=True)
        if self.ha is not None:
            self.ha.join()                # etcd answers, the name is free: else one line, exit 2
        self.metrics.serve(self.cfg)      # first: a port in use stops the start, nothing runs yet
        ready, failed = threading.Event(), []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                loop.run_until_complete(self._serve(listen or self.cfg.listen, ready))
            except BaseException as e:       # cannot listen, bad credentials: the caller hears
                failed.append(e)
            finally:
                ready.set()
                # no task left pending: one destroyed later says so on stderr, where the
                # wrapper's verdict must be the last line
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:
                    loop.run_until_complete(asyncio.wait(left, timeout=2.0))
                loop.close()

        self._thread = threading.Thread(target=run, name="coordinator", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self.metrics.close()
            raise failed[0]
        self.sender.start()
        if self.ha is not None:
            self.ha.start()
        log.log("coordinator_started", listen=listen or self.cfg.listen, port=self.port,
                state_dir=self.cfg.state_dir)
        return self.port

    async def _serve(self, listen: str, ready: threading.Event) -> None:
        self._done, self._wake = asyncio.Event(), asyncio.Event()
        server, self.port = rpc.make_server(self.cfg, listen)
        server.add_generic_rpc_handlers((handlers(self),))
        await self.health.add_to(server)
        await server.start()
        ready.set()
        self._deciding = self.health.task(self._decide_loop)   # SERVING while it runs
        await self._done.wait()
        self._deciding.cancel()
        await asyncio.gather(self._deciding, return_exceptions=True)
        for box in self.outboxes.values():       # end every Watch stream
            if box.stream is not None:
                box.stream.put_nowait(None)
        await server.stop(0.5)

    def stop(self, flush_alerts_s: float = 5.0) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._done.set)   # type: ignore[union-attr]
            self._thread.join(timeout=5)
        if self.ha is not None:
            self.ha.stop()
        self.metrics.close()
        self.sender.stop(timeout=flush_alerts_s)
        self._io.shutdown(wait=True)
        self._status_io.shutdown(wait=True)
        self._write_status(None)

    # -- reports and commands (on the loop) -------------------------------------------
    def report(self, request: pb.Heartbeat, waited: float | None = None) -> pb.HeartbeatAck:
        """O(ranks in the report): completed from the node's last report where it left
        parts out (``agent.reporter``), ingested, answered with the standing orders.
        ``waited``: how long it waited for this loop (from the agent's deadline)."""
        node, now = request.node_id[:200], self.clock()
        if not self.deciding:             # --ha: a standby, or a leader unsure it still leads
            return standby_ack(self, request.seq)
        if request.epoch > self.epoch and self.ha is not None:
            # no leader after this one is known to etcd while it leads: a forged or garbled
            # epoch (or this one was just deposed: the HA thread looks now)
            self.counters["reports_refused"] += 1
            self.ha.wake.set()
            raise BadRequest(f"epoch {request.epoch} is not a leader's this coordinator knows "
                             f"(it leads in epoch {self.epoch})")
        if waited is not None and waited > LATE_S:
            self._late_at = now
        try:
            report = convert.report_from_pb(request, self.bases.get(node), now)
        except convert.MissingBase:
            # it leaves out what this coordinator does not hold (it restarted, an ack
            # was lost): the node is alive; the next report carries everything
            self.counters["reports_incomplete"] += 1
            self.cluster.heard(node, now)
            return pb.HeartbeatAck(seq=request.seq, send_all=True, deltas=True, epoch=self.epoch)
        except (convert.WireError, ValueError) as e:
            self.counters["reports_refused"] += 1
            raise BadRequest(f"bad heartbeat: {e}") from None
        self.counters["reports"] += 1
        self.cluster.ingest(report, now)
        for r in self.cluster.new_refusals:      # (once per episode: until the node drops the job)
            self.counters["jobs_refused"] += 1
            log.warn("job_refused", job=r.job_id, node=r.node_id, owner_uid=r.owner, uid=r.uid)
        self.cluster.new_refusals.clear()
        if report.leaving:
            self.bases.pop(node, None)
        else:
            self.bases[node] = convert.Base(report.seq, now, {p.spec.job_id: p for p in report.jobs})
        orders = [pb.Command(job_id=o.job_id, verb=o.verb, attempt=o.attempt,
                             verdict_json=convert.verdict_to_json(o.verdict) if o.verdict else "",
                             action=o.action, resume_from=o.resume_from, resume_step=o.resume_step,
                             node_rank=o.node_rank if o.node_rank >= 0 else None, epoch=self.epoch)
                  for o in self.cluster.standing_orders(report.node_id)]
        if self.cluster.dirty:
            self._wake.set()     # type: ignore[union-attr]   # an exit must not wait for a tick
        return pb.HeartbeatAck(seq=request.seq, commands=orders, deltas=True, epoch=self.epoch)

    def blank_picture(self) -> None:
        """No node heard yet. What the store keeps comes back: a restarted coordinator (or
        one taking the --ha lead) still knows each job's recorded checkpoint and the nodes
        marked suspect."""
        self.cluster = Cluster(checkpoints=self.store.checkpoints())
        self._restore_suspects()
        self.bases.clear()

    def waited(self, node: str, sent_mono_s: float) -> float | None:
        """How long a streamed heartbeat took to reach this loop beyond the quickest of its
        node's recent ones (a stream has no deadline to read it from, as a Report has):
        the node's clock mapped onto this one (core.straggler.NodeClocks)."""
        local = self.cluster.clocks.to_local(node, sent_mono_s) if sent_mono_s > 0 else None
        return None if local is None else max(0.0, self.clock() - local)

    def outbox(self, node: str) -> Outbox:
        box = self.outboxes.get(node)
        if box is None:
            box = self.outboxes[node] = Outbox()
        return box

    # -- deciding ------------------------------------------------------------------------
    async def _decide_loop(self) -> None:
        last = collected = self.clock()
        while True:
            self.liveness.beat("decide")
            try:
                async with asyncio.timeout(TICK_S):               # (no task of its own)
                    await self._wake.wait()                      # type: ignore[union-attr]
            except TimeoutError:
                pass
            self._wake.clear()                                       # type: ignore[union-attr]
            now = self.clock()
            try:
                decisions: list[Decision] = []
                if self.ha is not None:
                    may, said = await follow(self, now)
                    decisions += said
                    if not may:           # a standby, or a leader whose lease is in doubt
                        for d in decisions:
                            self._carry_out(d)
                        if self.collect_garbage and now - collected >= GC_EVERY_S:
                            collected = now       # (automatic GC is off: a standby collects too)
                            gc.collect()
                        last = self.health.passed_at = self.clock()
                        continue
                if now - last > TICK_S + OWN_STALL_S:
                    # this loop did not run: whatever nodes said waits in its sockets
                    decisions += self.cluster.own_stall(last, now)
                # Reports that waited long for this loop: they queue in the sockets, some
                # longer than others; a node kept waiting is not a silent node
                decisions += self.cluster.load(now, now - self._late_at < LOAD_WINDOW_S)
                decisions += self.cluster.evaluate(now, JOBS_PER_PASS)
                self._log_errors()
                recorded = self.cluster.take_new_checkpoints()
                self._prune(self.cluster.forget_departed())
                for episode in self.cluster.episodes:
                    # (embedded: its own process was busy, torch starting or a job ending;
                    # nothing an operator acts on: INFO, which `run` does not print)
                    log.log("coordinator_isolated" if episode.began else "coordinator_recovered",
                            "WARN" if self.announce_isolation else "INFO", cause=episode.cause,
                            quiet_nodes=episode.quiet, nodes=episode.active)
                self.cluster.episodes.clear()
                for d in decisions:
                    if self.announce_isolation or d.job_id != COORDINATOR:
                        self._carry_out(d)
                if recorded:
                    self._io.submit(self._store_checkpoints, recorded)
            except Exception as e:  # keep deciding whatever one job did
                log.error("coordinator_loop_error", error=repr(e))
            if self.cluster.pending():
                self._wake.set()          # more jobs to judge: after the reports waiting now
            if self.collect_garbage and now - collected >= GC_EVERY_S:
                collected = now
                began = time.perf_counter()
                gc.collect()
                if time.perf_counter() - began > 0.2:
                    log.warn("gc_slow", seconds=f"{time.perf_counter() - began:.2f}")
            if decisions or now - self._written_at >= max(STATUS_WRITE_S, self._snap_interval()):
                self._written_at = now
                await self._fresh_snapshot()
                self._status_io.submit(self._write_status, self._snap_json)
            last = self.health.passed_at = self.clock()

    def _log_errors(self) -> None:
        """A job whose evaluation raised (the others were judged): said once per error.
        And the nodes just marked suspect."""
        for s in self.cluster.suspected:
            log.warn("node_suspect", node=s.node, reason=s.reason)
            # the node's agent is told (it drains the node from Slurm if it is set to)
            self.outbox(s.node).put(pb.Command(verb="suspect", action=s.reason[:300], epoch=self.epoch))
        if self.cluster.suspected:
            self._io.submit(self._store_suspects, list(self.cluster.suspected))
        self.cluster.suspected.clear()
        for job, e in self.cluster.errors:
            text = repr(e)[:300]
            if self._job_errors.get(job) != text:
                self._job_errors[job] = text
                log.error("evaluation_error", job=job, error=text,
                          effect="this job is not judged until it clears; other jobs are")
        self.cluster.errors.clear()
        if len(self._job_errors) > 1000:
            self._job_errors.clear()

    def _prune(self, departed: list[str]) -> None:
        for node in departed:
            self.bases.pop(node, None)
            box = self.outboxes.get(node)
            if box is not None and box.idle:
                del self.outboxes[node]
            log.log("node_departed", node=node)

    def _carry_out(self, d: Decision) -> None:
        """Verbs first (a teardown waits for nothing), then the record and the alert."""
        self.metrics.decided(d)
        incident = None if d.incident is None else replace(d.incident, ts=time.time())
        verdict_json = convert.verdict_to_json(incident.verdict) if incident else ""
        if d.verb != "none":
            action = d.note or (incident.action if incident else "")
            attempt = d.attempt if d.attempt >= 0 else incident.verdict.attempt if incident else 0
            for node in d.nodes:
                cmd = pb.Command(job_id=d.job_id, verb=d.verb, attempt=attempt,
                                 verdict_json=verdict_json, action=action,
                                 resume_from=d.resume_from, resume_step=d.resume_step,
                                 node_rank=d.node_rank if d.node_rank >= 0 else None,
                                 epoch=self.epoch)
                self.counters["commands"] += 1
                if not self.outbox(node).put(cmd):
                    self.counters["commands_dropped"] += 1
                    log.warn("command_dropped", node=node, reason="the node has not listened "
                             "for long; its oldest queued command made room")
            log.log("command", job=d.job_id, verb=d.verb, attempt=attempt, nodes=",".join(d.nodes),
                    resume_from=d.resume_from or None)
        if incident is not None:
            v = incident.verdict
            self.last_verdict = f"{v.kind} job={v.job}"
            # (the fields of ``events --json``: in the JSON log format, the incident itself)
            log.log("verdict", job=v.job, kind=v.kind, rank=v.rank, node=v.node,
                    step=v.step, action=incident.action,
                    detected_after_s=round(v.detected_after_s, 2), cause=v.cause, remedy=v.remedy)
            self._io.submit(self._record, incident)
            if d.alert:
                self.sender.submit(incident, d.alert_urls)

def run_coordinator(cfg: Config) -> int:
    """``watchdog-d coordinator``: serve until SIGTERM/SIGINT."""
    import resource
    import signal

    # a Watch stream per node: a 2,048-node cluster needs more than the usual 1,024 files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    # (before the start: a SIGTERM while it starts is a clean stop, not a kill half-way)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    coordinator = Coordinator(cfg)
    coordinator.start()
    # Python's automatic GC walks every live object now and then: with a thousand nodes'
    # reports alive that is a 30-60 ms stop of every Report every few seconds. Nothing
    # the coordinator keeps forms cycles; the little cyclic garbage the event loop makes
    # is collected by the decision loop every GC_EVERY_S, at a moment of its choosing.
    gc.freeze()
    gc.disable()
    coordinator.collect_garbage = True
    notify("READY=1")                   # gRPC listens
    coordinator.liveness.watch("decide", DECIDE_ALLOWANCE_S)
    supervise(coordinator.liveness, done, lambda: (
        f"jobs={len(coordinator.cluster.jobs)} nodes={len(coordinator.cluster.silence.seen)} "
        f"last_verdict={coordinator.last_verdict or 'none'}"))
    notify("STOPPING=1")
    coordinator.stop()
    log.log("coordinator_stopped")
    return 0
