"""core.drill: who may drill what, the verdict's words, and what must follow for a PASS
(integration/test_drill.py runs drills on live jobs)."""
from __future__ import annotations

import re

import pytest

from watchdog_d.core import drill
from watchdog_d.core.drill import DrillRefused, Follow
from watchdog_d.core.model import Verdict
from watchdog_d.core.state import Cluster
from wdtest_helpers import dead, report

ON = {0: "n0", 1: "n1"}


def test_who_may_drill_what() -> None:
    assert drill.check("kill", 1, 1001, 1001, "running", ON, "") == "n1"
    assert drill.check("hang", 0, 1001, 0, "running", ON, "n0") == "n0"            # root may
    for args, why in [(("kill", 1, 1001, 1002, "running", ON, ""), "only its owner or root"),
                      (("kill", 1, -1, 1002, "running", ON, ""), "only its owner or root"),
                      (("reboot", 1, 1001, 1001, "running", ON, ""), "unknown fault"),
                      (("kill", 7, 1001, 1001, "running", ON, ""), "no live rank 7 in the job (live: 0, 1)"),
                      (("kill", 1, 1001, 1001, "running", ON, "n0"), "rank 1 runs on n1, not on n0"),
                      (("kill", 1, 1001, 1001, "stopping", ON, ""), "the job is stopping")]:
        with pytest.raises(DrillRefused, match=re.escape(why)):
            drill.check(*args)


def test_the_next_verdict_says_it_was_a_drill_and_marks_no_node_suspect() -> None:
    c = Cluster()
    for _ in range(2):            # two drills in a row on one node: no suspicion
        c.jobs.clear()
        c.ingest(report("n0", (0, 1)), 100.0)
        c.jobs["j1"].owner = 0
        d = c.drill("j1", "kill", 1, "", 0, 100.5)
        assert (d.node, d.rank, d.attempt) == ("n0", 1, 0)
        c.ingest(report("n0", (0, dead(1, sig=9))), 101.0)
        verdicts = [x.incident.verdict for x in c.evaluate(101.0) if x.incident]
        assert verdicts[0].cause.startswith("[drill: kill rank 1 (watchdog-d drill by uid 0)] ")
    assert c.suspected == [] and not c.suspects.marked


def test_follow_passes_on_the_verdict_the_teardown_and_the_relaunch() -> None:
    f = Follow("hang", 1, attempt=0)
    running = {"attempt": 0, "status": "running", "action": "", "verdict": None,
               "nodes": [{"state": "running"}, {"state": "running"}]}
    f.look(1.0, running)
    assert not f.done
    v = "rank_stalled rank 1 on n1 at step 9: [drill: hang rank 1 (watchdog-d drill by uid 0)] ..."
    f.look(5.0, {**running, "verdict": v, "status": "stopping", "action": "restart 1/1"})
    f.look(6.0, {**running, "verdict": v, "status": "stopping", "action": "restart 1/1",
                 "nodes": [{"state": "waiting"}, {"state": "waiting"}]})
    assert not f.done                                   # the relaunch is due
    f.look(9.0, {**running, "verdict": v, "attempt": 1, "action": "restart 1/1"})
    assert f.done and f.passed
    assert [e for _, e, _ in f.timeline] == ["verdict", "torn down", "relaunched"]


def test_follow_fails_on_a_verdict_that_is_not_the_drills() -> None:
    f = Follow("kill", 1, attempt=0)
    other = "rank_exited rank 0 on n0: [drill: kill rank 1 (watchdog-d drill by uid 0)] x"
    f.look(1.0, {"attempt": 0, "status": "ended", "verdict": other, "action": "teardown", "nodes": []})
    assert f.done and not f.passed
    assert isinstance(drill.mark(Verdict(job="j", kind="rank_exited", cause="c"),
                                 drill.Drill("kill", 1, "n0", 0, 0.0, 0)), Verdict)


def test_follow_waits_for_the_alert_when_there_are_receivers() -> None:
    f = Follow("kill", 1, attempt=0)
    base = {"attempt": 0, "status": "running", "action": "", "verdict": None,
            "nodes": [{"state": "running"}], "alerts": {"to": 2, "drill_sent": 3}}
    f.look(0.5, base)
    v = "rank_exited rank 1 on n0: [drill: kill rank 1 (watchdog-d drill by uid 0)] killed"
    down = {**base, "verdict": v, "status": "ended", "action": "teardown", "nodes": [{"state": "exited"}]}
    f.look(1.0, down)
    assert f.down and not f.done                       # the alert has not gone out yet
    f.look(1.5, {**down, "alerts": {"to": 2, "drill_sent": 5}})
    assert f.done and f.passed and f.timeline[-1][1] == "alerted"


def test_a_node_its_agent_could_not_drain_is_said_to_the_coordinators_operators() -> None:
    from dataclasses import replace

    from watchdog_d.proto import convert

    r = replace(report("n3", (0,)), drain_failed="n3 could not be drained from Slurm: scontrol exited 1")
    assert convert.report_from_pb(convert.report_to_pb(r)).drain_failed == r.drain_failed
    c = Cluster()
    c.ingest(r, 100.0)
    said = [d for d in c.evaluate(100.0) if d.incident and d.incident.verdict.kind == "drain_failed"]
    assert len(said) == 1 and said[0].alert and said[0].job_id == "(coordinator)"
    assert said[0].incident.verdict.node == "n3" and "scontrol exited 1" in said[0].incident.verdict.cause
    assert not [d for d in c.evaluate(101.0) if d.incident and d.incident.verdict.kind == "drain_failed"]
