"""Rank-side runtime: the beacon writer inside a training process, and the user's API.

Booted by ``watchdog_d/rank/_boot/sitecustomize.py`` when the wrapper launched the
job (``WATCHDOG_D_BEACON_DIR`` and torchrun's ``RANK`` are set), or lazily by the
first explicit API call. Rules: never block, never raise into training code,
never import grpc, never import torch (``hooks`` attaches to a library when the
training code imports it, not before).

Steps are completed optimizer steps, as a trainer counts its global step: the first
optimizer step of a fresh run is step 1; a relaunch resumed from a checkpoint taken
after N steps counts on from N + 1.
"""
from __future__ import annotations

import atexit
import faulthandler
import os
import signal
import time

from .beacon import BeaconWriter, slot_path

ENV_DIR = "WATCHDOG_D_BEACON_DIR"
ENV_OWNER = "WATCHDOG_D_BEACON_PID"
# the rank log's rotation, set by the wrapper from the config (rank_log_max_bytes/backups)
ENV_LOG_MAX_BYTES, ENV_LOG_BACKUPS = "WATCHDOG_D_RANK_LOG_MAX_BYTES", "WATCHDOG_D_RANK_LOG_BACKUPS"
# the automatic sections' timeouts, set by the wrapper from the config
ENV_SECTION_TIMEOUTS = {"checkpoint": "WATCHDOG_D_CHECKPOINT_TIMEOUT",
                        "evaluation": "WATCHDOG_D_EVALUATION_TIMEOUT",
                        "shutdown": "WATCHDOG_D_SHUTDOWN_TIMEOUT"}
# real-time signal that makes a rank dump its Python stacks (faulthandler, async-safe,
# works while the main thread sits in a C++ collective)
STACK_SIGNAL = signal.SIGRTMIN + 3 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2

_writer: BeaconWriter | None = None
_tried = False
_manual = False          # the user calls step() explicitly: the auto hook stops counting
_resumed_at = 0          # completed steps of the checkpoint a relaunch resumed from
_sections: list[tuple[str, float, float]] = []
_timeouts: dict[str, float] = {}     # automatic section kind -> timeout (s)
_stack_file = None
_mono = time.monotonic


def writer() -> BeaconWriter | None:
    """The slot of this process, created on first use; None outside a guarded job."""
    global _tried
    if _writer is None and not _tried:
        _tried = True
        try:
            _boot(os.environ)
        except Exception:  # the watchdog must never break training
            pass
    return _writer


def boot() -> None:
    writer()


def is_owner() -> bool:
    """Is this the rank itself (not a child that fork()ed and inherited the slot)?"""
    return os.environ.get(ENV_OWNER) == str(os.getpid())


def _boot(env: os._Environ | dict) -> None:
    global _writer, _stack_file, _resumed_at
    beacon_dir, rank = env.get(ENV_DIR), env.get("RANK")
    if not beacon_dir or rank is None:
        return
    owner = env.get(ENV_OWNER)
    pid = os.getpid()
    if owner and owner != str(pid):
        return  # a helper process the rank spawned (data loader, compile worker)
    env[ENV_OWNER] = str(pid)
    log_dir = env.get("WATCHDOG_D_RANK_LOG_DIR")
    if log_dir:
        _start_log(os.path.join(log_dir, f"rank-{int(rank)}.log"), env)
    path = slot_path(beacon_dir, int(rank))
    _stack_file = open(path.with_suffix(".stack"), "w")
    try:   # what faulthandler restores when the interpreter winds down: a stack request
        signal.signal(STACK_SIGNAL, signal.SIG_IGN)   # then must not kill (its default)
    except ValueError:                                # (not the main thread: a lazy boot)
        pass
    faulthandler.register(STACK_SIGNAL, file=_stack_file, all_threads=True, chain=False)
    from . import flight

    flight.start(str(path.with_suffix("")), env)
    _writer = BeaconWriter(path, pid, int(rank), int(env.get("LOCAL_RANK", -1)), _mono())
    resume_step = env.get("WATCHDOG_D_RESUME_STEP", "")
    _resumed_at = max(0, int(resume_step)) if resume_step.lstrip("-").isdigit() else 0
    for kind, name in ENV_SECTION_TIMEOUTS.items():
        try:
            _timeouts[kind] = float(env[name])
        except (KeyError, ValueError):
            pass
    from . import exits, hooks

    atexit.register(exits.on_exit)
    exits.record_exits(path)
    hooks.install()


