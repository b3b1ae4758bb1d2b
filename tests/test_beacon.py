"""The rank beacon (watchdog_d/beacon.py) and the rank-side runtime (watchdog_d/rank.py).

Beacon tests run in-process on files in tmp_path. rank.py patches process-wide state
(sys.excepthook, sys.exit, atexit, the import system), so it is tested in short-lived
subprocesses booted the way ``watchdog-d run`` boots a rank: PYTHONPATH=watchdog_d/_boot,
WATCHDOG_D_BEACON_DIR and RANK set. The scenarios are started together by one module
fixture (they are independent, each has its own beacon dir) and each test checks one.
Only the step-hook scenario imports torch; it is started early by conftest.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from watchdog_d.rank import beacon
from watchdog_d.rank.beacon import EXCEPTION, EXITED, RUNNING, SLOT_SIZE, BeaconWriter, read_slot, scan, slot_path
from wdtest_helpers import rank_env, start_rank, torch_rank_result


# -- beacon: write, read back -------------------------------------------------------------
def test_fresh_slot(tmp_path: Path) -> None:
    path = slot_path(tmp_path, 3)
    assert path == tmp_path / "rank-3.beacon"
    BeaconWriter(path, pid=4242, rank=3, local_rank=1, now=100.0)
    assert path.stat().st_size == SLOT_SIZE
    v = read_slot(path)
    assert v is not None
    assert (v.pid, v.rank, v.local_rank, v.start_time) == (4242, 3, 1, 100.0)
    assert (v.step, v.step_time, v.step_dt) == (-1, 100.0, 0.0)
    assert (v.state, v.exit_code, v.exit_time, v.detail) == (RUNNING, 0, 0.0, "")
    assert (v.section, v.section_deadline, v.section_timeout) == ("", 0.0, 0.0)
    assert (v.ckpt_step, v.ckpt_time, v.ckpt_path) == (-1, 0.0, "")


def test_steps_record_time_and_duration(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=10.0)
    w.write_step(0, 12.5)
    w.write_step(1, 13.0)
    v = read_slot(w.path)
    assert v is not None and (v.step, v.step_time, v.step_dt) == (1, 13.0, 0.5)
    assert w.step == 1
    # a section pause is not a step duration: rebase restarts the clock
    w.rebase(20.0)
    w.write_step(2, 20.25)
    v = read_slot(w.path)
    assert v is not None and (v.step, v.step_dt) == (2, 0.25)


def test_section_checkpoint_and_exit(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 1), 7, 1, 1, now=0.0)
    w.write_section("checkpoint", deadline=950.0, timeout=900.0)
    w.write_checkpoint("/ckpt/step-100.pt", 100, 51.0)
    v = read_slot(w.path)
    assert v is not None
    assert (v.section, v.section_deadline, v.section_timeout) == ("checkpoint", 950.0, 900.0)
    assert (v.ckpt_path, v.ckpt_step, v.ckpt_time) == ("/ckpt/step-100.pt", 100, 51.0)
    w.write_section("", 0.0, 0.0)
    w.write_exit(EXCEPTION, 1, 60.0, "RuntimeError: CUDA out of memory")
    v = read_slot(w.path)
    assert v is not None
    assert (v.section, v.section_deadline) == ("", 0.0)
    assert (v.state, v.exit_code, v.exit_time, v.detail) == (EXCEPTION, 1, 60.0,
                                                             "RuntimeError: CUDA out of memory")
    w.write_exit(EXITED, 3, 61.0)
    v = read_slot(w.path)
    assert v is not None and (v.state, v.exit_code, v.detail) == (EXITED, 3, "")


def test_shorter_name_replaces_longer_completely(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    w.write_section("a-very-long-section-name", 10.0, 10.0)
    w.write_section("io", 10.0, 10.0)
    assert read_slot(w.path).section == "io"  # type: ignore[union-attr]


def test_long_names_are_cut_not_raised(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    w.write_section("s" * 500, 1.0, 1.0)
    w.write_checkpoint("/p" * 400, 5, 1.0)
    w.write_exit(EXCEPTION, 1, 2.0, "E" * 1000)
    v = read_slot(w.path)
    assert v is not None
    assert v.section == "s" * 63
    assert v.ckpt_path == ("/p" * 400)[:255]
    assert v.detail == "E" * 79
    # the neighbouring fields are intact
    assert (v.ckpt_step, v.state, v.exit_code) == (5, EXCEPTION, 1)


def test_multibyte_names_cut_mid_character(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    w.write_section("é" * 40, 1.0, 1.0)            # 80 bytes into a 64-byte field
    w.write_exit(EXITED, 2, 1.0, "ошибка " * 20)
    v = read_slot(w.path)
    assert v is not None
    assert v.section.startswith("é" * 31) and len(v.section.encode("utf-8", "replace")) <= 66
    assert v.detail.startswith("ошибка")


def test_missing_short_garbage_and_incomplete_slots_read_as_none(tmp_path: Path) -> None:
    assert read_slot(tmp_path / "rank-0.beacon") is None                 # missing
    good = BeaconWriter(slot_path(tmp_path, 1), 1, 1, 1, now=0.0)
    full = good.path.read_bytes()
    truncated = tmp_path / "rank-2.beacon"
    truncated.write_bytes(full[:SLOT_SIZE // 2])
    assert read_slot(truncated) is None
    empty = tmp_path / "rank-3.beacon"
    empty.write_bytes(b"")
    assert read_slot(empty) is None
    garbage = tmp_path / "rank-4.beacon"
    garbage.write_bytes(bytes(range(256)) * 2)
    assert read_slot(garbage) is None
    zeros = tmp_path / "rank-5.beacon"                                    # magic not yet written
    zeros.write_bytes(b"\0" * SLOT_SIZE)
    assert read_slot(zeros) is None
    a_dir = tmp_path / "rank-6.beacon"
    a_dir.mkdir()
    assert read_slot(a_dir) is None


def test_scan_keeps_complete_slots_by_rank(tmp_path: Path) -> None:
    for r in (0, 1, 5):
        BeaconWriter(slot_path(tmp_path, r), 100 + r, r, r, now=float(r)).write_step(r, 50.0)
    (tmp_path / "rank-7.beacon").write_bytes(b"WDB1 too short")
    (tmp_path / "rank-0.stack").write_text("Thread ...")
    (tmp_path / "rank-0.exc").write_text("Traceback ...")
    (tmp_path / "notes.txt").write_text("hello")
    views = scan(tmp_path)
    assert sorted(views) == [0, 1, 5]
    assert views[5].pid == 105 and views[5].step == 5
    assert scan(tmp_path / "missing") == {}


def test_scan_keys_by_the_rank_inside_the_slot(tmp_path: Path) -> None:
    BeaconWriter(tmp_path / "rank-9.beacon", 1, rank=2, local_rank=0, now=0.0)
    assert list(scan(tmp_path)) == [2]


def test_writer_is_usable_by_a_second_reader_while_open(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    for i in range(100):
        w.write_step(i, float(i))
        v = read_slot(w.path)
        assert v is not None and v.step == i and v.step_time == float(i)


# -- rank.py in real (short) processes ----------------------------------------------------
@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    dir: Path           # the beacon dir given to the rank (or, for no-op runs, one it must not touch)


# name -> (code, how the environment is set up)
SCENARIOS: dict[str, tuple[str, str]] = {}


def scenario(name: str, code: str, env_kind: str = "rank") -> str:
    SCENARIOS[name] = (code, env_kind)
    return name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    started = {}
    for name, (code, env_kind) in SCENARIOS.items():
        d = tmp_path_factory.mktemp(name.replace("/", "_"))
        if env_kind == "rank":
            env = rank_env(d)
        elif env_kind == "no_dir":                 # RANK but no beacon dir: not guarded
            env = rank_env(None, RANK="0")
        elif env_kind == "no_rank":                # beacon dir but no RANK: not a rank
            env = rank_env(None, WATCHDOG_D_BEACON_DIR=str(d))
        elif env_kind == "resumed":                # a relaunch resumed from a step-10 checkpoint
            env = rank_env(d, WATCHDOG_D_RESUME_STEP="10")
        elif env_kind == "bad_dir":                # a beacon dir that cannot be used
            env = rank_env(None, WATCHDOG_D_BEACON_DIR=str(d / "missing" / "dir"), RANK="0")
        else:
            raise AssertionError(env_kind)
        started[name] = (start_rank(code, env), d)
    out = {}
    for name, (proc, d) in started.items():
        stdout, stderr = proc.communicate(timeout=60)
        out[name] = Run(proc.returncode, stdout, stderr, d)
    return out


def slot(beacon_dir: Path, r: int = 0) -> beacon.BeaconView:
    v = read_slot(slot_path(beacon_dir, r))
    assert v is not None, sorted(p.name for p in beacon_dir.iterdir())
    return v


RESUMED = scenario("resumed", """
    import watchdog_d
    watchdog_d.step()
    watchdog_d.step()
