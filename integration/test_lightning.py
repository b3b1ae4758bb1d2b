"""A real PyTorch Lightning job under ``watchdog-d run`` (jobs/lightning_job.py, DDP on gloo):
its checkpoints and its validation both take longer than the stall floor, and neither is a
stall: Lightning's Trainer.save_checkpoint and evaluation loop are automatic sections."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import TORCHRUN, assert_no_leftovers, train_env

pytest.importorskip("pytorch_lightning")

JOB = str(Path(__file__).parent / "jobs" / "lightning_job.py")


def test_slow_checkpoints_and_validation_are_no_stall(guarded, tmp_path, alert_sink):
    out = tmp_path / "out"
    g = guarded(["--min-stall-timeout", "3", "--alert", alert_sink.url],
                [*TORCHRUN, "--standalone", "--nproc-per-node=2", JOB],
                train_env(PL_OUT=out, PL_STEPS=12, PL_SAVE_SLEEP=5, PL_VAL_SLEEP=5))
    assert g.wait(timeout=240) == 0, g.stderr()
    assert "done at global step 12" in g.stdout()
    assert len(list(out.glob("*.ckpt"))) == 3
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]
    assert alert_sink.received == []
    assert_no_leftovers(g.job_id)
