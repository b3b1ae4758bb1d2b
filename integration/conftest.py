"""Fixtures for the integration tests (helpers live in harness.py)."""
import pytest

from harness import alert_sink, guarded  # noqa: F401  (fixtures)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
