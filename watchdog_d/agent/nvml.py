"""The pynvml boundary: every NVML call the agent makes goes through ``Nvml.call``.

NVML is read, never trusted to return: a driver in trouble can leave a call hanging for
minutes. So each call runs on a worker thread and is waited for at most ``timeout_s``. A
call that does not come back costs its worker (a thread stuck in C cannot be stopped): the
next call gets a fresh worker, the check that hung is off from then on (said once), and
after ``MAX_STUCK`` stuck workers NVML is off altogether.

The library's own exception classes (``pynvml.NVMLError_*``) are mapped to one ``Failed``
with a ``why`` the callers act on:

    lost            NVMLError_GpuIsLost: the GPU fell off the bus (a finding, not a log line)
    not_supported   NotSupported / FunctionNotFound: that metric is absent on this GPU
    no_permission   NoPermission: that check is off, said once
    timeout         NVMLError_Timeout (the event wait's "nothing happened")
    hung            the call did not return in time: that check is off, said once
    off             NVML was switched off (stuck workers, shut down)
    error           anything else (Unknown, a driver/library mismatch, ...): this pass only

``Nvml.open()`` raises ``Off(reason)`` where there is no NVML to read (no pynvml module, no
library, no driver, no GPU); callers log ``gpu_checks_off reason=...`` once and stop there.
Tests replace ``pynvml`` by ``tests/fakenvml/pynvml.py`` (on ``sys.path`` first).
"""
from __future__ import annotations

import ctypes
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .. import log

CALL_TIMEOUT_S = 2.0        # a sane NVML call takes microseconds to a few ms
MAX_STUCK = 3               # stuck workers before NVML is given up for good


class Failed(Exception):
    """An NVML call that gave no value; ``why`` as in the module doc."""

    def __init__(self, why: str, check: str, detail: str = ""):
        super().__init__(f"{check}: {why} {detail}".strip())
        self.why, self.check, self.detail = why, check, detail


class Off(Exception):
    """No NVML on this node; the message is the reason, for ``gpu_checks_off``."""


@dataclass(frozen=True)
class Device:
    index: int
    handle: Any
    uuid: str = ""
    pci_bus_id: str = ""     # "00000000:1B:00.0", as NVML writes it
    name: str = ""


def _error_names(lib) -> dict[type, str]:
    """The library's exception classes → our ``why`` (classes missing from an old
    nvidia-ml-py are skipped)."""
    table = {"GpuIsLost": "lost", "NotSupported": "not_supported",
             "FunctionNotFound": "not_supported", "NoPermission": "no_permission",
             "Timeout": "timeout"}
    return {getattr(lib, "NVMLError_" + name): why for name, why in table.items()
            if hasattr(lib, "NVMLError_" + name)}


def reason_of(lib, e: BaseException) -> str:
    """A short reason for an error of nvmlInit / device enumeration."""
    name = type(e).__name__
    return name.removeprefix("NVMLError_") if name.startswith("NVMLError_") else f"{name}: {e}"[:120]


