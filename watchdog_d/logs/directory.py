"""Tailing every rank log of one directory: a ``logtail.Tailer`` per file, a shared
read budget (the least-read files first), files found by listing the directory
only when it changed."""
from __future__ import annotations

import os
import re
import time
from fnmatch import translate as fnmatch_translate
from typing import Any, Callable, Mapping, TypeVar

from .files import FilePosition, warn_once as _warn_once
from .tail import Block, Line, Tailer

__all__ = ["DirectoryTailer"]

_T = TypeVar("_T")


class DirectoryTailer:
    """Tails up to ``max_files`` files of ``root`` matching ``pattern`` (not recursive).

    Listed at most every ``rescan_s`` seconds and only when the directory's mtime moved, at
    most ``max_entries`` entries; files beyond the cap (by name, rank-2 before rank-10) are
    skipped with one warning."""

    def __init__(self, root: str | os.PathLike[str], pattern: str = "rank-*.log", max_files: int = 1024,
                 positions: Mapping[str, dict[str, Any]] | None = None, *, max_line: int = 65536,
                 max_entries: int = 100_000, rescan_s: float = 2.0):
        self.root, self.max_files, self.max_line = os.fspath(root), max_files, max_line
        self.max_entries, self.rescan_s = max_entries, rescan_s
        self._match = re.compile(fnmatch_translate(pattern)).match
        self._dir_mtime: int | None = None          # unchanged directory: no need to list it
        self._stored = dict(positions or {})         # positions of files not tailed right now
        self._tailers: dict[str, Tailer] = {}
        self._next_scan = float("-inf")
        self._warned: set[str] = set()
        self.bytes_read = 0                          # by all tailers, over this object's life

    def read_blocks(self, max_bytes: int = 16 << 20, *, flush_partial: bool = False) -> dict[str, list[Block]]:
        """Blocks per file name; at most ``max_bytes`` read in all, the least-read files first."""
        return self._read(Tailer.read_blocks, max_bytes, flush_partial)

    def read(self, max_bytes: int = 16 << 20, *, flush_partial: bool = False) -> dict[str, list[Line]]:
        """Lines per file name, as ``read_blocks``."""
        return self._read(Tailer.read, max_bytes, flush_partial)

    def _read(self, how: Callable[..., list[_T]], max_bytes: int, flush_partial: bool) -> dict[str, list[_T]]:
        gone = self._rescan() if time.monotonic() >= self._next_scan else []
        out: dict[str, list[_T]] = {}
        left, share = max_bytes, max(64 << 10, max_bytes // max(1, len(self._tailers)))
        for name in sorted(self._tailers, key=lambda n: self._tailers[n].bytes_read):
            t, before = self._tailers[name], self._tailers[name].bytes_read
            if left > 0 and (got := how(t, min(share, left), flush_partial=flush_partial)):
                out[name] = got
            left -= t.bytes_read - before
            self.bytes_read += t.bytes_read - before
        for name in gone:                # gone from the listing: drained above, now let go
            self._let_go(name)           # (back by the next rescan, e.g. a rotation window: resumes)
        return out

    def positions(self) -> dict[str, dict[str, Any]]:
        live = {name: p.to_dict() for name, t in self._tailers.items() if (p := t.position)}
        return {**self._stored, **live}

    def close(self) -> None:
        for name in list(self._tailers):
            self._let_go(name)

    def _let_go(self, name: str) -> None:
        t = self._tailers.pop(name)
        if p := t.position:
            self._stored[name] = p.to_dict()
        t.close()

    def _rescan(self) -> list[str]:
        """Start tailing new files; returns the tailed names that are gone."""
        self._next_scan = time.monotonic() + self.rescan_s
        listed: list[str] = []
        try:
            mtime = os.stat(self.root).st_mtime_ns
            if mtime == self._dir_mtime:
                return []
            # an mtime within the last second may not show a change made in the same tick
            self._dir_mtime = mtime if time.time_ns() - mtime > 1_000_000_000 else None
            with os.scandir(self.root) as it:
                for n, entry in enumerate(it):
                    if n >= self.max_entries:
                        _warn_once(self._warned, "log_dir_truncated", root=self.root, looked_at=n)
                        break
                    if self._match(entry.name) and entry.is_file():
                        listed.append(entry.name)
        except OSError as e:
            _warn_once(self._warned, "log_dir_unreadable", root=self.root, error=e.strerror)
            return []
        listed.sort(key=lambda n: (len(n), n))      # rank-2 before rank-10
        if skipped := listed[self.max_files:]:
            _warn_once(self._warned, "log_files_skipped", root=self.root, tailed=self.max_files,
                       skipped=len(skipped), first_skipped=skipped[0])
        present = set(listed)
        self._stored = {k: v for k, v in self._stored.items() if k in present}
        gone = [name for name in self._tailers if name not in present]
        for name in listed[:self.max_files]:
            if name in self._tailers or len(self._tailers) - len(gone) >= self.max_files:
                continue
            saved, pos = self._stored.pop(name, None), None
            try:
                pos = FilePosition.from_dict(saved) if saved is not None else None
            except (ValueError, TypeError):
                _warn_once(self._warned, "log_position_bad", file=name)
            self._tailers[name] = Tailer(os.path.join(self.root, name), pos, self.max_line)
        return gone
