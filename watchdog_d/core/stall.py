"""How long may a rank go without a step? Learned per job, zero-config.

    timeout = max(min_stall_timeout, stall_factor * p99(step time))

- p99, not the mean: one slow step in a hundred (logging, a cold cache) is normal and
  must not look like a hang.
- the floor (min_stall_timeout, 60 s by default) keeps a fast job from being
  judged on a few milliseconds of jitter.
- before the first step, startup_timeout applies (imports, data loading, compile);
  inside a section, the section's own timeout.
- pauses are learned apart from steps: a step that overlapped a section of any rank
  (its peers waited for a checkpoint) or took PAUSE_RATIO times the typical step (an
  evaluation nobody declared) is a pause. Counted as a step it would hold the p99 up
  for the next 2048 steps: one 80 s checkpoint would make the next freeze take 400 s
  to catch.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

WINDOW = 2048  # recent step durations kept per job


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    return _nearest_rank(sorted(values), q)


def _nearest_rank(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))]


PAUSE_RATIO = 10.0     # a step this many times the typical one is a pause
MIN_TYPICAL = 20       # ... once this many steps tell what typical is


@dataclass
class StepTimes:
    """A bounded window of observed durations, also kept sorted (a new sample costs a
    bisect and a memmove; a percentile is a lookup, however often it is asked)."""

    samples: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    _sorted: list = field(default_factory=list, repr=False)

    def add(self, dt: float) -> None:
        if dt > 0 and math.isfinite(dt):
            if len(self.samples) == self.samples.maxlen:
                oldest = self.samples[0]
                del self._sorted[bisect.bisect_left(self._sorted, oldest)]
            self.samples.append(dt)
            bisect.insort(self._sorted, dt)

    def _quantile(self, q: float) -> float:
        return _nearest_rank(self._sorted, q)

    def p99(self) -> float:
        return self._quantile(99)

    def median(self) -> float:
        return self._quantile(50)

    def longest(self) -> float:
        return self._sorted[-1] if self._sorted else 0.0


@dataclass
class Durations:
    """A job's step durations and, apart, its pauses."""

    steps: StepTimes = field(default_factory=StepTimes)
    pauses: StepTimes = field(default_factory=StepTimes)
    _typical: float = 0.0          # the steps' median, refreshed every 32 steps
    _until_refresh: int = 0

    def add(self, dt: float, overlapped_section: bool = False) -> None:
        if self._until_refresh <= 0:
            self._typical = self.steps.median() if len(self.steps.samples) >= MIN_TYPICAL else 0.0
            self._until_refresh = 32
        if overlapped_section or (self._typical > 0 and dt > PAUSE_RATIO * self._typical):
            self.pauses.add(dt)
        else:
            self._until_refresh -= 1
            self.steps.add(dt)


def stall_timeout(min_stall_timeout_s: float, stall_factor: float, p99_step_s: float) -> float:
    return max(min_stall_timeout_s, stall_factor * p99_step_s)


STACKS_REFRESH_S = 30.0   # during a long pause (or a rank's lingering), stacks are asked again this often


def rank_timeout(step: int, section_remaining_s: float, learned_s: float,
                 startup_timeout_s: float) -> tuple[str, float]:
    """Which rule applies to a rank now, and its timeout.

    Returns ("section", remaining) when a section is open (stalled once the
    remaining time goes negative), else ("startup"|"step", timeout).
    """
    if math.isfinite(section_remaining_s):
        return "section", section_remaining_s
    if step < 0:
        return "startup", startup_timeout_s
    return "step", learned_s
