"""Typed data at the seams between agent, coordinator and wrapper.

Times named ``*_age_s`` are durations measured by the observer at the moment it
built the report; the coordinator turns them into points on its own clock, so no
two hosts ever need to agree on wall time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


MAX_TEXT = 16_384   # stack / excerpt text kept and carried per rank


@dataclass(frozen=True)
class LogFinding:
    """A line of a rank's log that matched the fingerprint catalogue."""

    kind: str
    severity: str = "error"          # fatal | error | warning
    role: str = "cause"              # cause | consequence
    line: str = ""
    line_no: int = -1
    age_s: float = 0.0               # how long ago the agent read it
    fields: tuple[tuple[str, str], ...] = ()
    explanation: str = ""
    remedy: str = ""


@dataclass(frozen=True, slots=True)
class PendingCollective:
    """The oldest collective of a process group that a rank enqueued and has not seen
    complete, as its flight recorder had it when dumped."""

    seq: int                          # the group's collective sequence id
    op: str                           # as torch names it: "nccl:all_reduce", "gloo:broadcast"
    sizes: str = ""                   # input shapes, "[4096]" ("[8,128],[8]" for several)
    nbytes: int = 0                   # input bytes (0: unknown dtype)
    age_s: float = 0.0                # enqueued this long before the dump
    state: str = "scheduled"          # scheduled | started (NCCL with timing only)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """One process group of one rank, from its flight recorder (``core.frsummary``)."""

    name: str                         # the group's name ("0" is the default group)
    desc: str = ""                    # what torch calls it: "default_pg", "tp", "undefined"
    size: int = 0                     # members (0: unknown)
    ranks: str = ""                   # members' global ranks, "0-7" / "0-56:8" ("": unknown)
    last_enqueued: int = -1           # collective sequence ids (-1: none yet)
    last_started: int = -1            # -1 also when the backend records no start (gloo; NCCL without timing)
    last_completed: int = -1
    pending: PendingCollective | None = None
    later: tuple[PendingCollective, ...] = ()   # the next pending ones, by sequence id (a few)


@dataclass(slots=True)
class RankReport:
    """What an agent saw of one rank process. Not changed once made (not frozen: a
    coordinator makes thousands a second, and a frozen one costs 2.5x to make; for the
    same reason ``proto.convert.rank_from_pb`` passes the fields in this order)."""

    rank: int
    local_rank: int = -1
    pid: int = 0
    alive: bool = True
    # exit: code >= 0 for a normal exit, signal > 0 when killed by a signal;
    # both unknown (None) when the process vanished and left no record.
    exit_code: int | None = None
    exit_signal: int | None = None
    exit_detail: str = ""
    exit_age_s: float = 0.0          # how long ago the agent saw the exit
    proc_state: str = ""             # R S D T Z ... ('' unknown)
    step: int = -1                   # -1: no step yet
    last_step_age_s: float = 0.0     # since last step, or since start when step < 0
    last_step_dt_s: float = 0.0      # duration of the last step (0: unknown)
    section: str = ""
    section_remaining_s: float = math.inf
    section_age_s: float = 0.0       # how long it has been inside the open section
    cpu_percent: float = 0.0
    log_offset: int = 0
    stack: str = ""                  # latest stack dump of the rank, if any
    excerpt: str = ""                # traceback / log lines worth showing
    findings: tuple[LogFinding, ...] = ()
    ckpt_path: str = ""              # the newest checkpoint it recorded (checkpoint_saved)
    ckpt_step: int = -1              # -1: none
    stack_age_s: float = math.inf    # since the stack was dumped (inf: no stack, or unknown)
    # the flight recorder, read on request like the stack (``core.frsummary``)
    collectives: tuple[GroupRecord, ...] = ()
    fr_age_s: float = math.inf       # since the rank summarised it (inf: never)
    fr_note: str = ""                # why there is no summary (recorder off, old torch, ...)
    # the rank's own evidence of being stuck or working, as the agent followed it
    io_still_s: float = -1.0         # since its I/O counters (/proc/PID/io) last moved (-1: unknown)
    d_held_s: float = 0.0            # in state D in every observation for this long
    stack_still_s: float = 0.0       # its main thread's stack the same in every dump for this long
    # its completed collectives since its batch before (``core.frtiming.GroupTiming``s), read
    # now and then while it steps; the coordinator takes each batch once (stragglers)
    timings: tuple = ()
    timing_batch: int = 0            # 0: none yet

    @property
    def failed(self) -> bool:
        """Exited in a way that is not a clean ``exit 0``."""
        if self.alive:
            return False
        if self.exit_signal:
            return True
        return self.exit_code != 0  # None (vanished) counts as failed


