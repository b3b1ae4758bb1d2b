"""Stragglers (watchdog_d/core/straggler.py): node clocks, per-rank lags, the judge and
what a node's GPUs say. Pure: the clock is a plain float, the runs are simulated.

The simulation: in each step every rank computes, then reaches the step's collective
(its enqueue point); the collective ends when the last member reaches it, and the next
step starts for everyone then. A straggler reaches it late in every step; jitter makes
every rank late now and then.
"""
from __future__ import annotations

import math
import random
from functools import partial

import pytest

from watchdog_d.core import frtiming as F
from watchdog_d.core import straggler as S
from watchdog_d.core.frtiming import GroupTiming
from watchdog_d.core.model import GpuState

T0 = 10_000.0


def steps(n_ranks: int, n_steps: int, extra, step_s: float = 1.0, t0: float = T0) -> list[list[float]]:
    """enq[k][r]: when rank r reached collective k (the coordinator's clock); ``extra(k, r)``:
    how much later than its compute time."""
    out, t = [], t0
    for k in range(n_steps):
        arrive = [t + step_s + extra(k, r) for r in range(n_ranks)]
        out.append(arrive)
        t = max(arrive) + 0.002                       # the collective itself
    return out


def feed(lags: S.Lags, enq, step_s: float, batch_s: float = 5.0, size: int | None = None,
         node=lambda r: f"n{r // 8}", dur=None, group: str = "0", judge=True):
    """Each rank sends its completed collectives every ``batch_s``; judged after each round.
    Returns every judgement made."""
    n_ranks = len(enq[0])
    size = n_ranks if size is None else size
    done_at = [max(a) + 0.002 for a in enq]
    sent = [0] * n_ranks
    verdicts = []
    now = enq[0][0]
    while sent[0] < len(enq):
        now += batch_s
        for r in range(n_ranks):
            ks = [k for k in range(sent[r], len(enq)) if done_at[k] <= now]
            if ks:
                g = GroupTiming(group, size, tuple(k + 1 for k in ks),
                                tuple(round(enq[k][r] * 1e6) for k in ks),
                                tuple(round(dur[k][r] * 1e6) if dur else -1 for k in ks))
                lags.add(r, node(r), (g,), lambda m: m, now)
                sent[r] = ks[-1] + 1
        if judge:
            verdicts.append(lags.judge(now, step_s))
    return verdicts, now


def slow(rank: int, by: float):
    return lambda k, r: by if r == rank else 0.0


# -- found ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_ranks", [2, 4])
def test_one_rank_40_percent_behind_is_found(n_ranks: int) -> None:
    lags = S.Lags()
    enq = steps(n_ranks, 300, slow(1, 0.4))
    step_s = 1.4                                          # the step the job learned: the straggler's
    verdicts, now = feed(lags, enq, step_s)
    (s,) = verdicts[-1]
    assert (s.rank, s.node, s.basis) == (1, "n0", "enqueue")
    assert s.lag_s == pytest.approx(0.4, abs=0.01)        # not halved with 2 ranks: the OTHERS' median
    assert s.share == pytest.approx(1.0) and s.samples >= S.MIN_SAMPLES
    assert s.loss == pytest.approx(0.4 / 1.4, abs=0.01)
    gauge = lags.lag_of()
    assert set(gauge) == set(range(n_ranks)) and gauge[1] == pytest.approx(0.4, abs=0.01)
    assert all(gauge[r] <= 0.0 + 1e-6 for r in range(n_ranks) if r != 1)
    # not before a window's worth of steps (100 x 1.4 s): the first verdicts were empty
    first = next(i for i, v in enumerate(verdicts) if v)
    assert first * 5.0 >= S.SPAN * 100 * 1.4 - 5.0


def test_worst_first() -> None:
    lags = S.Lags()
    enq = steps(8, 200, lambda k, r: {3: 0.3, 5: 0.6}.get(r, 0.0))
    verdicts, _ = feed(lags, enq, 1.6)
    assert [s.rank for s in verdicts[-1]] == [5, 3]


