"""`watchdog-d doctor`: each check's judgement, the time bound, the command's JSON and exit."""
from __future__ import annotations

import errno
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from watchdog_d.doctor import gpu, nccl, reach, system
from watchdog_d.doctor.check import ERROR, OK, WARN, Check, Probe, exit_status, run_all

GiB = 1 << 30
ROOT = Path(__file__).resolve().parent.parent


# -- the runner --------------------------------------------------------------------------
def test_a_probe_that_hangs_is_timed_out_and_the_rest_still_report(monkeypatch, tmp_path) -> None:
    release = threading.Event()

    def hang(path):            # os.statvfs on a dead NFS mount
        release.wait(30)
        raise OSError(errno.EIO, "gone")

    monkeypatch.setattr(system.os, "statvfs", hang)
    try:
        checks = run_all([Probe("disk: checkpoint dir", lambda: system.disk("checkpoint dir", str(tmp_path)),
                                timeout_s=0.3),
                          Probe("python", system.python, 2.0)])
    finally:
        release.set()
    assert checks[0] == Check("disk: checkpoint dir", ERROR, "timed out after 0.3 s", checks[0].fix)
    assert checks[1].check == "python" and checks[1].status == OK
    assert exit_status(checks) == 2


def test_a_probe_that_raises_is_a_warning_not_a_crash() -> None:
    checks = run_all([Probe("x", lambda: [][1])])
    assert checks[0].status == WARN and "IndexError" in checks[0].found


def test_exit_status_is_the_worst() -> None:
    assert exit_status([]) == 0
    assert exit_status([Check("a", OK, ""), Check("b", WARN, "")]) == 1
    assert exit_status([Check("a", ERROR, ""), Check("b", WARN, "")]) == 2


