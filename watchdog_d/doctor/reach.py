"""Can this node reach what the job needs: the coordinator, and torchrun's MASTER_ADDR?"""
from __future__ import annotations

import errno
import socket
from typing import Mapping

from .check import ERROR, OK, WARN, Check

CONNECT_S = 3.0


def coordinator(target: str, cfg: object, socket_path: str, agent_answers: bool) -> list[Check]:
    """The gRPC health service's answer (the coordinator serves grpc.health.v1): SERVING
    means its decision loop turns, not merely that a port is open."""
    if not target:
        if agent_answers:
            return [Check("coordinator", OK, f"the node's agent answers on {socket_path} "
                                             f"(it reports to its own coordinator)")]
        return [Check("coordinator", OK, "none configured and no agent on this node: "
                                         "'watchdog-d run' embeds both (a single-node job)")]
    import grpc
    from grpc_health.v1 import health_pb2 as hpb
    from grpc_health.v1 import health_pb2_grpc as hpb_grpc

    from ..proto import rpc

    channel = rpc.make_channel(cfg, target)   # type: ignore[arg-type]
    try:
        reply = hpb_grpc.HealthStub(channel).Check(hpb.HealthCheckRequest(service=""),
                                                   timeout=CONNECT_S)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        return [Check("coordinator", ERROR, f"{target}: {getattr(code, 'name', code)}: "
                                            f"{e.details() if hasattr(e, 'details') else e}"[:300],
                      "start 'watchdog-d coordinator' there, or fix --coordinator, the "
                      "firewall or the TLS settings")]
    finally:
        channel.close()
    if reply.status != hpb.HealthCheckResponse.SERVING:
        return [Check("coordinator", ERROR, f"{target} answers NOT_SERVING (its decision loop "
                                            f"does not run)", "look at the coordinator's log")]
    return [Check("coordinator", OK, f"{target} SERVING")]


def _is_local(family: int, ip: str) -> bool:
    """An address of this host: one a socket can bind."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def judge_master(addr: str, port: str, local: bool, outcome: int | None) -> Check:
    """``outcome``: 0 connected, else the errno of the attempt (None: timed out)."""
    where = f"MASTER_ADDR {addr}:{port}"
    if outcome == 0:
        if local:
            return Check("master", WARN, f"{where} is this node and something listens there already",
                         "torchrun's store on this node cannot bind it: a leftover of an earlier "
                         "job? (ss -ltnp), or pick another MASTER_PORT")
        return Check("master", OK, f"{where} reachable (rank 0's store listens)")
    if outcome == errno.ECONNREFUSED:
        if local:
            return Check("master", OK, f"{where} is this node; nothing listens yet (normal: "
                                       f"torchrun listens there when it starts)")
        return Check("master", WARN, f"{where}: connection refused",
                     "normal if the rank-0 node has not launched yet; if it has, check its "
                     "address and port and the firewall")
    why = "timed out" if outcome is None else errno.errorcode.get(outcome, str(outcome))
    return Check("master", WARN, f"{where}: {why} after {CONNECT_S:g} s",
                 "check the route and firewall between this node and MASTER_ADDR")


def master(env: Mapping[str, str]) -> list[Check]:
    addr, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
    if not addr:
        return []
    if not port.isdigit():
        return [Check("master", ERROR, f"MASTER_ADDR={addr} but MASTER_PORT={port!r}",
                      "set MASTER_PORT to a port number")]
    try:
        infos = socket.getaddrinfo(addr, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return [Check("master", ERROR, f"MASTER_ADDR {addr} does not resolve: {e.strerror}",
                      "fix MASTER_ADDR (a host name this node can resolve, or an address)")]
    family, _, _, _, sockaddr = infos[0]
    local = _is_local(family, sockaddr[0])
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_S)
        try:
            outcome: int | None = s.connect_ex(sockaddr)
        except socket.timeout:
            outcome = None
        except OSError as e:
            outcome = e.errno
    if outcome == errno.EAGAIN or outcome == errno.EINPROGRESS:
        outcome = None
    return [judge_master(addr, port, local, outcome)]
