"""A real Hugging Face ``Trainer`` job: a tiny GPT-2 built from a config (no download), DDP on
gloo, nothing of watchdog-d in it. What a user would run:

    watchdog-d run -- torchrun --nproc-per-node 2 hf_trainer.py --resume_from_checkpoint '{resume_from}'

Knobs for the tests (environment): HF_OUT (output dir, its checkpoint-N subdirectories),
HF_STEPS, HF_SAVE_EVERY, HF_EVAL_EVERY (0: none), HF_SAVE_SLEEP (seconds the model's
save takes: a big model on a slow disk), HF_EVAL_SLEEP (an evaluation's length),
HF_FAULT = kill | stop on rank HF_FAULT_RANK after global step HF_FAULT_STEP, first attempt
only; HF_FAULT_MARK: a file the faulty rank writes the wall time of the fault to.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def main() -> int:
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback,
                              TrainingArguments)

    parser = argparse.ArgumentParser()
    parser.add_argument("--resume_from_checkpoint", default="")
    args = parser.parse_args()

    save_sleep, eval_sleep = float(_env("HF_SAVE_SLEEP", "0")), float(_env("HF_EVAL_SLEEP", "0"))

    class Model(GPT2LMHeadModel):
        def save_pretrained(self, *a, **kw):          # a large model on a slow disk
            time.sleep(save_sleep)
            return super().save_pretrained(*a, **kw)

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n: int):
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 64, (n, 16), generator=g)

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    class Fault(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):   # after global step N
            rank = int(os.environ.get("RANK", "0"))
            first = os.environ.get("WATCHDOG_D_RESTART_COUNT", "0") == "0"
            if rank == 0 and state.global_step % 2 == 0:
                print(f"[rank 0] global step {state.global_step}", flush=True)
            if (_env("HF_FAULT", "") and first and rank == int(_env("HF_FAULT_RANK", "1"))
                    and state.global_step == int(_env("HF_FAULT_STEP", "5"))):
                if _env("HF_FAULT_MARK", ""):
                    with open(_env("HF_FAULT_MARK", ""), "w") as f:
                        f.write(repr(time.time()))
                print(f"[rank {rank}] {_env('HF_FAULT', '')} after global step {state.global_step}",
                      flush=True)
                os.kill(os.getpid(), signal.SIGKILL if _env("HF_FAULT", "") == "kill" else signal.SIGSTOP)

        def on_evaluate(self, targs, state, control, **kw):
            time.sleep(eval_sleep)                              # a long evaluation set

    torch.manual_seed(0)
    model = Model(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=64,
                              bos_token_id=0, eos_token_id=0))
    eval_every = int(_env("HF_EVAL_EVERY", "0"))
    targs = TrainingArguments(
        output_dir=_env("HF_OUT", "hf-out"), max_steps=int(_env("HF_STEPS", "20")),
        per_device_train_batch_size=2, per_device_eval_batch_size=2, learning_rate=1e-3,
        save_strategy="steps", save_steps=int(_env("HF_SAVE_EVERY", "5")),
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every or None,
        logging_strategy="no", report_to="none", use_cpu=True, ddp_backend="gloo",
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=Tokens(256),
                      eval_dataset=Tokens(8) if eval_every else None, callbacks=[Fault()])
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint or None)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[rank 0] done at global step {trainer.state.global_step}", flush=True)
    # what PyTorch asks of every script (the Trainer does not do it): without it, gloo's
    # threads can outlive the interpreter and abort it at exit now and then ("terminate
    # called without an active exception", SIGABRT: pytorch/pytorch#190489) -- a real
    # failure that watchdog-d rightly reported as rank_exited
    # (after a barrier: every rank leaves together, none waits in the teardown of the group
    # for a peer still busy with the last checkpoint)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
