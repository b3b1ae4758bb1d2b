"""The per-rank tee, with real processes: console unchanged, file complete, rotation, signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from watchdog_d.logs.tail import Tailer
from watchdog_d.rank.tee import RotatingFile, start_tee

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# The rank: writes segments alternately to fds 1 and 2, waiting until the tee has read
# each (FIONREAD on the pipe) so the order in the file is known; the last segment is
# still in the pipe when the rank SIGKILLs itself.
RANK = r"""
import fcntl, os, signal, struct, sys, termios, time
from watchdog_d.rank.tee import start_tee
start_tee(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

def drained(fd):
    for _ in range(4000):
        if struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0] == 0:
            return
        time.sleep(0.0002)

def put(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

for fd, data in eval(sys.stdin.read()):
    put(fd, data)
    drained(fd)
put(1, b"last words, still in the pipe\n" * 500 + b"no newline")
os.kill(os.getpid(), signal.SIGKILL)
"""


def segments() -> list[tuple[int, bytes]]:
    segs: list[tuple[int, bytes]] = [(1, b"hello stdout\n"), (2, b"hello stderr\n")]
    segs += [(1 + i % 2, b"line %d from fd %d\n" % (i, 1 + i % 2)) for i in range(60)]
    segs += [(1, b"L" * (200 << 10) + b"\n"), (2, bytes(range(256)) + b"\n"), (1, b"\xff\xfe\x00 bad utf-8\n")]
    segs += [(1 + i % 2, b"after %d\n" % i) for i in range(40)]
    return segs


def log_files(log: Path) -> list[Path]:
    backups = sorted(log.parent.glob(log.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return backups + [log]


@pytest.mark.parametrize("backups", [20, 2])
def test_sigkilled_rank_console_unchanged_file_complete_and_rotated(tmp_path: Path, backups: int) -> None:
    log = tmp_path / "logs" / "rank-0.log"
    max_bytes = 64 << 10
    segs = segments()
    final = b"last words, still in the pipe\n" * 500 + b"no newline"
    proc = subprocess.run([sys.executable, "-c", RANK, str(log), str(max_bytes), str(backups)],
                          input=repr(segs).encode(), capture_output=True, env=ENV, timeout=20)
    assert proc.returncode == -signal.SIGKILL
    # run() returned only when the tee closed the console pipes: it drained and exited
    assert proc.stdout == b"".join(d for fd, d in segs if fd == 1) + final
    assert proc.stderr == b"".join(d for fd, d in segs if fd == 2)
    files = log_files(log)
    combined = b"".join(d for _, d in segs) + final
    content = b"".join(p.read_bytes() for p in files)
    assert all(p.stat().st_size <= max_bytes for p in files)
    if backups == 2:
        assert [p.name for p in files] == ["rank-0.log.2", "rank-0.log.1", "rank-0.log"]
        assert combined.endswith(content)
        return
    assert content == combined and len(files) >= 5
    for p in files[:-1]:                   # cut at a newline unless inside the 200 KiB line
        data = p.read_bytes()
        assert data.endswith(b"\n") or data.endswith(b"LLLL")
    # and the agent's side reads it all, in order, from the oldest backup on
    lines = Tailer(log).read(16 << 20, flush_partial=True)
    assert [ln.data for ln in lines] == [ln[:65536] for ln in combined.split(b"\n")]
    assert [ln.truncated for ln in lines].count(True) == 1


# one os.write per line: print() makes several writes when PYTHONUNBUFFERED is set
WAITER = r"""
import os, sys
from watchdog_d.rank.tee import start_tee
tee = start_tee(sys.argv[1], 1 << 20, 1)
os.write(1, b"tee %d\n" % tee.pid)
sys.stdin.readline()
os.write(1, b"after the signals\n")
os.write(2, b"on stderr\n")
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_signals_to_the_tee_do_not_stop_it(tmp_path: Path) -> None:
    log = tmp_path / "rank-1.log"
    p = subprocess.Popen([sys.executable, "-c", WAITER, str(log)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert p.stdout is not None and p.stdin is not None
    first = p.stdout.readline()
    tee_pid = int(first.split()[1])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        os.kill(tee_pid, sig)
    time.sleep(0.05)
    assert _state(tee_pid) not in ("Z", "X")
    out, err = p.communicate(b"go\n", timeout=10)
    assert first + out == first + b"after the signals\n" and err == b"on stderr\n"
    assert log.read_bytes() == first + b"after the signals\non stderr\n"


CHATTER = r"""
import os, sys
from watchdog_d.rank.tee import start_tee
start_tee(sys.argv[1], int(sys.argv[2]), 1)
for i in range(300):
    os.write(1, b"out %d\n" % i)
    os.write(2, b"err %d\n" % i)
"""


def test_console_gone_does_not_stop_the_file(tmp_path: Path) -> None:
    log = tmp_path / "rank-2.log"
    r, w = os.pipe()
    os.close(r)                                        # nobody reads the console: EPIPE
    try:
        proc = subprocess.run([sys.executable, "-c", CHATTER, str(log), str(1 << 20)], stdout=w,
                              stderr=subprocess.PIPE, env=ENV, timeout=20)
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert proc.stderr == b"".join(b"err %d\n" % i for i in range(300))
    text = log.read_bytes()
    assert all(b"out %d\n" % i in text and b"err %d\n" % i in text for i in range(300))


def test_file_failing_does_not_stop_the_console() -> None:
    # /dev/full: every write fails with ENOSPC (and a device is never rotated)
    proc = subprocess.run([sys.executable, "-c", CHATTER, "/dev/full", "100"], capture_output=True,
                          env=ENV, timeout=20)
    assert proc.returncode == 0
    assert proc.stdout == b"".join(b"out %d\n" % i for i in range(300))
    warning = b"watchdog-d tee: writing /dev/full failed (No space left on device); the console copy goes on\n"
    assert proc.stderr.count(warning) == 1
    assert proc.stderr.replace(warning, b"") == b"".join(b"err %d\n" % i for i in range(300))


def test_rotation_rules_in_process(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    f = RotatingFile(str(path), 20, 2)
    f.write(b"aaaa\nbbbb\ncccc\n")         # 15 bytes
    f.write(b"dddd\neeee\n")               # "dddd\n" fits (20), then rotate before "eeee"
    assert path.with_suffix(".log.1").read_bytes() == b"aaaa\nbbbb\ncccc\ndddd\n"
    assert path.read_bytes() == b"eeee\n"
    f.write(b"x" * 50 + b"\n")             # longer than a file: rotate first, then split
    f.write(b"tail\n")
    f.close()
    assert [p.read_bytes() for p in log_files(path)] == [b"x" * 20, b"x" * 20, b"x" * 10 + b"\ntail\n"]
    assert not (tmp_path / "r.log.3").exists()
    g = RotatingFile(str(tmp_path / "n.log"), 10, 0)   # no backups: replaced, not kept
    g.write(b"12345678\n12345678\n")
    g.close()
    assert sorted(os.listdir(tmp_path))[-1] == "r.log.2" and (tmp_path / "n.log").read_bytes() == b"12345678\n"


def test_module_with_the_documented_fd_layout(tmp_path: Path) -> None:
    """python -m watchdog_d.rank.tee: stdin and fd 3 in, fd 4 and fd 5 out."""
    log = tmp_path / "r.log"
    script = ('printf "out\\n" | "$0" -m watchdog_d.rank.tee --log "$1" --max-bytes 0 --backups 0 '
              '3< <(printf "err\\n") 4>&1 5>&2')
    proc = subprocess.run(["bash", "-c", script, sys.executable, str(log)], capture_output=True, env=ENV, timeout=20)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"out\n", b"err\n")
    assert sorted(log.read_bytes().splitlines()) == [b"err", b"out"]


def test_start_tee_that_cannot_start_leaves_the_fds_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    before = [os.fstat(fd) for fd in (1, 2)]
    with pytest.raises(OSError, match="did not start"):
        start_tee(tmp_path / "x.log", 1000, 1)
    after = [os.fstat(fd) for fd in (1, 2)]
    assert [(s.st_dev, s.st_ino) for s in before] == [(s.st_dev, s.st_ino) for s in after]


def test_rotation_is_always_given() -> None:
    """The tee has no rotation defaults of its own: they come from the config, via the rank."""
    from watchdog_d.rank.tee import _parse

    assert _parse(["--log", "/tmp/x.log"]) is None
    assert _parse(["--log", "/tmp/x.log", "--max-bytes", "10"]) is None
    opts = _parse(["--log", "/tmp/x.log", "--max-bytes", "10", "--backups", "2"])
    assert opts is not None and (opts["--max-bytes"], opts["--backups"]) == ("10", "2")
