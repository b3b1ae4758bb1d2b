"""What the coordinator must do: for a job now (Decision), for a node whatever it heard
before (Order). Plain data from ``state.Cluster`` to the shell."""
from __future__ import annotations

from dataclasses import dataclass

from .model import Incident, Verdict


@dataclass(frozen=True)
class Decision:
    """What the coordinator must do now for one job."""

    job_id: str
    verb: str                           # teardown | restart | dump_stacks | done | none
    nodes: tuple[str, ...] = ()
    incident: Incident | None = None    # to record (and alert, if wanted)
    alert: bool = False
    alert_urls: tuple[str, ...] = ()
    attempt: int = -1                   # relaunch: the generation to start (else the verdict's)
    resume_from: str = ""               # relaunch: the checkpoint to offer
    resume_step: int = -1


@dataclass(frozen=True)
class Order:
    """A verb a node must carry out whatever it heard before (sent with every ack)."""

    job_id: str
    verb: str                           # teardown | restart | relaunch | refuse (not the owner)
    attempt: int
    verdict: Verdict | None = None
    action: str = ""
    resume_from: str = ""
    resume_step: int = -1
