"""Stalls: freeze -> verdict against the learned timeout, false verdicts under long pauses,
and what the automatic sections cost a training step.

    python integration/bench_stall.py [--runs 3] [--floor 5] [--soak-s 40]

1. Per-step cost, in this process with a real beacon slot: an SGD step on a 1-parameter
   model with no hook, and with the rank runtime booted (the optimizer step hook plus every
   automatic section hook installed: torch.save/load, safetensors, DCP, Trainer). The hooks
   sit on functions that take seconds, not on the step: the difference is the step hook's.
2. N runs of jobs/soak_loop.py under ``watchdog-d run`` (2 ranks, gloo): checkpoints longer
   than the floor, undeclared evaluations 10x a step, data-loader stalls; then rank 1 freezes
   (SIGSTOP). Per run: false verdicts before the freeze (must be 0), the learned timeout,
   how long after the freeze the verdict came (the no-step clock starts at the last step,
   which may be an evaluation's length before the freeze), and the verdict's no-step age
   minus the timeout: what the watchdog adds.
Medians; the machine is noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import TORCHRUN, AlertSink, Guarded, kill_job, train_env  # noqa: E402

JOB = str(Path(__file__).parent / "jobs" / "soak_loop.py")
REPEATS = 7


def _per_step_ns(opt, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        opt.step()
    return (time.perf_counter_ns() - t0) / n


def step_cost() -> tuple[float, float, float, float]:
    """(empty loop ns, SGD step without the step hook ns, with it ns), medians; both with the
    runtime booted and every automatic-section hook installed, interleaved so the drift of
    a noisy machine hits both alike."""
    tmp = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    saved = {k: os.environ.get(k) for k in ("WATCHDOG_D_BEACON_DIR", "RANK", "LOCAL_RANK")}
    os.environ.update({"WATCHDOG_D_BEACON_DIR": tmp, "RANK": "0", "LOCAL_RANK": "0"})
    os.environ.pop("WATCHDOG_D_BEACON_PID", None)
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from watchdog_d.rank import api, hooks

    assert api.writer() is not None, "no beacon slot"
    assert getattr(torch.save, "__watchdog_d_guarded__", False), "torch.save is not guarded"
    for k, v in saved.items():      # the jobs this benchmark starts must not inherit them
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    os.environ.pop("WATCHDOG_D_BEACON_PID", None)
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    opt = torch.optim.SGD([p], lr=0.1)

    def empty(n: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pass
        return (time.perf_counter_ns() - t0) / n

    def hook_calls(n: int) -> float:
        h = api.on_optimizer_step
        t0 = time.perf_counter_ns()
        for _ in range(n):
            h(None, (), {})
        return (time.perf_counter_ns() - t0) / n

    floor = statistics.median(empty(200_000) for _ in range(REPEATS))
    hook_fn = statistics.median(hook_calls(200_000) for _ in range(REPEATS))
    plain, hooked = [], []
    for _ in range(REPEATS):
        hooked.append(_per_step_ns(opt, 5_000))
        hooks.step_hook.remove()
        plain.append(_per_step_ns(opt, 5_000))
        hooks.step_hook = register_optimizer_step_post_hook(api.on_optimizer_step)
    return floor, hook_fn, statistics.median(plain), statistics.median(hooked)


def one_run(tmp: Path, floor: float, soak_s: float) -> dict:
    sink = AlertSink()
    mark, ckpt = tmp / "froze", tmp / "ckpt"
    ckpt.mkdir()
    env = train_env(CKPT_DIR=ckpt, FREEZE=1, FREEZE_MARK=mark, SOAK_S=soak_s, STEP_S=0.1,
                    CKPT_EVERY_S=12, CKPT_S=floor + 3, EVAL_EVERY=40, EVAL_FACTOR=10,
                    STALL_P=0.02, STALL_MAX_S=floor / 2)
    job = f"bench-stall-{os.getpid()}-{tmp.name}"
    g = Guarded(tmp, job, ["--min-stall-timeout", str(floor), "--grace", "2", "--alert", sink.url],
                [*TORCHRUN, "--standalone", "--nproc-per-node=2", JOB], env)
    try:
        rc = g.proc.wait(timeout=soak_s * 4 + 120)
    finally:
        kill_job(job)
        sink.close()
    events = g.events()
    stalled = [e for e in events if e["kind"] == "rank_stalled" and e["rank"] == 1]
    status = json.loads((g.state_dir / "status.d" / f"{g.job_id}.json").read_text())
    timeout = next(j for j in status["jobs"] if j["job"] == job)["stall_timeout_s"]
    caught = None
    if stalled and mark.exists():
        caught = datetime.fromisoformat(stalled[0]["ts"]).timestamp() - float(mark.read_text())
    return {"rc": rc, "false": len(events) - len(stalled[:1]), "timeout": timeout, "caught": caught,
            "after": stalled[0]["detected_after_s"] if stalled else None,
            "checkpoints": len(list(ckpt.glob("step-*.pt")))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--floor", type=float, default=5.0)
    ap.add_argument("--soak-s", type=float, default=40.0)
    args = ap.parse_args()

    floor_ns, hook_fn, plain, booted = step_cost()
    print("per-step cost, runtime booted, every automatic-section hook installed (medians of 7)")
    print(f"  empty loop                                      {floor_ns:8.1f} ns")
    print(f"  the step hook, called in a loop                 {hook_fn:8.1f} ns  "
          f"({hook_fn - floor_ns:.0f} ns over the empty loop; target < 1000)")
    print(f"  SGD step, 1 param, section hooks, no step hook  {plain:8.1f} ns")
    print(f"  SGD step, 1 param, section hooks + step hook    {booted:8.1f} ns")
    print(f"  added to a real optimizer step                  {booted - plain:8.1f} ns  "
          f"(the hook + torch's hook dispatch)")

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.runs):
            tmp = Path(d) / f"run{i}"
            tmp.mkdir()
            rows.append(one_run(tmp, args.floor, args.soak_s))
            r = rows[-1]
            print(f"run {i}: exit {r['rc']}, {r['checkpoints']} checkpoints of {args.floor + 3:.0f}s, "
                  f"false verdicts {r['false']}, timeout {r['timeout']}s, "
                  f"caught {r['caught'] if r['caught'] is None else round(r['caught'], 2)}s after the freeze")
    caught = [r["caught"] for r in rows if r["caught"] is not None]
    over = [r["after"] - r["timeout"] for r in rows if r["after"] is not None]
    print(f"\nfreeze -> verdict, {args.runs} runs, floor {args.floor}s, checkpoints {args.floor + 3:.0f}s "
          f"(longer than the floor), evaluations 10x a step, data stalls up to {args.floor / 2:.1f}s")
    print(f"  {'false verdicts (all runs)':<34} {sum(r['false'] for r in rows)}")
    print(f"  {'freezes caught':<34} {len(caught)}/{len(rows)}")
    if caught:
        print(f"  {'learned timeout (median)':<34} {statistics.median(r['timeout'] for r in rows):.2f} s")
        print(f"  {'caught after (median / max)':<34} {statistics.median(caught):.2f} / {max(caught):.2f} s")
        print(f"  {'verdict past the timeout (median / max)':<34} {statistics.median(over):.2f} / "
              f"{max(over):.2f} s  (no-step age at the verdict minus the timeout)")
    return 0 if sum(r["false"] for r in rows) == 0 and len(caught) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
