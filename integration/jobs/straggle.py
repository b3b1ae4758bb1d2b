"""DDP on gloo whose ranks take uneven time before each step's collectives (no watchdog code).

WD_STEPS steps of WD_STEP_TIME seconds of "compute" (a sleep), then forward, backward
(DDP's all_reduce) and the optimizer step. Then, per rank:
- WD_LATE_RANK / WD_LATE_FRACTION: that rank computes this much longer every step (a straggler);
- WD_JITTER: every rank is slow now and then: in a share WD_JITTER of its steps (seeded per
  rank), it computes up to 50 % longer (uniform noise, no straggler);
- WD_PAUSE_STEP / WD_PAUSE_S: one rank (WD_LATE_RANK, default 1) stops once for this long
  at that step (a GC pause: one slow step, no straggler).
"""
import datetime
import os
import random
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
rank = dist.get_rank()
env = os.environ.get
steps, step_time = int(env("WD_STEPS", "200")), float(env("WD_STEP_TIME", "0.1"))
late_rank, late = int(env("WD_LATE_RANK", "1")), float(env("WD_LATE_FRACTION", "0"))
jitter, pause_step, pause_s = float(env("WD_JITTER", "0")), int(env("WD_PAUSE_STEP", "-1")), \
    float(env("WD_PAUSE_S", "0"))
noise = random.Random(1000 + rank)
model = DDP(torch.nn.Linear(16, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(8, 16), torch.randn(8, 4)
took = []
for step in range(steps):
    began = time.perf_counter()
    busy = step_time
    if rank == late_rank:
        busy += late * step_time
        if step == pause_step:
            busy += pause_s
    if jitter and noise.random() < jitter:
        busy += noise.uniform(0.0, 0.5) * step_time
    time.sleep(busy)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    took.append(time.perf_counter() - began)
dist.destroy_process_group()
took.sort()
print(f"[rank {rank}] done after {steps} steps, median step {took[len(took) // 2] * 1000:.3f} ms",
      flush=True)
