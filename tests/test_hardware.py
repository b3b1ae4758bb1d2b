"""Hardware and kernel evidence as rank findings: kmsg parsing, NVML sampling against the
fake, rank mapping, dedupe, and the verdicts core makes of them."""
from __future__ import annotations

import os
import time

import pytest

from fakenvml_load import load_fake, write
from wdtest_helpers import SIGKILL, dead, rank, report
from watchdog_d.agent import kmsg as km
from watchdog_d.agent.hardware import Hardware, gpus_of_env
from watchdog_d.agent.nvml import Nvml
from watchdog_d.core.state import Cluster

OOM_OLD = "Out of memory: Killed process 4242 (python) total-vm:1234kB, anon-rss:99kB, file-rss:0kB"
OOM_NEW = ("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
           "global_oom,task_memcg=/user.slice,task=python,pid=4242,uid=1000")
XID = "NVRM: Xid (PCI:0000:1b:00): 79, pid=4242, name=python, GPU has fallen off the bus."


def test_parse_kernel_lines() -> None:
    assert km.parse(OOM_OLD) == km.OomKill(4242, "python", OOM_OLD)
    assert km.parse("6,991,123456,-;" + OOM_NEW).pid == 4242
    assert km.parse("Memory cgroup out of memory: Killed process 77 (pt_main_thread) total-vm:1kB").pid == 77
    assert km.parse("Out of memory: Kill process 9 (python) score 900 or sacrifice child").pid == 9
    x = km.parse("4,5,6,-;" + XID)
    assert (x.pci, x.xid, x.pid) == ((0, 0x1b, 0), 79, 4242)
    assert km.parse("NVRM: Xid (0000:01:00): 31, Ch 0000000b, engmask 00000120").xid == 31
    for junk in ("", "garbage ;;; \x00\xff", "NVRM: loading NVIDIA UNIX driver", "oom-kill:task=",
                 "6,1,2,-;usb 1-1: new device", " SUBSYSTEM=pci"):
        assert km.parse(junk) is None
    assert km.pci_key("00000000:1B:00.0") == km.pci_key("PCI:0000:1b:00") == (0, 0x1b, 0)


def test_reader_starts_at_end_and_bounds_a_flood(tmp_path) -> None:
    src = tmp_path / "kmsg"
    src.write_text("old boot line\n" + OOM_OLD + "\n")
    r = km.KmsgReader(str(src))
    assert r.read() == []                             # old messages are not news
    with open(src, "a") as f:
        f.write("x" * 100 + "\n" * 1 + ("flood line\n" * 50_000) + OOM_NEW + "\n")
    t0, seen, passes = time.monotonic(), [], 0
    while (got := r.read()):
        assert len(got) <= km.MAX_RECORDS + 8192      # a pass is bounded
        seen += got
        passes += 1
    assert passes > 10 and seen[-1] == OOM_NEW and time.monotonic() - t0 < 5


def test_unreadable_kmsg_is_said_once(tmp_path, capsys) -> None:
    r = km.KmsgReader(str(tmp_path / "nope"))
    assert r.off and r.read() == [] and r.read() == []
    assert capsys.readouterr().err.count("kmsg_off") == 1


def test_gpus_of_env() -> None:
    assert gpus_of_env(None, b"3", -1, {}) == {3}
    assert gpus_of_env(b"4,5,6,7", None, 1, {}) == {5}
    assert gpus_of_env(b"GPU-bbb", None, 0, {"GPU-aaa-1": 0, "GPU-bbb-2": 1}) == {1}
    assert gpus_of_env(b"MIG-1", None, 0, {}) == set() == gpus_of_env(b"0", None, 3, {})


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = tmp_path / "nvml.json"
    monkeypatch.setenv("WD_FAKE_NVML", str(path))
    return path, load_fake()


def _gpu(i: int, **kw) -> dict:
    return {"uuid": f"GPU-{i}", "pci": f"00000000:{0x1b + i:02X}:00.0", **kw}


def _hw(fake, data: dict, kmsg: str = "") -> Hardware:
    path, lib = fake
    write(path, data)
    return Hardware(5.0, kmsg, nvml=Nvml.open(lib=lib, timeout_s=0.5))


def test_sampling_absent_metrics_and_lost(fake) -> None:
    hw = _hw(fake, {"devices": [_gpu(0, util=50, power_mw=250_000, mem_used=1 << 30,
                                     errors={"nvmlDeviceGetTemperature": "NotSupported"}, processes=[1000]),
                                _gpu(1, recovery_action=0, processes=[1001])]})
    hw.sample()
    g0, g1 = hw.gpus
    assert (g0.util_ratio, g0.power_w, g0.mem_used_bytes, g0.temperature_c) == (0.5, 250.0, 1 << 30, -1.0)
    assert (g0.recovery_action, g1.recovery_action, g0.lost) == (-1, 0, False)
    write(fake[0], {"devices": [_gpu(0), _gpu(1, lost=True)]})
    hw.sample()
    assert [g.lost for g in hw.gpus] == [False, True] and hw.gpus[1].power_w == -1
    ranks = hw.with_hardware((rank(0), rank(1)))
    assert ranks[0].findings == () and ranks[1].findings[0].kind == "gpu_lost"
    assert ranks[1].findings[0].severity == "fatal"


