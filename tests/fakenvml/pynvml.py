"""A fake ``pynvml`` for tests: put ``tests/fakenvml`` first on ``sys.path`` (or on
``PYTHONPATH`` of a real process) and ``import pynvml`` gets this module.

Everything that is not a served function is the REAL nvidia-ml-py's: its error classes
(``NVMLError_GpuIsLost`` ...), constants and ctypes structures, loaded from the real
``pynvml.py`` further down ``sys.path`` (under the name ``_real_pynvml``). So code that
catches ``pynvml.NVMLError_NotSupported`` catches what the fake raises, and the values it
returns have the real library's types (``c_nvmlMemory_t``, ``nvmlPciInfo_t``, device
handles that are ``c_nvmlDevice_t`` pointers, ``c_nvmlEventData_t`` ...).

What it serves is described by the JSON file named in ``WD_FAKE_NVML``, re-read whenever
it changes (mtime or size), so a test can lose a GPU, raise an Xid or hang a call while a
process runs. No ``WD_FAKE_NVML`` or no file: ``nvmlInit`` raises NVMLError_LibraryNotFound.
Every key is optional::

    {
      "init_error": "DriverNotLoaded",      # nvmlInit raises NVMLError_<this>
      "driver": "550.54.15",
      "errors": {"nvmlEventSetWait_v2": "Unknown"},   # any function raises NVMLError_<...>
      "hang": {"nvmlDeviceGetCount": 30},   # any function sleeps this many seconds first
      "devices": [{
        "uuid": "GPU-0", "pci": "00000000:1B:00.0", "name": "NVIDIA H100 80GB HBM3",
        "util": 90, "mem_util": 40,            # percent
        "mem_used": 1073741824, "mem_total": 85899345920,    # bytes
        "temp": 60,                            # celsius
        "power_mw": 300000,                    # milliwatts
        "clocks_event_reasons": 0,             # bit mask (nvmlClocksEventReason*)
        "sm_clock": 1980, "sm_clock_max": 1980,   # MHz (nvmlDeviceGetClockInfo / GetMaxClockInfo, NVML_CLOCK_SM)
        "ecc_uncorrected": 0,                  # volatile, total
        "remapped": [0, 0, 0, 0],              # corrected, uncorrected, pending, failure
        "recovery_action": 0,                  # NVML_GPU_RECOVERY_ACTION_*; absent: field NotSupported
        "processes": [1234, 1235],             # compute processes (pids) on this GPU
        "lost": false,                         # every call on this GPU: NVMLError_GpuIsLost
        "errors": {"nvmlDeviceGetPowerUsage": "NotSupported"},   # per function, this GPU only
        "hang": {"nvmlDeviceGetTemperature": 30}                 # per function, this GPU only
      }],
      "events": [{"id": 1, "gpu": 0, "xid": 79}]   # Xid events; each id is delivered once
    }                                              # per event set, to sets registered on "gpu"
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import json
import os
import sys
import threading
import time
from types import SimpleNamespace

_HERE = os.path.dirname(os.path.realpath(__file__))


def _load_real():
    path = [p for p in sys.path if os.path.realpath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("pynvml", path)
    if spec is None:
        raise ImportError("the fake pynvml needs the real nvidia-ml-py installed", name="pynvml")
    # under its own name: it makes its error classes on sys.modules[__name__]
    spec = importlib.util.spec_from_file_location("_real_pynvml", spec.origin)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_real_pynvml"] = mod
    spec.loader.exec_module(mod)
    return mod


_real = _load_real()
# the real names (error classes, constants, structures); served functions are redefined below
globals().update({k: v for k, v in vars(_real).items()
                  if not k.startswith("__") and k not in ("_nvmlLib",)})
_HANDLE_BASE = 0x7E5700
_lock = threading.Lock()
_state: dict = {"key": None, "data": {}}


def _data() -> dict:
    path = os.environ.get("WD_FAKE_NVML", "")
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        return {"init_error": "LibraryNotFound"}
    with _lock:
        if _state["key"] != key:
            try:
                with open(path) as f:
                    _state["data"] = json.load(f)
                _state["key"] = key
            except (OSError, ValueError):   # half-written: the last good one
                pass
        return _state["data"]


def _raise(name: str):
    cls = getattr(_real, "NVMLError_" + name, None)
    raise cls() if cls is not None else _real.NVMLError(_real.NVML_ERROR_UNKNOWN)


def _enter(fn: str, device: dict | None = None) -> dict:
    d = _data()
    for scope in (d, device or {}):
        if fn in scope.get("hang", {}):
            time.sleep(float(scope["hang"][fn]))
        if fn in scope.get("errors", {}):
            _raise(scope["errors"][fn])
    if device is not None and device.get("lost"):
        _raise("GpuIsLost")
    return d


def _index(handle) -> int:
    addr = ctypes.cast(handle, ctypes.c_void_p).value or 0
    return addr - _HANDLE_BASE


def _device(fn: str, handle) -> dict:
    devices = _data().get("devices", [])
    i = _index(handle)
    if not 0 <= i < len(devices):
        _raise("InvalidArgument")
    dev = devices[i]
    _enter(fn, dev)
    return dev


def _handle(i: int):
    return ctypes.cast(ctypes.c_void_p(_HANDLE_BASE + i), _real.c_nvmlDevice_t)


# -- system --------------------------------------------------------------------------
def nvmlInit():
    d = _enter("nvmlInit")
    if d.get("init_error"):
        _raise(d["init_error"])


def nvmlInitWithFlags(flags):
    nvmlInit()


def nvmlShutdown():
    _enter("nvmlShutdown")


def nvmlSystemGetDriverVersion():
    return _enter("nvmlSystemGetDriverVersion").get("driver", "550.54.15")


def nvmlDeviceGetCount():
    return len(_enter("nvmlDeviceGetCount").get("devices", []))


def nvmlDeviceGetHandleByIndex(i):
    d = _enter("nvmlDeviceGetHandleByIndex")
    if not 0 <= i < len(d.get("devices", [])):
        _raise("InvalidArgument")
    return _handle(i)


# -- a device --------------------------------------------------------------------------
def nvmlDeviceGetIndex(h):
    _device("nvmlDeviceGetIndex", h)
    return _index(h)


def nvmlDeviceGetUUID(h):
    return _device("nvmlDeviceGetUUID", h).get("uuid", f"GPU-fake-{_index(h)}")


def nvmlDeviceGetName(h):
    return _device("nvmlDeviceGetName", h).get("name", "NVIDIA Fake GPU")


def nvmlDeviceGetPciInfo(h):
    dev = _device("nvmlDeviceGetPciInfo", h)
    info = _real.nvmlPciInfo_t()
    info.busId = dev.get("pci", f"00000000:{0x10 + _index(h):02X}:00.0").encode()
    return info


nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo


def nvmlDeviceGetUtilizationRates(h):
    dev = _device("nvmlDeviceGetUtilizationRates", h)
    return _real.c_nvmlUtilization_t(gpu=int(dev.get("util", 0)), memory=int(dev.get("mem_util", 0)))


def nvmlDeviceGetMemoryInfo(h, version=None):
    dev = _device("nvmlDeviceGetMemoryInfo", h)
    total, used = int(dev.get("mem_total", 80 << 30)), int(dev.get("mem_used", 0))
    return _real.c_nvmlMemory_t(total=total, free=total - used, used=used)


def nvmlDeviceGetTemperature(h, sensor):
    return int(_device("nvmlDeviceGetTemperature", h).get("temp", 40))


def nvmlDeviceGetPowerUsage(h):
    return int(_device("nvmlDeviceGetPowerUsage", h).get("power_mw", 100_000))


def nvmlDeviceGetCurrentClocksEventReasons(h):
    return int(_device("nvmlDeviceGetCurrentClocksEventReasons", h).get("clocks_event_reasons", 0))


def nvmlDeviceGetCurrentClocksThrottleReasons(h):
    return int(_device("nvmlDeviceGetCurrentClocksThrottleReasons", h).get("clocks_event_reasons", 0))


def nvmlDeviceGetClockInfo(h, clock_type):
    dev = _device("nvmlDeviceGetClockInfo", h)
    return int(dev.get("sm_clock", 1980)) if clock_type == _real.NVML_CLOCK_SM else 1500


def nvmlDeviceGetMaxClockInfo(h, clock_type):
    dev = _device("nvmlDeviceGetMaxClockInfo", h)
    return int(dev.get("sm_clock_max", 1980)) if clock_type == _real.NVML_CLOCK_SM else 1600


def nvmlDeviceGetTotalEccErrors(h, error_type, counter_type):
    dev = _device("nvmlDeviceGetTotalEccErrors", h)
    if error_type != _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
        return 0
    return int(dev.get("ecc_uncorrected", 0))


def nvmlDeviceGetRemappedRows(h):
    return tuple(int(x) for x in _device("nvmlDeviceGetRemappedRows", h).get("remapped", [0, 0, 0, 0]))


def nvmlDeviceGetFieldValues(h, field_ids):
    dev = _device("nvmlDeviceGetFieldValues", h)
    values = (_real.c_nvmlFieldValue_t * len(field_ids))()
    for i, fid in enumerate(field_ids):
        values[i].fieldId = fid
        if fid == _real.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION and "recovery_action" in dev:
            values[i].valueType = _real.NVML_VALUE_TYPE_UNSIGNED_INT
            values[i].value.uiVal = int(dev["recovery_action"])
            values[i].nvmlReturn = _real.NVML_SUCCESS
        else:
            values[i].nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
    return values


def nvmlDeviceGetComputeRunningProcesses(h):
    dev = _device("nvmlDeviceGetComputeRunningProcesses", h)
    return [SimpleNamespace(pid=int(p), usedGpuMemory=None, gpuInstanceId=0xFFFFFFFF,
                            computeInstanceId=0xFFFFFFFF) for p in dev.get("processes", [])]


nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses


# -- events ------------------------------------------------------------------------------
class _EventSet:
    def __init__(self):
        self.gpus: set[int] = set()
        self.delivered: set = set()


_sets: dict[int, _EventSet] = {}


def nvmlEventSetCreate():
    _enter("nvmlEventSetCreate")
    es = _EventSet()
    _sets[id(es)] = es
    return ctypes.cast(ctypes.c_void_p(id(es)), _real.c_nvmlEventSet_t)


def _set(es) -> _EventSet:
    return _sets[ctypes.cast(es, ctypes.c_void_p).value]


def nvmlDeviceRegisterEvents(h, event_types, es):
    _device("nvmlDeviceRegisterEvents", h)
    if event_types & _real.nvmlEventTypeXidCriticalError:
        _set(es).gpus.add(_index(h))


def nvmlEventSetWait_v2(es, timeout_ms):
    s = _set(es)
    deadline = time.monotonic() + timeout_ms / 1000.0
    while True:
        for ev in _enter("nvmlEventSetWait_v2").get("events", []):
            key = ev.get("id", json.dumps(ev, sort_keys=True))
            if key in s.delivered or int(ev.get("gpu", 0)) not in s.gpus:
                continue
            s.delivered.add(key)
            data = _real.c_nvmlEventData_t()
            data.device = _handle(int(ev.get("gpu", 0)))
            data.eventType = _real.nvmlEventTypeXidCriticalError
            data.eventData = int(ev.get("xid", 0))
            return data
        left = deadline - time.monotonic()
        if left <= 0:
            _raise("Timeout")
        time.sleep(min(0.05, left))


nvmlEventSetWait = nvmlEventSetWait_v2


def nvmlEventSetFree(es):
    _sets.pop(ctypes.cast(es, ctypes.c_void_p).value, None)
