"""A glance at a job's ranks between two full observations: has anything changed that
must be seen at once?

A full observation (beacons decoded, processes, logs merged, the node's report built)
took ~1.2 ms of a core in the running agent for 8 ranks (cold caches: 3-4x what a tight
loop measures); ten a second, to report, most of the time, that steps went on. The
observer glances instead ten times a second (``poll_interval``): per rank, one read of
the beacon's bytes (the step fields left out) and one of the process's stat, through
files held open. A difference is something to act on (an exception, an exit, a freeze,
a section, a checkpoint, a rank that appears): a full observation follows at once. Step
progress needs none: the reporter has the observer observe in full before each heartbeat.
A death does not wait for a glance: the exit watcher wakes the observer.

``state_class`` and ``key_of`` are pure; ``Glance`` holds the files.
"""
from __future__ import annotations

import os
from typing import Callable

from ..rank import beacon
from . import procstat


def state_class(stat: procstat.Stat | None) -> str:
    """The process states that change a report (as ``reporter.signatures`` sees them):
    stopped or traced, in uninterruptible sleep, ended; running and sleeping are one."""
    if stat is None:
        return "X"
    return stat.state if stat.state in "TtDZX" else ""


def key_of(raw: bytes, stat: procstat.Stat | None) -> tuple[bytes, str]:
    """One rank's part of a glance. (A torn read of the slot can only make a spurious
    difference, one extra full observation: no second read to check it.)"""
    if len(raw) < beacon.SLOT_SIZE or raw[:4] != beacon.MAGIC:
        return b"", "?"
    return beacon.all_but_steps(raw), state_class(stat)


class _Rank:
    __slots__ = ("slot_fd", "ino", "own_pid", "pid", "stat_fd", "host_pid")

    def __init__(self, slot_fd: int, ino: int, host_pid: Callable[[int], int]) -> None:
        self.slot_fd, self.ino, self.own_pid, self.pid, self.stat_fd = slot_fd, ino, 0, 0, -1
        self.host_pid = host_pid          # the rank's own PID -> the node's (pidns)

    def key(self) -> tuple[bytes, str]:
        try:
            raw = os.pread(self.slot_fd, beacon.SLOT_SIZE, 0)
        except OSError:
            return b"", "?"
        if len(raw) < beacon.SLOT_SIZE or raw[:4] != beacon.MAGIC:
            return b"", "?"
        own_pid = beacon.pid_of(raw)
        if own_pid != self.own_pid or not self.pid:     # (not found yet: asked again)
            self._close_stat()
            self.own_pid, self.pid = own_pid, self.host_pid(own_pid)
            try:
                self.stat_fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY)
            except OSError:
                pass
        stat = None
        if self.stat_fd >= 0:
            try:   # (held open: once the process is reaped, or its pid reused, ESRCH)
                stat = procstat.parse(os.pread(self.stat_fd, 1024, 0))
            except OSError:
                pass
        return key_of(raw, stat)

    def _close_stat(self) -> None:
        if self.stat_fd >= 0:
            os.close(self.stat_fd)
            self.stat_fd = -1

    def close(self) -> None:
        self._close_stat()
        os.close(self.slot_fd)


class Glance:
    """One attempt's beacon directory, glanced at. Listed again when it changes."""

    def __init__(self, beacon_dir: str, host_pid: Callable[[int], int] = lambda pid: pid) -> None:
        self.dir = beacon_dir
        self.host_pid = host_pid          # (a rank in another PID namespace: pidns)
        self._mtime = -1
        self._ranks: dict[str, _Rank] = {}

    def key(self, relist: bool = False) -> tuple:
        """(``relist``: list the directory whatever its mtime says, which may not have
        moved for a file created within its clock's tick)"""
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except OSError:
            self.close()
            return ()
        if relist or mtime != self._mtime:
            self._mtime = mtime
            self._relist()
        return tuple((name, r.key()) for name, r in self._ranks.items())

    def _relist(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.dir)
                           if n.startswith("rank-") and n.endswith(".beacon"))
        except OSError:
            names = []
        kept: dict[str, _Rank] = {}
        for name in names:
            path = os.path.join(self.dir, name)
            old = self._ranks.pop(name, None)
            try:
                ino = os.stat(path).st_ino
                if old is not None and old.ino == ino:
                    kept[name] = old
                    continue
                kept[name] = _Rank(os.open(path, os.O_RDONLY), ino, self.host_pid)
            except OSError:
                pass
            if old is not None:
                old.close()
        self.close()
        self._ranks = kept

    def close(self) -> None:
        for r in self._ranks.values():
            r.close()
        self._ranks = {}
