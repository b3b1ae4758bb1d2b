"""Simulated nodes against a real coordinator: the agent's own reporting code
(``agent.reporter.Reporter`` over ``proto.convert``), many nodes per process.

    python integration/simnodes.py PLAN.json OUT.json

Each node has a gRPC channel (a TCP connection) of its own, a Watch stream, and
reports every ``heartbeat_s`` (phase spread at random) a job part with ``ranks``
ranks that step every ``step_s``; a change (a rank exit) is reported at once, as
the agent does. Nodes ``first`` .. ``first + count - 1`` run here; job k spans nodes
``k * job_nodes`` .. ``(k + 1) * job_nodes - 1`` (nodes of a job may be in other
processes: faults are in the plan every process gets, in CLOCK_MONOTONIC times,
which all processes of the machine share). Faults:

- ``kill``: ``{"at": T, "node": N, "rank": R}`` -- a rank dies by SIGKILL;
- ``lose``: ``{"at": T, "node": N}`` -- the node falls silent, and the ranks of its
  job's other nodes stop stepping (they wait for it in a collective);
- ``mute``: ``{"at": T, "until": T2, "node": N}`` -- only the node's agent falls
  silent; its job steps on.
A node told to tear down reports its job over (ranks SIGTERMed, launcher exit 1).
``transport``: "unary" (a Report per heartbeat and a Watch stream, as agents before
protocol 3), "stream" (one Stream per node: heartbeats up, acks and commands down; a
heartbeat unacked after the Report deadline is an error and the stream is opened anew),
or "mixed" (even nodes stream, odd ones are old agents).
Writes: Report latencies (in the window ``measure``), errors, and every command
received with its time.
"""
from __future__ import annotations

import asyncio
import json
import random
import resource
import signal
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from watchdog_d.agent.reporter import Reporter  # noqa: E402
from watchdog_d.core.model import JobOnNode, JobSpec, NodeReport, RankReport  # noqa: E402
from watchdog_d.proto import watchdog_pb2 as pb  # noqa: E402
from watchdog_d.proto.rpc import REPORT_TIMEOUT_S  # noqa: E402
from watchdog_d.proto import watchdog_pb2_grpc as pb_grpc  # noqa: E402


def node_name(i: int) -> str:
    return f"n{i:05d}"


def job_of(i: int, job_nodes: int) -> int:
    return i // job_nodes


