"""Per-rank log capture: the console stays as it was, and one size-rotated file per rank.

    python -m watchdog_d.rank.tee --log PATH --max-bytes N --backups K

reads the rank's stdout from fd 0 and its stderr from fd 3, copies them unchanged to
fd 4 (the original stdout) and fd 5 (the original stderr), and appends both, in arrival
order, to PATH. It outlives the rank on purpose: it ignores SIGTERM/SIGINT/SIGHUP/SIGPIPE
and exits only when both pipes reach EOF, i.e. when the rank and every child that
inherited its fds are gone, so whatever a SIGKILLed rank wrote still reaches the file.

``start_tee()`` does the fd juggling in the rank. This module is stdlib-only and is run
as a script (``python -I -S .../tee.py``) so the tee imports neither the package nor the
job's site hooks.
"""
from __future__ import annotations

import os
import select
import signal
import stat
import sys
import time
TYPE_CHECKING = False                    # typing costs start-up time (mypy knows this name)
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence

READ_SIZE = 64 << 10
MIN_GAP_S = 0.002            # a busy rank: at most ~500 reads a second (see run())
CONSOLE_STALL_S = 30.0       # a console that accepts nothing for this long loses that chunk


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, f"watchdog-d tee: {text}\n".encode())
    except OSError:
        pass


class Console:
    """One console fd. A dead console (EPIPE, closed terminal) is dropped; the file goes on."""

    def __init__(self, fd: int):
        self.fd = fd
        self.dead = fd < 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        stalled_since = 0.0
        # bounded: each pass writes >= 1 byte, or waits <= 1 s for at most CONSOLE_STALL_S
        while view and not self.dead:
            try:
                view = view[os.write(self.fd, view):]
                stalled_since = 0.0
            except BlockingIOError:      # someone set O_NONBLOCK on the shared terminal
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > CONSOLE_STALL_S:
                    return
                select.select([], [self.fd], [], 1.0)
            except OSError:
                self.dead = True


class RotatingFile:
    """Write-through, never above max_bytes; rotates at a newline when one fits. Never raises."""

    def __init__(self, path: str, max_bytes: int, backups: int, warn_fd: int = -1):
        self.path, self.max_bytes, self.backups, self.warn_fd = path, max_bytes, backups, warn_fd
        self.fd, self.size, self.at_bol = -1, 0, True
        self.failing = False
        self.lost = 0                    # bytes not written while failing
        self._open()

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                self.max_bytes = 0       # /dev/null, a FIFO...: never rename a device node
            self.size, self.at_bol = st.st_size, True
            return True
        except OSError as e:
            self._failed(e)
            return False

    def _failed(self, e: OSError) -> None:
        if not self.failing:
            self.failing = True
            _say(self.warn_fd, f"writing {self.path} failed ({e.strerror}); the console copy goes on")

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = -1
        try:
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    try:
                        os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                    except FileNotFoundError:
                        pass
                os.replace(self.path, f"{self.path}.1")
            else:
                os.unlink(self.path)     # no backups: a reader holding it open still drains it
        except FileNotFoundError:
            pass                         # deleted under us: just start a new one
        except OSError as e:
            self._failed(e)
        self._open()

    def write(self, data: bytes) -> None:
        start, end = 0, len(data)
        # bounded: each pass writes >= 1 byte or rotates (and a fresh file has room)
        for _ in range(2 * end + 4):
            if start >= end:
                return
            if self.fd < 0 and not self._open():
                break
            n = end - start
            if 0 < self.max_bytes < self.size + n:
                room = self.max_bytes - self.size
                cut = data.rfind(b"\n", start, start + room) + 1 if room > 0 else 0
                if cut > 0:
                    n = cut - start              # up to the last newline that fits
                elif room <= 0 or (self.at_bol and self.size > 0):
                    self._rotate()               # the next line starts in a fresh file
                    continue
                else:
                    n = room                     # mid-line, or a line longer than a file: split
            if not self._write_all(data, start, start + n):
                break
            start += n
            self.at_bol = data[start - 1] == 10
        self.lost += end - start

    def _write_all(self, data: bytes, a: int, b: int) -> bool:
        view = memoryview(data)[a:b]
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:             # disk full, I/O error: keep the console going
            self._failed(e)
            try:
                self.size = os.fstat(self.fd).st_size
            except OSError:
                pass
            return False
        self.size += b - a
        if self.failing:
            self.failing = False
            _say(self.warn_fd, f"writing {self.path} works again; {self.lost} bytes are missing from it")
            self.lost = 0
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def run(inputs: dict[int, Console], sink: RotatingFile, server: object = None) -> None:
    """Copy until every input is at EOF (the loop ends because pipes end). ``server``: a
    listening unix socket that hands the consoles to the job's ranks (see start_tee)."""
    poller = select.poll()
    for fd in inputs:
        poller.register(fd, select.POLLIN)
    if server is not None:
        poller.register(server.fileno(), select.POLLIN)
    live = set(inputs)
    last, busy, full = 0.0, False, False
    while live:
        # A rank making thousands of small writes a second would cost one wake-up each
        # (~20% of a core for 100-byte lines at 1 MB/s). Woken again within MIN_GAP_S, the
        # tee turns to timed reads: sleep MIN_GAP_S, take all that gathered in the pipe,
        # until a round finds nothing. Latency stays <= MIN_GAP_S; nothing waits in here.
        if busy:
            if not full:                 # a full read: more is waiting, no pause
                time.sleep(MIN_GAP_S)
            events = poller.poll(0)
            busy = bool(events)
        else:
            events = poller.poll()
            now = time.monotonic()
            busy, last = now - last < MIN_GAP_S, now
        full = False
        for fd, _ in events:
            if server is not None and fd == server.fileno():
                _hand_console(server, [c.fd for c in inputs.values()])
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                live.discard(fd)
                continue
            full = full or len(data) == READ_SIZE
            inputs[fd].write(data)       # console first: it is what a person watches
            sink.write(data)


