"""A hung NCCL collective on a real GPU (issue 17), one short script for a lent device.

    python integration/gpu_hang.py [--floor 10]

On one GPU, NCCL, world size 1 (the flight recorder is NCCL's): a kernel that never ends
(``torch.cuda._sleep`` with a huge cycle count) is followed by an all_reduce, and the
host spins in ``.item()``. Runs it under ``watchdog-d run`` twice, with and without
``TORCH_NCCL_ENABLE_TIMING=1``, and prints the verdict, its detection time, what the
flight recorder showed ("scheduled" / "started") and NVML's utilisation meanwhile; then the
step time of a small all_reduce loop with timing on and off. Without a GPU it says so
and exits 0: nothing else depends on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = r'''
import os, time, torch, torch.distributed as dist
dist.init_process_group("nccl")
x = torch.ones(1 << 20, device="cuda")
mode = os.environ["GH_MODE"]
if mode == "bench":
    for timing in range(1):
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(500):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        print(json.dumps({"step_ms": (time.perf_counter() - t) / 500 * 1e3}) if False else
              "STEP_MS %.4f" % ((time.perf_counter() - t) / 500 * 1e3), flush=True)
else:
    import torch.optim  # the step hook
    for step in range(5):
        dist.all_reduce(x); x.sum().item()
        import watchdog_d; watchdog_d.step()
    torch.cuda._sleep(1 << 62)          # a kernel that never ends
    dist.all_reduce(x)
    x.sum().item()                      # the host spins here
'''


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--floor", type=float, default=10.0)
    args = ap.parse_args()
    try:
        import torch
        ok = torch.cuda.is_available()
    except ImportError:
        ok = False
    if not ok:
        print("integration/gpu_hang.py needs a CUDA GPU and NCCL; none here. Nothing else "
              "depends on it: run it on a GPU node.")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="gpu-hang-"))
    job = tmp / "job.py"
    job.write_text(JOB)
    base = dict(os.environ, OMP_NUM_THREADS="1")
    for timing in ("0", "1"):
        env = dict(base, GH_MODE="hang", TORCH_NCCL_ENABLE_TIMING=timing)
        state = tmp / f"state-{timing}"
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "watchdog_d", "run", "--job-id", f"gpu-hang-{timing}",
                            "--state-dir", str(state), "--min-stall-timeout", str(args.floor), "--",
                            sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node=1", str(job)], env=env, capture_output=True, text=True,
                           timeout=args.floor + 120)
        wall = time.monotonic() - t0
        last = [l for l in p.stderr.splitlines() if l.strip()][-1:] or [""]
        ev = subprocess.run([sys.executable, "-m", "watchdog_d", "events", "--json", "--state-dir",
                             str(state)], capture_output=True, text=True).stdout
        print(f"TORCH_NCCL_ENABLE_TIMING={timing}: exit {p.returncode} after {wall:.1f}s")
        print(f"  last line: {last[0]}")
        for line in ev.splitlines():
            e = json.loads(line)
            print(f"  event: {e['kind']} rank {e['rank']} after {e['detected_after_s']}s: {e['cause'][:300]}")
        for f in sorted(state.glob("logs/*/attempt-0/flight-recorder/*")):
            print(f"  kept: {f}")
    for timing in ("0", "1"):
        env = dict(base, GH_MODE="bench", TORCH_NCCL_ENABLE_TIMING=timing)
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node=1", str(job)], env=env, capture_output=True, text=True,
                             timeout=300).stdout
        ms = [l.split()[1] for l in out.splitlines() if l.startswith("STEP_MS")]
        print(f"all_reduce 4 MB, timing {timing}: {ms[0] if ms else '?'} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
