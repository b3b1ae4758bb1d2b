"""The node itself: Python, /dev/shm, resource limits, free disk, the clock.

Each ``judge_*`` is pure (values in, a Check out); the probes around them do the I/O.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from pathlib import Path

from .check import ERROR, OK, WARN, Check

GiB = 1 << 30
MiB = 1 << 20
SHM_MIN = 1 * GiB           # NCCL's shared-memory transport and DataLoader workers live here
NOFILE_MIN = 65536          # DataLoader workers pass tensors as fds; NCCL opens sockets per peer
DISK_MIN = 10 * GiB         # a checkpoint of a small model; less than this and a save may fail
DISK_MIN_SHARE = 0.05
DISK_FULL = 100 * MiB       # "full": not even the rank logs fit


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def python() -> list[Check]:
    v = sys.version_info
    return [Check("python", OK, f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})")]


# -- /dev/shm -----------------------------------------------------------------------
def judge_shm(total: int | None, free: int | None) -> Check:
    if total is None or free is None:
        return Check("shm", WARN, "/dev/shm is missing",
                     "mount a tmpfs at /dev/shm (NCCL and DataLoader workers need it)")
    found = f"/dev/shm {_gib(total)}, {_gib(free)} free"
    if total < SHM_MIN:
        return Check("shm", WARN, found + f" (< {_gib(SHM_MIN)})",
                     "NCCL's shared-memory transport and DataLoader workers need more: "
                     "docker run --shm-size=16g (Docker's default is 64 MiB), or a larger "
                     "emptyDir medium: Memory on Kubernetes")
    if free < total * 0.1:
        return Check("shm", WARN, found + " (almost full)",
                     "remove what earlier jobs left in /dev/shm (ls -la /dev/shm)")
    return Check("shm", OK, found)


def shm(path: str = "/dev/shm") -> list[Check]:
    try:
        st = os.statvfs(path)
    except OSError:
        return [judge_shm(None, None)]
    return [judge_shm(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)]


# -- limits ------------------------------------------------------------------------
def _limit(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)


def judge_nofile(soft: int, hard: int) -> Check:
    found = f"open files: soft {_limit(soft)}, hard {_limit(hard)}"
    if soft == resource.RLIM_INFINITY or soft >= NOFILE_MIN:
        return Check("nofile", OK, found)
    why = "DataLoader workers and large jobs run out of descriptors ('Too many open files'): "
    if hard == resource.RLIM_INFINITY or hard > soft:
        fix = f"ulimit -n {NOFILE_MIN if hard == resource.RLIM_INFINITY else min(hard, NOFILE_MIN)} " \
              f"before the launch"
    else:
        fix = ("raise the hard limit (root): nofile in /etc/security/limits.conf, LimitNOFILE= "
               "in a systemd unit, docker --ulimit nofile=65536")
    return Check("nofile", WARN, found + f" (< {NOFILE_MIN})", why + fix)


def judge_memlock(soft: int, rdma_devices: list[str]) -> Check:
    if soft == resource.RLIM_INFINITY:
        return Check("memlock", OK, "locked memory: unlimited")
    found = f"locked memory: {soft // 1024} KiB"
    if not rdma_devices:
        return Check("memlock", OK, found + "; no RDMA device here, so it does not matter")
    return Check("memlock", WARN, found + f" with RDMA devices ({', '.join(rdma_devices[:4])})",
                 "NCCL over InfiniBand/RoCE registers (locks) memory: ulimit -l unlimited, "
                 "memlock unlimited in /etc/security/limits.conf (LimitMEMLOCK=infinity, "
                 "docker --ulimit memlock=-1)")


def limits(rdma_dir: str = "/sys/class/infiniband") -> list[Check]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lsoft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        rdma = sorted(os.listdir(rdma_dir))
    except OSError:
        rdma = []
    return [judge_nofile(soft, hard), judge_memlock(lsoft, rdma)]


# -- disks -------------------------------------------------------------------------
def judge_disk(what: str, path: str, total: int, free: int) -> Check:
    name = f"disk: {what}"
    found = f"{path}: {_gib(free)} free of {_gib(total)}"
    if free < DISK_FULL:
        return Check(name, ERROR, found + " (full)", f"free space on the file system of {path}")
    if free < DISK_MIN or (total and free < total * DISK_MIN_SHARE):
        return Check(name, WARN, found + f" (< {_gib(DISK_MIN)} or < {DISK_MIN_SHARE:.0%})",
                     f"free space on the file system of {path} before a checkpoint save fails")
    return Check(name, OK, found)


def disk(what: str, path: str) -> list[Check]:
    """A directory the job will write: it need not exist yet (it is created), but its
    nearest existing parent must be a writable directory with space."""
    name = f"disk: {what}"
    p = Path(path).absolute()
    existing = next((q for q in (p, *p.parents) if q.exists()), Path("/"))
    if not existing.is_dir():
        return [Check(name, ERROR, f"{existing} is not a directory",
                      f"point the {what} at a directory")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Check(name, ERROR, f"{existing} is not writable by uid {os.getuid()}",
                      f"make the {what} writable for the job's user, or choose another")]
    st = os.statvfs(existing)    # may hang on a dead NFS mount: the runner bounds it
    return [judge_disk(what, str(p), st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)]


# -- clock ---------------------------------------------------------------------------
TIME_ERROR = 5          # adjtimex(2): the clock is not synchronized (STA_UNSYNC)


def judge_clock(state: int | None) -> Check:
    # watchdog-d itself needs no agreement on wall time (ages are measured by each
    # observer); logs read side by side and TLS certificates do
    if state is None:
        return Check("clock", OK, "synchronization unknown (adjtimex unavailable)")
    if state == TIME_ERROR:
        return Check("clock", WARN, "the kernel says the clock is not synchronized (adjtimex)",
                     "run an NTP client (chrony, systemd-timesyncd): the nodes' logs will not "
                     "line up and TLS certificates may look not yet valid")
    return Check("clock", OK, "synchronized (adjtimex)")


def clock() -> list[Check]:
    """adjtimex with modes 0 only reads: whatever NTP client disciplines the clock
    (chrony, ntpd, timesyncd) clears STA_UNSYNC, so this is the kernel's own answer."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)     # struct timex is ~208 bytes; modes = 0
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return [judge_clock(None)]
    return [judge_clock(state if state >= 0 else None)]
