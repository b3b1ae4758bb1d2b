"""AttemptLogs: findings, line numbers, tails and offsets of rank logs, across restarts and rotation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from watchdog_d.agent import ranklogs
from watchdog_d.logs.fingerprints import Catalogue, Finding
from watchdog_d.agent.ranklogs import TAIL_LINES, AttemptLogs

OOM = b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.30 GiB"


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rank:
    """One rank's log as written: every line, in order, and the byte offset of each."""

    def __init__(self, root: Path, rank: int) -> None:
        self.path = root / f"rank-{rank}.log"
        self.lines: list[bytes] = []
        self.offsets: list[int] = []          # in the file the line went to
        self.size = 0                         # of the live file
        self.path.touch()

    def write(self, *lines: bytes) -> None:
        with open(self.path, "ab") as f:
            for ln in lines:
                self.lines.append(ln)
                self.offsets.append(self.size)
                f.write(ln + b"\n")
                self.size += len(ln) + 1

    def steps(self, n: int) -> None:
        start = len(self.lines)
        self.write(*(b"[rank] step %d loss %.4f lr 3.0e-04 tokens/s 81234" % (i, 2 + i / 1000)
                     for i in range(start, start + n)))

    def rotate(self) -> None:
        os.replace(self.path, f"{self.path}.1")
        self.path.touch()
        self.size = 0

    def tail(self) -> str:
        return "\n".join(ln.decode() for ln in self.lines[-TAIL_LINES:])


def test_findings_line_numbers_tail_restart_and_rotation(tmp_path: Path, catalogue: Catalogue) -> None:
    log_dir, state = tmp_path / "logs", tmp_path / "state" / "attempt-1.json"
    log_dir.mkdir()
    r0, r1 = Rank(log_dir, 0), Rank(log_dir, 1)
    clock = Clock()
    logs = AttemptLogs(str(log_dir), str(state), catalogue, clock)
    assert logs.view(0) == ((), 0, "")
    r0.steps(5)
    r1.steps(3)
    logs.poll()
    assert logs.view(0) == ((), r0.size, r0.tail()) and logs.view(1)[2] == r1.tail()

    r1.steps(100)                               # appended between polls; the OOM is line 104
    r1.write(OOM)
    oom_no, oom_at = len(r1.lines), r1.offsets[-1]
    r1.steps(2)
    clock.t += 5
    logs.poll()
    findings, offset, tail = logs.view(1)
    assert [(f.kind, f.line_no, f.line) for f in findings] == [("cuda_oom", 104, OOM.decode())] and oom_no == 104
    assert logs.ranks[1].findings[0][1].offset == oom_at
    assert offset == r1.size and tail == r1.tail() and tail.count("\n") == TAIL_LINES - 1
    assert dict(findings[0].fields)["size"] == "2.30 GiB" and findings[0].age_s == 0.0
    assert logs.view(0)[0] == ()

    logs.save()
    logs.close()
    r1.steps(3)                                 # written while the agent is down
    clock.t += 10
    logs = AttemptLogs(str(log_dir), str(state), catalogue, clock)
    clock.t += 2                                # ages go on from the saved ones (the downtime is unknown)
    restored = logs.view(1)
    assert [(f.kind, f.line_no) for f in restored[0]] == [("cuda_oom", 104)] and restored[0][0].age_s == 2.0
    assert restored[2] == "\n".join(ln.decode() for ln in r1.lines[-TAIL_LINES - 3:-3])
    logs.poll()                                 # no line read twice, no finding twice
    findings, offset, tail = logs.view(1)
    assert [(f.kind, f.line_no) for f in findings] == [("cuda_oom", 104)]
    assert logs.ranks[1].lines == len(r1.lines) and tail == r1.tail() and offset == r1.size

    r0.steps(10)
    r0.write(OOM)                               # in the part that is rotated away before the poll
    r0.steps(10)
    before = len(r0.lines)
    r0.rotate()
    r0.steps(7)
    logs.poll()
    findings, offset, tail = logs.view(0)
    assert [(f.kind, f.line_no) for f in findings] == [("cuda_oom", 16)]
    assert logs.ranks[0].lines == len(r0.lines) == before + 7
    assert tail == r0.tail() and offset == r0.size

    r1.write(OOM)                               # line numbers go on after the restart
    logs.poll()
    assert [f.line_no for f in logs.view(1)[0]] == [104, len(r1.lines)]
    logs.close()
    assert json.loads(state.read_text())["payload"]["ranks"]["0"]["lines"] == len(r0.lines)


