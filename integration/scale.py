"""Simulated clusters against a real coordinator (or the null one): start them, fault
them, measure them. Used by ``bench_coordinator.py`` and ``test_scale.py``."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    state_dir: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def events(self) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "watchdog_d", "events", "--json",
                              "--state-dir", self.state_dir], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def start_server(kind: str, workdir: Path, env_extra: dict | None = None) -> Server:
    """kind: "coordinator" (the real one) or "null" (nullcoord.py)."""
    port = free_port()
    state = workdir / f"state-{kind}-{port}"
    state.mkdir(parents=True)
    log = workdir / f"{kind}-{port}.log"
    if kind == "null":
        cmd = [sys.executable, str(HERE / "nullcoord.py"), str(port)]
    else:
        cmd = [sys.executable, "-m", "watchdog_d", "coordinator", "--listen", f"127.0.0.1:{port}",
               "--state-dir", str(state)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_port(port, proc)
    return Server(proc, port, str(state), log)


@dataclass
class Sims:
    procs: list[subprocess.Popen]
    outs: list[Path]
    plan: dict
    results: dict = field(default_factory=dict)

    def pause(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGCONT)

    def wait(self) -> dict:
        deadline = self.plan["end"] + 60
        for p in self.procs:
            p.send_signal(signal.SIGCONT)
            p.wait(max(1.0, deadline - time.monotonic()))
        merged: dict = {"latency": [], "errors": [], "commands": [], "full": 0, "delta": 0}
        for out, p in zip(self.outs, self.procs):
            if p.returncode != 0 or not out.exists():
                raise RuntimeError(f"simulated nodes exited {p.returncode} without results")
            got = json.loads(out.read_text())
            for k in ("latency", "errors", "commands"):
                merged[k] += got[k]
            merged["full"] += got["full"]
            merged["delta"] += got["delta"]
        self.results = merged
        return merged

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


def start_sims(port: int, nodes: int, procs: int, *, t0: float, end: float,
               measure: tuple[float, float], job_nodes: int = 8, ranks: int = 8,
               step_s: float = 0.5, heartbeat_s: float = 1.0, faults: dict | None = None,
               workdir: Path | None = None, transport: str = "stream") -> Sims:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="wd-sims-"))
    per = -(-nodes // procs)
    plan_base = {"target": f"127.0.0.1:{port}", "job_nodes": job_nodes, "ranks": ranks,
                 "step_s": step_s, "heartbeat_s": heartbeat_s, "t0": t0, "end": end,
                 "measure": list(measure), "transport": transport, **(faults or {})}
    out_procs, outs = [], []
    for k in range(procs):
        first, count = k * per, min(per, nodes - k * per)
        if count <= 0:
            break
        plan = {**plan_base, "first": first, "count": count}
        plan_path = workdir / f"plan-{port}-{k}.json"
        plan_path.write_text(json.dumps(plan))
        out = workdir / f"out-{port}-{k}.json"
        outs.append(out)
        # niced: the simulated nodes stand for other machines; on this one they must not
        # take the coordinator's CPU (the null server's run gets the same treatment)
        out_procs.append(subprocess.Popen(
            ["nice", "-n", "10", sys.executable, str(HERE / "simnodes.py"), str(plan_path), str(out)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=(workdir / f"sim-{port}-{k}.log").open("w"), stderr=subprocess.STDOUT))
    return Sims(out_procs, outs, plan_base)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


def told(commands: list, job: str, verb: str = "teardown") -> dict[str, float]:
    """node -> when it first heard ``verb`` for ``job``."""
    out: dict[str, float] = {}
    for node, job_id, v, t, _via in commands:
        if job_id == job and v == verb and node not in out:
            out[node] = t
    return out
