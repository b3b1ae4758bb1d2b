"""A daemon that cannot work where it was told to says so in one line and does not start."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog_d.config import ConfigError, writable_dir


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_D_")}
    return subprocess.run([sys.executable, "-m", "watchdog_d", *args], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("argv", [
    ["coordinator", "--listen", "127.0.0.1:0"],
    ["agent", "--coordinator", "127.0.0.1:9"],
    ["run", "--job-id", "x"],
], ids=["coordinator", "agent", "run"])
def test_a_state_dir_that_cannot_be_written_stops_the_start(tmp_path: Path, argv: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = blocker / "state"                   # a directory that cannot exist, even for root
    extra = ["--socket", str(tmp_path / "agent.sock")] if argv[0] == "agent" else []
    tail = ["--", "true"] if argv[0] == "run" else []
    out = _run([*argv, *extra, "--state-dir", str(bad), *tail])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"watchdog-d: state dir {bad} is not writable: Not a directory"]


def test_an_agent_socket_where_none_can_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = _run(["agent", "--coordinator", "127.0.0.1:9", "--state-dir", str(tmp_path / "s"),
                "--socket", str(blocker / "agent.sock")])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"watchdog-d: agent socket dir {blocker} is not writable: File exists"]


def test_writable_dir_creates_and_leaves_nothing(tmp_path: Path) -> None:
    writable_dir(str(tmp_path / "new" / "state"))
    assert list((tmp_path / "new" / "state").iterdir()) == []
    with pytest.raises(ConfigError, match="is not writable"):
        writable_dir("/proc/self/nothing-here")
