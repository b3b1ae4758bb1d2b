"""Hardware and kernel evidence about ranks, as findings (the seam of log findings).

What NVML (``gpus``) and the kernel log (``kmsg``) say becomes a ``LogFinding`` on the
ranks it concerns, merged into their reports after the log findings (``with_hardware``):

- a critical Xid on a GPU (NVML event or NVRM kernel line; the same Xid on the same GPU
  within ``DEDUPE_S`` is one) → fatal ``gpu_xid`` on the ranks that were using that GPU
  when it happened (a relaunch's ranks are not blamed for an old event);
- a GPU lost, a row-remap failure, uncorrected ECC errors with a reset/reboot recovery
  action → fatal (``gpu_lost``, ``gpu_remap_failure``, ``gpu_ecc``) on every rank on
  that GPU while the condition holds; a pending remap, other uncorrected ECC → warning;
- the OOM killer naming a rank's pid → fatal ``host_oom`` on that rank.

A rank's GPUs: NVML's compute process lists, else its ``CUDA_VISIBLE_DEVICES`` and local
rank (``/proc/PID/environ``; CUDA's order taken to be NVML's, PCI bus order). Non-critical
Xids are logged and counted in the GPU's state, never a finding.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from .. import log
from ..core import xid as xids
from ..core.model import GpuState, LogFinding
from . import kmsg as km
from .gpus import GpuSampler, XidWatcher
from .nvml import Nvml, Off

DEDUPE_S = 30.0
KEEP_PIDS = 4096
RESET_ACTIONS = frozenset({1, 2, 4, 6, 7})       # gpu reset, node reboot, drain+reset, bus reset, reboot


@dataclass
class _Event:
    seen: float
    gpu: int                 # -1: unknown
    pid: int                 # 0: unknown
    finding: LogFinding


def _finding(kind: str, line: str, explanation: str, remedy: str, severity: str = "fatal",
             **fields: object) -> LogFinding:
    return LogFinding(kind=kind, severity=severity, role="cause", line=line,
                      fields=tuple(sorted((k, str(v)) for k, v in fields.items())),
                      explanation=explanation, remedy=remedy)


def xid_finding(gpu: int, xid: int, line: str, source: str) -> LogFinding:
    meaning, remedy = xids.meaning(xid)
    return _finding("gpu_xid", line, f"Xid {xid} on GPU {gpu}: {meaning}" if gpu >= 0 else
                    f"Xid {xid}: {meaning}", remedy, xid=xid, gpu=gpu, source=source)


def oom_finding(e: km.OomKill) -> LogFinding:
    return _finding("host_oom", e.line, f"the kernel's OOM killer killed this rank "
                    f"(pid {e.pid}, {e.name}): the host ran out of memory",
                    "use less host memory per rank (fewer DataLoader workers, smaller prefetch "
                    "or pinned buffers, no whole-dataset loads) or run fewer ranks per node",
                    pid=e.pid)


def condition_findings(g: GpuState, ecc_base: int) -> list[LogFinding]:
    """The GPU's standing conditions as findings (pure)."""
    where = f"GPU {g.index} ({g.uuid or g.pci_bus_id})"
    out = []
    if g.lost:
        out.append(_finding("gpu_lost", f"{where}: NVML says the GPU is lost",
                            f"{where} is lost (fallen off the bus or not answering the driver)",
                            xids.meaning(79)[1], gpu=g.index))
    if g.remap_failure:
        out.append(_finding("gpu_remap_failure", f"{where}: row remapping failed",
                            f"{where} could not remap a failing memory row", xids.meaning(64)[1],
                            gpu=g.index))
    elif g.remapped_pending > 0:
        out.append(_finding("gpu_remap_pending", f"{where}: {g.remapped_pending} remapped row(s) pending",
                            f"{where} has memory rows waiting to be remapped",
                            "reset the GPU when the job ends", severity="warning", gpu=g.index))
    if g.ecc_uncorrected > max(ecc_base, 0) or (g.ecc_uncorrected > 0 and g.recovery_action in RESET_ACTIONS):
        fatal = g.recovery_action in RESET_ACTIONS
        action = xids.RECOVERY_ACTIONS.get(g.recovery_action, "unknown")
        out.append(_finding("gpu_ecc", f"{where}: {g.ecc_uncorrected} uncorrected ECC error(s), "
                            f"recovery action {action}",
                            f"{where} had uncorrected memory errors",
                            f"the driver asks for {action}: do it before reusing the GPU" if fatal
                            else "watch it; reset the GPU when the job ends",
                            severity="fatal" if fatal else "warning", gpu=g.index))
    return out


