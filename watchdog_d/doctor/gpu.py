"""torch, the NVIDIA driver, the GPUs: what the job will meet when it starts.

torch is asked in a child process (``TORCH_PROBE``), never imported here: the wrapper
that runs ``--preflight`` keeps no torch in memory for the job's lifetime, and a hung
import is killed, not left behind. It is this interpreter's torch (``sys.executable``):
the job's own when watchdog-d is installed in the job's environment, as it normally is.
NVML is read through ``agent.nvml`` (each call bounded, lazily imported).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Mapping

from .check import ERROR, OK, WARN, Check

TORCH_TIMEOUT_S = 60.0          # a cold import of a CUDA torch reads ~2 GB of libraries
NVML_CALL_S = 2.0
# "no NVML here" reasons that mean a CPU-only node, not a broken GPU node
CPU_NODE = ("no pynvml module", "LibraryNotFound", "DriverNotLoaded", "no GPU")
NO_GPU_VALUES = ("", "-1", "NoDevFiles")     # CUDA_VISIBLE_DEVICES that hide every GPU on purpose

TORCH_PROBE = r"""
import json
out = {}
try:
    import torch
    out["version"] = torch.__version__
    out["cuda"] = torch.version.cuda
    if torch.version.cuda:
        try:
            v = torch.cuda.nccl.version()
            out["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:
            out["nccl_error"] = f"{type(e).__name__}: {e}"
except BaseException as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class TorchInfo:
    version: str = ""
    cuda: str | None = None         # the CUDA it was built for (None: a CPU build)
    nccl: str = ""
    error: str = ""                 # could not import it (or the probe failed)


@dataclass(frozen=True)
class GpuInfo:
    off: str = ""                   # why there is no NVML to read ("": there is)
    driver: str = ""
    cuda_driver: int | None = None  # nvmlSystemGetCudaDriverVersion: 12040 -> CUDA 12.4
    uuids: tuple[str, ...] = ()
    others: tuple[tuple[int, int, int | None], ...] = field(default=())   # (gpu, pid, bytes)


# -- pure judgements ---------------------------------------------------------------------
def _ver(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.partition(".")[0] or 0)


def judge_torch(t: TorchInfo) -> list[Check]:
    if t.error:
        if t.error.startswith("ModuleNotFoundError"):
            return [Check("torch", WARN, f"torch is not importable by {sys.executable}",
                          "install torch in this environment, or run doctor with the job's Python")]
        return [Check("torch", ERROR, f"import torch fails: {t.error}"[:400],
                      "repair the torch installation (pip install --force-reinstall torch)")]
    built = f"built for CUDA {t.cuda}" if t.cuda else "a CPU-only build"
    out = [Check("torch", OK, f"torch {t.version}, {built}")]
    if t.cuda:
        out.append(Check("nccl", OK, f"NCCL {t.nccl}") if t.nccl else
                   Check("nccl", WARN, "torch was built with CUDA but reports no NCCL version",
                         "install a torch wheel with NCCL (the PyPI CUDA wheels have it)"))
    return out


def judge_driver(g: GpuInfo, torch_cuda: str | None) -> Check:
    if g.cuda_driver is None:
        return Check("driver", OK, f"driver {g.driver or 'unknown'} (its CUDA version unknown)")
    have = (g.cuda_driver // 1000, g.cuda_driver % 1000 // 10)
    found = f"driver {g.driver or '?'} supports CUDA up to {have[0]}.{have[1]}"
    if not torch_cuda:
        return Check("driver", OK, found)
    want = _ver(torch_cuda)
    found += f"; torch is built for CUDA {torch_cuda}"
    fix = (f"install a driver for CUDA {torch_cuda} or newer, or a torch built for CUDA "
           f"{have[0]}.{have[1]} or older (https://pytorch.org/get-started/locally)")
    if want[0] > have[0]:
        return Check("driver", ERROR, found + " (too old: CUDA fails to initialise)", fix)
    if want > have:
        # CUDA's minor-version compatibility runs most of it, but PTX JIT and newer
        # features fail at run time
        return Check("driver", WARN, found + " (runs under minor-version compatibility only)", fix)
    return Check("driver", OK, found)


def judge_visible(env: Mapping[str, str], g: GpuInfo) -> Check:
    value = env.get("CUDA_VISIBLE_DEVICES")
    count = len(g.uuids)
    if value is None:
        return Check("gpus", OK, f"{count} GPU(s), all visible (CUDA_VISIBLE_DEVICES unset)")
    if value.strip() in NO_GPU_VALUES:
        return Check("gpus", OK, f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU")
    if g.off:
        return Check("gpus", ERROR, f"CUDA_VISIBLE_DEVICES={value} but no GPU is usable here ({g.off})",
                     "unset CUDA_VISIBLE_DEVICES on a CPU node, or install/load the NVIDIA driver")
    bad = []
    for entry in (e.strip() for e in value.split(",")):
        if entry.isdigit():
            if int(entry) >= count:
                bad.append(entry)
        elif entry.startswith("GPU-"):      # a UUID, or a unique prefix of one
            if not any(u.startswith(entry) for u in g.uuids):
                bad.append(entry)
        elif not entry.startswith("MIG-"):  # (MIG instances are not enumerated here)
            bad.append(entry)
    if bad:
        # CUDA stops at the first entry it cannot resolve: the job sees fewer GPUs
        return Check("gpus", ERROR, f"CUDA_VISIBLE_DEVICES={value} names GPUs this node does not "
                                    f"have: {', '.join(bad)} (it has {count}: 0-{count - 1})",
                     "fix CUDA_VISIBLE_DEVICES (indices 0..N-1 or GPU UUIDs from nvidia-smi -L)")
    return Check("gpus", OK, f"{count} GPU(s); CUDA_VISIBLE_DEVICES={value}")


def judge_others(g: GpuInfo) -> Check:
    if not g.others:
        return Check("gpu processes", OK, "no other process holds GPU memory")
    shown = ", ".join(f"GPU {i}: pid {pid}" + (f" ({b >> 20} MiB)" if b else "")
                      for i, pid, b in g.others[:8])
    return Check("gpu processes", WARN, f"{len(g.others)} process(es) already on the GPUs: {shown}",
                 "another job or a leftover of one holds GPU memory (nvidia-smi): the job may "
                 "run out of memory; stop them first")


def judge(t: TorchInfo, g: GpuInfo, env: Mapping[str, str]) -> list[Check]:
    out = judge_torch(t)
    if g.off:
        visible = judge_visible(env, g)
        if g.off.startswith(CPU_NODE):
            out.append(Check("gpu", OK, f"no NVIDIA GPU usable ({g.off}): GPU checks skipped "
                                        f"(a CPU node; gloo jobs run here)"))
        else:
            out.append(Check("gpu", ERROR, f"NVML does not answer: {g.off}",
                             "check the driver (nvidia-smi, dmesg for Xid errors)"))
        if visible.status != OK or env.get("CUDA_VISIBLE_DEVICES") is not None:
            out.append(visible)
        return out
    return out + [judge_driver(g, t.cuda), judge_visible(env, g), judge_others(g)]


# -- I/O ---------------------------------------------------------------------------------
def torch_info(timeout_s: float = TORCH_TIMEOUT_S) -> TorchInfo:
    try:
        p = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True,
                           timeout=timeout_s, stdin=subprocess.DEVNULL)
        raw = json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return TorchInfo(error=f"TimeoutError: import torch took over {timeout_s:g} s")
    except (OSError, ValueError, IndexError) as e:
        return TorchInfo(error=f"probe failed: {e!r}")
    return TorchInfo(version=raw.get("version", ""), cuda=raw.get("cuda"),
                     nccl=raw.get("nccl", ""), error=raw.get("error", ""))


def gpu_info() -> GpuInfo:
    from ..agent.nvml import Failed, Nvml, Off, text

    try:
        nvml = Nvml.open(timeout_s=NVML_CALL_S)
    except Off as e:
        return GpuInfo(off=str(e))
    try:
        driver = cuda = None
        try:
            driver = text(nvml.call("driver", "nvmlSystemGetDriverVersion"))
        except Failed:
            pass
        try:
            cuda = int(nvml.call("cuda_driver", "nvmlSystemGetCudaDriverVersion"))
        except Failed:
            pass
        devices = nvml.devices()
        others = []
        for d in devices:
            try:
                procs = nvml.call("processes", "nvmlDeviceGetComputeRunningProcesses", d.handle)
            except Failed:
                continue
            others += [(d.index, int(p.pid), getattr(p, "usedGpuMemory", None))
                       for p in procs if int(p.pid) != os.getpid()]
        return GpuInfo(driver=driver or "", cuda_driver=cuda, uuids=tuple(d.uuid for d in devices),
                       others=tuple(others))
    finally:
        nvml.close()


def gpu(env: Mapping[str, str]) -> list[Check]:
    return judge(torch_info(), gpu_info(), env)
