"""Reading rank logs from persisted offsets: every complete line exactly once.

A ``Tailer`` follows one path across the ways a log file changes under a reader:
rotation by rename (``PATH`` -> ``PATH.1`` -> ``PATH.2`` ..., as ``watchdog_d.tee`` does),
truncation in place, deletion and re-creation. Files are identified by (dev, inode) plus
a hash of their first bytes, so a re-used inode number is not mistaken for the old file.

Exactly-once across agent restarts: ``position`` always points at the first byte of the
first line not yet returned. The agent saves it together with whatever it derived from
the returned lines in one atomic ``OffsetStore.save``; after a crash both come back from
the same save, so lines are neither re-derived nor lost.

Bytes stay bytes (no decoding), and memory stays bounded: at most one read chunk plus
one ``max_line`` pending line per file, whatever the file holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, fields, replace
from fnmatch import translate as fnmatch_translate
from typing import Any, Callable, Mapping

from . import log

HEAD = 256               # bytes fingerprinted to tell a re-created file from the same one
CHUNK = 1 << 20          # one pread; bounds memory for a 50 MB line without a newline


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


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
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v: Any = d[f.name]
            want: type = {"bool": bool, "str": str}.get(str(f.type), int)
            if type(v) is not want or (isinstance(v, int) and v < 0):   # bool is no int here
                raise ValueError(f"bad {f.name}: {v!r}")
            kw[f.name] = v
        for need in ("dev", "inode", "offset"):
            if need not in kw:
                raise ValueError(f"missing {need}")
        return cls(**kw)


@dataclass(slots=True)
class Line:
    offset: int          # where the line starts in the file named by file_id
    data: bytes          # without the newline; at most max_line bytes
    truncated: bool      # the line was longer than max_line; the rest was skipped
    file_id: str         # "dev:inode"


class _File:
    """One open file of the chain; ``index`` is where it was last seen (0 = PATH)."""
    __slots__ = ("fd", "dev", "ino", "fid", "head", "index")

    def __init__(self, fd: int, st: os.stat_result, index: int):
        self.fd, self.dev, self.ino, self.index = fd, st.st_dev, st.st_ino, index
        self.fid = f"{st.st_dev}:{st.st_ino}"
        self.head = b""

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
        return FilePosition(self.dev, self.ino, offset, len(self.head), _hash(self.head), mtime, skipping)


class Tailer:
    def __init__(self, path: str | os.PathLike[str], position: FilePosition | None = None,
                 max_line: int = 65536, max_backups: int = 32):
        self.path = os.fspath(path)
        self.max_line = max(1, max_line)
        self.max_backups = max_backups       # PATH.1 .. PATH.N searched for a rotated file
        self.bytes_read = 0
        self._cur: _File | None = None
        self._off = 0                        # next byte to read in _cur
        self._skipping = False
        self._buf = bytearray()              # incomplete last line (<= max_line bytes)
        self._buf_at: tuple[FilePosition, str] | None = None   # where _buf starts
        self._restore = position             # not yet matched to a file
        self._warned: set[str] = set()

    # -- public ---------------------------------------------------------------------------
    @property
    def position(self) -> FilePosition | None:
        if self._buf and self._buf_at:
            return replace(self._buf_at[0])
        if self._cur:
            return self._cur.pos(self._off, self._skipping)
        return replace(self._restore) if self._restore else None

    def read(self, max_bytes: int = 4 << 20, *, flush_partial: bool = False) -> list[Line]:
        """Complete lines appended since the last call (reads at most ``max_bytes``).

        ``flush_partial``: also return an incomplete last line (call once the writer is
        known to be gone, e.g. the rank died mid-line)."""
        lines: list[Line] = []
        budget = max(1, max_bytes)
        at_end = False
        # each pass reads >= 1 byte or moves to another file; both are bounded
        for _ in range(budget // CHUNK + 2 * self.max_backups + 8):
            cur = self._cur or self._attach()
            if cur is None:
                at_end = True
                break
            size = os.fstat(cur.fd).st_size
            if size < self._off or not cur.head_intact():      # truncated in place
                self._flush_pending(lines)
                self._off, self._skipping, cur.head = 0, False, b""
            cur.grow_head(size)
            if self._off < size:
                if budget <= 0:
                    break
                data = os.pread(cur.fd, min(budget, size - self._off, CHUNK), self._off)
                if not data:
                    break
                self._consume(data, lines)
                budget -= len(data)
                continue
            if not self._advance(lines):
                at_end = True
                break
        if flush_partial and at_end:
            self._flush_pending(lines)
        return lines

    def close(self) -> None:
        if self._cur is not None:
            self._restore = self.position
            os.close(self._cur.fd)
            self._cur = None
            self._buf.clear()
            self._buf_at = None

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files ----------------------------------------------------------------------------
    def _name(self, index: int) -> str:
        return self.path if index == 0 else f"{self.path}.{index}"

    def _scan(self) -> dict[int, os.stat_result]:
        """PATH and its backups that exist now (gaps allowed: a rotation may be under way)."""
        found = {}
        for i in range(self.max_backups + 1):
            try:
                found[i] = os.stat(self._name(i))
            except OSError:
                pass
        return found

    def _open(self, index: int, expect: os.stat_result | None = None) -> _File | None:
        name = self._name(index)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block us
        except FileNotFoundError:
            return None
        except OSError as e:
            self._warn_once("log_unreadable", path=name, error=e.strerror)
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (expect is not None and
                                            (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino)):
            os.close(fd)
            if not stat.S_ISREG(st.st_mode):
                self._warn_once("log_not_regular_file", path=name)
            return None                  # or renamed between stat and open: retry next read
        f = _File(fd, st, index)
        f.grow_head(st.st_size)
        return f

    def _attach(self) -> _File | None:
        """Open the file to read: the restored one wherever rotation put it, else PATH."""
        rp, scan = self._restore, self._scan()
        if not scan:
            return None                  # nothing there yet
        start = max(scan)                # never read: the oldest backup first, no line skipped
        if rp is not None:
            for idx, st in sorted(scan.items()):
                if (st.st_dev, st.st_ino) != (rp.dev, rp.inode):
                    continue
                f = self._open(idx, st)
                if f and _hash(os.pread(f.fd, rp.head_len, 0)) == rp.head_hash:
                    self._cur, self._off, self._skipping, self._restore = f, rp.offset, rp.skipping, None
                    return f
                if f:
                    os.close(f.fd)       # same inode number, other content: a new file
            if 0 not in scan:
                return None              # nothing there yet: keep the position for later
            # the saved file is gone: its unread successors are the backups written after it
            start = self._newer_than(rp.mtime_ns, scan) or 0
            self._restore = None
            if rp.offset > 0:
                self._warn_once("log_position_lost", path=self.path, start=self._name(start))
        f = self._open(start)
        if f is not None:
            self._cur, self._off, self._skipping = f, 0, False
        return f

    @staticmethod
    def _newer_than(mtime_ns: int, scan: dict[int, os.stat_result]) -> int | None:
        """Oldest backup written after mtime_ns, else PATH (None: nothing at all)."""
        newer = [i for i, st in scan.items() if i >= 1 and st.st_mtime_ns > mtime_ns]
        return max(newer) if newer else (0 if 0 in scan else None)

    def _advance(self, lines: list[Line]) -> bool:
        """At the end of the current file: move to its successor if it has one."""
        cur = self._cur
        assert cur is not None
        try:
            if cur.same(os.stat(self.path)):
                cur.index = 0
                return False             # the live file: wait for more
        except OSError:
            pass
        fst = os.fstat(cur.fd)
        if fst.st_size > self._off:
            return True                  # written to just before the rename: finish it first
        scan = self._scan()
        where = [i for i, st in scan.items() if cur.same(st)]
        if where:                        # rotated: the next newer file is one index down
            cur.index = min(where)
            nxt: int | None = cur.index - 1 if cur.index - 1 in scan else None
            join = True
        elif cur.index >= 1:             # dropped off the end by a rotation: PATH.K follows it
            nxt = max((i for i in scan if i >= 1), default=0 if 0 in scan else None)
            join = True
        else:                            # deleted (or renamed away): a new file, if any
            nxt, join = self._newer_than(fst.st_mtime_ns, scan), False
        if nxt is None:
            return False                 # rotation under way, or deleted and not re-created
        f = self._open(nxt, scan.get(nxt))
        if f is None:
            return False
        if not join:                     # unrelated file: a pending fragment is a line of its own
            self._flush_pending(lines)
            self._skipping = False
        # join: a line the tee split at rotation continues in the next file
        os.close(cur.fd)
        self._cur, self._off = f, 0
        return True

    # -- lines ----------------------------------------------------------------------------
    def _flush_pending(self, lines: list[Line]) -> None:
        if self._buf and self._buf_at:
            lines.append(Line(self._buf_at[0].offset, bytes(self._buf), False, self._buf_at[1]))
        self._buf.clear()
        self._buf_at = None

    def _consume(self, data: bytes, lines: list[Line]) -> None:
        cur = self._cur
        assert cur is not None
        self.bytes_read += len(data)
        ml, fid, append = self.max_line, cur.fid, lines.append
        parts = data.split(b"\n")
        tail = parts.pop()               # bytes after the last newline (maybe empty)
        pos, first = self._off, 0
        if parts and (self._skipping or self._buf):
            head = parts[0]
            if self._skipping:
                self._skipping = False
            else:
                assert self._buf_at is not None
                room = ml - len(self._buf)
                whole = bytes(self._buf) + head[:room]
                append(Line(self._buf_at[0].offset, whole, len(head) > room, self._buf_at[1]))
                self._buf.clear()
                self._buf_at = None
            pos, first = pos + len(head) + 1, 1
        for i in range(first, len(parts)):          # the hot loop: complete lines
            part = parts[i]
            n = len(part)
            append(Line(pos, part[:ml], True, fid) if n > ml else Line(pos, part, False, fid))
            pos += n + 1
        if tail and not self._skipping:
            if not self._buf:
                self._buf_at = (cur.pos(pos, False), fid)
            room = ml - len(self._buf)
            if len(tail) > room:         # over-long: emit the cut, skip the rest to its newline
                assert self._buf_at is not None
                append(Line(self._buf_at[0].offset, bytes(self._buf) + tail[:room], True, self._buf_at[1]))
                self._buf.clear()
                self._buf_at = None
                self._skipping = True
            else:
                self._buf += tail
        self._off += len(data)

    def _warn_once(self, event: str, **kw: object) -> None:
        if event not in self._warned:
            self._warned.add(event)
            log.warn(event, **kw)


class OffsetStore:
    """Positions plus the caller's derived state, saved together atomically."""
    MAX_SIZE = 64 << 20

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)

    def load(self) -> dict[str, dict[str, Any]]:
        return self.load_all()[0]

    def load_all(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """(positions, payload) of the last save; ({}, {}) with one warning if unusable."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(self.MAX_SIZE + 1)
            if len(raw) > self.MAX_SIZE:
                raise ValueError("file too large")
            doc = json.loads(raw)
            positions, payload = doc["positions"], doc.get("payload", {})
            if not isinstance(positions, dict) or not isinstance(payload, dict):
                raise ValueError("not an object")
            for key, value in positions.items():
                FilePosition.from_dict(value)      # ValueError/TypeError on a bad entry
            return positions, payload
        except FileNotFoundError:
            log.warn("offsets_missing", path=self.path, action="reading logs from the start")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warn("offsets_unreadable", path=self.path, error=str(e)[:200],
                     action="reading logs from the start")
        return {}, {}

    def save(self, positions: Mapping[str, dict[str, Any] | FilePosition], payload: dict[str, Any] | None = None) -> None:
        """Write temp + fsync + rename + fsync(dir). Raises OSError; the old save then stays."""
        doc = {"version": 1,
               "positions": {k: v.to_dict() if isinstance(v, FilePosition) else v for k, v in positions.items()},
               "payload": payload or {}}
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


_DIGITS = re.compile(r"(\d+)")


def _natural(name: str) -> list[Any]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(name)]


class DirectoryTailer:
    """Tails up to ``max_files`` files of ``root`` matching ``pattern`` (not recursive).

    The directory is listed at most every ``rescan_s`` seconds and at most
    ``max_entries`` entries are looked at; files beyond the cap are skipped (one warning)."""

    def __init__(self, root: str | os.PathLike[str], pattern: str = "rank-*.log", max_files: int = 1024,
                 positions: Mapping[str, dict[str, Any]] | None = None, *, max_line: int = 65536,
                 max_entries: int = 100_000, rescan_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root, self.pattern, self.max_files = os.fspath(root), pattern, max_files
        self.max_line, self.max_entries, self.rescan_s, self.clock = max_line, max_entries, rescan_s, clock
        self._match = re.compile(fnmatch_translate(pattern)).match
        self._dir_mtime: int | None = None          # unchanged directory: no need to list it
        self._stored = dict(positions or {})         # positions of files not tailed right now
        self._tailers: dict[str, Tailer] = {}
        self._next_scan = float("-inf")
        self._turn = 0
        self._retire: list[str] = []
        self._warned: set[str] = set()

    def read(self, max_bytes: int = 16 << 20, *, flush_partial: bool = False) -> dict[str, list[Line]]:
        """Lines per file name; at most ``max_bytes`` in all, files served in turn."""
        if self.clock() >= self._next_scan:
            self._rescan()
        names = sorted(self._tailers, key=_natural)
        out = self._read(names, max_bytes, flush_partial)
        for name in self._retire:        # gone from the listing: drained above, now let go
            t = self._tailers.pop(name)
            p = t.position
            if p is not None:            # back by the next rescan (a rotation window)? resume
                self._stored[name] = p.to_dict()
            t.close()
        self._retire = []
        return out

    def _read(self, names: list[str], max_bytes: int, flush_partial: bool) -> dict[str, list[Line]]:
        out: dict[str, list[Line]] = {}
        if not names:
            return out
        share = max(64 << 10, max_bytes // len(names))
        left = max_bytes
        self._turn = (self._turn + 1) % len(names)
        for name in names[self._turn:] + names[:self._turn]:
            if left <= 0:
                break
            t = self._tailers[name]
            before = t.bytes_read
            got = t.read(min(share, left), flush_partial=flush_partial)
            left -= t.bytes_read - before
            if got:
                out[name] = got
        return out

    def positions(self) -> dict[str, dict[str, Any]]:
        result = dict(self._stored)
        for name, t in self._tailers.items():
            p = t.position
            if p is not None:
                result[name] = p.to_dict()
        return result

    def close(self) -> None:
        for name, t in self._tailers.items():
            p = t.position
            if p is not None:
                self._stored[name] = p.to_dict()
            t.close()
        self._tailers.clear()

    def _rescan(self) -> None:
        self._next_scan = self.clock() + self.rescan_s
        listed: list[str] = []
        match = self._match
        try:
            mtime = os.stat(self.root).st_mtime_ns
            if mtime == self._dir_mtime and not self._retire:
                return
            # an mtime within the last second may not show a change made in the same tick
            self._dir_mtime = mtime if time.time_ns() - mtime > 1_000_000_000 else None
            with os.scandir(self.root) as it:
                for n, entry in enumerate(it):
                    if n >= self.max_entries:
                        self._warn_once("log_dir_truncated", root=self.root, looked_at=n)
                        break
                    if match(entry.name) and entry.is_file():
                        listed.append(entry.name)
        except OSError as e:
            self._warn_once("log_dir_unreadable", root=self.root, error=e.strerror)
            return
        listed.sort(key=_natural)
        keep, skipped = listed[:self.max_files], listed[self.max_files:]
        if skipped:
            self._warn_once("log_files_skipped", root=self.root, tailed=len(keep), skipped=len(skipped),
                            first_skipped=skipped[0], max_files=self.max_files)
        present = set(listed)
        self._stored = {k: v for k, v in self._stored.items() if k in present}
        self._retire = [name for name in self._tailers if name not in present]
        for name in keep:
            if name in self._tailers or len(self._tailers) - len(self._retire) >= self.max_files:
                continue
            saved = self._stored.pop(name, None)
            pos = None
            if saved is not None:
                try:
                    pos = FilePosition.from_dict(saved)
                except (ValueError, TypeError):
                    self._warn_once("log_position_bad", file=name)
            self._tailers[name] = Tailer(os.path.join(self.root, name), pos, self.max_line)

    def _warn_once(self, event: str, **kw: object) -> None:
        if event not in self._warned:
            self._warned.add(event)
            log.warn(event, **kw)
