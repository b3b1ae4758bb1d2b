"""systemd's notify protocol, and the liveness of the loops the pings stand for.

A daemon that sends ``WATCHDOG=1`` from a thread of its own proves only that this thread
runs. The loops that do the work ``beat`` a ``Liveness`` once a pass; ``supervise`` pings
only while none of them is later than its allowance, so a wedged loop stops the pings and
systemd restarts the daemon after ``WatchdogSec``. Standard library only: both daemons use it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

from . import log


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``, ``STOPPING=1``) to the
    service manager. A no-op (False) when not run by systemd; never raises: a daemon must
    not fall over because its supervisor's socket did."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):            # an abstract socket
        path = "\0" + path[1:]
    elif not path.startswith("/"):      # unset, or a kind we do not speak (vsock:)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(state.encode("utf-8", "replace"))
        return True
    except (OSError, ValueError):
        return False


class Liveness:
    """When each named loop last passed. ``watch`` gives a loop its allowance (it counts
    from then, so a loop that never starts is late too); ``beat`` is a clock read and a
    dict store under a lock, cheap enough for every pass of a 10 Hz loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._allowed: dict[str, float] = {}
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()

    def watch(self, name: str, allowed_s: float) -> None:
        with self._lock:
            self._allowed[name] = allowed_s
            self._beats[name] = self.clock()

    def beat(self, name: str) -> None:
        now = self.clock()
        with self._lock:
            self._beats[name] = now

    def allowed(self, name: str) -> float:
        return self._allowed[name]

    def stale(self, now: float | None = None) -> dict[str, float]:
        """The watched loops that have not beaten within their allowance: name -> seconds
        since their last beat."""
        now = self.clock() if now is None else now
        with self._lock:
            return {name: now - self._beats[name] for name, allowed in sorted(self._allowed.items())
                    if now - self._beats[name] > allowed}


def supervise(liveness: Liveness, done: threading.Event, status: Callable[[], str], *,
              ping_s: float = 1.0, status_s: float = 5.0,
              send: Callable[[str], bool] = notify) -> None:
    """Until ``done``: ``WATCHDOG=1`` every ``ping_s`` while no loop is stale, and a short
    ``STATUS=`` line every ``status_s``. A stalled loop is logged once; should it pass
    again before systemd gave up, the pings resume (and that is logged too)."""
    stalled: dict[str, float] = {}
    status_at = float("-inf")
    while True:
        now = liveness.clock()
        late = liveness.stale(now)
        for name in late.keys() - stalled.keys():
            log.error("loop_stalled", loop=name, silent_s=f"{late[name]:.1f}",
                      allowed_s=f"{liveness.allowed(name):g}",
                      effect="no WATCHDOG=1 pings: systemd restarts the daemon after WatchdogSec")
        for name in stalled.keys() - late.keys():
            log.warn("loop_recovered", loop=name)
        stalled = late
        if not late:
            send("WATCHDOG=1")
        if now - status_at >= status_s or late:
            status_at = now
            try:
                line = status()
            except Exception as e:     # a status line must never stop the pings
                line = f"status_error={type(e).__name__}"
            if late:
                line = "stalled=" + ",".join(late) + " " + line
            send("STATUS=" + line)
        if done.wait(ping_s):
            return
