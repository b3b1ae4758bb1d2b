"""Fault-to-resumed-training time of ``--on-failure restart``, next to a clean start.

    python integration/bench_restart.py [--runs 3] [--fault kill|raise] [--timeout 120]

Single node (embedded agent and coordinator). Each run is a real 2-rank torchrun
job (gloo, CPU) under ``watchdog-d run -v --on-failure restart --max-restarts 1``;
rank 1 fails at step 12, a checkpoint is written every 5 steps, the relaunched
attempt resumes from step 10 and runs to the end. The time from the fault to the
resumed attempt's first completed step is split at the points the wrapper and the
coordinator log (wall clock, millisecond log stamps):

    detection     fault (WD_FAULT_MARK)   -> ``verdict`` log line
    teardown      verdict                 -> ``attempt_stopped attempt=0``
    relaunch      attempt_stopped         -> ``job_launched attempt=1``
    job start-up  job_launched attempt=1  -> rank 0's first step (WD_STEP_MARK.1):
                                             imports, rendezvous, checkpoint load

Next to it, a clean start of the same job without a fault (``job_launched
attempt=0`` -> WD_STEP_MARK.0). The watchdog's share is detection + teardown +
relaunch; what is left is the job's own start-up. Medians and maxima; no timed
assertions (the machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import WATCHDOG, Guarded, kill_job, torchrun_cmd, train_env  # noqa: E402

FAULT_STEP, STEPS, CKPT_EVERY, GRACE = 12, 20, 5, 3
SHARE_TARGET_S = 2.0

# an operator log line, wherever it starts (the ranks write to the same stream)
_LOG = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (INFO|WARN|ERROR) ([a-z_]+)( .*)?$")
_FIELD = re.compile(r" ([A-Za-z_]+)=(\"(?:[^\"\\]|\\.)*\"|\S*)")


def log_events(text: str) -> list[tuple[float, str, dict[str, str]]]:
    """(wall time, event, fields) of every operator log line in ``text``; the rest is ignored."""
    found = []
    for line in text.splitlines():
        m = _LOG.search(line)
        if not m:
            continue
        try:
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
                tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            continue
        fields = {k: (v[1:-1] if v.startswith('"') else v)
                  for k, v in _FIELD.findall(m.group(4) or "")}
        found.append((t, m.group(3), fields))
    return found


def first(events: list, event: str, job: str, **match: str) -> float | None:
    for t, name, fields in events:
        if name == event and fields.get("job") == job and \
                all(fields.get(k) == v for k, v in match.items()):
            return t
    return None


def first_verdict(events: list, job: str) -> float | None:
    """The fault's verdict (the job's end is logged as a verdict too: job_succeeded)."""
    for t, name, fields in events:
        if name == "verdict" and fields.get("job") == job and fields.get("kind") != "job_succeeded":
            return t
    return None


def incident_ts(g: Guarded) -> float | None:
    """Fallback for the verdict time: the first incident of the job in ``events --json``."""
    try:
        out = subprocess.run([*WATCHDOG, "events", "--json", "--job", g.job_id,
                              "--state-dir", str(g.state_dir)],
                             capture_output=True, text=True, timeout=30)
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        ts = next(r["ts"] for r in rows if r.get("kind") != "job_succeeded")
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError, LookupError, StopIteration):
        return None


def read_time(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def has_backoff_flag() -> bool:
    out = subprocess.run([*WATCHDOG, "run", "--help"], capture_output=True, text=True, timeout=60)
    return "--restart-backoff" in out.stdout


def run_args(ckpt: Path, backoff: bool) -> list[str]:
    return ["-v", "--on-failure", "restart", "--max-restarts", "1", "--checkpoint-dir", str(ckpt),
            "--grace", str(GRACE), *(["--restart-backoff", "0"] if backoff else [])]


def job_env(fault: str, tmp: Path, ckpt: Path) -> dict[str, str]:
    extra = {"WD_FAULT": fault, "WD_FAULT_RANK": 1, "WD_FAULT_STEP": FAULT_STEP,
             "WD_FAULT_MARK": tmp / "fault.t"} if fault != "none" else {}
    return train_env(WD_STEPS=STEPS, WD_CKPT_EVERY=CKPT_EVERY, WD_CKPT_DIR=ckpt,
                     WD_STEP_MARK=tmp / "step.t", WD_PG_TIMEOUT=60, **extra)


def shown(g: Guarded, env: dict[str, str]) -> str:
    wd = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if k.startswith("WD_"))
    return f"{wd} {shlex.join(g.argv)}"


def one_run(fault: str, root: Path, n: int, backoff: bool, timeout: float) -> dict:
    """One job under ``watchdog-d run``; ``fault == "none"`` is the clean start."""
    tmp = root / f"{'clean' if fault == 'none' else fault}-{n}"
    ckpt = tmp / "ckpt"
    ckpt.mkdir(parents=True)
    env = job_env(fault, tmp, ckpt)
    job = f"bench-restart-{fault}-{n}-{int(time.time())}"
    g = Guarded(tmp, job, run_args(ckpt, backoff), torchrun_cmd(), env)
    res: dict = {"cmd": shown(g, env)}
    try:
        try:
            res["rc"] = g.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            g.proc.terminate()   # as a user's Ctrl-C: the wrapper stops the job and cleans up
            try:
                g.proc.wait(timeout=GRACE + 10)
            except subprocess.TimeoutExpired:
                g.proc.kill()
            res["failed"] = f"did not end in {timeout:g}s"
            return res
        ev = log_events(g.stderr())
        launched0 = first(ev, "job_launched", job, attempt="0")
        step0 = read_time(tmp / "step.t.0")
        if fault == "none":
            if res["rc"] != 0:
                res["failed"] = f"exit code {res['rc']}"
            elif launched0 is None or step0 is None:
                res["failed"] = "no job_launched attempt=0 line or no step mark"
            else:
                res["clean"] = step0 - launched0
            return res
        fault_t = read_time(tmp / "fault.t")
        verdict = first_verdict(ev, job)
        if verdict is None:
            verdict, res["verdict_from"] = incident_ts(g), "events --json"
        stopped = first(ev, "attempt_stopped", job, attempt="0")
        launched1 = first(ev, "job_launched", job, attempt="1")
        step1 = read_time(tmp / "step.t.1")
        points = {"fault mark": fault_t, "verdict": verdict, "attempt_stopped attempt=0": stopped,
                  "job_launched attempt=1": launched1, "step mark .1": step1}
        missing = [k for k, v in points.items() if v is None]
        if res["rc"] != 0:
            res["failed"] = f"exit code {res['rc']}"
        elif "resumed from" not in g.stdout():
            res["failed"] = "the relaunched attempt did not print 'resumed from'"
        elif missing:
            res["failed"] = "missing: " + ", ".join(missing)
        else:
            res.update(detect=verdict - fault_t, teardown=stopped - verdict,
                       relaunch=launched1 - stopped, startup=step1 - launched1,
                       total=step1 - fault_t, share=launched1 - fault_t)
            if launched0 is not None and step0 is not None:
                res["first_start"] = step0 - launched0
        return res
    finally:
        if g.proc.poll() is None:
            g.proc.kill()
        kill_job(job)
        if "failed" in res:
            tail = [line for line in g.stderr().splitlines() if line.strip()][-8:]
            res["tail"] = tail


ROWS = [  # key, name, span
    ("detect", "detection", "fault -> verdict"),
    ("teardown", "teardown", "verdict -> attempt 0 down"),
    ("relaunch", "relaunch", "down -> attempt 1 launched"),
    ("startup", "job start-up", "launched -> first step"),
    ("total", "total", "fault -> first resumed step"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fault", choices=["kill", "raise"], default="kill")
    ap.add_argument("--timeout", type=float, default=120.0, help="per run, then it is killed")
    args = ap.parse_args()
    backoff = has_backoff_flag()
    restarts, cleans = [], []
    root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    try:
        for r in range(args.runs):   # interleaved, so that drift on the machine hits both
            print(f"... clean start, run {r + 1}/{args.runs}", file=sys.stderr, flush=True)
            cleans.append(one_run("none", root, r, backoff, args.timeout))
            print(f"... fault {args.fault} + restart, run {r + 1}/{args.runs}",
                  file=sys.stderr, flush=True)
            restarts.append(one_run(args.fault, root, r, backoff, args.timeout))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print("\ncommand lines (first run; temp paths removed afterwards):")
    print(f"  restart: {restarts[0]['cmd']}")
    print(f"  clean:   {cleans[0]['cmd']}")
    if not backoff:
        print("  (`watchdog-d run --help` has no --restart-backoff: run without it)")
    failed = [(kind, i, x) for kind, xs in (("restart", restarts), ("clean", cleans))
              for i, x in enumerate(xs) if "failed" in x]
    for kind, i, x in failed:
        print(f"\nFAILED {kind} run {i + 1}: {x['failed']}")
        for line in x.get("tail", []):
            print(f"    {line[:160]}")
    ok = [x for x in restarts if "failed" not in x]
    ok_clean = [x["clean"] for x in cleans if "failed" not in x]
    print(f"\nrestart after a fault ({args.fault} on rank 1 at step {FAULT_STEP}, checkpoint every "
          f"{CKPT_EVERY}, resume at step {FAULT_STEP // CKPT_EVERY * CKPT_EVERY}), 2 ranks, "
          f"grace={GRACE}s, restart-backoff {'0' if backoff else 'n/a'}")
    print(f"{len(ok)}/{len(restarts)} restart runs and {len(ok_clean)}/{len(cleans)} clean runs "
          f"usable (seconds; medians, max in parentheses; % of the median total)")
    if not ok:
        return 1
    total = statistics.median(x["total"] for x in ok)
    print(f"{'segment':<14}{'span':<30}{'median':>8}{'(max)':>9}{'% total':>9}")
    for key, name, span in ROWS:
        vals = [x[key] for x in ok]
        med = statistics.median(vals)
        print(f"{name:<14}{span:<30}{med:>8.3f} ({max(vals):6.3f}){100 * med / total:>8.0f}%")
    firsts = [x["first_start"] for x in ok if "first_start" in x]
    for name, vals in (("clean start", ok_clean), ("(attempt 0)", firsts)):
        if vals:
            print(f"{name:<14}{'launched -> first step':<30}{statistics.median(vals):>8.3f}"
                  f" ({max(vals):6.3f})")
    if firsts:
        print("(attempt 0: the first attempt of the restart runs, also a clean start)")
    fallback = sum(1 for x in ok if "verdict_from" in x)
    if fallback:
        print(f"  ({fallback} run(s) had no `verdict` log line: verdict time from `events --json`)")
    shares = [x["share"] for x in ok]
    share = statistics.median(shares)
    print(f"\nwatchdog share (detection + teardown + relaunch): {share:.3f} s median, "
          f"max {max(shares):.3f} s (target < {SHARE_TARGET_S:g} s on one machine: "
          f"{'met' if max(shares) < SHARE_TARGET_S else 'NOT met'}); "
          f"{100 * share / total:.0f}% of fault -> first resumed step")
    if ok_clean:
        startup = statistics.median(x["startup"] for x in ok)
        print(f"job start-up after the restart vs. a clean start: "
              f"{startup / statistics.median(ok_clean):.2f}x; "
              f"fault -> first resumed step vs. a clean start: "
              f"{total / statistics.median(ok_clean):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
