"""Ranks in another PID namespace (a training pod without hostPID, beside an agent with
it): a rank records its own PID, the one its namespace gives it; the agent reads /proc
by the node's PID. The kernel says both: ``NSpid:`` in /proc/PID/status lists a
process's PID in each namespace it is in, the node's first, its own last; and
/proc/PID/ns/pid names its namespace. The wrapper's namespace comes from the socket
(SO_PEERCRED gives the node's PID of the peer)."""
from __future__ import annotations

import os


def namespace_of(pid: int | str) -> int:
    """The inode of ``pid``'s PID namespace (0: cannot tell)."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return 0


OWN = namespace_of("self")


def nspid(pid: int | str) -> list[int]:
    """``pid``'s PIDs, the node's first ([] when gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


class Translator:
    """Node PIDs of the processes of one PID namespace, by their own PIDs."""

    def __init__(self, namespace: int):
        self.namespace = namespace
        self._known: dict[int, int] = {}

    def host_pid(self, pid: int) -> int:
        """The node's PID of ``pid`` of this namespace; 0 when there is none (yet)."""
        if self.namespace in (0, OWN) or pid <= 0:
            return pid
        host = self._known.get(pid)
        if host is not None and self._still(host, pid):
            return host
        self._known.pop(pid, None)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            ids = nspid(entry.name)
            if len(ids) > 1 and ids[-1] == pid and namespace_of(entry.name) == self.namespace:
                if len(self._known) > 4096:
                    self._known.clear()
                self._known[pid] = ids[0]
                return ids[0]
        return 0

    def _still(self, host: int, pid: int) -> bool:
        ids = nspid(host)
        return bool(ids) and ids[-1] == pid and namespace_of(host) == self.namespace
