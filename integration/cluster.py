"""A coordinator and agents as separate processes over real gRPC on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import psutil

from harness import TORCHRUN, WATCHDOG, free_port, train_env


def two_node_job(guarded, sockets: dict[str, str], job_id: str, **env: object) -> list:  # type: ignore[no-untyped-def]
    """One job over node-a and node-b through their agents' sockets: a rank each, a static
    rendezvous, a 3 s stall floor; ``env``: the trainer's (WD_STEPS, a fault, ...)."""
    port = free_port()
    env = train_env(**{"WD_PG_TIMEOUT": 300, **env})
    wrappers = []
    for node_rank, node in enumerate(("node-a", "node-b")):
        cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
               "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "watchdog_d.demo.train"]
        wrappers.append(guarded(["--agent-socket", sockets[node], "--min-stall-timeout", "3",
                                 "--grace", "3"], cmd, env, job_id=job_id))
    return wrappers


def cluster_status(address: str) -> dict:
    """``watchdog-d status --json`` asked of a coordinator (a list: the --ha ones)."""
    out = subprocess.run([*WATCHDOG, "status", "--json", "--coordinator", address],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout or '{"jobs": []}')


def stepping(address: str, job: str, above: int = 2, nodes: int = 2, timeout: float = 60.0) -> dict:
    """The job's status once ``nodes`` nodes report it there and all its ranks stepped past
    ``above``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in cluster_status(address)["jobs"] if j["job"] == job]
        if jobs and len(jobs[0]["nodes"]) == nodes and all(
                n["ranks"] and all(r["step"] > above for r in n["ranks"]) for n in jobs[0]["nodes"]):
            return jobs[0]
        time.sleep(0.3)
    raise AssertionError(f"job {job} never stepped past {above} on {nodes} nodes at {address}")


def job_events(state_dir: str | Path, job: str) -> list[dict]:
    """``watchdog-d events --json --job JOB`` of a coordinator's state dir."""
    out = subprocess.run([*WATCHDOG, "events", "--json", "--job", job, "--state-dir", str(state_dir)],
                         capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def kill_rank(wrapper, rank: int) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the rank RANK under a wrapper."""
    ranks = [p for p in psutil.Process(wrapper.proc.pid).children(recursive=True)
             if p.environ().get("RANK") == str(rank)]
    assert ranks, f"rank {rank} not found"
    os.kill(ranks[0].pid, signal.SIGKILL)


class Processes:
    """watchdog-d daemons of a test, each logging to TMP/NAME.log; stopped together."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.sockets: dict[str, str] = {}            # node -> its agent's socket

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

    def _wait_sockets(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(s) for s in self.sockets.values()):
            assert time.monotonic() < deadline, "agents did not come up"
            time.sleep(0.05)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)        # (one a test paused)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


class Cluster(Processes):
    def __init__(self, tmp: Path, nodes: list[str], alert_url: str = "",
                 extra: list[str] | None = None, listen: str = "",
                 agent_env: dict[str, dict[str, str]] | None = None,
                 agent_prefix: dict[str, list[str]] | None = None,
                 agent_coordinator: dict[str, str] | None = None):
        """``agent_env``: node -> environment of its agent on top of the usual (a fake NVML);
        ``agent_prefix``: node -> what its agent's command line starts with (unshare ...);
        ``agent_coordinator``: node -> the --coordinator its agent is given (a proxy, a list)."""
        super().__init__(tmp)
        self.agent_env = agent_env or {}
        self.agent_prefix = agent_prefix or {}
        self.agent_coordinator = agent_coordinator or {}
        self.port = int(listen.rsplit(":", 1)[1]) if listen else free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.state_dir = tmp / "coordinator"
        args = ["coordinator", "--listen", listen or self.address, "--state-dir", str(self.state_dir),
                *(extra or [])]
        if alert_url:
            args += ["--alert", alert_url]
        self._coordinator_args = args
        self.coordinator = self._spawn("coordinator", args)
        self._wait_ready()
        self.agents: dict[str, subprocess.Popen] = {}
        self.extra = extra or []
        for node in nodes:
            self.start_agent(node)
        self._wait_sockets()

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

    def _wait_ready(self) -> None:
        channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(channel).result(timeout=20)
        finally:
            channel.close()
