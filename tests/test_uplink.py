"""The agent's uplink (watchdog_d/agent/uplink.py) against real in-process gRPC coordinators.

Each coordinator here is a sync ``grpc.server`` answering every heartbeat with a list of
acks chosen by the test (``leads``, ``standby``); it counts the Streams opened to it and
keeps the heartbeats it received. Protocol 3 (one Stream per node), the fallback to unary
Reports, standby hints between several targets, epoch fencing and a restarted coordinator.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from watchdog_d.agent.uplink import NoLeader, Uplink
from watchdog_d.config import Config
from watchdog_d.proto import watchdog_pb2 as pb

SERVICE = "watchdog_d.v1.Coordinator"
TIMEOUT = 2.0


def leads(epoch: int = 0, **extra):
    return lambda hb: [pb.HeartbeatAck(seq=hb.seq, epoch=epoch, **extra)]


def standby(leader: str = ""):
    return lambda hb: [pb.HeartbeatAck(seq=hb.seq, standby=True, leader=leader)]


def heartbeat(seq: int) -> pb.Heartbeat:
    return pb.Heartbeat(node_id="node-1", host="host-1", seq=seq)


class Coordinator:
    """A coordinator in this process: ``answer(heartbeat)`` -> the acks it writes back."""

    def __init__(self, answer, *, stream: bool = True, port: int = 0):
        self.answer, self.opens, self.heartbeats = answer, 0, []
        kw = dict(request_deserializer=pb.Heartbeat.FromString,
                  response_serializer=pb.HeartbeatAck.SerializeToString)
        handlers = {"Report": grpc.unary_unary_rpc_method_handler(self._report, **kw)}
        if stream:
            handlers["Stream"] = grpc.stream_stream_rpc_method_handler(self._stream, **kw)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def _stream(self, heartbeats, _context):
        self.opens += 1
        for hb in heartbeats:
            self.heartbeats.append(hb)
            yield from self.answer(hb)

    def _report(self, hb, _context):
        self.heartbeats.append(hb)
        return self.answer(hb)[-1]

    def stop(self) -> None:
        self.server.stop(0).wait(TIMEOUT)


@pytest.fixture
def start():
    started: list[Coordinator] = []

    def start(answer, **kw) -> Coordinator:
        started.append(Coordinator(answer, **kw))
        return started[-1]
    yield start
    for c in started:
        c.stop()


@pytest.fixture
def uplink():
    made: list[Uplink] = []

    def uplink(*coordinators, **callbacks) -> Uplink:
        targets = [c if isinstance(c, str) else c.address for c in coordinators]
        made.append(Uplink(Config(), targets, **{"on_push": lambda _a: None, **callbacks}))
        return made[-1]
    yield uplink
    for u in made:
        u.close()


def test_an_ack_matches_its_heartbeat_and_two_sends_share_one_stream(start, uplink):
    a = start(leads())
    up = uplink(a)
    assert up.send(heartbeat(1), TIMEOUT).seq == 1
    assert up.send(heartbeat(2), TIMEOUT).seq == 2
    assert up.streaming and up.connected
    assert a.opens == 1 and [hb.seq for hb in a.heartbeats] == [1, 2]


def test_a_command_pushed_on_the_stream_reaches_on_push(start, uplink):
    command = pb.Command(job_id="j", verb="teardown")
    a = start(lambda hb: [pb.HeartbeatAck(push=True, commands=[command]), pb.HeartbeatAck(seq=hb.seq)])
    pushed: list[pb.HeartbeatAck] = []
    up = uplink(a, on_push=pushed.append)
    assert up.send(heartbeat(1), TIMEOUT).seq == 1
    assert [list(p.commands) for p in pushed] == [[command]]      # read before the ack that followed


def test_a_coordinator_without_stream_gets_unary_reports(start, uplink):
    a = start(leads(deltas=True), stream=False)
    up = uplink(a)
    assert up.send(heartbeat(1), TIMEOUT).deltas
    assert not up.streaming
    assert up.send(heartbeat(2), TIMEOUT).seq == 2
    assert [hb.seq for hb in a.heartbeats] == [1, 2]


def test_a_standby_sends_the_uplink_to_the_leader_it_names(start, uplink):
    b = start(leads(deltas=True))
    a = start(standby(leader=b.address))
    switched, counted = [], []
    up = uplink(a, b, on_switch=switched.append, counted=counted.append)
    assert up.send(heartbeat(1), TIMEOUT).deltas                  # B's ack (A's says standby)
    assert switched == [b.address] and up.target == b.address
    assert counted == ["acked"] and len(a.heartbeats) == len(b.heartbeats) == 1


def test_a_standby_hint_outside_the_targets_is_not_followed(start, uplink):
    elsewhere = start(leads())
    c = start(leads(deltas=True))
    a = start(standby(leader=elsewhere.address))
    switched = []
    up = uplink(a, c, on_switch=switched.append)
    assert up.send(heartbeat(1), TIMEOUT).deltas
    assert up.target == c.address and switched == [c.address]
    assert elsewhere.opens == 0 and elsewhere.heartbeats == []


def test_an_ack_from_an_older_epoch_is_fenced_and_the_newer_leader_answers(start, uplink):
    b = start(leads(epoch=7, deltas=True))
    a = start(leads(epoch=7))
    stale: list[pb.HeartbeatAck] = []
    up = uplink(a, b, on_stale=stale.append)
    assert up.send(heartbeat(1), TIMEOUT).epoch == 7 and up.epoch == 7
    up.send(heartbeat(2), TIMEOUT)
    assert [hb.epoch for hb in a.heartbeats] == [0, 7]
    a.answer = leads(epoch=3)                                      # deposed, still thinks it leads
    ack = up.send(heartbeat(3), TIMEOUT)
    assert ack.deltas and ack.epoch == 7 and up.target == b.address
    assert [(s.seq, s.epoch) for s in stale] == [(3, 3)]
    assert up.epoch == 7 and b.heartbeats[0].epoch == 7


@pytest.mark.parametrize("hints", [("", ""), ("b", "a")])
def test_no_leader_among_the_targets_fails_within_the_timeout(start, uplink, hints):
    a, b = start(standby()), start(standby())
    names = {"a": a.address, "b": b.address, "": ""}
    a.answer, b.answer = standby(names[hints[0]]), standby(names[hints[1]])
    counted = []
    up = uplink(a, b, counted=counted.append)
    began = time.monotonic()
    with pytest.raises(NoLeader) as raised:
        up.send(heartbeat(1), TIMEOUT)
    assert time.monotonic() - began < TIMEOUT
    assert isinstance(raised.value, grpc.RpcError) and raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counted == ["failed"]


def test_a_killed_coordinator_fails_the_send_and_a_restarted_one_takes_it_again(start, uplink):
    a = start(leads())
    counted = []
    up = uplink(a, counted=counted.append)
    up.send(heartbeat(1), TIMEOUT)
    a.stop()
    with pytest.raises(grpc.RpcError):
        up.send(heartbeat(2), TIMEOUT)
    assert counted == ["acked", "failed"] and not up.connected
    again = start(leads(deltas=True), port=a.port)
    deadline, ack = time.monotonic() + 4 * TIMEOUT, None
    while ack is None and time.monotonic() < deadline:
        try:
            ack = up.send(heartbeat(3), TIMEOUT)
        except grpc.RpcError:
            time.sleep(0.1)                                        # (the channel's reconnect backoff)
    assert ack is not None and ack.deltas and up.connected
    assert again.opens == 1 and [hb.seq for hb in again.heartbeats] == [3]