ON_FAILURE = ("alert", "teardown", "restart")
MAX_JOB_ID = 128
MAX_ALERT_URLS, MAX_URL = 32, 4096
MAX_COMMAND = 1000                # a job's command line is kept (redacted) for people, cut here
MAX_SECONDS = 30 * 86400.0        # no timeout or backoff of a job is longer than 30 days
MAX_COUNT = 10_000                # restarts, crash-loop length
MAX_NODES = 100_000               # torchrun's --nnodes


class SpecError(ValueError):
    """A job spec that must not be used; ``field`` names the setting at fault."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class JobSpec:
    """A job as its wrapper registered it: identity and policy.

    The defaults here are the defaults of every job (``config.Config`` takes them from
    here). A spec that crossed a process boundary is used only after ``checked()``.
    """

    job_id: str
    on_failure: str = "teardown"      # alert | teardown | restart
    max_restarts: int = 0
    min_stall_timeout_s: float = 60.0
    stall_factor: float = 5.0
    startup_timeout_s: float = 900.0
    node_timeout_s: float = 5.0
    alert_urls: tuple[str, ...] = ()
    command: str = ""
    restart_backoff_s: float = 0.0    # wait before relaunch i: this x 2^(i-1), capped
    crash_loop: int = 3               # attempts in a row without a step -> gave_up (0: off)
    # the end of training: destroy_process_group() to exit, ranks left after a peer exited 0
    shutdown_timeout_s: float = 900.0
    # the launch's shape, read by the wrapper from torchrun's arguments: an elastic job
    # (--nnodes MIN:MAX) can go on without a node; a spare must bring the same ``shape``
    # (the command without its per-node arguments, hashed)
    nnodes_min: int = 0               # 0: unknown (not torchrun)
    nnodes_max: int = 0
    shape: str = ""
    # stragglers (core.straggler): judged over this many steps, late by this share of a step
    straggler_window: int = 100
    straggler_lag: float = 0.1
    exclude_stragglers: bool = False  # a persistent straggler's node is suspect (leaves on a relaunch)

    def checked(self) -> "JobSpec":
        """This spec if every rule holds (the command cut to MAX_COMMAND), else SpecError.

        The one set of rules for a spec, whoever receives it: the agent from a wrapper,
        the coordinator from an agent, the config from a user."""
        if not self.job_id or len(self.job_id) > MAX_JOB_ID or \
                not all(c.isascii() and (c.isalnum() or c in "-_.") for c in self.job_id):
            raise SpecError("job_id", f"must be 1-{MAX_JOB_ID} letters, digits, '-', '_' or "
                                      f"'.', got {self.job_id[:MAX_JOB_ID + 1]!r}")
        if self.on_failure not in ON_FAILURE:
            raise SpecError("on_failure", f"must be alert, teardown or restart, not {self.on_failure!r}")
        for name in ("min_stall_timeout_s", "startup_timeout_s", "node_timeout_s", "shutdown_timeout_s"):
            _number(name, getattr(self, name), low=0.0, open_low=True, high=MAX_SECONDS)
        _number("stall_factor", self.stall_factor, low=1.0, high=1000.0)
        _number("restart_backoff_s", self.restart_backoff_s, low=0.0, high=MAX_SECONDS)
        for name in ("max_restarts", "crash_loop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise SpecError(name, f"must be a whole number of 0-{MAX_COUNT}, got {value!r}")
        if len(self.alert_urls) > MAX_ALERT_URLS:
            raise SpecError("alert_urls", f"holds {len(self.alert_urls)} URLs, at most {MAX_ALERT_URLS}")
        if any(not isinstance(u, str) or not u or len(u) > MAX_URL for u in self.alert_urls):
            raise SpecError("alert_urls", f"must be non-empty URLs of at most {MAX_URL} characters")
        for name in ("nnodes_min", "nnodes_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NODES:
                raise SpecError(name, f"must be a whole number of 0-{MAX_NODES}, got {value!r}")
        if self.nnodes_min > self.nnodes_max:
            raise SpecError("nnodes_min", f"must not exceed nnodes_max ({self.nnodes_min} > {self.nnodes_max})")
        if not isinstance(self.shape, str) or len(self.shape) > 64 or not self.shape.isalnum() and self.shape:
            raise SpecError("shape", "must be at most 64 letters and digits")
        w = self.straggler_window
        if isinstance(w, bool) or not isinstance(w, int) or not 10 <= w <= MAX_COUNT:
            raise SpecError("straggler_window", f"must be a whole number of 10-{MAX_COUNT} steps, got {w!r}")
        _number("straggler_lag", self.straggler_lag, low=0.0, open_low=True, high=10.0)
        if not isinstance(self.exclude_stragglers, bool):
            raise SpecError("exclude_stragglers", "must be true or false")
        if not isinstance(self.command, str):
            raise SpecError("command", "must be text")
        return self if len(self.command) <= MAX_COMMAND else replace(self, command=self.command[:MAX_COMMAND])


def _number(name: str, value: object, *, low: float, high: float, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise SpecError(name, f"must be a number {bound} and <= {high:g}, got {value!r}")


# running | exited | stopped (by the user) | waiting (torn down for a restart, for the next
# generation) | preflight_failed (the node's checks failed: never started there; why in note)
# | spare (a standby wrapper of the job, no ranks: it takes an excluded node's place)
JOB_STATES = ("running", "exited", "stopped", "waiting", "preflight_failed", "spare")


@dataclass(frozen=True)
class JobOnNode:
    """One job's part on one node, as of one heartbeat."""

    spec: JobSpec
    attempt: int = 0
    state: str = "running"            # one of JOB_STATES
    exit_code: int = 0                #   (waiting: torn down for a restart, for the next generation)
    ranks: tuple[RankReport, ...] = ()
    note: str = ""                    # from the wrapper, for people (e.g. a checkpoint problem)
    run: str = ""                     # this node's launch of the job (its wrapper's run token)
    owner: int = -1                   # uid of the wrapper that registered it (-1: not said)
    node_rank: int = -1               # torchrun's --node-rank here (-1: none, a dynamic rendezvous)


