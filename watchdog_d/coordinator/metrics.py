"""``/metrics`` of the coordinator (Prometheus).

What happens is counted where it happens (``CoordinatorMetrics``, owned by the
Coordinator: an increment, nothing more, on the loop). The picture of the jobs is read
at scrape time from the status snapshot, which the coordinator rebuilds on its loop a
few jobs at a time (``Coordinator.status``): a scrape waits for it, a Report never waits
for a scrape. Labels say ``job_id``, not ``job``: Prometheus keeps ``job`` for the
scrape job and would rename ours.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..core.state import Decision
from ..proto.gpu_metrics import gpu_families
from ..proto.metrics_http import DaemonMetrics

if TYPE_CHECKING:
    from .server import Coordinator

# a Report is parsed and ingested in O(its ranks): tens of microseconds to milliseconds
ACTIONS = ("teardown", "restart", "gave_up")      # what stops a job (policy.stops_job)
REPORT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class CoordinatorMetrics(DaemonMetrics):
    def __init__(self, coordinator: "Coordinator"):
        super().__init__()
        self.verdicts = Counter("watchdogd_verdicts", "Incidents logged, by verdict kind",
                                ["kind"], registry=self.registry)
        self.restarts = Counter("watchdogd_restarts",
                                "Restarts carried out: relaunches of a job's next attempt commanded",
                                registry=self.registry)
        self.actions = Counter("watchdogd_actions",
                               "What incidents made the coordinator do to a job: teardown, "
                               "restart (a teardown, then a relaunch), gave_up (restarts spent "
                               "or a crash loop: torn down for good)", ["action"],
                               registry=self.registry)
        for action in ACTIONS:
            self.actions.labels(action)           # shown from the start, at 0
        self.report_seconds = Histogram("watchdogd_report_handling_seconds",
                                        "Time the event loop spent handling one Report",
                                        buckets=REPORT_BUCKETS, registry=self.registry)
        self.registry.register(_Picture(coordinator))
        ProcessCollector(namespace="watchdogd", registry=self.registry)

    def decided(self, d: Decision) -> None:
        """A decision carried out: its incident is logged, a relaunch is a restart."""
        if d.incident is not None:
            self.verdicts.labels(kind=d.incident.verdict.kind).inc()
            action = d.incident.action.split(" ")[0]      # (restart 2/3 -> restart)
            if action in ACTIONS:
                self.actions.labels(action).inc()
        if d.verb == "relaunch":
            self.restarts.inc()


class _Picture:
    """The families read at scrape time: the status snapshot and the counters the
    coordinator and its alert sender keep as plain dicts."""

    def __init__(self, coordinator: "Coordinator"):
        self.c = coordinator

    def collect(self):  # type: ignore[no-untyped-def]
        snap = self.c.status()
        yield GaugeMetricFamily("watchdogd_jobs", "Jobs the coordinator watches",
                                value=len(snap["jobs"]))
        attempt = GaugeMetricFamily("watchdogd_job_attempt", "A job's current attempt (0: the first)",
                                    labels=["job_id"])
        stall = GaugeMetricFamily("watchdogd_job_stall_timeout_seconds",
                                  "A rank without a step for this long is stalled", labels=["job_id"])
        heartbeat = GaugeMetricFamily("watchdogd_node_heartbeat_age_seconds",
                                      "Seconds since a node of the job was last heard",
                                      labels=["job_id", "node"])
        step = GaugeMetricFamily("watchdogd_rank_step", "A rank's last step (-1: none yet)",
                                 labels=["job_id", "node", "rank"])
        step_age = GaugeMetricFamily("watchdogd_rank_last_step_age_seconds",
                                     "Seconds since a rank's last step (since its start before the first)",
                                     labels=["job_id", "node", "rank"])
        lag = GaugeMetricFamily("watchdogd_straggler_lag_seconds",
                                "How far a straggling rank is behind the median of its peers in "
                                "reaching its collectives (present while it straggles)",
                                labels=["job_id", "rank"])
        for job in snap["jobs"]:
            j = job["job"]
            for s in job.get("stragglers", ()):
                lag.add_metric([j, str(s["rank"])], s["lag_s"])
            attempt.add_metric([j], job["attempt"])
            stall.add_metric([j], job["stall_timeout_s"])
            for node in job["nodes"]:
                heartbeat.add_metric([j, node["node"]], node["heartbeat_age_s"])
                for r in node["ranks"]:
                    labels = [j, node["node"], str(r["rank"])]
                    step.add_metric(labels, r["step"])
                    step_age.add_metric(labels, r["last_step_age_s"])
        suspect = GaugeMetricFamily("watchdogd_node_suspect",
                                    "1 for a node marked suspect (a failed health check, or the "
                                    "culprit of verdicts again and again): look at it",
                                    labels=["node"])
        for node in sorted({n["node"] for job in snap["jobs"] for n in job["nodes"] if n.get("suspect")}):
            suspect.add_metric([node], 1)
        yield from (attempt, stall, heartbeat, step, step_age, suspect, lag)
        # a node in several jobs is in the snapshot once per job: its GPUs once
        gpus = {(n["node"], g["index"]): g for job in snap["jobs"] for n in job["nodes"]
                for g in n.get("gpus", ())}
        yield from gpu_families("watchdogd_gpu", ["node", "gpu"],
                                (((node, str(i)), g) for (node, i), g in sorted(gpus.items())))
        yield from self._counted()

    def _counted(self):  # type: ignore[no-untyped-def]
        counts = dict(self.c.counters)
        reports = CounterMetricFamily(
            "watchdogd_reports", "Reports (heartbeats) received, by outcome: ingested, refused "
            "(malformed), incomplete (leaving out what this coordinator does not hold)",
            labels=["outcome"])
        for outcome, key in (("ingested", "reports"), ("refused", "reports_refused"),
                             ("incomplete", "reports_incomplete")):
            reports.add_metric([outcome], counts[key])
        yield reports
        yield CounterMetricFamily("watchdogd_jobs_refused",
                                  "Jobs a node brought under another uid than their owner's "
                                  "(none of it taken), once per episode",
                                  value=counts["jobs_refused"])
        yield CounterMetricFamily("watchdogd_commands_sent", "Commands (verbs) queued for nodes",
                                  value=counts["commands"])
        yield CounterMetricFamily("watchdogd_commands_dropped",
                                  "Queued commands dropped: their node had not listened for long",
                                  value=counts["commands_dropped"])
        alerts = CounterMetricFamily(
            "watchdogd_alerts", "Alerts by outcome (the sender's counters: submitted, deduplicated "
            "within the cooldown, sent, failed attempts, dropped, ...)", labels=["outcome"])
        for outcome, value in sorted(dict(getattr(self.c.sender, "counters", {})).items()):
            alerts.add_metric([outcome], value)
        yield alerts
        passed_at = self.c.health.passed_at
        yield GaugeMetricFamily("watchdogd_decision_loop_pass_age_seconds",
                                "Seconds since the decision loop last finished a pass "
                                "(+Inf: it is not running)",
                                value=float("inf") if passed_at is None
                                else max(0.0, self.c.clock() - passed_at))
