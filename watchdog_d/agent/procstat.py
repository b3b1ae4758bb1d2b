"""A rank process as the observer needs it: one read of /proc/PID/stat per poll.

What psutil gave (state, CPU) costs one small read here: psutil's Process, status()
and cpu_percent() took ~30 µs a rank and two reads of the same file per poll, 0.4 %
of a core for 8 ranks at the observer's 10 polls a second (integration/bench_health.py).

The parse is pure (``parse``); ``read`` is the only I/O; ``CpuMeter`` turns CPU ticks
into a percent over a window of its own.
"""
from __future__ import annotations

import os
from typing import NamedTuple

TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# a percent over 0.1 s of 10 ms ticks moves in steps of 10 %: the CPU is averaged over
# at least a second (what reads it, "busy, not hung", looks at stalls of many seconds)
CPU_WINDOW_S = 1.0
STATES = frozenset("RSDTtZXIWPK")


class Stat(NamedTuple):
    state: str          # the kernel's letter: R S D T t Z X I ...
    ticks: int          # user + system CPU, clock ticks
    start: int          # start time in ticks since boot: tells a reused pid apart


def parse(raw: bytes) -> Stat | None:
    """The fields of /proc/PID/stat the observer uses; None when unreadable."""
    fields = raw.rpartition(b")")[2].split()
    if len(fields) < 20:
        return None
    try:
        state = fields[0].decode("ascii", "replace")
        return Stat(state if state in STATES else "?", int(fields[11]) + int(fields[12]),
                    int(fields[19]))
    except ValueError:
        return None


def read(pid: int) -> Stat | None:
    """Now; None when the process is gone (or was never there)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        return parse(os.read(fd, 1024))
    except OSError:
        return None
    finally:
        os.close(fd)


class CpuMeter:
    """A process's CPU as a percent of one core, over the last window of
    ``CPU_WINDOW_S`` or more; the value holds between windows."""

    __slots__ = ("_t", "_ticks", "percent")

    def __init__(self) -> None:
        self._t: float | None = None
        self._ticks = 0
        self.percent = 0.0

    def update(self, now: float, ticks: int) -> float:
        if self._t is None:
            self._t, self._ticks = now, ticks
        elif now - self._t >= CPU_WINDOW_S:
            self.percent = 100.0 * (ticks - self._ticks) / TICKS_PER_S / (now - self._t)
            self._t, self._ticks = now, ticks
        return self.percent


def read_io(pid: int) -> int | None:
    """The process's I/O so far, one number that grows whenever any of its counters does
    (rchar + wchar + read_bytes + write_bytes of /proc/PID/io); None when unreadable
    (another user's process without CAP_SYS_PTRACE, or gone)."""
    try:
        fd = os.open(f"/proc/{pid}/io", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    total = 0
    for line in raw.split(b"\n"):
        name, _, value = line.partition(b":")
        if name in (b"rchar", b"wchar", b"read_bytes", b"write_bytes"):
            try:
                total += int(value)
            except ValueError:
                return None
    return total