# -- not found ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_ranks", [2, 4, 16])
def test_uniform_jitter_makes_no_straggler_over_many_windows(n_ranks: int) -> None:
    rng = random.Random(n_ranks)
    jitter = {(k, r): rng.uniform(0, 0.5) if rng.random() < 0.2 else 0.0
              for k in range(1500) for r in range(n_ranks)}
    lags = S.Lags(window_steps=30)
    enq = steps(n_ranks, 1500, lambda k, r: jitter[k, r])
    step_s = (enq[-1][0] - enq[0][0]) / 1499                 # the learned mean step
    verdicts, _ = feed(lags, enq, step_s)
    judged = sum(1 for _ in verdicts)
    assert judged > 300 and not any(verdicts)                # > 40 windows
    assert len(lags.lag_of()) == n_ranks                     # they were judged, and found fine


def test_one_slow_step_a_gc_pause_makes_no_straggler() -> None:
    lags = S.Lags(window_steps=30)
    enq = steps(4, 200, lambda k, r: 3.0 if (k, r) == (100, 2) else 0.0)
    verdicts, _ = feed(lags, enq, 1.0)
    assert not any(verdicts)
    assert lags.lag_of()[2] == pytest.approx(0.0, abs=1e-6)


def test_not_judged_before_the_step_time_is_known_nor_before_a_window() -> None:
    lags = S.Lags(window_steps=100)
    enq = steps(4, 300, slow(0, 0.5))
    feed(lags, enq, 1.5, judge=False)
    now = enq[-1][0] + 10
    for step_s in (0.0, -1.0, math.nan, math.inf, None):
        assert lags.judge(now, step_s) == [] and lags.lag_of() == {}  # type: ignore[arg-type]
    assert [s.rank for s in lags.judge(now, 1.5)] == [0]
    early = S.Lags(window_steps=100)
    feed(early, steps(4, 60, slow(0, 0.5)), 1.5, judge=False)          # 60 of 100 steps
    assert early.judge(T0 + 100.0, 1.5) == [] and early.lag_of() == {}


def test_a_small_lag_under_the_threshold_is_no_straggler() -> None:
    lags = S.Lags()
    verdicts, _ = feed(lags, steps(4, 250, slow(2, 0.05)), 1.05)      # 5 % of a step
    assert not verdicts[-1] and lags.lag_of()[2] == pytest.approx(0.05, abs=0.005)
    lags = S.Lags()
    verdicts, _ = feed(lags, steps(4, 250, slow(2, 0.004), step_s=0.01), 0.014)  # under MIN_LAG_S
    assert not verdicts[-1]


def test_late_in_only_half_its_collectives_is_no_straggler() -> None:
    lags = S.Lags()
    verdicts, _ = feed(lags, steps(4, 300, lambda k, r: 0.4 if r == 1 and k % 2 else 0.0), 1.2)
    assert not verdicts[-1]


# -- the GPU basis --------------------------------------------------------------------------------
def nccl_dump(rank_enq_ns: list[int], durs_ms: list[float], seq0: int) -> dict:
    entries = [{"record_id": seq0 + i, "pg_id": 0, "process_group": ["0", "default_pg"],
                "collective_seq_id": seq0 + i, "p2p_seq_id": 0, "op_id": seq0 + i,
                "profiling_name": "nccl:all_reduce", "time_created_ns": t, "input_sizes": [[4096]],
                "input_dtypes": ["Float"], "output_sizes": [[4096]], "output_dtypes": ["Float"],
                "state": "completed", "time_discovered_started_ns": t + 1000,
                "time_discovered_completed_ns": t + 2000, "retired": True, "timeout_ms": 600000,
                "is_p2p": False, "duration_ms": d, "frames": []}
               for i, (t, d) in enumerate(zip(rank_enq_ns, durs_ms))]
    last = seq0 + len(entries) - 1
    return {"version": "2.10", "comm_lib_version": "2.27.5",
            "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1, 2, 3]"}},
            "pg_status": {"0": {"last_enqueued_collective": last, "last_started_collective": last,
                                "last_completed_collective": last}},
            "entries": entries}


