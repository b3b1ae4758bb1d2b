"""``watchdog-d diagnose`` on flight-recorder dumps, offline.

Reads the dumps watchdog-d kept on a hang verdict (``LOG_DIR/JOB/attempt-N/flight-recorder/
fr_trace_rank_R``) and those torch wrote by itself on a timeout (``TORCH_FR_DUMP_TEMP_FILE``,
``nccl_trace_rank_R``): one pickle per rank, the rank in the name's trailing digits. The
same summary (``core.frsummary``) and the same rules (``core.flight``) as the live
watchdog name the collective and the culprit; with no clock to go by, anything pending
counts. The pickles are read with an unpickler that builds plain containers only: a dump
from elsewhere cannot run code here.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

from ..core import flight, frsummary
from ..core.model import RankReport

PREFIXES = ("fr_trace_rank_", "nccl_trace_rank_")
MAX_DUMP = 256 << 20
MAX_DUMPS = 20_000
_NAME = re.compile(r"^(?P<prefix>.*?)(?P<rank>\d+)$")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):   # noqa: D401
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def load(path: Path) -> dict:
    """One dump; frsummary.BrokenDump when it is not one this can read."""
    try:
        if path.stat().st_size > MAX_DUMP:
            raise frsummary.BrokenDump(f"larger than {MAX_DUMP >> 20} MiB")
        data = path.read_bytes()
        if data[:1] == b"{":              # _dump_fr_trace_json's form
            import json

            return json.loads(data)
        return _PlainUnpickler(io.BytesIO(data)).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, RecursionError, MemoryError) as e:
        raise frsummary.BrokenDump(f"{type(e).__name__}: {str(e)[:100]}") from None


def collect(root: Path) -> dict[int, Path]:
    """Rank -> dump file under ``root`` (a file, or a directory walked)."""
    found: dict[int, Path] = {}
    files = [root] if root.is_file() else (
        Path(d) / f for d, _, names in os.walk(root) for f in sorted(names))
    for path in files:
        m = _NAME.match(path.name)
        if m and m["prefix"] in PREFIXES and len(found) < MAX_DUMPS:
            found.setdefault(int(m["rank"]), path)
    return found


def diagnose(paths: list[str]) -> dict | None:
    """What the dumps under ``paths`` say, or None when there are none."""
    dumps: dict[int, Path] = {}
    for p in paths:
        dumps.update(collect(Path(p)))
    if not dumps:
        return None
    members, broken, docs = [], {}, {}
    for rank, path in sorted(dumps.items()):
        try:
            docs[rank] = load(path)
        except frsummary.BrokenDump as e:
            broken[rank] = str(e)
    # no clock offline: "now" is the newest entry of any dump, so ages stay comparable
    now_ns = max((e.get("time_created_ns", 0) for d in docs.values() if isinstance(d, dict)
                  for e in (d.get("entries") or []) if isinstance(e, dict)
                  and isinstance(e.get("time_created_ns"), int)), default=0)
    for rank, doc in docs.items():
        try:
            groups = frsummary.summarise(doc, now_ns)
        except frsummary.BrokenDump as e:
            broken[rank] = str(e)
            continue
        members.append(flight.Member(RankReport(rank=rank, collectives=groups), 0.0))
    found = flight.judge(members, 0.0, 0.0, 0.0)
    return {"dumps": {str(r): str(p) for r, p in sorted(dumps.items())},
            "broken": {str(r): why for r, why in broken.items()},
            "kind": found.kind, "text": found.text, "culprits": list(found.culprits),
            "waiters": list(found.waiters), "seq": found.seq,
            "group": found.group.desc or found.group.name if found.group else ""}


def render(result: dict) -> str:
    lines = [f"== flight recorder: {len(result['dumps'])} dumps"]
    if result["kind"] in ("timeout", "mismatch", "behind"):
        lines.append(f"   {result['kind']}: {result['text']}")
        if result["culprits"]:
            lines.append("   culprit: " + ", ".join(f"rank {r}" for r in result["culprits"]))
    else:
        lines.append("   no collective pending on any group (nothing hung in a collective)")
    for rank, why in result["broken"].items():
        lines.append(f"   rank {rank}: dump not readable ({why})")
    return "\n".join(lines)
