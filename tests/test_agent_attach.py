"""A wrapper (re)attaching to its agent (watchdog_d/agent/wrappers.py): a command that
comes while it waits for Registered is held until after it; a connection that ends while
the wrapper lives on is no exit of the job."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from watchdog_d.agent.daemon import Agent, LocalJob
from watchdog_d.config import Config
from watchdog_d.core.model import JobSpec
from watchdog_d.proto import watchdog_pb2 as pb
from watchdog_d.proto.local import Command, Register, Registered
from watchdog_d.proto.localsock import Conn


def _agent(tmp_path: Path) -> Agent:
    cfg = Config(coordinator="127.0.0.1:9", node_id="n1", state_dir=str(tmp_path),
                 socket=str(tmp_path / "agent.sock"))
    return Agent(cfg)


def _until(cond, what: str, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_command_during_registration_comes_after_registered(tmp_path: Path) -> None:
    # the agent restarted; the coordinator's dump_stacks, queued meanwhile, arrives on the
    # new stream while the reattaching wrapper waits for Registered (the owner check)
    agent = _agent(tmp_path)
    wrapper_end, agent_end = socket.socketpair()
    register = Register(spec=JobSpec(job_id="j"), launcher_pid=os.getpid())
    handled: list = []
    t = threading.Thread(target=lambda: handled.append(
        agent._handle(Conn(agent_end), 0, register, None, os.getpid())), daemon=True)
    try:
        t.start()
        _until(lambda: "j" in agent.jobs, "the registration never reached the job table")
        agent._deliver(pb.Command(job_id="j", verb="dump_stacks", attempt=0))
        agent._deliver(pb.Command(job_id="j", verb="teardown", attempt=0))
        agent.jobs["j"].settled.set()      # the coordinator's word on the owner
        t.join(5)
        wrapper = Conn(wrapper_end)
        first, second, third = (wrapper.recv(timeout=2.0) for _ in range(3))
        assert isinstance(first, Registered), first
        assert isinstance(second, Command) and second.verb == "dump_stacks"
        assert isinstance(third, Command) and third.verb == "teardown"
        assert handled and handled[0] is agent.jobs["j"] and not agent.jobs["j"].held
    finally:
        agent.uplink.close()
        wrapper_end.close()
        agent_end.close()


def _detached(tmp_path: Path, wrapper: psutil.Process | None) -> tuple[str, int]:
    """The job's state and exit code in the agent's last report before it forgot the job."""
    agent = _agent(tmp_path)
    wrapper_end, agent_end = socket.socketpair()
    job = LocalJob(spec=JobSpec(job_id="j"), conn=Conn(agent_end), uid=0, registered=True,
                   wrapper=wrapper)
    agent.jobs["j"] = job
    try:
        agent._detach(job)
    finally:
        agent.uplink.close()
        wrapper_end.close()
        agent_end.close()
    assert "j" not in agent.jobs
    assert agent._latest is not None
    (part,) = agent._latest.jobs
    return part.state, part.exit_code


def test_a_living_wrapper_that_lost_its_connection_is_no_exit(tmp_path: Path) -> None:
    # (it reattaches within a second; meanwhile the job is unknown here, as after an
    # agent restart, never "exited 1": that would tear the job down everywhere)
    assert _detached(tmp_path, psutil.Process(os.getpid())) == ("running", 0)


def test_a_wrapper_that_died_mid_job_is_an_exit(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = psutil.Process(gone.pid)
    gone.wait()
    assert _detached(tmp_path, proc) == ("exited", 1)
    assert _detached(tmp_path, None) == ("exited", 1)
