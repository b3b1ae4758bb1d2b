"""Preparing one attempt of a job: its id, its environment, its command line.

Pure functions (plus the beacon directory); the wrapper runs what they build.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import log
from . import checkpoints
from ..config import Config
from ..rank.api import ENV_DIR, ENV_LOG_BACKUPS, ENV_LOG_MAX_BYTES, ENV_OWNER, ENV_SECTION_TIMEOUTS
from .teardown import TOKEN_ENV

SLURM_SPECIAL_STEPS = 0xFFFFFFF0    # batch, extern, interactive steps: not steps of their own
BOOT_DIR = str(Path(__file__).resolve().parents[1] / "rank" / "_boot")

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
    system's job id, else a fresh one (fine for a single node). Under Slurm, a step
    (``srun`` in an allocation) is a job of its own, ``JOBID.STEPID`` as Slurm names it:
    two steps of one allocation are two jobs; every task of one step has the same."""
    for i, arg in enumerate(command):
        m = re.fullmatch(r"--rdzv[-_]id(?:=(.+))?", arg)
        if m:
            value = m.group(1) or (command[i + 1] if i + 1 < len(command) else "")
            if value:
                return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:64]
    step = env.get("SLURM_STEP_ID", "")
    if env.get("SLURM_JOB_ID") and step.isdigit() and int(step) < SLURM_SPECIAL_STEPS:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{env['SLURM_JOB_ID']}.{step}")[:64]
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


def recorded_checkpoint(beacons: Path) -> tuple[int, str] | None:
    """(step, path) of the newest checkpoint a rank of this node recorded with
    ``checkpoint_saved`` (read before the attempt's beacons are removed)."""
    from ..rank import beacon

    recorded = [(v.ckpt_step, v.ckpt_path) for v in beacon.scan(beacons).values()
                if v.ckpt_path and v.ckpt_step >= 0]
    return max(recorded) if recorded else None


@dataclass(frozen=True)
class Resume:
    path: str = ""          # "" : from scratch
    step: int = -1          # -1 : unknown
    note: str = ""          # what people should know (a missing checkpoint dir, ...)


def requeued(env: dict[str, str]) -> int:
    """How often Slurm requeued this job (``SLURM_RESTART_COUNT``: preemption, a node
    failure, ``scontrol requeue``). A requeued job is its run going on: its first launch
    resumes from the newest complete checkpoint of ``--checkpoint-dir``."""
    value = env.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0


def choose_resume(recorded: list[tuple[int, str]], checkpoint_dir: str,
                  rule: checkpoints.Rule) -> Resume:
    """What a relaunch resumes from: the newest recorded checkpoint (by the ranks,
    here or on any node, via the coordinator) that exists on this node; else the
    newest complete entry of ``checkpoint_dir``; else nothing."""
    notes = []
    for step, path in sorted(set(recorded), reverse=True):
        if path and os.path.exists(path):
            return Resume(path, step)
        if path:
            notes.append(f"recorded checkpoint {path} (step {step}) is gone")
    if checkpoint_dir:
        skipped: list[str] = []
        try:
            found = checkpoints.newest_complete(
                checkpoint_dir, rule, on_skip=lambda p, why: skipped.append(f"{os.path.basename(p)}: {why}"))
        except checkpoints.CheckpointDirError as e:
            return Resume(note="; ".join(notes + [f"{e}: relaunching from scratch"]))
        if found is not None:
            if skipped:
                notes.append("skipped " + ", ".join(skipped[:3]))
            return Resume(found.path, found.step, "; ".join(notes))
        notes.append(f"no complete checkpoint in {checkpoint_dir}"
                     + (f" (skipped {', '.join(skipped[:3])})" if skipped else ""))
    if notes:
        notes.append("relaunching from scratch")
    return Resume(note="; ".join(notes))


def requeue_resume(job_id: str, cfg: Config) -> Resume:
    """Requeued by Slurm: the run goes on from its newest checkpoint."""
    times = requeued(dict(os.environ))
    if not times or not cfg.checkpoint_dir:
        return Resume()
    resume = choose_resume([], cfg.checkpoint_dir, checkpoints.Rule.of(cfg))
    log.warn("requeued", job=job_id, times=times, resume_from=resume.path or "-")
    print(f"watchdog-d: job {job_id}: requeued by Slurm ({times}x); "
          f"{'resuming from ' + resume.path if resume.path else 'from scratch'}"
          + (f" ({resume.note})" if resume.note else ""), file=sys.stderr, flush=True)
    return resume


_TORCHRUN_MODULES = ("torch.distributed.run", "torch.distributed.launch")
_TORCHRUN_FLAGS = {"--standalone", "--no-python", "--no_python", "--run-path", "--run_path",
                   "-m", "--module", "--use-env", "--use_env"}     # options without a value


