"""The ranks' evidence, asked for and kept: stacks, flight-recorder summaries and dumps.

The coordinator asks (``dump_stacks``) when a job is suspect; the wrapper, the ranks'
owner, signals each rank of its job for its stacks (faulthandler), then, once they are
written, writes to its flight-recorder request pipe (``rank.flight``): ``Asker``. On a hang verdict the wrapper copies the latest dump each of its ranks made (on the
coordinator's request, ``rank.flight``) from the beacon directory, which the next attempt
removes, into the attempt's log directory: ``LOG_DIR/JOB/attempt-N/flight-recorder/``,
one file per rank named ``fr_trace_rank_R``, the form torch's own analyzer reads
(``python -m torch.distributed.flight_recorder.fr_trace DIR --prefix fr_trace_rank_``) and
``watchdog-d diagnose DIR`` too. Copied as bytes: the wrapper never unpickles them.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from ..rank import beacon, flight
from ..rank.api import STACK_SIGNAL
from ..rank.flight import SUFFIX_DUMP

HANG_KINDS = ("collective_timeout", "collective_mismatch", "rank_stalled", "node_lost")
FOLDER, PREFIX = "flight-recorder", "fr_trace_rank_"


SETTLE_S, ANSWER_S = 0.05, 2.0


class Asker:
    """Asks the ranks for their evidence, one round at a time, on a thread of its own.

    faulthandler dumps every thread's stack from a signal handler, reading frames that a
    thread running Python at that moment changes under it: a rank crashed (SIGSEGV in
    libpython, on the handler's stack) when its flight-recorder thread woke at the same
    instant. So a round signals the ranks for their stacks, waits until each stack file
    is written and still, then asks for the flight recorders and waits for the answers;
    requests that come meanwhile are one more round, never an overlap."""

    def __init__(self) -> None:
        self._want: tuple[Path, frozenset[int]] | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def ask(self, beacons: Path, ours: set[int]) -> None:
        """Ask every rank of this job (``ours``: its living pids, whatever a file says)."""
        with self._wake:
            self._want = (beacons, frozenset(ours))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="evidence", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _serve(self) -> None:
        while True:
            with self._wake:
                while self._want is None:
                    self._wake.wait()
                beacons, ours = self._want
                self._want = None
            try:
                ask_round(beacons, ours)
            except Exception:
                pass           # evidence is best effort; the job goes on


def ask_round(beacons: Path, ours: frozenset[int] | set[int]) -> None:
    slots = []
    for rank, view in beacon.scan(beacons).items():
        if view.pid not in ours:
            continue
        slot = beacon.slot_path(beacons, rank)
        try:
            open(slot.with_suffix(".stack"), "w").close()
            os.kill(view.pid, STACK_SIGNAL)
        except OSError:
            continue
        slots.append(slot)
    _until(lambda: all(_still(s.with_suffix(".stack"), nonempty=True) for s in slots))
    before = {s: _stat(s.with_suffix(flight.SUFFIX_SUMMARY)) for s in slots}
    asked = [s for s in slots if flight.ask(str(s.with_suffix("")))]
    _until(lambda: all(_stat(s.with_suffix(flight.SUFFIX_SUMMARY)) != before[s] for s in asked))


def _stat(path: Path) -> tuple:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return ()


def _still(path: Path, nonempty: bool) -> bool:
    first = _stat(path)
    if not first or (nonempty and first[0] == 0):
        return False
    time.sleep(SETTLE_S)
    return _stat(path) == first


def _until(done, limit: float = ANSWER_S) -> None:
    deadline = time.monotonic() + limit
    while not done() and time.monotonic() < deadline:
        time.sleep(SETTLE_S)


def keep(beacons: Path, log_dir: Path) -> list[Path]:
    """Copy every rank's latest dump; the files written (none: nothing was dumped)."""
    out = []
    try:
        dumps = sorted(beacons.glob(f"rank-*{SUFFIX_DUMP}"))
    except OSError:
        return out
    for src in dumps:
        rank = src.name[len("rank-"):-len(SUFFIX_DUMP)]
        if not rank.isdigit():
            continue
        dest = log_dir / FOLDER / f"{PREFIX}{int(rank)}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            out.append(dest)
        except OSError:
            continue
    return out
