"""Where a log reader stands, and saving it: ``LogFile``, ``FilePosition``, ``OffsetStore``.

A position names a file by (dev, inode) plus a hash of its first bytes, and the first
byte of the first line not yet returned. ``OffsetStore`` saves the positions together
with what the reader derived from the lines, atomically, so that after a crash both
come back from the same save (see ``watchdog_d.logs.tail``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .. import log

HEAD = 256               # bytes fingerprinted to tell a re-created file from the same one


def head_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def warn_once(warned: set[str], event: str, **kw: object) -> None:
    if event not in warned:
        warned.add(event)
        log.warn(event, **kw)


@dataclass
class FilePosition:
    dev: int
    inode: int
    offset: int                  # first byte of the first line not yet returned
    head_len: int = 0            # how many leading bytes head_hash covers
    head_hash: str = ""
    mtime_ns: int = 0            # lower bound of the file's last write (orders successors)
    skipping: bool = False       # inside an over-long line: drop bytes up to its newline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FilePosition:
        """ValueError on a bad value, TypeError when dev, inode or offset is missing."""
        p = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        for f in fields(cls):
            v: Any = getattr(p, f.name)
            if type(v) is not {"bool": bool, "str": str}.get(str(f.type), int) or (isinstance(v, int) and v < 0):
                raise ValueError(f"bad {f.name}: {v!r}")   # (a bool is no int here)
        return p


class LogFile:
    """One open file of the chain; ``index`` is where it was last seen (0 = PATH)."""
    __slots__ = ("fd", "dev", "ino", "fid", "head", "index")

    def __init__(self, fd: int, st: os.stat_result, index: int):
        self.fd, self.dev, self.ino, self.index = fd, st.st_dev, st.st_ino, index
        self.fid, self.head = f"{st.st_dev}:{st.st_ino}", b""   # head: its first HEAD bytes

    def same(self, st: os.stat_result) -> bool:
        return st.st_dev == self.dev and st.st_ino == self.ino

    def grow_head(self, size: int) -> None:
        if len(self.head) < HEAD and size > len(self.head):
            self.head = os.pread(self.fd, HEAD, 0)

    def head_intact(self) -> bool:
        # catches "truncated, then rewritten past our offset" when the first bytes differ
        return not self.head or os.pread(self.fd, len(self.head), 0) == self.head

    def pos(self, offset: int, skipping: bool) -> FilePosition:
        mtime = os.fstat(self.fd).st_mtime_ns
        return FilePosition(self.dev, self.ino, offset, len(self.head), head_hash(self.head), mtime, skipping)



class OffsetStore:
    """Positions plus the caller's derived state (``payload``), saved together atomically."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)

    def load(self) -> dict[str, dict[str, Any]]:
        return self.load_all()[0]           # load_all() also returns the payload

    def load_all(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """(positions, payload) of the last save; ({}, {}) with one warning if unusable."""
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read(64 << 20))     # a larger file is cut: invalid JSON
            positions, payload = doc["positions"], doc.get("payload", {})
            if not isinstance(positions, dict) or not isinstance(payload, dict):
                raise ValueError("not an object")
            for value in positions.values():
                FilePosition.from_dict(value)      # ValueError/TypeError on a bad entry
            return positions, payload
        except FileNotFoundError:
            log.warn("offsets_missing", path=self.path, action="reading logs from the start")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warn("offsets_unreadable", path=self.path, error=str(e)[:200], action="reading logs from the start")
        return {}, {}

    def save(self, positions: Mapping[str, dict[str, Any] | FilePosition],
             payload: dict[str, Any] | None = None) -> None:
        """Write temp + fsync + rename + fsync(dir). Raises OSError; the old save then stays."""
        doc = {"version": 1, "payload": payload or {},
               "positions": {k: v.to_dict() if isinstance(v, FilePosition) else v for k, v in positions.items()}}
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(doc, separators=(",", ":")).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)                # the rename itself survives a power cut
        finally:
            os.close(dfd)
