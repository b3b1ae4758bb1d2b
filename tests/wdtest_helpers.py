"""Shared test helpers: hand-built reports for the pure core (state / detector) and
rank subprocesses booted like ``watchdog-d run`` boots a rank (beacon / rank.py).

Kept in a uniquely named module rather than ``conftest.py``: ``integration/``
has a conftest of its own, and ``from conftest import ...`` would be ambiguous
when both directories are collected in one run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import watchdog_d
from watchdog_d.core.model import JobOnNode, JobSpec, NodeReport, RankReport, Verdict
from watchdog_d.core.state import Cluster, Decision

JOB = "j1"
SIGKILL, SIGTERM, SIGSEGV = int(signal.SIGKILL), int(signal.SIGTERM), int(signal.SIGSEGV)

# a faulthandler-style dump of a rank waiting in a collective, and of one that is not
STACK_IN_COLLECTIVE = (
    'Thread 0x00007f0000000001 (most recent call first):\n'
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", '
    'line 2050 in all_reduce\n'
    '  File "/job/train.py", line 88 in train_step\n'
)
STACK_OUTSIDE = (
    'Thread 0x00007f0000000002 (most recent call first):\n'
    '  File "/job/data.py", line 12 in read_shard\n'
    '  File "/job/train.py", line 80 in train_step\n'
)


def spec(job: str = JOB, **kw: object) -> JobSpec:
    return JobSpec(job_id=job, **kw)  # type: ignore[arg-type]


def rank(r: int, **kw: object) -> RankReport:
    return RankReport(rank=r, local_rank=r, pid=1000 + r, **kw)  # type: ignore[arg-type]


def dead(r: int, *, code: int | None = None, sig: int | None = None, age: float = 0.0,
         **kw: object) -> RankReport:
    return rank(r, alive=False, exit_code=code, exit_signal=sig, exit_age_s=age, proc_state="X", **kw)


def report(node: str, ranks: object = (), state: str = "running", attempt: int = 0, *,
           job_spec: JobSpec | None = None, exit_code: int = 0, seq: int = 0,
           run: str | None = None) -> NodeReport:
    """One heartbeat of ``node`` about one job. ``ranks``: RankReports or plain rank numbers
    (alive, at step 0, just stepped). ``run``: the node's run token (default: ``r1<node>``,
    one run, each node's wrapper with a token of its own)."""
    rs = tuple(x if isinstance(x, RankReport) else rank(int(x), step=0)  # type: ignore[arg-type]
               for x in ranks)  # type: ignore[attr-defined]
    return NodeReport(node_id=node, host=f"host-{node}", seq=seq,
                      jobs=(JobOnNode(spec=job_spec or spec(), attempt=attempt, state=state,
                                      exit_code=exit_code, ranks=rs,
                                      run=f"r1{node}" if run is None else run),))


# -- rank processes (rank.py tests) --------------------------------------------------------
BOOT_DIR = Path(watchdog_d.__file__).parent / "rank" / "_boot"


