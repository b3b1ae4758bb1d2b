"""The standard gRPC health service (``grpc.health.v1.Health``) of the coordinator.

SERVING only while the decision loop turns: a coordinator that answers Reports but no
longer decides watches nothing, and must not look healthy. The loop runs in a task
(``task``) that sets the status when it starts and ends, and it notes each pass
(``passed_at``): a Check also answers NOT_SERVING when no pass ended for STALE_S (the
loop is stuck somewhere). Watch streams follow starts and ends only. The method is open without the bearer token
(``proto.rpc``): a kubelet or ``grpc_health_probe`` has none, and the answer reveals
nothing.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import grpc
from grpc_health.v1.health import aio
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc as hpb_grpc

SERVICES = ("", "watchdog_d.v1.Coordinator")     # the server as a whole, and ours
STALE_S = 5.0       # a pass takes milliseconds; this long without one: the loop is stuck


class LoopHealth:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.passed_at: float | None = None     # the decision loop's last pass; None: not turning
        self.standby = False                    # --ha: not leading (NOT_SERVING)
        self.servicer = _Servicer(self)

    async def add_to(self, server: grpc.aio.Server) -> None:
        """(before the server starts) NOT_SERVING until the decision loop runs."""
        hpb_grpc.add_HealthServicer_to_server(self.servicer, server)
        await self.turning(False)

    def task(self, decision_loop: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run the decision loop as a task: SERVING from its start to its end, however
        it ends (cancelled, or an error that got out of it)."""
        async def run() -> None:
            await self.turning(True)
            try:
                await decision_loop()
            finally:
                await self.turning(False)
        return asyncio.create_task(run())

    async def turning(self, yes: bool) -> None:
        self.passed_at = self.clock() if yes else None
        serving = yes and not self.standby
        status = hpb.HealthCheckResponse.SERVING if serving else hpb.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            await self.servicer.set(service, status)

    async def standing_by(self, yes: bool) -> None:
        """--ha: a standby answers NOT_SERVING while its loop turns (it decides nothing)."""
        self.standby = yes
        if self.passed_at is not None:
            await self.turning(True)

    def stuck(self) -> bool:
        return self.passed_at is None or self.clock() - self.passed_at > STALE_S


class _Servicer(aio.HealthServicer):
    def __init__(self, health: LoopHealth):
        super().__init__()
        self._health = health

    async def Check(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        reply = await super().Check(request, context)
        if reply.status == hpb.HealthCheckResponse.SERVING and self._health.stuck():
            return hpb.HealthCheckResponse(status=hpb.HealthCheckResponse.NOT_SERVING)
        return reply
