"""Alerts kept on disk until delivered: one JSON file per pending delivery.

    STATE_DIR/alerts/OWNER/            one directory per living sender (0700)
        .lock                          flock'ed for the sender's lifetime
        1700000000123456789-0.json     a pending delivery (0600: its URL may hold a token)

A file is written whole (temporary file, fsync, rename, fsync of the directory)
before its delivery is tried, and removed after the channel took it.  Several
processes share a STATE_DIR (embedded coordinators of different jobs): each
writes only under its own OWNER directory and holds its lock while it lives.
The kernel drops the lock when the process dies, however it dies (SIGKILL
included); a sender that starts takes over the directories whose lock it can
get, moving their files into its own (rename: a file is taken by one sender
only), and deletes them.  A living sender's files are never touched."""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK = ".lock"


@dataclass(frozen=True)
class Pending:
    """One delivery as it is stored."""

    url: str
    title: str
    body: str
    job: str
    kind: str
    rank: int | None = None
    attempt: int = 0


class Spool:
    """This process's part of the spool.  Every method raises OSError on a
    disk problem; the caller decides what that means."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        # locked under a hidden name, then renamed: no sender starting meanwhile
        # can mistake the new directory for a dead one (the lock is the inode's)
        new = self.root / f".new-{owner}"
        new.mkdir(mode=0o700)
        self._lock_fd: int | None = _lock(new)
        if self._lock_fd is None:       # cannot be: nobody else knows the name
            raise OSError(f"cannot lock {new}")
        self.dir = self.root / owner
        os.rename(new, self.dir)
        self._seq = 0
        self.skipped = 0                # files take_over could not read

    def put(self, p: Pending) -> str:
        """Store ``p`` durably; returns its name."""
        self._seq += 1
        name = f"{time.time_ns()}-{self._seq}.json"
        tmp = self.dir / f".tmp-{name}"
        data = json.dumps({"v": 1, **asdict(p)}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / name)
        except BaseException:
            _unlink(tmp)
            raise
        _fsync_dir(self.dir)
        return name

    def remove(self, name: str) -> None:
        # no fsync: a removal lost to a power cut means one duplicate, never a loss
        _unlink(self.dir / name)

    def take_over(self) -> list[tuple[str, Pending]]:
        """Adopt the files of senders that are gone, and return every pending
        delivery of this spool, oldest first.  An unreadable file is counted
        in ``skipped`` and renamed NAME.bad (kept to look at, not read again)."""
        for other in sorted(self.root.iterdir()):
            if other == self.dir or other.name.startswith(".") or not other.is_dir():
                continue
            fd = _lock(other)
            if fd is None:
                continue                      # its sender lives
            try:
                for f in other.glob("*.json"):
                    try:
                        os.rename(f, self.dir / f"{f.stem}-{other.name}.json")
                    except FileNotFoundError:
                        pass                  # another sender took it first
                for f in other.iterdir():     # .tmp-* (a write cut short) and the lock
                    _unlink(f)
                other.rmdir()
            except OSError:
                pass                          # retried by the next sender that starts
            finally:
                os.close(fd)
        _fsync_dir(self.dir)
        out = []
        for f in sorted(self.dir.glob("*.json"), key=_order):
            try:
                raw = json.loads(f.read_bytes())
                fields = {k: raw[k] for k in Pending.__dataclass_fields__ if k in raw}
                p = Pending(**fields)
                if not all(isinstance(x, str) for x in (p.url, p.title, p.body, p.job, p.kind)):
                    raise TypeError("a field is not text")
                out.append((f.name, p))
            except (OSError, ValueError, TypeError):
                self.skipped += 1
                try:
                    os.rename(f, f.with_name(f.name + ".bad"))
                except OSError:
                    pass
        return out

    def close(self) -> None:
        """Let go of the directory (a later sender may take its files over);
        an empty one is removed."""
        if self._lock_fd is None:
            return
        try:
            if not any(self.dir.glob("*.json")):
                for f in self.dir.iterdir():
                    _unlink(f)
                self.dir.rmdir()
        except OSError:
            pass                            # the next sender that starts cleans up
        os.close(self._lock_fd)
        self._lock_fd = None


def age_s(name: str, now: float | None = None) -> float:
    """How long ago the delivery called ``name`` was stored (its name starts
    with the wall time in ns; 0 when it does not)."""
    head = name.split("-", 1)[0]
    if not head.isdigit():
        return 0.0
    return max(0.0, (time.time() if now is None else now) - int(head) / 1e9)


def _order(f: Path) -> tuple[int, str]:
    head = f.name.split("-", 1)[0]
    return (int(head) if head.isdigit() else 0, f.name)


def _lock(directory: Path) -> int | None:
    """An fd holding ``directory``'s lock, or None when another holds it."""
    try:
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None                     # taken over and removed meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
