"""Bad input: one clear line, exit status 2, and no job started."""
from __future__ import annotations

import subprocess
import time

from harness import WATCHDOG, free_port, train_env


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*WATCHDOG, *args], capture_output=True, text=True, timeout=timeout,
                          env=train_env())


def test_unknown_flag():
    out = _run(["run", "--no-such-flag", "--", "true"])
    assert out.returncode == 2
    assert "--no-such-flag" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_missing_command():
    out = _run(["run", "--"])
    assert out.returncode == 2 and "missing command" in out.stderr


def test_command_without_separator():
    out = _run(["run", "torchrun", "x.py"])
    assert out.returncode == 2 and "after '--'" in out.stderr


def test_unreachable_coordinator_fails_fast(tmp_path):
    marker = tmp_path / "started"
    t0 = time.monotonic()
    out = _run(["run", "--coordinator", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path),
                "--", "touch", str(marker)])
    assert out.returncode == 2 and "unreachable" in out.stderr
    assert time.monotonic() - t0 < 15
    assert not marker.exists(), "the job started although the coordinator is unreachable"


def test_bad_alert_url(tmp_path):
    marker = tmp_path / "started"
    out = _run(["run", "--alert", "nosuchscheme://x", "--state-dir", str(tmp_path), "--",
                "touch", str(marker)])
    assert out.returncode == 2 and "alert" in out.stderr.lower()
    assert not marker.exists()


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("on_failure = [oops")
    out = _run(["run", "--config", str(cfg), "--", "true"])
    assert out.returncode == 2 and str(cfg) in out.stderr


def test_bad_env_value():
    out = subprocess.run([*WATCHDOG, "run", "--", "true"], capture_output=True, text=True,
                         timeout=30, env={**train_env(), "WATCHDOG_D_GRACE": "soon"})
    assert out.returncode == 2 and "grace" in out.stderr