def handle_key(handle: Any) -> int | None:
    """The address a device handle points at: the same GPU's handle from
    nvmlDeviceGetHandleByIndex and from an event's ``device`` compare equal by it."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return None


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Worker:
    """One thread that runs submitted calls in order."""

    def __init__(self, name: str):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fn, args, box, done = job
            try:
                box.append((True, fn(*args)))
            except BaseException as e:      # handed to the caller, whatever it is
                box.append((False, e))
            done.set()

    def submit(self, fn: Callable, args: tuple) -> tuple[list, threading.Event]:
        box: list = []
        done = threading.Event()
        self.jobs.put((fn, args, box, done))
        return box, done

    def stop(self) -> None:
        self.jobs.put(None)


class Nvml:
    """An initialised NVML. ``lane`` names a worker: the Xid event wait has its own, so a
    wait of a second never delays the sampler's calls."""

    def __init__(self, lib, timeout_s: float = CALL_TIMEOUT_S):
        self.lib = lib
        self.timeout_s = timeout_s
        self.errors = _error_names(lib)
        self.off_checks: set[str] = set()
        self.stuck = 0
        self.closed = False
        self._workers: dict[str, _Worker] = {}
        self._said: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, timeout_s: float = CALL_TIMEOUT_S, lib=None) -> "Nvml":
        """NVML initialised, or ``Off(reason)``."""
        if lib is None:
            try:
                import pynvml as lib      # lazy: a node without it never pays for it
            except ImportError as e:
                raise Off(f"no pynvml module ({e.name or e})") from None
        nvml = cls(lib, timeout_s)
        try:
            nvml.call("init", "nvmlInit")
            count = nvml.call("device_count", "nvmlDeviceGetCount")
        except Failed as e:
            nvml.close(shutdown=e.why != "hung")
            raise Off(e.detail or e.why) from None
        if not count:
            nvml.close()
            raise Off("no GPU")
        return nvml

    # -- calls -------------------------------------------------------------------
    def call(self, check: str, fn_name: str, *args, lane: str = "main",
             timeout_s: float | None = None) -> Any:
        """``pynvml.<fn_name>(*args)``, bounded; ``Failed`` when it gives no value.
        ``check`` names the check for the once-only lines (a hung or forbidden check is
        off for every GPU: the cause is the driver's, not one device's)."""
        if self.closed:
            raise Failed("off", check)
        if check in self.off_checks:
            raise Failed("off", check)
        fn = getattr(self.lib, fn_name, None)
        if fn is None:                      # an nvidia-ml-py too old for it
            raise Failed("not_supported", check, f"{fn_name} missing")
        worker = self._worker(lane)
        box, done = worker.submit(fn, args)
        if not done.wait(self.timeout_s if timeout_s is None else timeout_s):
            self._hung(lane, worker, check)
            raise Failed("hung", check)
        ok, value = box[0]
        if ok:
            return value
        why = self._why(value)
        if why == "no_permission":
            self.off_checks.add(check)
            self.say_once(check, "no_permission", "gpu_check_off", check=check, reason="no_permission")
        raise Failed(why, check, reason_of(self.lib, value))

    def _why(self, e: BaseException) -> str:
        for cls, why in self.errors.items():
            if isinstance(e, cls):
                return why
        return "error"

    def _worker(self, lane: str) -> _Worker:
        with self._lock:
            w = self._workers.get(lane)
            if w is None:
                w = self._workers[lane] = _Worker(f"nvml-{lane}")
            return w

    def _hung(self, lane: str, worker: _Worker, check: str) -> None:
        with self._lock:
            if self._workers.get(lane) is worker:
                del self._workers[lane]     # stuck in C: left behind, a fresh one next time
                worker.stop()               # (ends it if the call ever returns)
            self.stuck += 1
            self.off_checks.add(check)
            give_up = self.stuck >= MAX_STUCK
        self.say_once(check, "hung", "gpu_check_off", check=check, reason="hung",
                      timeout_s=self.timeout_s)
        if give_up and not self.closed:
            self.closed = True
            log.warn("gpu_checks_off", reason=f"nvml_hung ({self.stuck} calls never returned)")

    def say_once(self, check: str, why: str, event: str, /, **fields: object) -> None:
        key = (check, why)
        if key not in self._said:
            self._said.add(key)
            log.warn(event, **fields)

    # -- common reads ------------------------------------------------------------
    def devices(self) -> list[Device]:
        """Every GPU NVML sees, with what names it (uuid, PCI bus id)."""
        out = []
        for i in range(self.call("device_count", "nvmlDeviceGetCount")):
            h = self.call("handle", "nvmlDeviceGetHandleByIndex", i)
            uuid = pci = name = ""
            try:
                uuid = text(self.call("uuid", "nvmlDeviceGetUUID", h))
            except Failed:
                pass
            try:
                info = self.call("pci", "nvmlDeviceGetPciInfo", h)
                pci = text(getattr(info, "busId", b"") or getattr(info, "busIdLegacy", b""))
            except Failed:
                pass
            try:
                name = text(self.call("name", "nvmlDeviceGetName", h))
            except Failed:
                pass
            out.append(Device(index=i, handle=h, uuid=uuid, pci_bus_id=pci, name=name))
        return out

    def close(self, shutdown: bool = True) -> None:
        if shutdown and not self.closed:
            try:
                self.call("shutdown", "nvmlShutdown", timeout_s=1.0)
            except Failed:
                pass
        self.closed = True
        with self._lock:
            for w in self._workers.values():
                w.stop()
            self._workers.clear()
