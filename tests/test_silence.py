"""Silence judged with evidence (core/silence.py, core/lost.py) and the deadline-driven
decision loop (core/deadline.py), on a hand-fed Cluster with an injected clock."""
from __future__ import annotations

import random

import pytest
from wdtest_helpers import dead, only_verdict, rank, report, spec, verdict_decisions

from watchdog_d.core import silence as silence_mod
from watchdog_d.core.deadline import MAX_WAIT_S, Due, next_check
from watchdog_d.core.model import NodeReport
from watchdog_d.core.stall import StepTimes, percentile
from watchdog_d.core.state import COORDINATOR, Cluster

PACE = 0.5          # the job's step time in these tests


def stepping(node: str, ranks: tuple[int, ...], step: int, age: float = 0.0, **kw: object):
    return report(node, [rank(r, step=step, last_step_age_s=age, last_step_dt_s=PACE) for r in ranks],
                  **kw)


def beat(c: Cluster, t: float, node: str, *ranks: int, step: int, age: float = 0.0) -> None:
    c.ingest(stepping(node, ranks, step, age), t)


def kinds(decisions) -> list[tuple[str, str, str]]:
    return [(d.incident.verdict.kind, d.incident.verdict.node, d.incident.action)
            for d in verdict_decisions(decisions)]


def cluster_of(nodes: int, t: float = 0.0) -> Cluster:
    """Job j1 on nodes a and b (ranks 0, 1); other nodes n2.. each run a job of their own."""
    c = Cluster()
    beat(c, t, "a", 0, step=10)
    beat(c, t, "b", 1, step=10)
    for i in range(2, nodes):
        c.ingest(report(f"n{i}", [rank(0, step=10, last_step_dt_s=PACE)], job_spec=spec(f"other{i}")), t)
    assert c.evaluate(t) == []
    return c


def idle_beats(c: Cluster, t: float, nodes: int) -> None:
    for i in range(2, nodes):
        c.ingest(report(f"n{i}", [rank(0, step=int(t * 2), last_step_dt_s=PACE)],
                        job_spec=spec(f"other{i}")), t)


# -- node_lost only when the peers corroborate ---------------------------------------------------
def test_silent_node_whose_peers_stopped_stepping_is_lost() -> None:
    c = cluster_of(4)
    for t in range(1, 8):            # b silent from 0; a's rank stepped last at 0
        beat(c, t, "a", 0, step=10, age=float(t))
        idle_beats(c, t, 4)
        found = kinds(c.evaluate(float(t)))
        if t <= 5:
            assert found == [], t    # node_timeout 5 s not reached
        else:
            assert found == [("node_lost", "b", "teardown")]
            break
    else:
        pytest.fail("no node_lost")


def test_node_lost_teardown_names_nodes_and_silence() -> None:
    c = cluster_of(2)
    for t in range(1, 7):
        beat(c, t, "a", 0, step=10, age=float(t))
    d, v = only_verdict(c.evaluate(6.0))
    assert (v.kind, v.node, v.rank) == ("node_lost", "b", None)
    assert d.verb == "teardown" and d.nodes == ("a", "b")
    assert v.detected_after_s == pytest.approx(6.0)
    assert "stopped stepping" in v.cause


def test_silent_node_whose_peers_keep_stepping_is_agent_lost_not_torn_down() -> None:
    """Only b's agent is gone (restarting): a's rank keeps stepping, which it could not
    do without b's rank. A warning, once, and the job runs on."""
    c = cluster_of(2)
    out = []
    for t in range(1, 30):
        beat(c, t, "a", 0, step=10 + t)
        out += c.evaluate(float(t))
    assert kinds(out) == [("agent_lost", "b", "none")]
    assert all(d.verb == "none" for d in out)
    assert c.jobs["j1"].status == "running"
    v = verdict_decisions(out)[0].incident.verdict
    assert v.advisory and "keep stepping" in v.cause
    # the agent comes back: the episode is over; a later silence is a new warning
    beat(c, 30, "b", 1, step=40)
    beat(c, 30, "a", 0, step=40)
    assert c.evaluate(30.0) == []
    out = []
    for t in range(31, 40):
        beat(c, t, "a", 0, step=10 + t)
        out += c.evaluate(float(t))
    assert kinds(out) == [("agent_lost", "b", "none")]


