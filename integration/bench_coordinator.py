"""The coordinator at cluster scale, against the transport's floor.

    python integration/bench_coordinator.py [--nodes 128,256,512,1024,2048,4096] [--runs N]
        [--quick] [--transport stream|unary]

For each N: simulated agents (``simnodes.py``: the agent's own reporting code, 8 ranks
per node, a job per 8 nodes, a step every 0.5 s, a heartbeat every second, each node
its own connection; niced, since they stand for other machines) load first the null
server (``nullcoord.py``: parses and acks, keeps nothing) over both transports -- one
Stream per node (protocol 3), and a unary Report per heartbeat with a Watch stream (older
agents) -- then the real ``watchdog-d coordinator`` over ``--transport`` (the agent's:
stream). In the same run, on the real one, after a steady window:

  t+22  a rank of job0 is SIGKILLed         -> every node of job0 told to tear down
  t+24  node 17's agent falls silent 16 s   -> agent_lost (its job steps on), no teardown
  t+26  node 9 is lost, job1's ranks stall   -> node_lost, every node of job1 told
  t+44  every node silent 8 s (SIGSTOP)     -> coordinator_isolated, nothing torn down
  t+58  the coordinator paused 8 s          -> coordinator_isolated, nothing torn down

Prints per N: coordinator and null CPU (% of a core, steady window; the ratio is to the
null server on the same transport, the unary null's CPU and p99 beside it),
RSS (and per 1,000 nodes above the empty coordinator), Report p50/p99 at the agents,
errors, the two detection latencies, and the verdicts that should not be there.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402

STEADY = (4.0, 19.0)          # the measuring window, seconds after t0
KILL_AT, LOSE_AT = 22.0, 26.0
EXPECTED = {("job0", "rank_exited"), ("job1", "node_lost"), ("job2", "agent_lost")}


def steady(server: scale.Server, nodes: int, workdir: Path, faults: dict, end_s: float,
           actions=(), transport: str = "stream") -> dict:
    """``faults``: as in simnodes' plan, with times in seconds after t0."""
    procs = max(2, min(8, nodes // 256))   # (each process costs gRPC threads of its own)
    t0 = time.monotonic() + 3.0 + nodes / 1000
    plan = {kind: [{**f, **{k: t0 + f[k] for k in ("at", "until") if k in f}} for f in items]
            for kind, items in faults.items()}
    sims = scale.start_sims(server.port, nodes, procs, t0=t0, end=t0 + end_s,
                            measure=(t0 + STEADY[0], t0 + STEADY[1]), faults=plan,
                            workdir=workdir, transport=transport)
    rss0 = scale.rss_mib(server.proc.pid)
    try:
        time.sleep(max(0.0, t0 + STEADY[0] - time.monotonic()))
        c0 = scale.cpu_seconds(server.proc.pid)
        time.sleep(max(0.0, t0 + STEADY[1] - time.monotonic()))
        cpu = (scale.cpu_seconds(server.proc.pid) - c0) / (STEADY[1] - STEADY[0]) * 100
        rss = scale.rss_mib(server.proc.pid)
        for at, what in actions:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            what(sims)
        results = sims.wait()
    finally:
        sims.kill()
    lat = results["latency"]
    return {"t0": t0, "cpu": cpu, "rss": rss, "rss0": rss0, "p50": scale.percentile(lat, 50) * 1000,
            "p99": scale.percentile(lat, 99) * 1000, "reports": len(lat),
            "errors": len(results["errors"]), "commands": results["commands"],
            "full": results["full"], "delta": results["delta"]}


def pause(proc, seconds: float):  # type: ignore[no-untyped-def]
    import signal

    def act(_sims) -> None:  # type: ignore[no-untyped-def]
        proc.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        proc.send_signal(signal.SIGCONT)
    return act


def blackout(seconds: float):  # type: ignore[no-untyped-def]
    def act(sims) -> None:  # type: ignore[no-untyped-def]
        sims.pause()
        time.sleep(seconds)
        sims.resume()
    return act


def one(nodes: int, quick: bool, transport: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"wd-bench-{nodes}-"))
    try:
        nulls = {}
        for kind in ("stream", "unary"):
            null = scale.start_server("null", work)
            try:
                nulls[kind] = steady(null, nodes, work, {}, STEADY[1] + 1, transport=kind)
            finally:
                null.stop()
        base = nulls[transport]
        real = scale.start_server("coordinator", work)
        empty_rss = scale.rss_mib(real.proc.pid)
        faults = {"kill": [{"at": KILL_AT, "node": 3, "rank": 3 * 8 + 2}],
                  "lose": [{"at": LOSE_AT, "node": 9}],
                  "mute": [{"at": 24.0, "until": 40.0, "node": 17}]}
        end_s = 44.0 if quick else 75.0
        actions = [] if quick else [(44.0, blackout(8.0)), (58.0, pause(real.proc, 8.0))]
        try:
            got = steady(real, nodes, work, faults, end_s, actions, transport)
        finally:
            events = real.events()
            real.stop()
        t0 = got["t0"]
        job0 = scale.told(got["commands"], "job0")
        job1 = scale.told(got["commands"], "job1")
        lost_peers = {n: t for n, t in job1.items() if n != "n00009"}
        false = [e for e in events if (e["job"], e["kind"]) not in EXPECTED
                 and e["kind"] != "coordinator_isolated"]
        torn = {job for _n, job, verb, _t, _v in got["commands"]
                if verb in ("teardown", "restart") and job not in ("job0", "job1")}
        return {
            "nodes": nodes, "cpu": got["cpu"], "null_cpu": base["cpu"], "rss": got["rss"],
            "rss_per_1k": (got["rss"] - empty_rss) / nodes * 1000, "p50": got["p50"],
            "p99": got["p99"], "null_p50": base["p50"], "null_p99": base["p99"],
            "unary_cpu": nulls["unary"]["cpu"], "unary_p99": nulls["unary"]["p99"],
            "null_errors": base["errors"] + nulls["unary"]["errors"],
            "errors": got["errors"], "reports": got["reports"],
            "dead_rank_s": max(job0.values()) - (t0 + KILL_AT) if len(job0) == 8 else None,
            "lost_node_s": max(lost_peers.values()) - (t0 + LOSE_AT) if len(lost_peers) == 7 else None,
            "false": false, "false_teardowns": sorted(torn),
            "isolated": sum(e["kind"] == "coordinator_isolated" for e in events),
            "agent_lost": sum(e["kind"] == "agent_lost" for e in events),
            "delta_share": got["delta"] / max(1, got["delta"] + got["full"]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _median(runs: list[dict]) -> dict:
    """Each number the median of the runs; lists (false verdicts) joined."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, list):
            out[key] = [x for r in runs for x in r[key]]
        elif isinstance(value, (int, float)) and value is not None:
            vals = sorted(r[key] for r in runs if r[key] is not None)
            out[key] = vals[len(vals) // 2] if vals else None
        elif value is None:
            vals = sorted(r[key] for r in runs if r[key] is not None)
            out[key] = vals[len(vals) // 2] if vals else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="128,256,512,1024,2048")
    ap.add_argument("--quick", action="store_true", help="no blackout and no pause phases")
    ap.add_argument("--runs", type=int, default=1, help="runs per N; medians are printed")
    ap.add_argument("--transport", choices=("stream", "unary"), default="stream",
                    help="the real coordinator's agents: one Stream each (protocol 3) or unary Reports")
    args = ap.parse_args()
    rows = []
    print(f"real coordinator over: {args.transport}")
    print("| nodes | coord CPU % | null CPU % | ratio | unary null CPU % / p99 ms | RSS MiB (per 1k nodes) "
          "| Report p50 / p99 ms | null p50 / p99 ms | errors | dead rank -> teardown s "
          "| lost node -> teardown s | false verdicts | isolated warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.nodes.split(",")]:
        r = _median([one(n, args.quick, args.transport) for _ in range(args.runs)])
        rows.append(r)
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {n} | {r['cpu']:.0f} | {r['null_cpu']:.0f} | {r['cpu'] / max(r['null_cpu'], 1e-9):.2f} "
              f"| {r['unary_cpu']:.0f} / {r['unary_p99']:.0f} "
              f"| {r['rss']:.0f} ({r['rss_per_1k']:.0f}) | {r['p50']:.1f} / {r['p99']:.1f} "
              f"| {r['null_p50']:.1f} / {r['null_p99']:.1f} | {r['errors']} | {fmt(r['dead_rank_s'])} "
              f"| {fmt(r['lost_node_s'])} | {len(r['false']) + len(r['false_teardowns'])} "
              f"| {r['isolated']} |", flush=True)
        for e in r["false"]:
            print(f"    false verdict: {e['job']} {e['kind']} {e['node']} {e['cause'][:120]}")
        for job in r["false_teardowns"]:
            print(f"    false teardown: {job}")
    print(f"\nreports that left unchanged parts out: "
          f"{min(r['delta_share'] for r in rows) * 100:.0f}% or more; agent_lost warnings: "
          f"{[r['agent_lost'] for r in rows]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
