"""GPU telemetry and Xid events through NVML (``nvml.Nvml``): what each GPU reads now.

``sample`` reads every GPU once: a metric the GPU does not support is absent (-1) and
said once; a GPU that answers GpuIsLost is ``lost``. ``XidWatcher`` waits for Xid events
on its own thread and worker (a wait of a second never delays sampling); NVML's Timeout
is the normal "nothing happened".
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable

from .. import log
from ..core.model import GpuState
from .nvml import Device, Failed, Nvml, handle_key

WAIT_MS = 1000


class GpuSampler:
    def __init__(self, nvml: Nvml):
        self.nvml = nvml
        self.devices: list[Device] = nvml.devices()
        self.lost: set[int] = set()
        self.procs: dict[int, frozenset[int]] = {}       # gpu index -> pids on it (last read)

    def _read(self, dev: Device, check: str, fn: str, *args):
        """A value, or None (absent); a lost GPU is remembered."""
        if dev.index in self.lost:
            return None
        try:
            return self.nvml.call(check, fn, dev.handle, *args)
        except Failed as e:
            if e.why == "lost":
                self.lost.add(dev.index)
                log.warn("gpu_lost", gpu=dev.index, uuid=dev.uuid, pci=dev.pci_bus_id, check=check)
            elif e.why == "not_supported":
                self.nvml.say_once(f"{check}/{dev.index}", "not_supported", "gpu_metric_absent",
                                   gpu=dev.index, check=check)
            elif e.why == "error":
                self.nvml.say_once(f"{check}/{dev.index}", e.detail, "gpu_read_error",
                                   gpu=dev.index, check=check, error=e.detail)
            return None

    def sample(self) -> list[GpuState]:
        lib = self.nvml.lib
        out = []
        for d in self.devices:
            s = GpuState(index=d.index, uuid=d.uuid, name=d.name, pci_bus_id=d.pci_bus_id)
            if (u := self._read(d, "utilization", "nvmlDeviceGetUtilizationRates")) is not None:
                s = replace(s, util_ratio=u.gpu / 100.0)
            if (m := self._read(d, "memory", "nvmlDeviceGetMemoryInfo")) is not None:
                s = replace(s, mem_used_bytes=int(m.used), mem_total_bytes=int(m.total))
            if (t := self._read(d, "temperature", "nvmlDeviceGetTemperature", lib.NVML_TEMPERATURE_GPU)) is not None:
                s = replace(s, temperature_c=float(t))
            if (p := self._read(d, "power", "nvmlDeviceGetPowerUsage")) is not None:
                s = replace(s, power_w=p / 1000.0)
            if (c := self._read(d, "clocks_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons")) is not None:
                s = replace(s, clocks_event_reasons=int(c))
            if (c := self._read(d, "sm_clock", "nvmlDeviceGetClockInfo", lib.NVML_CLOCK_SM)) is not None:
                s = replace(s, sm_clock_mhz=int(c))
            if (c := self._read(d, "sm_clock_max", "nvmlDeviceGetMaxClockInfo", lib.NVML_CLOCK_SM)) is not None:
                s = replace(s, sm_clock_max_mhz=int(c))
            if (e := self._read(d, "ecc", "nvmlDeviceGetTotalEccErrors",
                                lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, lib.NVML_VOLATILE_ECC)) is not None:
                s = replace(s, ecc_uncorrected=int(e))
            if (r := self._read(d, "remapped_rows", "nvmlDeviceGetRemappedRows")) is not None:
                s = replace(s, remapped_pending=int(r[2]), remap_failure=bool(r[3]))
            s = replace(s, recovery_action=self._recovery_action(d))
            procs = self._read(d, "processes", "nvmlDeviceGetComputeRunningProcesses")
            if procs is not None:
                self.procs[d.index] = frozenset(int(p.pid) for p in procs)
            out.append(replace(s, lost=d.index in self.lost))
        return out

    def _recovery_action(self, d: Device) -> int:
        """NVML_FI_DEV_GET_GPU_RECOVERY_ACTION where the driver has it (R550+), else -1."""
        fid = getattr(self.nvml.lib, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
        if fid is None:
            return -1
        values = self._read(d, "recovery_action", "nvmlDeviceGetFieldValues", [fid])
        if not values or values[0].nvmlReturn != 0:
            return -1
        return int(values[0].value.uiVal)


class XidWatcher:
    """Calls ``on_xid(gpu index, xid)`` for each Xid event, until stopped."""

    def __init__(self, nvml: Nvml, devices: list[Device], on_xid: Callable[[int, int], None]):
        self.nvml, self.devices, self.on_xid = nvml, devices, on_xid
        self._stop = threading.Event()
        self._by_handle = {handle_key(d.handle): d.index for d in devices}
        self.thread = threading.Thread(target=self._run, name="agent-xid", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        n = self.nvml
        try:
            es = n.call("xid_events", "nvmlEventSetCreate", lane="events")
        except Failed as e:
            n.say_once("xid_events", e.why, "gpu_check_off", check="xid_events", reason=e.detail or e.why)
            return
        registered = 0
        for d in self.devices:
            try:
                n.call("xid_events", "nvmlDeviceRegisterEvents", d.handle,
                       n.lib.nvmlEventTypeXidCriticalError, es, lane="events")
                registered += 1
            except Failed as e:
                n.say_once(f"xid_events/{d.index}", e.why, "gpu_check_off", check="xid_events",
                           gpu=d.index, reason=e.detail or e.why)
        while registered and not self._stop.is_set():
            try:
                data = n.call("xid_wait", "nvmlEventSetWait_v2", es, WAIT_MS, lane="events",
                              timeout_s=WAIT_MS / 1000.0 + n.timeout_s)
            except Failed as e:
                if e.why == "timeout":
                    continue                       # nothing happened
                if e.why in ("hung", "off", "no_permission"):
                    return                         # (said by Nvml)
                n.say_once("xid_wait", e.why, "gpu_xid_wait_error", error=e.detail or e.why)
                self._stop.wait(1.0)
                continue
            gpu = self._by_handle.get(handle_key(data.device), -1)
            self.on_xid(gpu, int(data.eventData))
