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
import json
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
from .health import LoopHealth
from .metrics import CoordinatorMetrics
from .records import Records
from .service import BadRequest, Outbox, handlers
from .status import STATUS_FILE, job_status, snapshot, status_text, to_json, write_status
from .store import IncidentStore

TICK_S = 0.1
JOBS_PER_PASS = 16        # jobs judged (or put in the snapshot) before reports get a turn
STATUS_MIN_S = 0.25       # the snapshot is rebuilt at most this often ...
STATUS_SHARE = 0.01       # ... and at most this share of the loop's time goes to it
STATUS_WRITE_S = 1.0      # status.json is rewritten this often (or on a decision)
LATE_S = 0.5              # a Report that waited this long for the loop: it is overloaded ...
LOAD_WINDOW_S = 2.0       # ... until none has for this long
GC_EVERY_S = 30.0         # the daemon collects cyclic garbage itself, this often (see run_coordinator)
# the decision loop silent this long is wedged, and systemd's pings stop: 10 x the 1 s that
# already counts as an own stall, and far above a pass's GC (tens of ms, every GC_EVERY_S)
DECIDE_ALLOWANCE_S = 10.0


class Coordinator(Records):
    def __init__(self, cfg: Config, *, clock=time.monotonic, sender: AlertSender | None = None):
        self.cfg = cfg
        self.clock = clock
        self.store = IncidentStore(Path(cfg.state_dir) / "incidents.sqlite")
        # a restarted coordinator still knows each job's recorded checkpoint
        self.cluster = Cluster(checkpoints=self.store.checkpoints())
        self._restore_suspects()                   # ... and the nodes it marked suspect
        self.sender = sender or AlertSender(tuple(cfg.alert), cooldown_s=cfg.alert_cooldown,
                                            spool_dir=Path(cfg.state_dir) / "alerts")
        self.outboxes: dict[str, Outbox] = {}
        self.bases: dict[str, convert.Base] = {}   # node -> its last report, for the next
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

    # -- lifecycle ---------------------------------------------------------------
    def start(self, listen: str | None = None) -> int:
        Path(self.cfg.state_dir).mkdir(parents=True, exist_ok=True)
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
        if waited is not None and waited > LATE_S:
            self._late_at = now
        try:
            report = convert.report_from_pb(request, self.bases.get(node), now)
        except convert.MissingBase:
            # it leaves out what this coordinator does not hold (it restarted, an ack
            # was lost): the node is alive; the next report carries everything
            self.counters["reports_incomplete"] += 1
            self.cluster.heard(node, now)
            return pb.HeartbeatAck(seq=request.seq, send_all=True, deltas=True)
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
                             node_rank=o.node_rank if o.node_rank >= 0 else None)
                  for o in self.cluster.standing_orders(report.node_id)]
        if self.cluster.dirty:
            self._wake.set()     # type: ignore[union-attr]   # an exit must not wait for a tick
        return pb.HeartbeatAck(seq=request.seq, commands=orders, deltas=True)

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
            self.outbox(s.node).put(pb.Command(verb="suspect", action=s.reason[:300]))
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
                                 node_rank=d.node_rank if d.node_rank >= 0 else None)
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

    # -- I/O off the loop --------------------------------------------------------------
    def _write_status(self, snap_json: tuple[dict, str] | None) -> None:
        text = to_json(snapshot(self.cluster, self.clock())) if snap_json is None else snap_json[1]
        self._status_failing = write_status(self.status_path, text, self._status_failing)

    # -- status ---------------------------------------------------------------------------
    def _snap_interval(self) -> float:
        return max(STATUS_MIN_S, self._snap_cost / STATUS_SHARE)

    async def _fresh_snapshot(self) -> dict:
        """The status picture, rebuilt at most every ``_snap_interval``, JOBS_PER_PASS jobs
        at a time with reports served in between (a job that ended meanwhile is left out)."""
        now = self.clock()
        if now - self._snap_at < self._snap_interval():
            return self._snap
        self._snap_at = now                 # (one rebuild at a time)
        cost, began, jobs, texts = 0.0, time.perf_counter(), [], []
        for i, job_id in enumerate(sorted(self.cluster.jobs)):
            if i and i % JOBS_PER_PASS == 0:
                cost += time.perf_counter() - began
                await asyncio.sleep(0)
                began = time.perf_counter()
            book = self.cluster.jobs.get(job_id)
            if book is not None:
                job = job_status(self.cluster, book, self.clock())
                job["alerts"] = {"to": len({*self.sender.default_urls, *book.spec.alert_urls}),
                                 "drill_sent": self.sender.sent_for(job_id, "[drill: ")}
                jobs.append(job)
                texts.append(json.dumps(job))     # here, in slices, not in one long hold of the GIL
        self._snap_cost = cost + time.perf_counter() - began
        self._snap = {"written_at": time.time(), "jobs": jobs}
        self._snap_json = (self._snap, status_text(self._snap["written_at"], texts))
        return self._snap

    async def status_json(self) -> str:
        snap = await self._fresh_snapshot()
        if self._snap_json is None or self._snap_json[0] is not snap:
            self._snap_json = (snap, to_json(snap))
        return self._snap_json[1]

    def status(self) -> dict:
        """The status picture, from any thread."""
        loop = self.loop
        if loop is None or not loop.is_running():
            return snapshot(self.cluster, self.clock())
        try:
            return asyncio.run_coroutine_threadsafe(self._fresh_snapshot(), loop).result(timeout=5)
        except Exception:
            return self._snap


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
