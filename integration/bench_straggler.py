"""Stragglers: how small a lag is found, how soon, with no false straggler on the twins;
and what reading the collective timings costs the job.

    python integration/bench_straggler.py [--runs 3] [--steps 250] [--skip-overhead]

Each run is a real 3-rank torchrun job (DDP on gloo, CPU; integration/jobs/straggle.py)
under the embedded ``watchdog-d run``, 0.1 s of "compute" a step, the default window (100
steps) unless said. Rank 1 computes a share LATE of the step longer every step; the twins
are every rank slow now and then (20 % of its steps, up to 50 % longer) and one 3 s stop of
one rank (a GC pause). Reported: whether a ``straggler`` was named (and whom), when (from
the job's launch, in seconds and in steps), and the lag it measured; twins: how many
stragglers (must be 0). Then the cost: the median step of a 0.02 s job with the timings
read (the default), with ``straggler_checks = false``, and under plain torchrun (baseline).
Medians; no timed assertions.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import TORCHRUN, Guarded, kill_job, train_env  # noqa: E402

JOB = str(Path(__file__).parent / "jobs" / "straggle.py")
STEP = 0.1


def run_job(root: Path, name: str, steps: int, step: float, args: list[str], **env) -> dict:
    tmp = root / name
    tmp.mkdir(parents=True)
    job = f"bench-straggler-{name}-{int(time.time())}"
    began = time.time()
    g = Guarded(tmp, job, args, [*TORCHRUN, "--standalone", "--nproc-per-node=3", JOB],
                train_env(WD_STEPS=steps, WD_STEP_TIME=step, **env))
    try:
        rc = g.proc.wait(timeout=steps * step * 3 + 120)
    except subprocess.TimeoutExpired:
        g.proc.kill()
        kill_job(job)
        rc = None
    events = g.events() if rc is not None else []
    found = [e for e in events if e["kind"] == "straggler"]
    out = {"rc": rc, "stragglers": len(found), "cmd": " ".join(g.argv)}
    if found:
        e = found[0]
        t = dt.datetime.fromisoformat(e["ts"]).timestamp()
        lag = re.search(r"(\d+) ms behind", e["cause"])
        out.update(rank=e["rank"], after_s=t - began, at_step=e["step"],
                   lag_ms=int(lag.group(1)) if lag else None)
    medians = [float(m) for m in re.findall(r"median step ([\d.]+) ms", g.stdout())]
    out["step_ms"] = statistics.median(medians) if medians else None
    return out


def detection(root: Path, steps: int) -> None:
    print(f"\n## Stragglers: 3 ranks, {STEP}s steps, rank 1 late by LATE x step (window, threshold as said)\n")
    print("| case | window | threshold | straggler named | after launch | at step | lag measured |")
    print("|---|---|---|---|---|---|---|")
    cases = [("late 40 %", 100, 0.1, {"WD_LATE_FRACTION": 0.4}),
             ("late 20 %", 100, 0.1, {"WD_LATE_FRACTION": 0.2}),
             ("late 10 %", 100, 0.1, {"WD_LATE_FRACTION": 0.1}),
             ("late 5 %", 100, 0.1, {"WD_LATE_FRACTION": 0.05}),
             ("twin: uniform jitter", 100, 0.1, {"WD_JITTER": 0.2}),
             ("twin: one 3 s GC pause", 100, 0.1, {"WD_PAUSE_STEP": 60, "WD_PAUSE_S": 3.0}),
             ("late 5 %", 100, 0.03, {"WD_LATE_FRACTION": 0.05}),
             ("twin: uniform jitter", 100, 0.03, {"WD_JITTER": 0.2}),
             ("late 40 %", 30, 0.1, {"WD_LATE_FRACTION": 0.4})]
    for i, (name, window, lag, env) in enumerate(cases):
        r = run_job(root, f"d{i}", steps, STEP, ["--straggler-window", str(window), "--straggler-lag",
                                                   str(lag), "--min-stall-timeout", "30"], **env)
        named = f"rank {r['rank']}" if r["stragglers"] else "none"
        after = f"{r['after_s']:.1f} s" if "after_s" in r else "-"
        steps_ = str(r.get("at_step", "-"))
        print(f"| {name} | {window} | {lag} | {named} (rc {r['rc']}) | {after} | {steps_} | "
              f"{str(r.get('lag_ms', '-')) + ' ms' if r.get('lag_ms') is not None else '-'} |", flush=True)


def overhead(root: Path, runs: int) -> None:
    print(f"\n## Cost: median step of a 3-rank job, 0.02 s of compute a step, 400 steps ({runs} runs)\n")
    print("| setup | median step (ms), per run | median |")
    print("|---|---|---|")
    for name, how in (("plain torchrun (baseline)", None), ("watchdog-d run, timings read", "true"),
                      ("watchdog-d run, straggler_checks = false", "false")):
        got = []
        for n in range(runs):
            if how is None:
                out = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node=3", JOB],
                                     env=train_env(WD_STEPS=400, WD_STEP_TIME=0.02),
                                     capture_output=True, text=True, timeout=300)
                ms = [float(m) for m in re.findall(r"median step ([\d.]+) ms", out.stdout)]
                got.append(statistics.median(ms) if ms else float("nan"))
            else:
                r = run_job(root, f"o-{how}-{n}", 400, 0.02, ["--min-stall-timeout", "30"],
                            WATCHDOG_D_STRAGGLER_CHECKS=how)
                got.append(r["step_ms"] if r["step_ms"] is not None else float("nan"))
        print(f"| {name} | {', '.join(f'{x:.2f}' for x in got)} | {statistics.median(got):.2f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-detection", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-straggler-") as d:
        if not a.skip_detection:
            detection(Path(d), a.steps)
        if not a.skip_overhead:
            overhead(Path(d), a.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
