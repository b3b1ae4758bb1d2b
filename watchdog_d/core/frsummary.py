"""A flight-recorder dump, summarised per process group (pure).

PyTorch's flight recorder keeps, per rank, a ring of the last N collectives: sequence id,
op, sizes, the group, state and times, plus ``pg_status`` (last enqueued / started /
completed sequence id per group). A dump is a dict (the pickle that
``_dump_fr_trace`` / the older ``_dump_nccl_trace`` return, or the JSON of
``_dump_fr_trace_json``). What the rules need of it is small and bounded: per group, the
three sequence ids and the oldest entry still pending.

Used where the dump is made (the rank's helper thread, ``rank.flight``) and offline
(``watchdog-d diagnose`` on kept dumps). Nothing here trusts the dump's shape: unknown
fields are ignored, a field of the wrong type is skipped, and a dump that is no dict at
all is no evidence (``BrokenDump``), never a crash.
"""
from __future__ import annotations

import math

from .model import GroupRecord, PendingCollective

MAX_GROUPS = 64          # per rank: groups with something pending first, then the latest
MAX_ENTRIES = 100_000    # entries looked at in one dump (torch's default ring holds 2,000)
MAX_SEQ = 1 << 62        # a sequence id beyond this is not one
MAX_SIZES_TEXT = 64
MAX_RANKS_TEXT = 512
MAX_LATER = 7            # pending entries kept after the oldest (a mismatch may be among them)

# bytes of one element of the dtypes torch writes in a dump (others: unknown, 0)
_DTYPE_BYTES = {"Float": 4, "Half": 2, "BFloat16": 2, "Double": 8, "Long": 8, "Int": 4,
                "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "Float8_e4m3fn": 1,
                "Float8_e5m2": 1, "ComplexFloat": 8, "ComplexDouble": 16}


class BrokenDump(ValueError):
    """Not a flight-recorder dump this code can read."""


def _int(x: object, default: int = -1) -> int:
    """A sequence id as torch writes it (an int, or a digit string in pg_status)."""
    if isinstance(x, bool):
        return default
    if isinstance(x, str):
        x = x.strip()
        if not x.lstrip("-").isdigit() or len(x) > 20:
            return default
        x = int(x)
    if not isinstance(x, int) or not -1 <= x <= MAX_SEQ:
        return default
    return x


def _text(x: object, limit: int = 64) -> str:
    return "".join(c for c in x[:limit] if c.isprintable()) if isinstance(x, str) else ""


def _shapes(sizes: object) -> list[list[int]]:
    if not isinstance(sizes, (list, tuple)):
        return []
    out = []
    for shape in sizes[:16]:
        if isinstance(shape, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool)
                                                    for d in shape[:8]):
            out.append([int(d) for d in shape[:8]])
    return out


def _sizes_text(shapes: list[list[int]]) -> str:
    text = ",".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)
    return text if len(text) <= MAX_SIZES_TEXT else text[:MAX_SIZES_TEXT - 3] + "..."


def _nbytes(shapes: list[list[int]], dtypes: object) -> int:
    if not isinstance(dtypes, (list, tuple)) or len(dtypes) < len(shapes):
        return 0
    total = 0
    for shape, dtype in zip(shapes, dtypes):
        width = _DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
        if width is None or any(d < 0 for d in shape):
            return 0
        total += math.prod(shape) * width
    return min(total, MAX_SEQ)


def ranges(ranks: list[int]) -> str:
    """Global ranks, compact: "0-7", "0-56:8", "0,3,9" (sorted, each once); "" past
    MAX_RANKS_TEXT characters (the size still says how many)."""
    xs = sorted(set(ranks))
    parts, i = [], 0
    while i < len(xs):
        j = i + 1
        step = xs[j] - xs[i] if j < len(xs) else 1
        while j < len(xs) and xs[j] - xs[j - 1] == step:
            j += 1
        if j - i >= 3:
            parts.append(f"{xs[i]}-{xs[j - 1]}" + (f":{step}" if step != 1 else ""))
            i = j
        else:
            parts.append(str(xs[i]))
            i += 1
    text = ",".join(parts)
    return text if len(text) <= MAX_RANKS_TEXT else ""


