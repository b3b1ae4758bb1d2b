"""Which checks run for a config and an environment, and how the report is written."""
from __future__ import annotations

import json
import os
import socket
from typing import Mapping

from . import gpu, nccl, reach, system
from .check import ERROR, OK, RANK, WARN, Check, Probe, exit_status, run_all

__all__ = ["probes", "run", "render", "exit_status", "errors", "warnings", "summary"]


def _agent_answers(path: str) -> bool:
    if not path or not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
        return True
    except OSError:
        return False


def probes(cfg: object, env: Mapping[str, str]) -> list[Probe]:
    """The checks of DESIGN §3's doctor for this config (``config.Config``) and environment."""
    c = cfg
    dirs = [("state dir", c.state_dir)]                      # type: ignore[attr-defined]
    if c.checkpoint_dir:                                     # type: ignore[attr-defined]
        dirs.append(("checkpoint dir", c.checkpoint_dir))    # type: ignore[attr-defined]
    if c.log_dir:                                            # type: ignore[attr-defined]
        dirs.append(("log dir", c.log_dir))                  # type: ignore[attr-defined]
    hung_mount = "a dead network mount? (mount, dmesg); the job would hang there too"
    out = [
        Probe("python", system.python, 2.0),
        Probe("shm", system.shm, 5.0, fix_timeout=hung_mount),
        Probe("limits", system.limits, 2.0),
        *[Probe(f"disk: {what}", lambda w=what, p=path: system.disk(w, p), 5.0,
                fix_timeout=hung_mount) for what, path in dirs],
        Probe("clock", system.clock, 2.0, on_timeout=WARN),
        Probe("nccl env", lambda: nccl.nccl_env(env), 2.0),
        Probe("gpu", lambda: gpu.gpu(env), gpu.TORCH_TIMEOUT_S + 15.0),
        Probe("coordinator", lambda: reach.coordinator(
            c.coordinator, c, c.socket, _agent_answers(c.socket)),  # type: ignore[attr-defined]
            reach.CONNECT_S + 3.0),
        Probe("master", lambda: reach.master(env), reach.CONNECT_S + 3.0, on_timeout=WARN),
    ]
    return out


def run(cfg: object, env: Mapping[str, str] | None = None) -> list[Check]:
    return run_all(probes(cfg, dict(os.environ) if env is None else env))


def errors(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == ERROR]


def warnings(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == WARN]


def summary(checks: list[Check], limit: int = 1000) -> str:
    """One line naming each check at its worst status (a preflight's note, an alert's cause)."""
    worst = max((RANK[c.status] for c in checks), default=0)
    text = "; ".join(f"{c.check}: {c.found}" for c in checks if RANK[c.status] == worst)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def render(checks: list[Check], as_json: bool, node: str = "") -> str:
    if as_json:
        return json.dumps([c.as_dict() for c in checks], indent=1)
    width = max((len(c.check) for c in checks), default=0)
    lines = [f"watchdog-d doctor{': node ' + node if node else ''}"]
    for c in checks:
        lines.append(f"  {c.status:<5}  {c.check:<{width}}  {c.found}")
        if c.fix and c.status != OK:
            lines.append(f"  {'':<5}  {'':<{width}}  fix: {c.fix}")
    n = {s: sum(c.status == s for c in checks) for s in (OK, WARN, ERROR)}
    lines.append(f"{n[OK]} ok, {n[WARN]} warning(s), {n[ERROR]} error(s)")
    return "\n".join(lines)
