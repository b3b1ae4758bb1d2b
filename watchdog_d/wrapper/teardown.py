"""Stopping every process of a job, and only those.

The job is found three ways, because each alone misses something:
- its process group (what torchrun and plain children share);
- the wrapper's descendants: the wrapper is a child subreaper, so a process that
  double-forks or calls setsid() is re-parented to it instead of to init;
- an attempt token in the environment, for anything that escaped both.
SIGTERM (plus SIGCONT, so a stopped rank can act on it), then SIGKILL after the
grace period.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil

from .. import log

PR_SET_CHILD_SUBREAPER = 36
TOKEN_ENV = "WATCHDOG_D_ATTEMPT_TOKEN"


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _is_tee(p: psutil.Process) -> bool:
    try:
        return any(a.endswith("watchdog_d/rank/tee.py") or a == "watchdog_d.rank.tee" for a in p.cmdline())
    except psutil.Error:
        return False


class JobProcesses:
    """Tracks every process of one attempt of a job."""

    def __init__(self, token: str, pgid: int | None = None):
        self.token = token
        self.pgid = pgid
        self.seen: dict[int, float] = {}          # pid -> create_time
        self.me = os.getpid()
        self.launcher = 0                         # reaped by its Popen, not here

    def refresh(self) -> None:
        """Remember current descendants (cheap; call every few hundred ms)."""
        try:
            for p in psutil.Process(self.me).children(recursive=True):
                try:
                    self.seen.setdefault(p.pid, p.create_time())
                except psutil.Error:
                    pass
        except psutil.Error:
            pass

    def _by_token(self) -> list[psutil.Process]:
        found = []
        needle = self.token
        for p in psutil.process_iter(["pid"]):
            if p.pid == self.me:
                continue
            try:
                if p.environ().get(TOKEN_ENV) == needle:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def living(self, scan_env: bool = False) -> list[psutil.Process]:
        self.refresh()
        procs: dict[int, psutil.Process] = {}
        for pid, created in list(self.seen.items()):
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) > 0.01:   # pid reused: not ours
                    del self.seen[pid]
                    continue
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                procs[pid] = p
            except psutil.Error:
                self.seen.pop(pid, None)
        if scan_env:
            for p in self._by_token():
                procs.setdefault(p.pid, p)
        return list(procs.values())

    def reap(self) -> None:
        """Collect exit statuses of re-parented orphans (we are their subreaper)."""
        for pid in list(self.seen):
            if pid == self.launcher:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            except OSError:
                pass

    def _signal_all(self, sig: int, procs: list[psutil.Process]) -> None:
        if self.pgid:
            try:
                os.killpg(self.pgid, sig)
                if sig == signal.SIGTERM:
                    os.killpg(self.pgid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            try:
                p.send_signal(sig)
                if sig == signal.SIGTERM:
                    p.send_signal(signal.SIGCONT)
            except psutil.Error:
                pass

    def _wait_tees(self, exclude: set[int], timeout: float) -> None:
        tees = [p for p in self.living() if p.pid not in exclude and _is_tee(p)]
        if tees:
            psutil.wait_procs(tees, timeout=timeout)
            self.reap()

    def _group_alive(self) -> bool:
        if not self.pgid:
            return False
        try:
            os.killpg(self.pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, grace: float, exclude: set[int] = frozenset()) -> int:
        """SIGTERM, wait up to ``grace``, SIGKILL the rest. Returns processes killed hard."""
        procs = [p for p in self.living(scan_env=True) if p.pid not in exclude]
        if not procs and not self._group_alive():
            return 0
        started = time.monotonic()
        log.log("teardown_sigterm", processes=len(procs), grace_s=grace)
        self._signal_all(signal.SIGTERM, procs)
        deadline = started + grace
        next_progress = started + 5
        while time.monotonic() < deadline:
            self.reap()
            procs = [p for p in self.living() if p.pid not in exclude]
            if not procs:
                break
            if time.monotonic() >= next_progress:
                log.log("teardown_waiting", processes=len(procs),
                        left_s=f"{deadline - time.monotonic():.0f}")
                next_progress += 5
            time.sleep(0.05)
        hard = 0
        for _ in range(3):   # a process may fork while we kill: look again
            procs = [p for p in self.living(scan_env=True)
                     if p.pid not in exclude and not _is_tee(p)]
            if not procs:
                break
            hard += len(procs)
            self._signal_all(signal.SIGKILL, procs)
            psutil.wait_procs(procs, timeout=2)
            self.reap()
        # the ranks' log tees go last: they end by themselves once the ranks are gone,
        # draining what the ranks wrote on the way (a SIGKILL would lose it)
        self._wait_tees(exclude, 1.0)
        tees = [p for p in self.living(scan_env=True) if p.pid not in exclude]
        if tees:
            hard += len(tees)
            self._signal_all(signal.SIGKILL, tees)
            psutil.wait_procs(tees, timeout=2)
            self.reap()
        if hard:
            log.log("teardown_sigkill", processes=hard)
        return hard
