"""``watchdog-d drill --job ID FAULT --rank R``: inject a fault into a live job through the
node's agent, follow what the watchdog does about it, print the timeline and PASS/FAIL
(exit 0 / 1; 2 when the drill could not start). The agent hands the coordinator the
asker's uid from its socket: only the job's owner or root may drill it."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..config import NODE_SOCKET, Config
from ..core.drill import FAULTS, Follow
from ..proto import localsock
from ..proto.local import Answer, DrillAsk, MessageError, StatusAsk

EXIT_PASS, EXIT_FAIL, EXIT_NOT_STARTED = 0, 1, 2
LOOK_EVERY_S = 0.5


def embedded_socket(state_dir: str, job_id: str) -> Path:
    """Where a job's embedded agent is reachable (``run`` links it while the job runs)."""
    return Path(state_dir) / "agents" / f"{job_id}.sock"


def _socket(cfg: Config, job_id: str, given: str) -> str:
    for path in (given, str(embedded_socket(cfg.state_dir, job_id)), cfg.socket, NODE_SOCKET):
        if path and os.path.exists(path):
            return path
    return ""


def _ask(conn: localsock.Conn, msg) -> Answer:  # type: ignore[no-untyped-def]
    conn.send(msg)
    try:
        reply = conn.recv(timeout=20.0)
    except (TimeoutError, MessageError):
        reply = None
    if not isinstance(reply, Answer):
        return Answer(error=getattr(reply, "error", "") or "no answer from the agent")
    return reply


def run_drill(cfg: Config, job_id: str, fault: str, rank: int, node: str, timeout: float,
              as_json: bool, agent_socket: str = "") -> int:
    path = _socket(cfg, job_id, agent_socket)
    if not path:
        print(f"watchdog-d: no agent to ask on this node (job {job_id}'s embedded one, "
              f"{cfg.socket} or {NODE_SOCKET}): run the drill where the job runs", file=sys.stderr)
        return EXIT_NOT_STARTED
    try:
        conn = localsock.connect(path)
    except OSError as e:
        print(f"watchdog-d: cannot reach the agent at {path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_NOT_STARTED
    began = time.monotonic()
    try:
        started = _ask(conn, DrillAsk(job_id=job_id, fault=fault, rank=rank, node=node))
        if started.error:
            print(f"watchdog-d: drill refused: {started.error}", file=sys.stderr)
            return EXIT_NOT_STARTED
        where = json.loads(started.json)
        follow = Follow(fault, rank, int(where["attempt"]))
        follow.timeline.append((0.0, "injected", f"{fault} into rank {rank} on {where['node']}"))
        if not as_json:
            _say(follow.timeline[-1])
        said = 1
        while time.monotonic() - began < timeout and not follow.done:
            time.sleep(LOOK_EVERY_S)
            answer = _ask(conn, StatusAsk(job_id=job_id))
            if conn.closed:
                # the agent went away: the job's embedded one ends with its job (a
                # teardown); what it decided is in the incident log of its state dir
                job = _from_incidents(cfg.state_dir, job_id, fault, rank)
            else:
                job = None if answer.error else json.loads(answer.json or "null")
            follow.look(time.monotonic() - began, job)
            if conn.closed and not follow.done:
                break
            for event in follow.timeline[said:] if not as_json else ():
                _say(event)
            said = len(follow.timeline)
    finally:
        conn.close()
    result = "PASS" if follow.passed else "FAIL"
    if as_json:
        print(json.dumps({"job": job_id, "fault": fault, "rank": rank, "result": result,
                          "expected": FAULTS[fault], "timeline": [
                              {"t": round(t, 2), "event": e, "detail": d} for t, e, d in follow.timeline]}))
    else:
        missing = [what for what, seen in (("a verdict naming the rank", follow.verdict),
                                           ("the teardown on every node", follow.down),
                                           ("alert sent", follow.alerted or not follow.alert_to),
                                           ("the relaunch", follow.relaunched or not follow.restarting))
                   if not seen]
        print(result + ("" if follow.passed else f": within {timeout:.0f}s, no {', no '.join(missing)}"
                        if missing else f": the verdict is not {FAULTS[fault]} rank {rank}"))
    return EXIT_PASS if follow.passed else EXIT_FAIL


def _from_incidents(state_dir: str, job_id: str, fault: str, rank: int) -> dict | None:
    """The drill's verdict from the incident log, as the status would have shown it."""
    from ..coordinator.store import IncidentStore, StoreError

    path = Path(state_dir) / "incidents.sqlite"
    try:
        events = IncidentStore(path).events(job_id) if path.exists() else []
    except StoreError:
        return None
    for ev in reversed(events):
        if ev["cause"].startswith(f"[drill: {fault} rank {rank}"):
            return {"verdict": f"{ev['kind']} rank {ev['rank']} on {ev['node']}: {ev['cause']}",
                    "action": ev["action"], "status": "ended", "nodes": []}
    return None


def _say(event: tuple) -> None:
    t, what, detail = event
    print(f"  +{t:6.2f}s  {what:<11} {detail}", flush=True)
