"""Two jobs on one machine, each with its embedded coordinator, one state dir: `watchdog-d
status` shows both (each writes its own file; they used to overwrite one status.json)."""
from __future__ import annotations

import json
import signal
import subprocess
import time

from harness import WATCHDOG, torchrun_cmd, train_env


def _status(state_dir) -> dict:  # type: ignore[no-untyped-def]
    out = subprocess.run([*WATCHDOG, "status", "--json", "--state-dir", str(state_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_embedded_jobs_in_one_state_dir_both_show(guarded) -> None:
    jobs = [guarded([], torchrun_cmd(1), train_env(WD_STEPS=100000, WD_STEP_TIME=0.05),
                    job_id=f"status-{name}") for name in ("one", "two")]
    state = jobs[0].state_dir
    assert all(g.state_dir == state for g in jobs)
    deadline = time.monotonic() + 60
    stepping: dict[str, int] = {}
    while time.monotonic() < deadline:
        snap = _status(state)
        stepping = {j["job"]: max((r["step"] for n in j["nodes"] for r in n["ranks"]), default=-1)
                    for j in snap["jobs"]}
        if all(stepping.get(g.job_id, -1) > 0 for g in jobs):
            break
        time.sleep(0.5)
    # (a job missing here once in a fresh-clone run, not reproduced since: its wrapper's
    # stderr and the status files say why, next time)
    assert all(stepping.get(g.job_id, -1) > 0 for g in jobs), (
        stepping, sorted(p.name for p in (state / "status.d").glob("*")) if (state / "status.d").exists()
        else "no status.d", [(g.job_id, g.proc.poll(), g.stderr()[-1500:]) for g in jobs])
    for g in jobs:
        assert (state / "status.d" / f"{g.job_id}.json").exists()
        g.proc.send_signal(signal.SIGTERM)
    for g in jobs:
        assert g.wait() == 128 + signal.SIGTERM, g.stderr()
