"""Reading rank logs from persisted offsets: every complete line exactly once.

A ``Tailer`` follows one path through rotation by rename (PATH -> PATH.1 -> PATH.2, as
``watchdog_d.rank.tee`` does), truncation, deletion and re-creation; a file is known by (dev,
inode) plus a hash of its first bytes. ``position`` is the first byte of the first line
not yet returned: saved in one ``OffsetStore.save`` with what the agent derived from the
lines, a restart neither loses nor repeats a line. Bytes stay bytes; memory is bounded.
``read_blocks`` gives runs of lines as one bytes object (no object per line); ``read`` Lines.
A directory of such files: ``watchdog_d.logs.directory.DirectoryTailer``.
"""
from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field, replace

from .files import FilePosition, OffsetStore  # noqa: F401  (re-exported)
from .files import LogFile as _File, head_hash as _hash, warn_once as _warn_once

__all__ = ["Block", "FilePosition", "Line", "OffsetStore", "Tailer"]

CHUNK = 1 << 20          # one pread; bounds memory for a 50 MB line without a newline


@dataclass(slots=True)
class Line:
    offset: int          # where the line starts in the file named by file_id
    data: bytes          # without the newline; at most max_line bytes
    truncated: bool      # the line was longer than max_line; the rest was skipped
    file_id: str         # "dev:inode"


@dataclass(slots=True)
class Block:
    """Whole lines, each ending with b"\\n"; the i-th byte of ``data`` is at ``offset + i``
    of file ``file_id``, so a line starts at offset + its index. Exceptions, each a block of
    one line: a line longer than max_line, cut there (``truncated_lines`` = 1; the rest was
    skipped); a line the writer's rotation split (it starts in file_id, goes on in the
    next file); a last line without newline returned by ``flush_partial`` (b"\\n" added)."""
    offset: int
    data: bytes
    file_id: str         # "dev:inode" of the file the first line starts in
    truncated_lines: int = 0
    _lines: int = field(default=-1, repr=False, compare=False)

    @property
    def lines(self) -> int:
        """data.count(b"\\n"), counted when first asked: the agent counts them while
        scanning (``Catalogue.scan_counted``) instead of in a pass of its own."""
        if self._lines < 0:
            self._lines = self.data.count(b"\n")
        return self._lines


