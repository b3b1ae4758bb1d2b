"""`run --preflight` past the node: a job part in state preflight_failed is a verdict that
names the node and the checks, tears the job down on its other nodes, and is not restarted."""
from __future__ import annotations

from dataclasses import replace

import pytest

from watchdog_d.core import policy
from watchdog_d.core.model import JobOnNode, NodeReport
from watchdog_d.core.state import Cluster
from watchdog_d.proto.local import Ended, MessageError, decode, encode
from wdtest_helpers import report, spec

NOTE = "NCCL_SOCKET_IFNAME: NCCL_SOCKET_IFNAME=nonexistent0 matches no interface of this host"


def _refused(node: str, job_spec=None) -> NodeReport:
    part = JobOnNode(spec=job_spec or spec(), state="preflight_failed", exit_code=75, note=NOTE,
                     run=f"r1{node}")
    return NodeReport(node_id=node, host=f"host-{node}", jobs=(part,))


@pytest.mark.parametrize("on_failure", ["teardown", "restart", "alert"])
def test_a_node_that_failed_its_checks_tears_the_job_down_everywhere(on_failure: str) -> None:
    s = spec(on_failure=on_failure, max_restarts=3)
    c = Cluster()
    c.ingest(report("a", [0, 1], job_spec=s), 0.0)      # node a launched and waits in the rendezvous
    c.ingest(_refused("b", s), 0.5)                     # node b's checks failed
    decisions = [d for d in c.evaluate(0.5) if d.incident is not None]
    (d,) = decisions
    v = d.incident.verdict
    assert (v.kind, v.node, v.rank) == ("preflight_failed", "b", None)
    assert "NCCL_SOCKET_IFNAME" in v.cause and "b" in v.cause and "doctor" in v.remedy
    # whatever the policy: stopped, not restarted (the same checks would fail again)
    assert (d.verb, d.nodes, d.incident.action) == ("teardown", ("a", "b"), "teardown")
    assert d.alert
    # node b's wrapper is owed the verdict (its last stderr line), node a a teardown
    for node in ("a", "b"):
        (order,) = c.standing_orders(node)
        assert (order.verb, order.verdict.kind) == ("teardown", "preflight_failed")
    # the job ends once node a is down too; the verdict is made once
    c.ingest(report("a", [], state="exited", exit_code=75, job_spec=s), 1.0)
    assert [d for d in c.evaluate(1.0) if d.incident is not None] == []
    assert (c.jobs["j1"].status, c.jobs["j1"].outcome) == ("ended", "torn_down")


def test_the_policy_never_restarts_a_preflight_failure() -> None:
    s = spec(on_failure="restart", max_restarts=5)
    assert policy.decide("preflight_failed", s, 0) == "teardown"
    assert policy.decide("rank_exited", s, 0) == "restart 1/5"


def test_the_wrapper_says_it_with_an_ended_message() -> None:
    msg = decode(encode(Ended(state="preflight_failed", exit_code=75, note=NOTE)))
    assert msg == Ended(state="preflight_failed", exit_code=75, note=NOTE)
    assert len(decode(encode(Ended("preflight_failed", 75, note="x" * 5000))).note) == 1000
    with pytest.raises(MessageError, match="state must be one of"):
        decode(encode(replace(Ended("exited", 0), state="crashed")))
    # an older wrapper's Ended (no note) is still understood
    assert decode(b'{"op": "ended", "state": "exited", "exit_code": 0}') == Ended("exited", 0)


def test_the_state_crosses_the_wire() -> None:
    from watchdog_d.proto import convert

    back = convert.report_from_pb(convert.report_to_pb(_refused("b")), now=0.0)
    assert back.jobs[0].state == "preflight_failed" and back.jobs[0].note == NOTE


def test_preflight_comes_from_a_flag_the_environment_or_the_file(tmp_path) -> None:
    from watchdog_d.config import ConfigError, load

    assert load(env={}).preflight is False
    assert load(env={"WATCHDOG_D_PREFLIGHT": "1"}).preflight is True
    assert load(env={"WATCHDOG_D_PREFLIGHT": "true"}, flags={"preflight": None}).preflight is True
    (tmp_path / "c.toml").write_text("preflight = true\n")
    assert load(env={}, config_file=str(tmp_path / "c.toml")).preflight is True
    with pytest.raises(ConfigError, match="preflight"):
        load(env={"WATCHDOG_D_PREFLIGHT": "maybe"})
