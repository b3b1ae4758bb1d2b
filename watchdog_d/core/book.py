"""The coordinator's record of one job (JobBook) and of its part on one node (NodeView).

Plain mutable data: ``state.Cluster`` updates it from heartbeats, ``detector`` and
``rootcause`` read it. Kept apart from ``state`` so that those readers need not import
the module that calls them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .drill import Drill
from .model import GpuState, JobOnNode, JobSpec, Verdict
from .stall import Durations, StepTimes
from .straggler import Lags, Straggler

BARRIER_CAP_S = 60.0                # a relaunch waits at most this long for every node's teardown


@dataclass
class NodeView:
    node_id: str
    host: str
    seen_at: float                      # coordinator clock of its latest report
    part: JobOnNode                     # this job on this node, latest
    exit_at: dict[int, float] = field(default_factory=dict)   # rank -> when it exited
    ended_at: float | None = None       # when its wrapper reported the job over
    answered: bool = False              # its wrapper was told how the job ended
    attempt_seen: int = 0               # the attempt of its latest report (behind: < the job's)
    signature: tuple = ()               # of its latest part (``deadline.signature``)
    gpus: tuple[GpuState, ...] = ()     # the node's GPUs as its latest report had them (status)


@dataclass
class JobBook:
    spec: JobSpec
    created_at: float
    attempt: int = 0
    nodes: dict[str, NodeView] = field(default_factory=dict)
    times: Durations = field(default_factory=Durations)   # step durations, pauses apart
    last_step: dict[int, int] = field(default_factory=dict)
    status: str = "running"             # running | stopping | ended
    verdict: Verdict | None = None      # the decisive verdict of this attempt
    action: str = ""
    restarts: int = 0
    stacks_asked_at: float | None = None
    outcome: str = ""                   # succeeded | failed | stopped | torn_down
    ended_at: float | None = None
    reported: set = field(default_factory=set)    # (kind, rank) already made incidents
    checkpoint: tuple[int, str] | None = None     # (step, path): the newest this run's ranks recorded
    checkpoint_attempt: int = -1                  # ... in this attempt (a later attempt's is newer)
    runs: set = field(default_factory=set)        # the run tokens of this run's nodes
    section_seen_at: float | None = None          # the last report with a rank inside a section
    no_progress: int = 0                # attempts in a row that ended before their first step
    restart_asked_at: float | None = None   # a restart's teardown was asked for then
    attempt_started_at: float | None = None  # this attempt was relaunched then (None: the first)
    torn_down_at: float | None = None       # ... and every node had done it by then
    judged_limit: float = float("inf")      # the stall timeout when it was last judged
    fr_note_said: bool = False              # a verdict said why the flight recorder was not there
    owner: int = -1                         # uid of the wrapper that registered it first (-1: not said)
    drill: Drill | None = None              # a drill under way: its verdict says so
    # bad hardware leaves the job (core.exclusion): suspect nodes torn down for good at this
    # restart, the spares planned to take their places, the nodes that left, the node ranks
    # handed to spares (their relaunch carries it)
    leaving: dict[str, str] = field(default_factory=dict)         # node -> why
    taking: tuple[tuple[str, str, int], ...] = ()                 # (spare, node it replaces, rank)
    left: dict[str, str] = field(default_factory=dict)            # node -> why
    handed: dict[str, int] = field(default_factory=dict)          # spare node -> node rank
    # stragglers (core.lagging): this attempt's collective timings, the batch last taken of
    # each rank, the stragglers of the last judgment (an episode while not empty)
    lags: Lags | None = None
    timing_seen: dict[int, int] = field(default_factory=dict)
    stragglers: list[Straggler] = field(default_factory=list)
    straggler_judged_at: float = float("-inf")

    @property
    def steps(self) -> StepTimes:
        return self.times.steps

    @property
    def pauses(self) -> StepTimes:
        return self.times.pauses

    @property
    def relaunch_due(self) -> bool:
        """This attempt is being torn down (or is down) for a restart that still stands."""
        return self.status == "stopping" and self.action.startswith("restart") \
            and self.outcome != "stopped"

    @property
    def offer(self) -> tuple[int, str]:
        """(step, path) a relaunch resumes from: the recorded checkpoint, else (-1, "")."""
        return self.checkpoint or (-1, "")

    def ranks(self):
        for node in self.nodes.values():
            for r in node.part.ranks:
                yield node, r