def torchrun_max_restarts(command: list[str]) -> int:
    """torchrun's own --max-restarts in ``command`` (0 when absent or not torchrun)."""
    at = _torchrun_at(command)
    if at is None:
        return 0
    args = command[at:_torchrun_args_end(command, at)]
    for i, a in enumerate(args):
        m = re.fullmatch(r"--max[-_]restarts(?:=(\d+))?", a)
        if m:
            value = m.group(1) or (args[i + 1] if i + 1 < len(args) else "0")
            return int(value) if value.isdigit() else 0
    return 0


def _torchrun_at(command: list[str]) -> int | None:
    """Index of torchrun's first own argument, None when ``command`` is not torchrun."""
    at = next((i + 1 for i, a in enumerate(command) if os.path.basename(a) == "torchrun"), None)
    if at is None:
        at = next((i + 2 for i, a in enumerate(command[:-1])
                   if a == "-m" and command[i + 1] in _TORCHRUN_MODULES), None)
    return at


def _torchrun_args_end(command: list[str], at: int) -> int:
    """Index of the training script (or of "--"): torchrun's own options end there."""
    i = at
    while i < len(command):
        a = command[i]
        if a == "--" or not a.startswith("-"):
            return i
        i += 1 if a in _TORCHRUN_FLAGS or "=" in a else 2
    return len(command)


def fresh_rendezvous(command: list[str], job_id: str, attempt: int) -> list[str]:
    """torchrun's command for attempt N > 0 with a rendezvous id of its own, so a
    relaunch cannot join what is left of the dead attempt: ``--rdzv-id X`` becomes
    ``X-aN``; a dynamic rendezvous without an id gets ``JOB-aN``. (--standalone
    makes a fresh one anyway; a static --master-port is reused once every node's
    ranks are down, which the generation barrier ensures.) Other commands: as is."""
    if attempt <= 0:
        return list(command)
    at = _torchrun_at(command)
    if at is None:
        return list(command)
    out, has_id, end = list(command), False, _torchrun_args_end(command, at)
    for i in range(at, end):
        m = re.fullmatch(r"(--rdzv[-_]id)(=(.*))?", out[i])
        if m and m.group(2):
            out[i], has_id = f"{m.group(1)}={m.group(3)}-a{attempt}", True
        elif m and i + 1 < end:
            out[i + 1], has_id = f"{out[i + 1]}-a{attempt}", True
    dynamic = any(re.fullmatch(r"--rdzv[-_]backend(=.*)?", a) for a in out[at:end])
    if not has_id and dynamic and "--standalone" not in out[at:end]:
        out.insert(at, f"--rdzv-id={job_id}-a{attempt}")
    return out


def substitute(command: list[str], resume_from: str) -> list[str]:
    return [arg.replace("{resume_from}", resume_from) for arg in command]


def rank_log_dir(cfg_log_dir: str, state_dir: str, job_id: str, attempt: int) -> Path:
    """Where the ranks of one attempt write their logs (rank-R.log, rotated)."""
    base = Path(cfg_log_dir) if cfg_log_dir else Path(state_dir) / "logs"
    return base / job_id / f"attempt-{attempt}"


def job_env(base: dict[str, str], cfg: Config, *, attempt: int, beacons: Path, token: str,
            resume: Resume = Resume(), command: list[str] | None = None) -> dict[str, str]:
    """The environment of attempt ``attempt`` of the job ``cfg.job_id``."""
    job_id, state_dir = cfg.job_id, cfg.state_dir
    env = dict(base)
    env.pop(ENV_OWNER, None)          # inherited from an outer guarded job: not ours
    if command is not None and _torchrun_at(command) is not None:
        # torchrun gives each worker its RANK; one left in the launcher's own environment
        # (a batch script's export) would make the launcher boot a beacon as that rank
        for name in ("RANK", "LOCAL_RANK"):
            env.pop(name, None)
    env.update({
        "WATCHDOG_D_JOB_ID": job_id,
        "WATCHDOG_D_RESTART_COUNT": str(attempt),
        "WATCHDOG_D_RESUME_FROM": resume.path,
        "WATCHDOG_D_RESUME_STEP": str(resume.step) if resume.path and resume.step >= 0 else "",
        ENV_DIR: str(beacons),
        TOKEN_ENV: token,
        "PYTHONPATH": os.pathsep.join(p for p in (BOOT_DIR, base.get("PYTHONPATH", "")) if p),
    })
    env["WATCHDOG_D_RANK_LOG_DIR"] = str(rank_log_dir(cfg.log_dir, state_dir, job_id, attempt))
    env[ENV_LOG_MAX_BYTES] = str(cfg.rank_log_max_bytes)
    env[ENV_LOG_BACKUPS] = str(cfg.rank_log_backups)
    for kind, name in ENV_SECTION_TIMEOUTS.items():
        env[name] = str(getattr(cfg, f"{kind}_timeout"))
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
