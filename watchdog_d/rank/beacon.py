"""The beacon: one fixed-size shared-memory slot per rank.

The rank writes, the agent reads; nothing else crosses. Times are
``time.monotonic()`` values, which on Linux are one clock for every process of
the host, so the reader can age them without trusting wall time.

The hot write (step, time, step duration) is three stores through memoryviews
(about 30 ns each; ``struct.pack_into`` costs 140 ns). A reader may catch it
half-written, so it reads the slot twice and keeps a read only when both agree
(the write window is nanoseconds wide). Native byte order: writer and reader
always share the host.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

SLOT_SIZE = 512
MAGIC = b"WDB1"

# state of the rank process, as the rank itself recorded it
RUNNING, EXITED, EXCEPTION = 0, 1, 2

_HEAD = struct.Struct("=4sIqiid")        # 0: magic, version, pid, rank, local_rank, start
_STEP = struct.Struct("=qdd")            # 32: step, step time, step duration
_EXIT = struct.Struct("=iid")            # 56: state, exit code, exit time
_SECTION = struct.Struct("=dd64s")       # 72: deadline (0: none), timeout, name
_CKPT = struct.Struct("=qd256s")         # 152: checkpoint step, time, path
_DETAIL = struct.Struct("=80s")          # 424: exit detail (exception summary)
OFF_STEP, OFF_EXIT, OFF_SECTION, OFF_CKPT, OFF_DETAIL = 32, 56, 72, 152, 424
_PID = struct.Struct("=q")               # 8: the head's pid
assert OFF_DETAIL + _DETAIL.size <= SLOT_SIZE and OFF_STEP == 4 * 8


def slot_path(beacon_dir: str | os.PathLike, rank: int) -> Path:
    return Path(beacon_dir) / f"rank-{rank}.beacon"


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _raw(text: str, size: int) -> bytes:
    return text.encode("utf-8", "replace")[: size - 1]


class BeaconWriter:
    """The rank's end. Every method is cheap and never raises."""

    __slots__ = ("_mm", "_fd", "_q", "_d", "path", "step", "_last_t")

    def __init__(self, path: Path, pid: int, rank: int, local_rank: int, now: float):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, SLOT_SIZE)
        self._fd = fd
        self._mm = mmap.mmap(fd, SLOT_SIZE)
        self._q = memoryview(self._mm).cast("q")      # 8-byte views: index = offset // 8
        self._d = memoryview(self._mm).cast("d")
        self.step = -1
        self._last_t = now
        _STEP.pack_into(self._mm, OFF_STEP, -1, now, 0.0)
        _EXIT.pack_into(self._mm, OFF_EXIT, RUNNING, 0, 0.0)
        _SECTION.pack_into(self._mm, OFF_SECTION, 0.0, 0.0, b"")
        _CKPT.pack_into(self._mm, OFF_CKPT, -1, 0.0, b"")
        # magic last: a reader ignores a slot until it is complete
        _HEAD.pack_into(self._mm, 0, MAGIC, 1, pid, rank, local_rank, now)

    def write_step(self, step: int, now: float) -> None:
        last, self._last_t, self.step = self._last_t, now, step
        self._q[4] = step           # OFF_STEP
        self._d[5] = now            # OFF_STEP + 8
        self._d[6] = now - last     # OFF_STEP + 16

    def rebase(self, now: float) -> None:
        """Start timing the next step from now (after a section, so pauses don't count)."""
        self._last_t = now

    def write_section(self, name: str, deadline: float, timeout: float) -> None:
        _SECTION.pack_into(self._mm, OFF_SECTION, deadline, timeout, _raw(name, 64))

    def write_checkpoint(self, path: str, step: int, now: float) -> None:
        _CKPT.pack_into(self._mm, OFF_CKPT, step, now, _raw(path, 256))

    def write_exit(self, state: int, code: int, now: float, detail: str = "") -> None:
        _DETAIL.pack_into(self._mm, OFF_DETAIL, _raw(detail, 80))
        _EXIT.pack_into(self._mm, OFF_EXIT, state, code, now)


@dataclass(frozen=True)
class BeaconView:
    """One consistent read of a slot."""

    pid: int
    rank: int
    local_rank: int
    start_time: float
    step: int
    step_time: float
    step_dt: float
    state: int
    exit_code: int
    exit_time: float
    section_deadline: float
    section_timeout: float
    section: str
    ckpt_step: int
    ckpt_time: float
    ckpt_path: str
    detail: str


def read_raw(path: str | os.PathLike, attempts: int = 5) -> bytes | None:
    """A slot's bytes, read consistently; None when missing, short or not yet complete.
    (Bare fd reads: the agent reads every slot ten times a second.)"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        first = os.pread(fd, SLOT_SIZE, 0)
        for _ in range(attempts):
            second = os.pread(fd, SLOT_SIZE, 0)
            if second == first:
                break
            first = second
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(first) < SLOT_SIZE or first[:4] != MAGIC:
        return None
    return first


def decode(raw: bytes) -> BeaconView:
    _, _, pid, rank, local_rank, start = _HEAD.unpack_from(raw, 0)
    step, step_time, step_dt = _STEP.unpack_from(raw, OFF_STEP)
    state, code, exit_time = _EXIT.unpack_from(raw, OFF_EXIT)
    deadline, timeout, name = _SECTION.unpack_from(raw, OFF_SECTION)
    ckpt_step, ckpt_time, ckpt_path = _CKPT.unpack_from(raw, OFF_CKPT)
    (detail,) = _DETAIL.unpack_from(raw, OFF_DETAIL)
    return BeaconView(pid, rank, local_rank, start, step, step_time, step_dt, state, code,
                      exit_time, deadline, timeout, _text(name), ckpt_step, ckpt_time,
                      _text(ckpt_path), _text(detail))


def read_slot(path: str | os.PathLike, attempts: int = 5) -> BeaconView | None:
    """Read a slot file; None when it is missing, short or not yet complete."""
    raw = read_raw(path, attempts)
    return None if raw is None else decode(raw)


def pid_of(raw: bytes) -> int:
    return _PID.unpack_from(raw, 8)[0]


def all_but_steps(raw: bytes) -> bytes:
    """A slot without its step fields: what changes when a rank does something other
    than step (exits, raises, enters a section, saves a checkpoint)."""
    return raw[:OFF_STEP] + raw[OFF_EXIT:]


def scan(beacon_dir: str | os.PathLike) -> dict[int, BeaconView]:
    """All complete slots in a directory, by rank."""
    out: dict[int, BeaconView] = {}
    try:
        names = os.listdir(beacon_dir)
    except OSError:
        return out
    for name in names:
        if name.startswith("rank-") and name.endswith(".beacon"):
            view = read_slot(os.path.join(beacon_dir, name))
            if view is not None:
                out[view.rank] = view
    return out
