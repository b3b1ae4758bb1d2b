"""A loop without an optimizer: progress comes from explicit watchdog_d.step().

WD_FAULT=hang makes rank WD_FAULT_RANK sleep before its all_reduce at WD_FAULT_STEP.
"""
import datetime
import os
import time

import torch
import torch.distributed as dist

import watchdog_d

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
rank = dist.get_rank()
steps = int(os.environ.get("WD_STEPS", "60"))
for step in range(steps):
    if (os.environ.get("WD_FAULT") == "hang" and rank == int(os.environ.get("WD_FAULT_RANK", "1"))
            and step == int(os.environ.get("WD_FAULT_STEP", "5"))):
        time.sleep(3600)
    t = torch.ones(4)
    dist.all_reduce(t)
    watchdog_d.step(step)
    time.sleep(0.05)
dist.destroy_process_group()
print(f"[rank {rank}] manual loop done", flush=True)