def test_gpu_basis_from_nccl_durations_the_straggler_is_the_shortest() -> None:
    # the hosts enqueue together (CUDA runs ahead of them): only the GPU times tell; rank 3's
    # kernels start 0.3 s late, so the others wait 0.3 s inside theirs
    lags = S.Lags()
    wall0 = 1_796_000_000 * 10**9
    mono0 = 50_000 * 10**9
    after: dict[int, dict[str, int]] = {r: {} for r in range(4)}
    verdicts = []
    for batch in range(60):                                  # 5 steps of 1.3 s a batch
        now = T0 + 6.5 * (batch + 1)
        for r in range(4):
            seqs = range(batch * 5 + 1, batch * 5 + 6)
            enq = [wall0 + int((T0 + 1.3 * (s - 1)) * 1e9) for s in seqs]
            durs = [0.2 if r == 3 else 300.2 for _ in seqs]    # ms
            groups = F.timings(nccl_dump(enq, durs, seqs[0]), wall0 + int(now * 1e9),
                               mono0 + int(now * 1e9), after[r])
            after[r] = {g.name: g.seqs[-1] for g in groups}
            lags.add(r, "a", groups, lambda m: m - mono0 / 1e9, now)
        verdicts.append(lags.judge(now, 1.3))
    (s,) = verdicts[-1]
    assert (s.rank, s.basis) == (3, "gpu") and s.lag_s == pytest.approx(0.3, abs=0.001)


# -- clocks ---------------------------------------------------------------------------------------
NODES = {"a": (12_345.0, 3.0), "b": (12_345.0 + 1e5, 0.0)}   # node: (monotonic, wall) - the coordinator's
WALL_EPOCH = 1_796_000_000.0


@pytest.mark.parametrize("straggler", [None, 3])
def test_clock_skew_between_nodes_makes_no_false_straggler(straggler: int | None) -> None:
    """Ranks 0, 1 on node a, 2, 3 on b: monotonic clocks 10^5 s apart, wall clocks 3 s apart,
    heartbeats delayed by 0-5 ms. Everything goes through the ranks' flight-recorder dumps."""
    rng = random.Random(7)
    node_of = {0: "a", 1: "a", 2: "b", 3: "b"}
    enq = steps(4, 260, slow(straggler, 0.4) if straggler is not None else lambda k, r: 0.0)
    done_at = [max(a) + 0.002 for a in enq]
    clocks, lags = S.NodeClocks(), S.Lags()
    after: dict[int, dict[str, int]] = {r: {} for r in range(4)}
    verdicts = []
    t = T0
    while t < enq[-1][0] + 10:
        t += 1.0
        for name, (mono, _) in NODES.items():                # heartbeats every second
            clocks.observe(name, t + mono, t + rng.uniform(0.0, 0.005))
        if int(t) % 5:
            continue
        for r in range(4):                                   # a batch every 5 s
            mono, wall = NODES[node_of[r]]
            entries = [{"collective_seq_id": k + 1, "process_group": ["0", "default_pg"],
                        "profiling_name": "gloo:all_reduce", "state": "scheduled", "is_p2p": False,
                        "time_created_ns": int(round((enq[k][r] + wall + WALL_EPOCH) * 1e9)),
                        "duration_ms": None, "time_discovered_started_ns": None}
                       for k in range(len(enq)) if done_at[k] <= t][-200:]
            if not entries:
                continue
            last = entries[-1]["collective_seq_id"]
            dump = {"version": "2.10", "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[]"}},
                    "pg_status": {"0": {"last_enqueued_collective": str(last),
                                        "last_started_collective": "-1",
                                        "last_completed_collective": str(last)}},
                    "entries": entries}
            groups = F.timings(dump, int(round((t + wall + WALL_EPOCH) * 1e9)), int(round((t + mono) * 1e9)),
                               after[r], members={"0": [0, 1, 2, 3]})
            after[r] = {g.name: g.seqs[-1] for g in groups} or after[r]
            arrival = t + rng.uniform(0.0, 0.005)
            lags.add(r, node_of[r], groups, partial(clocks.to_local, node_of[r]), arrival)
        verdicts.append(lags.judge(t, 1.4 if straggler is not None else 1.0))
    judged = lags.lag_of()
    assert len(judged) == 4
    if straggler is None:
        assert not any(verdicts)
        # the ranks reach each collective together: what is left is the clocks' error
        assert all(abs(lag) < 0.001 for lag in judged.values())
    else:
        (s,) = verdicts[-1]
        assert (s.rank, s.node) == (3, "b") and s.lag_s == pytest.approx(0.4, abs=0.002)
        assert all(abs(judged[r]) < 0.001 for r in (0, 1, 2))


