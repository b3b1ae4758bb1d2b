"""A coordinator and agents as separate processes over real gRPC on loopback."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc

from harness import WATCHDOG, free_port, train_env


class Cluster:
    def __init__(self, tmp: Path, nodes: list[str], alert_url: str = "",
                 extra: list[str] | None = None, listen: str = "",
                 agent_env: dict[str, dict[str, str]] | None = None,
                 agent_prefix: dict[str, list[str]] | None = None,
                 agent_coordinator: dict[str, str] | None = None):
        """``agent_env``: node -> environment of its agent on top of the usual (a fake NVML);
        ``agent_prefix``: node -> what its agent's command line starts with (unshare ...);
        ``agent_coordinator``: node -> the --coordinator its agent is given (a proxy, a list)."""
        self.tmp = tmp
        self.agent_env = agent_env or {}
        self.agent_prefix = agent_prefix or {}
        self.agent_coordinator = agent_coordinator or {}
        self.port = int(listen.rsplit(":", 1)[1]) if listen else free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.state_dir = tmp / "coordinator"
        self.procs: list[subprocess.Popen] = []
        args = ["coordinator", "--listen", listen or self.address, "--state-dir", str(self.state_dir),
                *(extra or [])]
        if alert_url:
            args += ["--alert", alert_url]
        self._coordinator_args = args
        self.coordinator = self._spawn("coordinator", args)
        self._wait_ready()
        self.sockets: dict[str, str] = {}
        self.agents: dict[str, subprocess.Popen] = {}
        self.extra = extra or []
        for node in nodes:
            self.start_agent(node)
        deadline = time.monotonic() + 20
        while not all(os.path.exists(s) for s in self.sockets.values()):
            assert time.monotonic() < deadline, "agents did not come up"
            time.sleep(0.05)

    def restart_coordinator(self) -> None:
        """SIGKILL the coordinator and start it again: same port, same state dir."""
        self.coordinator.kill()
        self.coordinator.wait(timeout=10)
        self.coordinator = self._spawn("coordinator", self._coordinator_args)
        self._wait_ready()

    def start_agent(self, node: str) -> subprocess.Popen:
        sock = str(self.tmp / f"{node}.sock")
        self.agents[node] = self._spawn(node, [
            "agent", "--coordinator", self.agent_coordinator.get(node, self.address), "--node-id", node, "--socket", sock,
            "--state-dir", str(self.tmp / node), *self.extra], self.agent_env.get(node),
            self.agent_prefix.get(node, []))
        self.sockets[node] = sock
        return self.agents[node]

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None,
               prefix: list[str] = ()) -> subprocess.Popen:
        env = train_env()
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra_env or {})
        proc = subprocess.Popen([*prefix, *WATCHDOG, *args], env=env,
                                stdout=open(self.tmp / f"{name}.log", "ab"),
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _wait_ready(self) -> None:
        channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(channel).result(timeout=20)
        finally:
            channel.close()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
