"""Stragglers: ranks that hold their peers back (pure; runs in the coordinator).

A collective ends when its last member reaches it: a rank that is consistently the last
to reach its groups' collectives makes every peer wait, every step. Each rank sends the
times of its completed collectives (``core.frtiming``); here they are put on the
coordinator's clock (``NodeClocks``), compared per collective (``Lags``), and a rank
that is late by a real share of the step in most of its collectives over a window of
steps is a ``Straggler``. ``gpu_note`` says what its node's GPUs say about it.
"""
from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from . import frtiming
from .frtiming import GroupTiming, _is_int
from .model import GpuState

# -- node clocks ------------------------------------------------------------------------------
WINDOW_BEATS = 60           # the offset is the least delay over this many heartbeats ...
WINDOW_S = 120.0            # ... or this long, whichever is fewer
MAX_NODES = 100_000         # nodes remembered (the least recently heard forgotten first)
JUMP_S = 2.0                # heartbeats this far above the estimate, ...
JUMP_BEATS = 3              # ... this many in a row: the node's clock was reset (a reboot)

# -- lags -------------------------------------------------------------------------------------
HORIZON_S = 30.0            # a collective not reported by every member by then is compared as is
MAX_KEYS = 100_000          # collectives awaiting their members' reports, per job (oldest dropped)
MAX_PENDING = 2_000_000     # (rank, time) pairs in those, per job
MAX_RANKS = 65_536          # ranks followed per job (later ones are not judged)
MAX_RANK = 1 << 24          # a rank number beyond this is not one
MAX_GROUPS_SEEN = 64        # groups per rank whose last sequence id is remembered
RING_MAX = 4096             # samples per rank, whatever the window
MIN_SAMPLES = 20            # judged on at least this many collectives ...
MIN_WINDOW_S = 20.0    # timings come in batches (every 5 s): a window holds a few of them at least
SPAN = 0.9                  # ... over at least this share of the window
MIN_LAG_S = 0.005           # late by less is noise (clock error, scheduling), whatever the step
FUTURE_S = 5.0              # a collective enqueued later than now + this: a wrong clock
STALE_S = 3600.0            # ... or earlier than now - this
RECOMPUTE = 0.02            # a rank's verdict is recomputed when the step time moved this much


class NodeClocks:
    """Maps each node's monotonic clock onto the coordinator's clock.

    Each heartbeat carries the agent's monotonic time when it built it (``sent``) and
    arrives at the coordinator at ``arrival`` (the coordinator's clock). Then
    ``arrival - sent = offset + delay``: the difference of the two clocks plus the time the
    heartbeat spent in transit (network, queues, the coordinator's own lateness), never
    negative. The minimum over the node's last WINDOW_BEATS heartbeats (WINDOW_S at most:
    clocks drift apart, a few ppm) is the offset plus the smallest delay seen, the classic
    one-way-delay min filter: its error is that smallest delay, sub-millisecond on a LAN.
    A constant offset between hosts cancels, however large (monotonic clocks count from
    boot: nodes booted days apart differ by days), and so does wall-clock skew (nothing
    here reads a wall clock). A node whose clock was reset (rebooted) reads far above the
    estimate from then on; after JUMP_BEATS such heartbeats in a row its old ones are
    forgotten (a clock that moved the other way is taken at once: it is a new minimum).
    """

    def __init__(self) -> None:
        self._nodes: OrderedDict[str, _Clock] = OrderedDict()

    def observe(self, node: str, sent_mono_s: float, arrival_s: float) -> None:
        """One heartbeat (``sent_mono_s`` <= 0: its agent did not say: ignored)."""
        if not (isinstance(node, str) and node and _finite(sent_mono_s) and sent_mono_s > 0
                and _finite(arrival_s)):
            return
        c = self._nodes.get(node)
        if c is None:
            c = self._nodes[node] = _Clock()
            if len(self._nodes) > MAX_NODES:
                self._nodes.popitem(last=False)       # the least recently heard
        self._nodes.move_to_end(node)
        c.add(arrival_s, arrival_s - sent_mono_s)

    def to_local(self, node: str, mono_s: float) -> float | None:
        """``mono_s`` on ``node``'s monotonic clock, on the coordinator's (None: no heartbeat
        from the node yet)."""
        c = self._nodes.get(node)
        if c is None or not c.n or not _finite(mono_s):
            return None
        return mono_s + c.offset

    def forget(self, node: str) -> None:
        self._nodes.pop(node, None)