def test_node_clocks_min_filter() -> None:
    rng = random.Random(1)
    c = S.NodeClocks()
    assert c.to_local("a", 5.0) is None
    for i in range(100):
        c.observe("a", 1e5 + i, i + rng.uniform(0.0, 0.005))
    assert c.to_local("a", 1e5 + 50.0) == pytest.approx(50.0, abs=0.001)
    assert c.to_local("a", math.nan) is None and c.to_local("b", 1.0) is None
    # garbage is not a heartbeat
    for sent, arrival in ((math.nan, 1.0), (1.0, math.inf), (True, 1.0), (0.0, 1.0), (-5.0, 1.0), ("1", 1.0)):
        c.observe("a", sent, arrival)                         # type: ignore[arg-type]
    c.observe("", 1.0, 1.0)
    c.observe(None, 1.0, 1.0)                                 # type: ignore[arg-type]
    assert c.to_local("a", 1e5 + 50.0) == pytest.approx(50.0, abs=0.001)


def test_node_clocks_window_follows_drift_and_a_reboot() -> None:
    c = S.NodeClocks()
    # a fast delivery long ago does not hold the estimate: 60 beats / 120 s
    c.observe("a", 1000.0, 0.0)                               # offset -1000, no delay
    for i in range(1, 200):
        c.observe("a", 1000.0 + i, i + 0.010)                 # 10 ms every time since
    assert c.to_local("a", 1100.0) == pytest.approx(100.010, abs=1e-6)
    # a reboot: the monotonic clock starts again near 0; after JUMP_BEATS beats it is believed
    for i in range(200, 200 + S.JUMP_BEATS):
        c.observe("a", 5.0 + i - 200, i + 0.001)
    assert c.to_local("a", 6.0) == pytest.approx(201.001, abs=1e-6)
    # a clock set back: a new minimum, taken at once
    c.observe("a", 1e6, 204.0)
    assert c.to_local("a", 1e6) == pytest.approx(204.0)


def test_node_clocks_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "MAX_NODES", 5)
    c = S.NodeClocks()
    for i in range(8):
        c.observe(f"n{i}", 10.0, 20.0 + i)
    c.observe("n3", 10.0, 30.0)                               # heard again: kept
    c.observe("n8", 10.0, 31.0)
    assert [n for n in (f"n{i}" for i in range(9)) if c.to_local(n, 0.0) is not None] == \
        ["n3", "n5", "n6", "n7", "n8"]
    c.forget("n3")
    assert c.to_local("n3", 0.0) is None


# -- keys, horizon, bounds, garbage -------------------------------------------------------------
def g(seqs, enq_s, size=4, dur=None, name="0"):
    return GroupTiming(name, size, tuple(seqs), tuple(round(t * 1e6) for t in enq_s),
                       tuple(dur) if dur else (-1,) * len(seqs))


