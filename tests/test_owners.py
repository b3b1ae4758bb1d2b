"""A job belongs to the uid that registered it first, on every node (core.owner, the
coordinator's state, the wire). The agent's side runs in integration/test_job_owners.py."""
from __future__ import annotations

from dataclasses import replace

import pytest

from watchdog_d.core import owner
from watchdog_d.core.state import Cluster
from watchdog_d.proto import convert
from wdtest_helpers import dead, report

ALICE, BOB = 1001, 1002


def _as(uid: int, node: str, ranks=(0, 1), **kw):
    r = report(node, ranks, **kw)
    return replace(r, jobs=tuple(replace(p, owner=uid) for p in r.jobs))


def test_who_may_join() -> None:
    assert owner.may_join(ALICE, ALICE)
    assert not owner.may_join(ALICE, BOB)
    assert owner.may_join(ALICE, owner.ROOT)                # root may
    assert not owner.may_join(owner.ROOT, ALICE)            # a job of root's is root's
    assert owner.may_join(owner.UNKNOWN, BOB) and owner.may_join(ALICE, owner.UNKNOWN)


def test_a_node_bringing_the_job_under_another_uid_is_refused_and_nothing_of_it_taken() -> None:
    c = Cluster()
    c.ingest(_as(ALICE, "n0"), 100.0)
    c.ingest(_as(BOB, "n1", (dead(2, code=3),), state="exited", exit_code=3), 101.0)
    book = c.jobs["j1"]
    assert book.owner == ALICE and sorted(book.nodes) == ["n0"]
    assert [(r.node_id, r.owner, r.uid) for r in c.new_refusals] == [("n1", ALICE, BOB)]
    orders = c.standing_orders("n1")
    assert [(o.verb, o.job_id) for o in orders] == [("refuse", "j1")]
    assert "belongs to uid 1001, not to uid 1002" in orders[0].action
    assert c.standing_orders("n0") == []
    assert all(d.verb != "teardown" for d in c.evaluate(102.0))   # the owner's job untouched
    # said once per episode, however often it reports
    c.new_refusals.clear()
    c.ingest(_as(BOB, "n1", (dead(2, code=3),), state="exited", exit_code=3), 102.0)
    assert c.new_refusals == []
    # it drops the job: the episode is over, no more orders
    c.ingest(replace(report("n1", ()), jobs=()), 103.0)
    assert c.standing_orders("n1") == [] and c.refused == {}


def test_root_may_join_and_an_older_agent_is_not_judged() -> None:
    c = Cluster()
    c.ingest(_as(ALICE, "n0"), 100.0)
    c.ingest(_as(owner.ROOT, "n1", (2, 3)), 100.5)
    c.ingest(report("n2", (4, 5)), 100.6)                   # (owner not said: -1)
    assert sorted(c.jobs["j1"].nodes) == ["n0", "n1", "n2"] and c.refused == {}


def test_an_owner_first_said_by_a_newer_agent_is_taken() -> None:
    c = Cluster()
    c.ingest(report("n0", (0, 1)), 100.0)
    c.ingest(_as(ALICE, "n1", (2, 3)), 100.5)
    assert c.jobs["j1"].owner == ALICE
    c.ingest(_as(BOB, "n2", (4, 5)), 101.0)
    assert ("j1", "n2") in c.refused


def test_after_the_job_ended_its_id_is_free_for_a_new_run_by_anyone() -> None:
    c = Cluster()
    c.ingest(_as(ALICE, "n0", (dead(0, code=0), dead(1, code=0)), state="exited"), 100.0)
    c.evaluate(100.0)
    assert c.jobs["j1"].status == "ended"
    c.ingest(_as(BOB, "n1", (2, 3), run="bobs"), 200.0)
    assert c.jobs["j1"].owner == BOB and c.refused == {}


def test_owner_on_the_wire() -> None:
    r = _as(ALICE, "n0")
    back = convert.report_from_pb(convert.report_to_pb(r))
    assert back.jobs[0].owner == ALICE
    root = convert.report_from_pb(convert.report_to_pb(_as(owner.ROOT, "n0")))
    assert root.jobs[0].owner == owner.ROOT                  # (0 is said, not "unset")
    unset = convert.report_from_pb(convert.report_to_pb(report("n0", (0,))))
    assert unset.jobs[0].owner == owner.UNKNOWN
    m = convert.report_to_pb(r)
    m.jobs[0].owner_uid = -5
    with pytest.raises(convert.WireError, match="bad owner uid"):
        convert.report_from_pb(m)
