"""What the coordinator must do: for a job now (Decision), for a node whatever it heard
before (Order). Plain data from ``state.Cluster`` to the shell."""
from __future__ import annotations

from dataclasses import dataclass

from .model import Incident, Verdict


@dataclass(frozen=True)
class Decision:
    """What the coordinator must do now for one job."""

    job_id: str
    verb: str                           # teardown | restart | relaunch | leave | dump_stacks | done | none
    nodes: tuple[str, ...] = ()
    incident: Incident | None = None    # to record (and alert, if wanted)
    alert: bool = False
    alert_urls: tuple[str, ...] = ()
    attempt: int = -1                   # relaunch: the generation to start (else the verdict's)
    resume_from: str = ""               # relaunch: the checkpoint to offer
    resume_step: int = -1
    note: str = ""                      # leave: why (the node's wrapper says it)
    node_rank: int = -1                 # relaunch of a spare: the --node-rank it takes


@dataclass(frozen=True)
class Order:
    """A verb a node must carry out whatever it heard before (sent with every ack)."""

    job_id: str
    verb: str                           # teardown | restart | relaunch | leave | done | refuse
    attempt: int
    verdict: Verdict | None = None
    action: str = ""                    # (leave, refuse: why)
    resume_from: str = ""
    resume_step: int = -1
    node_rank: int = -1                 # relaunch of a spare: the --node-rank it takes
