"""The end of training, healthy and not: a small DDP loop on gloo, then WD_END:

  upload_after   rank 0 works WD_END_S seconds after destroy_process_group(), its peer
                 gone already (an upload of the final model, a metrics sync)
  upload_before  ... before destroy_process_group(), its peer inside it or gone
  destroy_hangs  rank 1 never returns from destroy_process_group() (an NCCL communicator
                 that does not close); it sleeps in torch's own call
  leave_early    rank 1 ends training at step WD_END_STEP and exits 0 (uneven data);
                 rank 0 waits for it in torch's store-based barrier, which, unlike a gloo
                 collective, does not fail when a peer leaves (an NCCL collective hangs)
"""
from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.utils.store import barrier
from torch.nn.parallel import DistributedDataParallel as DDP

END = os.environ.get("WD_END", "")
END_S = float(os.environ.get("WD_END_S", "10"))
STEPS = int(os.environ.get("WD_STEPS", "15"))


def main() -> int:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=datetime.timedelta(seconds=120))
    model = DDP(torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    for step in range(STEPS):
        if END == "leave_early" and step == int(os.environ.get("WD_END_STEP", "8")):
            if rank == 1:
                print("[rank 1] out of data: training over", flush=True)
                return 0
            barrier(store, dist.get_world_size(), f"finish-job-{step}", barrier_timeout=300)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(0.05)
    dist.barrier()
    if END == "upload_before" and rank == 0:
        print("[rank 0] uploading before destroy_process_group", flush=True)
        time.sleep(END_S)
    if END == "destroy_hangs" and rank == 1:
        import torch.distributed.distributed_c10d as c10d

        def _update_default_pg(pg: object) -> None:    # called from inside destroy_process_group
            print("[rank 1] hanging inside destroy_process_group", flush=True)
            time.sleep(3600)
        c10d._update_default_pg = _update_default_pg
    dist.destroy_process_group()
    if END == "upload_after" and rank == 0:
        print("[rank 0] uploading after destroy_process_group", flush=True)
        time.sleep(END_S)
    print(f"[rank {rank}] done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
