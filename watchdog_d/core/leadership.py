"""Who leads among the ``--ha`` coordinators, and what leading allows (pure, clock injected).

The shell (``coordinator.ha``) talks to etcd and says here what it found; this module
keeps the role and answers three questions for the decision loop.

- A coordinator leads while it holds the leader key on its etcd lease. Its epoch is that
  key's create revision: etcd's revisions only grow, so a later leader's epoch is always
  higher, and agents refuse verbs of an older one (fencing).
- It renews the lease every ttl/3 while its decision loop passes; a wedged loop stops the
  renewals and the lease runs out, so a standby takes over (``renew_due``).
- ``may_decide``: a leader decides while its lease is known alive (the last renewal began
  less than a ttl ago). Past that, with etcd answering, it decides nothing until etcd
  answers again (the answer says whether it still leads: a paused leader that wakes up
  after its lease learns it lost it before it acts). When etcd became unreachable while
  its lease was alive, it keeps deciding: nobody can be elected without etcd, and a
  cluster must not go unwatched because its store did. (Found unreachable only after the
  lease ran out -- a leader paused past it, waking to a dead etcd -- it does not: a standby
  may have been elected meanwhile.)
- ``judges_silence``: not while the lease is in doubt (etcd unreachable past the ttl: a
  node gone quiet may be following a newer leader that etcd's other side elected), and
  not before a full node timeout after taking over (``took_over_at``; the shell restarts
  the silence clocks then).
"""
from __future__ import annotations

from dataclasses import dataclass, field

LEADER, STANDBY = "leader", "standby"


@dataclass(frozen=True)
class Change:
    """Something to say once (a log line, an alert for ``etcd_unreachable``)."""

    kind: str        # leading | deposed | etcd_unreachable | etcd_back
    detail: str = ""


@dataclass
class Leadership:
    ttl_s: float
    role: str = STANDBY
    epoch: int = 0                     # ours while leading; the leader's seen otherwise
    leader: str = ""                   # the leader's name and address ("name@host:port"), "" unknown
    renewed_at: float = float("-inf")  # when the last successful grant/renewal began
    took_over_at: float = float("-inf")
    down_since: float | None = None    # etcd unreachable since
    changes: list[Change] = field(default_factory=list)

    # -- what etcd said (the shell) ------------------------------------------------------
    def won(self, epoch: int, me: str, began: float) -> None:
        """Our create of the leader key succeeded (``began``: when the call began)."""
        self._reached()
        self.role, self.epoch, self.leader = LEADER, epoch, me
        self.renewed_at = self.took_over_at = began
        self.changes.append(Change("leading", f"epoch={epoch}"))

    def renewed(self, began: float) -> None:
        self._reached()
        self.renewed_at = began

    def lost(self, why: str) -> None:
        """The lease is gone or the key is another's: we do not lead."""
        self._reached()
        if self.role == LEADER:
            self.changes.append(Change("deposed", why))
        self.role = STANDBY
        self.renewed_at = float("-inf")

    def observed(self, leader: str, epoch: int) -> None:
        """(a standby) who holds the key now ("" and 0: nobody). Epochs never go back."""
        self._reached()
        if self.role == LEADER:
            return
        self.leader, self.epoch = leader, max(epoch, self.epoch)

    def unreachable(self, now: float, why: str) -> None:
        if self.down_since is None:
            self.down_since = now
            self.changes.append(Change("etcd_unreachable", why))

    def _reached(self) -> None:
        if self.down_since is not None:
            self.down_since = None
            self.changes.append(Change("etcd_back"))

    # -- what the loop may do ----------------------------------------------------------
    @property
    def leading(self) -> bool:
        return self.role == LEADER

    def lease_alive(self, now: float) -> bool:
        return now - self.renewed_at < self.ttl_s

    def may_decide(self, now: float) -> bool:
        went_down_leading = self.down_since is not None and self.lease_alive(self.down_since)
        return self.leading and (self.lease_alive(now) or went_down_leading)

    def judges_silence(self, now: float) -> bool:
        return self.leading and self.lease_alive(now)

    def renew_due(self, now: float) -> bool:
        return now - self.renewed_at >= self.ttl_s / 3

    def take_changes(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out
