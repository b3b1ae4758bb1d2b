"""A single-member etcd of the test's own: its data dir, free loopback ports (client and
peer) and its log under one temp directory. It can be stopped, killed, paused and started
again on the same data and ports ("etcd down for 30 s, then back").

Debian's ``etcd-server`` (3.4) is installed when the ``etcd`` binary is missing (as root);
the package must not leave a system etcd running on 2379, so services are kept from
starting while it installs. Where it cannot be installed, the fixture skips with the reason.
Every wait here is bounded in time.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import free_port

POLICY_RC = Path("/usr/sbin/policy-rc.d")


def install() -> str:
    """"" when etcd is there (installed now if need be), else why it cannot be."""
    if shutil.which("etcd"):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "etcd is not installed and cannot be here (needs root and apt-get)"
    # invoke-rc.d asks policy-rc.d before starting a service: 101 means "not now". Put one
    # there only while installing, where the machine has none of its own.
    own_policy = not POLICY_RC.exists()
    if own_policy:
        POLICY_RC.write_text("#!/bin/sh\n# watchdog-d tests: no services while installing\nexit 101\n")
        POLICY_RC.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "etcd-server"]
    try:
        if subprocess.run(cmd, capture_output=True, timeout=600, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=env)
            subprocess.run(cmd, capture_output=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if own_policy:
            POLICY_RC.unlink(missing_ok=True)
    # a policy-rc.d of the machine's own may have let it start: stop what we just installed
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "disable", "--now", "etcd"], capture_output=True, timeout=60)
    elif Path("/etc/init.d/etcd").exists():
        subprocess.run(["/etc/init.d/etcd", "stop"], capture_output=True, timeout=60)
    return "" if shutil.which("etcd") else "etcd could not be installed (apt-get install etcd-server failed)"


class Etcd:
    """One etcd process on 127.0.0.1; ``url`` is "127.0.0.1:PORT" (the client port)."""

    START_TIMEOUT_S = 20.0
    STOP_TIMEOUT_S = 10.0

    def __init__(self, root: Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="wd-etcd-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "etcd.log"
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def _argv(self) -> list[str]:
        client, peer = f"http://{self.url}", f"http://127.0.0.1:{self.peer_port}"
        # --initial-cluster* matter on the first start only: later starts read the data dir
        return ["etcd", "--name", "wd", "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"wd={peer}", "--initial-cluster-state", "new",
                "--initial-cluster-token", f"wd-{self.client_port}",
                "--logger", "zap", "--log-outputs", "stderr"]

    def start(self) -> None:
        """Start (again: same data dir and ports) and wait until it is healthy."""
        if self.running():
            return
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd was not healthy in {self.START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL past STOP_TIMEOUT_S)."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGCONT)   # a paused etcd would hold SIGTERM pending
        self.proc.terminate()
        try:
            self.proc.wait(timeout=self.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if not self.running():
            return
        self.proc.kill()
        self.proc.wait(timeout=self.STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung etcd)."""
        if self.running():
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        """Kill it and remove its directory (the log goes too: read log_tail() before)."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def etcd(tmp_path):
    """A running single-member etcd; its data and log under the test's tmp_path."""
    why = install()
    if why:
        print(f"etcd fixture: {why}")
        pytest.skip(why)
    server = Etcd(tmp_path / "etcd")
    try:
        yield server
    finally:
        server.kill()   # pytest keeps tmp_path (and so etcd.log) for a look afterwards
