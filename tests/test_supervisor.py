"""The wrapper's obedience (watchdog_d/wrapper/supervisor.py), on a real launched process."""
from __future__ import annotations

import queue
import signal
import socket
import sys
import threading
from pathlib import Path

from watchdog_d.config import Config
from watchdog_d.proto.local import Command, Ended
from watchdog_d.proto.localsock import Conn
from watchdog_d.wrapper import launch
from watchdog_d.wrapper.supervisor import EXIT_TORN_DOWN, USER_SIGNAL, Wrapper


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


def _wrapper(tmp_path: Path) -> Wrapper:
    ours, _ = socket.socketpair()
    return Wrapper(Config(job_id="sig", state_dir=str(tmp_path)), ["true"], Conn(ours), "node-a")


def test_the_signal_handler_never_waits_for_the_lock_of_the_get_it_interrupted(tmp_path: Path) -> None:
    """A signal runs its handler between two bytecodes of the main thread, possibly inside
    the inbox's get() while that holds the queue's lock: the handler's put must not need
    it (queue.Queue's would deadlock). Simulated by calling the handler at every Python
    line the get() executes, from a tracer."""
    w = _wrapper(tmp_path)
    fired, got = [], []

    def tracer(frame, event, arg):
        mutex = getattr(w.inbox, "mutex", None)    # queue.Queue's; SimpleQueue is C
        if event == "line" and frame.f_code.co_name == "get" and not fired \
                and (mutex is None or mutex.locked()):
            fired.append(frame.f_lineno)
            w._on_signal(signal.SIGINT, None)
        return tracer

    def main() -> None:
        sys.settrace(tracer)
        try:
            got.append(w.inbox.get(timeout=1.0))
        except queue.Empty:
            got.append("empty")
        finally:
            sys.settrace(None)

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(5.0)
    assert not t.is_alive(), f"the handler deadlocked inside get() (line {fired})"
    assert w.user_signal == signal.SIGINT or not fired


def test_a_real_signal_wakes_a_blocked_get(tmp_path: Path) -> None:
    w = _wrapper(tmp_path)
    old = signal.signal(signal.SIGALRM, w._on_signal)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert w.inbox.get(timeout=5.0) == USER_SIGNAL
        assert w.user_signal == signal.SIGALRM
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_recv_on_a_connection_closed_by_another_thread_is_eof() -> None:
    """The wrapper closes its agent connection at the end while its reader thread may be
    about to read: that is EOF, not a traceback on the user's terminal."""
    a, b = socket.socketpair()
    conn = Conn(a)
    conn.close()
    assert conn.recv(timeout=0.1) is None and conn.closed
    b.close()
