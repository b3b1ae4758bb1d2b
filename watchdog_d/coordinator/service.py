"""The coordinator's gRPC face (``grpc.aio``): Stream, Report, Watch, Status, Drill.

Everything runs on the coordinator's one event loop: a heartbeat is parsed and
ingested in O(its ranks) and answered at once. An agent of protocol 3 keeps one
Stream open: its heartbeats come up it, its acks and its node's commands go down it
(a coroutine reading, the handler writing, no thread per stream). Older agents send
a unary Report per heartbeat and hold a Watch stream for commands. Status is served
from the cached snapshot. Requests whose bytes do not parse get INVALID_ARGUMENT
(gRPC's default would be an opaque INTERNAL).
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import grpc

from .. import log
from ..proto import watchdog_pb2 as pb
from ..proto.rpc import REPORT_TIMEOUT_S

if TYPE_CHECKING:
    from .server import Coordinator

PENDING_MAX = 1000        # commands kept for a node whose Watch stream is down


class BadRequest(Exception):
    """A request that must be refused with INVALID_ARGUMENT."""


class Outbox:
    """One node's commands: handed to its live stream (Watch, or the node's Stream),
    else kept (bounded) until one opens. A new stream replaces the old one (which ends).
    A Stream's queue also carries its acks: only commands are kept when it closes."""

    def __init__(self) -> None:
        self.stream: asyncio.Queue | None = None
        self.pending: deque = deque(maxlen=PENDING_MAX)

    def put(self, cmd: pb.Command) -> bool:
        """False when an older command had to make room (the node is not listening)."""
        if self.stream is not None:
            self.stream.put_nowait(cmd)
            return True
        full = len(self.pending) == self.pending.maxlen
        self.pending.append(cmd)
        return not full

    def open(self, q: asyncio.Queue | None = None) -> asyncio.Queue:
        if self.stream is not None:
            self.stream.put_nowait(None)              # the old stream ends
        q = asyncio.Queue() if q is None else q
        while self.pending:
            q.put_nowait(self.pending.popleft())
        self.stream = q
        return q

    def close(self, q: asyncio.Queue) -> None:
        if self.stream is q:
            self.stream = None
            while not q.empty():                      # not delivered: keep for the next one
                cmd = q.get_nowait()
                if isinstance(cmd, pb.Command):
                    self.pending.append(cmd)

    @property
    def idle(self) -> bool:
        return self.stream is None and not self.pending


class _Malformed:
    def __init__(self, error: str):
        self.error = error


def _lenient(message_type):  # type: ignore[no-untyped-def]
    def parse(data: bytes):  # type: ignore[no-untyped-def]
        try:
            return message_type.FromString(data)
        except Exception as e:  # google.protobuf.message.DecodeError and friends
            return _Malformed(str(e) or type(e).__name__)
    return parse


def handlers(c: "Coordinator") -> grpc.GenericRpcHandler:
    async def report(request, context):  # type: ignore[no-untyped-def]
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
        left = context.time_remaining()     # of the agent's deadline: what is gone waited here
        try:
            with c.metrics.report_seconds.time():
                return c.report(request, None if left is None else REPORT_TIMEOUT_S - left)
        except BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def watch(request, context):  # type: ignore[no-untyped-def]
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
        node = request.node_id[:200]
        if not node or not node.isprintable():     # (as a Report's, proto.convert: it is logged)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "watch without a printable node_id")
        box = c.outbox(node)
        q = box.open()
        log.log("node_watching", node=node)
        try:
            while True:
                cmd = await q.get()
                if cmd is None:
                    return
                yield cmd
        finally:
            box.close(q)

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        """Heartbeats in, acks and pushed commands out, on one queue (one writer). The
        first heartbeat names the node; its commands come here from then on."""
        q: asyncio.Queue = asyncio.Queue()
        bound: list[str] = []                 # the node, once its first heartbeat named it
        reader = asyncio.ensure_future(_read_stream(c, requests, q, bound))
        try:
            while True:
                item = await q.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(item))
                if isinstance(item, pb.Command):
                    item = pb.HeartbeatAck(push=True, commands=[item], epoch=item.epoch)
                yield item
        finally:
            reader.cancel()
            box = c.outboxes.get(bound[0]) if bound else None
            if box is not None:
                box.close(q)                  # (a no-op if a newer stream replaced this one)

    async def status(request, context):  # type: ignore[no-untyped-def]
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
        return pb.StatusReply(json=await c.status_json())

    async def drill(request, context):  # type: ignore[no-untyped-def]
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
        from .drills import start

        return start(c, request)

    ser = lambda m: m.SerializeToString()  # noqa: E731
    return grpc.method_handlers_generic_handler("watchdog_d.v1.Coordinator", {
        "Stream": grpc.stream_stream_rpc_method_handler(stream, _lenient(pb.Heartbeat), ser),
        "Report": grpc.unary_unary_rpc_method_handler(report, _lenient(pb.Heartbeat), ser),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, _lenient(pb.WatchRequest), ser),
        "Status": grpc.unary_unary_rpc_method_handler(status, _lenient(pb.StatusRequest), ser),
        "Drill": grpc.unary_unary_rpc_method_handler(drill, _lenient(pb.DrillRequest), ser),
    })


async def _read_stream(c: "Coordinator", requests, q: asyncio.Queue,  # type: ignore[no-untyped-def]
                       bound: list[str]) -> None:
    """A Stream's heartbeats, each ingested and acked in turn; a bad one ends the stream
    with INVALID_ARGUMENT (the agent opens a new one and sends everything). ``bound``
    gets the node's name when its first heartbeat names it."""
    node = ""
    try:
        async for request in requests:
            if isinstance(request, _Malformed):
                q.put_nowait(BadRequest(f"malformed request: {request.error}"))
                return
            name = request.node_id[:200]
            if not node:
                if not name or not name.isprintable():
                    q.put_nowait(BadRequest("stream without a printable node_id"))
                    return
                node = name
                bound.append(node)
                c.outbox(node).open(q)
                log.log("node_streaming", node=node)
            elif name != node:
                q.put_nowait(BadRequest(f"a stream is one node's: {node!r}, not {name!r}"))
                return
            try:
                with c.metrics.report_seconds.time():
                    q.put_nowait(c.report(request, c.waited(node, request.sent_mono_s)))
            except BadRequest as e:
                q.put_nowait(e)
                return
    except asyncio.CancelledError:
        raise
    except Exception:          # the agent went away mid-read: the stream is over
        pass
    q.put_nowait(None)
