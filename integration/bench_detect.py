"""Fault-to-alert latency for each fault kind, next to the job's step time.

    python integration/bench_detect.py [--runs 3] [--min-stall-timeout 3]

Single node (embedded agent and coordinator) and two nodes (a coordinator and
two agents as separate processes). For each run: a real torchrun job (gloo, CPU)
is started under ``watchdog-d run``; the training script writes the wall time
just before it injects the fault; the alert's arrival at a local json://
endpoint and the wrappers' exits are timed against it. Medians and maxima.

For stalls the latency includes the stall timeout by design; the column
"over timeout" is what the watchdog adds on top of it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from watchdog_d.coordinator.status import read_local  # noqa: E402
from cluster import Cluster  # noqa: E402
from harness import (TORCHRUN, AlertSink, Guarded, free_port, kill_job,  # noqa: E402
                     torchrun_cmd, train_env)

KINDS = ["kill", "raise", "stop", "hang"]


def one_run(kind: str, nodes: int, stall: float, tmp: Path) -> dict:
    sink = AlertSink()
    arrivals: list[float] = []
    sink.received = _Stamped(arrivals)
    mark = tmp / f"fault-{kind}-{nodes}.t"
    env = train_env(WD_FAULT=kind, WD_FAULT_RANK=1, WD_FAULT_STEP=20, WD_FAULT_MARK=mark,
                    WD_PG_TIMEOUT=300)
    job = f"bench-{kind}-{nodes}-{free_port()}"
    run_args = ["--min-stall-timeout", str(stall), "--grace", "3"]
    cluster = None
    exits: dict[str, float] = {}
    try:
        if nodes == 1:
            wrappers = [Guarded(tmp, job, [*run_args, "--alert", sink.url], torchrun_cmd(), env)]
        else:
            cluster = Cluster(tmp, ["node-a", "node-b"], alert_url=sink.url)
            port = free_port()
            wrappers = []
            for i, node in enumerate(("node-a", "node-b")):
                cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={i}", "--nproc-per-node=1",
                       "--master-addr=127.0.0.1", f"--master-port={port}",
                       "-m", "watchdog_d.demo.train"]
                wrappers.append(Guarded(tmp, job, ["--agent-socket", cluster.sockets[node],
                                                   *run_args], cmd, env))
        deadline = time.monotonic() + 120
        while any(w.proc.poll() is None for w in wrappers) and time.monotonic() < deadline:
            for i, w in enumerate(wrappers):
                if w.proc.poll() is not None and i not in exits:
                    exits[i] = time.time()
            time.sleep(0.01)
        for i, w in enumerate(wrappers):
            exits.setdefault(i, time.time())
        sink.wait_for(1, timeout=10)
        state = cluster.state_dir if cluster else wrappers[0].state_dir
        try:
            job_status = next(j for j in read_local(str(state))["jobs"] if j["job"] == job)
        except StopIteration:
            job_status = {}
        fault_t = float(mark.read_text()) if mark.exists() else float("nan")
        return {
            "alert": (arrivals[0] - fault_t) if arrivals else float("nan"),
            "node_a_exit": exits[0] - fault_t,
            "rc": [w.proc.returncode for w in wrappers],
            "step": job_status.get("step_time_median_s", float("nan")),
        }
    finally:
        for w in locals().get("wrappers", []):
            if w.proc.poll() is None:
                w.proc.kill()
        kill_job(job)
        if cluster:
            cluster.stop()
        sink.close()


class _Stamped(list):
    def __init__(self, stamps: list[float]):
        super().__init__()
        self.stamps = stamps

    def append(self, item) -> None:  # type: ignore[override]
        self.stamps.append(time.time())
        super().append(item)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-stall-timeout", type=float, default=3.0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--nodes", default="1,2")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in [int(n) for n in args.nodes.split(",")]:
            for kind in args.kinds.split(","):
                results = []
                for r in range(args.runs):
                    print(f"... {nodes} node(s), fault {kind}, run {r + 1}/{args.runs}",
                          file=sys.stderr, flush=True)
                    results.append(one_run(kind, nodes, args.min_stall_timeout, Path(tmp)))
                rows.append((nodes, kind, results))
    stall = args.min_stall_timeout
    print(f"\nfault-to-alert latency, {args.runs} runs each, min_stall_timeout={stall:g}s, "
          f"grace=3s (seconds; medians, max in parentheses)")
    print(f"{'nodes':<6}{'fault':<7}{'step time':>10}{'fault->alert':>18}{'over timeout':>14}"
          f"{'fault->node A down':>22}  exit codes")
    for nodes, kind, results in rows:
        alerts = [x["alert"] for x in results]
        downs = [x["node_a_exit"] for x in results]
        steps = [x["step"] for x in results]
        stalls = kind in ("stop", "hang")
        over = statistics.median(alerts) - stall if stalls else float("nan")
        codes = sorted({tuple(x["rc"]) for x in results})
        print(f"{nodes:<6}{kind:<7}{statistics.median(steps):>10.3f}"
              f"{statistics.median(alerts):>9.2f} ({max(alerts):5.2f})"
              f"{over:>14.2f}{statistics.median(downs):>13.2f} ({max(downs):5.2f})  {codes}")
    print("\nratios: detection of an exit vs. one step: "
          + ", ".join(f"{k}@{n}n {statistics.median([x['alert'] for x in r]) / max(1e-9, statistics.median([x['step'] for x in r])):.0f}x"
                      for n, k, r in rows if k in ("kill", "raise")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
