"""A suspect node leaves the scheduler's pool (``on_suspect = "drain"``): the agent asks
Slurm to drain it, once per suspicion, bounded in time; a failure is said, never retried
in a loop (a person looks at a suspect node anyway)."""
from __future__ import annotations

import shutil
import socket
import subprocess

from .. import log

TIMEOUT_S = 15.0
REASON_MAX = 200            # (Slurm keeps the reason in its state: short and one line)


def command(node: str, reason: str) -> list[str]:
    text = "watchdog-d: " + " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    return ["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={text[:REASON_MAX]}"]


def drain(node: str, reason: str, timeout: float = TIMEOUT_S) -> str:
    """Drain ``node``; "" when Slurm took it, else why not (one line)."""
    argv = command(node or socket.gethostname().split(".")[0], reason)
    if shutil.which(argv[0]) is None:
        return "scontrol not found: Slurm's client is not installed on this node"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"scontrol did not answer in {timeout:.0f}s"
    except OSError as e:
        return f"scontrol could not run: {e.strerror or e}"
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()
        return f"scontrol exited {out.returncode}: {said[-1][:300] if said else 'no message'}"
    return ""


def drain_and_say(node: str, reason: str) -> str:
    """(in a thread of its own: the agent's Watch stream never waits for Slurm) "" or why not."""
    why = drain(node, reason)
    if why:
        log.error("drain_failed", node=node, reason=reason[:200], error=why,
                  effect="the node stays in Slurm's pool; drain it by hand")
    else:
        log.warn("node_drained", node=node, reason=reason[:200])
    return why
