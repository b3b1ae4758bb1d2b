"""When a rank reached its collectives, from its flight-recorder dump (pure).

Runs inside a training rank (its helper thread passes the dump dict, the one
``_dump_fr_trace(True, False, False)`` unpickles to); the coordinator compares the
ranks' times per collective to find a straggler (``core.straggler``).

Per process group, the collectives completed since the last batch (``after``): sequence
id, when it was enqueued and, where NCCL timed it, how long it ran on the GPU. The enqueue
time is taken off the rank's wall clock (``time_created_ns``, torch's system_clock) and
put on the node's monotonic clock: ``created - wall_now + mono_now``. The agent's
heartbeats carry the same monotonic clock, so the coordinator can map every node's times
onto its own, and wall-clock skew between nodes (NTP a few seconds off) cancels.

gloo on CPU leaves every entry "scheduled" with no start, end or duration: only
``time_created_ns`` is set, and ``pg_status``' last completed sequence id says which are
done. Nothing here trusts the dump: an entry with an absurd field is skipped, an unknown
shape ignored, and a dump that is no dict at all is ``frsummary.BrokenDump``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .frsummary import MAX_ENTRIES, MAX_SEQ, BrokenDump, _config_ranks, _int, _text

MAX_GROUPS = 16             # per rank and batch: the groups most recently active
MAX_PER_GROUP = 256         # collectives per group and batch (``limit`` is at most this)
MAX_NAME = 64               # a group's name ("0", "1", ... as torch names them)
MAX_SIZE = 1 << 24          # members of one group
MAX_US = 1 << 53            # a monotonic time in µs (exact as a float: 285 years)
MAX_DUR_US = 3600 * 10**6   # a collective running an hour on the GPU is no timing
FUTURE_NS = 5 * 10**9       # created this far after the dump's "now": not a time


@dataclass(frozen=True, slots=True)
class GroupTiming:
    """One process group's completed collectives in one batch of one rank."""

    name: str                 # process group name ("0" default group)
    size: int                 # members (0 unknown)
    seqs: tuple[int, ...]     # collective sequence ids, ascending
    enq_us: tuple[int, ...]   # when each was enqueued, on the node's monotonic clock, µs
    dur_us: tuple[int, ...]   # GPU duration in µs (NCCL with timing on), -1 unknown