def _start_log(path: str, env: os._Environ | dict) -> None:
    """The rank's own log file: its stdout and stderr go through a small tee process
    (console unchanged), so the agent can read them even after a SIGKILL."""
    try:
        from .tee import start_tee

        max_bytes, backups = env.get(ENV_LOG_MAX_BYTES), env.get(ENV_LOG_BACKUPS)
        if max_bytes is None or backups is None:   # not set by a wrapper: the config's defaults
            from ..config import Config

            max_bytes, backups = Config.rank_log_max_bytes, Config.rank_log_backups
        start_tee(path, int(max_bytes), int(backups))
    except Exception:
        pass   # no log file is better than no training


def section_timeout(kind: str) -> float:
    """The timeout of an automatic section of ``kind`` (the wrapper passes the config's)."""
    found = _timeouts.get(kind)
    if found is None:
        from ..config import Config       # not launched by a wrapper of this version

        found = _timeouts[kind] = float(getattr(Config, f"{kind}_timeout"))
    return found


# -- explicit API (re-exported by watchdog_d) ---------------------------------

_drill_hang = False      # watchdog-d drill ... hang: the next step never comes


def drill(fault: str) -> None:
    """(the flight-recorder thread, asked by the agent for ``watchdog-d drill``) exit: the
    rank exits with status 1 now; hang: its main thread stops at its next step, alive,
    idle, outside any collective, while its peers wait in theirs."""
    global _drill_hang
    import sys

    print(f"watchdog-d drill: {fault} (asked through the node's agent)", file=sys.stderr, flush=True)
    if fault == "exit":
        os._exit(1)
    _drill_hang = True


def _hang() -> None:
    while True:
        time.sleep(3600)


def step(n: int | None = None) -> None:
    """Record a completed step: the next one, or ``n`` completed steps in all."""
    global _manual
    _manual = True
    if _drill_hang:
        _hang()
    w = _writer
    if w is None:
        w = writer()
        if w is None:
            return
    try:
        w.write_step(_next_step(w) if n is None else int(n), _mono())
    except Exception:
        pass


def open_section(name: str, timeout: float) -> None:
    w = writer()
    if w is not None:
        now = _mono()
        _sections.append((name, now + timeout, timeout))
        try:
            w.write_section(name, now + timeout, timeout)
        except Exception:
            pass


def close_section() -> None:
    """Close the innermost section (the end of training's stays open)."""
    w = _writer
    if w is not None and _sections:
        for i in range(len(_sections) - 1, -1, -1):
            if _sections[i][0] != SHUTDOWN:
                del _sections[i]
                _write_top(w)
                return


def _write_top(w: BeaconWriter) -> None:
    try:
        name, deadline, timeout = _sections[-1] if _sections else ("", 0.0, 0.0)
        w.write_section(name, deadline, timeout)
        w.rebase(_mono())
    except Exception:
        pass


# the end of training: from destroy_process_group() of the default group until the process
# exits, a section of its own (a script in phases that makes a new process group ends it)
SHUTDOWN = "shutdown: destroy_process_group"


def begin_shutdown() -> None:
    if _writer is not None and not shutting_down():
        open_section(SHUTDOWN, section_timeout("shutdown"))


def shutting_down() -> bool:
    """Is the rank inside (or past) destroy_process_group() of its default group?"""
    return any(s[0] == SHUTDOWN for s in _sections)


def end_shutdown() -> None:
    w = _writer
    if w is not None and shutting_down():
        _sections[:] = [s for s in _sections if s[0] != SHUTDOWN]
        _write_top(w)


class section:
    """``with watchdog_d.section("checkpoint", timeout=900): ...``

    Inside, the section's own timeout replaces the learned stall timeout (for the
    job's other ranks too: they wait for this one), and the time spent is not
    counted as a step duration.
    """

    __slots__ = ("name", "timeout")

    def __init__(self, name: str, timeout: float = 900.0):
        self.name, self.timeout = str(name), float(timeout)

    def __enter__(self) -> "section":
        open_section(self.name, self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        close_section()


def checkpoint_saved(path: str | os.PathLike, step: int) -> None:
    w = writer()
    if w is not None:
        try:
            w.write_checkpoint(os.fspath(path), int(step), _mono())
        except Exception:
            pass


# -- automatic step hook (attached to torch.optim by hooks) -----------------------

def _next_step(w: BeaconWriter) -> int:
    return w.step + 1 if w.step >= 0 else _resumed_at + 1


def on_optimizer_step(optimizer: object, args: object, kwargs: object) -> None:
    if _drill_hang:
        _hang()
    if _manual:
        return
    w = _writer
    try:   # _next_step, inlined: this runs on every optimizer step
        w.write_step(w.step + 1 if w.step >= 0 else _resumed_at + 1, _mono())  # type: ignore[union-attr]
    except Exception:
        pass
