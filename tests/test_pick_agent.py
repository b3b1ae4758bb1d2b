"""Which agent a `watchdog-d run` hands its job to (watchdog_d/wrapper/run.py pick_agent)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from watchdog_d.config import Config
from watchdog_d.wrapper import run


def _listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    return s


def test_a_user_without_an_agent_of_their_own_finds_the_nodes(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    node = tmp_path / "node.sock"
    monkeypatch.setattr(run, "NODE_SOCKET", str(node))
    server = _listening(node)
    try:
        cfg = Config(socket=str(tmp_path / "mine" / "agent.sock"))
        assert run.pick_agent(cfg) == str(node)
        own = _listening(tmp_path / "own.sock")
        try:
            assert run.pick_agent(Config(socket=str(tmp_path / "own.sock"))) == str(tmp_path / "own.sock")
        finally:
            own.close()
    finally:
        server.close()
    assert capsys.readouterr().err == ""


def test_no_node_agent_at_all_is_no_news(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(run, "NODE_SOCKET", str(tmp_path / "none.sock"))
    assert run.pick_agent(Config(socket=str(tmp_path / "mine.sock"))) is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error, said", [(None, "Connection refused"),
                                         (PermissionError(13, "Permission denied"), "Permission denied")])
def test_a_node_agent_that_cannot_be_used_is_said_in_one_line(tmp_path: Path, monkeypatch, capsys,  # type: ignore[no-untyped-def]
                                                              error, said) -> None:
    node = tmp_path / "node.sock"
    _listening(node).close()                  # a socket file nobody listens on (agent stopped)
    monkeypatch.setattr(run, "NODE_SOCKET", str(node))
    if error is not None:
        def refuse(path: str, timeout: float = 3.0):  # type: ignore[no-untyped-def]
            raise error
        monkeypatch.setattr(run.localsock, "connect", refuse)
    assert run.pick_agent(Config(socket=str(tmp_path / "mine.sock"))) is None
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"watchdog-d: the node's agent at {node} cannot be used ({said})")
