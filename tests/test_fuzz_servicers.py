"""The coordinator's gRPC handlers under hostile input (hypothesis), over a real channel.

Raw bytes and structured-but-hostile heartbeats (NaN / inf, extreme integers, huge or
control-character strings, unknown fields, deep repetition, oversize): every call is
answered OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never INTERNAL or UNKNOWN; the
coordinator keeps serving, and a well-formed node's report still lands. What gets
through ``proto.convert`` holds only sane values (what the core would otherwise be
poisoned with: a NaN or 1e308 step time, a 10 MB id, ...).

Runs are bounded and derandomized (no example database): the same examples every run.
"""
from __future__ import annotations

import math
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog_d.config import Config
from watchdog_d.coordinator.server import Coordinator
from watchdog_d.core.model import MAX_SECONDS, MAX_TEXT, NodeReport
from watchdog_d.proto import convert, rpc
from watchdog_d.proto import watchdog_pb2 as pb

OK, BAD, BIG = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
ALLOWED = {OK, BAD, BIG}
SERVICE = "/watchdog_d.v1.Coordinator/"


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- one real coordinator for the module ------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    c = Coordinator(Config(state_dir=str(tmp_path_factory.mktemp("fuzz"))))
    port = c.start(listen="127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield c, channel
    channel.close()
    c.stop(flush_alerts_s=0)


def call(channel: grpc.Channel, method: str, data: bytes) -> grpc.StatusCode:
    raw = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    try:
        raw(data, timeout=10)
        return OK
    except grpc.RpcError as e:
        return e.code()


GOOD_SPEC = pb.JobSpec(job_id="good-job", on_failure="alert", min_stall_timeout_s=60, stall_factor=5,
                       startup_timeout_s=900, node_timeout_s=30)


def still_serving(c: Coordinator, channel: grpc.Channel, node: str) -> None:
    """A well-formed report from another node lands, with its ranks."""
    assert c._thread is not None and c._thread.is_alive()
    good = pb.Heartbeat(node_id=node, host="h", seq=1, jobs=[pb.JobOnNode(
        state="running", spec=GOOD_SPEC, ranks=[pb.RankState(rank=r, alive=True, step=3,
                                                             last_step_dt_s=0.1,
                                                             section_remaining_s=math.inf)
                                                for r in (0, 1)])])
    assert call(channel, "Report", good.SerializeToString()) == OK
    deadline = time.monotonic() + 5           # the snapshot is rebuilt every 0.25 s or so
    while True:
        ranks = [r["rank"] for j in c.status()["jobs"] if j["job"] == "good-job"
                 for n in j["nodes"] if n["node"] == node for r in n["ranks"]]
        if ranks or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted(ranks) == [0, 1]


# -- strategies -------------------------------------------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.0, 1.0, MAX_SECONDS * 2])
INT32 = st.integers(-2**31, 2**31 - 1) | st.sampled_from([-2**31, -1, 0, 2**31 - 1])
INT64 = st.integers(-2**63, 2**63 - 1) | st.sampled_from([-2**63, -1, 0, 2**63 - 1])
UINT64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=40) | st.sampled_from(
    ["", "x" * 300_000, "a\nINFO forged_line x=1", "\x00", "\x1b[31m", "é" * 1000, "job-1"])
SHORT = st.text(max_size=10)

FINDINGS = st.builds(pb.Finding, kind=TEXT, severity=SHORT, role=SHORT, line=TEXT, line_no=INT64,
                     age_s=FLOATS, fields=st.dictionaries(SHORT, SHORT, max_size=4),
                     explanation=TEXT, remedy=TEXT)
RANKS = st.builds(
    pb.RankState, rank=INT32, local_rank=INT32, pid=INT32, alive=st.booleans(),
    has_exit_code=st.booleans(), exit_code=INT32, exit_signal=INT32, exit_detail=TEXT,
    exit_age_s=FLOATS, proc_state=SHORT, step=INT64, last_step_age_s=FLOATS,
    last_step_dt_s=FLOATS, section=TEXT, section_remaining_s=FLOATS, cpu_percent=FLOATS,
    log_offset=INT64, stack=TEXT, excerpt=TEXT, findings=st.lists(FINDINGS, max_size=2),
    ckpt_path=TEXT, ckpt_step=INT64, section_age_s=FLOATS, same_text=st.booleans())
SPECS = st.just(GOOD_SPEC) | st.builds(
    pb.JobSpec, job_id=TEXT, on_failure=st.sampled_from(["alert", "teardown", "restart", "rm -rf"]),
    max_restarts=INT32, min_stall_timeout_s=FLOATS, stall_factor=FLOATS, startup_timeout_s=FLOATS,
    node_timeout_s=FLOATS, alert_urls=st.lists(TEXT, max_size=2), command=TEXT,
    restart_backoff_s=FLOATS, crash_loop=INT32)
JOBS = st.builds(pb.JobOnNode, spec=SPECS, attempt=INT32,
                 state=st.sampled_from(["running", "exited", "stopped", "waiting", "", "bogus"]),
                 exit_code=INT32, ranks=st.lists(RANKS, max_size=3), note=TEXT, run=TEXT,
                 same_spec=st.booleans())