def test_agent_lost_then_peers_stop_becomes_node_lost() -> None:
    """The agent died first (peers stepped on), then the node went down with it."""
    c = cluster_of(2)
    out = []
    for t in range(1, 10):
        beat(c, t, "a", 0, step=10 + t)
        out += c.evaluate(float(t))
    assert kinds(out) == [("agent_lost", "b", "none")]
    for t in range(10, 20):
        beat(c, t, "a", 0, step=19, age=t - 9.0)
        out += c.evaluate(float(t))
    assert kinds(out)[-1] == ("node_lost", "b", "teardown")


def test_no_pace_known_no_loss_before_the_first_step() -> None:
    """Before the first step nobody is expected to step: silence alone is not a loss."""
    c = Cluster()
    c.ingest(report("a", [rank(0, step=-1)]), 0.0)
    c.ingest(report("b", [rank(1, step=-1)]), 0.0)
    for t in range(1, 120):
        c.ingest(report("a", [rank(0, step=-1, last_step_age_s=float(t))]), float(t))
        assert verdict_decisions(c.evaluate(float(t))) == [], t


def test_a_peer_inside_a_checkpoint_is_no_witness() -> None:
    c = cluster_of(2)
    for t in range(1, 60):
        c.ingest(report("a", [rank(0, step=10, last_step_age_s=float(t), last_step_dt_s=PACE,
                                   section="checkpoint", section_remaining_s=900.0 - t)]), float(t))
        assert verdict_decisions(c.evaluate(float(t))) == [], t


def test_a_slow_job_gets_a_longer_wait_for_witnesses() -> None:
    """Steps of 20 s: a peer 8 s past its last step is not stopped."""
    c = Cluster()
    c.ingest(report("a", [rank(0, step=10, last_step_dt_s=20.0)]), 0.0)
    c.ingest(report("b", [rank(1, step=10, last_step_dt_s=20.0)]), 0.0)
    for t in range(1, 20):
        c.ingest(report("a", [rank(0, step=10, last_step_age_s=float(t), last_step_dt_s=20.0)]), t)
        assert verdict_decisions(c.evaluate(float(t))) == [], t
    # the next step ends at 22 s (a whole step after b fell silent): the agent was lost,
    # not the node
    c.ingest(report("a", [rank(0, step=11, last_step_age_s=0.0, last_step_dt_s=20.0)]), 22.0)
    assert kinds(c.evaluate(22.0)) == [("agent_lost", "b", "none")]


def test_a_job_none_of_whose_nodes_reports_is_warned_not_torn_down() -> None:
    c = cluster_of(6)
    out = []
    for t in range(1, 30):
        idle_beats(c, t, 6)          # the rest of the cluster reports: not an isolation
        out += c.evaluate(float(t))
    assert kinds(out) == [("node_lost", "a", "none")]
    assert all(d.verb == "none" for d in out) and c.jobs["j1"].status == "running"
    assert "nothing left to tear down" in verdict_decisions(out)[0].incident.verdict.cause


