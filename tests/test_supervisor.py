"""The wrapper's obedience (watchdog_d/wrapper/supervisor.py), on a real launched process."""
from __future__ import annotations

import socket
from pathlib import Path

from watchdog_d.config import Config
from watchdog_d.proto.local import Command, Ended
from watchdog_d.proto.localsock import Conn
from watchdog_d.wrapper import launch
from watchdog_d.wrapper.supervisor import EXIT_TORN_DOWN, Wrapper


def test_a_verb_about_a_replaced_attempt_is_ignored(tmp_path: Path) -> None:
    """A teardown or restart queued for attempt 0 while this node was cut off can reach it
    after it relaunched as attempt 1 (the relaunch came with the coordinator's ack): it must
    not tear attempt 1 down."""
    ours, agent_end = socket.socketpair()
    cfg = Config(job_id="stale", state_dir=str(tmp_path), grace=1.0)
    w = Wrapper(cfg, ["sleep", "30"], Conn(ours), "node-a")
    w.attempt = w._launch(1)
    try:
        assert w._command(Command(verb="restart", attempt=0)) is None
        assert w._command(Command(verb="teardown", attempt=0)) is None
        assert w.attempt.proc.poll() is None and w.waiting_since is None
        assert w._command(Command(verb="teardown", attempt=1)) == EXIT_TORN_DOWN
        assert w.attempt.proc.poll() is not None
        sent = Conn(agent_end).recv(timeout=5)
        assert sent == Ended(state="exited", exit_code=EXIT_TORN_DOWN)
    finally:
        w.attempt.processes.stop(0.5)
        launch.remove_beacons(w.attempt.beacons)
        ours.close()
        agent_end.close()
