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
  d_stuck       the rank's main thread blocks in the kernel (state D) for good, no I/O
  slow_fs       for WD_WORK_S s the rank reads as from a slow network filesystem: its main
                thread is in state D nearly all the time, and bytes keep arriving
  none + WD_STEPS large: a healthy job for a test to cut the link between two live ranks

State D on demand, without a filesystem of our own: posix_spawn (through ctypes, so the
GIL is released as in any blocking read) makes the caller wait in the kernel, killable
but uninterruptible, until the child execs; the child first opens a FIFO that has no
writer, so the caller stays in D until someone opens the FIFO for writing.
"""
from __future__ import annotations

import ctypes
import datetime
import hashlib
import os
import sys
import tempfile
import threading
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


def in_d_until_fifo_written(fifo: str) -> None:
    """The calling thread waits in state D until ``fifo`` is opened for writing."""
    libc = ctypes.CDLL(None, use_errno=True)
    actions = ctypes.create_string_buffer(256)      # posix_spawn_file_actions_t (80 bytes)
    libc.posix_spawn_file_actions_init(actions)
    libc.posix_spawn_file_actions_addopen(actions, 0, fifo.encode(), os.O_RDONLY, 0)
    pid = ctypes.c_int()
    argv = (ctypes.c_char_p * 2)(b"/bin/true", None)
    envp = (ctypes.c_char_p * 1)(None)
    if libc.posix_spawn(ctypes.byref(pid), b"/bin/true", actions, None, argv, envp) != 0:
        raise OSError(ctypes.get_errno(), "posix_spawn")
    libc.posix_spawn_file_actions_destroy(actions)
    os.waitpid(pid.value, 0)


def stuck_in_d() -> None:
    fifo = tempfile.mktemp(prefix="wd-d-")
    os.mkfifo(fifo)
    in_d_until_fifo_written(fifo)                    # nobody ever writes


def slow_fs_reads(seconds: float, wait_s: float = 0.2) -> None:
    """Read a scratch file 256 KB at a time, each read preceded by wait_s in state D (a
    slow network filesystem): D in nearly every sample, bytes moving all the while."""
    fifo = tempfile.mktemp(prefix="wd-fs-")
    os.mkfifo(fifo)
    end = time.monotonic() + seconds

    def server() -> None:                            # answers each "read" after wait_s
        while time.monotonic() < end + 1:
            time.sleep(wait_s)
            os.close(os.open(fifo, os.O_WRONLY))

    threading.Thread(target=server, daemon=True).start()
    with tempfile.TemporaryFile() as f:
        f.write(os.urandom(1 << 22))
        while time.monotonic() < end:
            in_d_until_fifo_written(fifo)
            f.seek((f.tell() + (1 << 18)) % (1 << 22))
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            f.read(1 << 18)
    os.unlink(fifo)


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
        if faulty and FAULT == "slow_fs":
            print(f"[rank {rank}] reads from a slow filesystem for {WORK_S}s at step {step}",
                  flush=True)
            slow_fs_reads(WORK_S)
        if faulty and FAULT == "d_stuck":
            print(f"[rank {rank}] stuck in the kernel (state D) at step {step}", flush=True)
            stuck_in_d()
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
        if rank == 0 and step % 10 == 0:
            print(f"[rank {rank}] step {step}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    print(f"[rank {rank}] done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
