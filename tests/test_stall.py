"""Learned stall timeout (watchdog_d/core/stall.py)."""
from __future__ import annotations

import math

import pytest

from watchdog_d.core.stall import WINDOW, StepTimes, percentile, rank_timeout, stall_timeout


def test_percentile_empty_is_zero() -> None:
    assert percentile([], 99) == 0.0
    assert percentile([], 50) == 0.0


def test_percentile_single_value() -> None:
    for q in (0, 1, 50, 99, 100):
        assert percentile([3.5], q) == 3.5


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]          # 1..100
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 50) == 50.0
    assert percentile(values, 1) == 1.0
    assert percentile(values, 0) == 1.0                 # clamped to the smallest


def test_percentile_ignores_input_order_and_does_not_sort_in_place() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 99) == 5.0
    assert values == [5.0, 1.0, 4.0, 2.0, 3.0]


def test_p99_is_not_moved_by_one_outlier_in_a_hundred() -> None:
    values = [1.0] * 99 + [500.0]
    assert percentile(values, 99) == 1.0
    assert percentile(values + [500.0], 99) == 500.0    # two in 101 is past the 99th


@pytest.mark.parametrize("n", [1, 2, 7, 99, 100, 101, 150, 1000, 2048])
def test_percentile_matches_integer_nearest_rank(n: int) -> None:
    values = [float(i) for i in range(n)]
    for q in (50, 99):
        k = -(-q * n // 100) - 1                        # ceil(q*n/100) - 1, exact
        assert percentile(values, q) == values[max(0, k)]


def test_step_times_keep_only_valid_durations() -> None:
    st = StepTimes()
    for dt in (0.0, -1.0, math.inf, math.nan, 2.0, 4.0):
        st.add(dt)
    assert list(st.samples) == [2.0, 4.0]
    assert st.p99() == 4.0 and st.median() == 2.0


def test_step_times_window_is_bounded() -> None:
    st = StepTimes()
    for _ in range(WINDOW):
        st.add(100.0)
    for _ in range(WINDOW):
        st.add(1.0)                                     # the old slow steps age out
    assert len(st.samples) == WINDOW
    assert st.p99() == 1.0


def test_empty_step_times() -> None:
    assert StepTimes().p99() == 0.0


def test_stall_timeout_floor_and_factor() -> None:
    assert stall_timeout(60.0, 5.0, 0.0) == 60.0        # nothing learned yet: the floor
    assert stall_timeout(60.0, 5.0, 2.0) == 60.0        # fast job: the floor
    assert stall_timeout(60.0, 5.0, 12.0) == 60.0       # exactly at the floor
    assert stall_timeout(60.0, 5.0, 20.0) == 100.0      # slow steps: factor * p99
    assert stall_timeout(10.0, 3.0, 7.0) == 21.0


def test_rank_timeout_rules() -> None:
    # before the first step: startup
    assert rank_timeout(-1, math.inf, 100.0, 900.0) == ("startup", 900.0)
    # stepping: the learned timeout
    assert rank_timeout(0, math.inf, 100.0, 900.0) == ("step", 100.0)
    assert rank_timeout(12345, math.inf, 60.0, 900.0) == ("step", 60.0)
    # a section open: its remaining time, whatever the step
    assert rank_timeout(5, 42.0, 100.0, 900.0) == ("section", 42.0)
    assert rank_timeout(-1, 42.0, 100.0, 900.0) == ("section", 42.0)
    assert rank_timeout(5, -3.0, 100.0, 900.0) == ("section", -3.0)   # past its deadline
