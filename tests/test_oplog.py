"""Operator log lines (watchdog_d.log): key=value text, or one JSON object per line for
a log collector, escaping intact either way."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from watchdog_d import log


@pytest.fixture
def as_json():
    log.set_format("json")
    yield
    log.set_format("text")


def test_text_lines_escape_what_could_forge_a_line(capsys) -> None:
    log.warn("verdict", job="j1", cause='x\nFAKE 2026 INFO verdict job="j2"')
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "\\n" in line and 'job=j1' in line


def test_json_lines_have_the_fixed_keys_first_and_keep_the_values(capsys, as_json) -> None:
    log.warn("verdict", rank=3, job="j1", kind="rank_exited", cause='a\nb "q" \x1b[31m',
             after_s=1.5, ok=True, missing=None, inf=float("inf"), path=b"x")
    out = capsys.readouterr().err
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert list(doc)[:6] == ["time", "level", "event", "job", "node", "rank"]
    assert (doc["level"], doc["event"], doc["job"], doc["node"], doc["rank"]) == \
        ("WARN", "verdict", "j1", None, 3)
    assert doc["cause"] == 'a\nb "q" \x1b[31m' and doc["after_s"] == 1.5 and doc["ok"] is True
    assert doc["inf"] == "inf" and doc["path"] == "b'x'" and doc["missing"] is None
    assert doc["time"].endswith("Z")


def test_a_daemon_logs_json_from_the_flag_and_from_the_config(tmp_path) -> None:
    for how, env in ((["--log-format", "json"], {}), ([], {"WATCHDOG_D_LOG_FORMAT": "json"})):
        p = subprocess.Popen([sys.executable, "-m", "watchdog_d", "coordinator", *how, "--listen",
                              "127.0.0.1:0", "--state-dir", str(tmp_path)],
                             stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", **env})
        try:
            first = p.stderr.readline()        # type: ignore[union-attr]
        finally:
            p.send_signal(signal.SIGTERM)
            rest = p.communicate(timeout=30)[1]
        lines = [first, *rest.splitlines()]
        events = [json.loads(line)["event"] for line in lines if line.strip()]
        assert events[0] == "coordinator_started" and "coordinator_stopped" in events, lines
        assert all({"job", "node", "rank"} <= json.loads(line).keys() for line in lines if line.strip())


def test_a_bad_log_format_is_a_clear_error(tmp_path) -> None:
    p = subprocess.run([sys.executable, "-m", "watchdog_d", "config", "show"], capture_output=True,
                       text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                   "WATCHDOG_D_LOG_FORMAT": "yaml"})
    assert p.returncode == 2 and "log_format must be text or json" in p.stderr, p.stderr