OPTIONS = {"--log": "", "--max-bytes": "", "--backups": "", "--stdout-fd": "0",
           "--stderr-fd": "3", "--console-out-fd": "4", "--console-err-fd": "5", "--ready-fd": "-1",
           "--console-sock": ""}
_TEXT = ("--log", "--console-sock")
CONSOLE_SOCK_ENV = "WATCHDOG_D_CONSOLE_SOCK"   # set by the wrapper when it tees the launcher
USAGE = ("usage: python -m watchdog_d.rank.tee --log PATH --max-bytes N (0: never rotate) --backups K\n"
         "       [--stdout-fd 0] [--stderr-fd 3] [--console-out-fd 4] [--console-err-fd 5]\n"
         "       [--ready-fd N (one byte written there once the tee runs)]\n")


def _parse(argv: Sequence[str]) -> dict[str, str] | None:
    """--name value pairs (argparse alone would triple the tee's start-up time)."""
    opts = dict(OPTIONS)
    args = list(argv)
    if len(args) % 2:
        return None
    for name, value in zip(args[::2], args[1::2]):
        if name not in opts:
            return None
        opts[name] = value
    if not opts["--log"] or not all(opts[k].lstrip("-").isdigit() for k in opts if k not in _TEXT):
        return None
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    o = _parse(sys.argv[1:] if argv is None else argv)
    if o is None:
        sys.stderr.write(USAGE)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    n = {k: int(v) for k, v in o.items() if k not in _TEXT}
    server = _listen(o["--console-sock"]) if o["--console-sock"] else None
    sink = RotatingFile(o["--log"], n["--max-bytes"], max(0, n["--backups"]), warn_fd=n["--console-err-fd"])
    if n["--ready-fd"] >= 0:
        _say_ready(n["--ready-fd"])
    run({n["--stdout-fd"]: Console(n["--console-out-fd"]), n["--stderr-fd"]: Console(n["--console-err-fd"])},
        sink, server)
    sink.close()
    return 0


# -- the launcher's tee ---------------------------------------------------------------
# The wrapper tees the launcher (torchrun) into launcher.log. Its ranks inherit the
# launcher's stdout/stderr, i.e. that tee's pipes; their own tee must write to the real
# console instead, or every rank line would land in launcher.log too. torchrun closes
# every other fd before it starts a worker, so the launcher's tee hands the consoles
# over a unix socket (abstract name, this user only: SO_PEERCRED) to each rank's
# start_tee. A rank that cannot get them writes where it would have (launcher.log).

def _listen(name: str):   # -> socket.socket | None
    import socket
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.bind("\0" + name)
        s.listen(64)
        return s
    except OSError:
        return None


