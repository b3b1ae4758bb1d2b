"""Soak: a healthy job with checkpoint pauses longer than the stall floor, evaluations ten
times a step long that nobody declares, and irregular data-loader stalls, under every
default that matters (jobs/soak_loop.py: nothing of watchdog-d in the training code).
Zero verdicts, zero alerts; then a real freeze at the end, caught within its timeout + 2 s.

Both are marked slow (``make test-all``; ``pytest -m slow integration/test_soak.py``): the
2-minute one was the longest test of ``make test`` (CI's 30 minutes on 2 cores), and its
pauses are each covered there by shorter twins (test_single_node, test_hf_trainer); the
20-minute one has the default 60 s floor and 90 s checkpoints.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from harness import TORCHRUN, assert_no_leftovers, train_env

JOB = str(Path(__file__).parent / "jobs" / "soak_loop.py")

SHORT = dict(floor=5.0, env=dict(SOAK_S=60, STEP_S=0.1, CKPT_EVERY_S=18, CKPT_S=8, EVAL_EVERY=60,
                                 EVAL_FACTOR=10, STALL_P=0.02, STALL_MAX_S=2.5), limit=400)
LONG = dict(floor=None, env=dict(SOAK_S=1200, STEP_S=0.2, CKPT_EVERY_S=240, CKPT_S=90, EVAL_EVERY=300,
                                 EVAL_FACTOR=10, STALL_P=0.005, STALL_MAX_S=25), limit=3600)


def _soak(guarded, tmp_path: Path, alert_sink, case: dict) -> None:
    mark = tmp_path / "froze"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    args = ["--alert", alert_sink.url, "--grace", "2"]
    if case["floor"] is not None:
        args += ["--min-stall-timeout", str(case["floor"])]
    g = guarded(args, [*TORCHRUN, "--standalone", "--nproc-per-node=2", JOB],
                train_env(CKPT_DIR=ckpt, FREEZE=1, FREEZE_MARK=mark, **case["env"]))
    assert g.wait(timeout=case["limit"]) == 75, g.stderr()
    ev = g.events()
    # nothing before the freeze: every pause was a pause
    assert [(e["kind"], e["rank"]) for e in ev] == [("rank_stalled", 1)], ev
    assert "state T" in ev[0]["cause"]
    assert len(list(ckpt.glob("step-*.pt"))) >= 3, "the checkpoints the soak is about did happen"
    status = json.loads((g.state_dir / "status.d" / f"{g.job_id}.json").read_text())
    timeout = next(j for j in status["jobs"] if j["job"] == g.job_id)["stall_timeout_s"]
    caught = datetime.fromisoformat(ev[0]["ts"]).timestamp() - float(mark.read_text())
    assert caught <= timeout + 2.0, f"caught {caught:.1f}s after the freeze (timeout {timeout}s)"
    assert [a.get("title", "") for a in alert_sink.wait_for(1)] == [
        f"[watchdog-d] {g.job_id}: rank_stalled rank 1 on {ev[0]['node']}"]
    assert_no_leftovers(g.job_id)


@pytest.mark.slow
def test_soak_two_minutes(guarded, tmp_path, alert_sink):
    _soak(guarded, tmp_path, alert_sink, SHORT)


@pytest.mark.slow
def test_soak_twenty_minutes(guarded, tmp_path, alert_sink):
    _soak(guarded, tmp_path, alert_sink, LONG)
