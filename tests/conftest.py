"""Test-session plumbing for tests/ (helpers live in wdtest_helpers.py).

The single rank test that imports torch is slow (~3 s of imports in a subprocess). Its
process is started right after collection and its test is moved to the end of the run,
so it overlaps the rest of the suite.
"""
from __future__ import annotations

import importlib.util

import pytest

import wdtest_helpers

MARK = "torch_subprocess"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARK}: a rank subprocess that imports torch, started early")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [item for item in items if item.get_closest_marker(MARK)]
    if slow:
        items[:] = [item for item in items if not item.get_closest_marker(MARK)] + slow


def pytest_collection_finish(session: pytest.Session) -> None:
    if importlib.util.find_spec("torch") is not None and any(
            item.get_closest_marker(MARK) for item in session.items):
        wdtest_helpers.start_torch_rank()


def pytest_sessionfinish(session: pytest.Session) -> None:
    wdtest_helpers.stop_torch_rank()