def rank_env(beacon_dir: Path | None, **extra: str) -> dict[str, str]:
    """The environment ``watchdog-d run`` gives a rank: boot dir on PYTHONPATH, beacon dir, RANK.
    Nothing of the caller's own WATCHDOG_D_* / RANK settings leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WATCHDOG_D_") and k not in ("RANK", "LOCAL_RANK", "PYTHONPATH")}
    env["PYTHONPATH"] = str(BOOT_DIR)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if beacon_dir is not None:
        env["WATCHDOG_D_BEACON_DIR"] = str(beacon_dir)
        env["RANK"] = "0"
        env["LOCAL_RANK"] = "0"
    env.update(extra)
    return env


def start_rank(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The torch step-hook scenario costs ~3 s (import torch, then torch._dynamo on the first
# optimizer). tests/conftest.py starts it when the session starts and runs its test last,
# so it overlaps the rest of the suite instead of adding to it.
TORCH_HOOK_CODE = """
    import json, os, sys, tempfile, threading, time
    import torch
    from watchdog_d.rank import beacon
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
    # automatic sections: what a reader of the beacon sees while the rank saves and loads
    slot = beacon.slot_path(os.environ["WATCHDOG_D_BEACON_DIR"], 0)
    seen, done = set(), threading.Event()
    def watch():
        while not done.is_set():
            v = beacon.read_slot(slot)
            seen.add((v.section, v.section_timeout))
            time.sleep(0.01)
    class SlowFile:          # a slow disk: every write takes a while
        def __init__(self, f): self.f = f
        def write(self, b): time.sleep(0.05); return self.f.write(b)
        def flush(self): self.f.flush()
    threading.Thread(target=watch, daemon=True).start()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "m.pt"), "wb") as f:
        torch.save(model.state_dict(), SlowFile(f))
    torch.load(os.path.join(tmp, "m.pt"))
    import safetensors.torch
    safetensors.torch.save_file({"w": torch.zeros(4)}, os.path.join(tmp, "m.safetensors"))
    time.sleep(0.05)
    main_thread, seen = seen, set()
    # a save in a background thread holds nothing up: no section
    t = threading.Thread(target=lambda: torch.save({"x": 1}, SlowFile(open(os.path.join(tmp, "b.pt"), "wb"))))
    t.start(); t.join()
    time.sleep(0.05); done.set()
    background, seen = seen, main_thread
    # bad input: an exception inside torch.save closes its section; sections nest
    import watchdog_d
    try:
        torch.save({"x": 1}, "/nonexistent-dir/x.pt")
    except Exception:
        pass
    after_error = beacon.read_slot(slot).section
    with watchdog_d.section("upload", timeout=60):
        with open(os.path.join(tmp, "n.pt"), "wb") as f:
            torch.save({"x": 1}, f)
        nested_back = beacon.read_slot(slot).section
    import torch.distributed.checkpoint as dcp
    guarded = [f.__name__ for f in (torch.save, torch.load, safetensors.torch.save_file,
                                    safetensors.torch.load_file, dcp.save, dcp.async_save, dcp.load)
               if getattr(f, "__watchdog_d_guarded__", False)]
    print(json.dumps({"seen": sorted(seen), "background": sorted(background), "guarded": guarded,
                      "after_error": after_error, "nested_back": nested_back}))
"""
_torch_run: dict[str, object] = {}


def start_torch_rank() -> None:
    if "proc" not in _torch_run:
        beacon_dir = Path(tempfile.mkdtemp(prefix="wd-test-torch-"))
        _torch_run["dir"] = beacon_dir
        _torch_run["proc"] = start_rank(TORCH_HOOK_CODE, rank_env(
            beacon_dir, WATCHDOG_D_CHECKPOINT_TIMEOUT="77"))


def torch_rank_result(timeout: float = 120.0) -> tuple[int, str, str, Path]:
    start_torch_rank()
    proc: subprocess.Popen = _torch_run["proc"]  # type: ignore[assignment]
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, _torch_run["dir"]  # type: ignore[return-value]


def stop_torch_rank() -> None:
    proc = _torch_run.pop("proc", None)
    if proc is not None and proc.poll() is None:  # type: ignore[attr-defined]
        proc.kill()                                # type: ignore[attr-defined]
        proc.communicate()                         # type: ignore[attr-defined]
    beacon_dir = _torch_run.pop("dir", None)
    if beacon_dir is not None:
        shutil.rmtree(beacon_dir, ignore_errors=True)  # type: ignore[arg-type]


# -- decisions of a hand-fed Cluster (detector and stall tests) ---------------------------
def verdict_decisions(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.incident is not None]


def only_verdict(decisions: list[Decision]) -> tuple[Decision, Verdict]:
    found = verdict_decisions(decisions)
    assert len(found) == 1, decisions
    assert found[0].incident is not None
    return found[0], found[0].incident.verdict


def two_nodes(t: float = 100.0, **spec_kw: object) -> Cluster:
    """Job j1 on nodes a (ranks 0, 1) and b (ranks 2, 3), all healthy at time t."""
    c = Cluster()
    s = spec(**spec_kw)
    c.ingest(report("a", [0, 1], job_spec=s), t)
    c.ingest(report("b", [2, 3], job_spec=s), t)
    assert c.evaluate(t) == []
    return c