def _hand_console(server, fds: list[int]) -> None:
    import socket
    import struct
    try:
        conn, _ = server.accept()
    except OSError:
        return
    try:
        conn.settimeout(1.0)
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid == os.getuid():
            socket.send_fds(conn, [b"+"], fds)
    except OSError:
        pass
    finally:
        conn.close()


def _console_from(name: str) -> tuple[int, int] | None:
    """The real console (stdout, stderr) from the launcher's tee, or None."""
    import fcntl
    import socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(2.0)
            s.connect("\0" + name)
            _, fds, _, _ = socket.recv_fds(s, 1, 2)
    except (OSError, ValueError):
        return None
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    high = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds)
    for fd in fds:
        os.close(fd)
    return high[0], high[1]


def _say_ready(fd: int) -> None:
    try:
        os.write(fd, b"+")
        os.close(fd)
    except OSError:
        pass


def _dup_high(fd: int) -> int:
    """A close-on-exec copy of fd at >= 3 (or of /dev/null when fd is closed)."""
    import fcntl
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        high = fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(null)
        return high


def spawn(log_path: str, max_bytes: int, backups: int, r_out: int, r_err: int, con_out: int,
          con_err: int, r_ready: int, w_ready: int, opened: list[int], ready_timeout: float,
          extra: tuple[str, ...] = ()) -> "subprocess.Popen[bytes]":
    """Start this program as a tee reading ``r_out`` / ``r_err`` and wait until it says it
    runs; ``w_ready`` is closed (and taken out of ``opened``) here. OSError if it did not."""
    import subprocess                    # not in the tee itself: it costs start-up time
    # -I: neither PYTHONPATH nor the job's sitecustomize nor watchdog_d/ shadows the stdlib
    # (but a PYTHONHOME the interpreter may need is kept)
    flags = ["-s", "-S"] if os.environ.get("PYTHONHOME") else ["-I", "-S"]
    cmd = [sys.executable or "python3", *flags, os.path.abspath(__file__), "--log", log_path,
           "--max-bytes", str(max_bytes), "--backups", str(backups), "--stdout-fd", "0",
           "--stderr-fd", str(r_err), "--console-out-fd", str(con_out), "--console-err-fd", str(con_err),
           "--ready-fd", str(w_ready), *extra]
    # own session: a group kill of the job or a terminal hang-up does not reach it;
    # it ends by itself when the last writer is gone
    proc = subprocess.Popen(cmd, stdin=r_out, stdout=subprocess.DEVNULL, stderr=con_err,
                            pass_fds=(r_err, w_ready, con_out, con_err), close_fds=True,
                            start_new_session=True)
    os.close(w_ready)
    opened.remove(w_ready)
    ok = select.select([r_ready], [], [], ready_timeout)[0] and os.read(r_ready, 1) == b"+"
    if not ok:
        proc.kill()
        proc.wait()
        raise OSError(f"watchdog-d tee did not start (exit {proc.returncode}); output not captured")
    return proc


def start_tee(log_path: str | os.PathLike[str], max_bytes: int, backups: int,
              ready_timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Route this process's fds 1 and 2 through a tee into ``log_path``. Call early.

    Returns once the tee runs. If it cannot start, raises OSError with fds 1 and 2 left
    as they were (the caller goes on without capture rather than write into a dead pipe).
    """
    log_path = os.fspath(log_path)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()           # what was printed before goes out first
        except (OSError, ValueError):
            pass
    # every fd >= 3 so it cannot land on 0-2, all close-on-exec except what we pass
    opened: list[int] = []
    try:
        for _ in range(3):
            r, w = os.pipe()
            opened += [_dup_high(r), _dup_high(w)]
            os.close(r)
            os.close(w)
        handed = _console_from(os.environ[CONSOLE_SOCK_ENV]) if os.environ.get(CONSOLE_SOCK_ENV) else None
        opened += list(handed) if handed else [_dup_high(1), _dup_high(2)]
        r_out, w_out, r_err, w_err, r_ready, w_ready, con_out, con_err = opened
        proc = spawn(log_path, max_bytes, backups, r_out, r_err, con_out, con_err, r_ready, w_ready,
                     opened, ready_timeout)
        os.dup2(w_out, 1)
        os.dup2(w_err, 2)
    finally:
        for fd in opened:
            os.close(fd)
    return proc


if __name__ == "__main__":
    sys.exit(main())
