"""Standby coordinators on a real etcd (``integration/etcd.py``), with agents that are
given all of them: processes on loopback, as ``cluster.Cluster`` for one coordinator."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2 as hpb
from grpc_health.v1 import health_pb2_grpc as hpb_grpc

from cluster import Processes
from harness import free_port

TTL = 3.0


class HACluster(Processes):
    def __init__(self, tmp: Path, etcd_url: str, names: list[str], nodes: list[str],
                 alert_url: str = "", ttl: float = TTL):
        super().__init__(tmp)
        self.etcd_url, self.ttl, self.alert_url = etcd_url, ttl, alert_url
        self.ports = {name: free_port() for name in names}
        self.coordinators: dict[str, subprocess.Popen] = {}
        for name in names:
            self.start_coordinator(name)
            self.wait_leader({name} if name == names[0] else None)
        self.agents: dict[str, subprocess.Popen] = {}
        for node in nodes:
            self.start_agent(node)
        self._wait_sockets()

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def addresses(self) -> str:
        return ",".join(self.address(n) for n in self.ports)

    def state_dir(self, name: str) -> Path:
        return self.tmp / f"coordinator-{name}"

    def start_coordinator(self, name: str, extra: list[str] = (), etcd_url: str = "") -> subprocess.Popen:
        if name not in self.ports:
            self.ports[name] = free_port()
        args = ["coordinator", "--listen", self.address(name), "--state-dir", str(self.state_dir(name)),
                "--ha", f"etcd://{etcd_url or self.etcd_url}", "--name", name, "--lease-ttl", str(self.ttl),
                *extra]
        if self.alert_url:
            args += ["--alert", self.alert_url]
        self.coordinators[name] = self._spawn(f"coordinator-{name}", args)
        return self.coordinators[name]

    def start_agent(self, node: str, extra: list[str] = (), coordinators: str = "") -> subprocess.Popen:
        sock = str(self.tmp / f"{node}.sock")
        self.agents[node] = self._spawn(node, [
            "agent", "--coordinator", coordinators or self.addresses, "--node-id", node, "--socket", sock,
            "--state-dir", str(self.tmp / node), *extra])
        self.sockets[node] = sock
        return self.agents[node]

    def serving(self, name: str) -> bool:
        """The standard health check: SERVING only while it leads."""
        channel = grpc.insecure_channel(self.address(name))
        try:
            reply = hpb_grpc.HealthStub(channel).Check(hpb.HealthCheckRequest(service=""), timeout=0.5)
            return reply.status == hpb.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False
        finally:
            channel.close()

    def leader(self) -> str | None:
        leading = [n for n, p in self.coordinators.items() if p.poll() is None and self.serving(n)]
        assert len(leading) <= 1, f"two coordinators serve at once: {leading}"
        return leading[0] if leading else None

    def wait_leader(self, among: set[str] | None = None, timeout: float = 20.0) -> str | None:
        """The leader once one of ``among`` leads (None: just wait until the process answers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if among is None:
                channel = grpc.insecure_channel(self.address(list(self.coordinators)[-1]))
                try:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                    return None
                except grpc.FutureTimeoutError:
                    pass
                finally:
                    channel.close()
            else:
                who = self.leader()
                if who in among:
                    return who
            time.sleep(0.05)
        raise AssertionError(f"none of {among} leads after {timeout}s")

    def kill(self, name: str) -> None:
        self.coordinators[name].kill()
        self.coordinators[name].wait(timeout=10)

    def signal(self, name: str, sig: int) -> None:
        self.coordinators[name].send_signal(sig)
