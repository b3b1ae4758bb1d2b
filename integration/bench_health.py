"""The agent's own CPU while it watches a quiet job: 8 ranks stepping, logs quiet.

    python integration/bench_health.py [--ranks 8] [--step-s 0.5] [--seconds 20] [--runs 5]
                                       [--compare-tree DIR] [--doctor-runs 3]

Real processes, one null coordinator (``nullcoord.py``: acks, keeps nothing) for every
agent. Each agent is a real ``python -m watchdog_d agent``; each job a real
``watchdog-d run --agent-socket SOCK -- python bench_health.py --launch N STEP_S``, whose
launcher starts N rank processes (RANK, LOCAL_RANK set, as torchrun would) that boot the
rank runtime (beacon, log tee, exit recorder) and call ``watchdog_d.step()`` every STEP_S
seconds, printing nothing: the cheapest faithful stand-in for an 8-GPU job (no torch, no
collectives; the agent sees exactly what it sees of a real one).

Rows, all measured in the same windows, side by side:
- an idle python process (the floor: a sleeping process costs nothing),
- the agent with no job (its threads, heartbeats and Watch stream alone: the baseline),
- the agent watching N ranks (this tree; NVML off),
- with ``--compare-tree DIR``: the same from another source tree (e.g. the commit before),
- with NVML polling on: an agent with a fake pynvml of 8 GPUs first on its path
  (``tests/fakenvml``), when this tree samples NVML,
- ``watchdog-d doctor``: CPU seconds of one run (its process and its children: the torch
  probe), on the same 8 fake GPUs, when this tree has it.

The "NVML off" agents run with ``WATCHDOG_D_GPU_CHECKS=false``.

CPU is the process's user + system time (psutil ``cpu_times``) over each window, as a
percent of one core; the machine is shared and noisy, so the table quotes the median
window (and the max). The ratio column is against the no-job agent of the same windows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
FAKE_NVML = ROOT / "tests" / "fakenvml"


# -- the job's side: a launcher and its ranks (subprocesses of watchdog-d run) --------------

def rank_main(step_s: float) -> None:
    import watchdog_d          # the runtime booted already (sitecustomize: RANK is set)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        watchdog_d.step()
        time.sleep(step_s)


def launch_main(n: int, step_s: float) -> int:
    env = dict(os.environ)
    procs = []
    for r in range(n):
        env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n))
        procs.append(subprocess.Popen([sys.executable, str(HERE), "--rank", str(step_s)], env=env))

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    signal.signal(signal.SIGTERM, stop)
    return max(p.wait() for p in procs)


# -- the bench: processes, windows, the table ------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    """user + system seconds of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.procs: list[subprocess.Popen] = []

    def popen(self, argv: list[str], env: dict[str, str], name: str, cwd: Path = ROOT) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.log", "wb")
        # (cwd: ``python -m`` puts it first on sys.path, before PYTHONPATH)
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def env(self, tree: Path, extra_path: list[str] = (), **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_D_")}
        env["PYTHONPATH"] = os.pathsep.join([*extra_path, str(tree)])
        env.update(more)
        return env

    def agent(self, name: str, tree: Path, extra_path: list[str] = (), **env: str) -> tuple[subprocess.Popen, str]:
        sock = str(self.tmp / f"{name}.sock")
        p = self.popen([sys.executable, "-m", "watchdog_d", "agent", "--coordinator",
                        f"127.0.0.1:{self.port}", "--node-id", name, "--socket", sock,
                        "--state-dir", str(self.tmp / f"{name}-state")],
                       self.env(tree, extra_path, **env), name, tree)
        return p, sock

    def job(self, name: str, tree: Path, sock: str, ranks: int, step_s: float) -> subprocess.Popen:
        return self.popen([sys.executable, "-m", "watchdog_d", "run", "--agent-socket", sock,
                           "--job-id", name, "--state-dir", str(self.tmp / f"{name}-state"), "--",
                           sys.executable, str(HERE), "--launch", str(ranks), str(step_s)],
                          self.env(tree), name, tree)

    def close(self) -> None:
        for p in reversed(self.procs):       # wrappers first: they tear their ranks down
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def beacons_of(wrapper: subprocess.Popen, job: str) -> int:
    d = Path("/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    d = d / f"watchdog-d-{os.geteuid()}" / f"{job}-{wrapper.pid}" / "attempt-0"
    return len(list(d.glob("rank-*.beacon"))) if d.is_dir() else 0


def nvml_sampling(tree: Path) -> bool:
    """Does the agent of this tree sample NVML, and is the fake library there?"""
    return (FAKE_NVML / "pynvml.py").exists() and "gpu_checks" in (
        tree / "watchdog_d" / "config.py").read_text(errors="replace")


def fake_gpus(tmp: Path, n: int) -> dict[str, str]:
    """The environment of a process that sees n healthy fake GPUs (tests/fakenvml)."""
    path = tmp / "gpus.json"
    path.write_text(json.dumps({"driver": "550.54.15", "devices": [
        {"uuid": f"GPU-{g}", "pci": f"00000000:{0x1B + g:02X}:00.0", "name": "NVIDIA H100 80GB HBM3",
         "util": 90, "mem_util": 40, "mem_used": 60 << 30, "mem_total": 80 << 30, "temp": 60,
         "power_mw": 500000} for g in range(n)]}))
    return {"WD_FAKE_NVML": str(path)}


def has_doctor(tree: Path) -> bool:
    return (tree / "watchdog_d" / "doctor").is_dir()


def doctor_cost(tree: Path, bench: Bench, gpus: dict[str, str], runs: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit status) of one ``watchdog-d doctor`` and every
    process it starts, medians."""
    cpu, wall = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "watchdog_d", "doctor", "--coordinator",
                               f"127.0.0.1:{bench.port}", "--state-dir", str(bench.tmp / "doctor-state")],
                              env=bench.env(tree, [str(FAKE_NVML)], **gpus), cwd=tree,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        wall.append(time.monotonic() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(cpu), statistics.median(wall), done.returncode


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        rank_main(float(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--launch":
        return launch_main(int(sys.argv[2]), float(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--step-s", type=float, default=0.5, help="a rank's step time")
    ap.add_argument("--seconds", type=float, default=20, help="one measuring window")
    ap.add_argument("--runs", type=int, default=5, help="windows (the table quotes the median)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--compare-tree", type=Path, help="also an agent and job from this source tree")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs of the fake NVML")
    ap.add_argument("--doctor-runs", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_health."))
    port = free_port()
    bench = Bench(tmp, port)
    rows: dict[str, int] = {}          # label -> pid
    notes: dict[str, str] = {}
    try:
        coord = bench.popen(["nice", "-n", "5", sys.executable, str(HERE.parent / "nullcoord.py"),
                             str(port)], bench.env(ROOT), "nullcoord")
        wait_for(lambda: b"serving" in (tmp / "nullcoord.log").read_bytes(), 30, "the null coordinator")
        idle = bench.popen([sys.executable, "-c", "import time; time.sleep(1e6)"], bench.env(ROOT), "idle")
        rows["idle python process (floor)"] = idle.pid
        off = {"WATCHDOG_D_GPU_CHECKS": "false"}
        agent0, _ = bench.agent("noj", ROOT, **off)
        rows["agent, no job (baseline)"] = agent0.pid
        trees = [("this tree", ROOT)]
        if a.compare_tree:
            trees.append((str(a.compare_tree), a.compare_tree.resolve()))
        jobs = []
        for i, (label, tree) in enumerate(trees):
            agent, sock = bench.agent(f"a{i}", tree, **off)
            wait_for(lambda: os.path.exists(sock), 30, f"agent {label}")
            jobs.append((f"bench-health-{i}-{port}", bench.job(f"bench-health-{i}-{port}", tree, sock,
                                                                 a.ranks, a.step_s)))
            rows[f"agent, {a.ranks} ranks, NVML off ({label})"] = agent.pid
        nvml_label = f"agent, {a.ranks} ranks, NVML on ({a.gpus} fake GPUs)"
        gpus = fake_gpus(tmp, a.gpus)
        if nvml_sampling(ROOT):
            agent, sock = bench.agent("nv", ROOT, [str(FAKE_NVML)], **gpus)
            wait_for(lambda: os.path.exists(sock), 30, "agent with NVML")
            jobs.append((f"bench-health-nv-{port}", bench.job(f"bench-health-nv-{port}", ROOT, sock,
                                                                a.ranks, a.step_s)))
            rows[nvml_label] = agent.pid
        else:
            notes[nvml_label] = "n/a (NVML sampling not in this tree)"
        wait_for(lambda: all(beacons_of(w, j) == a.ranks for j, w in jobs), 60, "every rank's beacon")
        time.sleep(a.warmup)
        samples: dict[str, list[float]] = {k: [] for k in rows}
        for r in range(a.runs):
            before = {k: cpu_s(pid) for k, pid in rows.items()}
            t0 = time.monotonic()
            time.sleep(a.seconds)
            wall = time.monotonic() - t0
            for k, pid in rows.items():
                samples[k].append(100 * (cpu_s(pid) - before[k]) / wall)
            print(f"... window {r + 1}/{a.runs}: " + ", ".join(
                f"{samples[k][-1]:.2f}" for k in rows), file=sys.stderr, flush=True)
        for j, w in jobs:
            if w.poll() is not None:
                raise SystemExit(f"job {j} ended early: see {tmp}/{j}.log")
        doctor = "n/a (no `watchdog-d doctor` in this tree)"
        if a.doctor_runs <= 0:
            doctor = "not measured (--doctor-runs 0)"
        elif has_doctor(ROOT):
            c, wl, rc = doctor_cost(ROOT, bench, gpus, a.doctor_runs)
            doctor = (f"{c:.2f} CPU s per run, its children included ({wl:.2f} s wall; exit {rc}; "
                      f"{a.gpus} fake GPUs), median of {a.doctor_runs}")
    finally:
        bench.close()
    base = statistics.median(samples["agent, no job (baseline)"])
    print(f"\n{a.ranks} ranks stepping every {a.step_s:g} s, logs quiet; {a.runs} windows of "
          f"{a.seconds:g} s; CPU = user + system time, % of one core")
    print(f"{'process':<52} {'median %':>8} {'max %':>6} {'x no-job agent':>14}  windows")
    out = []
    for k, v in samples.items():
        m = statistics.median(v)
        print(f"{k:<52} {m:>8.2f} {max(v):>6.2f} {m / base if base else float('nan'):>14.2f}  "
              + " ".join(f"{x:.2f}" for x in v))
        out.append({"row": k, "median_pct": m, "max_pct": max(v), "windows": v})
    for k, note in notes.items():
        print(f"{k:<52} {note}")
    print(f"{'watchdog-d doctor, one run':<52} {doctor}")
    if a.json:
        a.json.write_text(json.dumps({"rows": out, "notes": notes, "doctor": doctor}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
