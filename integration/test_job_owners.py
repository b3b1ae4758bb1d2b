"""Many users on one node: a job belongs to the uid that registered it first, on every
node. Two users made by the test (as root) share the agents' socket group; the second
picks the first one's job id, on the job's node and on another node, and is refused with
a clear error while the owner's job runs on untouched."""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster import Cluster
from harness import TORCHRUN, WATCHDOG, free_port, kill_job, train_env

GROUP, USERS = "wd-jobs", ("wd-alice", "wd-bob")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "groupadd", "setpriv")),
    reason="needs root, useradd/groupadd and setpriv to make two users")


@pytest.fixture(scope="module")
def users():
    made = []
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", GROUP], check=True, capture_output=True)
        made.append(("group", GROUP))
    for name in USERS:
        if subprocess.run(["id", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "-g", GROUP, name], check=True, capture_output=True)
            made.append(("user", name))
    opened = _let_others_reach(os.path.realpath(sys.executable), str(Path(__file__).parents[1]))
    try:
        yield {name: pwd.getpwnam(name).pw_uid for name in USERS}
    finally:
        for path, mode in opened:
            os.chmod(path, mode)
    for kind, name in reversed(made):
        subprocess.run(["userdel" if kind == "user" else "groupdel", name], capture_output=True)


def _let_others_reach(*paths: str) -> list[tuple[str, int]]:
    """The users run this interpreter and this tree: a directory on the way that others
    cannot enter (a 0700 home holding pyenv's Python) gets o+x (enter, not list) for the
    test, and its mode back after. Returns what was changed."""
    opened = []
    for path in paths:
        for d in [*reversed(Path(path).parents)]:
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
                opened.append((str(d), stat.S_IMODE(mode)))
    return opened


@pytest.fixture
def shared(users):
    """A directory every user can enter; the agents' sockets in it, group wd-jobs."""
    d = Path(tempfile.mkdtemp(prefix="wd-owners-"))
    os.chmod(d, 0o755)
    cluster = Cluster(d, ["n0", "n1"], listen=f"127.0.0.1:{free_port()}")
    gid = grp.getgrnam(GROUP).gr_gid
    for sock in cluster.sockets.values():
        os.chown(sock, 0, gid)
    try:
        yield d, cluster
    finally:
        cluster.stop()
        shutil.rmtree(d, ignore_errors=True)


def _as(user: str, d: Path, job: str, sock: str, command: list[str], **env) -> subprocess.Popen:
    home = d / f"home-{user}"
    home.mkdir(exist_ok=True)
    shutil.chown(home, user, GROUP)
    path = d / f"{user}-{job}-{time.monotonic_ns()}.log"
    p = subprocess.Popen(
        ["setpriv", "--reuid", user, "--regid", GROUP, "--init-groups", *WATCHDOG, "run",
         "--agent-socket", sock, "--job-id", job, "--state-dir", str(home / "state"), "--grace", "3",
         "--", *command],
        env=train_env(HOME=home, TMPDIR=home, **env), stdout=open(path, "wb"),
        stderr=subprocess.STDOUT, cwd=home)
    p.log_path = path            # type: ignore[attr-defined]
    return p


def _log(p: subprocess.Popen) -> str:
    return p.log_path.read_text(errors="replace")         # type: ignore[attr-defined]


def _status(cluster: Cluster) -> dict:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--coordinator", cluster.address],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def test_another_users_job_id_is_refused_on_every_node_and_the_owner_runs_on(shared, users):
    d, cluster = shared
    job = f"exp-{free_port()}"
    alice = _as("wd-alice", d, job, cluster.sockets["n0"],
                [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "watchdog_d.demo.train"],
                WD_STEPS=250)
    try:
        deadline = time.monotonic() + 90
        while "step 10 " not in _log(alice):
            assert time.monotonic() < deadline and alice.poll() is None, _log(alice)
            time.sleep(0.2)
        owner = next(j for j in _status(cluster)["jobs"] if j["job"] == job)["owner_uid"]
        assert owner == users["wd-alice"]
        exit3 = ["python3", "-c", "import sys; sys.exit(3)"]
        # bob on another node, with alice's job id: the coordinator says no, before the launch
        bob_n1 = _as("wd-bob", d, job, cluster.sockets["n1"], exit3)
        assert bob_n1.wait(timeout=30) == 2, _log(bob_n1)
        assert f"belongs to uid {users['wd-alice']}, not to uid {users['wd-bob']}" in _log(bob_n1)
        # bob on alice's node: the agent says no
        bob_n0 = _as("wd-bob", d, job, cluster.sockets["n0"], exit3)
        assert bob_n0.wait(timeout=30) == 2, _log(bob_n0)
        assert f"belongs to uid {users['wd-alice']} on this node" in _log(bob_n0)
        # bob may not drill alice's job either (his uid from the socket, not from him)
        drill = subprocess.run(["setpriv", "--reuid", "wd-bob", "--regid", GROUP, "--init-groups",
                                *WATCHDOG, "drill", "--job", job, "kill", "--rank", "1",
                                "--agent-socket", cluster.sockets["n0"]],
                               capture_output=True, text=True, timeout=60, env=train_env(HOME=d),
                               cwd=d)
        assert drill.returncode == 2, drill.stdout + drill.stderr
        assert f"drill refused: the job belongs to uid {users['wd-alice']}" in drill.stderr, drill.stderr
        # alice twice on one node: one wrapper a job
        again = _as("wd-alice", d, job, cluster.sockets["n0"], exit3)
        assert again.wait(timeout=30) == 2, _log(again)
        assert "already runs on this node" in _log(again)
        # the owner's job was never touched: it ends by itself, with nothing but its success
        assert alice.wait(timeout=120) == 0, _log(alice)
        out = subprocess.run([*WATCHDOG, "events", "--json", "--job", job, "--state-dir",
                              str(cluster.state_dir)], capture_output=True, text=True, timeout=30)
        kinds = [json.loads(line)["kind"] for line in out.stdout.splitlines() if line.strip()]
        assert kinds == ["job_succeeded"], kinds
        assert "job_refused" in cluster.log("coordinator")
        assert cluster.log("n0").count("wrapper_refused") == 2, cluster.log("n0")
    finally:
        for p in (alice,):
            if p.poll() is None:
                p.kill()
        kill_job(job)
