"""A healthy job with every kind of pause a real one has, and nothing of watchdog-d in it.

DDP on gloo, 2+ ranks, SOAK_S seconds' worth of ~STEP_S steps (plus the pauses), with:
- a checkpoint every CKPT_EVERY_S seconds' worth of steps that takes CKPT_S seconds (rank 0 writes through a
  slow file object inside torch.save; the others wait in the next collective),
- an evaluation every EVAL_EVERY steps, EVAL_FACTOR times a step long, on every rank, that
  nobody declares,
- data-loader stalls: with probability STALL_P a rank waits up to STALL_MAX_S for its batch.
Then, if FREEZE=1, rank 1 stops itself (SIGSTOP) and writes the wall time to FREEZE_MARK.
"""
from __future__ import annotations

import datetime
import os
import random
import signal
import sys
import time


def _env(name: str, default: str) -> float:
    return float(os.environ.get(name, default))


class SlowFile:
    """A slow disk: the checkpoint's bytes trickle out over ``seconds``."""

    def __init__(self, f, seconds: float):
        self.f, self.seconds, self.first = f, seconds, True

    def write(self, data: bytes) -> int:
        if self.first:
            self.first = False
            time.sleep(self.seconds)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def main() -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank = dist.get_rank()
    rng = random.Random(1000 + rank)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 32), torch.randn(16, 8)
    step_s, soak_s = _env("STEP_S", "0.1"), _env("SOAK_S", "100")
    ckpt_every, ckpt_s = _env("CKPT_EVERY_S", "30"), _env("CKPT_S", "8")
    eval_every, eval_factor = int(_env("EVAL_EVERY", "50")), _env("EVAL_FACTOR", "10")
    stall_p, stall_max = _env("STALL_P", "0.02"), _env("STALL_MAX_S", "2")
    out = os.environ.get("CKPT_DIR", "/tmp")
    ckpt_steps = max(1, round(ckpt_every / step_s))   # about every CKPT_EVERY_S of steps
    steps = round(soak_s / step_s)                      # a count every rank agrees on
    step = 0
    while step < steps:
        if rng.random() < stall_p:                       # this rank's batch is late
            time.sleep(rng.uniform(0.1, stall_max))
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        time.sleep(step_s)
        if eval_every and step % eval_every == 0:         # an evaluation loop nobody declared
            with torch.no_grad():
                time.sleep(step_s * eval_factor)
                model(x)
        if step % ckpt_steps == 0 and rank == 0:            # every rank counts the same steps
            with open(os.path.join(out, f"step-{step}.pt"), "wb") as f:
                torch.save(model.module.state_dict(), SlowFile(f, ckpt_s))
            print(f"[rank 0] checkpoint at step {step} took {ckpt_s:.0f}s", flush=True)
        if rank == 0 and step % 100 == 0:
            print(f"[rank 0] step {step}", flush=True)
    if os.environ.get("FREEZE") == "1" and rank == 1:
        with open(os.environ["FREEZE_MARK"], "w") as f:
            f.write(repr(time.time()))
        print("[rank 1] freezing (SIGSTOP)", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
