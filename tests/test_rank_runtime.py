"""The rank-side runtime (watchdog_d/rank/api.py) in real (short) processes.

It patches process-wide state (sys.excepthook, sys.exit, atexit, the import system), so it
is tested in subprocesses booted the way ``watchdog-d run`` boots a rank:
PYTHONPATH=watchdog_d/rank/_boot, WATCHDOG_D_BEACON_DIR and RANK set. The scenarios are
started together by one module fixture (they are independent, each has its own beacon dir)
and each test checks one. Only the step-hook scenario imports torch; it is started early by
conftest.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from watchdog_d.rank import beacon
from watchdog_d.rank.beacon import EXCEPTION, EXITED, RUNNING, read_slot, slot_path
from wdtest_helpers import rank_env, start_rank, torch_rank_result


# -- the scenarios, started together ---------------------------------------------------------
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
        elif env_kind == "fake_lib":               # a library of another version than hooks knows
            lib = d / "lib" / "safetensors"
            lib.mkdir(parents=True)
            (lib / "__init__.py").write_text("")
            (lib / "torch.py").write_text("def save_file(t, p):\n    return 'saved'\n")
            env = rank_env(d, PYTHONPATH=f"{rank_env(d)['PYTHONPATH']}:{d / 'lib'}")
        elif env_kind == "late_boot":              # no sitecustomize: booted by the first API call
            env = rank_env(d)
            env.pop("PYTHONPATH")
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
    assert slot(p.dir).step == 12          # resumed after 10 steps: 11 and 12, the global step


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
    # what faulthandler leaves behind when the interpreter winds down (C++ destructors,
    # a process group being destroyed can take seconds after it): a late stack request
    # must not kill the rank, SIGRTMIN+3's default
    import faulthandler, signal
    faulthandler.unregister(rank.STACK_SIGNAL)
    out["after_fini"] = signal.getsignal(rank.STACK_SIGNAL) == signal.SIG_IGN
    os.kill(os.getpid(), rank.STACK_SIGNAL)
    print(json.dumps(out))
""")


def test_a_stack_request_while_the_rank_winds_down_is_ignored(runs: dict[str, Run]) -> None:
    p = runs[API]
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["after_fini"] is True


def test_rank_explicit_api_and_normal_exit(runs: dict[str, Run]) -> None:
    p = runs[API]
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["start"]["step"] == -1 and out["start"]["state"] == RUNNING
    assert out["start"]["start_time"] <= out["mono"]
    assert [out[k]["step"] for k in ("s0", "s1", "s41")] == [1, 2, 41]   # completed steps
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
BUILTIN_EXIT = scenario("builtin_exit", "exit(3)")
RAISE_EXIT = scenario("raise_system_exit", "raise SystemExit(3)")
OS_EXIT_5 = scenario("os_exit_5", "import os, sys; sys.stdout.flush(); os._exit(5)")
OS_EXIT_0 = scenario("os_exit_0", "import os; os._exit(0)")
CAUGHT_EXIT = scenario("caught_exit", """
    import os, sys
    try:
        sys.exit(2)
    except SystemExit:
        pass
    if os.fork() == 0:          # a child that exits with its own status marks nothing
        sys.exit(7)
    os.wait()
""")


@pytest.mark.parametrize("name, code, detail", [
    (SYS_EXIT_3, 3, "sys.exit(3)"),
    (SYS_EXIT_MSG, 1, "sys.exit('bad config')"),
    (BUILTIN_EXIT, 3, "exit(3)"),
    # no Python hook sees a bare ``raise SystemExit(3)``; the C module's on_exit handler does
    # (the status given to exit()), so a missed zombie no longer reads as a clean exit
    (RAISE_EXIT, 3, ""),
    (OS_EXIT_5, 5, "os._exit(5)"),
    (OS_EXIT_0, 0, "os._exit(0)"),     # no handler runs after os._exit: recorded when called
    (CAUGHT_EXIT, 0, ""),              # the real exit status, not the sys.exit(2) caught
])
def test_the_exit_status_is_recorded(runs: dict[str, Run], name: str, code: int, detail: str) -> None:
    p = runs[name]
    assert p.returncode == code, p.stderr
    v = slot(p.dir)
    assert (v.state, v.exit_code, v.detail) == (EXITED, code, detail)


