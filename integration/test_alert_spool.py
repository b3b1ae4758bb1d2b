"""Alerts outlive a coordinator: a real ``watchdog-d coordinator`` whose alert
channel is down decides two incidents, is SIGKILLed, and the one started again
on the same STATE_DIR delivers each exactly once when the channel is back.

The incidents come from heartbeats sent with the agent's own reporting code
(as ``simnodes.py`` does): a rank dies by SIGKILL on each of two nodes."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from cluster import Cluster
from harness import free_port

from watchdog_d.agent.reporter import Reporter
from watchdog_d.core.model import JobOnNode, JobSpec, NodeReport, RankReport
from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc
from watchdog_d.proto.rpc import REPORT_TIMEOUT_S


class _Sink:
    """json:// receiver on a given port (the one the coordinator was told)."""

    def __init__(self, port: int) -> None:
        self.received: list[dict] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _report(node: str, job: str, seq: int, dead: bool) -> NodeReport:
    ranks = [RankReport(rank=0, local_rank=0, pid=1000, step=5, last_step_age_s=0.1,
                        last_step_dt_s=0.1, proc_state="R", cpu_percent=90.0)]
    if dead:
        ranks.append(RankReport(rank=1, local_rank=1, pid=1001, alive=False, exit_signal=9,
                                exit_age_s=0.0, step=5, proc_state="X", excerpt="Killed"))
    else:
        ranks.append(RankReport(rank=1, local_rank=1, pid=1001, step=5, last_step_age_s=0.1,
                                last_step_dt_s=0.1, proc_state="R", cpu_percent=90.0))
    part = JobOnNode(spec=JobSpec(job_id=job, command="torchrun train.py"), attempt=0,
                     state="running", ranks=tuple(ranks), run=f"run-{node}")
    return NodeReport(node_id=node, host=node, seq=seq, jobs=(part,))


def _pending(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "alerts").glob("*/*.json"))


def _wait(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_alerts_pending_at_a_sigkill_arrive_once_after_the_restart(tmp_path: Path) -> None:
    port = free_port()                              # nobody listens: the channel is down
    cluster = Cluster(tmp_path, [], alert_url=f"json://127.0.0.1:{port}/hook")
    sink = None
    try:
        channel = grpc.insecure_channel(cluster.address)
        stub = pb_grpc.CoordinatorStub(channel)
        jobs = {"n1": "spool-a", "n2": "spool-b"}
        for seq, dead in ((1, False), (2, True)):
            for node, job in jobs.items():
                stub.Report(Reporter().heartbeat(_report(node, job, seq, dead)), timeout=REPORT_TIMEOUT_S)
            time.sleep(0.3)
        channel.close()
        # both incidents decided, their alerts tried, failed and kept on disk
        assert _wait(lambda: len(_pending(cluster.state_dir)) == 2, 10.0), cluster.log("coordinator")
        assert _wait(lambda: cluster.log("coordinator").count("alert_failed") >= 2, 10.0)
        stored = [json.loads(p.read_text()) for p in _pending(cluster.state_dir)]
        assert sorted(s["job"] for s in stored) == ["spool-a", "spool-b"]

        sink = _Sink(port)                          # the channel is back ...
        cluster.restart_coordinator()               # ... for the coordinator started after a SIGKILL
        assert _wait(lambda: len(sink.received) >= 2, 15.0), cluster.log("coordinator")
        assert _wait(lambda: _pending(cluster.state_dir) == [], 5.0)
        time.sleep(1.5)                             # nothing more comes
        titles = sorted(a["title"] for a in sink.received)
        assert titles == [f"[watchdog-d] {job}: rank_exited rank 1 on {node}"
                          for node, job in sorted(jobs.items())], titles
        for alert in sink.received:
            lines = alert["message"].splitlines()
            assert lines[0].startswith("job: spool-") and "kind: rank_exited" in lines
        assert "alerts_requeued count=2" in cluster.log("coordinator")
    finally:
        if sink is not None:
            sink.close()
        cluster.stop()