def timings(dump: object, wall_now_ns: int, mono_now_ns: int, after: dict[str, int],
            members: dict[str, list[int]] | None = None, limit: int = 64,
            target: int = 0) -> tuple[GroupTiming, ...]:
    """The completed collectives of each group with a sequence id above ``after[name]``
    (-1: all), the latest ``limit`` per group. ``wall_now_ns`` / ``mono_now_ns``: the rank's
    ``time.time_ns()`` and ``time.monotonic_ns()`` read together, when it took the dump.
    ``members``: group name -> global ranks, where the rank knows them (gloo's dump leaves
    ``pg_config`` empty). ``target`` (0: off): a group with more new collectives than this
    sends only the sequence ids that are multiples of a stride, the largest power of 2 that
    leaves at least ``target``: every rank of a group picks the same ones (powers of 2 nest:
    a rank that picked a coarser stride sent a subset of a finer one's), so the coordinator
    still compares like with like, at a bounded cost per batch."""
    if not isinstance(dump, dict):
        raise BrokenDump("a flight-recorder dump is a dict")
    for name, x in (("wall_now_ns", wall_now_ns), ("mono_now_ns", mono_now_ns), ("limit", limit)):
        if not isinstance(x, int) or isinstance(x, bool) or x < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {x!r}")
    if not isinstance(after, dict):
        raise ValueError(f"after must be a dict of group name -> sequence id, not {type(after).__name__}")
    limit = min(limit, MAX_PER_GROUP)
    entries, status, config = dump.get("entries"), dump.get("pg_status"), dump.get("pg_config")
    if not isinstance(entries, (list, tuple)) or limit == 0:
        return ()
    done: dict[str, int] = {}
    if isinstance(status, dict):
        for name, st in list(status.items())[:4096]:
            if isinstance(name, str) and isinstance(st, dict):
                done[name] = _int(st.get("last_completed_collective"))
    # per group: seq -> (enqueued on the monotonic clock in µs, duration in µs or -1)
    found: dict[str, dict[int, tuple[int, int]]] = {}
    for e in entries[-MAX_ENTRIES:]:
        if not isinstance(e, dict) or e.get("is_p2p") not in (False, None):
            continue     # send/recv pair two ranks: no group waits on them
        pg = e.get("process_group")
        name = pg[0] if isinstance(pg, (list, tuple)) and pg and isinstance(pg[0], str) else ""
        seq = _int(e.get("collective_seq_id"))
        if not name or len(name) > MAX_NAME or _text(name) != name or seq < 0:
            continue
        floor = after.get(name, -1)
        if seq <= (floor if _is_int(floor) else -1):
            continue          # sent in a batch before
        # done: as pg_status counts it, or as the entry says (gloo retires an entry a moment
        # before pg_status counts it)
        if not (seq <= done.get(name, -1) or e.get("state") == "completed" or e.get("retired") is True):
            continue
        timing = _timing(e, wall_now_ns, mono_now_ns)
        if timing is not None:
            found.setdefault(name, {}).setdefault(seq, timing)   # (the first of a seq twice)
    sizes = _sizes(config, members)
    # the groups most recently active first (a job with many groups steps in a few of them)
    order = sorted(found, key=lambda n: -max(enq for enq, _ in found[n].values()))[:MAX_GROUPS]
    out = []
    for name in order:
        seqs = sorted(found[name])
        if target > 0 and len(seqs) > target:
            stride = 1 << ((len(seqs) // target).bit_length() - 1)
            seqs = [s for s in seqs if s % stride == 0] or seqs[-1:]
        seqs = seqs[-limit:]
        out.append(GroupTiming(name=name, size=sizes.get(name, 0), seqs=tuple(seqs),
                               enq_us=tuple(found[name][s][0] for s in seqs),
                               dur_us=tuple(found[name][s][1] for s in seqs)))
    return tuple(out)


def _timing(e: dict, wall_now_ns: int, mono_now_ns: int) -> tuple[int, int] | None:
    """(enqueued in µs on the monotonic clock, GPU duration in µs or -1); None: absurd."""
    created = e.get("time_created_ns")
    if not _is_int(created) or created <= 0 or created > wall_now_ns + FUTURE_NS:
        return None
    enq_ns = created - wall_now_ns + mono_now_ns
    if enq_ns < 0 or enq_ns // 1000 > MAX_US:
        return None           # before the node booted: the wall clock was stepped, or garbage
    d = e.get("duration_ms")
    if d is None:
        dur = -1
    elif isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) \
            or not 0.0 <= d * 1000.0 <= MAX_DUR_US:
        return None
    else:
        dur = int(round(d * 1000.0))
    return enq_ns // 1000, dur


def _sizes(config: object, members: dict[str, list[int]] | None) -> dict[str, int]:
    """Group name -> members: ``pg_config``'s ranks where NCCL wrote them, else the caller's."""
    out: dict[str, int] = {}
    if isinstance(members, dict):
        for name, ranks in list(members.items())[:4096]:
            if isinstance(name, str) and isinstance(ranks, (list, tuple)):
                out[name] = min(len({r for r in ranks if _is_int(r) and r >= 0}), MAX_SIZE)
    if isinstance(config, dict):
        for name, c in list(config.items())[:4096]:
            if isinstance(name, str) and isinstance(c, dict):
                ranks = _config_ranks(c.get("ranks"))
                if ranks:
                    out[name] = min(len(set(ranks)), MAX_SIZE)
    return out


# -- the wire / file form ---------------------------------------------------------------------
def to_doc(groups: tuple[GroupTiming, ...]) -> dict:
    """JSON-able, bounded: the latest MAX_PER_GROUP of each of the first MAX_GROUPS groups."""
    return {"v": 1, "groups": [
        {"name": g.name, "size": g.size, "seqs": list(g.seqs[-MAX_PER_GROUP:]),
         "enq_us": list(g.enq_us[-MAX_PER_GROUP:]), "dur_us": list(g.dur_us[-MAX_PER_GROUP:])}
        for g in groups[:MAX_GROUPS]]}


def from_doc(doc: object) -> tuple[GroupTiming, ...]:
    """``to_doc``'s form read back (``"v"`` may be left out); ValueError saying what is wrong
    when no recorder could have written it. Groups past MAX_GROUPS and collectives past
    MAX_PER_GROUP (the earliest) are dropped."""
    if not isinstance(doc, dict):
        raise ValueError(f"collective timings: a dict, not {type(doc).__name__}")
    if doc.get("v", 1) != 1:
        raise ValueError(f"collective timings: version {str(doc.get('v'))[:16]!r}, not 1")
    groups = doc.get("groups", [])
    if not isinstance(groups, list):
        raise ValueError(f"collective timings: groups is a {type(groups).__name__}, not a list")
    out = []
    for g in groups[:MAX_GROUPS]:
        if not isinstance(g, dict):
            raise ValueError(f"collective timings: a group is a {type(g).__name__}, not a dict")
        lists = [g.get(k) for k in ("seqs", "enq_us", "dur_us")]
        if not all(isinstance(x, (list, tuple)) for x in lists):
            raise ValueError("collective timings: seqs, enq_us and dur_us must be lists")
        if len({len(x) for x in lists}) != 1:
            raise ValueError(f"collective timings: group {str(g.get('name'))[:MAX_NAME]!r}: seqs, "
                             f"enq_us and dur_us of different lengths")
        seqs, enq, dur = (tuple(x[-MAX_PER_GROUP:]) for x in lists)
        out.append(checked(GroupTiming(name=g.get("name"), size=g.get("size"),  # type: ignore[arg-type]
                                       seqs=seqs, enq_us=enq, dur_us=dur)))
    if len({g.name for g in out}) != len(out):
        raise ValueError("collective timings: a process group twice")
    return tuple(out)


def checked(g: GroupTiming) -> GroupTiming:
    """``g`` if ``timings`` could have made it, else ValueError saying why: the one set of
    rules, whoever reads a batch (the wire, the coordinator's judge)."""
    if not isinstance(g, GroupTiming):
        raise ValueError(f"collective timings: a {type(g).__name__}, not a GroupTiming")
    if not isinstance(g.name, str) or not 0 < len(g.name) <= MAX_NAME or _text(g.name) != g.name:
        raise ValueError(f"collective timings: group name {str(g.name)[:MAX_NAME]!r}")
    if not _is_int(g.size) or not 0 <= g.size <= MAX_SIZE:
        raise ValueError(f"collective timings: group {g.name}: size {str(g.size)[:24]}")
    if not all(isinstance(x, tuple) for x in (g.seqs, g.enq_us, g.dur_us)) \
            or not len(g.seqs) == len(g.enq_us) == len(g.dur_us) <= MAX_PER_GROUP:
        raise ValueError(f"collective timings: group {g.name}: seqs, enq_us and dur_us must be "
                         f"tuples of one length, at most {MAX_PER_GROUP}")
    last = -1
    for s, t, d in zip(g.seqs, g.enq_us, g.dur_us):     # (type() is int: no bool, no float)
        if not (type(s) is int and last < s <= MAX_SEQ):
            raise ValueError(f"collective timings: group {g.name}: sequence id {str(s)[:24]} "
                             f"(ascending whole numbers)")
        if not (type(t) is int and 0 <= t <= MAX_US):
            raise ValueError(f"collective timings: group {g.name}: enqueued at {str(t)[:24]} µs")
        if not (type(d) is int and -1 <= d <= MAX_DUR_US):
            raise ValueError(f"collective timings: group {g.name}: duration {str(d)[:24]} µs")
        last = s
    return g


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