""", "resumed")


def test_a_resumed_rank_counts_steps_on_from_its_checkpoint(runs: dict[str, Run]) -> None:
    p = runs[RESUMED]
    assert p.returncode == 0, p.stderr
    assert slot(p.dir).step == 11          # steps 10 and 11: the global step, not 0 and 1


UNCAUGHT = scenario("uncaught", """
    import os
    def train():
        raise ValueError("loss is nan at step 42")
    print(os.getpid(), flush=True)
    train()
""")


def test_rank_uncaught_exception(runs: dict[str, Run]) -> None:
    p = runs[UNCAUGHT]
    assert p.returncode == 1
    assert "ValueError: loss is nan at step 42" in p.stderr          # the user still sees it
    v = slot(p.dir)
    assert v.pid == int(p.stdout.split()[0]) and v.rank == 0 and v.local_rank == 0
    assert (v.state, v.exit_code) == (EXCEPTION, 1)
    assert v.detail == "ValueError: loss is nan at step 42"
    exc = (p.dir / "rank-0.exc").read_text()
    assert exc.startswith("Traceback (most recent call last):")
    assert "in train" in exc and exc.rstrip().endswith("ValueError: loss is nan at step 42")


LONG_EXC = scenario("long_exc", "raise RuntimeError('x' * 500)")


def test_rank_long_exception_message_is_cut(runs: dict[str, Run]) -> None:
    p = runs[LONG_EXC]
    assert p.returncode == 1
    v = slot(p.dir)
    assert v.state == EXCEPTION and v.detail == ("RuntimeError: " + "x" * 500)[:79]
    assert "x" * 500 in (p.dir / "rank-0.exc").read_text()


API = scenario("api", """
    import dataclasses, json, os, time, watchdog_d
    from watchdog_d.rank import beacon, api as rank
    path = beacon.slot_path(os.environ["WATCHDOG_D_BEACON_DIR"], 0)
    snap = lambda: dataclasses.asdict(beacon.read_slot(path))
    out = {"start": snap(), "mono": time.monotonic()}
    watchdog_d.step(); out["s0"] = snap()
    watchdog_d.step(); out["s1"] = snap()
    watchdog_d.step(41); out["s41"] = snap()
    with watchdog_d.section("checkpoint", timeout=900):
        out["in"] = snap()
        with watchdog_d.section("upload", timeout=30):
            out["nested"] = snap()
        out["back"] = snap()
    out["after"] = snap()
    watchdog_d.checkpoint_saved("/ckpt/step-41.pt", 41); out["ckpt"] = snap()
    os.kill(os.getpid(), rank.STACK_SIGNAL)         # what the dump_stacks verb does
    print(json.dumps(out))
