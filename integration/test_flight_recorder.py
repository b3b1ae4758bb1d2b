"""Hangs with NCCL's host-side shape, on gloo (integration/jobs/async_job.py): every
all_reduce is async and the host spins on ``work.is_completed()``, so every rank is alive,
busy and outside any collective frame. The flight recorders decide; each fault has its
no-fault twin under the same stress. Floor 4 s, 2 ranks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import TORCHRUN, WATCHDOG, assert_no_leftovers, train_env

JOB = str(Path(__file__).parent / "jobs" / "async_job.py")
FLOOR = 4.0
FAST = ["--min-stall-timeout", str(FLOOR), "--grace", "3"]


def _job(fault: str, **env: object) -> tuple[list[str], dict[str, str]]:
    return ([*TORCHRUN, "--standalone", "--nproc-per-node=2", JOB],
            train_env(WD_FAULT=fault, WD_AT=20, WD_STEPS=40, **env))


def _verdict(g) -> dict:
    assert g.wait(120) == 75, g.stderr()
    ev = [e for e in g.events() if e["action"] == "teardown"]
    assert len(ev) == 1, g.events()
    assert ev[0]["detected_after_s"] <= FLOOR + 5.0, ev[0]
    assert_no_leftovers(g.job_id)
    return ev[0]


def test_a_rank_that_stops_issuing_and_spins_is_named(guarded, alert_sink) -> None:
    g = guarded([*FAST, "--alert", alert_sink.url], *_job("stop_issuing"))
    ev = _verdict(g)
    assert (ev["kind"], ev["rank"]) == ("rank_stalled", 1), ev
    assert ev["cause"].startswith("flight recorder: all_reduce #"), ev["cause"]
    assert "on default_pg [2 ranks]" in ev["cause"] and "never enqueued by rank 1" in ev["cause"]
    assert "stack that did not move" in ev["cause"], ev["cause"]
    assert "flight recorder: all_reduce" in alert_sink.wait_for(1)[0]["message"]
    # what it saw is kept, in the form torch's analyzer reads, and diagnose reads it back
    kept = g.state_dir / "logs" / g.job_id / "attempt-0" / "flight-recorder"
    assert sorted(p.name for p in kept.iterdir()) == ["fr_trace_rank_0", "fr_trace_rank_1"]
    out = subprocess.run([*WATCHDOG, "diagnose", "--json", str(kept)], capture_output=True,
                         text=True, timeout=60)
    found = json.loads(out.stdout)["flight_recorder"]
    assert found["kind"] == "behind" and found["culprits"] == [1], found
    # ... and so does torch's own analyzer
    torch_says = subprocess.run([sys.executable, "-m", "torch.distributed.flight_recorder.fr_trace",
                                 str(kept), "--prefix", "fr_trace_rank_"], capture_output=True,
                                text=True, timeout=120)
    said = torch_says.stdout + torch_says.stderr          # (it reports through logging)
    assert "Not all ranks joining collective" in said and "missing ranks: {1}" in said, said[-2000:]


def test_twin_undeclared_host_work_with_stack_and_io_moving_is_not_torn_down(guarded) -> None:
    # 2.5x the floor of hashing and writing a scratch file while its peer waits
    g = guarded(FAST, *_job("host_work", WD_WORK_S=2.5 * FLOOR))
    assert g.wait(120) == 0, g.stderr()
    kinds = [e["kind"] for e in g.events()]
    assert set(kinds) <= {"long_pause", "job_succeeded"} and kinds[-1] == "job_succeeded", kinds
    assert_no_leftovers(g.job_id)


def test_twin_no_fault_no_verdict(guarded) -> None:
    g = guarded(FAST, *_job("none"))
    assert g.wait(120) == 0, g.stderr()
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]


def test_different_ops_at_one_sequence_id_are_a_mismatch(guarded) -> None:
    ev = _verdict(guarded(FAST, *_job("mismatch")))
    assert ev["kind"] == "collective_mismatch", ev
    assert "rank 0 all_reduce [1024] vs rank 1 all_gather [1024] at #" in ev["cause"], ev["cause"]


def test_a_hang_on_a_subgroup_while_the_default_group_is_idle(guarded) -> None:
    ev = _verdict(guarded(FAST, *_job("subgroup")))
    assert (ev["kind"], ev["rank"]) == ("rank_stalled", 1), ev
    assert " on tp [2 ranks]" in ev["cause"], ev["cause"]


def test_ddp_with_the_fault_inside_backward(guarded) -> None:
    ev = _verdict(guarded(FAST, *_job("ddp_backward")))
    assert (ev["kind"], ev["rank"]) == ("rank_stalled", 1), ev
    assert "flight recorder: all_reduce #" in ev["cause"] and "idle" in ev["cause"], ev["cause"]


def test_recorder_off_by_the_user_falls_back_and_says_so(guarded) -> None:
    """TORCH_FR_BUFFER_SIZE=0: no crash, the stack rules decide (here: a long pause they
    cannot tell from work), and the reason is said once."""
    g = guarded(FAST, *_job("none", TORCH_FR_BUFFER_SIZE=0))
    assert g.wait(120) == 0, g.stderr()
    g2 = guarded(FAST, *_job("stop_issuing", TORCH_FR_BUFFER_SIZE=0))
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not g2.events():
        time.sleep(0.5)
    g2.proc.terminate()
    assert g2.wait(60) == 143, g2.stderr()
    ev = g2.events()
    assert ev and ev[0]["kind"] == "long_pause", ev
    said = [e for e in ev if "flight recorder not available: TORCH_FR_BUFFER_SIZE=0" in e["cause"]]
    assert len(said) == 1, ev


def test_a_rank_stuck_in_d_with_no_io_progress_is_named(guarded) -> None:
    ev = _verdict(guarded(FAST, *_job("d_stuck")))
    assert (ev["kind"], ev["rank"]) == ("rank_stalled", 1), ev
    assert "uninterruptible sleep (state D)" in ev["cause"] and "no I/O progress" in ev["cause"], ev


def test_twin_a_rank_reading_from_a_slow_filesystem_is_not_torn_down(guarded) -> None:
    # state D in nearly every sample for 2.5x the floor, bytes arriving all the while
    g = guarded(FAST, *_job("slow_fs", WD_WORK_S=2.5 * FLOOR))
    assert g.wait(120) == 0, g.stderr()
    kinds = [e["kind"] for e in g.events()]
    assert set(kinds) <= {"long_pause", "job_succeeded"} and kinds[-1] == "job_succeeded", kinds
    assert_no_leftovers(g.job_id)
