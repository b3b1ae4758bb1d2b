"""The ranks' evidence, asked for and kept: stacks, flight-recorder summaries and dumps.

The coordinator asks (``dump_stacks``) when a job is suspect; the wrapper, the ranks'
owner, signals each rank of its job for its stacks (faulthandler) and writes to its
flight-recorder request pipe (``rank.flight``). On a hang verdict the wrapper copies the latest dump each of its ranks made (on the
coordinator's request, ``rank.flight``) from the beacon directory, which the next attempt
removes, into the attempt's log directory: ``LOG_DIR/JOB/attempt-N/flight-recorder/``,
one file per rank named ``fr_trace_rank_R``, the form torch's own analyzer reads
(``python -m torch.distributed.flight_recorder.fr_trace DIR --prefix fr_trace_rank_``) and
``watchdog-d diagnose DIR`` too. Copied as bytes: the wrapper never unpickles them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..rank import beacon, flight
from ..rank.api import STACK_SIGNAL
from ..rank.flight import SUFFIX_DUMP

HANG_KINDS = ("collective_timeout", "collective_mismatch", "rank_stalled", "node_lost")
FOLDER, PREFIX = "flight-recorder", "fr_trace_rank_"


def ask(beacons: Path, ours: set[int]) -> None:
    """Ask every rank of this job (``ours``: its living pids, whatever a file says)."""
    for rank, view in beacon.scan(beacons).items():
        if view.pid not in ours:
            continue
        slot = beacon.slot_path(beacons, rank)
        try:
            open(slot.with_suffix(".stack"), "w").close()
            os.kill(view.pid, STACK_SIGNAL)
        except OSError:
            pass
        flight.ask(str(slot.with_suffix("")))


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
