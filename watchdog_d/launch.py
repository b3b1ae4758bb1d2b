"""Preparing one attempt of a job: its id, its environment, its command line.

Pure functions (plus the beacon directory); the wrapper runs what they build.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from .rank import ENV_DIR, ENV_OWNER
from .teardown import TOKEN_ENV

BOOT_DIR = str(Path(__file__).resolve().parent / "_boot")

# set for the job only when the user has not: keep NCCL's error handling and
# the Flight Recorder useful for a post-mortem
# (Flight Recorder variables were renamed TORCH_FR_* in PyTorch 2.5-ish; the old
# names still work there but print a deprecation warning into every rank's log)
NCCL_DEFAULTS = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
FR_NEW = {"buffer": "TORCH_FR_BUFFER_SIZE", "dump": "TORCH_FR_DUMP_TEMP_FILE"}
FR_OLD = {"buffer": "TORCH_NCCL_TRACE_BUFFER_SIZE", "dump": "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"}


def _fr_names() -> dict[str, str]:
    """Flight Recorder variable names for the torch installed here (no import)."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("torch").split(".")[:2])
        return FR_NEW if (major, minor) >= (2, 5) else FR_OLD
    except Exception:
        return FR_NEW


def job_id_for(command: list[str], env: dict[str, str]) -> str:
    """A job id every node derives alike: torchrun's --rdzv-id, else the batch
    system's job id, else a fresh one (fine for a single node)."""
    for i, arg in enumerate(command):
        m = re.fullmatch(r"--rdzv[-_]id(?:=(.+))?", arg)
        if m:
            value = m.group(1) or (command[i + 1] if i + 1 < len(command) else "")
            if value:
                return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:64]
    for var in ("SLURM_JOB_ID", "TORCHX_APP_ID", "PBS_JOBID"):
        if env.get(var):
            return re.sub(r"[^A-Za-z0-9_.-]", "-", env[var])[:64]
    return time.strftime("job-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def beacon_dir(job_id: str, attempt: int) -> Path:
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else Path(tempfile.gettempdir())
    path = base / f"watchdog-d-{os.geteuid()}" / f"{job_id}-{os.getpid()}" / f"attempt-{attempt}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_beacons(path: Path) -> None:
    """All attempts' beacons of this wrapper (at its end)."""
    shutil.rmtree(path.parent, ignore_errors=True)


def remove_attempt_beacons(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


PARTIAL = (".tmp", ".partial", ".incomplete", ".lock")


def latest_checkpoint(beacons: Path, checkpoint_dir: str) -> str:
    """What a relaunch resumes from: the newest checkpoint a rank recorded with
    ``checkpoint_saved`` that still exists; else the newest complete-looking entry
    of ``--checkpoint-dir`` (not a partial write, not empty); else nothing."""
    from . import beacon

    recorded = [(v.ckpt_step, v.ckpt_path) for v in beacon.scan(beacons).values()
                if v.ckpt_path and v.ckpt_step >= 0 and os.path.exists(v.ckpt_path)]
    if recorded:
        return max(recorded)[1]
    if not checkpoint_dir:
        return ""
    try:
        entries = [e for e in os.scandir(checkpoint_dir) if not e.name.endswith(PARTIAL)
                   and not e.name.startswith(".")]
    except OSError:
        return ""
    complete = []
    for e in entries:
        try:
            st = e.stat()
            if e.is_dir() and any(os.scandir(e.path)) or e.is_file() and st.st_size > 0:
                complete.append((st.st_mtime, e.path))
        except OSError:
            continue
    return max(complete)[1] if complete else ""


def substitute(command: list[str], resume_from: str) -> list[str]:
    return [arg.replace("{resume_from}", resume_from) for arg in command]


def rank_log_dir(cfg_log_dir: str, state_dir: str, job_id: str, attempt: int) -> Path:
    """Where the ranks of one attempt write their logs (rank-R.log, rotated)."""
    base = Path(cfg_log_dir) if cfg_log_dir else Path(state_dir) / "logs"
    return base / job_id / f"attempt-{attempt}"


def job_env(base: dict[str, str], *, job_id: str, attempt: int, beacons: Path, token: str,
            resume_from: str, state_dir: str, log_dir: str) -> dict[str, str]:
    env = dict(base)
    env.pop(ENV_OWNER, None)          # inherited from an outer guarded job: not ours
    env.update({
        "WATCHDOG_D_JOB_ID": job_id,
        "WATCHDOG_D_RESTART_COUNT": str(attempt),
        "WATCHDOG_D_RESUME_FROM": resume_from,
        ENV_DIR: str(beacons),
        TOKEN_ENV: token,
        "PYTHONPATH": os.pathsep.join(p for p in (BOOT_DIR, base.get("PYTHONPATH", "")) if p),
    })
    env["WATCHDOG_D_RANK_LOG_DIR"] = str(rank_log_dir(log_dir, state_dir, job_id, attempt))
    for key, value in NCCL_DEFAULTS.items():
        env.setdefault(key, value)
    names = _fr_names()
    if not any(n in env for n in (FR_NEW["buffer"], FR_OLD["buffer"])):
        env[names["buffer"]] = "2000"
    if not any(n in env for n in (FR_NEW["dump"], FR_OLD["dump"])):
        env[names["dump"]] = str(
            Path(state_dir) / "flight-recorder" / job_id / f"attempt-{attempt}" / "nccl_trace_rank_")
    return env


def flight_recorder_prefix(env: dict[str, str]) -> str:
    return env.get(FR_NEW["dump"]) or env.get(FR_OLD["dump"]) or ""