class _Clock:
    __slots__ = ("arrival", "delta", "n", "i", "offset", "above")

    def __init__(self) -> None:
        self.arrival, self.delta = array("d", bytes(8 * WINDOW_BEATS)), array("d", bytes(8 * WINDOW_BEATS))
        self.n, self.i, self.above, self.offset = 0, 0, 0, 0.0

    def add(self, arrival: float, delta: float) -> None:
        self.above = self.above + 1 if self.n and delta > self.offset + JUMP_S else 0
        if self.above >= JUMP_BEATS:
            self.n = self.i = self.above = 0          # a new clock: start over
        self.arrival[self.i], self.delta[self.i] = arrival, delta
        self.i, self.n = (self.i + 1) % WINDOW_BEATS, min(self.n + 1, WINDOW_BEATS)
        cut = arrival - WINDOW_S
        self.offset = min(d for a, d in zip(self.arrival[:self.n], self.delta[:self.n]) if a >= cut)


@dataclass(frozen=True)
class Straggler:
    rank: int
    node: str
    lag_s: float          # median lag behind the median of its peers over the window
    share: float          # share of its collectives in which it was late by >= the threshold
    samples: int
    basis: str            # "enqueue" (host-side enqueue times) | "gpu" (NCCL durations)
    loss: float           # ~ share of the step time the job loses: min(1, lag_s / step_s)


class _Pending:                 # one collective (group, seq), as its members reported it so far
    __slots__ = ("since", "size", "ranks", "enq", "dur")

    def __init__(self, since: float) -> None:
        self.since, self.size = since, 0
        self.ranks, self.enq, self.dur = array("i"), array("d"), array("d")


class _Rank:     # a ring of (when, lag, GPU basis) in arrays: 16k ranks x 400 samples = 85 MB
    __slots__ = ("node", "t", "lag", "gpu", "i", "first", "newest", "dirty", "cache", "last")

    def __init__(self) -> None:
        self.node = ""
        self.t, self.lag, self.gpu = array("d"), array("f"), array("b")
        self.i = 0
        self.first, self.newest, self.dirty = math.inf, -math.inf, False
        self.cache: tuple[float, float, int, int, int] | None = None  # step_s, median, n, over, gpu
        self.last: dict[str, int] = {}           # group -> the last sequence id taken


