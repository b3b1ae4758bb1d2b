"""The agent's side of ``watchdog-d drill``: a local user asks on the socket (their uid
from SO_PEERCRED goes to the coordinator, which says whether they may); the coordinator's
``drill`` command comes back to the node of the rank, and the agent injects the fault:
kill (SIGKILL), freeze (SIGSTOP), exit and hang (through the rank's request pipe: its
flight-recorder thread exits the process, or stops its main thread at the next step)."""
from __future__ import annotations

import json
import os
import signal
from typing import Any

import grpc

from .. import log
from ..proto import localsock
from ..proto import watchdog_pb2 as pb
from ..proto.local import Answer, DrillAsk, StatusAsk
from ..rank import flight
from ..rank.beacon import slot_path

ASK_TIMEOUT_S = 10.0
SIGNALS = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP}
PIPE = {fault: byte for byte, fault in flight.DRILLS.items()}


def ask(agent: Any, conn: localsock.Conn, uid: int, msg: DrillAsk) -> None:
    try:
        reply = agent.stub.Drill(pb.DrillRequest(job_id=msg.job_id, fault=msg.fault, rank=msg.rank,
                                                 node=msg.node, uid=uid),
                                 timeout=ASK_TIMEOUT_S, metadata=agent.metadata)
    except grpc.RpcError as e:
        conn.send(Answer(error=f"the coordinator {agent.target} did not take it: {e.code().name}"))
        return
    if reply.error:
        conn.send(Answer(error=reply.error))
    else:
        conn.send(Answer(json=json.dumps({"node": reply.node, "attempt": reply.attempt})))


def status(agent: Any, conn: localsock.Conn, msg: StatusAsk) -> None:
    """One job's status, its ranks left out (a drill follows the job, not every rank)."""
    try:
        reply = agent.stub.Status(pb.StatusRequest(), timeout=ASK_TIMEOUT_S, metadata=agent.metadata)
        job = next((j for j in json.loads(reply.json)["jobs"] if j["job"] == msg.job_id), None)
    except (grpc.RpcError, ValueError, KeyError) as e:
        conn.send(Answer(error=f"no status from the coordinator: {type(e).__name__}"))
        return
    if job is not None:
        job = {**job, "nodes": [{k: v for k, v in n.items() if k not in ("ranks", "gpus")}
                                for n in job["nodes"][:1000]]}
    conn.send(Answer(json=json.dumps(job)))


def inject(beacon_dir: str, pid: int, rank: int, fault: str) -> str:
    """The fault into the rank; "" done, else why not."""
    if fault in SIGNALS:
        try:
            os.kill(pid, SIGNALS[fault])
        except OSError as e:
            return f"cannot signal rank {rank} (pid {pid}): {e.strerror}"
        return ""
    if not flight.ask(str(slot_path(beacon_dir, rank).with_suffix("")), PIPE[fault]):
        return f"rank {rank} does not listen on its request pipe"
    return ""


def deliver(agent: Any, cmd: pb.Command) -> None:
    with agent.lock:
        job = agent.jobs.get(cmd.job_id)
        track = job.tracks.get(cmd.rank) if job is not None else None
        where = (job.beacon_dir, track.pid) if job is not None and track is not None else None
    if where is None or job.attempt != cmd.attempt:
        log.warn("drill_not_injected", job=cmd.job_id, rank=cmd.rank, reason="no such rank here now")
        return
    why = inject(where[0], where[1], cmd.rank, cmd.action)
    if why:
        log.error("drill_not_injected", job=cmd.job_id, rank=cmd.rank, fault=cmd.action, reason=why)
    else:
        log.warn("drill_injected", job=cmd.job_id, rank=cmd.rank, fault=cmd.action, pid=where[1])
