"""Prometheus families of GPU states, for both daemons: the agent's ``watchdogd_agent_gpu_*``
(its own GPUs, labelled gpu and uuid) and the coordinator's ``watchdogd_gpu_*`` (every
node's, labelled node and gpu). One table, so that the two say the same things the same
way. A value NVML did not read (-1) is no series rather than a -1 a graph would plot.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# (name after the prefix, GpuState field, help, a counter?)
FAMILIES: tuple[tuple[str, str, str, bool], ...] = (
    ("utilization_ratio", "util_ratio", "Share of the last sample period a kernel ran on the GPU (0..1)", False),
    ("memory_used_bytes", "mem_used_bytes", "GPU memory in use", False),
    ("memory_total_bytes", "mem_total_bytes", "GPU memory in all", False),
    ("temperature_celsius", "temperature_c", "GPU temperature", False),
    ("power_watts", "power_w", "GPU power draw", False),
    ("ecc_uncorrected", "ecc_uncorrected", "Uncorrected ECC errors since the driver loaded (volatile)", True),
    ("remapped_rows_pending", "remapped_pending", "Rows remapped that wait for a GPU reset", False),
    ("xid_events", "xid_count", "Xid events seen since the agent started", True),
    ("last_xid", "last_xid", "The latest Xid seen on the GPU (0: none)", False),
    ("lost", "lost", "1 when the GPU fell off the bus or NVML says it is lost", False),
)


def gpu_families(prefix: str, label_names: Sequence[str],
                 gpus: Iterable[tuple[Sequence[str], dict]]) -> Iterator:
    """The families of ``gpus``: (label values, the GPU as a dict of GpuState's fields)."""
    gpus = list(gpus)
    for name, key, help_text, counter in FAMILIES:
        cls = CounterMetricFamily if counter else GaugeMetricFamily
        family = cls(f"{prefix}_{name}", help_text, labels=list(label_names))
        for labels, g in gpus:
            value = g.get(key, -1)
            if isinstance(value, bool):
                value = int(value)
            if value is not None and value >= 0:
                family.add_metric(list(labels), float(value))
        yield family