class SimNode:
    def __init__(self, plan: dict, i: int, out: dict):
        self.plan, self.i, self.out = plan, i, out
        self.name = node_name(i)
        self.job = job_of(i, plan["job_nodes"])
        self.spec = JobSpec(job_id=f"job{self.job}", command="torchrun --nnodes ... train.py",
                            alert_urls=tuple(plan.get("alert_urls", ())))
        self.ranks_n = plan["ranks"]
        self.first_rank = i % plan["job_nodes"] * self.ranks_n
        self.t0 = plan["t0"]
        self.reporter = Reporter()
        self.seq = 0
        self.dead: dict[int, float] = {}              # rank -> when it died
        self.ended = False
        self.wake = asyncio.Event()
        self.stall_at = min((f["at"] for f in plan.get("lose", [])
                             if job_of(f["node"], plan["job_nodes"]) == self.job), default=None)
        self.lost_at = min((f["at"] for f in plan.get("lose", []) if f["node"] == i), default=None)
        self.mutes = [(f["at"], f["until"]) for f in plan.get("mute", []) if f["node"] == i]
        self.kills = [(f["at"], f["rank"]) for f in plan.get("kill", []) if f["node"] == i]
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.keepalive_time_ms", 10_000),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2_000)]
        self.channel = grpc.aio.insecure_channel(plan["target"], options=options)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def picture(self, now: float) -> NodeReport:
        step_s = self.plan["step_s"]
        until = now if self.stall_at is None else min(now, self.stall_at)
        done = max(0.0, until - self.t0)
        step, into = int(done / step_s), done % step_s
        age = into + (now - until)
        ranks = []
        for k in range(self.ranks_n):
            r = self.first_rank + k
            if self.ended:
                ranks.append(RankReport(rank=r, local_rank=k, pid=1000 + k, alive=False,
                                        exit_signal=9 if r in self.dead else 15, step=step,
                                        proc_state="X"))
            elif r in self.dead:
                ranks.append(RankReport(rank=r, local_rank=k, pid=1000 + k, alive=False,
                                        exit_signal=9, exit_age_s=now - self.dead[r], step=step,
                                        proc_state="X", excerpt="Killed"))
            else:
                ranks.append(RankReport(rank=r, local_rank=k, pid=1000 + k, step=step,
                                        last_step_age_s=age, last_step_dt_s=step_s,
                                        proc_state="R" if random.random() < 0.7 else "S",
                                        cpu_percent=95.0, log_offset=step * 120))
        part = JobOnNode(spec=self.spec, attempt=0, state="exited" if self.ended else "running",
                         exit_code=1 if self.ended else 0, ranks=tuple(ranks), run=f"run-{self.name}")
        self.seq += 1
        return NodeReport(node_id=self.name, host=self.name, seq=self.seq, jobs=(part,))

    def silent(self, now: float) -> bool:
        if self.lost_at is not None and now >= self.lost_at:
            return True
        return any(a <= now < b for a, b in self.mutes)

    async def report_loop(self, end: float) -> None:
        hb = self.plan["heartbeat_s"]
        await asyncio.sleep(random.uniform(0, hb))
        measure = self.plan["measure"]
        while (now := time.monotonic()) < end:
            for at, r in self.kills:
                if now >= at and r not in self.dead:
                    self.dead[r] = at
            if not self.silent(now):
                report = self.picture(now)
                began = time.monotonic()
                try:
                    ack = await self.stub.Report(self.reporter.heartbeat(report), timeout=REPORT_TIMEOUT_S)
                    took = time.monotonic() - began
                    if measure[0] <= began < measure[1]:
                        self.out["latency"].append(took)
                    if self.reporter.acked(report, ack):
                        continue                      # send everything now
                    for cmd in ack.commands:
                        self.command(cmd, "ack")
                except grpc.aio.AioRpcError as e:
                    if measure[0] <= began < measure[1]:
                        self.out["errors"].append(e.code().name)
            await self.until_next(now, hb)

    async def until_next(self, now: float, hb: float) -> None:
        """Until the next heartbeat is due (a heartbeat after ``now``, or a kill sooner), or
        a change wakes the node."""
        next_at = min([now + hb] + [at for at, r in self.kills if at > now])
        try:
            await asyncio.wait_for(self.wake.wait(), max(0.0, next_at - time.monotonic()))
            self.wake.clear()
        except asyncio.TimeoutError:
            pass

    async def stream_loop(self, end: float) -> None:
        """The agent's protocol 3: heartbeats on one stream, acks and commands back. As the
        agent's reporter, one heartbeat at a time: the next goes after its ack, or after the
        Report deadline (an error; the stream stays: a late ack is overload)."""
        hb = self.plan["heartbeat_s"]
        await asyncio.sleep(random.uniform(0, hb))
        measure = self.plan["measure"]
        call, reader = None, None
        waiting: dict[int, tuple[float, NodeReport, asyncio.Event]] = {}

        async def read(c) -> None:  # type: ignore[no-untyped-def]
            async for ack in c:
                if ack.push:
                    if not self.silent(time.monotonic()):     # a lost node hears nothing
                        for cmd in ack.commands:
                            self.command(cmd, "watch")
                    continue
                began, report, got = waiting.pop(ack.seq, (None, None, None))
                if began is None:
                    continue                                   # came after its deadline
                if measure[0] <= began < measure[1]:
                    self.out["latency"].append(time.monotonic() - began)
                if self.reporter.acked(report, ack):
                    self.wake.set()                      # send everything now
                for cmd in ack.commands:
                    self.command(cmd, "ack")
                got.set()

        while (now := time.monotonic()) < end:
            for at, r in self.kills:
                if now >= at and r not in self.dead:
                    self.dead[r] = at
            if reader is not None and reader.done():
                call, reader = None, None       # (the coordinator keeps its bases across streams)
            if not self.silent(now):
                if call is None:
                    call = self.stub.Stream()
                    reader = asyncio.create_task(read(call))
                report = self.picture(now)
                began, got = time.monotonic(), asyncio.Event()
                waiting[report.seq] = (began, report, got)
                try:
                    await call.write(self.reporter.heartbeat(report))
                    await asyncio.wait_for(got.wait(), REPORT_TIMEOUT_S)
                except asyncio.TimeoutError:
                    waiting.pop(report.seq, None)
                    if measure[0] <= began < measure[1]:
                        self.out["errors"].append("DEADLINE_EXCEEDED")
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as e:
                    waiting.clear()
                    if measure[0] <= began < measure[1]:
                        self.out["errors"].append(type(e).__name__)
                    call.cancel()
                    call, reader = None, None
                now = time.monotonic()
            await self.until_next(now, hb)
        if call is not None:
            call.cancel()

    def command(self, cmd: pb.Command, via: str) -> None:
        self.out["commands"].append([self.name, cmd.job_id, cmd.verb, time.monotonic(), via])
        if cmd.verb in ("teardown", "restart") and not self.ended:
            self.ended = True
            self.wake.set()

    async def watch_loop(self, end: float) -> None:
        while time.monotonic() < end:
            if self.silent(time.monotonic()):
                await asyncio.sleep(0.2)
                continue
            try:
                async for cmd in self.stub.Watch(pb.WatchRequest(node_id=self.name)):
                    if not self.silent(time.monotonic()):    # a lost node hears nothing
                        self.command(cmd, "watch")
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.3)


async def main(plan: dict, out_path: str) -> None:
    out = {"latency": [], "errors": [], "commands": [], "full": 0, "delta": 0}
    nodes = [SimNode(plan, i, out) for i in range(plan["first"], plan["first"] + plan["count"])]
    end = plan["end"]
    transport = plan.get("transport", "unary")
    streams = [n for n in nodes if transport == "stream" or transport == "mixed" and n.i % 2 == 0]
    unary = [n for n in nodes if n not in streams]
    tasks = [asyncio.create_task(n.stream_loop(end)) for n in streams]
    tasks += [asyncio.create_task(n.report_loop(end)) for n in unary]
    watchers = [asyncio.create_task(n.watch_loop(end)) for n in unary]
    await asyncio.gather(*tasks)
    for w in watchers:
        w.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    for n in nodes:
        await n.channel.close()
    out["full"] = sum(n.reporter.sent_full for n in nodes)
    out["delta"] = sum(n.reporter.sent_delta for n in nodes)
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    plan = json.loads(Path(sys.argv[1]).read_text())
    random.seed(plan["first"])
    asyncio.run(main(plan, sys.argv[2]))