class Lags:
    """One job's collective timings, folded into per-rank lags."""

    def __init__(self, window_steps: int = 100, lag_fraction: float = 0.1, min_share: float = 0.75):
        if not _is_int(window_steps) or not 1 <= window_steps <= 10_000:
            raise ValueError(f"window_steps must be a whole number of 1-10000, got {window_steps!r}")
        if not _finite(lag_fraction) or not 0 < lag_fraction <= 10:
            raise ValueError(f"lag_fraction must be a number > 0 and <= 10, got {lag_fraction!r}")
        if not _finite(min_share) or not 0 < min_share <= 1:
            raise ValueError(f"min_share must be a number > 0 and <= 1, got {min_share!r}")
        self.window_steps, self.lag_fraction, self.min_share = window_steps, lag_fraction, min_share
        self._cap = min(RING_MAX, 4 * window_steps)
        self.reset()

    def reset(self) -> None:
        """A new attempt: sequence ids start over, nothing before counts."""
        self._pending: OrderedDict[tuple[str, int], _Pending] = OrderedDict()
        self._entries = 0
        self._done: OrderedDict[tuple[str, int], float] = OrderedDict()   # folded lately
        self._ranks: dict[int, _Rank] = {}
        self._lags: dict[int, float] = {}

    def add(self, rank: int, node: str, groups: tuple[GroupTiming, ...],
            to_local: Callable[[float], float | None], now: float) -> None:
        """One batch of one rank; ``to_local`` maps the node's monotonic seconds onto the
        coordinator's clock (``NodeClocks.to_local`` bound to the node: an offset)."""
        if not (_is_int(rank) and 0 <= rank < MAX_RANK and _finite(now)) \
                or not isinstance(groups, (tuple, list)):
            return
        self._fold_due(now)
        good = []
        for g in groups[:frtiming.MAX_GROUPS]:
            try:
                good.append(frtiming.checked(g))
            except ValueError:
                continue          # absurd numbers: no recorder wrote them
        if not any(g.seqs for g in good):
            return
        # the node's clock is the coordinator's plus an offset: one call maps the batch
        ref = max(t for g in good for t in g.enq_us) / 1e6
        local = to_local(ref)
        if not _finite(local):
            return                # no heartbeat from the node yet: its times mean nothing here
        off = local - ref         # type: ignore[operator]
        r = self._ranks.get(rank)
        if r is None and len(self._ranks) < MAX_RANKS:
            r = self._ranks[rank] = _Rank()
        if r is None:
            return                # past MAX_RANKS: not followed
        r.node = node[:128] if isinstance(node, str) else ""
        for g in good:
            last = r.last.get(g.name, -1)
            for seq, enq, dur in zip(g.seqs, g.enq_us, g.dur_us):
                t = enq / 1e6 + off
                key = (g.name, seq)
                # taken before (a batch sent twice), or a clock gone wrong
                if seq <= last or not now - STALE_S <= t <= now + FUTURE_S or key in self._done:
                    continue
                p = self._pending.get(key)
                if p is None:
                    p = self._pending[key] = _Pending(now)
                p.size = max(p.size, g.size)
                p.ranks.append(rank)
                p.enq.append(t)
                p.dur.append(dur / 1e6 if dur >= 0 else math.nan)
                self._entries += 1
                if p.size and len(p.ranks) >= p.size:
                    self._fold(key, now)          # every member reported it
            if g.seqs:
                r.last.pop(g.name, None)          # (re-inserted: the oldest group goes first)
                r.last[g.name] = max(last, g.seqs[-1])
                if len(r.last) > MAX_GROUPS_SEEN:
                    del r.last[next(iter(r.last))]
        # bounded: the oldest collectives dropped, not compared (a straggler's own report
        # may be what they wait for)
        while len(self._pending) > MAX_KEYS or self._entries > MAX_PENDING:
            _, p = self._pending.popitem(last=False)
            self._entries -= len(p.ranks)

    def _fold_due(self, now: float) -> None:
        # ranks report in batches every few seconds: a member not heard from within
        # HORIZON_S is gone or far behind, and the others are compared without it
        while self._pending:
            key, p = next(iter(self._pending.items()))
            if now - p.since < HORIZON_S:
                break
            self._fold(key, now)
        while self._done and (now - next(iter(self._done.values())) > 2 * HORIZON_S
                              or len(self._done) > 2 * MAX_KEYS):
            self._done.popitem(last=False)

    def _fold(self, key: tuple[str, int], now: float) -> None:
        """One collective's members' lags into their samples; it is then forgotten."""
        p = self._pending.pop(key)
        self._entries -= len(p.ranks)
        self._done[key] = now                      # a late report of it is not a new one
        n = len(p.ranks)
        if n < 2:
            return                                 # nobody to compare with
        # GPU basis where NCCL timed every member: a straggler's kernel starts last, so it
        # is the shortest (everyone else waits inside theirs). Else the host-side enqueue
        # points: a straggler reaches the collective last.
        gpu = not any(math.isnan(d) for d in p.dur)
        vals = p.dur if gpu else p.enq
        order = sorted(range(n), key=vals.__getitem__)   # sorted once: O(n log n) per key
        sv = [vals[i] for i in order]
        when = min(now, sorted(p.enq)[n // 2])    # the collective's time: its median enqueue
        for pos, i in enumerate(order):
            # the median of the OTHERS: with 2 ranks a median of all would halve the lag
            other = _median_without(sv, pos)
            lag = other - sv[pos] if gpu else sv[pos] - other
            r = self._ranks.get(p.ranks[i])
            if r is None:
                continue
            if len(r.t) < self._cap:
                r.t.append(when)
                r.lag.append(lag)
                r.gpu.append(gpu)
            else:
                r.t[r.i], r.lag[r.i], r.gpu[r.i] = when, lag, gpu
                r.i = (r.i + 1) % self._cap
            r.first, r.newest, r.dirty = min(r.first, when), max(r.newest, when), True

    def judge(self, now: float, step_s: float) -> list[Straggler]:
        """The stragglers now, worst first; none while the step time is not known."""
        if not (_finite(step_s) and step_s > 0 and _finite(now)):
            self._lags = {}
            return []
        self._fold_due(now)
        window = max(self.window_steps * step_s, MIN_WINDOW_S)
        cut = now - window
        threshold = max(self.lag_fraction * step_s, MIN_LAG_S)
        out, lags = [], {}
        for rank, r in self._ranks.items():
            # no recent evidence, or not a window's worth yet (its first sample ever counts:
            # with many collectives a step, the ring holds fewer steps than the window)
            if r.newest < cut or r.first > now - SPAN * window:
                continue
            # recomputed only with new samples (or a step time that moved): cheap for 16k ranks
            c = r.cache
            if r.dirty or c is None or abs(c[0] - step_s) > RECOMPUTE * step_s:
                c = r.cache = _summary(r, cut, threshold, step_s)
                r.dirty = False
            _, median, n, over, gpu_n = c
            if n < MIN_SAMPLES:
                continue
            lags[rank] = median
            # late in most collectives, by a real share of the step: neither uniform jitter
            # (everyone slow now and then) nor one slow step (a GC pause) moves median or share
            if median >= threshold and over / n >= self.min_share:
                out.append(Straggler(rank=rank, node=r.node, lag_s=median, share=over / n, samples=n,
                                     basis="gpu" if 2 * gpu_n >= n else "enqueue",
                                     loss=min(1.0, median / step_s)))
        self._lags = lags
        out.sort(key=lambda s: (-s.lag_s, s.rank))
        return out

    def lag_of(self) -> dict[int, float]:
        """Rank -> its median lag as last judged (the ranks judged only)."""
        return dict(self._lags)


def _summary(r: _Rank, cut: float, threshold: float, step_s: float) -> tuple[float, float, int, int, int]:
    """(step_s, median lag, samples, late by >= threshold, on the GPU basis) since ``cut``."""
    lags: list[float] = []
    gpu = 0
    for t, lag, b in zip(r.t, r.lag, r.gpu):
        if t >= cut:
            lags.append(lag)
            gpu += b
    lags.sort()
    n = len(lags)
    if not n:
        return step_s, 0.0, 0, 0, 0
    median = lags[n // 2] if n % 2 else (lags[n // 2 - 1] + lags[n // 2]) / 2
    return step_s, median, n, n - bisect_left(lags, threshold), gpu


def _median_without(sv: list[float], pos: int) -> float:
    """The median of sorted ``sv`` without its element at ``pos`` (len(sv) >= 2)."""
    m = len(sv) - 1          # the others' k-th is sv[k] before pos, sv[k + 1] from it on
    hi = sv[m // 2] if m // 2 < pos else sv[m // 2 + 1]
    if m % 2:
        return hi
    return (hi + (sv[m // 2 - 1] if m // 2 - 1 < pos else sv[m // 2])) / 2


# -- what the node's GPUs say -----------------------------------------------------------------
# NVML's clocks event reasons (nvmlClocksEventReason*, formerly ClocksThrottleReason*):
# the ones that hold the SM clock below what the load asks for ...
SLOWDOWNS = ((0x40, "HW thermal slowdown"), (0x80, "HW power brake slowdown"),
             (0x8, "HW slowdown"), (0x20, "SW thermal slowdown"), (0x4, "SW power cap"))
# ... and the ones that are a setting or a state, no slowdown
SETTINGS = ((0x1, "idle"), (0x2, "applications clocks setting"), (0x10, "sync boost"),
            (0x100, "display clock setting"))
MAX_NOTE = 1000


def clock_events(mask: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """NVML's clocks event bit mask: (slowdowns, other events, unknown bits included)."""
    if not _is_int(mask) or mask <= 0:
        return (), ()
    slow = tuple(name for bit, name in SLOWDOWNS if mask & bit)
    other = [name for bit, name in SETTINGS if mask & bit]
    unknown = mask & ~sum(bit for bit, _ in SLOWDOWNS + SETTINGS)
    if unknown:
        other.append(f"clocks event {unknown:#x}")
    return slow, tuple(other)


def gpu_note(gpus: tuple[GpuState, ...], local_rank: int) -> str:
    """What the node's GPUs say, one line for an alert: the rank's own GPU (index ==
    ``local_rank``) where there is one, else every GPU with something to say."""
    gs = [g for g in gpus if isinstance(g, GpuState)] if isinstance(gpus, (tuple, list)) else []
    if not gs:
        return "no GPU data from the node"
    mine = [g for g in gs if g.index == local_rank and _is_int(local_rank)]
    if mine:
        return _one(mine[0])[:MAX_NOTE]
    said = [_one(g) for g in gs if _says(g)]
    if not said:
        return f"none of the node's {len(gs)} GPUs reports a slowdown or an error"
    return "; ".join(said)[:MAX_NOTE]


def _one(g: GpuState) -> str:
    parts = ["lost (off the bus)"] if g.lost is True else []
    slow, other = clock_events(g.clocks_event_reasons)
    parts.extend(slow)
    if other:
        parts.append(", ".join(other) + " (not a slowdown)")
    elif not slow:
        parts.append("no clock slowdown")
    sm, top = g.sm_clock_mhz, g.sm_clock_max_mhz
    if _is_int(sm) and 0 <= sm < 100_000:
        parts.append(f"SM {sm}/{top} MHz" if _is_int(top) and 0 < top < 100_000 else f"SM {sm} MHz")
    if _finite(g.temperature_c) and 0 <= g.temperature_c < 1000:
        parts.append(f"{g.temperature_c:.0f} C")
    if _is_int(g.ecc_uncorrected) and g.ecc_uncorrected >= 0:
        parts.append(f"ECC {g.ecc_uncorrected}")
    if g.remap_failure is True:
        parts.append("row remapping failed")
    if _is_int(g.remapped_pending) and g.remapped_pending > 0:
        parts.append(f"{g.remapped_pending} rows pending remap")
    elif g.remapped_pending == 0 and g.remap_failure is not True:
        parts.append("no rows pending remap")
    if _is_int(g.last_xid) and g.last_xid > 0:
        parts.append(f"last Xid {g.last_xid}")
    return f"GPU {g.index if _is_int(g.index) else '?'}: " + ", ".join(parts)


def _says(g: GpuState) -> bool:
    """Something that can slow a rank or is wrong with the GPU."""
    counts = (g.ecc_uncorrected, g.remapped_pending, g.last_xid)
    return (g.lost is True or g.remap_failure is True or bool(clock_events(g.clocks_event_reasons)[0])
            or any(_is_int(x) and x > 0 for x in counts))   # type: ignore[operator]


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