# -- the coordinator's own trouble -----------------------------------------------------------------
def test_mass_silence_is_coordinator_isolated_and_tears_nothing_down() -> None:
    """An 8 s blackout of every node (the coordinator's link): one warning, no verdict on
    any job; silence clocks restart when reports resume."""
    c = cluster_of(10)
    for t in range(1, 5):
        beat(c, t, "a", 0, step=10 + t)
        beat(c, t, "b", 1, step=10 + t)
        idle_beats(c, t, 10)
        assert c.evaluate(float(t)) == []
    out = []
    for tenth in range(41, 131):     # 4.1 .. 13.0 s: nothing arrives
        out += c.evaluate(tenth / 10)
    assert kinds(out) == [("coordinator_isolated", "", "none")]
    assert out[0].job_id == COORDINATOR and out[0].verb == "none" and out[0].alert
    assert c.silence.isolated
    # reports resume (b's a little later than the others): nobody is judged on the blackout
    beat(c, 13.2, "a", 0, step=23)
    idle_beats(c, 13.2, 10)
    out = []
    for tenth in range(133, 170):
        if tenth == 150:
            beat(c, 15.0, "b", 1, step=25)
        if tenth % 10 == 0:
            idle_beats(c, tenth / 10, 10)
        beat(c, tenth / 10, "a", 0, step=tenth // 5)
        out += c.evaluate(tenth / 10)
    assert verdict_decisions(out) == [] and not c.silence.isolated
    assert [e.began for e in c.episodes] == [True, False]


def test_a_node_still_silent_after_the_episode_is_judged_from_its_end() -> None:
    c = cluster_of(10)
    for tenth in range(1, 100):      # 0.1 .. 9.9 s: nobody reports
        c.evaluate(tenth / 10)
    assert c.silence.isolated
    # everyone but b is back at 10 s; b's rank-mate a is stuck: b is lost, but only
    # node_timeout after the episode ended, not after b's last report
    out = {}
    for tenth in range(100, 200):
        t = tenth / 10
        beat(c, t, "a", 0, step=10, age=t)
        idle_beats(c, t, 10)
        found = kinds(c.evaluate(t))
        if found:
            out[t] = found
    (when, found), = out.items()
    assert found == [("node_lost", "b", "teardown")]
    assert 15.0 < when <= 15.5


def test_the_coordinators_own_stall_restarts_silence_clocks() -> None:
    """The coordinator's VM was paused 8 s: every node looks 8 s silent; none is lost."""
    c = cluster_of(2)
    for t in range(1, 4):
        beat(c, t, "a", 0, step=10, age=float(t))     # a's rank stuck: would corroborate
        beat(c, t, "b", 1, step=10, age=float(t))
        c.evaluate(float(t))
    d = c.own_stall(3.0, 11.0)
    assert kinds(d) == [("coordinator_isolated", "", "none")]
    assert "own loop stalled for 8.0s" in d[0].incident.verdict.cause
    assert verdict_decisions(c.evaluate(11.0)) == []
    beat(c, 11.3, "a", 0, step=10, age=11.3)
    assert verdict_decisions(c.evaluate(15.9)) == []     # b: 4.9 s since the stall ended
    beat(c, 16.2, "a", 0, step=10, age=16.2)
    assert kinds(c.evaluate(16.2)) == [("node_lost", "b", "teardown")]


def test_overload_makes_latency_not_verdicts() -> None:
    """Reports processed up to 3 s late, in bursts, for a minute: no verdict."""
    c = cluster_of(40)
    rng = random.Random(7)
    t, out = 0.0, []
    while t < 60:
        t += rng.uniform(0.5, 3.0)           # the loop runs late; then a burst of reports
        beat(c, t, "a", 0, step=int(t / PACE), age=rng.uniform(0, PACE))
        beat(c, t, "b", 1, step=int(t / PACE), age=rng.uniform(0, PACE))
        idle_beats(c, t, 40)
        out += c.evaluate(t)
    assert [k for k in kinds(out) if k[0] != "coordinator_isolated"] == []


def test_one_node_alone_silent_is_not_a_mass_silence() -> None:
    s = silence_mod.Silence()
    for n in range(20):
        s.heard(f"n{n}", 0.0)
    for t in range(1, 10):
        for n in range(1, 20):
            s.heard(f"n{n}", float(t))
        assert s.check(float(t)) is None
    assert not s.isolated


def test_departed_nodes_are_forgotten_and_a_leaving_node_at_once() -> None:
    c = cluster_of(4)
    c.ingest(NodeReport(node_id="n3", leaving=True), 1.0)
    assert "n3" not in c.silence.seen
    for t in range(2, int(silence_mod.ACTIVE_S) + 10, 5):
        beat(c, t, "a", 0, step=t)
        beat(c, t, "b", 1, step=t)
        c.evaluate(float(t))
    assert c.forget_departed() == ["n2"]
    assert set(c.silence.seen) == {"a", "b"}


# -- the deadline-driven loop ----------------------------------------------------------------------
def test_a_healthy_job_is_looked_at_about_once_per_node_timeout() -> None:
    c = cluster_of(2)
    looked = []
    orig = c._evaluate_job

    def spy(book, now):
        looked.append(now)
        return orig(book, now)

    c._evaluate_job = spy  # type: ignore[method-assign]
    for tenth in range(1, 600):          # 60 s, reports every second, the loop every 0.1 s
        t = tenth / 10
        if tenth % 10 == 0:
            beat(c, t, "a", 0, step=tenth)
            beat(c, t, "b", 1, step=tenth)
        assert c.evaluate(t) == []
    assert 10 <= len(looked) <= 20, looked


def test_an_exit_is_looked_at_in_the_same_pass() -> None:
    c = cluster_of(2)
    c.ingest(report("a", [dead(0, sig=9)]), 0.5)
    d, v = only_verdict(c.evaluate(0.5))
    assert v.kind == "rank_exited" and d.verb == "teardown"


def test_stall_deadline_is_met_to_the_tick() -> None:
    c = Cluster()
    s = spec(node_timeout_s=1e9, min_stall_timeout_s=60.0)
    c.ingest(report("a", [rank(0, step=5, last_step_dt_s=PACE)], job_spec=s), 0.0)
    c.evaluate(0.0)
    asked = None
    for tenth in range(1, 700):
        t = tenth / 10
        d = c.evaluate(t)
        if d and asked is None:
            asked = t
    assert asked == pytest.approx(30.0, abs=0.11)       # stacks at half the timeout


def test_next_check_is_never_later_than_max_wait() -> None:
    c = cluster_of(2)
    book = c.jobs["j1"]
    assert next_check(book, 0.0, c.silence) <= MAX_WAIT_S


def test_faster_steps_move_the_deadline_earlier() -> None:
    """Slow first steps learned a long timeout; fast ones bring it down: the job is
    looked at on the new, earlier deadline, not the one planned."""
    c = Cluster()
    s = spec(node_timeout_s=1e9, min_stall_timeout_s=10.0)
    for i in range(30):
        c.ingest(report("a", [rank(0, step=i, last_step_dt_s=20.0)], job_spec=s), float(i))
        c.evaluate(float(i))
    assert c.jobs["j1"].judged_limit == pytest.approx(100.0)
    for i in range(30, 3000):
        c.ingest(report("a", [rank(0, step=i, last_step_dt_s=0.1)], job_spec=s), 30 + i * 0.01)
    assert "j1" in c.dirty


def test_due_heap_keeps_the_latest_time_per_job() -> None:
    due = Due()
    due.at("x", 5.0)
    due.at("x", 2.0)
    due.at("y", 3.0)
    assert due.pop_due(2.5) == ["x"] and due.next_at() == 3.0
    assert due.pop_due(10.0) == ["y"] and len(due) == 0
    for i in range(1000):
        due.at("z", float(i))
    assert due.pop_due(998.0) == [] and due.pop_due(999.0) == ["z"]


def test_step_times_percentiles_match_a_sort() -> None:
    rng = random.Random(3)
    st = StepTimes()
    values = []
    for _ in range(5000):
        v = rng.lognormvariate(0, 1)
        st.add(v)
        values.append(v)
        window = values[-st.samples.maxlen:]
        if rng.random() < 0.01:
            assert st.p99() == percentile(window, 99)
            assert st.median() == percentile(window, 50)
            assert st.longest() == max(window)


def test_a_stale_node_is_not_behind_its_fresh_peers() -> None:
    """B froze at step 3 (its last report); A's rank, stepping in lock-step, got to 7 before
    it stopped too. B's step is stale, not behind: no rank_stalled naming B on old news;
    at node_timeout B is lost, corroborated by A's stopped rank."""
    s = spec(min_stall_timeout_s=3.0)
    c = Cluster()
    c.ingest(report("a", [rank(0, step=3, last_step_dt_s=0.1)], job_spec=s), 0.0)
    c.ingest(report("b", [rank(1, step=3, last_step_dt_s=0.1)], job_spec=s), 0.0)
    out = []
    for tenth in range(1, 80):
        t = tenth / 10
        if tenth % 10 == 0:      # A reports every second; its rank stopped at step 7 at 0.4 s
            c.ingest(report("a", [rank(0, step=7, last_step_age_s=t - 0.4, last_step_dt_s=0.1)],
                            job_spec=s), t)
        out += [(t, d) for d in c.evaluate(t) if d.incident]
    (t, d), = out
    assert d.incident.verdict.kind == "node_lost" and d.incident.verdict.node == "b"
    assert 5.0 < t <= 5.3


def test_overload_holds_silence_clocks_and_says_so() -> None:
    """Reports wait for the coordinator's loop: a node whose reports wait 6 s in its
    sockets while its peers' get through is not judged; after the overload it is, from the
    moment the coordinator kept up again."""
    c = cluster_of(10)
    out = []
    for tenth in range(1, 200):
        t = tenth / 10
        if tenth % 10 == 0:
            beat(c, t, "a", 0, step=10 + tenth)      # b's reports are kept waiting
            idle_beats(c, t, 10)
        out += c.load(t, t < 12) + c.evaluate(t)
    found = kinds(out)
    assert found[0] == ("coordinator_isolated", "", "none")
    assert "overloaded" in verdict_decisions(out)[0].incident.verdict.cause
    # the overload ended at 12 s: b is judged node_timeout later (its peers step: agent_lost)
    assert found[1:] == [("agent_lost", "b", "none")]
    assert [e.began for e in c.episodes] == [True, False]


def test_a_node_lost_during_overload_is_still_lost_when_its_peers_report_they_stopped() -> None:
    c = cluster_of(10)
    out = []
    for tenth in range(1, 120):
        t = tenth / 10
        if tenth % 10 == 0:
            beat(c, t, "a", 0, step=10, age=t)      # a reports: no step since b went
            idle_beats(c, t, 10)
        out += c.load(t, True) + c.evaluate(t)
    assert [k for k in kinds(out) if k[0] != "coordinator_isolated"] == [("node_lost", "b", "teardown")]


def test_jobs_and_nodes_that_left_leave_nothing_behind() -> None:
    """Bounded memory: 200 one-node jobs come, end and go; an hour and ten minutes later
    the picture holds nothing of them."""
    from watchdog_d.core.state import KEEP_ENDED_S

    c = Cluster()
    for i in range(200):
        s = spec(f"job{i}")
        c.ingest(report(f"n{i}", [rank(0, step=1)], job_spec=s), float(i))
        c.evaluate(float(i))
        c.ingest(report(f"n{i}", [dead(0, code=0)], state="exited", job_spec=s), i + 0.5)
        c.evaluate(i + 0.5)
    assert len(c.jobs) == 200
    t = 200 + KEEP_ENDED_S + silence_mod.ACTIVE_S
    for step in range(0, int(t), 5):
        c.evaluate(float(step))
    c.evaluate(t + 10)
    assert c.jobs == {} and c.node_jobs == {} and len(c.due) == 0 and c.silence.seen == {}
    assert len(c.forget_departed()) == 200
