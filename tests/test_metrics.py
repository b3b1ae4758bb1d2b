"""Prometheus ``/metrics`` of both daemons (real daemons in this process, scraped over HTTP)
and the coordinator's gRPC health service: SERVING only while its decision loop turns."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc as hpb_grpc
from prometheus_client.parser import text_string_to_metric_families

from watchdog_d.agent.daemon import Agent
from watchdog_d.cli import main
from watchdog_d.config import Config, ConfigError
from watchdog_d.coordinator import health
from watchdog_d.coordinator.server import Coordinator
from watchdog_d.core.model import GpuState, JobSpec
from watchdog_d.proto import localsock
from watchdog_d.proto import watchdog_pb2 as pb
from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc
from watchdog_d.proto.local import AttemptStarted, Register, Registered
from watchdog_d.rank.beacon import BeaconWriter, slot_path

SPEC = pb.JobSpec(job_id="jm", on_failure="teardown", min_stall_timeout_s=60, stall_factor=5,
                  startup_timeout_s=900, node_timeout_s=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _until(port: int, done, timeout: float = 10.0) -> dict:
    """Scrape until ``done(samples)``; the samples as {(name, labels...): value}."""
    deadline = time.monotonic() + timeout
    while True:
        text = _scrape(port)
        samples = {(s.name, *sorted(s.labels.items())): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        if done(samples):
            return samples
        assert time.monotonic() < deadline, text
        time.sleep(0.1)


def _checked(text: str) -> set[str]:
    """The exposition obeys DESIGN §3 (and promtool, where installed); its family names."""
    families = list(text_string_to_metric_families(text))
    for f in families:
        assert f.name.startswith("watchdogd_"), f.name
        assert f.documentation.strip(), f"{f.name} has no HELP"
        if f.type == "counter":
            assert {s.name for s in f.samples} <= {f.name + "_total"}, f.name
        assert not f.name.endswith(("_age", "_timeout", "_time")), f"{f.name}: no unit"
    promtool = shutil.which("promtool")
    if promtool:
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    return {f.name for f in families}


@pytest.fixture
def coordinator(tmp_path: Path):
    cfg = Config(state_dir=str(tmp_path / "coordinator"), metrics_port=_free_port(),
                 metrics_address="127.0.0.1")
    c = Coordinator(cfg)
    c.start("127.0.0.1:0")
    yield c
    c.stop(flush_alerts_s=0.5)


def _report(stub, seq: int, exited: bool = False) -> None:
    ranks = [pb.RankState(rank=0, alive=True, step=42, last_step_age_s=0.5),
             pb.RankState(rank=1, alive=not exited, step=42, last_step_age_s=0.5,
                          exit_code=1 if exited else 0)]
    gpus = [pb.GpuState(index=0, uuid="GPU-a", util_ratio=0.5, mem_used_bytes=1 << 30,
                        mem_total_bytes=80 << 30, temperature_c=60, power_w=300, ecc_uncorrected=0,
                        remapped_pending=0, recovery_action=0),
            pb.GpuState(index=1, uuid="GPU-b", util_ratio=-1, mem_used_bytes=-1, mem_total_bytes=-1,
                        temperature_c=-1, power_w=-1, ecc_uncorrected=-1, remapped_pending=-1,
                        recovery_action=-1, lost=True, last_xid=79, xid_count=1)]
    stub.Report(pb.Heartbeat(node_id="n1", seq=seq, jobs=[pb.JobOnNode(
        state="running", spec=SPEC, ranks=ranks)], gpus=gpus), timeout=5)


def test_the_coordinators_metrics_tell_the_picture_and_what_happened(coordinator) -> None:
    port = coordinator.cfg.metrics_port
    with grpc.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        _report(stub, 1)
        _report(stub, 2, exited=True)                 # rank 1 died: a verdict, a teardown
        samples = _until(port, lambda s: ("watchdogd_verdicts_total", ("kind", "rank_exited")) in s)
    names = _checked(_scrape(port))
    assert {"watchdogd_jobs", "watchdogd_job_attempt", "watchdogd_job_stall_timeout_seconds",
            "watchdogd_node_heartbeat_age_seconds", "watchdogd_rank_step",
            "watchdogd_rank_last_step_age_seconds", "watchdogd_verdicts", "watchdogd_alerts",
            "watchdogd_restarts", "watchdogd_reports", "watchdogd_commands_sent",
            "watchdogd_commands_dropped", "watchdogd_report_handling_seconds",
            "watchdogd_decision_loop_pass_age_seconds", "watchdogd_actions",
            "watchdogd_jobs_refused"} <= names
    rank0 = (("job_id", "jm"), ("node", "n1"), ("rank", "0"))
    assert samples[("watchdogd_jobs",)] == 1
    assert samples[("watchdogd_rank_step", *rank0)] == 42
    assert 0.5 <= samples[("watchdogd_rank_last_step_age_seconds", *rank0)] < 10
    assert samples[("watchdogd_job_stall_timeout_seconds", ("job_id", "jm"))] == 60
    assert samples[("watchdogd_verdicts_total", ("kind", "rank_exited"))] == 1
    assert samples[("watchdogd_reports_total", ("outcome", "ingested"))] >= 2
    assert samples[("watchdogd_report_handling_seconds_count",)] >= 2
    assert samples[("watchdogd_commands_sent_total",)] >= 1          # the teardown to n1
    assert samples[("watchdogd_restarts_total",)] == 0
    assert samples[("watchdogd_actions_total", ("action", "teardown"))] == 1
    assert samples[("watchdogd_actions_total", ("action", "gave_up"))] == 0
    assert samples[("watchdogd_jobs_refused_total",)] == 0
    assert samples[("watchdogd_decision_loop_pass_age_seconds",)] < 5
    gpu0, gpu1 = (("gpu", "0"), ("node", "n1")), (("gpu", "1"), ("node", "n1"))
    assert samples[("watchdogd_gpu_utilization_ratio", *gpu0)] == 0.5
    assert samples[("watchdogd_gpu_memory_total_bytes", *gpu0)] == 80 << 30
    assert samples[("watchdogd_gpu_power_watts", *gpu0)] == 300
    assert samples[("watchdogd_gpu_lost", *gpu0)] == 0 and samples[("watchdogd_gpu_lost", *gpu1)] == 1
    assert samples[("watchdogd_gpu_last_xid", *gpu1)] == 79
    assert ("watchdogd_gpu_temperature_celsius", *gpu1) not in samples      # not read: no series


def test_the_agents_metrics_show_its_ranks_and_its_reports(coordinator, tmp_path: Path) -> None:
    cfg = Config(coordinator=f"127.0.0.1:{coordinator.port}", node_id="n2",
                 socket=str(tmp_path / "agent.sock"), state_dir=str(tmp_path / "agent"),
                 metrics_port=_free_port(), metrics_address="127.0.0.1")
    agent = Agent(cfg)
    agent.metrics.serve(cfg)
    agent.hardware.gpus = (GpuState(0, uuid="GPU-a", util_ratio=0.25, mem_used_bytes=2 << 30,
                                    mem_total_bytes=80 << 30, temperature_c=55.0, power_w=250.5,
                                    ecc_uncorrected=3, remapped_pending=1, recovery_action=0),)
    agent.start()
    beacons = tmp_path / "beacons"
    beacons.mkdir()
    writer = BeaconWriter(slot_path(beacons, 0), os.getpid(), rank=0, local_rank=0,
                          now=time.monotonic())
    writer.write_step(7, time.monotonic())
    conn = localsock.connect(cfg.socket)
    try:
        conn.send(Register(spec=JobSpec(job_id="ja"), launcher_pid=os.getpid(), run="r1"))
        assert isinstance(conn.recv(timeout=5), Registered)
        conn.send(AttemptStarted(attempt=0, launcher_pid=os.getpid(), beacon_dir=str(beacons)))
        rank0 = (("job_id", "ja"), ("rank", "0"))
        samples = _until(cfg.metrics_port, lambda s: s.get(("watchdogd_agent_rank_step", *rank0)) == 7
                         and s[("watchdogd_agent_reports_total", ("outcome", "acked"))] >= 1)
        names = _checked(_scrape(cfg.metrics_port))
    finally:
        conn.close()
        agent.stop()
        agent.metrics.close()
    assert {"watchdogd_agent_info", "watchdogd_agent_heartbeat_age_seconds", "watchdogd_agent_jobs",
            "watchdogd_agent_job_attempt", "watchdogd_agent_rank_alive", "watchdogd_agent_rank_step",
            "watchdogd_agent_rank_last_step_age_seconds", "watchdogd_agent_reports",
            "watchdogd_agent_wrappers_refused"} <= names
    assert samples[("watchdogd_agent_wrappers_refused_total", ("reason", "owner"))] == 0
    assert samples[("watchdogd_agent_jobs",)] == 1
    assert samples[("watchdogd_agent_rank_alive", *rank0)] == 1
    assert 0 <= samples[("watchdogd_agent_rank_last_step_age_seconds", *rank0)] < 10
    assert samples[("watchdogd_agent_job_attempt", ("job_id", "ja"))] == 0
    assert samples[("watchdogd_agent_heartbeat_age_seconds",)] < 5
    assert [v for k, v in samples.items() if k[:2] == ("watchdogd_agent_info", ("node", "n2"))] == [1]
    gpu = (("gpu", "0"), ("uuid", "GPU-a"))
    assert samples[("watchdogd_agent_gpu_utilization_ratio", *gpu)] == 0.25
    assert samples[("watchdogd_agent_gpu_memory_used_bytes", *gpu)] == 2 << 30
    assert samples[("watchdogd_agent_gpu_temperature_celsius", *gpu)] == 55
    assert samples[("watchdogd_agent_gpu_power_watts", *gpu)] == 250.5
    assert samples[("watchdogd_agent_gpu_ecc_uncorrected_total", *gpu)] == 3
    assert samples[("watchdogd_agent_gpu_remapped_rows_pending", *gpu)] == 1
    assert samples[("watchdogd_agent_gpu_lost", *gpu)] == 0


def test_a_metrics_port_in_use_is_one_line_and_no_daemon(tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = Config(state_dir=str(tmp_path), metrics_port=port, metrics_address="127.0.0.1")
        c = Coordinator(cfg)
        with pytest.raises(ConfigError, match=f"metrics port {port} on 127.0.0.1 is in use"):
            c.start("127.0.0.1:0")
        assert c.loop is None                              # nothing was started
        for argv in (["coordinator", "--listen", "127.0.0.1:0"],
                     ["agent", "--coordinator", "127.0.0.1:1", "--socket", str(tmp_path / "a.sock")]):
            code = main([*argv, "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
                         "--state-dir", str(tmp_path)])
            err = capsys.readouterr().err
            assert code == 2
            assert err == f"watchdog-d: metrics port {port} on 127.0.0.1 is in use\n"
        assert not os.path.exists(tmp_path / "a.sock")     # the agent did not start


# -- gRPC health -------------------------------------------------------------------------

def _check(c: Coordinator, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{c.port}") as channel:
        return hpb_grpc.HealthStub(channel).Check(hpb.HealthCheckRequest(service=service),
                                                  timeout=5).status


def _eventually(c: Coordinator, status: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _check(c) != status:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_health_is_serving_while_the_decision_loop_runs_and_not_after(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    c = Coordinator(Config(state_dir=str(tmp_path), token_file=str(token)))
    c.start("127.0.0.1:0")
    try:
        # no token: the probe is answered (the method is open); Report is still refused
        assert _check(c) == hpb.HealthCheckResponse.SERVING
        assert _check(c, "watchdog_d.v1.Coordinator") == hpb.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{c.port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.CoordinatorStub(channel).Report(pb.Heartbeat(node_id="n"), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        c.loop.call_soon_threadsafe(c._deciding.cancel)       # the decision loop dies
        _eventually(c, hpb.HealthCheckResponse.NOT_SERVING)
        assert _check(c, "watchdog_d.v1.Coordinator") == hpb.HealthCheckResponse.NOT_SERVING
    finally:
        c.stop(flush_alerts_s=0.5)


def test_health_is_not_serving_while_the_decision_loop_is_stuck(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(health, "STALE_S", 0.5)
    c = Coordinator(Config(state_dir=str(tmp_path)))
    stuck = asyncio.Event()

    async def hang() -> dict:          # a pass that never ends (the snapshot, here)
        stuck.set()
        await asyncio.Event().wait()
        return {}

    c.start("127.0.0.1:0")
    try:
        assert _check(c) == hpb.HealthCheckResponse.SERVING
        c._fresh_snapshot = hang      # type: ignore[method-assign]
        _eventually(c, hpb.HealthCheckResponse.NOT_SERVING)
        assert stuck.is_set()
    finally:
        c.stop(flush_alerts_s=0.5)
