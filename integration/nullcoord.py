"""A null coordinator: a ``grpc.aio`` server speaking watchdog-d's protocol that only
parses each Report and acks it (keeping nothing, deciding nothing) and holds each
Watch stream open; on a Stream, it acks each heartbeat the same way. The transport's
floor for ``bench_coordinator.py``, for either transport.

    python integration/nullcoord.py PORT
"""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watchdog_d.proto import watchdog_pb2 as pb  # noqa: E402


async def serve(port: int) -> None:
    async def report(request, context):  # type: ignore[no-untyped-def]
        return pb.HeartbeatAck(seq=request.seq, deltas=True)

    async def watch(request, context):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()
        yield pb.Command()

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for request in requests:
            yield pb.HeartbeatAck(seq=request.seq, deltas=True)

    async def status(request, context):  # type: ignore[no-untyped-def]
        return pb.StatusReply(json="{}")

    ser = lambda m: m.SerializeToString()  # noqa: E731
    handler = grpc.method_handlers_generic_handler("watchdog_d.v1.Coordinator", {
        "Report": grpc.unary_unary_rpc_method_handler(report, pb.Heartbeat.FromString, ser),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, pb.Heartbeat.FromString, ser),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, pb.WatchRequest.FromString, ser),
        "Status": grpc.unary_unary_rpc_method_handler(status, pb.StatusRequest.FromString, ser),
    })
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("serving", flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(int(sys.argv[1])))
