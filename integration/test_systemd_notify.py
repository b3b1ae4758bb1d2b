"""The daemons speak systemd's notify protocol (watchdog_d/sdnotify.py), as real processes
with NOTIFY_SOCKET on a datagram socket of the test's: READY=1 once they serve, WATCHDOG=1
every second, STATUS= lines, STOPPING=1 at SIGTERM; and a wedged loop stops the pings
(a launcher patches one loop to block forever a few seconds in, as a real wedge would)."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from harness import WATCHDOG, free_port, train_env

WEDGE_AFTER_S = 3.0
ALLOWANCE_S = 2.0         # the launcher's, for the wedged loop (the daemons' own are 10 s and more)


class Listener:
    """What systemd would hear: (monotonic time, message) for each datagram. When READY=1
    arrives, ``probe`` is run at once: does the daemon answer already?"""

    def __init__(self, path: Path, probe=None):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.probe = probe
        self.ready_answered: bool | None = None
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            if msg == "READY=1" and self.probe is not None:
                self.ready_answered = self.probe()
            self.got.append((time.monotonic(), msg))

    def times(self, msg: str) -> list[float]:
        return [t for t, m in list(self.got) if m == msg]

    def statuses(self) -> list[str]:
        return [m[len("STATUS="):] for _, m in list(self.got) if m.startswith("STATUS=")]

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"no {what} within {timeout} s; heard {self.got[-10:]}"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _answers_tcp(port: int):
    def probe() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    return probe


def _answers_unix(path: Path):
    def probe() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(str(path))
                return True
            except OSError:
                return False
    return probe


def _spawn(args: list[str], tmp: Path, name: str, notify: Listener | None,
           launcher: str | None = None) -> subprocess.Popen:
    env = train_env()
    env.pop("NOTIFY_SOCKET", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    cmd = [sys.executable, "-c", launcher, *args] if launcher else [*WATCHDOG, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"{name}.err", "wb"))


def _end(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _coordinator_args(tmp: Path, port: int) -> list[str]:
    return ["coordinator", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / "coord")]


def _agent_args(tmp: Path, port: int) -> list[str]:
    return ["agent", "--coordinator", f"127.0.0.1:{port}", "--node-id", "n1",
            "--socket", str(tmp / "agent.sock"), "--state-dir", str(tmp / "n1")]


def _serves_then_stops(proc: subprocess.Popen, heard: Listener, status: str) -> None:
    heard.wait_for(lambda: heard.times("READY=1"), 30, "READY=1")
    assert heard.ready_answered, "READY=1 came before the daemon answered"
    ready = heard.times("READY=1")[0]
    heard.wait_for(lambda: len(heard.times("WATCHDOG=1")) >= 3, 10, "three WATCHDOG=1")
    pings = heard.times("WATCHDOG=1")
    assert pings[0] >= ready
    assert all(0.5 < b - a < 2.0 for a, b in zip(pings, pings[1:])), pings
    heard.wait_for(lambda: any(re.fullmatch(status, s) for s in heard.statuses()), 10,
                   f"STATUS={status}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert heard.got[-1][1] == "STOPPING=1" or "STOPPING=1" in [m for _, m in heard.got]


def test_the_coordinator_tells_systemd_when_it_serves_and_that_it_lives(tmp_path: Path) -> None:
    port = free_port()
    heard = Listener(tmp_path / "n.sock", probe=_answers_tcp(port))
    proc = _spawn(_coordinator_args(tmp_path, port), tmp_path, "coordinator", heard)
    try:
        _serves_then_stops(proc, heard, r"jobs=0 nodes=0 last_verdict=none")
    finally:
        _end(proc)
        heard.close()


def test_the_agent_tells_systemd_when_it_serves_and_that_it_lives(tmp_path: Path) -> None:
    port = free_port()
    coordinator = _spawn(_coordinator_args(tmp_path, port), tmp_path, "coordinator", None)
    heard = Listener(tmp_path / "n.sock", probe=_answers_unix(tmp_path / "agent.sock"))
    agent = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        agent = _spawn(_agent_args(tmp_path, port), tmp_path, "agent", heard)
        _serves_then_stops(agent, heard, r"jobs=0 ranks=0 coordinator=reachable")
    finally:
        _end(*([agent] if agent else []), coordinator)
        heard.close()


# the launcher: the daemon's own allowance made short, one loop made to block forever
# WEDGE_AFTER_S into the process's life (it says when, on the notify socket)
LAUNCHER = """
import sys, threading, time
from watchdog_d import sdnotify
{patch}
began = time.monotonic()
def wedging(orig, thread_name=None):
    def wrapped(*args, **kwargs):
        if time.monotonic() - began > {after} and (
                thread_name is None or threading.current_thread().name == thread_name):
            sdnotify.notify("X_WEDGED=1")
            time.sleep(3600)
        return orig(*args, **kwargs)
    return wrapped
{wedge}
from watchdog_d.cli import main
sys.exit(main(sys.argv[1:]))
"""

WEDGES = {
    # the observer thread blocks (the Agent's other threads go on)
    "agent": ("import watchdog_d.agent.daemon as d\nd.LOOP_FLOOR_S = {allowance}",
              "d.Agent.observe_now = wedging(d.Agent.observe_now, 'agent-observer')",
              "observer"),
    # a verdict pass that never ends blocks the whole event loop, gRPC serving with it
    "coordinator": ("import watchdog_d.coordinator.server as s\ns.DECIDE_ALLOWANCE_S = {allowance}\n"
                    "import watchdog_d.core.state as st",
                    "st.Cluster.evaluate = wedging(st.Cluster.evaluate)",
                    "decide"),
}


@pytest.mark.parametrize("daemon", ["agent", "coordinator"])
def test_a_wedged_loop_stops_the_pings_and_says_which(tmp_path: Path, daemon: str) -> None:
    patch, wedge, loop = WEDGES[daemon]
    launcher = LAUNCHER.format(patch=patch.format(allowance=ALLOWANCE_S), wedge=wedge,
                               after=WEDGE_AFTER_S)
    port = free_port()      # the agent's coordinator is away: it must go on pinging regardless
    args = _agent_args(tmp_path, port) if daemon == "agent" else _coordinator_args(tmp_path, port)
    heard = Listener(tmp_path / "n.sock")
    proc = _spawn(args, tmp_path, daemon, heard, launcher=launcher)
    try:
        heard.wait_for(lambda: heard.times("READY=1"), 30, "READY=1")
        heard.wait_for(lambda: heard.times("X_WEDGED=1"), 30, "the wedge")
        wedged = heard.times("X_WEDGED=1")[0]
        assert [t for t in heard.times("WATCHDOG=1") if t < wedged], "no pings before the wedge"
        # the loop beat at most once more before it blocked; pings stop past its allowance
        heard.wait_for(lambda: any(s.startswith(f"stalled={loop}") for s in heard.statuses()),
                       ALLOWANCE_S + 4, f"STATUS=stalled={loop}")
        time.sleep(3.0)
        last = heard.times("WATCHDOG=1")[-1]
        assert last <= wedged + ALLOWANCE_S + 2.0, (last - wedged, heard.got[-12:])
        assert proc.poll() is None, "the daemon went on living: systemd is the one to restart it"
        err = (tmp_path / f"{daemon}.err").read_text()
        assert err.count(f"loop_stalled loop={loop} ") == 1, err[-2000:]
    finally:
        _end(proc)
        heard.close()
