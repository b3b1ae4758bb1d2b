"""Preparing an attempt: job ids, environment, the checkpoint a relaunch resumes from."""
from __future__ import annotations

import os
import time
from pathlib import Path

from watchdog_d.config import Config
from watchdog_d.rank import beacon
from watchdog_d.wrapper import checkpoints, launch


def test_job_id_from_rdzv_id_or_batch_system() -> None:
    assert launch.job_id_for(["torchrun", "--rdzv-id", "exp 7", "t.py"], {}) == "exp-7"
    assert launch.job_id_for(["torchrun", "--rdzv_id=abc", "t.py"], {}) == "abc"
    assert launch.job_id_for(["torchrun", "t.py"], {"SLURM_JOB_ID": "1234"}) == "1234"
    # an srun step of an allocation is a job of its own; the batch script's is the job's
    assert launch.job_id_for(["torchrun", "t.py"], {"SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "2"}) == "1234.2"
    assert launch.job_id_for(["torchrun", "t.py"], {"SLURM_JOB_ID": "1234",
                                                    "SLURM_STEP_ID": "4294967294"}) == "1234"
    assert launch.job_id_for(["torchrun", "t.py"], {}).startswith("job-")


def test_resume_from_is_substituted() -> None:
    assert launch.substitute(["t.py", "--resume={resume_from}"], "/c/s.pt") == ["t.py", "--resume=/c/s.pt"]


RULE = checkpoints.Rule(settle_s=0.0)


def test_recorded_checkpoint_is_read_from_the_beacons(tmp_path: Path) -> None:
    beacons = tmp_path / "b"
    beacons.mkdir()
    assert launch.recorded_checkpoint(beacons) is None
    w = beacon.BeaconWriter(beacon.slot_path(beacons, 0), os.getpid(), 0, 0, time.monotonic())
    w.write_checkpoint("/c/step-20.pt", 20, time.monotonic())
    assert launch.recorded_checkpoint(beacons) == (20, "/c/step-20.pt")


def test_resume_prefers_the_newest_recorded_checkpoint_that_exists(tmp_path: Path) -> None:
    ckpts = tmp_path / "c"
    ckpts.mkdir()
    recorded = ckpts / "step-20.pt"
    recorded.write_bytes(b"x")
    (ckpts / "step-30.pt").write_bytes(b"newer on disk")
    r = launch.choose_resume([(-1, ""), (20, str(recorded)), (10, "/gone/step-10.pt")], str(ckpts), RULE)
    assert (r.path, r.step, r.note) == (str(recorded), 20, "")


def test_resume_from_dir_skips_partial_and_empty(tmp_path: Path) -> None:
    ckpts = tmp_path / "c"
    ckpts.mkdir()
    good = ckpts / "step-10.pt"
    good.write_bytes(b"x")
    (ckpts / "step-20.pt.tmp").write_bytes(b"partial")
    (ckpts / "step-30.pt").write_bytes(b"")              # empty: not complete
    (ckpts / "step-40").mkdir()                          # empty directory: not complete
    r = launch.choose_resume([], str(ckpts), RULE)
    assert (r.path, r.step) == (str(good), 10) and "step-30.pt: empty file" in r.note
    assert launch.choose_resume([], "", RULE) == launch.Resume()


def test_recorded_checkpoint_deleted_falls_back_to_dir_and_says_so(tmp_path: Path) -> None:
    ckpts = tmp_path / "c"
    ckpts.mkdir()
    (ckpts / "step-10.pt").write_bytes(b"x")
    r = launch.choose_resume([(50, str(ckpts / "gone.pt"))], str(ckpts), RULE)
    assert r.path == str(ckpts / "step-10.pt") and "gone.pt (step 50) is gone" in r.note


def test_missing_checkpoint_dir_relaunches_from_scratch_with_a_note(tmp_path: Path) -> None:
    r = launch.choose_resume([], str(tmp_path / "missing"), RULE)
    assert r.path == "" and "does not exist" in r.note and "from scratch" in r.note


def test_fresh_rendezvous_per_attempt() -> None:
    cmd = ["torchrun", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint", "h:29400",
           "train.py", "--rdzv-id", "mine"]
    # a dynamic rendezvous without an id gets one per attempt; the script's own args stay
    assert launch.fresh_rendezvous(cmd, "J", 1) == ["torchrun", "--rdzv-id=J-a1"] + cmd[1:]
    assert launch.fresh_rendezvous(cmd, "J", 0) == cmd
    cmd = ["python", "-m", "torch.distributed.run", "--rdzv_id", "abc", "--nnodes", "2",
           "-m", "pkg.train", "--lr", "1"]
    assert launch.fresh_rendezvous(cmd, "J", 2)[4] == "abc-a2"
    assert launch.fresh_rendezvous(["torchrun", "--rdzv-id=x", "t.py"], "J", 3)[1] == "--rdzv-id=x-a3"
    standalone = ["torchrun", "--standalone", "--nproc-per-node=2", "t.py"]
    assert launch.fresh_rendezvous(standalone, "J", 1) == standalone
    assert launch.fresh_rendezvous(["python", "t.py"], "J", 1) == ["python", "t.py"]


def test_resume_step_reaches_the_environment(tmp_path: Path) -> None:
    cfg = Config(job_id="j", state_dir=str(tmp_path), rank_log_backups=7)
    env = launch.job_env({}, cfg, attempt=1, beacons=tmp_path, token="t",
                         resume=launch.Resume("/c/step-10.pt", 10))
    assert (env["WATCHDOG_D_RESUME_FROM"], env["WATCHDOG_D_RESUME_STEP"]) == ("/c/step-10.pt", "10")
    assert (env["WATCHDOG_D_RESTART_COUNT"], env["WATCHDOG_D_JOB_ID"]) == ("1", "j")
    # a RANK in the launcher's environment is torchrun's to give, not the launcher's to boot with
    base = {"RANK": "0", "LOCAL_RANK": "0", "PATH": "/bin"}
    assert "RANK" not in launch.job_env(base, cfg, attempt=0, beacons=tmp_path, token="t",
                                        command=["torchrun", "--nproc-per-node=2", "t.py"])
    assert launch.job_env(base, cfg, attempt=0, beacons=tmp_path, token="t",
                          command=["python", "t.py"])["RANK"] == "0"     # one rank, run directly
    # the rank's log rotation comes from the one config object
    assert (env["WATCHDOG_D_RANK_LOG_MAX_BYTES"], env["WATCHDOG_D_RANK_LOG_BACKUPS"]) == (str(100 << 20), "7")


def test_torchrun_max_restarts_is_found() -> None:
    assert launch.torchrun_max_restarts(["torchrun", "--max-restarts=3", "t.py"]) == 3
    assert launch.torchrun_max_restarts(["python", "-m", "torch.distributed.run", "--max_restarts", "2",
                                         "t.py", "--max-restarts=9"]) == 2
    assert launch.torchrun_max_restarts(["torchrun", "t.py", "--max-restarts=9"]) == 0   # the script's
    assert launch.torchrun_max_restarts(["python", "t.py"]) == 0