""")


def test_rank_explicit_api_and_normal_exit(runs: dict[str, Run]) -> None:
    p = runs[API]
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["start"]["step"] == -1 and out["start"]["state"] == RUNNING
    assert out["start"]["start_time"] <= out["mono"]
    assert [out[k]["step"] for k in ("s0", "s1", "s41")] == [0, 1, 41]
    assert out["s1"]["step_time"] >= out["s0"]["step_time"] >= out["start"]["start_time"]
    assert out["s1"]["step_dt"] >= 0.0
    inside = out["in"]
    assert (inside["section"], inside["section_timeout"]) == ("checkpoint", 900.0)
    assert inside["section_deadline"] == pytest.approx(out["s41"]["step_time"] + 900.0, abs=5.0)
    assert (out["nested"]["section"], out["nested"]["section_timeout"]) == ("upload", 30.0)
    assert out["back"]["section"] == "checkpoint"
    assert out["back"]["section_deadline"] == inside["section_deadline"]
    assert (out["after"]["section"], out["after"]["section_deadline"]) == ("", 0.0)
    assert (out["ckpt"]["ckpt_path"], out["ckpt"]["ckpt_step"]) == ("/ckpt/step-41.pt", 41)
    assert out["ckpt"]["step"] == 41
    # the script ended normally: a clean exit, recorded by atexit
    v = slot(p.dir)
    assert (v.state, v.exit_code, v.detail) == (EXITED, 0, "")
    assert v.exit_time >= out["s41"]["step_time"]
    assert not (p.dir / "rank-0.exc").exists()
    # the stack signal made faulthandler write every thread's stack next to the slot
    assert "most recent call first" in (p.dir / "rank-0.stack").read_text()


SYS_EXIT_3 = scenario("sys_exit_3", "import sys; sys.exit(3)")
SYS_EXIT_MSG = scenario("sys_exit_msg", "import sys; sys.exit('bad config')")
SYS_EXIT_0 = scenario("sys_exit_0", "import sys, watchdog_d; watchdog_d.step(5); sys.exit(0)")


def test_rank_sys_exit_code(runs: dict[str, Run]) -> None:
    p = runs[SYS_EXIT_3]
    assert p.returncode == 3
    v = slot(p.dir)
    assert (v.state, v.exit_code) == (EXITED, 3)
    assert v.detail == "sys.exit(3)"


def test_rank_sys_exit_message(runs: dict[str, Run]) -> None:
    p = runs[SYS_EXIT_MSG]
    assert p.returncode == 1
    v = slot(p.dir)
    assert (v.state, v.exit_code) == (EXITED, 1)
    assert "bad config" in v.detail


def test_rank_sys_exit_zero_is_clean(runs: dict[str, Run]) -> None:
    p = runs[SYS_EXIT_0]
    assert p.returncode == 0
    v = slot(p.dir)
    assert (v.state, v.exit_code, v.step) == (EXITED, 0, 5)


RAISE_EXIT = scenario("raise_system_exit", "raise SystemExit(3)")
BUILTIN_EXIT = scenario("builtin_exit", "exit(3)")


def test_rank_builtin_exit_code(runs: dict[str, Run]) -> None:
    p = runs[BUILTIN_EXIT]
    assert p.returncode == 3
    v = slot(p.dir)
    assert (v.state, v.exit_code) == (EXITED, 3)


@pytest.mark.xfail(strict=True, reason=(
    "bug (now documented as a limitation in rank._record_exit_call): a bare `raise SystemExit(3)` "
    "passes no hook, so rank._on_exit (atexit) records EXITED with code 0; when the agent misses "
    "the zombie, observe.py trusts that 0 and the failed rank counts as a clean exit"))
def test_rank_raise_system_exit_is_not_recorded_as_clean(runs: dict[str, Run]) -> None:
    p = runs[RAISE_EXIT]
    assert p.returncode == 3
    v = slot(p.dir)
    assert (v.state, v.exit_code) != (EXITED, 0)


@pytest.mark.torch_subprocess
def test_rank_auto_step_hook_with_torch() -> None:
    pytest.importorskip("torch")
    returncode, _, stderr, beacon_dir = torch_rank_result()
    assert returncode == 0, stderr
    v = slot(beacon_dir)
    assert v.step == 2                       # -1 -> 0 -> 1 -> 2, no explicit call
    assert v.step_dt > 0.0
    assert (v.state, v.exit_code) == (EXITED, 0)


NOOP_CODE = """
    import sys, watchdog_d
    from watchdog_d.rank import api as rank
    watchdog_d.step(); watchdog_d.step(10)
    with watchdog_d.section("checkpoint", timeout=5):
        watchdog_d.checkpoint_saved("/ckpt/x.pt", 10)
    watchdog_d.checkpoint_saved(object(), "not a number")
    rank._on_optimizer_step(None, (), {})
    assert rank.writer() is None
    assert sys.exit.__module__ == "sys" and sys.excepthook is sys.__excepthook__   # nothing patched
    print("ok")
