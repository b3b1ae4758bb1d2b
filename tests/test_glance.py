"""The observer's glance: blind to steps, sees everything else a report must carry at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from watchdog_d.agent import glance, procstat
from watchdog_d.rank.beacon import EXCEPTION, BeaconWriter, slot_path


def _wait_state(pid: int, letter: str) -> None:
    deadline = time.monotonic() + 5
    while procstat.read(pid).state != letter and time.monotonic() < deadline:
        time.sleep(0.01)


def test_steps_do_not_move_a_glance_the_rest_does(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        w = BeaconWriter(slot_path(tmp_path, 0), p.pid, 0, 0, time.monotonic())
        g = glance.Glance(str(tmp_path))
        first = g.key()
        assert [name for name, _ in first] == ["rank-0.beacon"]
        for step in range(1, 50):
            w.write_step(step, time.monotonic())
            assert g.key() == first
        w.write_section("checkpoint", time.monotonic() + 60, 60)
        second = g.key()
        assert second != first
        os.kill(p.pid, signal.SIGSTOP)
        _wait_state(p.pid, "T")
        stopped = g.key()
        assert stopped != second and stopped[0][1][1] == "T"
        os.kill(p.pid, signal.SIGCONT)
        _wait_state(p.pid, "S")
        assert g.key() == second
        w.write_exit(EXCEPTION, 1, time.monotonic(), "ValueError: x")
        raised = g.key()
        assert raised != second
        p.kill()
        p.wait()
        assert g.key()[0][1][1] == "X"           # gone (and reaped)
        g.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_new_rank_moves_it(tmp_path):
    pid = os.getpid()
    BeaconWriter(slot_path(tmp_path, 0), pid, 0, 0, time.monotonic())
    g = glance.Glance(str(tmp_path))
    one = g.key()
    BeaconWriter(slot_path(tmp_path, 1), pid, 1, 1, time.monotonic())
    two = g.key(relist=True)
    assert len(one) == 1 and len(two) == 2
    g.close()


def test_an_incomplete_slot_and_a_missing_directory(tmp_path):
    (tmp_path / "rank-0.beacon").write_bytes(b"\0" * 100)
    g = glance.Glance(str(tmp_path))
    assert g.key() == (("rank-0.beacon", (b"", "?")),)
    g.close()
    assert glance.Glance(str(tmp_path / "gone")).key() == ()


def test_state_classes():
    st = procstat.Stat("S", 0, 0)
    assert glance.state_class(st) == "" and glance.state_class(st._replace(state="R")) == ""
    assert glance.state_class(st._replace(state="T")) == "T"
    assert glance.state_class(st._replace(state="D")) == "D"
    assert glance.state_class(None) == "X"
