"""NCCL's host-side shape on gloo: every gradient all_reduce is ``async_op=True`` and the
host spins on ``work.is_completed()``, as a GPU host spins in a CUDA sync. A hung
collective leaves every rank alive, busy and outside any collective frame.

WD_FAULT (at step WD_AT, on rank WD_RANK, default 1):
  none          train WD_STEPS steps and end
  stop_issuing  the rank stops issuing collectives; its host spins with a stack that
                does not move (its peers spin on their pending all_reduce)
  host_work     the rank does WD_WORK_S s of undeclared host work first (hashing and
                writing a scratch file: stack and I/O moving), then goes on
  mismatch      the rank all_gathers where its peers all_reduce (same sequence id)
  subgroup      the rank stops issuing on the "tp" subgroup; the default group is idle
  ddp_backward  DDP: the rank sleeps forever inside backward (a gradient hook)
"""
from __future__ import annotations

import datetime
import hashlib
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist

FAULT = os.environ.get("WD_FAULT", "none")
AT = int(os.environ.get("WD_AT", "20"))
WHO = int(os.environ.get("WD_RANK", "1"))
STEPS = int(os.environ.get("WD_STEPS", "60"))
STEP_TIME = float(os.environ.get("WD_STEP_TIME", "0.05"))
WORK_S = float(os.environ.get("WD_WORK_S", "10"))


def spin(work) -> None:
    while not work.is_completed():
        pass


def spin_forever() -> None:
    """Burn a core inside one C call that released the GIL, as a host does in a CUDA sync
    (a Python ``while True: pass`` is dumped on either of its two lines, a stack that moves)."""
    while True:
        hashlib.pbkdf2_hmac("sha256", b"spin", b"salt", 2**31 - 1)


def scratch_work(seconds: float) -> None:
    """Undeclared host work: hash and write 1 MB chunks (stack and I/O moving)."""
    end = time.monotonic() + seconds
    with tempfile.TemporaryFile() as f:
        block = os.urandom(1 << 20)
        while time.monotonic() < end:
            digest = hashlib.sha256(block).digest()
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
            block = digest * (len(block) // len(digest))


def main() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank = dist.get_rank()
    torch.manual_seed(0)
    tp = dist.new_group(list(range(dist.get_world_size())), group_desc="tp") \
        if FAULT == "subgroup" else None
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    if FAULT == "ddp_backward":
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 32)
    for step in range(1, STEPS + 1):
        faulty = rank == WHO and step == AT
        if faulty and FAULT == "host_work":
            print(f"[rank {rank}] host work for {WORK_S}s at step {step}", flush=True)
            scratch_work(WORK_S)
        if FAULT == "ddp_backward":
            if faulty:
                print(f"[rank {rank}] sleeping inside backward at step {step}", flush=True)
                next(iter(model.parameters())).register_hook(lambda g: time.sleep(3600))
            model(x).sum().backward()
        else:
            model(x).sum().backward()
            if faulty and FAULT == "stop_issuing":
                print(f"[rank {rank}] stops issuing collectives at step {step}", flush=True)
                spin_forever()
            works = [dist.all_reduce(p.grad, async_op=True) for p in model.parameters()]
            if faulty and FAULT == "mismatch":
                # (gloo aborts on an all_reduce of another size; another op hangs, as on NCCL)
                print(f"[rank {rank}] all_gather where its peers all_reduce, step {step}", flush=True)
                out = [torch.zeros(1024) for _ in range(dist.get_world_size())]
                works.append(dist.all_gather(out, torch.ones(1024), async_op=True))
            elif FAULT == "mismatch":
                works.append(dist.all_reduce(torch.ones(1024), async_op=True))
            for w in works:
                spin(w)
            if tp is not None:
                if faulty:
                    print(f"[rank {rank}] stops issuing on tp at step {step}", flush=True)
                    spin_forever()
                spin(dist.all_reduce(torch.ones(4), group=tp, async_op=True))
        opt.step()
        opt.zero_grad()
        time.sleep(STEP_TIME)
    dist.barrier()
    dist.destroy_process_group()
    print(f"[rank {rank}] done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