class _Blocks:
    """Collects a read's blocks, merging a run that continues the previous one in the file."""
    __slots__ = ("done", "parts", "fid", "at", "end")

    def __init__(self) -> None:
        self.done: list[Block] = []
        self.parts, self.fid, self.at, self.end = [], "", 0, 0

    def run(self, at: int, fid: str, data: bytes) -> None:
        if self.parts and at == self.end and fid == self.fid:
            self.parts.append(data)
        else:
            self._close()
            self.parts, self.fid, self.at = [data], fid, at
        self.end = at + len(data)

    def alone(self, at: int, fid: str, line: bytes, cut: bool) -> None:
        self._close()
        self.done.append(Block(at, line + b"\n", fid, int(cut), 1))

    def _close(self) -> None:
        if self.parts:
            data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self.done.append(Block(self.at, data, self.fid))
            self.parts = []

    def result(self) -> list[Block]:
        self._close()
        return self.done


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
        self._buf = bytearray()              # incomplete last line (<= max_line + 1 bytes)
        self._buf_at: tuple[FilePosition, str] | None = None   # where _buf starts, if pending
        self._restore = position             # not yet matched to a file
        self._warned: set[str] = set()

    @property
    def position(self) -> FilePosition | None:
        if self._buf_at:
            return replace(self._buf_at[0])
        if self._cur:
            return self._cur.pos(self._off, self._skipping)
        return replace(self._restore) if self._restore else None

    def read_blocks(self, max_bytes: int = 4 << 20, *, flush_partial: bool = False) -> list[Block]:
        """Complete lines since the last call (at most ``max_bytes`` read). ``flush_partial``:
        also an incomplete last line (once the writer is known gone, e.g. died mid-line)."""
        out = _Blocks()
        budget = max(1, max_bytes)
        # each pass reads >= 1 byte or moves to another file; both are bounded
        for _ in range(budget // CHUNK + 2 * self.max_backups + 8):
            if (cur := self._cur or self._attach()) is None:
                break
            size = os.fstat(cur.fd).st_size
            if size < self._off or not cur.head_intact():      # truncated in place
                self._emit_pending(out)
                self._off, self._skipping, cur.head = 0, False, b""
            cur.grow_head(size)
            if self._off < size:
                data = os.pread(cur.fd, min(budget, size - self._off, CHUNK), self._off) if budget > 0 else b""
                if not data:
                    break
                self._consume(data, out)
                budget -= len(data)
            elif not self._advance(out):
                break
        if flush_partial and budget > 0:     # stopped at the end, not for the budget
            self._emit_pending(out)
        return out.result()

    def read(self, max_bytes: int = 4 << 20, *, flush_partial: bool = False) -> list[Line]:
        """``read_blocks``, one ``Line`` per line (without its newline)."""
        lines: list[Line] = []
        for b in self.read_blocks(max_bytes, flush_partial=flush_partial):
            pos, cut, fid = b.offset, b.truncated_lines > 0, b.file_id
            for part in b.data[:-1].split(b"\n"):
                lines.append(Line(pos, part, cut, fid))
                pos += len(part) + 1
        return lines

    def close(self) -> None:
        if self._cur is not None:
            self._restore = self.position
            os.close(self._cur.fd)
            self._cur, self._buf_at = None, None
            self._buf.clear()

    def _name(self, index: int) -> str:
        return self.path if index == 0 else f"{self.path}.{index}"

    def _scan(self) -> dict[int, os.stat_result]:
        """PATH and its backups that exist now (gaps allowed: a rotation may be under way)."""
        found = {}
        for i in range(self.max_backups + 1):
            with contextlib.suppress(OSError):
                found[i] = os.stat(self._name(i))
        return found

    def _open(self, index: int, expect: os.stat_result | None = None) -> _File | None:
        name = self._name(index)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block us
        except FileNotFoundError:
            return None
        except OSError as e:
            _warn_once(self._warned, "log_unreadable", path=name, error=e.strerror)
            return None
        st = os.fstat(fd)
        f = _File(fd, st, index)
        if not stat.S_ISREG(st.st_mode):
            _warn_once(self._warned, "log_not_regular_file", path=name)
        if not stat.S_ISREG(st.st_mode) or (expect and not f.same(expect)):
            os.close(fd)
            return None                  # or renamed between stat and open: retry next read
        f.grow_head(st.st_size)
        return f

    def _attach(self) -> _File | None:
        """Open the file to read: the restored one wherever rotation put it, else the oldest."""
        rp, scan = self._restore, self._scan()
        if not scan:
            return None                  # nothing there yet
        start = max(scan)                # never read: the oldest backup first, no line skipped
        if rp is not None:
            for idx, st in sorted(scan.items()):
                f = self._open(idx, st) if (st.st_dev, st.st_ino) == (rp.dev, rp.inode) else None
                if f and _hash(os.pread(f.fd, rp.head_len, 0)) == rp.head_hash:
                    self._cur, self._off, self._skipping, self._restore = f, rp.offset, rp.skipping, None
                    return f
                if f:
                    os.close(f.fd)       # same inode number, other content: a new file
            if 0 not in scan:
                return None              # keep the position for when PATH is back
            # the saved file is gone: its unread successors are the backups written after it
            start = self._newer_than(rp.mtime_ns, scan) or 0
            self._restore = None
            if rp.offset > 0:
                _warn_once(self._warned, "log_position_lost", path=self.path, start=self._name(start))
        f = self._open(start)
        if f is not None:
            self._cur, self._off, self._skipping = f, 0, False
        return f

    @staticmethod
    def _newer_than(mtime_ns: int, scan: dict[int, os.stat_result]) -> int | None:
        """Oldest backup written after mtime_ns, else PATH (None: nothing at all)."""
        newer = [i for i, st in scan.items() if i >= 1 and st.st_mtime_ns > mtime_ns]
        return max(newer) if newer else (0 if 0 in scan else None)

    def _advance(self, out: _Blocks) -> bool:
        """At the end of the current file: move to its successor if it has one."""
        cur = self._cur
        assert cur is not None
        with contextlib.suppress(OSError):
            if cur.same(os.stat(self.path)):
                cur.index = 0
                return False             # the live file: wait for more
        fst = os.fstat(cur.fd)
        if fst.st_size > self._off:
            return True                  # written to just before the rename: finish it first
        scan = self._scan()
        where = [i for i, st in scan.items() if cur.same(st)]
        nxt: int | None
        if where:                        # rotated: the next newer file is one index down
            cur.index = min(where)
            nxt, join = (cur.index - 1 if cur.index - 1 in scan else None), True
        elif cur.index >= 1:             # dropped off the end by a rotation: PATH.K follows it
            nxt, join = max((i for i in scan if i >= 1), default=0 if 0 in scan else None), True
        else:                            # deleted (or renamed away): a new file, if any
            nxt, join = self._newer_than(fst.st_mtime_ns, scan), False
        f = self._open(nxt, scan.get(nxt)) if nxt is not None else None
        if f is None:
            return False                 # rotation under way, or deleted and not re-created
        if not join:                     # unrelated file: a pending fragment is a line of its own
            self._emit_pending(out)
            self._skipping = False
        os.close(cur.fd)                 # join: a line the tee split at rotation goes on in f
        self._cur, self._off = f, 0
        return True

    def _consume(self, data: bytes, out: _Blocks) -> None:
        self.bytes_read += len(data)
        base, n, start = self._off, len(data), 0
        if self._skipping or self._buf_at:       # the first newline ends a line begun earlier
            nl = data.find(b"\n")
            if nl < 0:
                if self._buf_at:
                    self._pend(data, 0, n, out)
                self._off += n
                return
            if self._buf_at:
                self._buf += data[:max(0, min(nl, self.max_line + 1 - len(self._buf)))]
                self._emit_pending(out, whole=True)
            self._skipping, start = False, nl + 1
        end = max(start, data.rfind(b"\n", start) + 1)      # after the last complete line
        if end > start:
            self._runs(data, start, end, out)
        if end < n:                              # an incomplete last line: pending
            self._pend(data, end, n, out)
        self._off += n

    def _runs(self, data: bytes, start: int, end: int, out: _Blocks) -> None:
        """Complete lines data[start:end] as blocks, cutting the over-long ones; no work per
        line: a line longer than max_line is a window of max_line + 1 bytes without newline."""
        ml, base, fid = self.max_line, self._off, self._cur.fid      # type: ignore[union-attr]
        pos = start
        while end - pos > ml + 1:
            nl = data.rfind(b"\n", pos, pos + ml + 1)
            if nl >= 0:
                pos = nl + 1                     # lines up to nl are all short enough
                continue
            if pos > start:
                out.run(base + start, fid, data[start:pos])
            out.alone(base + pos, fid, data[pos:pos + ml], True)
            pos = start = data.find(b"\n", pos + ml) + 1       # found: pos < end
        if end > start:
            out.run(base + start, fid, data[start:end])

    def _pend(self, data: bytes, start: int, end: int, out: _Blocks) -> None:
        """data[start:end] (no newline) begins or continues the pending line."""
        cur = self._cur
        assert cur is not None
        if not self._buf_at:
            self._buf_at = (cur.pos(self._off + start, False), cur.fid)
        room = self.max_line + 1 - len(self._buf)
        if room > 0:
            self._buf += data[start:min(end, start + room)]
        if len(self._buf) > self.max_line:       # over-long: emit the cut, skip the rest to its newline
            self._emit_pending(out)
            self._skipping = True

    def _emit_pending(self, out: _Blocks, whole: bool = False) -> None:
        """The pending line, as it is (cut at max_line if longer). ``whole``: its newline
        was just read; in the file it began in, it is a run of the file's bytes."""
        if self._buf_at:
            at, fid, cut = self._buf_at[0].offset, self._buf_at[1], len(self._buf) > self.max_line
            if whole and not cut and self._cur is not None and fid == self._cur.fid:
                out.run(at, fid, bytes(self._buf) + b"\n")
            else:
                out.alone(at, fid, bytes(self._buf[:self.max_line]), cut)
        self._buf.clear()
        self._buf_at = None
