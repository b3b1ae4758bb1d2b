"""One check's result, and the runner that keeps every check bounded in time.

Each probe runs in a daemon thread of its own; the runner waits for each until its own
deadline (all run at once, so the report takes as long as the slowest probe, at most the
largest timeout). A probe stuck in the kernel (``statvfs`` on a dead NFS mount, a hung
NVML call) is left behind in its thread and reported as "timed out after N s": doctor
never hangs, and the process can still exit (daemon threads are not joined).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

OK, WARN, ERROR = "ok", "warn", "error"
RANK = {OK: 0, WARN: 1, ERROR: 2}


@dataclass(frozen=True)
class Check:
    """One finding: ``check`` names what was looked at, ``found`` what was seen, ``fix``
    what to do about it ("" when nothing)."""

    check: str
    status: str                 # ok | warn | error
    found: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "found": self.found, "fix": self.fix}


@dataclass(frozen=True)
class Probe:
    """A piece of I/O that yields checks; ``timeout_s`` bounds it."""

    name: str
    run: Callable[[], Iterable[Check]]
    timeout_s: float = 5.0
    on_timeout: str = ERROR     # what a probe that did not come back means
    fix_timeout: str = ""


def exit_status(checks: Iterable[Check]) -> int:
    """0 all ok, 1 warnings, 2 errors (DESIGN §3)."""
    return max((RANK[c.status] for c in checks), default=0)


def run_all(probes: list[Probe], clock: Callable[[], float] = time.monotonic) -> list[Check]:
    """Every probe's checks, in the probes' order; a probe that raised or did not
    finish in time is one check saying so."""
    results: list[list[Check] | BaseException | None] = [None] * len(probes)

    def work(i: int, probe: Probe) -> None:
        try:
            results[i] = list(probe.run())
        except BaseException as e:      # a probe's bug is its own check's error, not doctor's
            results[i] = e

    threads = []
    start = clock()
    for i, probe in enumerate(probes):
        t = threading.Thread(target=work, args=(i, probe), name=f"doctor-{probe.name}", daemon=True)
        t.start()
        threads.append(t)
    out: list[Check] = []
    for i, (probe, t) in enumerate(zip(probes, threads)):
        t.join(max(0.0, start + probe.timeout_s - clock()))
        got = results[i]
        if t.is_alive() or got is None:
            out.append(Check(probe.name, probe.on_timeout, f"timed out after {probe.timeout_s:g} s",
                             probe.fix_timeout or "find out what hangs there (a dead network "
                             "mount, a wedged driver) before starting a job"))
        elif isinstance(got, BaseException):
            out.append(Check(probe.name, WARN, f"the check itself failed: {got!r}"[:300],
                             "report this as a watchdog-d bug"))
        else:
            out.extend(got)
    return out