"""
NOOP = [scenario("noop_" + kind, NOOP_CODE, kind) for kind in ("no_dir", "no_rank", "bad_dir")]


@pytest.mark.parametrize("name", NOOP)
def test_rank_api_is_a_noop_outside_a_guarded_job(runs: dict[str, Run], name: str) -> None:
    p = runs[name]
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok" and p.stderr == ""
    assert list(p.dir.iterdir()) == []            # no slot, no stack file, no missing/dir created


CHILD = scenario("child", """
    import json, os, subprocess, sys, watchdog_d
    watchdog_d.step(7)
    child = ("import watchdog_d, sys\\n"
             "watchdog_d.step(99)\\n"
             "watchdog_d.checkpoint_saved('/child.pt', 99)\\n"
             "with watchdog_d.section('child', timeout=1):\\n"
             "    pass\\n"
             "sys.exit(5)\\n")
    r1 = subprocess.run([sys.executable, "-c", child]).returncode
    r2 = subprocess.run([sys.executable, "-c", "raise RuntimeError('child boom')"],
                        stderr=subprocess.DEVNULL).returncode
    print(json.dumps({"pid": os.getpid(), "r1": r1, "r2": r2}))
""")


def test_rank_child_process_does_not_take_over_the_slot(runs: dict[str, Run]) -> None:
    p = runs[CHILD]
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["r1"], out["r2"]) == (5, 1)      # the children ran (and booted sitecustomize)
    v = slot(p.dir)
    assert v.pid == out["pid"]
    assert v.step == 7 and v.ckpt_step == -1 and v.ckpt_path == "" and v.section == ""
    assert (v.state, v.exit_code, v.detail) == (EXITED, 0, "")
    assert sorted(x.name for x in p.dir.iterdir()) == ["rank-0.beacon", "rank-0.stack"]


FORK = scenario("fork", """
    import os, sys, watchdog_d
    watchdog_d.step(3)
    pid = os.fork()
    if pid == 0:
        sys.exit(3)
    os.waitpid(pid, 0)
