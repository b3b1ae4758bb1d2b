"""The launcher's own output (torchrun's exit codes and signals, its tracebacks) captured
next to the ranks' logs as ``launcher.log``, the console unchanged: the launcher's stdout
and stderr go through a tee (rank/tee.py, the same program as the ranks'), which also
hands the real console to the ranks' own tees (see the comment above ``_listen`` there).
"""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .. import log
from ..rank import tee

if TYPE_CHECKING:
    from ..config import Config

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


def streams(env: dict[str, str], cfg: "Config", job_id: str) -> tuple[int | None, int | None]:
    """The launcher's stderr (stdout too unless a terminal) through a tee into
    LOG_DIR/JOB/attempt-N/launcher.log (the console unchanged); (None, None) when the tee
    cannot start: not captured. Sets the tee's console socket in ``env``."""
    try:
        _, out, err, sock = start_launcher_tee(Path(env["WATCHDOG_D_RANK_LOG_DIR"]) / LAUNCHER_LOG,
                                               cfg.rank_log_max_bytes, cfg.rank_log_backups)
    except OSError as e:
        log.warn("launcher_log_failed", job=job_id, error=str(e)[:200])
        return None, None
    env[tee.CONSOLE_SOCK_ENV] = sock
    if os.isatty(1):
        # a pipe as the ranks' inherited stdout would make Python (and C stdio)
        # block-buffer what a terminal showed line by line: stdout stays as it is
        # (torchrun reports on stderr, which is line-buffered either way)
        os.close(out)
        out = None
    return out, err
