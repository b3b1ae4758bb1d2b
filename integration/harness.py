"""Harness for integration tests: real processes, loopback only, bounded in time.

Everything a test starts is found again by its environment (the job id) and
killed at the end, whatever the test did.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

BIN = Path(sys.executable).parent
WATCHDOG = [sys.executable, "-m", "watchdog_d"]
TORCHRUN = [str(BIN / "torchrun")] if (BIN / "torchrun").exists() else \
    [sys.executable, "-m", "torch.distributed.run"]


class AlertSink:
    """A local HTTP endpoint that Apprise's json:// posts to."""

    def __init__(self, port: int = 0) -> None:
        """``port``: a given one (an endpoint that comes back where alerts were failing)."""
        self.received: list[dict] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    sink.received.append(json.loads(body))
                except ValueError:
                    sink.received.append({"raw": body.decode("utf-8", "replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int = 1, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def alert_sink():
    sink = AlertSink()
    yield sink
    sink.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("WATCHDOG_D_JOB_ID") == job_id:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def kill_job(job_id: str) -> None:
    for p in job_processes(job_id):
        try:
            p.kill()
        except psutil.Error:
            pass


def train_env(**overrides: object) -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("WATCHDOG_D_") or key.startswith("WD_"):
            del env[key]
    env.update({"WD_STEPS": "400", "WD_STEP_TIME": "0.05", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def torchrun_cmd(nproc: int = 2, extra: list[str] | None = None) -> list[str]:
    return [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", *(extra or []),
            "-m", "watchdog_d.demo.train"]


_SEQ = itertools.count()


class Guarded:
    """One ``watchdog-d run`` as a user would start it."""

    def __init__(self, tmp: Path, job_id: str, run_args: list[str], command: list[str],
                 env: dict[str, str], prefix: list[str] | None = None):
        self.tmp, self.job_id = tmp, job_id
        self.state_dir = tmp / "state"
        self.argv = [*(prefix or []), *WATCHDOG, "run", "--job-id", job_id, "--state-dir", str(self.state_dir),
                     *run_args, "--", *command]
        # one pair of files per wrapper: the wrappers of one job on several "nodes"
        # share the job id, and two writers on one file overwrite each other
        n = next(_SEQ)
        self.stdout_path, self.stderr_path = tmp / f"{job_id}-{n}.out", tmp / f"{job_id}-{n}.err"
        self.proc = subprocess.Popen(self.argv, env=env, stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"))
        self.started = time.monotonic()

    def wait(self, timeout: float = 90.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            kill_job(self.job_id)
            raise AssertionError(f"watchdog-d run did not end in {timeout}s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def last_stderr_line(self) -> str:
        lines = [l for l in self.stderr().splitlines() if l.strip()]
        return lines[-1] if lines else ""

    def events(self) -> list[dict]:
        out = subprocess.run([*WATCHDOG, "events", "--json", "--job", self.job_id,
                              "--state-dir", str(self.state_dir)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture
def guarded(tmp_path):
    started: list[Guarded] = []

    def start(run_args: list[str], command: list[str], env: dict[str, str],
              job_id: str | None = None, prefix: list[str] | None = None) -> Guarded:
        g = Guarded(tmp_path, job_id or f"it-{os.getpid()}-{len(started)}-{int(time.time())}",
                    run_args, command, env, prefix)
        started.append(g)
        return g

    yield start
    for g in started:
        if g.proc.poll() is None:
            g.proc.kill()
        kill_job(g.job_id)


def assert_no_leftovers(job_id: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = job_processes(job_id)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    desc = [f"{p.pid}:{' '.join(p.cmdline())[:80]}" for p in left if p.is_running()]
    assert not desc, f"processes of job {job_id} left behind: {desc}"
