"""Test-session plumbing for tests/ (helpers live in wdtest_helpers.py).

The one rank test that imports torch costs ~3 s of imports (torch, then torch._dynamo on
the first optimizer) in its subprocess. That process is started as early as the session
allows, and its test runs last, so it overlaps the rest of the suite instead of adding
to it. If the test turns out not to be selected, the process is stopped at once.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import wdtest_helpers

MARK = "torch_subprocess"
TORCH_TEST_FILE = Path(__file__).parent / "test_rank_runtime.py"


def _may_collect(config: pytest.Config, target: Path) -> bool:
    args = config.args or [str(config.rootpath)]
    for arg in args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve()
        if path == target or path in target.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARK}: a rank subprocess that imports torch, started early")
    if importlib.util.find_spec("torch") is not None and _may_collect(config, TORCH_TEST_FILE):
        wdtest_helpers.start_torch_rank()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [item for item in items if item.get_closest_marker(MARK)]
    if slow:
        items[:] = [item for item in items if not item.get_closest_marker(MARK)] + slow


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(item.get_closest_marker(MARK) for item in session.items):
        wdtest_helpers.stop_torch_rank()          # deselected (-k, -m, --deselect): don't pay for it
    elif importlib.util.find_spec("torch") is not None:
        wdtest_helpers.start_torch_rank()         # no-op when already running


def pytest_unconfigure(config: pytest.Config) -> None:
    wdtest_helpers.stop_torch_rank()
