"""``watchdog-d run --preflight``: the doctor's checks on this node before the launch.

Warnings: said once on stderr, the job starts. Errors: the job does not start on this
node; the wrapper still registered (so the job and this node are known), tells its agent
``Ended(state="preflight_failed", note=the failed checks)``, and the coordinator makes it
a ``preflight_failed`` verdict naming the node and the checks: alert, teardown of the job's
other nodes (they would wait in the rendezvous), no restart. This wrapper then exits 75
with that verdict as its last stderr line (or, when no verdict comes, its own line).
"""
from __future__ import annotations

import queue
import sys
import threading
import time

from .. import log
from ..config import Config
from ..doctor import report
from ..doctor.check import Check
from ..proto import localsock
from ..proto.local import Command, Ended, MessageError

VERDICT_WAIT_S = 10.0      # the coordinator's answer (a heartbeat away, plus its tick)


def check(cfg: Config) -> list[Check]:
    """Run the checks; say the warnings once. The errors are returned (empty: launch)."""
    checks = report.run(cfg)
    for c in report.warnings(checks):
        print(f"watchdog-d: preflight warning: {c.check}: {c.found}"
              + (f" (fix: {c.fix})" if c.fix else ""), file=sys.stderr, flush=True)
    bad = report.errors(checks)
    for c in bad:   # (on the console, not as a log line: it is the user's own command)
        print(f"watchdog-d: preflight error: {c.check}: {c.found}"
              + (f" (fix: {c.fix})" if c.fix else ""), file=sys.stderr, flush=True)
    return bad


def refuse(cfg: Config, conn: localsock.Conn, node_id: str, bad: list[Check]) -> str:
    """Tell the agent the job is not started here; wait for the verdict. Returns the
    final stderr line."""
    note = report.summary(bad)
    conn.send(Ended(state="preflight_failed", exit_code=75, note=note))
    answers: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except MessageError:
                continue
            answers.put(msg)
            if msg is None:
                return

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + VERDICT_WAIT_S
    while time.monotonic() < deadline:
        try:
            msg = answers.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if msg is None:
            break
        if isinstance(msg, Command) and msg.verb in ("teardown", "done") and msg.verdict is not None:
            return (f"watchdog-d: job {cfg.job_id} not started: {msg.verdict.one_line()} "
                    f"[action: {msg.action or msg.verb}]")
    log.warn("preflight_no_verdict", job=cfg.job_id, waited_s=VERDICT_WAIT_S,
             checks=",".join(c.check for c in bad))
    return (f"watchdog-d: job {cfg.job_id} not started: preflight_failed rank - on {node_id}: "
            f"{note} [action: teardown]")
