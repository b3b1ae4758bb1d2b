"""What the agent sees of a job's ranks: beacons plus the processes (/proc/PID/stat).

The agent is not the parent of the rank processes (torchrun is), so it cannot
wait() for them. It learns how a rank ended from, in order of trust:
1. the zombie's exit status in /proc/PID/stat, when it catches one;
2. what the rank recorded in its beacon (clean exit, exception, sys.exit code);
3. nothing: the process vanished with its beacon still saying "running", which
   means a signal (SIGKILL, OOM killer) or os._exit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ..core import frsummary, frtiming, rootcause
from ..core.model import MAX_TEXT, RankReport
from ..rank import beacon, flight
from . import procstat
from .exits import ExitWatcher, zombie_status

STACK_SETTLE_S = 0.3       # a stack file unchanged this long holds a whole dump
MAX_SUMMARY = 256 << 10     # a flight-recorder summary file larger than this is not read
# the rank's own I/O when it answers a request (the stack dump, the summary, the dump it
# keeps, the request's byte) is not progress: allowed on top of the files' sizes
OWN_IO_SLACK = 64 << 10



@dataclass
class RankTrack:
    """Memory the agent keeps about one rank between polls."""

    pid: int
    start: int | None = None            # the process's start time: a reused pid is not it
    cpu: procstat.CpuMeter = field(default_factory=procstat.CpuMeter)
    alive_at: float | None = None       # last poll that saw it alive
    dead_at: float | None = None        # best estimate of when it ended
    exit_code: int | None = None
    exit_signal: int | None = None
    files: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    io: int | None = None               # its I/O counters' sum, last read
    io_moved_at: float = 0.0            # when they last grew (by more than its own answers)
    answered: tuple = ()                # (mtime of stack, summary) last seen: a request was answered
    d_since: float | None = None        # first of the observations in a row that saw state D
    stack_key: tuple = ()               # the latest dump's main-thread frames
    stack_same_since: float = 0.0       # mtime of the first dump of the run with that key
    stack_latest: float = 0.0           # mtime of the latest dump
    flight: tuple = ((), "", math.inf)  # (groups, note, mtime) of the summary, re-read when changed
    timing: tuple = ((), 0, math.inf)   # (groups, batch, mtime) of the timing batch, likewise
    timing_asked: tuple = (-1, -math.inf)   # (step, when) the last batch was asked for


def _tail(track: RankTrack, path: str) -> str:
    """A small text file's tail, re-read only when it changed."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    key = path
    cached = track.files.get(key)
    if cached and cached[0] == st.st_mtime and cached[1] == st.st_size:
        return cached[2]
    try:
        with open(path, "rb") as f:
            f.seek(max(0, st.st_size - MAX_TEXT))
            text = f.read(MAX_TEXT).decode("utf-8", "replace")
    except OSError:
        text = ""
    track.files[key] = (st.st_mtime, st.st_size, text)
    return text


