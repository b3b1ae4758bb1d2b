"""``/metrics`` of the agent (Prometheus): this node's jobs and ranks as the agent last
observed them, and how its reports to the coordinator fare.

The picture is read at scrape time from the agent's newest ``NodeReport``: two
references copied under its lock, the text made after, so a scrape never holds up
observing or reporting. Families are ``watchdogd_agent_*``: the coordinator's
``watchdogd_rank_*`` are the cluster's view of the same ranks, and a query must not add
the two. Labels say ``job_id``: Prometheus keeps ``job`` for the scrape job.

GPU families, ``watchdogd_agent_gpu_*{gpu,uuid}``: this node's GPUs as last sampled
(``proto.gpu_metrics``, the coordinator's table).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from prometheus_client import Counter, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from .. import __version__
from ..proto.gpu_metrics import gpu_families
from ..proto.metrics_http import DaemonMetrics

LOCK_WAIT_S = 1.0


class AgentMetrics(DaemonMetrics):
    """The agent's registry. The uplink counts each heartbeat (``reported``), and the agent
    sets ``observed_at`` with each new ``_latest``."""

    def __init__(self, agent: Any):
        super().__init__()
        self.reports = Counter("watchdogd_agent_reports",
                               "Reports (heartbeats) sent to the coordinator, by outcome: acked, failed",
                               ["outcome"], registry=self.registry)
        for outcome in ("acked", "failed"):
            self.reports.labels(outcome)          # both shown from the start, at 0
        self.refused = Counter("watchdogd_agent_wrappers_refused",
                               "Wrappers refused, by reason: owner (the job is another uid's), "
                               "duplicate (the job has a wrapper on this node), launcher (not "
                               "the caller's process)", ["reason"], registry=self.registry)
        for reason in ("owner", "duplicate", "launcher"):
            self.refused.labels(reason)
        self.fenced = Counter("watchdogd_agent_commands_fenced",
                              "Commands refused because a leader of a newer epoch was heard since "
                              "(--ha: a deposed coordinator's)", registry=self.registry)
        self.acked_at = time.monotonic()          # the last acked Report (at first: the start)
        self.observed_at: float | None = None     # when agent._latest was observed
        self.registry.register(_Picture(agent, self))
        ProcessCollector(namespace="watchdogd", registry=self.registry)

    def reported(self, outcome: str) -> None:
        """A heartbeat went: acked or failed."""
        self.reports.labels(outcome).inc()
        if outcome == "acked":
            self.acked_at = time.monotonic()


class _Picture:
    def __init__(self, agent: Any, metrics: AgentMetrics):
        self.agent, self.metrics = agent, metrics

    def collect(self):  # type: ignore[no-untyped-def]
        # the pair under the lock (held for moments); should it be wedged, the scrape
        # goes on without it rather than hang with it
        locked = self.agent.lock.acquire(timeout=LOCK_WAIT_S)
        try:
            report, observed_at = self.agent._latest, self.metrics.observed_at
        finally:
            if locked:
                self.agent.lock.release()
        now = time.monotonic()
        info = GaugeMetricFamily("watchdogd_agent_info", "The agent: its node id and version (always 1)",
                                 labels=["node", "version"])
        info.add_metric([self.agent.node_id, __version__], 1)
        yield info
        yield GaugeMetricFamily("watchdogd_agent_heartbeat_age_seconds",
                                "Seconds since the coordinator last acknowledged a Report "
                                "(since the agent started, before the first)",
                                value=now - self.metrics.acked_at)
        jobs = () if report is None else report.jobs
        yield GaugeMetricFamily("watchdogd_agent_jobs", "Jobs registered with this agent", value=len(jobs))
        attempt = GaugeMetricFamily("watchdogd_agent_job_attempt", "A job's current attempt (0: the first)",
                                    labels=["job_id"])
        alive = GaugeMetricFamily("watchdogd_agent_rank_alive", "1 while a rank's process lives, 0 after it exited",
                                  labels=["job_id", "rank"])
        step = GaugeMetricFamily("watchdogd_agent_rank_step", "A rank's last step (-1: none yet)",
                                 labels=["job_id", "rank"])
        step_age = GaugeMetricFamily("watchdogd_agent_rank_last_step_age_seconds",
                                     "Seconds since a rank's last step (since its start before the first)",
                                     labels=["job_id", "rank"])
        since = 0.0 if observed_at is None else max(0.0, now - observed_at)
        for part in jobs:
            j = part.spec.job_id
            attempt.add_metric([j], part.attempt)
            for r in part.ranks:
                labels = [j, str(r.rank)]
                alive.add_metric(labels, 1 if r.alive else 0)
                step.add_metric(labels, r.step)
                # as observed, plus the time since (an exited rank's age stops at its exit)
                step_age.add_metric(labels, r.last_step_age_s + (since if r.alive else 0.0))
        yield from (attempt, alive, step, step_age)
        gpus = () if report is None else report.gpus
        yield from gpu_families("watchdogd_agent_gpu", ["gpu", "uuid"],
                                (((str(g.index), g.uuid), asdict(g)) for g in gpus))
