"""Who a job belongs to: the uid of the wrapper that registered it first (the agent reads
it from the socket, SO_PEERCRED, never from a message). Pure rules; the agent applies
them on its node, the coordinator across nodes."""
from __future__ import annotations

from dataclasses import dataclass

UNKNOWN = -1       # an agent older than ownership said nothing: not judged
ROOT = 0


def may_join(owner: int, uid: int) -> bool:
    """May a wrapper of ``uid`` take part in a job of ``owner``? Its owner may, root may;
    where either is unknown nothing is refused (an older agent cannot say)."""
    return owner == UNKNOWN or uid == UNKNOWN or uid in (owner, ROOT)


@dataclass(frozen=True)
class Refusal:
    """A node brought a job under another uid than its owner's: nothing of it was taken."""

    job_id: str
    node_id: str
    owner: int
    uid: int

    @property
    def reason(self) -> str:
        return (f"job {self.job_id} belongs to uid {self.owner}, not to uid {self.uid}: "
                f"another user's job runs under this id; pick another --job-id")