def observe_rank(view: beacon.BeaconView, track: RankTrack, beacon_dir: str,
                 now: float, exits: ExitWatcher | None = None, timings: float = 5.0) -> RankReport:
    """One rank, now (``now`` on time.monotonic, like the beacon). ``timings``: ask for the
    rank's collective timings this often (0: never)."""
    slot = os.path.join(beacon_dir, f"rank-{view.rank}.")     # (+ stack, exc)
    ended = exits.ended(view.pid) if exits is not None else None
    if track.dead_at is None and ended is not None:
        # the pidfd told us exactly when, and the zombie how
        track.dead_at, raw = ended
        if raw is not None:
            if os.WIFSIGNALED(raw):
                track.exit_signal = os.WTERMSIG(raw)
            elif os.WIFEXITED(raw):
                track.exit_code = os.WEXITSTATUS(raw)
    alive, state, cpu = False, "", 0.0
    if track.dead_at is None and view.state == beacon.EXCEPTION:
        # an uncaught exception ends the rank even if its shutdown drags on (atexit
        # handlers, a process group that will not destroy): judge it now
        track.dead_at = view.exit_time if 0 < view.exit_time <= now else now
    if track.dead_at is None:
        stat = procstat.read(view.pid)
        if stat is not None and track.start is None:
            track.start = stat.start
        if stat is not None and stat.start == track.start:
            state = stat.state
            alive = state not in "ZX"
            if alive:
                cpu = track.cpu.update(now, stat.ticks)
                track.alive_at = now
        if not alive:
            # it ended after the last poll that saw it alive: date it there, so the
            # reported detection time is an upper bound, not a flattering zero; a rank
            # that recorded its own end (exception, exit) says exactly when
            track.dead_at = track.alive_at if track.alive_at is not None else now
            if view.state != beacon.RUNNING and 0 < view.exit_time <= now:
                track.dead_at = view.exit_time
            raw = zombie_status(view.pid)
            if raw is not None:
                if os.WIFSIGNALED(raw):
                    track.exit_signal = os.WTERMSIG(raw)
                elif os.WIFEXITED(raw):
                    track.exit_code = os.WEXITSTATUS(raw)
    if track.dead_at is not None:
        code, sig = track.exit_code, track.exit_signal
        if code is None and sig is None:
            if view.state == beacon.EXITED:
                code = view.exit_code
            elif view.state == beacon.EXCEPTION:
                code = 1
        excerpt = _tail(track, slot + "exc") if view.state == beacon.EXCEPTION else ""
        return RankReport(
            rank=view.rank, local_rank=view.local_rank, pid=view.pid, alive=False,
            exit_code=code, exit_signal=sig, exit_detail=view.detail,
            exit_age_s=now - track.dead_at, proc_state="X", step=view.step,
            last_step_age_s=0.0, last_step_dt_s=view.step_dt, excerpt=excerpt,
            **_stack(track, slot + "stack"), **_checkpoint(view))
    since = view.step_time if view.step >= 0 else view.start_time
    remaining, inside = math.inf, 0.0
    if view.section_deadline > 0:
        remaining = view.section_deadline - now
        inside = max(0.0, view.section_timeout - remaining)
    stack = _stack(track, slot + "stack")
    fr = _flight(track, slot + "fr")
    timed = _timings(track, slot, view.step, now, timings) if timings > 0 else {}
    io_still = _io_still(track, view.pid, now, slot)
    if state == "D":
        track.d_since = now if track.d_since is None else track.d_since
    else:
        track.d_since = None
    return RankReport(
        rank=view.rank, local_rank=view.local_rank, pid=view.pid, alive=True,
        proc_state=state, step=view.step, last_step_age_s=max(0.0, now - since),
        last_step_dt_s=view.step_dt, section=view.section, section_remaining_s=remaining,
        section_age_s=inside,
        cpu_percent=cpu, **stack, **_checkpoint(view), **fr, **timed, io_still_s=io_still,
        d_held_s=0.0 if track.d_since is None else now - track.d_since,
        stack_still_s=track.stack_latest - track.stack_same_since if stack else 0.0)


def _stack(track: RankTrack, path: str) -> dict:
    """The rank's latest stack dump, and how long ago it was written (its file's mtime:
    the finishing rules trust only a stack dumped after the end of training began).
    Across dumps, whether its main thread moved (``stack_same_since``)."""
    text = _tail(track, path)
    if not text:
        return {}
    mtime = track.files[path][0]
    # (a dump still being written reads as another stack: compared once it has settled)
    if mtime != track.stack_latest and time.time() - mtime >= STACK_SETTLE_S:
        key = tuple(rootcause.main_frames(text))
        if not key or key != track.stack_key:
            track.stack_key, track.stack_same_since = key, mtime
        track.stack_latest = mtime
    return {"stack": text, "stack_age_s": max(0.0, time.time() - mtime)}