def ident(m: float) -> float:
    return m


def samples(lags: S.Lags, rank: int) -> int:
    r = lags._ranks.get(rank)
    return 0 if r is None else len(r.t)


def test_a_key_that_never_completes_is_folded_after_the_horizon() -> None:
    lags = S.Lags()
    for r in range(3):                                        # rank 3 of 4 never reports
        lags.add(r, "a", (g([1], [T0 + r * 0.1]),), ident, T0 + 1)
    assert samples(lags, 0) == 0
    lags.judge(T0 + 1 + S.HORIZON_S - 1, 1.0)
    assert samples(lags, 0) == 0
    lags.judge(T0 + 1 + S.HORIZON_S, 1.0)
    assert [samples(lags, r) for r in range(3)] == [1, 1, 1]
    assert [lags._ranks[r].lag[0] for r in range(3)] == pytest.approx([-0.15, 0.0, 0.15], abs=1e-5)
    # its late report is no new collective; one lone reporter is compared with nobody
    lags.add(3, "a", (g([1], [T0 + 0.5]),), ident, T0 + 40)
    lags.add(3, "a", (g([2], [T0 + 1.5]),), ident, T0 + 40)
    lags.judge(T0 + 40 + S.HORIZON_S, 1.0)
    assert samples(lags, 3) == 0 and not lags._pending


def test_a_batch_sent_twice_counts_once_and_size_folds_at_once() -> None:
    lags = S.Lags()
    batch = (g([1, 2], [T0, T0 + 1], size=2),)
    lags.add(0, "a", batch, ident, T0 + 2)
    lags.add(0, "a", batch, ident, T0 + 3)
    lags.add(1, "a", (g([1, 2], [T0 + 0.2, T0 + 1.2], size=2),), ident, T0 + 3)
    assert samples(lags, 0) == 2 and not lags._pending
    assert list(lags._ranks[1].lag) == pytest.approx([0.2, 0.2], abs=1e-5)
    lags.reset()
    assert samples(lags, 0) == 0 and lags.lag_of() == {}
    lags.add(0, "a", batch, ident, T0 + 4)                    # a new attempt: seqs start over
    assert len(lags._pending) == 2


@pytest.mark.parametrize("bad", [
    GroupTiming("0", 4, (1,), (-5,), (-1,)),
    GroupTiming("0", 4, (1,), (math.nan,), (-1,)),            # type: ignore[arg-type]
    GroupTiming("0", 4, (1,), (1e308,), (-1,)),               # type: ignore[arg-type]
    GroupTiming("0", 4, (1,), (10**9,), (math.inf,)),         # type: ignore[arg-type]
    GroupTiming("0", 4, (1,), (10**9,), (-7,)),
    GroupTiming("0", 4, (-1,), (10**9,), (-1,)),
    GroupTiming("0", -4, (1,), (10**9,), (-1,)),
    GroupTiming("0", 4, (1, 2), (10**9,), (-1,)),
    GroupTiming("", 4, (1,), (10**9,), (-1,)),
    GroupTiming("0", 4, [1], [10**9], [-1]),                  # type: ignore[arg-type]
    "not a timing",
])
def test_absurd_timings_are_ignored(bad: object) -> None:
    lags = S.Lags()
    lags.add(0, "a", (bad,), ident, T0)                       # type: ignore[arg-type]
    assert not lags._pending and samples(lags, 0) == 0


