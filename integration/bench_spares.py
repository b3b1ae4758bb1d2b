"""Bad hardware leaves the job: from a GPU failure to the relaunched job's first step without
the bad node, for an elastic job (it goes on smaller) and a fixed one (a spare takes the
place); next to it, a clean start of the same job.

    python integration/bench_spares.py [--runs 3]

A coordinator and three agents ("nodes") as processes on this machine; node B's agent reads
a fake NVML (tests/fakenvml) whose GPU runs B's rank. Each run is a real 2-node torchrun job
(DDP on gloo, one rank a node; watchdog_d.demo.train, a checkpoint every 5 steps) under
``watchdog-d run --on-failure restart``; at its 3rd step an Xid 79 on B's GPU. Times (wall
clock): the Xid -> the verdict (coordinator log), -> B's wrapper gone (exit 75), -> the spare's
``spare_joined`` (fixed job), -> rank 0's first step of attempt 1 (WD_STEP_MARK.1: imports,
rendezvous, checkpoint load included). The clean start: ``job_launched attempt=0`` -> rank 0's
first step of attempt 0. Medians; no timed assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_restart import first, log_events, read_time  # noqa: E402
from cluster import Cluster  # noqa: E402
from fakenvml_load import write as write_json  # noqa: E402
from harness import TORCHRUN, WATCHDOG, Guarded, free_port, kill_job, train_env  # noqa: E402

FAKE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fakenvml"
RUN = ["-v", "--on-failure", "restart", "--max-restarts", "1", "--grace", "3", "--min-stall-timeout", "10"]


def gpu(processes=()) -> dict:
    return {"uuid": "GPU-0", "pci": "00000000:3B:00.0", "name": "NVIDIA H100 80GB HBM3",
            "processes": list(processes)}


def status(cluster) -> dict:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--state-dir", str(cluster.state_dir)],
                         capture_output=True, text=True, timeout=15)
    return json.loads(out.stdout) if out.returncode == 0 else {"jobs": []}


def pid_on(cluster, job: str, node: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in status(cluster)["jobs"]:
            for n in j["nodes"] if j["job"] == job else ():
                if n["node"] == node and n["ranks"] and n["ranks"][0]["step"] >= 3:
                    return n["ranks"][0]["pid"]
        time.sleep(0.2)
    raise RuntimeError(f"{job} never stepped on {node}")


def one_run(root: Path, kind: str, n: int, fault: bool = True) -> dict:
    tmp = root / f"{kind}-{n}-{'xid' if fault else 'clean'}"
    tmp.mkdir(parents=True)
    fake, kmsg = tmp / "nvml-b.json", tmp / "kmsg-b"
    kmsg.write_text("")
    write_json(fake, {"devices": [gpu()]})
    env_b = {"WD_FAKE_NVML": str(fake), "WATCHDOG_D_GPU_POLL_INTERVAL": "0.3", "WATCHDOG_D_KMSG_PATH": str(kmsg),
             "PYTHONPATH": os.pathsep.join(p for p in (str(FAKE_DIR), os.environ.get("PYTHONPATH", "")) if p)}
    cluster = Cluster(tmp, ["node-a", "node-b", "node-c"], agent_env={"node-b": env_b})
    job, port, ckpt = f"bench-{kind}-{n}-{int(time.time())}", free_port(), tmp / "ckpt"
    ckpt.mkdir()
    env = train_env(WD_PG_TIMEOUT=120, WD_CKPT_DIR=ckpt, WD_STEPS=40, WD_STEP_TIME=0.1,
                    WD_STEP_MARK=tmp / "step.t")
    if kind == "elastic":
        cmd = lambda r: [*TORCHRUN, "--nnodes=1:2", "--nproc-per-node=1", "--rdzv-backend=c10d",  # noqa: E731
                         f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={job}",
                         "--rdzv-conf=last_call_timeout=3", "-m", "watchdog_d.demo.train"]
    else:
        cmd = lambda r: [*TORCHRUN, "--nnodes=2", f"--node-rank={r}", "--nproc-per-node=1",  # noqa: E731
                         "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "watchdog_d.demo.train"]
    ws = {node: Guarded(tmp, job, [*RUN, "--agent-socket", cluster.sockets[node]], cmd(r), env)
          for node, r in (("node-a", 0), ("node-b", 1))}
    if kind == "spare":
        ws["node-c"] = Guarded(tmp, job, [*RUN, "--spare", "--agent-socket", cluster.sockets["node-c"]],
                               cmd(1), env)
    out: dict = {}
    try:
        if fault:
            pid = pid_on(cluster, job, "node-b")
            write_json(fake, {"devices": [gpu([pid])]})
            time.sleep(1.2)
            t0 = time.time()
            write_json(fake, {"devices": [gpu([pid])], "events": [{"id": 1, "gpu": 0, "xid": 79}]})
            ws["node-b"].proc.wait(timeout=60)
            out["b_gone"] = time.time() - t0
        rcs = {node: w.proc.wait(timeout=180) for node, w in ws.items()}
        out["rcs"] = rcs
        logs = log_events(cluster.log("coordinator"))
        wlog = log_events("".join(w.stderr() for w in ws.values()))
        if fault:
            v = next((t for t, name, f in logs if name == "verdict" and f.get("job") == job
                      and f.get("kind") == "gpu_xid"), None)
            out["verdict"] = v - t0 if v else None
            joined = first(wlog, "spare_joined", job)
            out["joined"] = joined - t0 if joined else None
            step1 = read_time(tmp / "step.t.1")
            out["first_step"] = step1 - t0 if step1 else None
        else:
            launched = first(wlog, "job_launched", job, attempt="0")
            step0 = read_time(tmp / "step.t.0")
            out["clean_start"] = step0 - launched if step0 and launched else None
    finally:
        for w in ws.values():
            if w.proc.poll() is None:
                w.proc.kill()
        kill_job(job)
        cluster.stop()
    return out


def med(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):.2f} s (max {max(xs):.2f})" if xs else "-"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-spares-") as d:
        root = Path(d)
        print(f"| job | Xid -> verdict | -> B's wrapper gone | -> spare joined | -> first step of attempt 1 "
              f"| clean start (launch -> first step) | runs |")
        print("|---|---|---|---|---|---|---|")
        for kind in ("elastic", "spare"):
            rs = [one_run(root, kind, n) for n in range(a.runs)]
            clean = [one_run(root, kind, n, fault=False) for n in range(a.runs)]
            print(f"| {kind} (--nnodes {'1:2' if kind == 'elastic' else '2'}) | {med([r.get('verdict') for r in rs])} "
                  f"| {med([r.get('b_gone') for r in rs])} | {med([r.get('joined') for r in rs])} "
                  f"| {med([r.get('first_step') for r in rs])} | {med([c.get('clean_start') for c in clean])} "
                  f"| {a.runs}; exits {[r.get('rcs') for r in rs]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
