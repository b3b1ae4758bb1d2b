"""Preparing an attempt: job ids, environment, the checkpoint a relaunch resumes from."""
from __future__ import annotations

import os
import time
from pathlib import Path

from watchdog_d import beacon, launch


def test_job_id_from_rdzv_id_or_batch_system() -> None:
    assert launch.job_id_for(["torchrun", "--rdzv-id", "exp 7", "t.py"], {}) == "exp-7"
    assert launch.job_id_for(["torchrun", "--rdzv_id=abc", "t.py"], {}) == "abc"
    assert launch.job_id_for(["torchrun", "t.py"], {"SLURM_JOB_ID": "1234"}) == "1234"
    assert launch.job_id_for(["torchrun", "t.py"], {}).startswith("job-")


def test_resume_from_is_substituted() -> None:
    assert launch.substitute(["t.py", "--resume={resume_from}"], "/c/s.pt") == ["t.py", "--resume=/c/s.pt"]


def test_latest_checkpoint_prefers_what_ranks_recorded(tmp_path: Path) -> None:
    beacons, ckpts = tmp_path / "b", tmp_path / "c"
    beacons.mkdir()
    ckpts.mkdir()
    recorded = ckpts / "step-20.pt"
    recorded.write_bytes(b"x")
    w = beacon.BeaconWriter(beacon.slot_path(beacons, 0), os.getpid(), 0, 0, time.monotonic())
    w.write_checkpoint(str(recorded), 20, time.monotonic())
    (ckpts / "step-30.pt").write_bytes(b"newer on disk")
    assert launch.latest_checkpoint(beacons, str(ckpts)) == str(recorded)


def test_latest_checkpoint_in_dir_skips_partial_and_empty(tmp_path: Path) -> None:
    ckpts = tmp_path / "c"
    ckpts.mkdir()
    good = ckpts / "step-10.pt"
    good.write_bytes(b"x")
    time.sleep(0.01)
    (ckpts / "step-20.pt.tmp").write_bytes(b"partial")
    (ckpts / "step-30.pt").write_bytes(b"")              # empty: not complete
    (ckpts / "step-40").mkdir()                          # empty directory: not complete
    assert launch.latest_checkpoint(tmp_path / "none", str(ckpts)) == str(good)
    assert launch.latest_checkpoint(tmp_path / "none", str(tmp_path / "missing")) == ""
    assert launch.latest_checkpoint(tmp_path / "none", "") == ""


def test_recorded_checkpoint_deleted_falls_back_to_dir(tmp_path: Path) -> None:
    beacons, ckpts = tmp_path / "b", tmp_path / "c"
    beacons.mkdir()
    ckpts.mkdir()
    w = beacon.BeaconWriter(beacon.slot_path(beacons, 0), os.getpid(), 0, 0, time.monotonic())
    w.write_checkpoint(str(ckpts / "gone.pt"), 50, time.monotonic())
    (ckpts / "step-10.pt").write_bytes(b"x")
    assert launch.latest_checkpoint(beacons, str(ckpts)) == str(ckpts / "step-10.pt")
