"""agent/drain.py: a suspect node drained from Slurm through scontrol (a stand-in
scontrol on PATH here; the real one in integration/test_slurm.py): one bounded call, a
clear line when it cannot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchdog_d.agent import drain


@pytest.fixture
def scontrol(tmp_path: Path, monkeypatch):
    def make(body: str) -> Path:
        path = tmp_path / "scontrol"
        path.write_text("#!/bin/sh\n" + body.replace("ARGS", str(tmp_path / "args")) + "\n")
        path.chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))
        return tmp_path / "args"
    return make


def test_the_command_is_one_bounded_line() -> None:
    argv = drain.command("gpu-17", "gpu_xid rank 3: Xid 79\nfallen off the bus\x1b[31m " + "x" * 500)
    assert argv[:4] == ["scontrol", "update", "NodeName=gpu-17", "State=DRAIN"]
    reason = argv[4]
    assert reason.startswith("Reason=watchdog-d: gpu_xid rank 3: Xid 79 fallen off the bus")
    assert "\n" not in reason and "\x1b" not in reason and len(reason) <= len("Reason=") + drain.REASON_MAX


def test_drained(scontrol) -> None:
    args = scontrol('echo "$@" > ARGS')
    assert drain.drain("n1", "the culprit of 2 verdicts in a row") == ""
    assert args.read_text().startswith("update NodeName=n1 State=DRAIN Reason=watchdog-d: the culprit")


def test_refused_by_slurm_is_one_clear_line(scontrol) -> None:
    scontrol('echo "slurm_update error: Invalid node name specified" >&2; exit 1')
    assert drain.drain("nope", "x") == "scontrol exited 1: slurm_update error: Invalid node name specified"


def test_no_slurm_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "scontrol not found" in drain.drain("n1", "x")


def test_a_hung_scontrol_is_cut_short(scontrol) -> None:
    scontrol("exec /bin/sleep 30")
    assert drain.drain("n1", "x", timeout=1.0) == "scontrol did not answer in 1s"
