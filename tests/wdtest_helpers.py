"""Hand-built reports for the pure core (state / detector) tests.

Kept in a uniquely named module rather than ``conftest.py``: ``integration/``
has a conftest of its own, and ``from conftest import ...`` would be ambiguous
when both directories are collected in one run.
"""
from __future__ import annotations

import signal

from watchdog_d.core.model import JobOnNode, JobSpec, NodeReport, RankReport

JOB = "j1"
SIGKILL, SIGTERM, SIGSEGV = int(signal.SIGKILL), int(signal.SIGTERM), int(signal.SIGSEGV)

# a faulthandler-style dump of a rank waiting in a collective, and of one that is not
STACK_IN_COLLECTIVE = (
    'Thread 0x00007f0000000001 (most recent call first):\n'
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", '
    'line 2050 in all_reduce\n'
    '  File "/job/train.py", line 88 in train_step\n'
)
STACK_OUTSIDE = (
    'Thread 0x00007f0000000002 (most recent call first):\n'
    '  File "/job/data.py", line 12 in read_shard\n'
    '  File "/job/train.py", line 80 in train_step\n'
)


def spec(job: str = JOB, **kw: object) -> JobSpec:
    return JobSpec(job_id=job, **kw)  # type: ignore[arg-type]


def rank(r: int, **kw: object) -> RankReport:
    return RankReport(rank=r, local_rank=r, pid=1000 + r, **kw)  # type: ignore[arg-type]


def dead(r: int, *, code: int | None = None, sig: int | None = None, age: float = 0.0,
         **kw: object) -> RankReport:
    return rank(r, alive=False, exit_code=code, exit_signal=sig, exit_age_s=age, proc_state="X", **kw)


def report(node: str, ranks: object = (), state: str = "running", attempt: int = 0, *,
           job_spec: JobSpec | None = None, exit_code: int = 0, seq: int = 0) -> NodeReport:
    """One heartbeat of ``node`` about one job. ``ranks``: RankReports or plain rank numbers
    (alive, at step 0, just stepped)."""
    rs = tuple(x if isinstance(x, RankReport) else rank(int(x), step=0)  # type: ignore[arg-type]
               for x in ranks)  # type: ignore[attr-defined]
    return NodeReport(node_id=node, host=f"host-{node}", seq=seq,
                      jobs=(JobOnNode(spec=job_spec or spec(), attempt=attempt, state=state,
                                      exit_code=exit_code, ranks=rs),))