""")


def test_rank_forked_child_sys_exit_does_not_mark_the_rank(runs: dict[str, Run]) -> None:
    p = runs[FORK]
    assert p.returncode == 0, p.stderr
    v = slot(p.dir)
    assert (v.state, v.exit_code, v.step) == (EXITED, 0, 3)


def test_excepthook_called_by_user_code_does_not_mark_the_rank(tmp_path) -> None:
    """Libraries log handled errors with sys.excepthook(*sys.exc_info()): not an ending."""
    import subprocess
    import sys

    from watchdog_d.rank import beacon

    code = ("import sys, watchdog_d\n"
            "watchdog_d.step()\n"
            "try:\n    raise ValueError('handled')\n"
            "except ValueError:\n    sys.excepthook(*sys.exc_info())\n"
            "import time; time.sleep(0.01)\n")
    from wdtest_helpers import BOOT_DIR

    env = {"PATH": "/usr/bin:/bin", "WATCHDOG_D_BEACON_DIR": str(tmp_path), "RANK": "0",
           "PYTHONPATH": f"{BOOT_DIR}:{BOOT_DIR.parent.parent}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    view = beacon.read_slot(beacon.slot_path(tmp_path, 0))
    assert view is not None and view.state == beacon.EXITED and view.exit_code == 0
