"""Per-step cost of the rank-side beacon, next to an empty loop.

    python integration/bench_beacon.py

Measures, in one process with a real beacon slot in /dev/shm:
- the empty loop (the floor),
- watchdog_d.step() (explicit API),
- the automatic optimizer-step post hook as torch calls it (the hook function
  itself, and a full SGD step on a 1-parameter model with and without the hook).
Medians of several repetitions; the machine is noisy.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

N = 200_000
REPEATS = 7


def per_call_ns(fn, n: int = N) -> float:
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter_ns()
        fn(n)
        samples.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(samples)


def main() -> int:
    tmp = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.environ.update({"WATCHDOG_D_BEACON_DIR": tmp, "RANK": "0", "LOCAL_RANK": "0"})
    os.environ.pop("WATCHDOG_D_BEACON_PID", None)
    import watchdog_d
    from watchdog_d.rank import api as rank_side

    assert rank_side.writer() is not None, "no beacon slot was created"

    def empty(n):
        for _ in range(n):
            pass

    def explicit(n):
        step = watchdog_d.step
        for _ in range(n):
            step()

    def hook(n):
        h = rank_side.on_optimizer_step
        rank_side._manual = False
        for _ in range(n):
            h(None, (), {})

    rows = [("empty loop", per_call_ns(empty))]
    rows.append(("watchdog_d.step()", per_call_ns(explicit)))
    rows.append(("optimizer post hook (function)", per_call_ns(hook)))

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        p = torch.nn.Parameter(torch.zeros(1))
        p.grad = torch.zeros(1)
        opt = torch.optim.SGD([p], lr=0.1)
        rank_side._manual = False

        def run(n):
            for _ in range(n):
                opt.step()

        # interleave with / without so drift of a noisy machine hits both alike
        plain, hooked = [], []
        for _ in range(REPEATS):
            plain.append(per_call_ns(run, 5_000))
            handle = register_optimizer_step_post_hook(rank_side.on_optimizer_step)
            hooked.append(per_call_ns(run, 5_000))
            handle.remove()
        without, with_hook = statistics.median(plain), statistics.median(hooked)
        rows.append(("SGD step, 1 param, no hook", without))
        rows.append(("SGD step, 1 param, with hook", with_hook))
    floor = rows[0][1]
    print(f"{'what':<34} {'ns/call (median)':>18} {'minus empty loop':>18}")
    for name, ns in rows:
        print(f"{name:<34} {ns:>18.1f} {ns - floor:>18.1f}")
    if torch is not None:
        print(f"\nhook cost inside a real optimizer step: {with_hook - without:.0f} ns "
              f"({(with_hook - without) / without * 100:.2f}% of the smallest possible SGD step)")
    print(f"explicit step(): {rows[1][1] - floor:.0f} ns over the empty loop "
          f"(target: well under 1000 ns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
