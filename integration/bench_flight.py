"""What the flight-recorder evidence costs and what it buys, FR on vs off in one run.

    python integration/bench_flight.py [--runs 5] [--floor 4]

1. Step time of a small gloo DDP job (2 ranks, 4 all_reduces a step, jobs/ddp_timed.py)
   under plain torchrun, the recorder at our default buffer (2000 entries) vs off
   (TORCH_FR_BUFFER_SIZE=0), runs interleaved; the spread of the "off" runs is the noise.
   Then what one collective costs more, on a one-rank group in a loop (the resolution the
   step time lacks).
2. One answer's CPU time in a rank: torch's dump of a full buffer (2000 entries), then our
   whole answer (dump, summary, two files written), against an empty call. Measured in this
   process on a one-rank gloo group.
3. Heartbeat bytes per rank: a healthy rank's RankState with and without the new numeric
   fields; a suspect rank's summary of 1 and of 8 process groups; the next heartbeat with
   the same summary (the delta leaves it out).
4. Detection: the hang shapes of jobs/async_job.py under ``watchdog-d run`` (2 ranks, floor
   --floor), the recorder on vs off: the verdict and its no-step age; and the no-fault twins
   (undeclared host work, a slow filesystem, 2.5x the floor) which must end well.
Medians; the machine is noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

from harness import TORCHRUN, Guarded, free_port, kill_job, train_env  # noqa: E402

JOBS = Path(__file__).parent / "jobs"
DEFAULT_BUFFER = "2000"


# -- 1. step time ------------------------------------------------------------------------------
def step_time(runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(runs):
        for mode, size in (("on", DEFAULT_BUFFER), ("off", "0")):
            env = train_env(TORCH_FR_BUFFER_SIZE=size, WD_STEPS=400, WD_WARMUP=40)
            p = subprocess.run([*TORCHRUN, "--standalone", "--nproc-per-node=2",
                                str(JOBS / "ddp_timed.py")], env=env, capture_output=True,
                               text=True, timeout=300)
            line = next(l for l in p.stdout.splitlines() if l.startswith("{"))
            out[mode].append(json.loads(line)["median_ms"])
    return out


def per_collective(runs: int) -> dict[str, list[float]]:
    """ns per all_reduce of 1 KB on a one-rank gloo group, recorder on vs off (each in its
    own process: the buffer variable is read when the group is made)."""
    code = """
import os, statistics, sys, time
os.environ["TORCH_FR_BUFFER_SIZE"] = sys.argv[1]
import torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=0, world_size=1)
t = torch.ones(256)
for _ in range(3000):
    dist.all_reduce(t)
got = []
for _ in range(7):
    t0 = time.perf_counter_ns()
    for _ in range(3000):
        dist.all_reduce(t)
    got.append((time.perf_counter_ns() - t0) / 3000)
print(statistics.median(got))
dist.destroy_process_group()
"""
    out: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(runs):
        for mode, size in (("on", DEFAULT_BUFFER), ("off", "0")):
            p = subprocess.run([sys.executable, "-c", code, size, str(free_port())], env=train_env(),
                               capture_output=True, text=True, timeout=300)
            out[mode].append(float(p.stdout.strip().splitlines()[-1]))
    return out


# -- 2. one answer's CPU -----------------------------------------------------------------------
def answer_cost(repeats: int = 9) -> dict[str, float]:
    """In a child process: the buffer variable must be set before torch starts."""
    code = f"""
import json, os, statistics, tempfile, time
os.environ["TORCH_FR_BUFFER_SIZE"] = "{DEFAULT_BUFFER}"
import torch, torch.distributed as dist
from torch._C import _distributed_c10d as c10d
from watchdog_d.rank import flight
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
t = torch.ones(1024)
for _ in range(2 * {DEFAULT_BUFFER}):
    dist.all_reduce(t)
slot = os.path.join(tempfile.mkdtemp(), "rank-0")
def cpu(fn):
    got = []
    for _ in range({repeats}):
        t0 = time.thread_time(); fn(); got.append(time.thread_time() - t0)
    return statistics.median(got) * 1e3
res = {{"empty": cpu(lambda: None),
        "dump": cpu(lambda: c10d._dump_fr_trace(True, False, False)),
        "answer": cpu(lambda: flight.answer(slot, dict(os.environ)))}}
