"""Choosing the newest complete checkpoint (watchdog_d/checkpoints.py). No real sleeps:
mtimes are set with os.utime and ``now``/``sleep`` are passed explicitly."""
from __future__ import annotations

import errno
import json
import os
import re
import struct
import zipfile
from pathlib import Path

import pytest

from watchdog_d.wrapper import checkpoints
from watchdog_d.wrapper.checkpoints import (CheckpointDirError, Rule, newest_complete, step_of,
                                    why_incomplete)

OLD = 1_700_000_000.0          # mtime of settled entries
NOW = OLD + 3600.0             # "now" for every check: OLD entries are long settled
RULE = Rule()


def no_sleep(seconds: float) -> None:
    raise AssertionError("a settled entry must not pay a settle wait")


def make(path: Path, data: bytes = b"x", mtime: float = OLD) -> Path:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def make_dir(path: Path, files: dict[str, bytes], mtime: float = OLD) -> Path:
    path.mkdir()
    for name, data in files.items():
        make(path / name, data, mtime)
    os.utime(path, (mtime, mtime))    # after the children: creating them touched the dir
    return path


def torch_zip(path: Path, mtime: float = OLD) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 50)
        z.writestr("archive/data/0", os.urandom(4096))
    os.utime(path, (mtime, mtime))
    return path


def safetensors_bytes(header: object = None, data: bytes = b"\0" * 8) -> bytes:
    if header is None:
        header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def why(path: Path, rule: Rule = RULE, **kw: object) -> str:
    kw.setdefault("now", NOW)
    kw.setdefault("sleep", no_sleep)
    return why_incomplete(str(path), rule, **kw)  # type: ignore[arg-type]


def newest(directory: Path, rule: Rule = RULE, **kw: object):
    kw.setdefault("now", NOW)
    kw.setdefault("sleep", no_sleep)
    return newest_complete(str(directory), rule, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, step", [
    ("step-10.pt", 10), ("checkpoint-500", 500), ("global_step1000", 1000),
    ("iter_0000100", 100), ("epoch=3-step=1500.ckpt", 1500), ("model.safetensors", -1),
    ("latest", -1), ("model.h5", -1), ("step-7.pt.tmp", 7), ("", -1),
])
def test_step_of(name: str, step: int) -> None:
    assert step_of(name) == step


@pytest.mark.parametrize("name", ["step-1.pt.tmp", "a.partial", "a.incomplete", "a.lock",
                                  "tmpk2j3", ".hidden"])
def test_partial_names_are_never_complete(tmp_path: Path, name: str) -> None:
    assert why(make(tmp_path / name, b"data")) == "partial name"


def test_partial_directory_name(tmp_path: Path) -> None:
    assert why(make_dir(tmp_path / "tmp-step-5", {".metadata": b"m"})) == "partial name"


def test_empty_file(tmp_path: Path) -> None:
    assert why(make(tmp_path / "step-1.pt", b"")) == "empty file"


