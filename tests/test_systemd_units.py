"""The unit files in systemd/ are what systemd accepts, word for word (``systemd-analyze
verify``: a warning is a failure too), and keep the promises of docs/operators.md "Install on a
cluster": both daemons Type=notify with a watchdog; the agent's hardening leaves NVML,
/dev/shm, /tmp and other users' /proc readable."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "systemd").glob("*.service"))
INSTALLED = "/usr/local/bin/watchdog-d"
ANALYZE = shutil.which("systemd-analyze")


def _settings(unit: Path) -> dict[str, list[str]]:
    """``Key`` -> every value it is given in [Service] (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_both_daemons_have_a_unit() -> None:
    assert [u.name for u in UNITS] == ["watchdog-d-agent.service", "watchdog-d-coordinator.service"]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (docs/operators.md: Install on a cluster)")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_says_nothing(unit: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's console
    # script (the same entry point pip installs as /usr/local/bin/watchdog-d)
    script = Path(sys.executable).parent / "watchdog-d"
    assert script.exists(), f"{script}: install the package (pip install -e .) first"
    text = unit.read_text()
    assert f"ExecStart={INSTALLED} " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={script} "))
    out = subprocess.run([ANALYZE, "verify", "--man=no", str(copy)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.strip()]
    # lines about the host's own units (a dependency with a quirk of its own) are not ours
    ours = [x for x in lines if not x.startswith("/") or x.startswith(str(tmp_path))]
    assert out.returncode == 0 and not ours, "\n".join(lines)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_notify_with_a_watchdog_and_restart(unit: Path) -> None:
    s = _settings(unit)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"]
    assert s["WatchdogSec"] == ["30"]
    assert s["StateDirectory"]
    assert s["ExecStart"][0].startswith(INSTALLED + " ")


def test_the_agents_hardening_keeps_what_it_reads_readable() -> None:
    s = _settings(ROOT / "systemd" / "watchdog-d-agent.service")
    assert s["RuntimeDirectory"] == ["watchdog-d"]          # /run/watchdog-d/agent.sock
    assert "User" not in s and "DynamicUser" not in s      # other users' /proc, logs, beacons
    for key, wrong in [("PrivateDevices", "yes"), ("PrivateTmp", "yes"), ("ProtectProc", "invisible"),
                       ("ProcSubset", "pid"), ("ProtectClock", "yes"), ("ProtectHome", "yes"),
                       ("DevicePolicy", "closed"), ("DevicePolicy", "strict")]:
        assert wrong not in s.get(key, []), f"{key}={wrong} hides what the agent reads"
    assert "DeviceAllow" not in s                          # an allow-list would shut out /dev/nvidia*
    assert s["ProtectHome"] == ["read-only"]
    caps = set(s["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}


def test_the_coordinator_runs_as_nobody_in_particular() -> None:
    s = _settings(ROOT / "systemd" / "watchdog-d-coordinator.service")
    assert s["DynamicUser"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    assert s["PrivateDevices"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    # its state directory is its own, and the one it is told to use
    assert f"--state-dir /var/lib/{s['StateDirectory'][0]}" in s["ExecStart"][0]
