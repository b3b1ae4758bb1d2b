"""How a rank ends, recorded in its beacon for the agent (which is not its parent and
cannot wait() for it).

- An uncaught exception: state EXCEPTION, with its last line, when it is raised (the
  traceback goes next to the slot), before the interpreter starts to wind down.
- ``sys.exit(n)``, ``exit(n)``, ``quit(n)``, ``os._exit(n)``: the code, when called.
- The real exit status, whatever caused it (a bare ``raise SystemExit(3)`` included), at
  the process's very end: by the C module ``_exitstatus`` (glibc ``on_exit``). Without it
  (no compiler, another libc) the atexit handler records a clean exit, the old limitation:
  a bare ``raise SystemExit(n)`` then counts as clean if the agent misses the zombie.

Only the rank itself records: children that fork()ed inherit the slot and must not.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from . import api
from .beacon import EXCEPTION, EXITED, OFF_DETAIL, OFF_EXIT, RUNNING, read_slot

_armed = False            # the C module will write the real status at exit()


def record_exits(slot: Path) -> None:
    """Install every recorder for the rank whose slot is ``slot``."""
    global _armed
    try:
        from . import _exitstatus

        _armed = bool(_exitstatus.arm(str(slot), OFF_EXIT, OFF_DETAIL, os.getpid()))
    except Exception:   # not built, another interpreter, not glibc
        _armed = False
    _wrap_excepthook(slot.with_suffix(".exc"))
    _wrap_exit_calls()


def on_exit() -> None:
    """atexit: without the C module, a rank still RUNNING ends cleanly (see above)."""
    w = api._writer
    if w is None or _armed or not api.is_owner():
        return
    try:
        view = read_slot(w.path)
        if view is not None and view.state == RUNNING:
            w.write_exit(EXITED, 0, api._mono())
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
            w = api._writer
            if _uncaught() and w is not None and api.is_owner():
                # the traceback file first: whoever sees the state must find it there
                lines = traceback.format_exception(etype, value, tb)
                exc_path.write_text("".join(lines)[-20000:])
                summary = "".join(traceback.format_exception_only(etype, value)).strip()
                w.write_exit(EXCEPTION, 1, api._mono(), summary.splitlines()[-1] if summary else "")
        except Exception:
            pass
        previous(etype, value, tb)

    sys.excepthook = hook


def _record_exit_call(name: str, status: object) -> None:
    """A rank about to leave with a status: record it before SystemExit unwinds (the
    C module's record at the real exit corrects it if the SystemExit is caught)."""
    try:
        code = 0 if status is None else status if isinstance(status, int) else 1
        w = api._writer
        if code != 0 and w is not None and api.is_owner():
            w.write_exit(EXITED, int(code), api._mono(), f"{name}({status!r})"[:79])
    except Exception:
        pass


def _wrap_exit_calls() -> None:
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

    hard_exit = os._exit

    def _exit(status: int) -> None:
        # no handler runs after os._exit: record even a 0, or it reads as a vanished rank
        try:
            w = api._writer
            if w is not None and api.is_owner():
                w.write_exit(EXITED, int(status) & 0xFF, api._mono(), f"os._exit({status!r})"[:79])
        except Exception:
            pass
        hard_exit(status)

    os._exit = _exit
