"""The coordinator's gRPC surface under bad calls: refused cleanly, never crashed."""
from __future__ import annotations

import grpc
import pytest

from cluster import Cluster
from watchdog_d.proto import watchdog_pb2 as pb
from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc


@pytest.fixture
def secured(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    c = Cluster(tmp_path, [], extra=["--token-file", str(token)])
    yield c
    c.stop()


def _stub(address: str):
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.CoordinatorStub(channel)


def test_missing_or_wrong_token_is_unauthenticated(secured):
    channel, stub = _stub(secured.address)
    with channel:
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as e:
                stub.Report(pb.Heartbeat(node_id="n"), timeout=5, metadata=metadata)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Watch(pb.WatchRequest(node_id="n"), timeout=5, metadata=metadata))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = (("authorization", "Bearer s3cret-token"),)
        assert stub.Report(pb.Heartbeat(node_id="n", seq=7), timeout=5, metadata=ok).seq == 7
    assert "s3cret" not in secured.log("coordinator")


def test_malformed_calls_are_invalid_argument(secured):
    ok = (("authorization", "Bearer s3cret-token"),)
    channel, stub = _stub(secured.address)
    with channel:
        bad = [pb.Heartbeat(),                                          # no node id
               pb.Heartbeat(node_id="n", jobs=[pb.JobOnNode(state="bogus")]),
               pb.Heartbeat(node_id="n", jobs=[pb.JobOnNode(
                   state="running", spec=pb.JobSpec(job_id="j", on_failure="teardown",
                                                    min_stall_timeout_s=float("nan"),
                                                    stall_factor=5, startup_timeout_s=1,
                                                    node_timeout_s=1))])]
        for message in bad:
            with pytest.raises(grpc.RpcError) as e:
                stub.Report(message, timeout=5, metadata=ok)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        raw = channel.unary_unary("/watchdog_d.v1.Coordinator/Report",
                                  request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        for garbage in (b"\xff\xfe\x00garbage", bytes(range(256)) * 4):
            with pytest.raises(grpc.RpcError) as e:
                raw(garbage, timeout=5, metadata=ok)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # still serving
        assert stub.Status(pb.StatusRequest(), timeout=5, metadata=ok).json
    assert secured.coordinator.poll() is None


def test_metrics_endpoint(tmp_path):
    """``coordinator --metrics-port``: Prometheus text with the picture of the jobs."""
    import subprocess
    import time
    import urllib.request

    from harness import WATCHDOG, free_port, train_env

    port, metrics = free_port(), free_port()
    proc = subprocess.Popen([*WATCHDOG, "coordinator", "--listen", f"127.0.0.1:{port}",
                             "--metrics-port", str(metrics), "--state-dir", str(tmp_path)],
                            env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        channel, stub = _stub(f"127.0.0.1:{port}")
        with channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub.Report(pb.Heartbeat(node_id="n1", jobs=[pb.JobOnNode(
                state="running", spec=pb.JobSpec(job_id="jm", on_failure="teardown",
                                                 min_stall_timeout_s=60, stall_factor=5,
                                                 startup_timeout_s=900, node_timeout_s=5),
                ranks=[pb.RankState(rank=0, alive=True, step=42, last_step_age_s=0.5)])]),
                timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics",
                                              timeout=2).read().decode()
                if "watchdogd_rank_step" in body and 'job_id="jm"' in body:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no metrics"
            time.sleep(0.1)
        assert 'watchdogd_rank_step{job_id="jm",node="n1",rank="0"} 42.0' in body
        assert "watchdogd_jobs 1.0" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
