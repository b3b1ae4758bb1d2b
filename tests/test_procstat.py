"""The observer's read of /proc/PID/stat: the parse, a live, a stopped and a gone process, the CPU window."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from watchdog_d.agent import procstat

# comm may hold spaces and parentheses: the fields start after the last ")"
LINE = (b"4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
        b"250 50 0 0 20 0 3 0 123456 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_parse_skips_the_command_name():
    st = procstat.parse(LINE)
    assert st == procstat.Stat("S", 300, 123456)


def test_parse_refuses_garbage():
    assert procstat.parse(b"") is None
    assert procstat.parse(b"1 (x) R 1 2") is None
    assert procstat.parse(LINE.replace(b" 250 ", b" x ")) is None


def test_unknown_state_letter_is_a_question_mark():
    assert procstat.parse(LINE.replace(b") S ", b") Q ")).state == "?"


def test_live_stopped_and_gone():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = procstat.read(p.pid)
        assert first is not None and first.state in "RS"
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while procstat.read(p.pid).state != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        st = procstat.read(p.pid)
        assert st.state == "T" and st.start == first.start
        p.kill()
        p.wait()
        assert procstat.read(p.pid) is None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cpu_meter_waits_for_a_full_window():
    m = procstat.CpuMeter()
    hz = procstat.TICKS_PER_S
    assert m.update(10.0, 0) == 0.0
    assert m.update(10.5, hz // 4) == 0.0               # half a window: nothing yet
    assert m.update(11.0, hz // 2) == 50.0          # half a core over the window
    assert m.update(11.3, hz) == 50.0              # held until the next window
    assert m.update(12.0, hz // 2 + hz) == 100.0