@dataclass(frozen=True)
class GpuState:
    """One GPU of a node as NVML last read it. -1: not read (unsupported, off, lost)."""

    index: int
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""
    util_ratio: float = -1.0          # 0..1
    mem_used_bytes: int = -1
    mem_total_bytes: int = -1
    temperature_c: float = -1.0
    power_w: float = -1.0
    clocks_event_reasons: int = 0     # NVML's throttle / clocks event bit mask
    sm_clock_mhz: int = -1            # the SM clock now ...
    sm_clock_max_mhz: int = -1        # ... and the most it can run at
    ecc_uncorrected: int = -1         # volatile, since the driver loaded
    remapped_pending: int = -1        # rows waiting for a GPU reset
    remap_failure: bool = False
    recovery_action: int = -1         # NVML_GPU_RECOVERY_ACTION_* (0: none)
    lost: bool = False                # fallen off the bus / NVML says the GPU is lost
    last_xid: int = 0                 # the latest Xid seen (0: none)
    xid_count: int = 0


@dataclass(frozen=True)
class NodeReport:
    """One node heartbeat."""

    node_id: str
    host: str = ""
    seq: int = 0
    jobs: tuple[JobOnNode, ...] = ()
    leaving: bool = False             # its agent is stopping: its silence from now means nothing
    gpus: tuple[GpuState, ...] = ()   # empty: no GPU checks on this node (sent in every report)
    drain_failed: str = ""            # its agent could not drain it from Slurm: why (said once)
    sent_mono_s: float = 0.0          # its agent's monotonic clock when it built the report (0: not said)


@dataclass(frozen=True)
class Verdict:
    """A decision-worthy finding about a job."""

    job: str
    kind: str
    rank: int | None = None
    node: str = ""
    host: str = ""
    step: int | None = None
    detected_after_s: float = 0.0
    cause: str = ""
    remedy: str = ""
    excerpt: str = ""
    attempt: int = 0
    evidence: tuple[str, ...] = field(default=())
    advisory: bool = False            # a warning whatever the job's policy (nothing to act on)
    suspect: str = ""                 # the job's nodes that were suspect already, and why

    @property
    def rank_label(self) -> str:
        return "-" if self.rank is None else str(self.rank)

    def one_line(self) -> str:
        where = f" on {self.node}" if self.node else ""
        step = f" at step {self.step}" if self.step is not None and self.step >= 0 else ""
        cause = " ".join(self.cause.split())      # one line, whatever the cause holds
        return f"{self.kind} rank {self.rank_label}{where}{step}: {cause}"


@dataclass(frozen=True)
class Incident:
    """A verdict plus what was done about it: one row of the incident log."""

    ts: float                         # wall time (epoch seconds)
    verdict: Verdict
    action: str = "none"              # none | teardown | restart i/N | gave_up

    def as_event(self) -> dict:
        """The ``events --json`` shape, in contract order."""
        from datetime import datetime, timezone

        v = self.verdict
        return {
            "ts": datetime.fromtimestamp(self.ts, timezone.utc).isoformat(timespec="milliseconds"),
            "job": v.job,
            "kind": v.kind,
            "rank": v.rank,
            "node": v.node,
            "step": v.step,
            "action": self.action,
            "detected_after_s": round(v.detected_after_s, 3),
            "cause": v.cause,
            "remedy": v.remedy,
        }
