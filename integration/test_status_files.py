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
    # first the jobs' own word that they train (a loaded machine may take long to start
    # two torchruns: that is no fault of status), a wrapper that ended failing at once ...
    deadline = time.monotonic() + 180
    while not all("[rank 0] step 10 " in g.stdout() for g in jobs):
        ended = [(g.job_id, g.proc.poll(), g.stderr()[-1500:]) for g in jobs if g.proc.poll() is not None]
        assert not ended, ended
        assert time.monotonic() < deadline, [(g.job_id, g.stderr()[-1500:]) for g in jobs]
        time.sleep(0.5)
    # ... then status must show both stepping within a few of its writes (every 1-2 s)
    deadline = time.monotonic() + 20
    stepping: dict[str, int] = {}
    while time.monotonic() < deadline:
        snap = _status(state)
        stepping = {j["job"]: max((r["step"] for n in j["nodes"] for r in n["ranks"]), default=-1)
                    for j in snap["jobs"]}
        if all(stepping.get(g.job_id, -1) > 0 for g in jobs):
            break
        time.sleep(0.5)
    assert all(stepping.get(g.job_id, -1) > 0 for g in jobs), (
        stepping, sorted(p.name for p in (state / "status.d").glob("*")) if (state / "status.d").exists()
        else "no status.d", [(g.job_id, g.proc.poll(), g.stderr()[-1500:]) for g in jobs])
    for g in jobs:
        assert (state / "status.d" / f"{g.job_id}.json").exists()
        g.proc.send_signal(signal.SIGTERM)
    for g in jobs:
        assert g.wait() == 128 + signal.SIGTERM, g.stderr()
