"""`make demo`'s command, as a user runs it: the whole story, exit 0."""
from __future__ import annotations

import subprocess

from harness import WATCHDOG, train_env


def test_demo_detects_tears_down_restarts_and_alerts():
    p = subprocess.run([*WATCHDOG, "demo"], env=train_env(), capture_output=True, text=True,
                       timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "rank_exited rank 1" in out and "[action: restart 1/1]" in out
    assert "relaunching as attempt 1 from" in out and "checkpoints/step-20.pt" in out
    assert "action: restart 1/1" in out                      # the alert's body
    assert "job_succeeded" in out                            # the incident log
    assert "demo finished: detected, torn down, restarted from the checkpoint, alerted" in out
