"""GPU and kernel evidence end to end: real ``watchdog-d run -- torchrun`` jobs whose
embedded agent reads the fake pynvml (tests/fakenvml, first on the wrapper's PYTHONPATH,
described by a JSON file the test rewrites) and a kernel log that is a plain file the test
appends to. The ranks keep their PYTHONPATH: the wrapper puts its boot dir before it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import WATCHDOG, assert_no_leftovers, torchrun_cmd, train_env

FAKE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fakenvml"
sys.path.insert(0, str(FAKE_DIR.parent))
from fakenvml_load import write as write_json  # noqa: E402   (the fake's JSON, replaced at once)

FAST = ["--min-stall-timeout", "5", "--grace", "3"]
OOM_LINE = "Out of memory: Killed process {pid} (python) total-vm:9000000kB, anon-rss:8000000kB"


def gpu(i: int, processes=(), **extra) -> dict:
    return {"uuid": f"GPU-fake-{i}", "pci": f"00000000:{0x1B + i:02X}:00.0",
            "name": "NVIDIA H100 80GB HBM3", "util": 90, "mem_used": 20 << 30,
            "mem_total": 80 << 30, "temp": 60 + i, "power_mw": 400_000,
            "processes": list(processes), **extra}


def gpu_env(tmp: Path, fake: Path | None, kmsg: Path, **overrides: object) -> dict[str, str]:
    env = train_env(**overrides)
    env["WATCHDOG_D_KMSG_PATH"] = str(kmsg)
    if fake is None:
        env["WATCHDOG_D_GPU_CHECKS"] = "false"
    else:
        env["WD_FAKE_NVML"] = str(fake)
        env["WATCHDOG_D_GPU_POLL_INTERVAL"] = "0.3"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKE_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def status(g) -> dict:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--state-dir", str(g.state_dir)],
                         capture_output=True, text=True, timeout=15)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def node_when(g, done, timeout: float = 25.0) -> dict:
    """The job's node in ``watchdog-d status --json`` once ``done(node)`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        assert g.proc.poll() is None, f"the job ended early:\n{g.stderr()}"
        jobs = [j for j in status(g)["jobs"] if j["job"] == g.job_id]
        node = jobs[0]["nodes"][0] if jobs and jobs[0]["nodes"] else None
        if node is not None and done(node):
            return node
        assert time.monotonic() < deadline, f"status never got there: {node}\n{g.stderr()}"
        time.sleep(0.3)


def stepping(node: dict) -> bool:
    return len(node["ranks"]) == 2 and all(r["step"] >= 1 and r["pid"] > 0 for r in node["ranks"])


def pids(node: dict) -> dict[int, int]:
    return {r["rank"]: r["pid"] for r in node["ranks"]}


def test_critical_xid_on_rank_1s_gpu_names_rank_1(guarded, alert_sink, tmp_path):
    fake, kmsg = tmp_path / "nvml.json", tmp_path / "kmsg"
    kmsg.write_text("")
    write_json(fake, {"devices": [gpu(0), gpu(1)]})
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), gpu_env(tmp_path, fake, kmsg))
    node = node_when(g, lambda n: stepping(n) and len(n["gpus"]) == 2)
    assert [(x["index"], x["uuid"], x["util_ratio"], x["lost"]) for x in node["gpus"]] == \
        [(0, "GPU-fake-0", 0.9, False), (1, "GPU-fake-1", 0.9, False)]
    assert node["gpus"][1]["mem_total_bytes"] == 80 << 30 and node["gpus"][1]["temperature_c"] == 61
    # crossed on purpose: rank 1 on GPU 0, so only the process lists can tell (its LOCAL_RANK says 1)
    p = pids(node)
    devices = [gpu(0, [p[1]]), gpu(1, [p[0]])]
    write_json(fake, {"devices": devices})
    time.sleep(1.2)                                 # a few samples read the process lists
    write_json(fake, {"devices": devices, "events": [{"id": 1, "gpu": 0, "xid": 79}]})
    assert g.wait(40) == 75, g.stderr()
    last = g.last_stderr_line()
    assert "gpu_xid rank 1" in last, last
    alerts = alert_sink.wait_for(1)
    assert alerts and "gpu_xid rank 1" in alerts[0]["title"], alerts
    assert_no_leftovers(g.job_id)


def test_non_critical_xid_is_shown_not_judged(guarded, alert_sink, tmp_path):
    fake, kmsg = tmp_path / "nvml.json", tmp_path / "kmsg"
    kmsg.write_text("")
    write_json(fake, {"devices": [gpu(0), gpu(1)]})
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(),
                gpu_env(tmp_path, fake, kmsg, WD_STEPS=160))
    p = pids(node_when(g, lambda n: stepping(n) and len(n["gpus"]) == 2))
    devices = [gpu(0, [p[0]]), gpu(1, [p[1]])]
    # Xid 45 (preemptive cleanup) is not in core/xid.py's CRITICAL table
    write_json(fake, {"devices": devices, "events": [{"id": 1, "gpu": 1, "xid": 45}]})
    node = node_when(g, lambda n: n["gpus"][1]["last_xid"] == 45)
    assert node["gpus"][1]["xid_count"] == 1 and node["gpus"][0]["last_xid"] == 0
    assert g.wait(40) == 0, g.stderr()
    assert alert_sink.received == []
    assert [e["kind"] for e in g.events()] == ["job_succeeded"]
    assert_no_leftovers(g.job_id)


def test_oom_killer_line_then_sigkill_is_host_oom(guarded, alert_sink, tmp_path):
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("6,100,1,-;an old boot message\n")       # read from its end: not news
    g = guarded([*FAST, "--alert", alert_sink.url], torchrun_cmd(), gpu_env(tmp_path, None, kmsg))
    p = pids(node_when(g, stepping))
    # as the kernel does it: the line as it sends SIGKILL (the agent may judge on the line
    # alone, the rank being as good as dead: then the kill finds it gone)
    with open(kmsg, "a") as f:
        f.write(f"3,101,2,-;{OOM_LINE.format(pid=p[1])}\n")
    try:
        os.kill(p[1], signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert g.wait(40) == 75, g.stderr()
    last = g.last_stderr_line()
    assert "host_oom rank 1" in last, last
    assert "host_oom rank 1" in alert_sink.wait_for(1)[0]["title"]
    assert_no_leftovers(g.job_id)
