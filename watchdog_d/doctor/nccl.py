"""NCCL's environment: variables that are set and send NCCL down a slow or dead path.

NCCL_SOCKET_IFNAME's syntax (NCCL's environment variable docs): a comma-separated list
of interface name prefixes (``eth`` matches eth0, eth1); ``=`` before the list makes them
exact names; ``^`` before it (and before ``=``) excludes them instead. NCCL uses the
interfaces that match; none that match is a job that cannot bootstrap.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Mapping

from .check import ERROR, OK, WARN, Check

SLOW = {
    "NCCL_P2P_DISABLE": "GPU peer-to-peer (NVLink, PCIe) is off: intra-node traffic goes "
                        "through host memory, several times slower",
    "NCCL_IB_DISABLE": "InfiniBand/RoCE is off: inter-node traffic goes over TCP sockets",
    "NCCL_SHM_DISABLE": "the shared-memory transport is off",
}


@dataclass(frozen=True)
class IfSpec:
    """A parsed NCCL_SOCKET_IFNAME."""

    names: tuple[str, ...]
    exclude: bool = False
    exact: bool = False

    @classmethod
    def parse(cls, value: str) -> "IfSpec":
        v = value.strip()
        exclude = v.startswith("^")
        v = v[1:] if exclude else v
        exact = v.startswith("=")
        v = v[1:] if exact else v
        return cls(tuple(n.strip() for n in v.split(",") if n.strip()), exclude, exact)

    def _matches(self, iface: str) -> bool:
        return any(iface == n if self.exact else iface.startswith(n) for n in self.names)

    def selects(self, interfaces: list[str]) -> list[str]:
        """The interfaces NCCL may use."""
        return [i for i in interfaces if self._matches(i) != self.exclude]


def judge_ifname(value: str, interfaces: list[str]) -> Check:
    spec = IfSpec.parse(value)
    have = ", ".join(interfaces) or "none"
    chosen = spec.selects(interfaces)
    if not spec.names:
        return Check("NCCL_SOCKET_IFNAME", ERROR, f"NCCL_SOCKET_IFNAME={value!r} names nothing",
                     "unset it, or name this node's interface (e.g. =eth0)")
    if not chosen:
        what = "excludes every interface" if spec.exclude else "matches no interface"
        return Check("NCCL_SOCKET_IFNAME", ERROR,
                     f"NCCL_SOCKET_IFNAME={value} {what} of this host (it has: {have})",
                     "set it to this node's network interface (ip -br link), or unset it; "
                     "NCCL cannot bootstrap without one")
    return Check("NCCL_SOCKET_IFNAME", OK, f"NCCL_SOCKET_IFNAME={value} selects {', '.join(chosen)}")


def judge_env(env: Mapping[str, str], interfaces: list[str]) -> list[Check]:
    out: list[Check] = []
    for name, why in SLOW.items():
        if env.get(name, "").strip() not in ("", "0"):
            out.append(Check(name, WARN, f"{name}={env[name]}: {why}",
                             f"unset {name} unless it works around a known fault of this machine"))
    if env.get("NCCL_SOCKET_IFNAME", "").strip():
        out.append(judge_ifname(env["NCCL_SOCKET_IFNAME"], interfaces))
    if not out:
        out.append(Check("nccl env", OK, "no NCCL variable that disables a transport or names "
                                         "an interface"))
    return out


def interfaces() -> list[str]:
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def nccl_env(env: Mapping[str, str]) -> list[Check]:
    return judge_env(env, interfaces())