def test_xid_from_nvml_maps_by_process_list_and_dedupes_kmsg(fake, tmp_path) -> None:
    src = tmp_path / "kmsg"
    src.write_text("")
    pid1 = 1001                                        # wdtest_helpers.rank(1)'s pid
    hw = _hw(fake, {"devices": [_gpu(0, processes=[1000]), _gpu(1, processes=[pid1])]}, str(src))
    hw.sample()
    ranks = (rank(0), rank(1))
    assert hw.with_hardware(ranks) == ranks
    hw.watcher.start()
    write(fake[0], {"devices": [_gpu(0, processes=[1000]), _gpu(1, processes=[pid1])],
                    "events": [{"id": 1, "gpu": 1, "xid": 79}, {"id": 2, "gpu": 0, "xid": 45}]})
    deadline = time.monotonic() + 5
    while hw.xid_counts.get(0) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(src, "a") as f:                          # the kernel's line of the same Xid
        f.write("NVRM: Xid (PCI:0000:1c:00): 79, pid=1001, name=python, GPU has fallen off the bus.\n")
    out = hw.with_hardware(ranks)
    hw.stop()
    assert out[0].findings == ()                       # Xid 45 is not critical
    (f,) = out[1].findings                             # one finding, not two
    assert (f.kind, f.severity, f.role, dict(f.fields)["xid"]) == ("gpu_xid", "fatal", "cause", "79")
    assert "fallen off the bus" in f.explanation and f.remedy
    assert hw.xid_counts == {1: (79, 1), 0: (45, 1)}


def test_old_xid_does_not_blame_a_later_rank(fake) -> None:
    hw = _hw(fake, {"devices": [_gpu(0, processes=[1000])]})
    hw.sample()
    hw.on_xid(0, 79)
    time.sleep(0.01)
    (r,) = hw.with_hardware((rank(0),))  # first seen after the event
    assert r.findings == ()


def test_pending_remap_warns_failure_and_ecc_with_reset_are_fatal(fake) -> None:
    hw = _hw(fake, {"devices": [_gpu(0, remapped=[0, 0, 1, 0], processes=[1000]),
                                _gpu(1, remapped=[0, 0, 0, 1], processes=[1001]),
                                _gpu(2, ecc_uncorrected=2, recovery_action=1, processes=[1002])]})
    hw.sample()
    out = hw.with_hardware(tuple(rank(i) for i in range(3)))
    assert [(f.kind, f.severity) for r in out for f in r.findings] == [
        ("gpu_remap_pending", "warning"), ("gpu_remap_failure", "fatal"), ("gpu_ecc", "fatal")]


def test_oom_line_then_sigkill_is_host_oom_verdict(tmp_path) -> None:
    src = tmp_path / "kmsg"
    src.write_text("")
    hw = Hardware(5.0, str(src), gpu_checks=False)
    with open(src, "a") as f:
        f.write(OOM_OLD.replace("4242", "1001") + "\n")
    ranks = hw.with_hardware((rank(0, step=3), dead(1, sig=SIGKILL, step=3)))
    assert ranks[1].findings[0].kind == "host_oom" and ranks[0].findings == ()
    c = Cluster()
    c.ingest(report("a", ranks), 1.0)
    decisions = c.evaluate(1.0)
    v = next(d.incident.verdict for d in decisions if d.incident is not None)
    assert (v.kind, v.rank) == ("host_oom", 1) and "OOM killer" in v.cause


def test_gpu_xid_on_a_live_rank_is_a_verdict(fake) -> None:
    hw = _hw(fake, {"devices": [_gpu(0, processes=[1000]), _gpu(1, processes=[1001])]})
    hw.sample()
    ranks = (rank(0, step=5), rank(1, step=5))
    hw.with_hardware(ranks, time.monotonic() - 1)      # the ranks existed before the Xid
    hw.on_xid(1, 79)
    c = Cluster()
    seen = hw.with_hardware(ranks)
    assert [f.kind for r in seen for f in r.findings] == ["gpu_xid"]
    c.ingest(report("a", seen), 1.0)
    v = next(d.incident.verdict for d in c.evaluate(1.0) if d.incident is not None)
    assert (v.kind, v.rank) == ("gpu_xid", 1)
