"""A real PyTorch Lightning job (DDP on gloo under torchrun), nothing of watchdog-d in it:
its checkpoints take PL_SAVE_SLEEP seconds (a big model on a slow disk) and its validation
PL_VAL_SLEEP seconds, both longer than the stall floor the test sets.

    watchdog-d run -- torchrun --nproc-per-node 2 lightning_job.py
"""
from __future__ import annotations

import os
import sys
import time


def main() -> int:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    save_sleep = float(os.environ.get("PL_SAVE_SLEEP", "0"))
    val_sleep = float(os.environ.get("PL_VAL_SLEEP", "0"))

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch, i):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch, i):
            if i == 0:
                time.sleep(val_sleep)          # a long validation set
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y), sync_dist=True)

        def on_save_checkpoint(self, checkpoint) -> None:
            time.sleep(save_sleep)             # a big model on a slow disk

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    out = os.environ.get("PL_OUT", "pl-out")
    trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                         strategy="ddp", max_steps=int(os.environ.get("PL_STEPS", "12")),
                         val_check_interval=6, limit_val_batches=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
                         callbacks=[ModelCheckpoint(dirpath=out, every_n_train_steps=4, save_top_k=-1)])
    trainer.fit(Tiny(), loader, loader)
    if trainer.global_rank == 0:
        print(f"[rank 0] done at global step {trainer.global_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