def parse_ranges(text: str, limit: int = 1 << 20) -> tuple[int, ...]:
    """The ranks of ``ranges``' text; ValueError when it is not one, or names more than
    ``limit`` ranks."""
    out: list[int] = []
    for part in text.split(",") if text else ():
        span, _, step = part.partition(":")
        first, dash, last = span.partition("-")
        a, b, s = int(first), int(last) if dash else int(first), int(step) if step else 1
        if a < 0 or b < a or s < 1 or len(out) + (b - a) // s + 1 > limit:
            raise ValueError(f"not a rank range: {part!r}")
        out.extend(range(a, b + 1, s))
    return tuple(out)


def summarise(dump: object, now_ns: int, members: dict[str, list[int]] | None = None
              ) -> tuple[GroupRecord, ...]:
    """Per group, what the rules need; ``now_ns`` on the clock the dump's
    ``time_created_ns`` is on (the rank's wall clock), ``members``: group name -> global
    ranks, where the rank knows them (gloo's dump leaves ``pg_config`` empty)."""
    if not isinstance(dump, dict):
        raise BrokenDump("a flight-recorder dump is a dict")
    entries = dump.get("entries", [])
    status = dump.get("pg_status", {})
    config = dump.get("pg_config", {})
    if not isinstance(entries, (list, tuple)) or not isinstance(status, dict):
        raise BrokenDump("entries or pg_status of the wrong type")
    members = dict(members or {})
    if isinstance(config, dict):
        for name, c in list(config.items())[:4096]:
            if isinstance(name, str) and name and name not in members and isinstance(c, dict):
                found = _config_ranks(c.get("ranks"))
                if found:
                    members[name] = found
    groups: dict[str, dict] = {}
    for name, st in list(status.items())[:4096]:
        if isinstance(name, str) and isinstance(st, dict):
            groups[name] = {"enq": _int(st.get("last_enqueued_collective")),
                            "start": _int(st.get("last_started_collective")),
                            "done": _int(st.get("last_completed_collective")),
                            "desc": "", "open": {}, "latest": -1}
    for e in entries[-MAX_ENTRIES:]:
        if not isinstance(e, dict) or e.get("is_p2p"):
            continue     # send/recv pair two ranks, not a group: not judged here
        pg = e.get("process_group")
        name = pg[0] if isinstance(pg, (list, tuple)) and pg and isinstance(pg[0], str) else None
        seq = _int(e.get("collective_seq_id"))
        if name is None or seq < 0:
            continue
        g = groups.setdefault(name, {"enq": -1, "start": -1, "done": -1, "desc": "",
                                     "open": {}, "latest": -1})
        if len(pg) > 1 and isinstance(pg[1], str):
            g["desc"] = _text(pg[1])
        g["latest"] = max(g["latest"], seq)
        # done: as pg_status says, or as the entry says (gloo marks an entry retired a
        # moment before its pg_status counts it: the last of a step looked pending forever)
        if seq <= g["done"] or e.get("state") == "completed" or e.get("retired") is True:
            continue
        g["open"][seq] = e
        if len(g["open"]) > 4 * (MAX_LATER + 1):      # (the oldest few are what counts)
            del g["open"][max(g["open"])]
    out = []
    for name, g in groups.items():
        pending = [_pending(seq, g["open"][seq], now_ns) for seq in sorted(g["open"])[:MAX_LATER + 1]]
        ranks = members.get(name, [])
        out.append(GroupRecord(
            name=_text(name), desc=g["desc"], size=len(set(ranks)), ranks=ranges(ranks),
            last_enqueued=max(g["enq"], g["latest"]), last_started=g["start"],
            last_completed=g["done"], pending=pending[0] if pending else None,
            later=tuple(pending[1:])))
    # the groups that matter first (something pending, oldest first), then the latest
    out.sort(key=lambda g: (g.pending is None, -(g.pending.age_s if g.pending else 0.0),
                            -g.last_enqueued))
    return tuple(out[:MAX_GROUPS])


def _pending(seq: int, e: dict, now_ns: int) -> PendingCollective:
    shapes = _shapes(e.get("input_sizes"))
    created = e.get("time_created_ns")
    age = (now_ns - created) / 1e9 if isinstance(created, int) and not isinstance(created, bool) \
        and 0 < created <= now_ns else 0.0
    return PendingCollective(
        seq=seq, op=_text(e.get("profiling_name")) or "unknown",
        sizes=_sizes_text(shapes), nbytes=_nbytes(shapes, e.get("input_dtypes")),
        age_s=min(age, 30 * 86400.0),
        state="started" if e.get("state") == "started" else "scheduled")


