"""Leadership (watchdog_d/core/leadership.py): who leads, when it may decide and judge silence.

Pure: the shell's etcd answers are fed by hand and the clock is plain floats.
"""
from __future__ import annotations

import math

from watchdog_d.core.leadership import LEADER, STANDBY, Change, Leadership

TTL = 9.0


def kinds(ld: Leadership) -> list[str]:
    return [c.kind for c in ld.take_changes()]


def leader(epoch: int = 7, at: float = 100.0) -> Leadership:
    """A coordinator that won at ``at``, its changes already taken."""
    ld = Leadership(ttl_s=TTL)
    ld.won(epoch, "me@h:1", began=at)
    ld.take_changes()
    return ld


def test_a_standby_that_wins_becomes_leader_with_the_epoch_and_may_decide_at_once():
    ld = Leadership(ttl_s=TTL)
    ld.won(42, "me@h:1", began=100.0)
    assert (ld.role, ld.epoch, ld.leader, ld.leading) == (LEADER, 42, "me@h:1", True)
    assert ld.took_over_at == ld.renewed_at == 100.0
    assert ld.may_decide(100.5) and ld.judges_silence(100.5)
    assert ld.take_changes() == [Change("leading", "epoch=42")]
    assert ld.take_changes() == []


def test_renewal_is_due_a_third_of_the_ttl_after_the_last_one_not_before():
    ld = leader(at=100.0)
    assert not ld.renew_due(100.0 + TTL / 3 - 0.01)
    assert ld.renew_due(100.0 + TTL / 3)
    ld.renewed(103.0)
    assert not ld.renew_due(104.0) and ld.renew_due(106.0)


def test_a_leader_past_its_ttl_with_etcd_answering_must_hear_from_etcd_before_deciding():
    ld = leader(at=100.0)
    assert ld.may_decide(100.0 + TTL - 0.01)
    assert ld.down_since is None
    assert not ld.may_decide(100.0 + TTL) and not ld.judges_silence(100.0 + TTL)
    assert not ld.may_decide(500.0)
    ld.renewed(500.0)
    assert ld.may_decide(500.1) and ld.judges_silence(500.1)


def test_etcd_unreachable_is_recorded_once_however_many_calls_fail():
    ld = leader(at=100.0)
    for t in (101.0, 102.0, 103.0):
        ld.unreachable(t, "connection refused")
    assert ld.down_since == 101.0
    assert ld.take_changes() == [Change("etcd_unreachable", "connection refused")]


def test_a_leader_past_its_ttl_with_etcd_down_keeps_deciding_but_judges_no_silence():
    ld = leader(at=100.0)
    ld.unreachable(104.0, "timeout")
    assert ld.may_decide(104.5) and ld.judges_silence(104.5)
    later = 100.0 + TTL * 5
    assert ld.may_decide(later) and not ld.judges_silence(later)


def test_any_later_answer_from_etcd_says_etcd_back_once():
    answers = {
        "renewed": lambda ld: ld.renewed(120.0),
        "observed": lambda ld: ld.observed("other@h:2", 9),
        "won": lambda ld: ld.won(11, "me@h:1", began=120.0),
        "lost": lambda ld: ld.lost("lease expired"),
    }
    for name, answer in answers.items():
        ld = leader(at=100.0)
        ld.unreachable(110.0, "timeout")
        ld.take_changes()
        answer(ld)
        answer(ld)
        assert ld.down_since is None, name
        assert kinds(ld).count("etcd_back") == 1, name


def test_a_leader_that_loses_becomes_standby_and_says_deposed_with_the_reason():
    ld = leader(at=100.0)
    ld.lost("key held by other@h:2")
    assert ld.role == STANDBY and not ld.leading
    assert ld.take_changes() == [Change("deposed", "key held by other@h:2")]
    assert not ld.may_decide(100.1) and not ld.judges_silence(100.1)
    assert ld.renewed_at == -math.inf


def test_a_standby_that_loses_says_nothing_of_being_deposed():
    ld = Leadership(ttl_s=TTL)
    ld.lost("key held by other@h:2")
    assert ld.role == STANDBY and ld.take_changes() == []


def test_a_standby_learns_who_leads_and_their_epoch_from_an_observation():
    ld = Leadership(ttl_s=TTL)
    ld.observed("other@h:2", 17)
    assert (ld.leader, ld.epoch, ld.role) == ("other@h:2", 17, STANDBY)


def test_observing_nobody_clears_the_leader_but_keeps_the_last_epoch_known():
    ld = Leadership(ttl_s=TTL)
    ld.observed("other@h:2", 17)
    ld.observed("", 0)
    assert (ld.leader, ld.epoch) == ("", 17)


def test_epochs_only_grow_across_won_lost_won_as_the_shell_feeds_them():
    ld = Leadership(ttl_s=TTL)
    seen = []
    ld.won(5, "me@h:1", began=0.0)
    seen.append(ld.epoch)
    ld.lost("lease expired")
    ld.observed("other@h:2", 8)
    seen.append(ld.epoch)
    ld.observed("", 0)
    seen.append(ld.epoch)
    ld.won(12, "me@h:1", began=50.0)
    seen.append(ld.epoch)
    assert seen == sorted(seen) and seen[-1] == 12
    assert (ld.role, ld.leader, ld.took_over_at) == (LEADER, "me@h:1", 50.0)
    assert kinds(ld) == ["leading", "deposed", "leading"]


def test_a_standby_never_decides_nor_judges_silence_whatever_the_clock():
    ld = Leadership(ttl_s=TTL)
    ld.observed("other@h:2", 3)
    for t in (-1e9, 0.0, 1.0, 1e9):
        assert not ld.may_decide(t) and not ld.judges_silence(t)
    ld.unreachable(5.0, "timeout")
    for t in (0.0, 5.0, 1e9):
        assert not ld.may_decide(t) and not ld.judges_silence(t)


def test_a_leader_that_wakes_past_its_lease_to_a_dead_etcd_does_not_decide() -> None:
    lead = Leadership(ttl_s=9.0)
    lead.won(7, "me", began=100.0)
    assert not lead.may_decide(200.0)
    lead.unreachable(200.0, "refused")          # found down only after the lease ran out
    assert not lead.may_decide(200.0) and not lead.judges_silence(200.0)


def test_observing_never_lowers_the_epoch() -> None:
    lead = Leadership(ttl_s=9.0)
    lead.observed("a@h:1", 12)
    lead.observed("a@h:1", 5)                   # a stale read
    assert lead.epoch == 12
