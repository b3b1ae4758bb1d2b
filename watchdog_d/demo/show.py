"""``watchdog-d demo``: the whole story on one CPU in well under a minute.

A real 2-rank torchrun job (gloo) trains under ``watchdog-d run --on-failure
restart``, writing a checkpoint every 5 steps; rank 1 is killed mid-training;
the watchdog names it, tears the job down, relaunches it from the latest
checkpoint (the job then finishes), and the alert arrives at a local json://
endpoint this demo listens on.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..config import Config


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class _Sink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            _Sink.received.append(json.loads(body))
        except ValueError:
            pass
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run_demo(cfg: Config) -> int:
    if importlib.util.find_spec("torch") is None:
        print("watchdog-d demo: needs torch in this environment (pip install torch)",
              file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"json://127.0.0.1:{server.server_address[1]}/demo"
    state_dir = tempfile.mkdtemp(prefix="watchdog-d-demo-")
    job = "demo"
    ckpt = os.path.join(state_dir, "checkpoints")
    os.makedirs(ckpt)
    env = dict(os.environ, WD_FAULT="kill", WD_FAULT_RANK="1", WD_FAULT_STEP="22",
               WD_STEPS="40", WD_STEP_TIME="0.05", WD_CKPT_DIR=ckpt, WD_CKPT_EVERY="5",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "watchdog_d", "run", "--job-id", job, "--state-dir", state_dir,
            "--alert", url, "--min-stall-timeout", "10", "--grace", "3",
            "--on-failure", "restart", "--max-restarts", "1", "--checkpoint-dir", ckpt, "--",
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "watchdog_d.demo.train"]
    _say("1. a 2-rank torchrun job (gloo, CPU) under watchdog-d, a checkpoint every 5 steps; "
         "rank 1 dies by SIGKILL at step 22")
    print("$ watchdog-d run --alert json://127.0.0.1:PORT/demo --on-failure restart --max-restarts 1 "
          "--checkpoint-dir CKPT -- torchrun --standalone --nproc-per-node=2 -m watchdog_d.demo.train",
          flush=True)
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, stderr=subprocess.PIPE, text=True)
    took = time.monotonic() - started
    noise = ("W1", "[W1", "  ", "Traceback", "torch.distributed.elastic", "****")
    lines = proc.stderr.splitlines()
    for line in lines:
        if not line.startswith(noise):
            print(line, file=sys.stderr, flush=True)
    _say(f"2. watchdog-d exited with status {proc.returncode} after {took:.1f}s: it named the "
         f"verdict, tore the job down and relaunched it from the checkpoint, which then finished:")
    for line in lines:
        if line.startswith("watchdog-d: job"):
            print(line)
    deadline = time.monotonic() + 10
    while not _Sink.received and time.monotonic() < deadline:
        time.sleep(0.05)
    _say("3. the alert that reached the on-call endpoint (json://, as DingTalk or e-mail would get it)")
    for alert in _Sink.received[:1]:
        print(alert.get("title", ""))
        print(alert.get("message", ""))
    if not _Sink.received:
        print("(no alert arrived)")
    _say("4. the incident log: watchdog-d events --state-dir " + state_dir)
    subprocess.run([sys.executable, "-m", "watchdog_d", "events", "--state-dir", state_dir])
    server.shutdown()
    ok = proc.returncode == 0 and bool(_Sink.received)
    _say("demo " + ("finished: detected, torn down, restarted from the checkpoint, alerted"
                    if ok else "did NOT go as expected"))
    return 0 if ok else 1
