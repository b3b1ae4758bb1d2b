"""How long may a rank go without a step? Learned per job, zero-config.

    timeout = max(min_stall_timeout, stall_factor * p99(step time))

- p99, not the mean: one slow step in a hundred (eval, logging, a cold cache) is
  normal and must not look like a hang.
- the floor (min_stall_timeout, 60 s by default) keeps a fast job from being
  judged on a few milliseconds of jitter.
- before the first step, startup_timeout applies (imports, data loading, compile);
  inside a section, the section's own timeout.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW = 2048  # recent step durations kept per job


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


@dataclass
class StepTimes:
    """A bounded window of observed step durations."""

    samples: deque = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, dt: float) -> None:
        if dt > 0 and math.isfinite(dt):
            self.samples.append(dt)

    def p99(self) -> float:
        return percentile(list(self.samples), 99)

    def median(self) -> float:
        return percentile(list(self.samples), 50)


def stall_timeout(min_stall_timeout_s: float, stall_factor: float, p99_step_s: float) -> float:
    return max(min_stall_timeout_s, stall_factor * p99_step_s)


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