def test_absurd_times_ranks_and_clocks_are_ignored() -> None:
    lags = S.Lags()
    far = (g([1], [T0 + 3600]),)                              # an hour in the future
    old = (g([1], [T0 - 2 * S.STALE_S]),)
    for rank, groups, to_local, now in [
        (0, far, ident, T0), (0, old, ident, T0),
        (0, (g([1], [T0]),), lambda m: None, T0),             # no heartbeat from the node yet
        (0, (g([1], [T0]),), lambda m: math.nan, T0),
        (-1, (g([1], [T0]),), ident, T0), (True, (g([1], [T0]),), ident, T0),
        (1 << 30, (g([1], [T0]),), ident, T0), (0, (g([1], [T0]),), ident, math.nan),
        (0, "groups", ident, T0), (0, None, ident, T0),
    ]:
        lags.add(rank, "a", groups, to_local, now)            # type: ignore[arg-type]
    assert not lags._pending and all(samples(lags, r) == 0 for r in lags._ranks)
    for args in [(0, 0.1, 0.75), (101_000, 0.1, 0.75), (True, 0.1, 0.75), (100, 0.0, 0.75),
                 (100, math.nan, 0.75), (100, 0.1, 0.0), (100, 0.1, 1.5)]:
        with pytest.raises(ValueError):
            S.Lags(*args)                                     # type: ignore[arg-type]


def test_bounded_pending_keys_and_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "MAX_KEYS", 50)
    monkeypatch.setattr(S, "MAX_RANKS", 10)
    lags = S.Lags()
    for batch in range(10):                                   # one rank of 4: nothing completes
        seqs = range(batch * 20 + 1, batch * 20 + 21)
        lags.add(0, "a", (g(seqs, [T0 + s * 0.01 for s in seqs]),), ident, T0 + 5)
    assert len(lags._pending) == 50 and min(lags._pending)[1] == 151      # the oldest dropped
    assert lags._entries == 50
    for r in range(20):
        lags.add(r, "a", (g([1000], [T0]),), ident, T0 + 5)
    assert len(lags._ranks) == 10
    monkeypatch.setattr(S, "MAX_PENDING", 30)
    lags.add(1, "a", (g([2000], [T0]),), ident, T0 + 5)
    assert lags._entries <= 30


def test_a_rings_samples_are_bounded_and_arrays() -> None:
    lags = S.Lags(window_steps=20)
    for k in range(500):
        for r in range(2):
            lags.add(r, "a", (g([k + 1], [T0 + k + 0.5 * r], size=2),), ident, T0 + k + 1)
    r = lags._ranks[1]
    assert len(r.t) == len(r.lag) == len(r.gpu) == 80         # 4 x the window
    assert r.t.typecode == "d" and r.lag.typecode == "f"
    assert [s.rank for s in lags.judge(T0 + 501, 1.5)] == [1]


def test_fewer_than_min_samples_in_the_window_are_not_judged() -> None:
    lags = S.Lags(window_steps=10)                            # one collective a step: ~11 samples
    for k in range(100):
        for r in range(2):
            lags.add(r, "a", (g([k + 1], [T0 + k + 0.5 * r], size=2),), ident, T0 + k + 1)
    assert lags.judge(T0 + 101, 1.5) == [] and lags.lag_of() == {}


def test_16k_ranks_one_group() -> None:
    n = 16_384
    lags = S.Lags(window_steps=20)
    for b in range(3):                                        # 3 batches of 10 collectives
        seqs = range(b * 10 + 1, b * 10 + 11)
        for r in range(n):
            late = 0.5 if r == 777 else 0.0
            lags.add(r, f"n{r // 8}", (g(seqs, [T0 + s - 1 + late for s in seqs], size=n),), ident,
                     T0 + b * 10 + 11)
    assert not lags._pending
    found = lags.judge(T0 + 31, 1.5)
    assert [(s.rank, s.node, s.samples) for s in found] == [(777, "n97", 29)]
    assert len(lags.lag_of()) == n
    assert lags.judge(T0 + 31.5, 1.5) == found                # cached: nothing new
    # the samples live in arrays: 30 x (8 + 4 + 1) bytes a rank, plus the arrays' heads
    r = lags._ranks[0]
    assert sum(x.buffer_info()[1] * x.itemsize for x in (r.t, r.lag, r.gpu)) == 30 * 13


