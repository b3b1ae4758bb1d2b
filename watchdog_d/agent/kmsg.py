"""The kernel's log as evidence: the OOM killer naming a process, NVRM Xid lines.

``parse`` is pure (one message in, one event or None out). ``KmsgReader`` follows
``/dev/kmsg`` (or, in tests, a file appended to or a FIFO) from its end: old boot
messages are not news. Reads never block (O_NONBLOCK) and a pass reads at most
``MAX_RECORDS`` records, so a kernel flooding its log costs the observer a bounded slice
per pass; what does not fit waits for the next pass (``/dev/kmsg`` drops what it
overwrote meanwhile: EPIPE, then on from the oldest record it still holds).
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from .. import log

MAX_RECORDS = 2000           # per pass
MAX_LINE = 4096              # a kmsg record is at most ~1 KiB; a test file's line is cut here

# "Out of memory: Killed process 1234 (python) total-vm:..." (4.x-6.x; "Kill process" and
# "Memory cgroup out of memory: Killed process" in older / cgroup ones)
_OOM_KILLED = re.compile(r"(?:Out of memory|out of memory)[^:]*:\s*Kill(?:ed)? process (\d+) \(([^)]*)\)")
# "oom-kill:constraint=CONSTRAINT_NONE,...,task=python,pid=1234,uid=1000" (4.19+)
_OOM_KILL = re.compile(r"\boom-kill:.*?\btask=([^,]*),pid=(\d+)")
# "NVRM: Xid (PCI:0000:1b:00): 79, pid=1234, name=python, GPU has fallen off the bus."
# (older drivers: "NVRM: Xid (0000:01:00): 31, Ch 0000000b, ...")
_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})[^)]*\):\s*(\d+)(.*)")
_XID_PID = re.compile(r"\bpid=(\d+)")


@dataclass(frozen=True)
class OomKill:
    pid: int
    name: str
    line: str


@dataclass(frozen=True)
class NvrmXid:
    pci: tuple[int, int, int]     # (domain, bus, device) as the kernel names the GPU
    xid: int
    pid: int                      # 0: not named
    line: str


def pci_key(bus_id: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of "0000:1b:00", "00000000:1B:00.0" (NVML) or "PCI:0000:1b:00"."""
    m = re.match(r"(?:PCI:)?([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})", bus_id.strip())
    return (int(m[1], 16), int(m[2], 16), int(m[3], 16)) if m else None


def message_of(record: str) -> str:
    """The text of a /dev/kmsg record ("6,1234,5678,-;text"); a plain line as it is."""
    head, sep, text = record.partition(";")
    if sep and re.fullmatch(r"\d+,\d+,\d+,[^;]*", head):
        return text
    return record


def parse(record: str) -> OomKill | NvrmXid | None:
    text = message_of(record.rstrip("\n"))
    if "NVRM" in text:
        m = _XID.search(text)
        if m:
            pci = pci_key(m[1])
            pid = _XID_PID.search(m[3])
            if pci is not None:
                return NvrmXid(pci=pci, xid=int(m[2]), pid=int(pid[1]) if pid else 0, line=text)
        return None
    if "ill" in text and "process" in text:
        m = _OOM_KILLED.search(text)
        if m:
            return OomKill(pid=int(m[1]), name=m[2], line=text)
    if "oom-kill:" in text:
        m = _OOM_KILL.search(text)
        if m:
            return OomKill(pid=int(m[2]), name=m[1], line=text)
    return None


class KmsgReader:
    """Records appended to a kernel log source since it was opened; ``off`` says why not."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.off = ""
        self._partial = b""
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self._off(e.strerror or repr(e))
            return
        try:
            os.lseek(self.fd, 0, os.SEEK_END)        # /dev/kmsg: past the last record
        except OSError:
            pass                                      # a FIFO: only new lines anyway

    def _off(self, reason: str) -> None:
        self.off = reason
        log.warn("kmsg_off", path=self.path, reason=reason)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self) -> list[str]:
        """At most MAX_RECORDS new records (one kmsg record or one line each)."""
        out: list[str] = []
        while self.fd is not None and len(out) < MAX_RECORDS:
            try:
                chunk = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:            # overwritten before we read it: go on
                    continue
                if e.errno == errno.EINVAL:           # a record longer than our buffer: skip
                    continue
                self._off(e.strerror or repr(e))
                break
            if not chunk:                             # a file's end (or a FIFO without writer)
                break
            data = self._partial + chunk
            lines = data.split(b"\n")
            self._partial = lines.pop()[:MAX_LINE]
            out.extend(ln[:MAX_LINE].decode("utf-8", "replace") for ln in lines)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
