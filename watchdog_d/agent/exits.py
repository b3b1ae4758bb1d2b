"""Exit notifications for processes the agent did not start (Linux pidfds).

The agent is not the parent of the ranks, so it cannot wait() for them; but a
pidfd becomes readable the moment its process ends, whoever the parent is. At
that moment the process is usually still a zombie (torchrun reaps its children
only at its next monitor tick), so its exact exit status can be read from
/proc/PID/stat. This gives what polling cannot: exact order of deaths (which
rank died first) and exact signals, within microseconds.
"""
from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path
from typing import Callable


def zombie_status(pid: int) -> int | None:
    """Exit status of a zombie (field 52 of /proc/PID/stat, Linux >= 3.5)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[-1].split()
    if len(fields) < 50 or fields[0] != "Z":
        return None
    try:
        return int(fields[-1])
    except ValueError:
        return None


class ExitWatcher:
    """Watches pids; ``ended(pid)`` -> (monotonic time, raw wait status or None)."""

    def __init__(self, on_exit: Callable[[int], None] | None = None):
        self.on_exit = on_exit
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}            # fd -> pid
        self._ended: dict[int, tuple[float, int | None]] = {}
        self._poll = select.poll()
        self._wake_r, self._wake_w = os.pipe()
        self._poll.register(self._wake_r, select.POLLIN)
        self.available = hasattr(os, "pidfd_open")
        self._thread = threading.Thread(target=self._run, name="exit-watcher", daemon=True)
        self._stopped = False
        if self.available:
            self._thread.start()

    def watch(self, pid: int) -> None:
        if not self.available:
            return
        with self._lock:
            if pid in self._fds.values() or pid in self._ended:
                return
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                return          # already gone (the poller will see it) or not allowed
            self._fds[fd] = pid
            self._poll.register(fd, select.POLLIN)
        os.write(self._wake_w, b"x")

    def ended(self, pid: int) -> tuple[float, int | None] | None:
        with self._lock:
            return self._ended.get(pid)

    def forget(self, pids: set[int]) -> None:
        with self._lock:
            for pid in pids:
                self._ended.pop(pid, None)
            for fd, pid in list(self._fds.items()):
                if pid in pids:
                    self._poll.unregister(fd)
                    os.close(fd)
                    del self._fds[fd]

    def stop(self) -> None:
        self._stopped = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stopped:
            try:
                events = self._poll.poll(1000)
            except OSError:
                continue
            now = time.monotonic()
            for fd, _ in events:
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    pid = self._fds.pop(fd, None)
                    if pid is None:
                        continue
                    self._poll.unregister(fd)
                    os.close(fd)
                    self._ended[pid] = (now, zombie_status(pid))
                if self.on_exit:
                    self.on_exit(pid)
