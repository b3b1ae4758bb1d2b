"""Security end to end, real processes: mTLS and the bearer token between a coordinator
and its agents. Right credentials: a job's report reaches the coordinator. Wrong or
missing ones: every call is refused, the agent says why in one line (not one per retry),
backs off, and is heard again once the credentials are put right. Unreadable or non-PEM
credential files: the daemon does not start, one line, exit status 2."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from certs import CA, Pair
from harness import WATCHDOG, free_port, train_env


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
def pki(tmp_path):
    ca, rogue = CA(tmp_path, "ca"), CA(tmp_path, "rogue")
    return {"ca": ca, "rogue": rogue, "server": ca.issue("coordinator", server=True),
            "node": ca.issue("node", server=False), "rogue_node": rogue.issue("node", server=False)}


def tls(ca: Path, pair: Pair | None) -> list[str]:
    return ["--tls-ca", str(ca)] + (["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
                                    if pair else [])


def spawn(procs: list, log: Path, args: list[str]) -> subprocess.Popen:
    p = subprocess.Popen([*WATCHDOG, *args], env=train_env(), stdout=subprocess.DEVNULL,
                         stderr=open(log, "wb"))
    procs.append(p)
    return p


def wait_for(what: str, check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def coordinator(procs: list, tmp: Path, port: int, creds: list[str]) -> subprocess.Popen:
    log = tmp / f"coordinator-{len(procs)}.err"
    p = spawn(procs, log, ["coordinator", "--listen", f"127.0.0.1:{port}",
                           "--state-dir", str(tmp / "coordinator"), *creds])
    wait_for("the coordinator", lambda: "coordinator_started" in log.read_text() or p.poll() is not None)
    assert p.poll() is None, log.read_text()
    return p


class Agent:
    def __init__(self, procs: list, tmp: Path, node: str, port: int, creds: list[str]):
        self.node, self.sock, self.log = node, str(tmp / f"{node}.sock"), tmp / f"{node}-{len(procs)}.err"
        self.proc = spawn(procs, self.log, ["agent", "--coordinator", f"127.0.0.1:{port}",
                                            "--node-id", node, "--socket", self.sock,
                                            "--state-dir", str(tmp / node), *creds])
        wait_for(f"agent {node}", lambda: os.path.exists(self.sock))

    def lines(self, event: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if f" {event} " in f"{line} "]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def nodes_of(port: int, creds: list[str], job: str) -> set[str]:
    out = subprocess.run([*WATCHDOG, "status", "--json", "--coordinator", f"127.0.0.1:{port}", *creds],
                         capture_output=True, text=True, timeout=30, env=train_env())
    assert out.returncode == 0, out.stderr
    return {n["node"] for j in json.loads(out.stdout)["jobs"] if j["job"] == job for n in j["nodes"]}


def attach(guarded, agent: Agent, job: str):  # type: ignore[no-untyped-def]
    """A job through ``agent`` (``sleep``: no ranks, no torch), so its reports carry it."""
    return guarded(["--agent-socket", agent.sock], ["sleep", "120"], train_env(), job_id=job)


def refused_once(agent: Agent, reason: str, quiet_s: float = 6.0) -> str:
    """One coordinator_refused line with ``reason``, and no more while it goes on failing
    (``quiet_s``: past the 5 s backoff cap, several retries)."""
    wait_for(f"{agent.node}'s refusal line", lambda: agent.lines("coordinator_refused"), 20)
    time.sleep(quiet_s)
    lines = agent.lines("coordinator_refused")
    assert len(lines) == 1, agent.log.read_text()
    assert f"reason={reason}" in lines[0] and "retry=" in lines[0]
    assert not agent.lines("coordinator_unreachable"), agent.log.read_text()
    return lines[0]


def test_mtls(tmp_path, procs, pki, guarded):
    port = free_port()
    ca, node = pki["ca"].path, pki["node"]
    coordinator(procs, tmp_path, port, tls(ca, pki["server"]))
    good = Agent(procs, tmp_path, "node-good", port, tls(ca, node))
    attach(guarded, good, "job-good")
    wait_for("the good node's report", lambda: "node-good" in nodes_of(port, tls(ca, node), "job-good"))

    # a client certificate from another CA, and none: refused in the handshake
    rogue = Agent(procs, tmp_path, "node-rogue", port, tls(ca, pki["rogue_node"]))
    bare = Agent(procs, tmp_path, "node-bare", port, tls(ca, None))
    for agent in (rogue, bare):
        line = refused_once(agent, "tls_handshake_failed", quiet_s=3.0 if agent is rogue else 0.5)
        assert "did not accept this node's certificate" in line
        assert not [l for l in agent.log.read_text().splitlines() if "Handshake failed" in l], \
            "grpc's own line on every reconnect"
    out = subprocess.run([*WATCHDOG, "status", "--coordinator", f"127.0.0.1:{port}",
                          *tls(ca, pki["rogue_node"])], capture_output=True, text=True, timeout=30,
                         env=train_env())
    assert out.returncode == 1 and "did not answer" in out.stderr

    # the credentials put right (the agent restarted with the CA's own): heard
    bare.stop()
    fixed = Agent(procs, tmp_path, "node-bare", port, tls(ca, node))
    attach(guarded, fixed, "job-fixed")
    wait_for("the fixed node's report", lambda: "node-bare" in nodes_of(port, tls(ca, node), "job-fixed"))
    assert not fixed.lines("coordinator_refused")
    # ... or the coordinator made to trust the rogue CA too: the running agent is back
    attach(guarded, rogue, "job-rogue")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(ca.read_bytes() + pki["rogue"].path.read_bytes())
    procs[0].terminate()
    procs[0].wait(timeout=10)
    coordinator(procs, tmp_path, port, tls(bundle, pki["server"]))
    wait_for("the rogue node's report", lambda: "node-rogue" in nodes_of(port, tls(ca, node), "job-rogue"))
    assert len(rogue.lines("coordinator_back")) == 1
    assert len(rogue.lines("coordinator_refused")) == 1


def test_token(tmp_path, procs, guarded):
    port = free_port()
    right, wrong = tmp_path / "right.token", tmp_path / "wrong.token"
    right.write_text("right-s3cret\n")
    wrong.write_text("wrong-s3cret\n")
    coordinator(procs, tmp_path, port, ["--token-file", str(right)])
    agent = Agent(procs, tmp_path, "node-t", port, ["--token-file", str(wrong)])
    attach(guarded, agent, "job-t")
    line = refused_once(agent, "unauthenticated")
    assert "--token-file" in line
    assert not nodes_of(port, ["--token-file", str(right)], "job-t")
    # the coordinator restarted with the agent's token: the agent is heard, without a restart
    procs[0].terminate()
    procs[0].wait(timeout=10)
    coordinator(procs, tmp_path, port, ["--token-file", str(wrong)])
    wait_for("the agent's report", lambda: "node-t" in nodes_of(port, ["--token-file", str(wrong)], "job-t"),
             timeout=20)
    assert len(agent.lines("coordinator_back")) == 1
    text = agent.log.read_text() + "".join(p.read_text() for p in tmp_path.glob("coordinator-*.err"))
    assert "s3cret" not in text


def test_unusable_credential_files_stop_the_daemon_at_start(tmp_path, pki):
    port = free_port()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    server = pki["server"]
    cases = [  # (security flags, what the one line says)
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(server.key)],
         f"cannot read tls_cert {tmp_path / 'missing.crt'}: No such file or directory"),
        (["--tls-cert", str(not_pem), "--tls-key", str(server.key)],
         f"cannot read tls_cert {not_pem}: not a PEM certificate"),
        (["--tls-cert", str(server.cert), "--tls-key", str(server.cert)],
         f"cannot read tls_key {server.cert}: not a PEM private key"),
        (["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(tmp_path)],
         f"cannot read tls_ca {tmp_path}: Is a directory"),
        (["--token-file", str(tmp_path / "missing.token")],
         f"cannot read token file {tmp_path / 'missing.token'}: No such file or directory"),
        (["--token-file", str(empty)], f"token file {empty} is empty"),
    ]
    for flags, says in cases:
        for daemon in (["coordinator", "--listen", f"127.0.0.1:{port}"],
                       ["agent", "--coordinator", f"127.0.0.1:{port}", "--node-id", "n",
                        "--socket", str(tmp_path / "a.sock")]):
            out = subprocess.run([*WATCHDOG, *daemon, "--state-dir", str(tmp_path / "state"), *flags],
                                 capture_output=True, text=True, timeout=30, env=train_env())
            assert out.returncode == 2, (daemon[0], flags, out.stderr)
            assert out.stderr.splitlines() == [f"watchdog-d: {says}"] or \
                (len(out.stderr.splitlines()) == 1 and out.stderr.startswith(f"watchdog-d: {says}")), \
                (daemon[0], flags, out.stderr)
            assert not os.path.exists(tmp_path / "a.sock")
