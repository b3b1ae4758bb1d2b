"""The newest complete checkpoint in a checkpoint directory (what a relaunch resumes from).

``newest_complete(dir)`` looks at the entries directly in ``dir``, newest first, and
returns the first one ``why_incomplete`` has nothing against. Stdlib only: the watchdog
never imports torch, so formats are checked by their framing, not by loading them.
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import stat
import struct
import time
import zipfile
from dataclasses import dataclass
from typing import Callable

from ..config import Config

MAX_ENTRIES = 10_000                  # entries looked at per directory (bounds the work)
MAX_SAFETENSORS_HEADER = 100 << 20    # a larger header length is corruption, not a header
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointDirError(ValueError):
    """The checkpoint directory itself is missing or unreadable (the caller alerts)."""


_DEFAULT = Config()


@dataclass(frozen=True)
class Rule:
    """What counts as a checkpoint in a directory, and what counts as complete
    (defaults: the config's ``checkpoint_glob``, ``checkpoint_partial``, ``checkpoint_markers``)."""
    pattern: str = _DEFAULT.checkpoint_glob        # fnmatch glob on entry names directly in the dir
    partial: tuple[str, ...] = tuple(_DEFAULT.checkpoint_partial)
    markers: tuple[str, ...] = tuple(_DEFAULT.checkpoint_markers)  # (): any non-empty directory
    settle_s: float = 2.0  # modified more recently than this: looked at twice, settle_s apart

    @classmethod
    def of(cls, cfg: Config) -> "Rule":
        return cls(pattern=cfg.checkpoint_glob, partial=tuple(cfg.checkpoint_partial),
                   markers=tuple(cfg.checkpoint_markers))


@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int       # from the name, -1 when it has none
    mtime: float


_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]*$")
_DIGITS = re.compile(r"\d+")


def step_of(name: str) -> int:
    """The last run of digits in ``name`` (step-10.pt -> 10, iter_0000100 -> 100), else -1."""
    # digits inside a file extension ("model.h5") are not a step
    runs = _DIGITS.findall(_EXTENSION.sub("", name))
    return int(runs[-1]) if runs else -1


def _matches(name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _unreadable(e: OSError) -> str:
    return f"unreadable: {e.strerror or e}"


def _snapshot(path: str) -> tuple[int, int, int]:
    """(size, mtime_ns, entry count) of a file, or of a directory and its direct children."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime_ns, 1
    size, mtime, count = 0, st.st_mtime_ns, 0
    with os.scandir(path) as it:
        for entry in itertools.islice(it, MAX_ENTRIES):
            count += 1
            try:
                child = entry.stat()
            except OSError:  # a broken link inside counts by its presence only
                continue
            size += child.st_size
            mtime = max(mtime, child.st_mtime_ns)
    return size, mtime, count


def _torch_reason(path: str) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save's zip format ends with the zip end record: a truncated file lacks it.
    # Anything else is the legacy pickle format, which has no framing to check.
    if magic == ZIP_MAGIC and not zipfile.is_zipfile(path):
        return "truncated zip (torch.save)"
    return ""


def _safetensors_end(header: bytes) -> int:
    """The largest data end offset in a safetensors header; ValueError when malformed."""
    tensors = json.loads(header.decode("utf-8"))
    if not isinstance(tensors, dict):
        raise ValueError("header is not an object")
    end = 0
    for key, info in tensors.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"bad data_offsets for {key!r}")
        end = max(end, offsets[1])
    return end


def _safetensors_reason(path: str, size: int) -> str:
    # layout: u64 little-endian header length N, N bytes of JSON, then the tensor data
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "truncated safetensors"
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER:
            return "corrupt safetensors header"
        if size < 8 + n:
            return "truncated safetensors"
        header = f.read(n)
    try:
        end = _safetensors_end(header)
    except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors too
        return "corrupt safetensors header"
    return "" if size >= 8 + n + end else "truncated safetensors"


def _dir_reason(path: str, rule: Rule) -> str:
    with os.scandir(path) as it:
        if next(it, None) is None:
            return "empty directory"
    if rule.markers and not any(os.path.isfile(os.path.join(path, m)) for m in rule.markers):
        return f"no completion marker ({', '.join(rule.markers)})"
    return ""


def _file_reason(path: str, size: int) -> str:
    if size == 0:
        return "empty file"
    lower = path.lower()
    if lower.endswith(TORCH_SUFFIXES):
        return _torch_reason(path)
    if lower.endswith(".safetensors"):
        return _safetensors_reason(path, size)
    return ""


def why_incomplete(path: str, rule: Rule, *, now: float | None = None,
                   sleep: Callable[[float], object] = time.sleep) -> str:
    """Empty when ``path`` looks like a complete checkpoint, else a short reason.
    Never raises for a bad entry. Symlinks are followed."""
    name = os.path.basename(os.path.normpath(path))
    if _matches(name, rule.partial):
        return "partial name"
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            reason = _dir_reason(path, rule)
        elif stat.S_ISREG(st.st_mode):
            reason = _file_reason(path, st.st_size)
        else:  # never open a FIFO or a device: that could block
            return "not a regular file or directory"
        if reason:
            return reason
        # cheap checks first; only a candidate that passed them may pay for a settle wait
        before = _snapshot(path)
        newest = before[1] / 1e9
        if rule.settle_s > 0 and (time.time() if now is None else now) - newest < rule.settle_s:
            sleep(rule.settle_s)
            if _snapshot(path) != before:
                return "still growing"
    except OSError as e:
        return _unreadable(e)
    return ""


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(itertools.islice(it, MAX_ENTRIES))
    except FileNotFoundError:
        raise CheckpointDirError(f"checkpoint dir {directory} does not exist") from None
    except NotADirectoryError:
        raise CheckpointDirError(f"checkpoint dir {directory} is not a directory") from None
    except OSError as e:
        raise CheckpointDirError(f"cannot read checkpoint dir {directory}: {e.strerror or e}") from None


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0  # broken link: sorts as oldest, why_incomplete reports it


def newest_complete(directory: str, rule: Rule = Rule(), *, now: float | None = None,
                    sleep: Callable[[float], object] = time.sleep,
                    on_skip: Callable[[str, str], object] | None = None) -> Checkpoint | None:
    """The newest complete checkpoint directly in ``directory``, or None. Raises
    ``CheckpointDirError`` when the directory is missing or unreadable."""
    candidates = [Checkpoint(os.path.join(directory, e.name), step_of(e.name), _mtime(e))
                  for e in _scan(directory) if fnmatch.fnmatchcase(e.name, rule.pattern)]
    # Order by step only when every real candidate has one. Partial names (".lock",
    # "tmpXYZ") never win, so they do not get a say; in step order they sort by their own
    # step, or last when they have none.
    real = [c for c in candidates if not _matches(os.path.basename(c.path), rule.partial)]
    if all(c.step >= 0 for c in real):
        candidates.sort(key=lambda c: (c.step, c.mtime, c.path), reverse=True)
    else:
        candidates.sort(key=lambda c: (c.mtime, c.path), reverse=True)
    for c in candidates:
        reason = why_incomplete(c.path, rule, now=now, sleep=sleep)
        if not reason:
            return c
        if on_skip is not None:
            on_skip(c.path, reason)
    return None
