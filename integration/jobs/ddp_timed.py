"""A small gloo DDP job that times its own steps (for integration/bench_flight.py).

WD_STEPS steps after WD_WARMUP warm-up steps; rank 0 prints one JSON line:
{"median_ms": ..., "p90_ms": ..., "collectives_per_step": ...}.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

STEPS = int(os.environ.get("WD_STEPS", "300"))
WARMUP = int(os.environ.get("WD_WARMUP", "30"))


def main() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    # (small buckets: one all_reduce per layer, so the recorder sees several per step)
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.25)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(32, 256)
    times = []
    for step in range(WARMUP + STEPS):
        t0 = time.perf_counter()
        ddp(x).sum().backward()
        opt.step()
        opt.zero_grad()
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    seq = -1
    try:
        from torch._C import _distributed_c10d as c10d
        import pickle

        status = pickle.loads(c10d._dump_fr_trace(True, False, False)).get("pg_status", {})
        seq = max(int(v.get("last_enqueued_collective", -1)) for v in status.values())
    except Exception:
        pass
    dist.barrier()
    if dist.get_rank() == 0:
        times.sort()
        print(json.dumps({"median_ms": statistics.median(times) * 1e3,
                          "p90_ms": times[int(len(times) * 0.9)] * 1e3,
                          "recorded": seq}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
