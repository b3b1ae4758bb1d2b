"""Who is silent, and whether that silence says anything about them (pure).

A node whose heartbeats stopped is evidence against the node only while the
coordinator hears the others. Two things make nodes look silent with no node at fault:

- the coordinator's own trouble: its loop did not run (a paused VM, a stop signal,
  a long GC, overload) -- the shell notices its loop came late and says so with
  ``own_stall``;
- overload: reports wait in its sockets for its loop, some nodes' longer than others'
  -- the shell sees how long each waited and says ``overload``;
- a mass silence: more than half of the active nodes (at least three) quiet together.
  Nodes do not fail together by the hundred; the coordinator's link does.

Either is a ``coordinator_isolated`` episode: a warning, never a verdict on a node;
every silence clock restarts when it ends (``restart_at``), so a node is judged on
silence the coordinator could have heard.

Nodes are kept in the order of their latest report (a dict, re-inserted on each
report), so the quiet ones are at the front: counting them costs what they number.
"""
from __future__ import annotations

from dataclasses import dataclass

QUIET_S = 2.0        # a node this long without a report counts toward a mass silence
                     # (heartbeats every second; the lowest sane node_timeout is ~3 s)
MASS_SHARE = 0.5     # more than this share of the active nodes quiet: a mass silence
MASS_MIN = 3         # ... and at least this many (with fewer, a job's own rules suffice: a
                     #   job none of whose nodes reports is never torn down)
ACTIVE_S = 600.0     # a node silent this long has left the cluster: no longer counted
OWN_STALL_S = 1.0    # the coordinator's loop this late: it heard nothing meanwhile


@dataclass(frozen=True)
class Episode:
    """A change in the coordinator's own standing, for the shell to say and record."""

    began: bool              # True: isolated from now; False: the episode is over
    cause: str
    quiet: int = 0           # nodes quiet at the time
    active: int = 0          # nodes counted
    lasted_s: float = 0.0    # (an ended episode) how long it lasted


class Silence:
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}     # node -> its latest report (oldest first)
        self.restart_at = float("-inf")      # silence counts from no earlier than this
        self.isolated_since: float | None = None
        self.overloaded_since: float | None = None
        self.departed: list[str] = []        # forgotten by ``check``, not yet taken

    # -- input -------------------------------------------------------------------
    def heard(self, node: str, now: float) -> None:
        self.seen.pop(node, None)
        self.seen[node] = now

    def left(self, node: str) -> None:
        """The node said goodbye (its agent stopped): its silence means nothing."""
        self.seen.pop(node, None)

    def own_stall(self, began: float, ended: float) -> Episode:
        """The coordinator's loop did not run from ``began`` to ``ended``: whatever
        nodes said meanwhile waits in its sockets. Every silence clock restarts."""
        self.restart_at = max(self.restart_at, ended)
        return Episode(True, f"the coordinator's own loop stalled for {ended - began:.1f}s "
                             f"(paused, overloaded or starved of CPU); silence clocks restarted",
                       active=len(self.seen))

    def overload(self, now: float, late: bool) -> Episode | None:
        """``late``: Reports waited long for the coordinator's loop lately. While it is
        overloaded, some nodes' reports wait longer than others': silence alone proves
        nothing (``lost`` then warns of no agent and needs peers that *report* they
        stopped); the clocks restart when it keeps up again."""
        if late:
            if self.overloaded_since is None:
                self.overloaded_since = now
                return Episode(True, "the coordinator is overloaded (Reports wait for its "
                                     "loop): a silent node is lost only when its peers report "
                                     "they stopped", active=len(self.seen))
        elif self.overloaded_since is not None:
            lasted = now - self.overloaded_since
            self.overloaded_since = None
            self.restart_at = max(self.restart_at, now)
            return Episode(False, f"the coordinator keeps up again after {lasted:.1f}s of "
                                  f"overload; silence clocks restarted", active=len(self.seen),
                           lasted_s=lasted)
        return None

    # -- questions -----------------------------------------------------------------
    @property
    def isolated(self) -> bool:
        return self.isolated_since is not None

    def since(self, seen_at: float) -> float:
        """The point from which silence counts for a node last heard at ``seen_at``."""
        return max(seen_at, self.restart_at)

    def silent_for(self, node: str, now: float, fallback_seen: float) -> float:
        return now - self.since(self.seen.get(node, fallback_seen))

    def check(self, now: float) -> Episode | None:
        """Count the quiet nodes (forget those gone for good); begin or end an episode."""
        quiet, gone = 0, []
        for node, seen in self.seen.items():
            if now - self.since(seen) <= QUIET_S:
                break                      # everything after it reported later
            if now - seen > ACTIVE_S:
                gone.append(node)
            else:
                quiet += 1
        for node in gone:
            del self.seen[node]
        self.departed.extend(gone)
        active = len(self.seen)
        mass = quiet >= MASS_MIN and quiet > MASS_SHARE * active
        if mass and self.isolated_since is None:
            self.isolated_since = now
            return Episode(True, f"{quiet} of {active} nodes fell silent together: the "
                                 f"coordinator's network or its own host, not the nodes; "
                                 f"no node is judged on silence until reports resume",
                           quiet, active)
        if not mass and self.isolated_since is not None:
            lasted = now - self.isolated_since
            self.isolated_since, self.restart_at = None, max(self.restart_at, now)
            return Episode(False, f"reports resumed after {lasted:.1f}s; silence clocks "
                                  f"restarted", quiet, active, lasted)
        return None
