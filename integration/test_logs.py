"""Log intelligence end to end: rank logs, fingerprints in verdicts, offline diagnose."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from harness import WATCHDOG, assert_no_leftovers, torchrun_cmd, train_env

FAST = ["--min-stall-timeout", "3", "--grace", "3"]


def test_live_cuda_oom_is_named_with_its_log(guarded, alert_sink, tmp_path):
    log_dir = tmp_path / "logs"
    g = guarded([*FAST, "--alert", alert_sink.url, "--log-dir", str(log_dir)], torchrun_cmd(),
                train_env(WD_FAULT="oom"))
    assert g.wait() == 75, g.stderr()
    last = g.last_stderr_line()
    assert "cuda_oom rank 1" in last, last
    # the console is as it was: the rank's own lines still reach it
    assert "using token" in g.stdout()
    # every rank has its own log file, and the launcher one (launcher.log)
    rank_logs = sorted(p.name for p in (log_dir / g.job_id / "attempt-0").iterdir())
    assert rank_logs == ["launcher.log", "rank-0.log", "rank-1.log"], rank_logs
    assert "CUDA out of memory" in (log_dir / g.job_id / "attempt-0" / "rank-1.log").read_text()
    alert = alert_sink.wait_for(1)[0]
    assert alert["title"].endswith("cuda_oom rank 1 on " + os.uname().nodename)
    body = alert["message"]
    assert "remedy:" in body and "CUDA out of memory" in body
    assert "hf_AbCdEf" not in body, "a token leaked into the alert"
    ev = g.events()[-1]
    assert ev["kind"] == "cuda_oom" and ev["rank"] == 1
    assert_no_leftovers(g.job_id)


def _diagnose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WATCHDOG, "diagnose", *args], capture_output=True, text=True,
                          timeout=120)


def _torchrun_tree(root: Path) -> Path:
    """What torchrun --log-dir leaves after rank 1 ran out of GPU memory."""
    run = root / "my_run_abc" / "attempt_0"
    (run / "0").mkdir(parents=True)
    (run / "1").mkdir(parents=True)
    (run / "0" / "stderr.log").write_text(
        "I1122 05:24:30.100000 8452 train.py:10] step 100 loss 0.5 error_rate=0.1\n"
        "[rank0]:[E1122 05:24:32.301000 8452 ProcessGroupNCCL.cpp:632] [PG ID 0 PG GUID 0(default_pg) "
        "Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=20585, "
        "OpType=ALLREDUCE, NumelIn=1259621, NumelOut=1259621, Timeout(ms)=600000) ran for "
        "600000 milliseconds before timing out.\n")
    (run / "1" / "stderr.log").write_text(
        "I1122 05:24:30.100000 8453 train.py:10] step 100 loss 0.5\n"
        "Traceback (most recent call last):\n  File \"train.py\", line 40, in <module>\n"
        "E1122 05:24:31.000000 8453 train.py:40] torch.OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 2.30 GiB. GPU 1 has a total capacity of 79.14 GiB of which 1.02 GiB "
        "is free.\n")
    (run / "1" / "error.json").write_text(json.dumps({"message": {
        "message": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.30 GiB.",
        "extraInfo": {"py_callstack": "Traceback ...", "timestamp": "1795324671"}}}))
    return root


def test_diagnose_torchrun_log_dir_names_the_root_cause(tmp_path):
    root = _torchrun_tree(tmp_path / "logs")
    out = _diagnose(str(root), "--json")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert {"path", "root_cause", "findings"} <= set(doc["files"][0])
    job = doc["jobs"][0]
    assert job["root_cause"]["kind"] == "cuda_oom" and job["root_cause"]["rank"] == 1
    assert any(c["kind"] == "collective_timeout" and c["rank"] == 0 for c in job["consequences"])
    text = _diagnose(str(root))
    assert text.returncode == 1 and "root cause: cuda_oom on rank 1" in text.stdout
    assert "remedy:" in text.stdout


def test_diagnose_clean_and_benign_logs_find_nothing(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("\n".join([
        "step 10 loss 0.35 error_rate=0.1 grad_norm=1.2 tokens=4096",
        "NCCL INFO Connected all rings", "NCCL INFO comm 0x55 rank 0 nranks 8 - Init COMPLETE",
        "/usr/lib/python3/site-packages/x.py:10: DeprecationWarning: use y instead",
        "UserWarning: TypedStorage is deprecated", "config: timeout=600 retries=3",
        "validation: 0 errors, no errors found"]) + "\n")
    out = _diagnose(str(log), "--json")
    assert out.returncode == 0, out.stdout
    assert json.loads(out.stdout)["files"][0]["findings"] == []


def test_diagnose_usage_errors():
    assert _diagnose("/no/such/path").returncode == 2
    assert _diagnose().returncode == 2


def test_diagnose_survives_bad_input(tmp_path):
    (tmp_path / "garbage.log").write_bytes(os.urandom(1 << 20) + b"\xff\xfe\x00" * 1000)
    with open(tmp_path / "huge-line.log", "wb") as f:      # 50 MB without a newline
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            f.write(chunk)
        f.write(b" torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1 GiB\n")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(10_000):
        (many / f"rank-{i}.log").write_text("step 1 loss 0.5\n")
    (many / "rank-10000.log").write_text("RuntimeError: CUDA error: an illegal memory access "
                                         "was encountered\n")
    t0 = time.monotonic()
    out = _diagnose(str(tmp_path), "--json")
    took = time.monotonic() - t0
    assert out.returncode == 1, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    kinds = {f["kind"] for file in doc["files"] for f in file["findings"]}
    assert "cuda_error" in kinds
    assert took < 100, took


def test_agent_restart_resumes_the_rank_logs(guarded, tmp_path, alert_sink):
    """The node's agent dies and comes back mid-job: it resumes each rank log from the
    offsets it saved (not from the start, not skipping what was written meanwhile), and
    a CUDA OOM printed after the restart is still named."""
    from cluster import Cluster
    from harness import free_port

    cluster = Cluster(tmp_path, ["node-a"], alert_url=alert_sink.url)
    try:
        job = f"logs-restart-{free_port()}"
        g = guarded(["--agent-socket", cluster.sockets["node-a"], "--grace", "3",
                     "--log-dir", str(tmp_path / "logs")], torchrun_cmd(),
                    train_env(WD_FAULT="oom", WD_FAULT_STEP=120, WD_STEPS=400), job_id=job)
        offsets = tmp_path / "node-a" / "offsets" / f"{job}-attempt-0.json"
        deadline = time.monotonic() + 60
        while not offsets.exists():
            assert time.monotonic() < deadline and g.proc.poll() is None, g.stderr()
            time.sleep(0.1)
        saved = json.loads(offsets.read_text())
        assert saved["positions"], saved
        cluster.agents["node-a"].kill()
        cluster.agents["node-a"].wait()
        time.sleep(1.0)                            # the ranks keep writing meanwhile
        before = offsets.stat().st_mtime_ns
        cluster.start_agent("node-a")
        # the new agent's first save: it counted no line twice (its count can only be
        # at most what the file holds by now; a re-read from the start would exceed it)
        deadline = time.monotonic() + 30
        while not (offsets.exists() and offsets.stat().st_mtime_ns > before):
            assert time.monotonic() < deadline and g.proc.poll() is None, cluster.log("node-a")
            time.sleep(0.05)
        counted = json.loads(offsets.read_text())["payload"]["ranks"]["0"]["lines"]
        rank0 = tmp_path / "logs" / job / "attempt-0" / "rank-0.log"
        assert counted <= rank0.read_bytes().count(b"\n")
        assert counted >= saved["payload"]["ranks"]["0"]["lines"]
        assert g.wait(timeout=90) == 75, g.stderr()
        assert "cuda_oom rank 1" in g.last_stderr_line(), g.last_stderr_line()
        assert_no_leftovers(job)
    finally:
        cluster.stop()


def test_launcher_log_captured_and_sigkill_diagnosed_as_probable_host_oom(guarded, tmp_path):
    """torchrun's own report goes to launcher.log next to the ranks' logs (and still to the
    console); the ranks' lines do not; diagnose on the attempt dir names the SIGKILL as a
    probable host OOM kill, with its evidence lines (file:line)."""
    log_dir = tmp_path / "logs"
    # on_failure=alert: torchrun itself ends the job and reports the exit code (with a
    # teardown, watchdog-d's SIGTERM usually reaches torchrun before its next look)
    g = guarded([*FAST, "--on-failure", "alert", "--log-dir", str(log_dir)],
                torchrun_cmd(extra=["--monitor-interval=0.1"]), train_env(WD_FAULT="kill"))
    assert g.wait() not in (0, None), g.stderr()
    attempt = log_dir / g.job_id / "attempt-0"
    launcher = attempt / "launcher.log"
    deadline = time.monotonic() + 15           # the tee drains once the launcher is gone
    while "exitcode: -9" not in (launcher.read_text() if launcher.exists() else ""):
        assert time.monotonic() < deadline, (launcher.exists() and launcher.read_text()[-3000:],
                                             g.stderr()[-3000:])
        time.sleep(0.1)
    text = launcher.read_text()
    assert "exitcode: -9" in g.stderr(), "torchrun's report no longer reaches the console"
    # the ranks' own lines went to their logs and the console, not into launcher.log
    assert "[rank 0] step 0" in g.stdout() and "[rank 0] step" not in text
    assert "[rank 0] step 0" in (attempt / "rank-0.log").read_text()
    out = _diagnose(str(attempt), "--json")
    assert out.returncode == 1, out.stderr
    rc = json.loads(out.stdout)["jobs"][0]["root_cause"]
    assert rc["kind"] == "host_oom" and rc["confidence"] == "probable", rc
    assert rc["path"].endswith("launcher.log") and rc["evidence"], rc
    for ev in rc["evidence"]:
        assert ev["line"] >= 1 and "-9" in ev["text"] or "SIGKILL" in ev["text"], ev
    shown = _diagnose(str(attempt)).stdout
    assert "root cause: host_oom (probable)" in shown, shown
    assert f"{launcher}:{rc['line']}" in shown and "evidence:" in shown, shown
