"""--on-failure restart on one node: relaunch from the latest checkpoint, give up when
the budget is spent. (Issue 4 groundwork: multi-node generations, backoff and the
crash-loop guard are not built yet.)"""
from __future__ import annotations

from harness import assert_no_leftovers, torchrun_cmd, train_env


def test_restart_resumes_from_the_recorded_checkpoint(guarded, alert_sink, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--grace", "3",
                 "--alert", alert_sink.url], torchrun_cmd(),
                train_env(WD_FAULT="kill", WD_FAULT_STEP=12, WD_STEPS=30, WD_CKPT_DIR=ckpt))
    assert g.wait() == 0, g.stderr()
    out = g.stdout()
    assert f"resumed from {ckpt}/step-10.pt at step 10" in out
    assert "[rank 0] done after 30 steps" in out
    assert "relaunching as attempt 1 from" in g.stderr()
    kinds = [(e["kind"], e["action"]) for e in g.events()]
    assert kinds == [("rank_exited", "restart 1/1"), ("job_succeeded", "none")], kinds
    alert = alert_sink.wait_for(1)[0]
    assert "action: restart 1/1" in alert["message"].splitlines()
    assert_no_leftovers(g.job_id)


def test_restart_budget_spent_gives_up(guarded, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    g = guarded(["--on-failure", "restart", "--max-restarts", "1", "--grace", "3"],
                torchrun_cmd(), train_env(WD_FAULT="kill", WD_FAULT_ALWAYS=1, WD_FAULT_STEP=12,
                                          WD_STEPS=30, WD_CKPT_DIR=ckpt))
    assert g.wait() == 75, g.stderr()
    assert "[action: gave_up]" in g.last_stderr_line(), g.last_stderr_line()
    assert [e["action"] for e in g.events()] == ["restart 1/1", "gave_up"]
    assert_no_leftovers(g.job_id)