def test_tail_spans_blocks_and_short_reads(tmp_path: Path, catalogue: Catalogue) -> None:
    r0 = Rank(tmp_path, 0)
    logs = AttemptLogs(str(tmp_path), str(tmp_path / "s.json"), catalogue)
    r0.steps(3)
    logs.poll()
    r0.write(b"x" * 70_000, b"after a cut line")   # a cut line is a block of its own
    r0.steps(2)
    logs.poll()
    tail = logs.view(0)[2].split("\n")
    assert tail[:3] == [ln.decode() for ln in r0.lines[:3]] and tail[3] == "x" * ranklogs.TAIL_LINE_MAX
    assert tail[4:] == [ln.decode() for ln in r0.lines[4:]] and logs.ranks[0].lines == 7
    r0.steps(1000)
    logs.poll()
    assert logs.view(0)[2] == r0.tail()


def test_saved_findings_round_trip_and_a_bad_entry_is_dropped(tmp_path: Path, catalogue: Catalogue) -> None:
    state = tmp_path / "s.json"
    f = Finding(kind="cuda_oom", severity="fatal", role="cause", line="l", line_no=3, offset=9,
                fields={"size": "1 GiB"}, explanation="e", remedy="r")
    logs = AttemptLogs(str(tmp_path), str(state), catalogue, Clock())
    logs.ranks[2] = ranklogs.RankLog(offset=9, lines=4)
    logs.ranks[2].add(990.0, f)
    logs.ranks[3] = ranklogs.RankLog(offset=1, lines=1)
    logs.ranks[3].add(1000.0, f)
    logs.save()
    doc = json.loads(state.read_text())
    doc["payload"]["ranks"]["2"]["findings"][0]["future_field"] = 1      # a newer agent's save
    del doc["payload"]["ranks"]["3"]["findings"][0]["kind"]              # a broken one
    state.write_text(json.dumps(doc))
    again = AttemptLogs(str(tmp_path), str(state), catalogue, Clock())
    assert again.ranks[2].findings == [(990.0, f)] and (again.ranks[2].offset, again.ranks[2].lines) == (9, 4)
    assert 3 not in again.ranks


def test_a_full_disk_is_said_once_and_the_logs_are_still_read(tmp_path: Path, catalogue: Catalogue,
                                                              monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import errno

    clock = Clock()
    logs = AttemptLogs(str(tmp_path), str(tmp_path / "s.json"), catalogue, clock)
    rank = tmp_path / "rank-0.log"

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logs.store, "save", full)
    for i in range(5):
        with rank.open("a") as f:
            f.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n" if i == 4
                    else f"step {i}\n")
        clock.t += ranklogs.SAVE_EVERY_S
        logs.poll()
    findings, offset, _ = logs.view(0)
    assert [f.kind for f in findings] == ["cuda_oom"] and offset == rank.stat().st_size
    err = capsys.readouterr().err
    assert err.count("offsets_save_failed") == 1 and "No space left on device" in err
    monkeypatch.undo()
    clock.t += ranklogs.SAVE_EVERY_S
    with rank.open("a") as f:
        f.write("step 5\n")
    logs.poll()
    assert "offsets_saved_again" in capsys.readouterr().err and (tmp_path / "s.json").exists()