def test_rank_sys_exit_zero_is_clean(runs: dict[str, Run]) -> None:
    p = runs[SYS_EXIT_0]
    assert p.returncode == 0
    v = slot(p.dir)
    assert (v.state, v.exit_code, v.step) == (EXITED, 0, 5)


@pytest.mark.torch_subprocess
def test_rank_auto_step_hook_with_torch() -> None:
    pytest.importorskip("torch")
    returncode, stdout, stderr, beacon_dir = torch_rank_result()
    assert returncode == 0, stderr
    v = slot(beacon_dir)
    assert v.step == 3                       # three optimizer steps, no explicit call
    assert v.step_dt > 0.0
    assert (v.state, v.exit_code) == (EXITED, 0)
    # torch.save and torch.load (and safetensors) opened a section by themselves, with the
    # configured checkpoint timeout; the background thread's save did not
    out = json.loads(stdout.strip().splitlines()[-1])
    seen = {tuple(x) for x in out["seen"]}
    assert ("checkpoint: torch.save", 77.0) in seen       # the slow save (the rest may be too quick)
    assert seen <= {("", 0.0), ("checkpoint: torch.save", 77.0), ("checkpoint: torch.load", 77.0),
                    ("checkpoint: safetensors save_file", 77.0)}
    assert {tuple(x) for x in out["background"]} == {("", 0.0)}
    assert out["guarded"] == ["save", "load", "save_file", "load_file", "save", "async_save", "load"]
    assert (out["after_error"], out["nested_back"]) == ("", "upload")
    assert "watchdog-d: cannot hook" not in stderr


NOOP_CODE = """
    import sys, watchdog_d
    from watchdog_d.rank import api as rank
    watchdog_d.step(); watchdog_d.step(10)
    with watchdog_d.section("checkpoint", timeout=5):
        watchdog_d.checkpoint_saved("/ckpt/x.pt", 10)
    watchdog_d.checkpoint_saved(object(), "not a number")
    rank.on_optimizer_step(None, (), {})
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
    assert sorted(x.name for x in p.dir.iterdir()) == ["rank-0.beacon", "rank-0.frreq", "rank-0.stack"]


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


FAKE_LIB = scenario("fake_lib", """
    import safetensors.torch
    assert safetensors.torch.save_file({}, "x") == "saved"   # hooked where it could be
    import watchdog_d
    watchdog_d.step()
""", "fake_lib")


def test_a_hook_that_cannot_install_warns_once_and_the_job_runs_on(runs: dict[str, Run]) -> None:
    p = runs[FAKE_LIB]
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "watchdog-d: cannot hook" in ln]
    assert len(lines) == 1 and "safetensors.torch" in lines[0] and "load_file" in lines[0], p.stderr
    assert slot(p.dir).step == 1


LATE_BOOT = scenario("late_boot", """
    import torch, torch.distributed.checkpoint as dcp   # imported before the rank booted
    import watchdog_d
    watchdog_d.step()
    print(sorted(f.__module__ + "." + f.__name__ for f in (torch.save, torch.load, dcp.save)
                 if getattr(f, "__watchdog_d_guarded__", False)))
""", "late_boot")


def test_a_late_boot_still_guards_what_was_imported_before(runs: dict[str, Run]) -> None:
    """``import torch`` before the first watchdog_d call (no sitecustomize): torch.save,
    re-exported by torch before the hook ran, is guarded all the same."""
    pytest.importorskip("torch")
    p = runs[LATE_BOOT]
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ("['torch.distributed.checkpoint.state_dict_saver.save', "
                                "'torch.serialization.load', 'torch.serialization.save']")