def _config_ranks(text: object) -> list[int]:
    """``pg_config``'s ranks, "[0, 1, 2]" as NCCL's dump writes them (gloo's: "[]")."""
    if not isinstance(text, str) or len(text) > 1 << 20:
        return []
    inner = text.strip().strip("[]").replace(" ", "")
    if not inner:
        return []
    try:
        xs = [int(x) for x in inner.split(",")]
    except ValueError:
        return []
    return [x for x in xs if x >= 0]


def describe(g: GroupRecord) -> str:
    """A group for people: "default_pg [8 ranks]"."""
    label = g.desc if g.desc and g.desc != "undefined" else f"group {g.name}"
    return f"{label} [{g.size} ranks]" if g.size else label


def human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def from_doc(doc: object) -> tuple[tuple[GroupRecord, ...], str]:
    """A rank's summary file (``rank.flight``), read back by the agent: (groups, note).
    Anything that is not what ``rank.flight`` writes is no evidence, with a note saying so."""
    try:
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise TypeError("not a summary")
        groups = doc.get("groups", [])
        if not isinstance(groups, list):
            raise TypeError("groups")
        out = tuple(_record(g) for g in groups[:MAX_GROUPS])
        return out, _text(doc.get("note", ""), 300)
    except (TypeError, ValueError, KeyError, AttributeError):
        return (), "unreadable flight-recorder summary"


def _record(g: dict) -> GroupRecord:
    p = g.get("pending")
    later = g.get("later", [])
    if not isinstance(later, list):
        raise ValueError("later")
    return checked(GroupRecord(
        name=_text(g["name"]), desc=_text(g["desc"]), size=g["size"], ranks=g["ranks"],
        last_enqueued=_int(g["last_enqueued"]), last_started=_int(g["last_started"]),
        last_completed=_int(g["last_completed"]), pending=None if p is None else _pending_doc(p),
        later=tuple(_pending_doc(x) for x in later[:MAX_LATER + 1])))


def _pending_doc(p: dict) -> PendingCollective:
    return PendingCollective(seq=p["seq"], op=_text(p["op"]), sizes=_text(p["sizes"], MAX_SIZES_TEXT),
                             nbytes=p["nbytes"], age_s=p["age_s"], state=p["state"])


_RANGES_CHARS = frozenset("0123456789,-:")
MAX_AGE_S = 30 * 86400.0


def checked(g: GroupRecord) -> GroupRecord:
    """``g`` if a flight recorder could have written it, else ValueError saying why: the one
    set of rules, whoever reads a summary (the agent from a rank's file, the coordinator
    from the wire)."""
    for name in ("last_enqueued", "last_started", "last_completed"):
        if not _is_int(getattr(g, name)) or not -1 <= getattr(g, name) <= MAX_SEQ:
            raise ValueError(f"collective group: {name} {getattr(g, name)!r}")
    if not _is_int(g.size) or not 0 <= g.size <= 1 << 24:
        raise ValueError(f"collective group: size {g.size!r}")
    if not isinstance(g.ranks, str) or len(g.ranks) > MAX_RANKS_TEXT \
            or not _RANGES_CHARS.issuperset(g.ranks):
        raise ValueError("collective group: ranks is not a rank range")
    if len(g.later) > MAX_LATER or (g.later and g.pending is None):
        raise ValueError(f"collective group: {len(g.later)} later pending collectives")
    for p in (g.pending, *g.later):
        if p is None:
            continue
        if not (_is_int(p.seq) and 0 <= p.seq <= MAX_SEQ and _is_int(p.nbytes) and 0 <= p.nbytes <= MAX_SEQ):
            raise ValueError(f"pending collective: seq {p.seq!r}, {p.nbytes!r} bytes")
        if not (isinstance(p.age_s, (int, float)) and not isinstance(p.age_s, bool)
                and math.isfinite(p.age_s) and 0.0 <= p.age_s <= MAX_AGE_S):
            raise ValueError("pending collective: its age is not a duration")
        if p.state not in ("scheduled", "started"):
            raise ValueError(f"pending collective: state {str(p.state)[:16]!r}")
    return g


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
