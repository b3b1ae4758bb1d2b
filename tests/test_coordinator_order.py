"""The coordinator carries out a verdict's verbs before it stores the incident: a slow,
locked or full incident database must not delay or lose a teardown."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from watchdog_d.config import Config
from watchdog_d.coordinator.server import Coordinator
from watchdog_d.coordinator.store import StoreError
from watchdog_d.proto import convert
from watchdog_d.proto import watchdog_pb2 as pb
from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc
from wdtest_helpers import dead, report


@contextmanager
def rank_1_dies(tmp_path: Path, record) -> Iterator[tuple[Iterator[pb.Command], float]]:  # type: ignore[no-untyped-def]
    """A coordinator whose store records with ``record``; node a reports rank 1 dead.
    Yields node a's Watch stream and when the death was reported."""
    c = Coordinator(Config(state_dir=str(tmp_path)))
    c.store.record = record                # type: ignore[method-assign]
    port = c.start("127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.CoordinatorStub(channel)
        stream = stub.Watch(pb.WatchRequest(node_id="a"), timeout=10)
        stub.Report(convert.report_to_pb(report("a", [0, 1], seq=1)), timeout=5)
        began = time.monotonic()
        stub.Report(convert.report_to_pb(report("a", [0, dead(1, code=1)], seq=2)), timeout=5)
        yield iter(stream), began
        stream.cancel()
    finally:
        channel.close()
        c.stop(flush_alerts_s=0.5)


def test_the_teardown_goes_out_while_the_incident_store_is_stuck(tmp_path: Path) -> None:
    stuck, recorded = threading.Event(), []

    def record(incident) -> None:  # type: ignore[no-untyped-def]
        stuck.wait(10)                     # the database is locked by a reader, say
        recorded.append(incident)

    try:
        with rank_1_dies(tmp_path, record) as (stream, began):
            assert next(stream).verb == "teardown" and time.monotonic() - began < 2.0
            assert recorded == []          # the store is still stuck: the verb did not wait
            stuck.set()
    finally:
        stuck.set()
    assert len(recorded) == 1 and recorded[0].verdict.kind == "rank_exited"


def test_a_full_disk_loses_the_record_not_the_teardown(tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    def record(incident) -> None:  # type: ignore[no-untyped-def]
        raise StoreError("incident store: database or disk is full")

    err = ""
    with rank_1_dies(tmp_path, record) as (stream, _):
        assert next(stream).verb == "teardown"
        deadline = time.monotonic() + 5
        while "incident_not_stored" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "incident_not_stored" in ln]
    assert len(lines) == 1 and "kind=rank_exited" in lines[0] and "disk is full" in lines[0]
