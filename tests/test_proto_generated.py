"""The checked-in gRPC code must be exactly what protos/watchdog.proto generates."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import watchdog_d.proto

CHECKED_IN = Path(watchdog_d.proto.__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                    reason="grpc_tools is not installed (dev extra: pip install -e .[dev]); "
                           "cannot regenerate the gRPC code to compare")
def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    from watchdog_d.proto.gen import generate

    files = generate(tmp_path)
    assert sorted(p.name for p in files) == ["watchdog_pb2.py", "watchdog_pb2_grpc.py"]
    for fresh in files:
        current = CHECKED_IN / fresh.name
        assert current.read_bytes() == fresh.read_bytes(), (
            f"{current} differs from what protos/watchdog.proto generates; "
            f"run: python -m watchdog_d.proto.gen")


def test_generated_grpc_module_imports_relatively() -> None:
    text = (CHECKED_IN / "watchdog_pb2_grpc.py").read_text()
    assert "from . import watchdog_pb2 as" in text
    assert "\nimport watchdog_pb2 " not in text