def test_median_of_the_others_is_the_brute_force_one() -> None:
    rng = random.Random(3)
    for n in range(2, 30):
        xs = sorted(rng.choice([rng.random(), 0.5]) for _ in range(n))
        for p in range(n):
            others = sorted(xs[:p] + xs[p + 1:])
            m = len(others)
            want = others[m // 2] if m % 2 else (others[m // 2 - 1] + others[m // 2]) / 2
            assert S._median_without(xs, p) == pytest.approx(want)


# -- what the GPUs say --------------------------------------------------------------------------
def gpu(index=0, **kw) -> GpuState:
    base = dict(clocks_event_reasons=0, sm_clock_mhz=1980, sm_clock_max_mhz=1980, temperature_c=60.0,
                ecc_uncorrected=0, remapped_pending=0)
    return GpuState(index=index, **{**base, **kw})            # type: ignore[arg-type]


def test_gpu_note_of_the_ranks_own_gpu() -> None:
    gpus = (gpu(0), gpu(1), gpu(2, clocks_event_reasons=0x40, sm_clock_mhz=1095, temperature_c=89.4))
    assert S.gpu_note(gpus, 2) == "GPU 2: HW thermal slowdown, SM 1095/1980 MHz, 89 C, ECC 0, no rows pending remap"
    assert S.gpu_note(gpus, 0) == "GPU 0: no clock slowdown, SM 1980/1980 MHz, 60 C, ECC 0, no rows pending remap"
    assert S.gpu_note((), 0) == "no GPU data from the node"
    assert S.gpu_note(None, 0) == "no GPU data from the node"   # type: ignore[arg-type]


def test_gpu_note_without_the_ranks_gpu_says_every_gpu_with_something_to_say() -> None:
    gpus = (gpu(0), gpu(1, clocks_event_reasons=0x4 | 0x1), gpu(2, ecc_uncorrected=3),
            gpu(3, remap_failure=True, remapped_pending=-1), gpu(4, lost=True, last_xid=79, xid_count=1),
            gpu(5, clocks_event_reasons=0x10))
    note = S.gpu_note(gpus, -1)
    parts = note.split("; ")
    assert [p.split(":")[0] for p in parts] == ["GPU 1", "GPU 2", "GPU 3", "GPU 4"]
    assert parts[0].startswith("GPU 1: SW power cap, idle (not a slowdown), SM 1980/1980 MHz")
    assert "ECC 3" in parts[1] and "row remapping failed" in parts[2]
    assert parts[3].startswith("GPU 4: lost (off the bus), ") and parts[3].endswith("last Xid 79")
    assert S.gpu_note((gpu(0), gpu(1)), 7) == "none of the node's 2 GPUs reports a slowdown or an error"


def test_clock_events_decoded_as_nvml_defines_them() -> None:
    assert S.clock_events(0) == ((), ())
    slow, other = S.clock_events(0x1FF | 0x400)
    assert slow == ("HW thermal slowdown", "HW power brake slowdown", "HW slowdown",
                    "SW thermal slowdown", "SW power cap")
    assert other == ("idle", "applications clocks setting", "sync boost", "display clock setting",
                     "clocks event 0x400")
    assert S.clock_events(-1) == S.clock_events(True) == S.clock_events("8") == ((), ())  # type: ignore[arg-type]


def test_gpu_note_with_garbage_fields() -> None:
    odd = GpuState(index=1, clocks_event_reasons="x", sm_clock_mhz=-1, sm_clock_max_mhz=True,  # type: ignore[arg-type]
                   temperature_c=math.nan, ecc_uncorrected=-1, remapped_pending=12, remap_failure="yes")  # type: ignore[arg-type]
    assert S.gpu_note((odd,), 1) == "GPU 1: no clock slowdown, 12 rows pending remap"
    assert S.gpu_note((odd,), 0) == "GPU 1: no clock slowdown, 12 rows pending remap"
    assert len(S.gpu_note(tuple(gpu(i, ecc_uncorrected=5) for i in range(64)), -1)) <= S.MAX_NOTE