res["dump_bytes"] = os.path.getsize(slot + ".fr.pkl")
res["summary_bytes"] = os.path.getsize(slot + ".fr")
print(json.dumps(res))
dist.destroy_process_group()
"""
    p = subprocess.run([sys.executable, "-c", code], env=train_env(), capture_output=True,
                       text=True, timeout=300)
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- 3. heartbeat bytes ------------------------------------------------------------------------
def heartbeat_bytes() -> dict[str, int]:
    from watchdog_d.core.model import GroupRecord, PendingCollective, RankReport
    from watchdog_d.proto import convert

    healthy = dict(rank=5, local_rank=5, pid=41234, alive=True, proc_state="R", step=1187,
                   last_step_age_s=0.4, last_step_dt_s=0.41, cpu_percent=99.0, log_offset=1 << 20)
    old = RankReport(**healthy)
    new = RankReport(**healthy, io_still_s=0.7, fr_age_s=1.3)

    def group(i: int) -> GroupRecord:
        return GroupRecord(str(i), f"tp_{i}" if i else "default_pg", 8, "0-56:8", 1187 + i,
                           -1, 1186 + i, PendingCollective(1187 + i, "nccl:all_reduce",
                                                           "[[1048576]]", 4 << 20, 61.2),
                           (PendingCollective(1188 + i, "nccl:all_gather", "[[2048]]", 8192, 61.0),))

    suspect = dict(healthy, io_still_s=12.0, stack_still_s=6.0, fr_age_s=0.8)
    one = RankReport(**suspect, collectives=(group(0),))
    eight = RankReport(**suspect, collectives=tuple(group(i) for i in range(8)))
    size = lambda r, same=False: convert.rank_to_pb(r, same).ByteSize()   # noqa: E731
    return {"healthy, before": size(old), "healthy, now": size(new),
            "suspect, 1 group": size(one), "suspect, 8 groups": size(eight),
            "suspect, 8 groups, unchanged (delta)": size(eight, True)}


# -- 4. detection ------------------------------------------------------------------------------
SHAPES = [  # (fault, extra env, what a user must see)
    ("stop_issuing", {}, "rank_stalled 1"),
    ("subgroup", {}, "rank_stalled 1"),
    ("ddp_backward", {}, "rank_stalled 1"),
    ("mismatch", {}, "collective_mismatch 1"),
    ("d_stuck", {}, "rank_stalled 1"),
    ("host_work", {"WD_WORK_S": "2.5x"}, "no verdict"),
    ("slow_fs", {"WD_WORK_S": "2.5x"}, "no verdict"),
]


def detect(tmp: Path, fault: str, extra: dict, floor: float, fr: bool) -> tuple[str, float | None]:
    env = train_env(WD_FAULT=fault, WD_AT=20, WD_STEPS=40,
                    **{k: (2.5 * floor if v == "2.5x" else v) for k, v in extra.items()})
    if not fr:
        env["TORCH_FR_BUFFER_SIZE"] = "0"
    job = f"bench-fr-{fault}-{'on' if fr else 'off'}-{os.getpid()}"
    g = Guarded(tmp, job, ["--min-stall-timeout", str(floor), "--grace", "3"],
                [*TORCHRUN, "--standalone", "--nproc-per-node=2", str(JOBS / "async_job.py")], env)
    deadline = time.monotonic() + floor * 3 + 60
    try:
        while g.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if g.proc.poll() is None:
            g.proc.kill()
        kill_job(job)
    events = g.events()
    torn = [e for e in events if e["action"] == "teardown"]
    if torn:
        e = torn[0]
        who = "" if e["rank"] is None else f" {e['rank']}"
        return f"{e['kind']}{who}", e["detected_after_s"]
    if g.proc.returncode == 0:
        return "no verdict", None
    pauses = [e for e in events if e["kind"] == "long_pause"]
    return ("long_pause, never torn down" if pauses else "nothing"), None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--floor", type=float, default=4.0)
    args = ap.parse_args()

    st = step_time(args.runs)
    on, off = statistics.median(st["on"]), statistics.median(st["off"])
    spread = (max(st["off"]) - min(st["off"])) / off * 100
    print(f"1. step time, gloo DDP, 2 ranks, 4 all_reduces a step, {args.runs} runs interleaved "
          f"(median of each run's median)")
    print(f"   recorder off (TORCH_FR_BUFFER_SIZE=0)    {off:7.3f} ms")
    print(f"   recorder on  ({DEFAULT_BUFFER} entries, our default) {on:7.3f} ms   "
          f"ratio {on / off:.3f}; the off runs spread {spread:.1f}% (the noise)")

    pc = per_collective(args.runs)
    on, off = statistics.median(pc["on"]), statistics.median(pc["off"])
    print(f"\n   per all_reduce (1 KB, one-rank gloo group, median of {args.runs} processes each)")
    print(f"   recorder off                             {off / 1e3:7.2f} us")
    print(f"   recorder on                              {on / 1e3:7.2f} us   "
          f"+{(on - off) / 1e3:.2f} us a collective")

    c = answer_cost()
    print(f"\n2. one answer, one rank, a full buffer of {DEFAULT_BUFFER} entries (CPU ms, median of 9)")
    print(f"   empty call                         {c['empty']:7.3f}")
    print(f"   torch's dump (no stack traces)     {c['dump']:7.3f}   ({c['dump_bytes'] / 1024:.0f} KB)")
    print(f"   our whole answer (dump, summary,   {c['answer']:7.3f}   (summary {c['summary_bytes']} B)")
    print("   two files written)")

    hb = heartbeat_bytes()
    print("\n3. heartbeat bytes per rank (RankState)")
    for k, v in hb.items():
        print(f"   {k:<40} {v:5d}")
    print(f"   added to a healthy rank's heartbeat: {hb['healthy, now'] - hb['healthy, before']} B")

    print(f"\n4. detection, 2 ranks, floor {args.floor:.0f}s: verdict (no-step age at the verdict)")
    print(f"   {'shape':<14} {'recorder on':<34} {'recorder off':<34} expected")
    ok = True
    with tempfile.TemporaryDirectory() as d:
        for fault, extra, want in SHAPES:
            cells = []
            for fr in (True, False):
                tmp = Path(d) / f"{fault}-{fr}"
                tmp.mkdir()
                what, after = detect(tmp, fault, extra, args.floor, fr)
                cells.append(what + ("" if after is None else f" ({after:.1f}s)"))
                if fr:
                    ok &= what == want and (after is None or after <= args.floor + 5)
                elif want == "no verdict":
                    ok &= what == want         # the twins end well either way
            print(f"   {fault:<14} {cells[0]:<34} {cells[1]:<34} {want}")
    print("\nall shapes as expected with the recorder on" if ok else "\nSOME SHAPE NOT AS EXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
