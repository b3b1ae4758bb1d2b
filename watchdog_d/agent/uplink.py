"""The agent's uplink: heartbeats to the coordinator that leads, acks and commands back.

Protocol 3: one long-lived Stream per node carries the heartbeats up and the acks and
the node's commands down (``HeartbeatAck.push``). Measured against a unary Report per
heartbeat at 2,048 nodes (``integration/bench_coordinator.py``): the transport costs the
coordinator about a quarter less CPU and the p99 drops tenfold, because a heartbeat no
longer opens an HTTP/2 stream with headers and a status of its own. A coordinator older
than protocol 3 answers UNIMPLEMENTED: the uplink then sends unary Reports to it, and the
agent's watcher holds a Watch stream for its commands, as before.

Several coordinators (``--coordinator A,B,C``, the ``--ha`` ones): a standby ingests
nothing and answers ``standby`` with where the leader is; the uplink moves there when that
is one of the addresses it was given (never anywhere else), or tries the next one. An
unreachable coordinator also moves it on. Epochs are learnt only from the acks of a
coordinator that says it leads, on a connection this agent opened to an address it was
given (authenticated by the token or mTLS when configured).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import grpc

from .. import log
from ..config import Config
from ..proto import rpc
from ..proto import watchdog_pb2 as pb
from ..proto import watchdog_pb2_grpc as pb_grpc


class StreamError(grpc.RpcError):
    """What a Stream ended with when grpc raised nothing: read as a failed call (link.py)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Stream:
    """One open Stream: heartbeats queued for grpc's request iterator, a thread reading
    acks (matched by seq) and pushed commands (handed to ``on_push`` at once)."""

    def __init__(self, stub: Any, metadata: tuple, on_push: Callable[[pb.HeartbeatAck], None]):
        self._out: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._acks: dict[int, pb.HeartbeatAck] = {}
        self._error: grpc.RpcError | None = None
        self.done = False
        self._on_push = on_push
        self._call = stub.Stream(iter(self._out.get, None), metadata=metadata)
        threading.Thread(target=self._read, name="agent-stream", daemon=True).start()

    def _read(self) -> None:
        try:
            for ack in self._call:
                if ack.push:
                    self._on_push(ack)
                    continue
                with self._cond:
                    self._acks[ack.seq] = ack
                    self._cond.notify_all()
            error: grpc.RpcError = StreamError(grpc.StatusCode.UNAVAILABLE, "the coordinator ended the stream")
        except grpc.RpcError as e:
            error = e
        except Exception as e:       # (a push the agent could not take: the stream is redone)
            error = StreamError(grpc.StatusCode.UNKNOWN, repr(e)[:200])
        with self._cond:
            self._error, self.done = error, True
            self._cond.notify_all()

    def exchange(self, heartbeat: pb.Heartbeat, timeout: float) -> pb.HeartbeatAck:
        deadline = time.monotonic() + timeout
        self._out.put(heartbeat)
        with self._cond:
            while heartbeat.seq not in self._acks and not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            ack = self._acks.pop(heartbeat.seq, None)
            self._acks.clear()                      # (older ones came too late: nobody waits)
            error = self._error
        if ack is not None:
            return ack
        if error is not None:
            raise error
        raise StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no ack within {timeout:g}s")

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()


class NoLeader(StreamError):
    def __init__(self, asked: int):
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"none of the {asked} coordinators leads now")


