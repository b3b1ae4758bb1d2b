"""A real Hugging Face ``Trainer`` under ``watchdog-d run`` (jobs/hf_trainer.py: a tiny GPT-2
built from a config, DDP on gloo, no download, nothing of watchdog-d in the training code).

A checkpoint save longer than the stall floor is a pause, not a stall (the Trainer's save is
an automatic section); a kill restarts from the newest ``checkpoint-N`` and finishes; a
freeze right after slow saves is still caught within the floor + 2 s."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from harness import TORCHRUN, assert_no_leftovers, train_env

pytest.importorskip("transformers")

JOB = str(Path(__file__).parent / "jobs" / "hf_trainer.py")


def _cmd() -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node=2", JOB,
            "--resume_from_checkpoint", "{resume_from}"]


def test_a_save_longer_than_the_floor_is_no_stall(guarded, tmp_path, alert_sink):
    # each save takes 6 s, the floor is 3 s: before, collective_timeout mid-save
    out = tmp_path / "out"
    g = guarded(["--min-stall-timeout", "3", "--alert", alert_sink.url], _cmd(),
                train_env(HF_OUT=out, HF_STEPS=12, HF_SAVE_EVERY=4, HF_SAVE_SLEEP=6))
    assert g.wait(timeout=240) == 0, g.stderr()
    assert "done at global step 12" in g.stdout()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]
    assert alert_sink.received == []
    assert_no_leftovers(g.job_id)


def test_a_long_evaluation_is_no_stall(guarded, tmp_path, alert_sink):
    g = guarded(["--min-stall-timeout", "3", "--alert", alert_sink.url], _cmd(),
                train_env(HF_OUT=tmp_path / "out", HF_STEPS=10, HF_SAVE_EVERY=100, HF_EVAL_EVERY=5,
                          HF_EVAL_SLEEP=6))
    assert g.wait(timeout=240) == 0, g.stderr()
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]
    assert alert_sink.received == []


def test_a_kill_restarts_from_the_newest_checkpoint_and_finishes(guarded, tmp_path, alert_sink):
    out = tmp_path / "out"
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--checkpoint-dir", str(out),
                 "--min-stall-timeout", "5", "--grace", "3", "--alert", alert_sink.url], _cmd(),
                train_env(HF_OUT=out, HF_STEPS=16, HF_SAVE_EVERY=5, HF_FAULT="kill", HF_FAULT_RANK=1,
                          HF_FAULT_STEP=12))
    assert g.wait(timeout=300) == 0, g.stderr()
    assert f"relaunching as attempt 1 from {out / 'checkpoint-10'}" in g.stderr()
    assert "done at global step 16" in g.stdout()
    ev = g.events()
    assert [(e["kind"], e["rank"], e["action"]) for e in ev][:1] == [("rank_exited", 1, "restart 1/1")]
    assert ev[0]["step"] == 12          # completed optimizer steps: what the Trainer calls global step
    assert ev[-1]["kind"] == "job_succeeded"
    assert_no_leftovers(g.job_id)


def test_a_freeze_after_slow_saves_is_caught_within_the_floor(guarded, tmp_path):
    mark = tmp_path / "froze"
    floor = 4.0
    g = guarded(["--min-stall-timeout", str(floor), "--grace", "2"], _cmd(),
                train_env(HF_OUT=tmp_path / "out", HF_STEPS=40, HF_SAVE_EVERY=3, HF_SAVE_SLEEP=6,
                          HF_FAULT="stop", HF_FAULT_RANK=1, HF_FAULT_STEP=10, HF_FAULT_MARK=mark))
    assert g.wait(timeout=240) == 75, g.stderr()
    assert "rank_stalled rank 1" in g.last_stderr_line() and "state T" in g.last_stderr_line()
    ev = [e for e in g.events() if e["kind"] == "rank_stalled"]
    assert len(ev) == 1 and ev[0]["step"] == 10
    verdict_at = datetime.fromisoformat(ev[0]["ts"]).timestamp()
    froze_at = float(mark.read_text())
    assert verdict_at - froze_at <= floor + 2.0, f"caught {verdict_at - froze_at:.1f}s after the freeze"
    assert_no_leftovers(g.job_id)