def test_torch_zip_complete_vs_truncated(tmp_path: Path) -> None:
    good = torch_zip(tmp_path / "step-1.pt")
    assert why(good) == ""
    cut = tmp_path / "step-2.pth"
    make(cut, good.read_bytes()[: good.stat().st_size // 2])
    assert why(cut) == "truncated zip (torch.save)"


def test_legacy_pickle_accepted_by_size(tmp_path: Path) -> None:
    assert why(make(tmp_path / "step-1.bin", b"\x80\x02}q\x00.")) == ""


def test_safetensors(tmp_path: Path) -> None:
    full = safetensors_bytes()
    assert why(make(tmp_path / "a.safetensors", full)) == ""
    assert why(make(tmp_path / "b.safetensors", full[:-4])) == "truncated safetensors"
    assert why(make(tmp_path / "c.safetensors", full[:20])) == "truncated safetensors"
    assert why(make(tmp_path / "d.safetensors", full[:5])) == "truncated safetensors"


@pytest.mark.parametrize("data", [
    b"\xff" * 8 + b"junk",                                    # header length far over 100 MB
    struct.pack("<Q", 4) + b"{{{{" + b"\0" * 8,               # not JSON
    struct.pack("<Q", 2) + b"\xff\xfe",                       # not UTF-8
    safetensors_bytes([1, 2]),                                # not an object
    safetensors_bytes({"w": {"data_offsets": [8, 0]}}),       # backwards offsets
    safetensors_bytes({"w": {"data_offsets": "0-8"}}),        # offsets not a pair
])
def test_safetensors_garbage_header(tmp_path: Path, data: bytes) -> None:
    assert why(make(tmp_path / "m.safetensors", data)) == "corrupt safetensors header"


def test_safetensors_metadata_entry_is_not_a_tensor(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt"},
              "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    assert why(make(tmp_path / "m.safetensors", safetensors_bytes(header))) == ""


def test_directories(tmp_path: Path) -> None:
    assert why(make_dir(tmp_path / "dcp-1", {"__0_0.distcp": b"x", ".metadata": b"m"})) == ""
    assert why(make_dir(tmp_path / "checkpoint-2", {"trainer_state.json": b"{}"})) == ""
    no_marker = why(make_dir(tmp_path / "dcp-3", {"__0_0.distcp": b"x"}))
    assert no_marker.startswith("no completion marker (.metadata, trainer_state.json")
    partial_only = why(make_dir(tmp_path / "checkpoint-500", {"model.tmp": b"x"}))
    assert partial_only.startswith("no completion marker")
    assert why(make_dir(tmp_path / "checkpoint-4", {})) == "empty directory"
    any_dir = Rule(markers=())
    assert why(make_dir(tmp_path / "checkpoint-5", {"weights": b"x"}), any_dir) == ""
    assert why(make_dir(tmp_path / "checkpoint-6", {}), any_dir) == "empty directory"


def test_still_growing_file(tmp_path: Path) -> None:
    path = make(tmp_path / "step-1.pt", b"\x80\x02", mtime=NOW - 0.5)
    waits: list[float] = []

    def grow(seconds: float) -> None:
        waits.append(seconds)
        with open(path, "ab") as f:
            f.write(b"more")

    assert why(path, sleep=grow) == "still growing"
    assert waits == [RULE.settle_s]


def test_recent_but_unchanged_file_is_complete(tmp_path: Path) -> None:
    path = make(tmp_path / "step-1.pt", b"\x80\x02", mtime=NOW - 0.5)
    waits: list[float] = []
    assert why(path, sleep=waits.append) == ""
    assert waits == [RULE.settle_s]


def test_settled_file_does_not_wait(tmp_path: Path) -> None:
    assert why(make(tmp_path / "step-1.pt", b"\x80\x02")) == ""     # no_sleep would raise


def test_still_growing_directory(tmp_path: Path) -> None:
    # the dir itself is old; a recent child makes it recent
    d = make_dir(tmp_path / "dcp-1", {".metadata": b"m"})
    make(d / "__0_0.distcp", b"x", mtime=NOW - 0.1)
    os.utime(d, (OLD, OLD))
    assert why(d, sleep=lambda s: make(d / "__1_0.distcp", b"y", mtime=NOW)) == "still growing"


def test_unreadable_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert why(tmp_path / "missing.pt") == "unreadable: No such file or directory"
    path = make(tmp_path / "step-1.pt", b"PK\x03\x04")

    def denied(*args: object, **kw: object):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoints, "open", denied, raising=False)
    assert why(path) == "unreadable: Permission denied"


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "step-1.pt"
    os.mkfifo(fifo)
    assert why(fifo) == "not a regular file or directory"


def test_orders_by_step_when_all_have_one(tmp_path: Path) -> None:
    make(tmp_path / "step-10.pt", mtime=OLD)
    make(tmp_path / "step-9.pt", mtime=OLD + 100)         # newer file, older step
    make(tmp_path / "step-2.pt", mtime=OLD + 200)
    got = newest(tmp_path)
    assert got is not None and (got.step, got.mtime) == (10, OLD)
    assert got.path == str(tmp_path / "step-10.pt")


def test_same_step_orders_by_mtime(tmp_path: Path) -> None:
    make(tmp_path / "a-5.pt", mtime=OLD)
    make(tmp_path / "b-5.pt", mtime=OLD + 1)
    assert newest(tmp_path).path == str(tmp_path / "b-5.pt")


def test_orders_by_mtime_when_a_step_is_missing(tmp_path: Path) -> None:
    make(tmp_path / "step-10.pt", mtime=OLD)
    make(tmp_path / "final.pt", mtime=OLD + 100)
    got = newest(tmp_path)
    assert got is not None and (got.path, got.step) == (str(tmp_path / "final.pt"), -1)


def test_partial_names_do_not_switch_to_mtime_order(tmp_path: Path) -> None:
    make(tmp_path / "step-10.pt", mtime=OLD)
    make(tmp_path / "step-9.pt", mtime=OLD + 100)
    make(tmp_path / ".lock", mtime=OLD + 200)
    assert newest(tmp_path).path == str(tmp_path / "step-10.pt")


def test_pattern_limits_candidates(tmp_path: Path) -> None:
    make(tmp_path / "step-10.pt")
    make_dir(tmp_path / "checkpoint-3", {".metadata": b"m"})
    got = newest(tmp_path, Rule(pattern="checkpoint-*"))
    assert got is not None and got.path == str(tmp_path / "checkpoint-3")


def test_skips_are_reported_newest_first(tmp_path: Path) -> None:
    torch_zip(tmp_path / "step-3.pt")
    make(tmp_path / "step-4.pt", torch_zip(tmp_path / "full.zip").read_bytes()[:100])
    (tmp_path / "full.zip").unlink()
    make(tmp_path / "step-5.pt", b"")
    make(tmp_path / "step-6.pt.tmp", b"x")
    skips: list[tuple[str, str]] = []
    got = newest(tmp_path, on_skip=lambda p, r: skips.append((os.path.basename(p), r)))
    assert got is not None and got.step == 3
    assert skips == [("step-6.pt.tmp", "partial name"), ("step-5.pt", "empty file"),
                     ("step-4.pt", "truncated zip (torch.save)")]


def test_none_complete(tmp_path: Path) -> None:
    make(tmp_path / "step-1.pt", b"")
    assert newest(tmp_path) is None
    (tmp_path / "step-1.pt").unlink()
    assert newest(tmp_path) is None                    # an empty dir is not an error


def test_broken_symlink_skipped_and_good_symlink_followed(tmp_path: Path) -> None:
    target = make(tmp_path / "real.bin", b"\x80\x02")
    os.symlink(target, tmp_path / "step-2.pt")
    os.symlink(tmp_path / "gone.pt", tmp_path / "step-9.pt")
    skips: list[tuple[str, str]] = []
    got = newest(tmp_path, Rule(pattern="step-*"), on_skip=lambda p, r: skips.append((p, r)))
    assert got is not None and got.path == str(tmp_path / "step-2.pt")
    assert skips == [(str(tmp_path / "step-9.pt"), "unreadable: No such file or directory")]


def test_bad_directory_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointDirError, match=re.escape(f"checkpoint dir {missing} does not exist")):
        newest(missing)
    with pytest.raises(CheckpointDirError, match="is not a directory"):
        newest(make(tmp_path / "file"))
    assert issubclass(CheckpointDirError, ValueError)

    real_scandir = os.scandir

    def denied(path: str):
        if os.fspath(path) == str(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(checkpoints.os, "scandir", denied)    # works as root too
    with pytest.raises(CheckpointDirError,
                       match=re.escape(f"cannot read checkpoint dir {tmp_path}: Permission denied")):
        newest(tmp_path)


def test_many_entries_are_bounded(tmp_path: Path) -> None:
    for i in range(checkpoints.MAX_ENTRIES + 1):
        open(tmp_path / f"step-{i}", "wb").close()
    skips: list[str] = []
    assert newest(tmp_path, on_skip=lambda p, r: skips.append(r)) is None
    assert skips == ["empty file"] * checkpoints.MAX_ENTRIES
