"""Operator logs: one line per event, ``key=value``, never a secret.

    2026-11-22T05:48:33.120Z INFO verdict job=j1 kind=rank_exited rank=1
"""
from __future__ import annotations

import sys
import threading
import time

_lock = threading.Lock()
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


# control characters escaped: a value (a rank's text, a node's name) cannot forge a line
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _fmt(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=') or not text.isprintable():
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').translate(_CONTROL) + '"'
    return text


def log(event: str, level: str = "INFO", **fields: object) -> None:
    if _quiet and level == "INFO":
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [stamp, level, event] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    line = " ".join(parts) + "\n"
    with _lock:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def warn(event: str, **fields: object) -> None:
    log(event, level="WARN", **fields)


def error(event: str, **fields: object) -> None:
    log(event, level="ERROR", **fields)