GPUS = st.builds(pb.GpuState, index=INT32, uuid=TEXT, name=TEXT, pci_bus_id=TEXT, util_ratio=FLOATS,
                 mem_used_bytes=INT64, mem_total_bytes=INT64, temperature_c=FLOATS, power_w=FLOATS,
                 clocks_event_reasons=UINT64, ecc_uncorrected=INT64, remapped_pending=INT64,
                 remap_failure=st.booleans(), recovery_action=INT32, lost=st.booleans(),
                 last_xid=INT32, xid_count=INT64)
HEARTBEATS = st.builds(pb.Heartbeat, node_id=st.just("fuzz-node") | TEXT, host=TEXT, seq=UINT64,
                       jobs=st.lists(JOBS, max_size=3), base_seq=UINT64 | st.just(0),
                       leaving=st.booleans(), gpus=st.lists(GPUS, max_size=3))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


# a field this schema does not have (protobuf keeps it, unread), varint or bytes
UNKNOWN = st.builds(lambda no, payload: _varint(no << 3 | 2) + _varint(len(payload)) + payload,
                    st.integers(30, 2**29 - 1), st.binary(max_size=64)) \
    | st.builds(lambda no, v: _varint(no << 3) + _varint(v), st.integers(30, 2**29 - 1), UINT64)


# -- the properties ---------------------------------------------------------------------------

@fuzz(150)
@given(data=st.binary(max_size=2048))
def test_raw_bytes(served, data: bytes) -> None:
    c, channel = served
    assert call(channel, "Report", data) in ALLOWED
    assert call(channel, "Status", data) in ALLOWED


@fuzz(200)
@given(hb=HEARTBEATS, extra=st.lists(UNKNOWN, max_size=2))
def test_hostile_heartbeats(served, hb: pb.Heartbeat, extra: list[bytes]) -> None:
    c, channel = served
    assert call(channel, "Report", hb.SerializeToString() + b"".join(extra)) in ALLOWED


def test_still_serving_after_the_fuzzing(served) -> None:
    still_serving(*served, node="good-node-1")


def test_oversize_and_repetition(served) -> None:
    c, channel = served
    assert call(channel, "Report", b"\x12" + _varint(rpc.MAX_MESSAGE) + b"h" * rpc.MAX_MESSAGE) == BIG
    # deep repetition: 2 million empty ranks in 4 MB held the loop for 14 s before the cap
    job = pb.JobOnNode(state="running", spec=GOOD_SPEC).SerializeToString() + b"\x2a\x00" * 2_000_000
    t0 = time.monotonic()
    assert call(channel, "Report", b"\x0a\x01n\x22" + _varint(len(job)) + job) == BAD
    assert time.monotonic() - t0 < 5
    # nested unknown groups, 100,000 deep: the parser's recursion limit, not a crash
    assert call(channel, "Report", b"\x0a\x01n" + b"\xa3\x06" * 100_000) == BAD
    many = pb.Heartbeat(node_id="n", jobs=[pb.JobOnNode(state="running", spec=GOOD_SPEC)] * 300)
    assert call(channel, "Report", many.SerializeToString()) == BAD
    still_serving(c, channel, node="good-node-2")


@pytest.mark.parametrize("data", [b"\xff\xfe", b"", pb.WatchRequest(node_id="a\nb").SerializeToString(),
                                  b"\x0a\x00" + b"\xa3\x06" * 100_000])
def test_watch_refuses_bad_requests(served, data: bytes) -> None:
    _, channel = served
    raw = channel.unary_stream(SERVICE + "Watch", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        list(raw(data, timeout=5))
    assert e.value.code() == BAD


@fuzz(500)
@given(hb=HEARTBEATS)
def test_what_convert_accepts_is_sane(hb: pb.Heartbeat) -> None:
    """In process, more examples: an accepted report carries nothing that poisons the core."""
    try:
        report = convert.report_from_pb(hb, None, 0.0)
    except convert.WireError:
        return
    assert_sane(report)


def assert_sane(report: NodeReport) -> None:
    assert 0 < len(report.node_id) <= 200 and report.node_id.isprintable()
    assert len(report.host) <= 200 and report.host.isprintable()
    assert len(report.gpus) <= convert.MAX_GPUS
    for g in report.gpus:
        assert all(math.isfinite(x) and x >= -1 for x in (g.util_ratio, g.temperature_c, g.power_w))
        assert g.util_ratio <= 1.0 and -1 <= g.mem_used_bytes <= 1 << 50
        assert len(g.uuid) <= 96 and g.uuid.isprintable() and g.name.isprintable()
    for j in report.jobs:
        assert j.spec == j.spec.checked()
        assert j.attempt >= 0 and len(j.note) <= 1000 and len(j.run) <= 64
        for r in j.ranks:
            for name in ("exit_age_s", "last_step_age_s", "last_step_dt_s", "section_age_s"):
                assert 0.0 <= getattr(r, name) <= MAX_SECONDS, name
            assert r.section_remaining_s == math.inf or abs(r.section_remaining_s) <= MAX_SECONDS
            assert math.isfinite(r.cpu_percent)
            assert len(r.stack) <= MAX_TEXT and len(r.excerpt) <= MAX_TEXT
            assert len(r.exit_detail) <= 500 and len(r.section) <= 64 and len(r.ckpt_path) <= 4096
            for f in r.findings:
                assert 0.0 <= f.age_s <= MAX_SECONDS and len(f.fields) <= 16 and len(f.line) <= 500
