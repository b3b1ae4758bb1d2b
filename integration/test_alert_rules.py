"""deploy/prometheus/watchdog-d.rules.yml with Prometheus' own promtool: the rules check
clean, and their unit tests (every alert firing, and its quiet twin) pass. promtool comes
from Debian's ``prometheus`` package, installed here when missing (as root)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).parents[1] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    if not shutil.which("promtool") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        got = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                              "prometheus"], capture_output=True, text=True, timeout=600, env=env)
        if got.returncode != 0:          # (a fresh machine: the package lists first)
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=env)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            "prometheus"], capture_output=True, timeout=600, env=env)
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed and could not be (needs root and apt-get: "
                    "Debian's prometheus package)")
    return path


def test_the_rules_check_clean(promtool: str) -> None:
    out = subprocess.run([promtool, "check", "rules", "watchdog-d.rules.yml"], cwd=RULES,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout, out.stdout


def test_every_alert_fires_and_its_twin_stays_quiet(promtool: str) -> None:
    out = subprocess.run([promtool, "test", "rules", "watchdog-d.rules.test.yml"], cwd=RULES,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
