"""The agent's locks (watchdog_d/agent/daemon.py): a command is never held up by log reading."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from watchdog_d.agent.daemon import Agent, LocalJob
from watchdog_d.config import Config
from watchdog_d.core.model import JobSpec
from watchdog_d.proto import watchdog_pb2 as pb
from watchdog_d.proto.local import Command
from watchdog_d.proto.localsock import Conn


class SlowLogs:
    """A job's logs whose reading blocks (a burst of output, a slow or hung disk)."""

    def __init__(self) -> None:
        self.reading, self.release = threading.Event(), threading.Event()
        self.quiet, self.found = False, 0          # (as AttemptLogs)

    def poll(self) -> None:
        self.reading.set()
        self.release.wait(10)

    def view(self, rank: int):  # type: ignore[no-untyped-def]
        return (), 0, ""


def test_a_command_is_delivered_while_the_logs_are_being_read(tmp_path: Path) -> None:
    cfg = Config(coordinator="127.0.0.1:9", node_id="n1", state_dir=str(tmp_path),
                 socket=str(tmp_path / "agent.sock"))
    agent = Agent(cfg)
    wrapper_end, agent_end = socket.socketpair()
    logs = SlowLogs()
    job = LocalJob(spec=JobSpec(job_id="j"), conn=Conn(agent_end), uid=0, registered=True)
    job.logs = logs   # type: ignore[assignment]
    agent.jobs["j"] = job
    observer = threading.Thread(target=agent.observe_now, daemon=True)
    try:
        observer.start()
        assert logs.reading.wait(5), "the observer never read the logs"
        began = time.monotonic()
        deliver = threading.Thread(target=agent._deliver, daemon=True,
                                   args=(pb.Command(job_id="j", verb="teardown", attempt=0),))
        deliver.start()
        deliver.join(2.0)
        assert not deliver.is_alive(), "the command waited for the log reading"
        got = Conn(wrapper_end).recv(timeout=2.0)
        assert isinstance(got, Command) and got.verb == "teardown"
        assert time.monotonic() - began < 2.0
    finally:
        logs.release.set()
        observer.join(5)
        agent.uplink.close()
        wrapper_end.close()
        agent_end.close()
    assert agent._latest is not None and agent._latest.jobs[0].spec.job_id == "j"