# -- the node ------------------------------------------------------------------------------
def test_shm() -> None:
    assert system.judge_shm(64 << 20, 64 << 20).status == WARN            # Docker's default
    assert "--shm-size" in system.judge_shm(64 << 20, 64 << 20).fix
    assert system.judge_shm(16 * GiB, GiB // 2).status == WARN             # almost full
    assert system.judge_shm(16 * GiB, 15 * GiB).status == OK
    assert system.judge_shm(None, None).status == WARN
    assert system.shm("/nonexistent/shm")[0].status == WARN


def test_limits() -> None:
    inf = resource.RLIM_INFINITY
    assert system.judge_nofile(1024, 1024).status == WARN
    assert "ulimit -n 65536" in system.judge_nofile(1024, inf).fix
    assert "hard limit" in system.judge_nofile(1024, 1024).fix
    assert system.judge_nofile(1 << 20, 1 << 20).status == OK
    assert system.judge_memlock(inf, ["mlx5_0"]).status == OK
    assert system.judge_memlock(64 << 10, ["mlx5_0"]).status == WARN
    assert system.judge_memlock(64 << 10, []).status == OK                # no RDMA here
    assert {c.check for c in system.limits("/nonexistent")} == {"nofile", "memlock"}


def test_disk_thresholds() -> None:
    assert system.judge_disk("log dir", "/x", 100 * GiB, 50 * GiB).status == OK
    assert system.judge_disk("log dir", "/x", 100 * GiB, 5 * GiB).status == WARN       # < 10 GiB
    assert system.judge_disk("log dir", "/x", 1000 * GiB, 40 * GiB).status == WARN     # < 5 %
    assert system.judge_disk("log dir", "/x", 100 * GiB, 10 << 20).status == ERROR     # full


def test_disk_of_a_directory_to_be_created_a_file_and_a_read_only_one(tmp_path, monkeypatch) -> None:
    assert system.disk("checkpoint dir", str(tmp_path / "a" / "b"))[0].status in (OK, WARN)
    (tmp_path / "f").write_text("x")
    c = system.disk("checkpoint dir", str(tmp_path / "f" / "ckpt"))[0]
    assert c.status == ERROR and "not a directory" in c.found
    monkeypatch.setattr(system.os, "access", lambda p, m: False)
    assert system.disk("log dir", str(tmp_path))[0].status == ERROR


def test_clock() -> None:
    assert system.judge_clock(0).status == OK
    assert system.judge_clock(system.TIME_ERROR).status == WARN
    assert system.judge_clock(None).status == OK             # cannot tell: said, not warned
    assert system.clock()[0].check == "clock"


# -- NCCL's environment ---------------------------------------------------------------------
def test_the_ifname_syntax() -> None:
    have = ["lo", "eth0", "eth1", "ib0"]
    assert nccl.IfSpec.parse("eth").selects(have) == ["eth0", "eth1"]
    assert nccl.IfSpec.parse("=eth").selects(have) == []
    assert nccl.IfSpec.parse("=eth1,ib0").selects(have) == ["eth1", "ib0"]
    assert nccl.IfSpec.parse("^eth,lo").selects(have) == ["ib0"]
    assert nccl.IfSpec.parse("^=eth0").selects(have) == ["lo", "eth1", "ib0"]


def test_ifname_against_this_hosts_interfaces() -> None:
    real = [name for _, name in socket.if_nameindex()]
    first = real[0]
    assert nccl.judge_ifname(f"={first}", nccl.interfaces()).status == OK
    assert nccl.judge_ifname(first[:2], nccl.interfaces()).status == OK
    bad = nccl.judge_ifname("nonexistent0", nccl.interfaces())
    assert bad.status == ERROR and "nonexistent0" in bad.found and first in bad.found
    assert nccl.judge_ifname("^" + ",".join(real), nccl.interfaces()).status == ERROR
    assert nccl.judge_ifname("^nonexistent", nccl.interfaces()).status == OK


def test_suspicious_nccl_variables() -> None:
    checks = nccl.judge_env({"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1", "NCCL_DEBUG": "INFO"}, ["eth0"])
    assert [(c.check, c.status) for c in checks] == [("NCCL_P2P_DISABLE", WARN), ("NCCL_IB_DISABLE", WARN)]
    assert nccl.judge_env({"NCCL_P2P_DISABLE": "0"}, ["eth0"])[0].status == OK
    assert nccl.judge_env({}, [])[0].status == OK                       # NCCL_DEBUG unset is fine


# -- reachability ---------------------------------------------------------------------------
def test_master_addr() -> None:
    refused = errno.ECONNREFUSED
    assert reach.judge_master("10.0.0.1", "29500", local=True, outcome=refused).status == OK
    assert reach.judge_master("10.0.0.1", "29500", local=False, outcome=refused).status == WARN
    assert reach.judge_master("10.0.0.1", "29500", local=False, outcome=0).status == OK
    assert reach.judge_master("10.0.0.1", "29500", local=True, outcome=0).status == WARN   # port taken
    assert reach.master({}) == []
    assert reach.master({"MASTER_ADDR": "host.invalid", "MASTER_PORT": "1"})[0].status == ERROR


def test_master_addr_on_this_node_with_and_without_a_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert reach.master({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})[0].status == OK
        s.listen()
        assert reach.master({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})[0].status == WARN


def test_coordinator_unreachable_is_an_error() -> None:
    from watchdog_d.config import Config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{s.getsockname()[1]}"        # nothing listens
        c = reach.coordinator(target, Config(), "", False)[0]
    assert c.status == ERROR and target in c.found
    assert reach.coordinator("", Config(), "/x.sock", False)[0].status == OK


# -- GPUs (pure) ----------------------------------------------------------------------------
def test_torch_judgements() -> None:
    assert gpu.judge_torch(gpu.TorchInfo(version="2.13.0", cuda=None))[0].status == OK
    assert gpu.judge_torch(gpu.TorchInfo(error="ModuleNotFoundError: No module named 'torch'"))[0].status == WARN
    assert gpu.judge_torch(gpu.TorchInfo(error="OSError: libcudnn.so.9 missing"))[0].status == ERROR
    cuda = gpu.judge_torch(gpu.TorchInfo(version="2.13.0", cuda="12.8", nccl="2.27.3"))
    assert [(c.check, c.status) for c in cuda] == [("torch", OK), ("nccl", OK)]


def test_driver_against_torchs_cuda() -> None:
    g = gpu.GpuInfo(driver="520.61", cuda_driver=11080)
    assert gpu.judge_driver(g, "12.8").status == ERROR
    assert gpu.judge_driver(g, "11.8").status == OK
    assert gpu.judge_driver(gpu.GpuInfo(driver="550", cuda_driver=12040), "12.8").status == WARN
    assert gpu.judge_driver(g, None).status == OK


def test_cuda_visible_devices() -> None:
    g = gpu.GpuInfo(uuids=("GPU-aaaa-1", "GPU-bbbb-2"))
    assert gpu.judge_visible({}, g).status == OK
    assert gpu.judge_visible({"CUDA_VISIBLE_DEVICES": "0,1"}, g).status == OK
    assert gpu.judge_visible({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}, g).status == OK
    bad = gpu.judge_visible({"CUDA_VISIBLE_DEVICES": "0,5"}, g)
    assert bad.status == ERROR and "5" in bad.found
    assert gpu.judge_visible({"CUDA_VISIBLE_DEVICES": "GPU-cccc"}, g).status == ERROR
    cpu = gpu.GpuInfo(off="LibraryNotFound")
    assert gpu.judge_visible({"CUDA_VISIBLE_DEVICES": "0"}, cpu).status == ERROR
    assert gpu.judge_visible({"CUDA_VISIBLE_DEVICES": ""}, cpu).status == OK


def test_a_cpu_node_is_ok_and_says_the_gpu_checks_were_skipped() -> None:
    checks = gpu.judge(gpu.TorchInfo(version="2.13.0"), gpu.GpuInfo(off="LibraryNotFound"), {})
    assert [(c.check, c.status) for c in checks] == [("torch", OK), ("gpu", OK)]
    assert "skipped" in checks[1].found
    hung = gpu.judge(gpu.TorchInfo(version="2.13.0"), gpu.GpuInfo(off="hung"), {})
    assert hung[1].status == ERROR


# -- GPUs through the fake pynvml -------------------------------------------------------------
@pytest.fixture
def fake_nvml(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fakenvml"))
    sys.modules.pop("pynvml", None)
    import pynvml

    assert pynvml.__file__.startswith(str(ROOT / "tests"))
    desc = tmp_path / "nvml.json"
    monkeypatch.setenv("WD_FAKE_NVML", str(desc))
    yield desc, pynvml
    sys.modules.pop("pynvml", None)
    sys.modules.pop("_real_pynvml", None)


def test_a_driver_too_old_for_torchs_cuda_is_an_error(fake_nvml, monkeypatch) -> None:
    desc, pynvml = fake_nvml
    desc.write_text(json.dumps({"driver": "520.61.05", "devices": [
        {"uuid": "GPU-0"}, {"uuid": "GPU-1", "processes": [4242]}]}))
    # (the fake serves no nvmlSystemGetCudaDriverVersion: CUDA 11.8 is what driver 520 supports)
    monkeypatch.setattr(pynvml, "nvmlSystemGetCudaDriverVersion", lambda: 11080, raising=False)
    info = gpu.gpu_info()
    assert info.driver == "520.61.05" and info.cuda_driver == 11080 and info.uuids == ("GPU-0", "GPU-1")
    checks = {c.check: c for c in gpu.judge(gpu.TorchInfo(version="2.13.0", cuda="12.8", nccl="2.27.3"),
                                            info, {"CUDA_VISIBLE_DEVICES": "0,1,2"})}
    assert checks["driver"].status == ERROR and "11.8" in checks["driver"].found
    assert checks["gpus"].status == ERROR and "2" in checks["gpus"].found
    assert checks["gpu processes"].status == WARN and "4242" in checks["gpu processes"].found


def test_no_driver_through_the_fake(fake_nvml) -> None:
    desc, _ = fake_nvml
    desc.write_text(json.dumps({"init_error": "DriverNotLoaded"}))
    info = gpu.gpu_info()
    assert info.off
    assert gpu.judge(gpu.TorchInfo(version="2"), info, {})[1].status == OK


# -- the command ----------------------------------------------------------------------------
def _doctor(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, list[dict]]:
    full = {**os.environ, **env, "WD_FAKE_NVML": str(tmp_path / "none.json")}
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "fakenvml"), str(ROOT)])
    p = subprocess.run([sys.executable, "-m", "watchdog_d", "doctor", "--json",
                        "--state-dir", str(tmp_path / "state"), *args],
                       capture_output=True, text=True, env=full, timeout=120, cwd=ROOT)
    return p.returncode, json.loads(p.stdout)


def test_doctor_json_and_its_exit_status(tmp_path) -> None:
    rc, report = _doctor(tmp_path, {})
    assert all(set(r) == {"check", "status", "found", "fix"} for r in report)
    assert all(r["status"] in ("ok", "warn", "error") for r in report)
    worst = max({"ok": 0, "warn": 1, "error": 2}[r["status"]] for r in report)
    assert rc == worst
    names = {r["check"] for r in report}
    assert {"python", "shm", "nofile", "memlock", "disk: state dir", "clock", "torch", "gpu",
            "coordinator"} <= names
    rc, report = _doctor(tmp_path, {"NCCL_SOCKET_IFNAME": "nonexistent0"},
                         "--checkpoint-dir", str(tmp_path / "ck"))
    assert rc == 2
    bad = [r for r in report if r["status"] == "error"]
    assert [r["check"] for r in bad] == ["NCCL_SOCKET_IFNAME"] and bad[0]["fix"]
    assert any(r["check"] == "disk: checkpoint dir" for r in report)
