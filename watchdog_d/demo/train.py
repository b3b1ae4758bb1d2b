"""A small real training job for the demo and the integration tests.

    torchrun --standalone --nproc-per-node 2 -m watchdog_d.demo.train

DDP on gloo (CPU). Faults are injected through the environment:
WD_FAULT = kill | stop | hang | raise | oom | exit | slow | none, on rank WD_FAULT_RANK
at step WD_FAULT_STEP (only on the first attempt unless WD_FAULT_ALWAYS=1).
WD_PAUSE_AT / WD_PAUSE_S / WD_PAUSE_TIMEOUT: every rank pauses inside
watchdog_d.section("eval") at that step. WD_STEPS steps of about WD_STEP_TIME seconds; a checkpoint every WD_CKPT_EVERY
steps into WD_CKPT_DIR, resumed from WATCHDOG_D_RESUME_FROM. For benchmarks: WD_FAULT_MARK
(wall time of the fault) and WD_STEP_MARK (rank 0's first step, into WD_STEP_MARK.<attempt>);
for tests: WD_FAULT_UNLINK (a file the faulty rank deletes, e.g. the launcher script).
"""
from __future__ import annotations

import datetime
import os
import signal
import sys
import time


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def main() -> int:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import watchdog_d

    steps = int(_env("WD_STEPS", "40"))
    step_time = float(_env("WD_STEP_TIME", "0.05"))
    fault = _env("WD_FAULT", "none")
    fault_rank = int(_env("WD_FAULT_RANK", "1"))
    fault_step = int(_env("WD_FAULT_STEP", "5"))
    first_attempt = _env("WATCHDOG_D_RESTART_COUNT", "0") == "0" or _env("WD_FAULT_ALWAYS", "0") == "1"
    ckpt_dir = _env("WD_CKPT_DIR", "")
    ckpt_every = int(_env("WD_CKPT_EVERY", "5"))

    dist.init_process_group("gloo", timeout=datetime.timedelta(
        seconds=float(_env("WD_PG_TIMEOUT", "120"))))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0
    resume = _env("WATCHDOG_D_RESUME_FROM", "")
    if resume and os.path.exists(resume):
        state = torch.load(resume)
        model.module.load_state_dict(state["model"])
        start = state["step"]
        print(f"[rank {rank}] resumed from {resume} at step {start}", flush=True)
    if _env("WD_SPAWN_DAEMON", "0") == "1" and rank == 0:
        # a helper that double-forks and leaves the session: teardown must still find it
        import subprocess

        subprocess.Popen([sys.executable, "-c", "import os, time\nif os.fork(): os._exit(0)\n"
                          "os.setsid()\ntime.sleep(600)"])
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    for step in range(start, steps):
        hit = fault != "none" and rank == fault_rank and step == fault_step and first_attempt
        if hit and _env("WD_FAULT_UNLINK", ""):   # for tests: the relaunch's launcher is gone
            os.unlink(_env("WD_FAULT_UNLINK", ""))
        if hit and _env("WD_FAULT_MARK", ""):
            with open(_env("WD_FAULT_MARK", ""), "w") as f:   # for benchmarks: when it broke
                f.write(repr(time.time()))
        if hit and fault == "hang":
            print(f"[rank {rank}] hanging before the collective at step {step}", flush=True)
            time.sleep(3600)
        if hit and fault == "kill":
            print(f"[rank {rank}] killing myself (SIGKILL) at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if hit and fault == "stop":
            print(f"[rank {rank}] freezing (SIGSTOP) at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        if hit and fault == "oom":
            # what a CUDA OOM looks like, on a CPU box; and a secret that must not leak
            print(f"[rank {rank}] using token hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", flush=True)
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.30 GiB. GPU 0 has a total capacity "
                "of 79.14 GiB of which 1.02 GiB is free.")
        if hit and fault == "raise":
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        if hit and fault == "exit":
            sys.exit(3)
        if step == int(_env("WD_PAUSE_AT", "-1")):
            # a long pause every rank takes (evaluation, say), declared as a section
            pause = float(_env("WD_PAUSE_S", "5"))
            with watchdog_d.section("eval", timeout=float(_env("WD_PAUSE_TIMEOUT", "60"))):
                time.sleep(pause)
        if fault == "slow" and rank == fault_rank:
            time.sleep(step_time * 4)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()                      # the watchdog's step hook fires here
        if step == start and rank == 0 and _env("WD_STEP_MARK", ""):   # for benchmarks:
            attempt = _env("WATCHDOG_D_RESTART_COUNT", "0")          # this process's first step
            with open(f"{_env('WD_STEP_MARK', '')}.{attempt}", "w") as f:
                f.write(repr(time.time()))
        time.sleep(step_time)
        if ckpt_dir and rank == 0 and (step + 1) % ckpt_every == 0:
            path = os.path.join(ckpt_dir, f"step-{step + 1}.pt")
            with watchdog_d.section("checkpoint", timeout=120):
                torch.save({"model": model.module.state_dict(), "step": step + 1}, path + ".tmp")
                os.replace(path + ".tmp", path)
            watchdog_d.checkpoint_saved(path, step + 1)
        if rank == 0 and step % 10 == 0:
            print(f"[rank 0] step {step} loss {loss.item():.4f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"[rank 0] done after {steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
