"""`watchdog-d run --preflight`: a node whose checks fail does not start the job; its twin
without the fault runs normally."""
from __future__ import annotations

import socket

from harness import assert_no_leftovers, torchrun_cmd, train_env

FAST = ["--min-stall-timeout", "3", "--grace", "3", "--preflight"]


def test_a_failed_check_is_a_verdict_an_alert_and_no_job(guarded, alert_sink):
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_STEPS=5, NCCL_SOCKET_IFNAME="nonexistent0"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    node = socket.gethostname()
    assert last.startswith(f"watchdog-d: job {g.job_id} not started: preflight_failed rank - on {node}"), last
    assert "NCCL_SOCKET_IFNAME" in last and "nonexistent0" in last, last
    assert "[rank 0]" not in g.stdout()                      # torchrun never started
    alerts = alert_sink.wait_for(1)
    assert alerts, "no alert arrived"
    assert alerts[0]["title"] == f"[watchdog-d] {g.job_id}: preflight_failed rank - on {node}"
    body = alerts[0]["message"]
    assert "kind: preflight_failed" in body and f"node: {node}" in body
    assert "NCCL_SOCKET_IFNAME" in body and "doctor" in body
    assert [e["kind"] for e in g.events()] == ["preflight_failed"]
    assert_no_leftovers(g.job_id)


def test_without_the_fault_the_job_runs(guarded, alert_sink):
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), train_env(WD_STEPS=5))
    assert g.wait() == 0, g.stderr()
    assert "[rank 0] done after 5 steps" in g.stdout()
    assert "preflight error" not in g.stderr()
    assert alert_sink.received == []
    assert_no_leftovers(g.job_id)
