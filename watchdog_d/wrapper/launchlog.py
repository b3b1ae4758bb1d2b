"""The launcher's own output (torchrun's exit codes and signals, its tracebacks) captured
next to the ranks' logs as ``launcher.log``, the console unchanged: the launcher's stdout
and stderr go through a tee (rank/tee.py, the same program as the ranks'), which also
hands the real console to the ranks' own tees (see the comment above ``_listen`` there).
"""
from __future__ import annotations

import os
import secrets
import subprocess

from ..rank import tee

LAUNCHER_LOG = "launcher.log"


def start_launcher_tee(log_path: str | os.PathLike[str], max_bytes: int, backups: int,
                       ready_timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int, int, str]:
    """A tee for a launcher about to start: (tee, stdout fd, stderr fd, socket name). Give
    the launcher the two fds (then close them here) and the name in CONSOLE_SOCK_ENV.
    Raises OSError when the tee cannot start (the caller runs the launcher untouched)."""
    log_path = os.fspath(log_path)
    name = f"watchdog-d-console-{os.getuid()}-{os.getpid()}-{secrets.token_hex(8)}"
    opened: list[int] = []
    try:
        for _ in range(3):
            r, w = os.pipe2(os.O_CLOEXEC)
            opened += [r, w]
        r_out, w_out, r_err, w_err, r_ready, w_ready = opened
        con_out, con_err = tee._dup_high(1), tee._dup_high(2)
        opened += [con_out, con_err]
        proc = tee.spawn(log_path, max_bytes, backups, r_out, r_err, con_out, con_err, r_ready,
                         w_ready, opened, ready_timeout, extra=("--console-sock", name))
        opened.remove(w_out)
        opened.remove(w_err)
        return proc, w_out, w_err, name
    finally:
        for fd in opened:
            os.close(fd)