def _flight(track: RankTrack, path: str) -> dict:
    """The rank's flight-recorder summary (``rank.flight``): parsed only when it changed,
    never trusted (``frsummary.from_doc``)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    groups, note, mtime = track.flight
    if st.st_mtime != mtime:
        try:
            groups, note = frsummary.from_doc(_small_json(path, st.st_size))
        except (OSError, ValueError, RecursionError):
            groups, note = (), "unreadable flight-recorder summary"
        track.flight = (groups, note, st.st_mtime)
    return {"collectives": groups, "fr_note": note,
            "fr_age_s": max(0.0, time.time() - st.st_mtime)}


def _small_json(path: str, size: int) -> object:
    """A small JSON file a rank wrote; ValueError when it is too large or no JSON."""
    if size > MAX_SUMMARY:
        raise ValueError("too large")
    with open(path, "rb") as f:
        return json.loads(f.read(MAX_SUMMARY))


def _timings(track: RankTrack, slot: str, step: int, now: float, every_s: float) -> dict:
    """The rank's latest batch of collective timings (``rank.flight.timing``), asked for
    every ``every_s`` (``timing_interval``), and only of a rank that stepped since: a rank
    that does not step has no new collectives, and its silence stays silent (its answers
    are no I/O of its own that could pass for progress). Parsed only when it changed,
    never trusted."""
    asked_step, asked_at = track.timing_asked
    if step > asked_step and now - asked_at >= every_s:
        track.timing_asked = (step, now)
        flight.ask(slot[:-1], b"T")
    path = slot + flight.SUFFIX_TIMING[1:]
    try:
        st = os.stat(path)
    except OSError:
        return {}
    groups, batch, mtime = track.timing
    if st.st_mtime != mtime:
        try:
            doc = _small_json(path, st.st_size)
            groups, batch = frtiming.from_doc(doc), doc.get("batch", 0)
            if isinstance(batch, bool) or not isinstance(batch, int) or not 0 < batch < 1 << 62:
                raise ValueError("bad batch number")
        except (OSError, ValueError, RecursionError, AttributeError):
            groups, batch = (), 0
        track.timing = (groups, batch, st.st_mtime)
    return {"timings": groups, "timing_batch": batch} if batch else {}


def _io_still(track: RankTrack, pid: int, now: float, slot: str) -> float:
    """Since the rank's I/O last grew (-1: unreadable). Its answers to our own requests
    (a stack dump, a summary and the dump it keeps) do not count. Called after ``_stack``
    and ``_flight`` of the same observation."""
    io = procstat.read_io(pid)
    if io is None:
        return -1.0
    if track.io is None:
        track.io, track.io_moved_at = io, now      # (first look: moving, as far as we know)
    elif io != track.io:
        # (the stack's and the summary's mtimes as _stack and _flight just read them)
        answered = (track.files.get(slot + "stack", (0.0,))[0], track.flight[2], track.timing[2])
        own = 0
        if answered != track.answered:
            track.answered = answered
            own = OWN_IO_SLACK + sum(max(0, _size(slot + s)) for s in ("fr", "fr.pkl", "frt"))
        if io - track.io > own:
            track.io_moved_at = now
        track.io = io
    return now - track.io_moved_at


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _checkpoint(view: beacon.BeaconView) -> dict:
    if view.ckpt_path and view.ckpt_step >= 0:
        return {"ckpt_path": view.ckpt_path, "ckpt_step": view.ckpt_step}
    return {}


def observe_job(beacon_dir: str, tracks: dict[int, RankTrack], now: float | None = None,
                exits: ExitWatcher | None = None,
                host_pid: Callable[[int], int] | None = None,
                timings: float = 5.0) -> tuple[RankReport, ...]:
    """``host_pid``: the node's PID of a rank's own (ranks in another PID namespace);
    ``timings``: ask the ranks for their collective timings this often (0: never; stragglers)."""
    now = time.monotonic() if now is None else now
    out = []
    for rank, view in sorted(beacon.scan(beacon_dir).items()):
        pid = view.pid if host_pid is None else host_pid(view.pid)
        if pid != view.pid:
            view = dataclasses.replace(view, pid=pid)
        track = tracks.get(rank)
        if track is None or track.pid != view.pid:
            track = tracks[rank] = RankTrack(pid=view.pid)
            if exits is not None:
                exits.watch(view.pid)
        out.append(observe_rank(view, track, beacon_dir, now, exits, timings))
    return tuple(out)
