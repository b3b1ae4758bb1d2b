"""The agent's link to the coordinator (watchdog_d/agent/link.py): why a call failed, in
one line per episode, and the retry backoff (capped: 2 s unreachable, 5 s refused)."""
from __future__ import annotations

import grpc
import pytest

from watchdog_d.agent import link
from watchdog_d.agent.link import Link, classify


class Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = ""):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


CLOSED = Err(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
             "UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed")
UNTRUSTED = Err(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                "ipv4:127.0.0.1:1: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
                "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to "
                "get local issuer certificate: OK")
DOWN = Err(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
           "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused")


@pytest.mark.parametrize("err,tls,reason", [
    (Err(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token"), False, "unauthenticated"),
    (CLOSED, True, "tls_handshake_failed"),
    (CLOSED, False, "connection_closed"),
    (UNTRUSTED, True, "tls_handshake_failed"),
    (DOWN, True, "unreachable"),
    (Err(grpc.StatusCode.DEADLINE_EXCEEDED), False, "unreachable"),
])
def test_classify(err: Err, tls: bool, reason: str) -> None:
    assert classify(err, tls).reason == reason


def test_the_ssl_error_is_kept_short() -> None:
    assert classify(UNTRUSTED, True).detail == \
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"


def test_one_line_per_episode_and_a_capped_backoff(monkeypatch) -> None:
    said: list[tuple[str, dict]] = []
    monkeypatch.setattr(link.log, "log", lambda event, level="INFO", **kw: said.append((event, kw)))
    ln, delay = Link("c:1", tls=True), 0.0
    delays = []
    for _ in range(10):
        delay = ln.after(CLOSED, delay)
        delays.append(delay)
    assert delays[:3] == [0.2, 0.4, 0.8] and max(delays) == delays[-1] == link.REFUSED_MAX_S
    assert [e for e, _ in said] == ["coordinator_refused"]
    assert said[0][1]["reason"] == "tls_handshake_failed"
    # another reason is another line; unreachable backs off to 2 s only
    for _ in range(10):
        delay = ln.after(DOWN, delay)
    assert delay == link.UNREACHABLE_MAX_S
    ln.ok()
    ln.ok()
    assert [e for e, _ in said] == ["coordinator_refused", "coordinator_unreachable", "coordinator_back"]
    # a new episode starts from the first delay again
    assert ln.after(CLOSED, 5.0) == link.FIRST_S


def test_the_watch_loop_leaves_unreachability_to_the_reports(monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(link.log, "log", lambda event, level="INFO", **kw: said.append(event))
    ln = Link("c:1", tls=False)
    assert ln.after(DOWN, 0.0, say_unreachable=False) == link.WATCH_RETRY_S
    assert said == [] and ln.failing is None
