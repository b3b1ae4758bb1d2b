"""Bad hardware leaves the job: on a relaunch, which nodes stay out and who takes their
place (pure).

A bad GPU or link fails again: relaunching on it spends the restart budget for nothing
(the relaunch waits in its rendezvous or dies on the same node, and the crash-loop guard
ends the job). So when a job relaunches, every node of it that is suspect
(``core.suspects``: a GPU verdict, a repeated culprit, a persistent straggler where the
job asked for it) leaves it, and

- a spare (``watchdog-d run --spare``, a standby wrapper of the job) takes its place,
  first come first served, with the node's --node-rank for a static rendezvous: the job
  relaunches at full size;
- else an elastic job (``--nnodes MIN:MAX``) relaunches smaller while it keeps MIN nodes;
- else the job cannot relaunch: ``gave_up``, saying which node had no spare (not a crash
  loop on the bad node).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spare:
    """A standby wrapper of a job, as the coordinator last heard of it."""

    node: str
    since: float                       # first heard (coordinator clock): first come, first served
    seen_at: float                     # last heard
    shape: str = ""                    # its command's digest (the job's must match)

    def runs(self, shape: str) -> bool:
        """Does it run the job whose command's digest is ``shape`` (either unknown: yes)?"""
        return not shape or not self.shape or self.shape == shape


@dataclass(frozen=True)
class Plan:
    leaving: tuple[tuple[str, str], ...] = ()         # (node, why) that do not relaunch
    taking: tuple[tuple[str, str, int], ...] = ()     # (spare, the node it replaces, node rank)
    gave_up: str = ""                                 # why the job cannot relaunch ("": it can)

    def says(self) -> str:
        """One line for the verdict's cause."""
        if not self.leaving:
            return ""
        parts = [f"{node} leaves the job (suspect: {why})" for node, why in self.leaving]
        parts += [f"spare {spare} takes the place of {node}"
                  + (f" (node rank {rank})" if rank >= 0 else "") for spare, node, rank in self.taking]
        if self.gave_up:
            parts.append(f"gave up: {self.gave_up}")
        elif len(self.taking) < len(self.leaving):
            parts.append("the job relaunches with fewer nodes (elastic)")
        return "; ".join(parts)


def plan(nodes: dict[str, int], suspect: dict[str, str], spares: list[Spare],
         nnodes_min: int, nnodes_max: int) -> Plan:
    """``nodes``: the job's nodes and their --node-rank (-1: none); ``suspect``: node ->
    why, for the job's suspect nodes; ``spares``: its usable spares (alive, the job's
    command), in the order they came."""
    leaving = tuple(sorted((n, suspect[n]) for n in nodes if n in suspect))
    if not leaving:
        return Plan()
    free = [s.node for s in sorted(spares, key=lambda s: (s.since, s.node)) if s.node not in nodes]
    taking = tuple((free.pop(0), node, nodes[node]) for node, _ in leaving if free)
    short = [node for node, _ in leaving][len(taking):]
    return Plan(leaving, taking, _short(short, len(nodes) - len(short), nnodes_min, nnodes_max))


def _short(short: list[str], left: int, nnodes_min: int, nnodes_max: int) -> str:
    """Why the job cannot go on without the ``short`` nodes (no spare for them): ""
    when it can (elastic, still at MIN nodes or more)."""
    if not short:
        return ""
    who = ", ".join(short)
    if left <= 0:
        return f"no spare for {who}, and no node of the job is left"
    if 0 < nnodes_min < nnodes_max:
        if left >= nnodes_min:
            return ""
        return f"no spare for {who}: --nnodes {nnodes_min}:{nnodes_max} needs {nnodes_min}, {left} left"
    if nnodes_max > 0:
        return f"no spare for {who} (fixed --nnodes {nnodes_max})"
    return f"no spare for {who} (not an elastic torchrun job)"


def usable(spares: dict[str, Spare], shape: str, now: float, timeout_s: float) -> list[Spare]:
    """The spares that can take a place now: heard within ``timeout_s``, the job's command."""
    return [s for s in spares.values() if now - s.seen_at <= timeout_s and s.runs(shape)]


def reassign(taking: tuple[tuple[str, str, int], ...], alive: list[Spare],
             nodes_left: int, nnodes_min: int, nnodes_max: int) -> tuple[tuple[tuple[str, str, int], ...], str]:
    """At the relaunch: the planned spares that are still there, others for those gone;
    (the places taken, why the job cannot relaunch after all ("": it can)). ``nodes_left``:
    the job's nodes that relaunch, spares aside."""
    there = {s.node for s in alive}
    keep = [t for t in taking if t[0] in there]
    free = [s.node for s in sorted(alive, key=lambda s: (s.since, s.node))
            if s.node not in {t[0] for t in keep}]
    out, short = list(keep), []
    for spare, node, rank in taking:
        if spare in there:
            continue
        if free:
            out.append((free.pop(0), node, rank))
        else:
            short.append(node)
    why = _short(short, nodes_left + len(out), nnodes_min, nnodes_max)
    if why:
        why += " (a spare left while the job was down)"
    return tuple(out), why