class Hardware:
    """Owns NVML (or says once why not) and the kernel log; ``with_hardware`` merges."""

    def __init__(self, gpu_poll_interval: float, kmsg_path: str, gpu_checks: bool = True,
                 nvml: Nvml | None = None, clock=time.monotonic):
        self.interval = gpu_poll_interval
        self.clock = clock
        self.lock = threading.Lock()
        self.gpus: tuple[GpuState, ...] = ()
        self.sampler: GpuSampler | None = None
        self.watcher: XidWatcher | None = None
        self.events: list[_Event] = []
        self.oom: dict[int, tuple[float, LogFinding]] = {}
        self.first_seen: dict[int, float] = {}
        self.env_gpus: dict[int, frozenset[int]] = {}
        self.ecc_base: dict[int, int] = {}
        self.xid_seen: dict[tuple[int, int], float] = {}
        self.xid_counts: dict[int, tuple[int, int]] = {}   # gpu -> (last xid, count)
        self._stop = threading.Event()
        self._said_environ = False
        self.nvml = nvml
        self.gpu_checks = gpu_checks      # NVML is opened by start(): a daemon that cannot
        self._by_pci: dict = {}           # start for another reason says nothing about GPUs
        if nvml is not None:
            self._attach(nvml)
        self.kmsg = km.KmsgReader(kmsg_path) if kmsg_path else None

    def _attach(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self.sampler = GpuSampler(nvml)
        self.watcher = XidWatcher(nvml, self.sampler.devices, self.on_xid)
        self._by_pci = {km.pci_key(d.pci_bus_id): d.index for d in self.sampler.devices}

    # -- threads -----------------------------------------------------------------------
    def start(self) -> None:
        if not self.gpu_checks:
            log.log("gpu_checks_off", reason="gpu_checks=false")
        elif self.nvml is None:
            try:
                self._attach(Nvml.open())
            except Off as e:
                log.log("gpu_checks_off", reason=str(e))
        if self.sampler is None:
            return
        self.sample()
        self.watcher.start()
        threading.Thread(target=self._sample_loop, name="agent-gpus", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.watcher:
            self.watcher.stop()
        if self.kmsg:
            self.kmsg.close()

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.nvml is None or self.nvml.closed:
                return
            try:
                self.sample()
            except Exception as e:          # a GPU read must never stop the watching
                log.error("gpu_sample_error", error=repr(e)[:200])

    def sample(self) -> None:
        states = self.sampler.sample()
        with self.lock:
            for g in states:
                self.ecc_base.setdefault(g.index, g.ecc_uncorrected)
            self.gpus = tuple(replace(g, last_xid=self.xid_counts.get(g.index, (0, 0))[0],
                                      xid_count=self.xid_counts.get(g.index, (0, 0))[1])
                              for g in states)

    # -- events ------------------------------------------------------------------------
    def on_xid(self, gpu: int, xid: int, line: str = "", pid: int = 0, source: str = "nvml") -> None:
        now = self.clock()
        with self.lock:
            if gpu >= 0:
                last = self.xid_seen.get((gpu, xid))
                self.xid_seen[(gpu, xid)] = now
                if last is not None and now - last < DEDUPE_S:
                    return                               # NVML and the kernel said it both
                prev = self.xid_counts.get(gpu, (0, 0))
                self.xid_counts[gpu] = (xid, prev[1] + 1)
                self.gpus = tuple(replace(g, last_xid=xid, xid_count=prev[1] + 1)
                                  if g.index == gpu else g for g in self.gpus)
        critical = xids.is_critical(xid)
        log.warn("gpu_xid", gpu=gpu, xid=xid, critical=critical, pid=pid or None, source=source)
        if critical:
            line = line or f"NVML: Xid {xid} on GPU {gpu}"
            with self.lock:
                self.events.append(_Event(now, gpu, pid, xid_finding(gpu, xid, line, source)))
                del self.events[:-256]

    def poll_kmsg(self) -> None:
        if self.kmsg is None:
            return
        for record in self.kmsg.read():
            e = km.parse(record)
            if isinstance(e, km.OomKill):
                log.warn("host_oom_kill", pid=e.pid, name=e.name)
                with self.lock:
                    self.oom[e.pid] = (self.clock(), oom_finding(e))
                    if len(self.oom) > KEEP_PIDS:
                        self.oom.pop(next(iter(self.oom)))
            elif isinstance(e, km.NvrmXid):
                self.on_xid(self._by_pci.get(e.pci, -1), e.xid, e.line, e.pid, "kmsg")

    # -- merging -------------------------------------------------------------------------
    def rank_gpus(self, pid: int, local_rank: int) -> frozenset[int]:
        if self.sampler is not None:
            on = frozenset(i for i, pids in self.sampler.procs.items() if pid in pids)
            if on:
                return on
        if pid not in self.env_gpus:
            self.env_gpus[pid] = self._from_environ(pid, local_rank)
        return self.env_gpus[pid]

    def _from_environ(self, pid: int, local_rank: int) -> frozenset[int]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except PermissionError:
            if not self._said_environ:
                self._said_environ = True
                log.warn("gpu_rank_map_off", source="environ", reason="no_permission", pid=pid)
            return frozenset()
        except OSError:
            return frozenset()
        devices = self.sampler.devices if self.sampler else []
        return frozenset(gpus_of_env(env.get(b"CUDA_VISIBLE_DEVICES"), env.get(b"LOCAL_RANK"),
                                     local_rank, {d.uuid: d.index for d in devices}))

    def with_hardware(self, ranks: tuple, now: float | None = None) -> tuple:
        """The rank reports with their hardware findings added (after the log findings)."""
        self.poll_kmsg()
        now = self.clock() if now is None else now
        out = []
        with self.lock:
            gpus, events, oom = self.gpus, list(self.events), dict(self.oom)
        for r in ranks:
            first = self.first_seen.setdefault(r.pid, now)
            found: list[LogFinding] = []
            if r.pid in oom:
                seen, f = oom[r.pid]
                found.append(replace(f, age_s=max(0.0, now - seen)))
            on = self.rank_gpus(r.pid, r.local_rank) if (events or gpus) else frozenset()
            for e in events:
                if (e.gpu in on or (e.pid and e.pid == r.pid)) and first <= e.seen:
                    found.append(replace(e.finding, age_s=max(0.0, now - e.seen)))
            for g in gpus:
                if g.index in on:
                    found.extend(condition_findings(g, self.ecc_base.get(g.index, -1)))
            out.append(replace(r, findings=tuple(r.findings) + tuple(found)) if found else r)
        if len(self.first_seen) > KEEP_PIDS:
            for pid in list(self.first_seen)[:len(self.first_seen) - KEEP_PIDS]:
                self.first_seen.pop(pid)
                self.env_gpus.pop(pid, None)
        return tuple(out)


def gpus_of_env(cvd: bytes | None, env_local_rank: bytes | None, local_rank: int,
                uuids: dict[str, int]) -> set[int]:
    """The NVML index a rank uses, from CUDA_VISIBLE_DEVICES and its local rank (pure).
    Unknown (a MIG instance, a uuid NVML does not list, no local rank): empty."""
    if local_rank < 0:
        try:
            local_rank = int(env_local_rank or b"")
        except ValueError:
            return set()
    if cvd is None:
        return {local_rank}
    visible = [x.strip() for x in cvd.decode("ascii", "replace").split(",") if x.strip()]
    if not 0 <= local_rank < len(visible):
        return set()
    dev = visible[local_rank]
    if dev.isdigit():
        return {int(dev)}
    for uuid, index in uuids.items():
        if uuid and (uuid == dev or (dev.startswith("GPU-") and uuid.startswith(dev))):
            return {index}
    return set()
