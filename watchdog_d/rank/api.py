"""Rank-side runtime: the beacon writer inside a training process.

Booted by ``watchdog_d/_boot/sitecustomize.py`` when the wrapper launched the
job (``WATCHDOG_D_BEACON_DIR`` and torchrun's ``RANK`` are set), or lazily by the
first explicit API call. Rules: never block, never raise into training code,
never import grpc, never import torch (the step hook is attached when the
training code imports torch itself).
"""
from __future__ import annotations

import atexit
import faulthandler
import importlib.abc
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .beacon import EXCEPTION, EXITED, BeaconWriter, slot_path

ENV_DIR = "WATCHDOG_D_BEACON_DIR"
ENV_OWNER = "WATCHDOG_D_BEACON_PID"
# the rank log's rotation, set by the wrapper from the config (rank_log_max_bytes/backups)
ENV_LOG_MAX_BYTES, ENV_LOG_BACKUPS = "WATCHDOG_D_RANK_LOG_MAX_BYTES", "WATCHDOG_D_RANK_LOG_BACKUPS"
# real-time signal that makes a rank dump its Python stacks (faulthandler, async-safe,
# works while the main thread sits in a C++ collective)
STACK_SIGNAL = signal.SIGRTMIN + 3 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2

_writer: BeaconWriter | None = None
_tried = False
_manual = False          # the user calls step() explicitly: the auto hook stops counting
_first_step = 0          # a relaunch counts on from the step its checkpoint was taken at
_sections: list[tuple[str, float, float]] = []
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


def _boot(env: os._Environ | dict) -> None:
    global _writer, _stack_file, _first_step
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
    faulthandler.register(STACK_SIGNAL, file=_stack_file, all_threads=True, chain=False)
    _writer = BeaconWriter(path, pid, int(rank), int(env.get("LOCAL_RANK", -1)), _mono())
    resume_step = env.get("WATCHDOG_D_RESUME_STEP", "")
    _first_step = max(0, int(resume_step)) if resume_step.lstrip("-").isdigit() else 0
    atexit.register(_on_exit)
    _wrap_excepthook(path.with_suffix(".exc"))
    _wrap_exits()
    if "torch.optim.optimizer" in sys.modules:
        _attach_step_hook(sys.modules["torch.optim.optimizer"])
    else:
        sys.meta_path.insert(0, _TorchOptimFinder())


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


# -- explicit API (re-exported by watchdog_d) ---------------------------------

def step(n: int | None = None) -> None:
    global _manual
    _manual = True
    w = _writer
    if w is None:
        w = writer()
        if w is None:
            return
    try:
        w.write_step(_next_step(w) if n is None else int(n), _mono())
    except Exception:
        pass


class section:
    """``with watchdog_d.section("checkpoint", timeout=900): ...``

    Inside, the section's own timeout replaces the learned stall timeout, and the
    time spent is not counted as a step duration.
    """

    __slots__ = ("name", "timeout")

    def __init__(self, name: str, timeout: float = 900.0):
        self.name, self.timeout = str(name), float(timeout)

    def __enter__(self) -> "section":
        w = writer()
        if w is not None:
            now = _mono()
            _sections.append((self.name, now + self.timeout, self.timeout))
            try:
                w.write_section(self.name, now + self.timeout, self.timeout)
            except Exception:
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        w = _writer
        if w is not None and _sections:
            try:
                _sections.pop()
                name, deadline, timeout = _sections[-1] if _sections else ("", 0.0, 0.0)
                w.write_section(name, deadline, timeout)
                w.rebase(_mono())
            except Exception:
                pass


def checkpoint_saved(path: str | os.PathLike, step: int) -> None:
    w = writer()
    if w is not None:
        try:
            w.write_checkpoint(os.fspath(path), int(step), _mono())
        except Exception:
            pass


# -- automatic step hook ------------------------------------------------------

def _next_step(w: BeaconWriter) -> int:
    return w.step + 1 if w.step >= 0 else _first_step


def _on_optimizer_step(optimizer: object, args: object, kwargs: object) -> None:
    if _manual:
        return
    w = _writer
    try:
        w.write_step(_next_step(w), _mono())  # type: ignore[arg-type]
    except Exception:
        pass


def _attach_step_hook(optim_module: object) -> None:
    try:
        optim_module.register_optimizer_step_post_hook(_on_optimizer_step)  # type: ignore[attr-defined]
    except Exception:
        pass


class _HookingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader):
        self._inner = inner

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        self._inner.exec_module(module)
        _attach_step_hook(module)


class _TorchOptimFinder(importlib.abc.MetaPathFinder):
    """Waits for ``torch.optim.optimizer`` to be imported, then hooks it."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "torch.optim.optimizer":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookingLoader(spec.loader)
                try:
                    sys.meta_path.remove(self)
                except ValueError:
                    pass
                return spec
        return None


# -- how the process ends -----------------------------------------------------

def _on_exit() -> None:
    w = _writer
    if w is None or os.environ.get(ENV_OWNER) != str(os.getpid()):
        return  # a forked child inherited the slot: not the rank ending
    try:
        from . import beacon

        view = beacon.read_slot(w.path)
        if view is not None and view.state == beacon.RUNNING:
            w.write_exit(EXITED, 0, _mono())
    except Exception:
        pass


def _uncaught() -> bool:
    """Is the excepthook running for an uncaught exception of the main thread?

    The interpreter calls it with no Python code below it: only hook frames (ours,
    and wrappers such as torch.distributed's rank-prefixing hook). Code that calls
    sys.excepthook itself, to log an error it handled, has a module frame below,
    and must not mark the rank as ending.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            return False
        frame = frame.f_back
    return True


def _wrap_excepthook(exc_path: Path) -> None:
    previous = sys.excepthook

    def hook(etype, value, tb):  # type: ignore[no-untyped-def]
        try:
            final = _uncaught()
            if final and _writer is not None and os.environ.get(ENV_OWNER) == str(os.getpid()):
                # the traceback file first: whoever sees the state must find it there
                lines = traceback.format_exception(etype, value, tb)
                exc_path.write_text("".join(lines)[-20000:])
                summary = "".join(traceback.format_exception_only(etype, value)).strip()
                _writer.write_exit(EXCEPTION, 1, _mono(), summary.splitlines()[-1] if summary else "")
        except Exception:
            pass
        previous(etype, value, tb)

    sys.excepthook = hook


def _record_exit_call(name: str, status: object) -> None:
    """A rank about to leave with a status: record it before SystemExit unwinds.

    A bare ``raise SystemExit(n)`` passes no hook (Python offers none); such an
    exit is seen through the zombie's status or the launcher's own exit status.
    """
    try:
        code = 0 if status is None else status if isinstance(status, int) else 1
        if code != 0 and _writer is not None and os.environ.get(ENV_OWNER) == str(os.getpid()):
            _writer.write_exit(EXITED, int(code), _mono(), f"{name}({status!r})"[:79])
    except Exception:
        pass


def _wrap_exits() -> None:
    import builtins

    original = sys.exit

    def exit(status: object = None) -> None:  # noqa: A001 - mirrors sys.exit
        _record_exit_call("sys.exit", status)
        original(status)

    sys.exit = exit
    for name in ("exit", "quit"):   # site's Quitter objects, used by scripts too
        quitter = getattr(builtins, name, None)
        if quitter is None:
            continue

        def call(status: object = None, _quitter=quitter, _name=name) -> None:
            _record_exit_call(_name, status)
            _quitter(status)

        setattr(builtins, name, call)
