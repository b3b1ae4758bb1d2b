"""The coordinator: the only place that decides.

A thin shell around ``core.state.Cluster``: heartbeats come in over gRPC
(Report), verdicts go out as verbs on each node's Watch stream, every incident is
written to the SQLite log and handed to the alert sender (which never blocks this
path). A status snapshot is written to ``STATE_DIR/status.json`` each second so
``watchdog-d status`` works without a connection.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc

from .. import log
from ..config import Config
from ..core.state import Cluster, Decision
from ..proto import convert, rpc
from ..proto import watchdog_pb2 as pb
from ..proto import watchdog_pb2_grpc as pb_grpc
from .alerts import AlertSender
from .status import snapshot
from .store import IncidentStore

TICK_S = 0.1


class _Outbox:
    """Per node: a queue of commands and the generation of its live Watch stream."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=10_000)
        self.generation = 0


class Coordinator(pb_grpc.CoordinatorServicer):
    def __init__(self, cfg: Config, *, clock=time.monotonic, sender: AlertSender | None = None):
        self.cfg = cfg
        self.clock = clock
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.outboxes: dict[str, _Outbox] = {}
        self.store = IncidentStore(Path(cfg.state_dir) / "incidents.sqlite")
        # a restarted coordinator still knows each job's recorded checkpoint
        self.cluster = Cluster(checkpoints=self.store.checkpoints())
        self.sender = sender or AlertSender(tuple(cfg.alert), cooldown_s=cfg.alert_cooldown)
        self.server: grpc.Server | None = None
        self.port = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self, listen: str | None = None) -> int:
        Path(self.cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self.server, self.port = rpc.make_server(self.cfg, listen or self.cfg.listen)
        self.server.add_generic_rpc_handlers((_handlers(self),))
        self.server.start()
        self.sender.start()
        self._thread = threading.Thread(target=self._loop, name="coordinator", daemon=True)
        self._thread.start()
        if self.cfg.metrics_port:
            from .metrics import serve_metrics

            self._metrics = serve_metrics(self, self.cfg.metrics_port)
        log.log("coordinator_started", listen=listen or self.cfg.listen, port=self.port,
                state_dir=self.cfg.state_dir)
        return self.port

    def stop(self, flush_alerts_s: float = 5.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self.server:
            self.server.stop(grace=0.5).wait(2)
        if self._metrics:
            self._metrics.shutdown()
        self.sender.stop(timeout=flush_alerts_s)
        self._write_status()

    # -- gRPC handlers -------------------------------------------------------------
    def Report(self, request: pb.Heartbeat, context: grpc.ServicerContext) -> pb.HeartbeatAck:
        try:
            report = convert.report_from_pb(request)
        except (convert.WireError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad heartbeat: {e}")
        with self.lock:
            self.cluster.ingest(report, self.clock())
            orders = [pb.Command(job_id=o.job_id, verb=o.verb, attempt=o.attempt,
                                 verdict_json=convert.verdict_to_json(o.verdict) if o.verdict else "",
                                 action=o.action, resume_from=o.resume_from, resume_step=o.resume_step)
                      for o in self.cluster.standing_orders(report.node_id)]
        self.wake.set()   # evaluate now: an exit must not wait for the next tick
        return pb.HeartbeatAck(seq=request.seq, commands=orders)

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext):
        if not request.node_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "watch without node_id")
        with self.lock:
            box = self.outboxes.setdefault(request.node_id, _Outbox())
            box.generation += 1
            mine = box.generation
        log.log("node_watching", node=request.node_id)
        while context.is_active() and not self._stop.is_set() and box.generation == mine:
            try:
                yield box.queue.get(timeout=0.5)
            except queue.Empty:
                continue

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        return pb.StatusReply(json=json.dumps(self.status()))

    # -- deciding -------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            return snapshot(self.cluster, self.clock())

    def _loop(self) -> None:
        last_status = 0.0
        while not self._stop.is_set():
            self.wake.wait(TICK_S)
            self.wake.clear()
            try:
                with self.lock:
                    decisions = self.cluster.evaluate(self.clock())
                    recorded = self.cluster.take_new_checkpoints()
                self._store_checkpoints(recorded)
                for d in decisions:
                    self._carry_out(d)
                if self.clock() - last_status >= 1.0 or decisions:
                    last_status = self.clock()
                    self._write_status()
            except Exception as e:  # keep deciding whatever one job did
                log.error("coordinator_loop_error", error=repr(e))

    def _store_checkpoints(self, recorded: dict[tuple[str, str], tuple[int, str]]) -> None:
        logged = set()
        for (job, run), (step, path) in recorded.items():
            try:
                self.store.save_checkpoint(job, run, step, path, time.time())
            except Exception as e:
                log.error("store_failed", error=repr(e))
            if (job, step) not in logged:
                logged.add((job, step))
                log.log("checkpoint_recorded", job=job, step=step, path=path)

    def _carry_out(self, d: Decision) -> None:
        verdict_json = ""
        if d.incident is not None:
            incident = replace(d.incident, ts=time.time())
            v = incident.verdict
            log.log("verdict", job=v.job, kind=v.kind, rank=v.rank_label, node=v.node,
                    step=v.step, action=incident.action,
                    detected_after_s=f"{v.detected_after_s:.2f}", cause=v.cause)
            try:
                self.store.record(incident)
            except Exception as e:
                log.error("store_failed", error=repr(e))
            if d.alert:
                self.sender.submit(incident, d.alert_urls)
            verdict_json = convert.verdict_to_json(v)
        if d.verb == "none":
            return
        action = d.incident.action if d.incident else ""
        attempt = d.attempt if d.attempt >= 0 else d.incident.verdict.attempt if d.incident else 0
        for node in d.nodes:
            cmd = pb.Command(job_id=d.job_id, verb=d.verb, attempt=attempt,
                             verdict_json=verdict_json, action=action,
                             resume_from=d.resume_from, resume_step=d.resume_step)
            with self.lock:
                box = self.outboxes.setdefault(node, _Outbox())
            try:
                box.queue.put_nowait(cmd)
            except queue.Full:
                log.warn("command_dropped", node=node, verb=d.verb, reason="outbox full")
        log.log("command", job=d.job_id, verb=d.verb, attempt=attempt, nodes=",".join(d.nodes),
                resume_from=d.resume_from or None)

    def _write_status(self) -> None:
        path = Path(self.cfg.state_dir) / "status.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.status()))
            os.replace(tmp, path)
        except OSError as e:
            log.warn("status_write_failed", error=e.strerror)


class _Malformed:
    """Stands for a request whose bytes did not parse; the handler answers
    INVALID_ARGUMENT (gRPC's default would be an opaque INTERNAL)."""

    def __init__(self, error: str):
        self.error = error


def _lenient(message_type):  # type: ignore[no-untyped-def]
    def parse(data: bytes):  # type: ignore[no-untyped-def]
        try:
            return message_type.FromString(data)
        except Exception as e:  # google.protobuf.message.DecodeError and friends
            return _Malformed(str(e) or type(e).__name__)
    return parse


def _checked(handler):  # type: ignore[no-untyped-def]
    def call(request, context):  # type: ignore[no-untyped-def]
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
        return handler(request, context)
    return call


def _handlers(c: Coordinator) -> grpc.GenericRpcHandler:
    def watch(request, context):  # type: ignore[no-untyped-def]
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
        yield from c.Watch(request, context)

    ser = lambda m: m.SerializeToString()  # noqa: E731
    return grpc.method_handlers_generic_handler("watchdog_d.v1.Coordinator", {
        "Report": grpc.unary_unary_rpc_method_handler(
            _checked(c.Report), _lenient(pb.Heartbeat), ser),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, _lenient(pb.WatchRequest), ser),
        "Status": grpc.unary_unary_rpc_method_handler(
            _checked(c.Status), _lenient(pb.StatusRequest), ser),
    })


def run_coordinator(cfg: Config) -> int:
    """``watchdog-d coordinator``: serve until SIGTERM/SIGINT."""
    import signal

    coordinator = Coordinator(cfg)
    coordinator.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    coordinator.stop()
    log.log("coordinator_stopped")
    return 0
