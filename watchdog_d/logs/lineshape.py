"""The shape of a log line around what it says: launcher prefixes, rows a terminal
wrapped, the rank a line names. Pure and stdlib-only, like ``fingerprints``."""
from __future__ import annotations

import re

# C0 and C1 control characters except tab; a log line is for people and alerts
CONTROL = {c: None for c in (*range(0, 9), *range(10, 32), *range(127, 160))}
# what launchers put before a process's line, stripped before matching (the Finding
# keeps the whole line, so the rank a prefix names is not lost): "job.host [stderr] "
# (a scheduler's per-node capture), "srun: ", Open MPI's "[1,3]<stderr>:", torchrun's
# "[rank3]: " and "[default3]:", srun --label's "3: ", and any run of them
PREFIX = re.compile(r"^(?:\s*(?:[\w.@:-]{1,128} \[std(?:err|out)\] ?|srun: |\[\d{1,7},\d{1,7}\]<std(?:err|out)>: ?"
                     r"|\[(?:rank|default)\d{1,7}\]: ?|\d{1,6}: (?=\S)))+")
# a terminal (or a copy from one) breaks a long line into rows of exactly this many
# characters; rows of such a width are joined when the join makes a match across the break
WRAP_WIDTHS = frozenset((80, 100, 120, 132, 160, 200))
WRAP_ROWS = 8


def _row_text(data: bytes, a: int, b: int) -> str:
    return data[a:b].decode("utf-8", "replace").rstrip("\r").translate(CONTROL)


def wrapped_rows(data: bytes, start: int, end: int) -> tuple[str, tuple[int, ...], int, int] | None:
    """The line data[start:end] joined with the rows it was wrapped into: (text, where
    the rows meet in it, the first row's start, the end of the last row), or None when
    neither it nor the row before it is a full row of a wrap width."""
    rows = [(start, end)]
    while len(rows) < WRAP_ROWS and rows[0][0] > 0:      # rows before: each a full width
        a = data.rfind(b"\n", 0, rows[0][0] - 1) + 1
        if len(_row_text(data, a, rows[0][0] - 1)) not in WRAP_WIDTHS:
            break
        rows.insert(0, (a, rows[0][0] - 1))
    while len(rows) < WRAP_ROWS and rows[-1][1] < len(data) and \
            len(_row_text(data, *rows[-1])) in WRAP_WIDTHS:  # this row full: the next goes on
        a = rows[-1][1] + 1
        b = data.find(b"\n", a)
        rows.append((a, len(data) if b < 0 else b))
    if len(rows) < 2:
        return None
    parts = [_row_text(data, a, b) for a, b in rows]
    bounds, at = [], 0
    for part in parts[:-1]:
        at += len(part)
        bounds.append(at)
    return "".join(parts), tuple(bounds), rows[0][0], rows[-1][1]


# -- rank attribution ------------------------------------------------------

_RANK_PATTERNS = (
    re.compile(r"^\s*\[rank(\d+)\]:"),                  # torchrun 2.x: "[rank3]:"
    re.compile(r"^\s*\[\d+,(\d+)\]<std(?:err|out)>:"),   # Open MPI: "[1,3]<stderr>:" (job, rank)
    # "[Rank 3]", "[PG 0 Rank 3]", "[PG ID 0 PG GUID 0(default_pg) Rank 3]"
    re.compile(r"\[(?:PG\b[^\]]*?\s)?Rank (\d+)\]"),
    re.compile(r"\bglobal[_ ]rank\s*[:=]\s*(\d+)\b"),
    # "rank: 3", "rank=3", torchrun's "rank      : 3 (local_rank: 1)"; not a
    # local, node or group rank
    re.compile(r"(?<![\w-])(?<!local )(?<!node )(?<!group )[Rr]ank\s*[:=]\s*(\d+)\b"),
    re.compile(r"\bon rank (\d+)\b"),                    # "NCCL communicator was aborted on rank 2"
    re.compile(r"\[rank(\d+)\]"),
)


def rank_from_text(line: str) -> int | None:
    """The global rank a log line names in its prefix or text, or None."""
    for pattern in _RANK_PATTERNS:
        m = pattern.search(line)
        if m is not None:
            return int(m.group(1))
    return None
