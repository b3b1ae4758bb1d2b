"""Operator logs: one line per event, ``key=value``, never a secret.

    2026-11-22T05:48:33.120Z INFO verdict job=j1 kind=rank_exited rank=1

or, for a log collector (``log_format = "json"``), one JSON object per line with the
keys time, level, event, job, node, rank always there (null when the event has none),
then the event's own:

    {"time": "2026-11-22T05:48:33.120Z", "level": "INFO", "event": "verdict", "job": "j1",
     "node": null, "rank": 1, "kind": "rank_exited"}
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time

FORMATS = ("text", "json")
FIXED = ("job", "node", "rank")      # always in a JSON line: what collectors label by

_lock = threading.Lock()
_quiet = False
_json = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def set_format(name: str) -> None:
    global _json
    _json = name == "json"


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
    if _json:
        line = _json_line(stamp, level, event, fields)
    else:
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


def _plain(value: object) -> object:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _json_line(stamp: str, level: str, event: str, fields: dict) -> str:
    doc = {"time": stamp, "level": level, "event": event}
    doc.update({k: _plain(fields.get(k)) for k in FIXED})
    doc.update({k: _plain(v) for k, v in fields.items() if k not in FIXED and k not in doc})
    # (ensure_ascii: control characters and line breaks in a value stay escaped)
    return json.dumps(doc, ensure_ascii=True) + "\n"