class Uplink:
    """``send(heartbeat)`` -> the leader's ack. ``on_push``: commands pushed on the stream;
    ``on_switch``: another coordinator answers from now on (it holds none of our reports);
    ``counted(outcome)``: each heartbeat, acked or failed; ``on_stale``: the ack of a
    coordinator that leads in an epoch older than one seen (its commands are fenced)."""

    def __init__(self, cfg: Config, targets: list[str], *, on_push: Callable[[pb.HeartbeatAck], None],
                 on_switch: Callable[[str], None] = lambda _t: None,
                 counted: Callable[[str], None] = lambda _o: None,
                 on_stale: Callable[[pb.HeartbeatAck], None] = lambda _a: None):
        self.cfg, self.targets = cfg, targets
        self.metadata = rpc.call_metadata(cfg)
        self._on_push, self._on_switch, self._counted = on_push, on_switch, counted
        self._on_stale = on_stale
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._unary: set[str] = set()          # coordinators older than protocol 3
        self._stream: _Stream | None = None
        self._lock = threading.Lock()
        self.index = 0
        self.epoch = 0                         # the newest leader epoch seen
        self.closed = False
        self.stub                              # (credentials read now: a bad file stops the start)

    @property
    def target(self) -> str:
        return self.targets[self.index]

    @property
    def stub(self) -> Any:
        """The current coordinator's (Status, Drill; Watch for an old one)."""
        t = self.target
        if t not in self._stubs:
            self._channels[t] = rpc.make_channel(self.cfg, t)
            self._stubs[t] = pb_grpc.CoordinatorStub(self._channels[t])
        return self._stubs[t]

    @property
    def connected(self) -> bool:
        """False when the next heartbeat opens a new stream (the agent then sends
        everything: whatever broke the last one, the coordinator may hold nothing of ours)."""
        stream = self._stream
        return not self.streaming or stream is not None and not stream.done

    @property
    def streaming(self) -> bool:
        return self.target not in self._unary

    def send(self, heartbeat: pb.Heartbeat, timeout: float = rpc.REPORT_TIMEOUT_S) -> pb.HeartbeatAck:
        deadline = time.monotonic() + timeout
        asked = 0
        while True:
            heartbeat.epoch = self.epoch
            try:
                ack = self._one(heartbeat, max(0.05, deadline - time.monotonic()))
            except grpc.RpcError:
                self._counted("failed")
                if len(self.targets) > 1:
                    self._move((self.index + 1) % len(self.targets))   # the next one, next time
                raise
            if not ack.standby and ack.epoch >= self.epoch:
                self._counted("acked")
                self.epoch = ack.epoch
                return ack
            if not ack.standby:         # a deposed leader that still thinks it leads: fenced
                self._on_stale(ack)
            asked += 1
            hint = ack.leader if ack.leader in self.targets else ""
            self._move(self.targets.index(hint) if hint else (self.index + 1) % len(self.targets))
            if asked >= len(self.targets) or time.monotonic() >= deadline:
                self._counted("failed")
                raise NoLeader(asked)

    def _one(self, heartbeat: pb.Heartbeat, timeout: float) -> pb.HeartbeatAck:
        if self.closed:
            raise ValueError("uplink closed")
        if not self.streaming:
            try:
                return self.stub.Report(heartbeat, timeout=timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self._unary.discard(self.target)   # gone: it may come back upgraded
                raise
        with self._lock:
            if self.closed:
                raise ValueError("uplink closed")
            if self._stream is None or self._stream.done:
                self._stream = _Stream(self.stub, self.metadata, self._on_push)
            stream = self._stream
        try:
            return stream.exchange(heartbeat, timeout)
        except grpc.RpcError as e:
            # a late ack on a live stream is an overloaded coordinator: opening a new stream
            # would only add to its load (a dead peer ends the stream: gRPC's keepalive). With
            # other coordinators to ask, a silent one is left (send moves on).
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not stream.done \
                    and len(self.targets) == 1:
                raise
            self._drop(stream)
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:     # older than protocol 3
                self._unary.add(self.target)
                log.log("coordinator_unary", coordinator=self.target,
                        reason="no Stream (protocol 3): unary Reports and a Watch stream")
                return self.stub.Report(heartbeat, timeout=timeout, metadata=self.metadata)
            raise

    def _drop(self, stream: _Stream) -> None:
        with self._lock:
            if self._stream is stream:
                self._stream = None
        stream.close()

    def _move(self, index: int) -> None:
        if index == self.index:
            return
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        self.index = index
        self._on_switch(self.target)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        for ch in self._channels.values():
            ch.close()
