"""A torchrun launch's shape, read from its arguments: how many nodes it takes, which one
this is, and what every node of it (and a spare) must run.

- ``--nnodes MIN:MAX`` (elastic) can go on without a node; ``--nnodes N`` needs N;
- ``--node-rank R`` with the static rendezvous (no ``--rdzv-backend``, or ``static``):
  the node's place, which a spare that replaces it must take; torchrun's default is 0;
  a dynamic rendezvous (c10d, etcd) hands out places itself (-1);
- the digest: the command with its per-node arguments left out, hashed. Every node of
  the job and every spare brings the same one; a spare with another is refused.

Not torchrun: nothing known (0 nodes, -1, the digest of the command as it is).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from .launch import _torchrun_args_end, _torchrun_at

# per node: left out of the digest; a spare's own values are not the job's
_PER_NODE = re.compile(r"--(node[-_]rank|local[-_]addr)(=.*)?")
_NODE_RANK = re.compile(r"--node[-_]rank(=(.*))?")


@dataclass(frozen=True)
class Shape:
    nnodes_min: int = 0          # 0: unknown (not torchrun)
    nnodes_max: int = 0
    node_rank: int = -1          # -1: none (a dynamic rendezvous, or not torchrun)
    digest: str = ""


def _value(args: list[str], i: int) -> str:
    a = args[i]
    if "=" in a:
        return a.split("=", 1)[1]
    return args[i + 1] if i + 1 < len(args) else ""


def of(command: list[str]) -> Shape:
    at = _torchrun_at(command)
    if at is None:
        return Shape(digest=_digest(command))
    args = command[at:_torchrun_args_end(command, at)]
    nnodes, rank, static = "1:1", None, True
    for i, a in enumerate(args):
        name = a.split("=", 1)[0]
        if name == "--nnodes":
            nnodes = _value(args, i)
        elif _NODE_RANK.fullmatch(a):
            rank = _value(args, i)
        elif name in ("--rdzv-backend", "--rdzv_backend"):
            static = _value(args, i) == "static"
        elif a == "--standalone":
            static = False
    lo, _, hi = nnodes.partition(":")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        low = high = 0
    if not 0 < low <= high:
        low = high = 0
    node_rank = -1
    if static:
        node_rank = int(rank) if rank is not None and rank.isdigit() else 0
    return Shape(low, high, node_rank, _digest(command))


def _digest(command: list[str]) -> str:
    at = _torchrun_at(command)
    kept, skip = [], False
    end = _torchrun_args_end(command, at) if at is not None else 0
    for i, a in enumerate(command):
        if skip:
            skip = False
            continue
        if i == 0:
            a = os.path.basename(a)          # (the same torchrun, wherever its venv lies)
        elif at is not None and at <= i < end and _PER_NODE.fullmatch(a):
            skip = "=" not in a
            continue
        kept.append(a)
    return hashlib.sha256("\0".join(kept).encode()).hexdigest()[:32]


def with_node_rank(command: list[str], rank: int) -> list[str]:
    """``command`` with torchrun's --node-rank set to ``rank`` (a spare taking a place)."""
    at = _torchrun_at(command)
    if at is None or rank < 0:
        return list(command)
    out, end = list(command), _torchrun_args_end(command, at)
    for i in range(at, end):
        m = _NODE_RANK.fullmatch(out[i])
        if m and m.group(1):
            out[i] = f"--node-rank={rank}"
            return out
        if m and i + 1 < end:
            out[i + 1] = str(rank)
            return out
    out.insert(at, f"--node-rank={rank}")
    return out
