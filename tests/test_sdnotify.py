"""systemd's notify protocol and loop liveness (watchdog_d/sdnotify.py): the pure part with
an injected clock, ``notify`` against real datagram sockets (a path and an abstract name)."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from watchdog_d.sdnotify import Liveness, notify, supervise


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_loop_is_stale_only_past_its_own_allowance() -> None:
    clock = Clock()
    live = Liveness(clock)
    live.watch("observer", 10.0)
    live.watch("reporter", 20.0)
    assert live.stale() == {}
    clock.t += 10.0
    assert live.stale() == {}                       # exactly at the allowance: not yet
    clock.t += 0.5
    assert live.stale() == {"observer": 10.5}
    live.beat("observer")
    assert live.stale() == {}
    clock.t += 15.0
    assert live.stale() == {"observer": 15.0, "reporter": 25.5}
    assert live.stale(clock.t - 5.0) == {"reporter": 20.5}     # ``now`` may be given


def test_a_watched_loop_that_never_beats_is_stale_and_beats_of_unwatched_names_are_ignored() -> None:
    clock = Clock()
    live = Liveness(clock)
    live.watch("decide", 5.0)
    live.beat("somebody-else")
    clock.t += 6.0
    assert live.stale() == {"decide": 6.0}


def test_beats_from_many_threads_at_once() -> None:
    live = Liveness()
    names = [f"loop{i}" for i in range(8)]
    for n in names:
        live.watch(n, 60.0)

    def hammer(name: str) -> None:
        for _ in range(2000):
            live.beat(name)
            live.stale()

    threads = [threading.Thread(target=hammer, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert live.stale() == {}


def _listener(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(5)
    return s


def test_notify_to_a_socket_path(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "n.sock")
    with _listener(path) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1")
        assert s.recv(4096) == b"READY=1"
        assert notify("STATUS=jobs=2 ranks=16 coordinator=reachable")
        assert s.recv(4096) == b"STATUS=jobs=2 ranks=16 coordinator=reachable"


def test_notify_to_an_abstract_socket(monkeypatch) -> None:
    name = f"watchdog-d-test-{os.getpid()}"
    with _listener("\0" + name) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1")
        assert s.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "/nonexistent/dir/notify.sock"])
def test_notify_without_a_usable_socket_is_a_quiet_no_op(monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_supervise_pings_while_live_stops_when_a_loop_stalls_and_says_so(capsys) -> None:
    clock = Clock()
    live = Liveness(clock)
    live.watch("observer", 10.0)
    sent: list[str] = []
    advance = iter([1.0, 1.0, 9.0, 1.0, 1.0])    # seconds that pass at each wait

    class Ticks(threading.Event):                # supervise's wait: the clock moves instead
        def wait(self, timeout: float | None = None) -> bool:
            step = next(advance, None)
            if step is None:
                return True                      # done
            clock.t += step
            if clock.t == 1012.0:
                live.beat("observer")            # it passes again before systemd gave up
            return False

    supervise(live, Ticks(), lambda: "jobs=1", status_s=5.0, send=lambda s: sent.append(s) or True)
    assert sent == [
        "WATCHDOG=1", "STATUS=jobs=1",           # t=1000
        "WATCHDOG=1",                            # t=1001
        "WATCHDOG=1",                            # t=1002: 2 s since the watch
        "STATUS=stalled=observer jobs=1",        # t=1011: 11 s > 10 s, no ping, said at once
        "WATCHDOG=1",                            # t=1012: it beat, pings resume
        "WATCHDOG=1",                            # t=1013
    ]
    err = capsys.readouterr().err
    assert err.count("loop_stalled loop=observer silent_s=11.0 allowed_s=10") == 1
    assert err.count("loop_recovered loop=observer") == 1


def test_a_status_that_raises_does_not_stop_the_pings() -> None:
    sent: list[str] = []
    done = threading.Event()
    done.set()

    def broken() -> str:
        raise KeyError("x")

    supervise(Liveness(), done, broken, send=lambda s: sent.append(s) or True)
    assert sent == ["WATCHDOG=1", "STATUS=status_error=KeyError"]
