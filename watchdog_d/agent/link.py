"""The agent's link to the coordinator as its calls find it: why a call failed, said
once per episode (not once per retry), and how long to wait before the next try.

What grpcio reports (1.6x-1.8x), and what it means here:

- UNAUTHENTICATED: the coordinator's token check refused the bearer token.
- UNAVAILABLE "... Tls handshake failed ... CERTIFICATE_VERIFY_FAILED ...": this agent
  did not accept the coordinator's certificate (not signed by --tls-ca, wrong name).
- UNAVAILABLE "... Socket closed" while connecting: the coordinator closed the
  connection in the handshake. With TLS on this side: it did not accept this node's
  certificate (another CA, or none sent). Without: it wants TLS.
- anything else: the coordinator is not there (down, network), as before.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from .. import log

# Unreachable: retry soon, a node back from a network cut must be heard before its
# node_timeout. Refused: the fix is a person's (a token, a certificate), so retrying fast
# gains nothing and costs the coordinator a TLS handshake per try (with a rotated CA,
# one per node): back off to 5 s, which still finds the fix within seconds.
UNREACHABLE_MAX_S, REFUSED_MAX_S, FIRST_S = 2.0, 5.0, 0.2
WATCH_RETRY_S = 0.3


@dataclass(frozen=True)
class Failure:
    reason: str            # unreachable | unauthenticated | tls_handshake_failed | connection_closed
    hint: str = ""
    detail: str = ""       # grpc's words, cut (never a secret: addresses and TLS errors)

    @property
    def refused(self) -> bool:
        return self.reason != "unreachable"


def classify(e: grpc.RpcError, tls: bool) -> Failure:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else "") or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Failure("unauthenticated", "the coordinator refused this node's bearer token "
                       "(--token-file)")
    if code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in details.lower():
        return Failure("tls_handshake_failed", "this node did not accept the coordinator's TLS "
                       "handshake (its certificate signed by --tls-ca? for this address? "
                       "does it speak TLS?)", _ssl_error(details))
    if code == grpc.StatusCode.UNAVAILABLE and "socket closed" in details.lower() \
            and "failed to connect" in details.lower():
        if tls:
            return Failure("tls_handshake_failed", "the coordinator closed the connection in the "
                           "TLS handshake: it did not accept this node's certificate "
                           "(--tls-cert/--tls-key signed by the coordinator's --tls-ca?)")
        return Failure("connection_closed", "the coordinator closed the connection at once: "
                       "does it require TLS (--tls-ca, --tls-cert, --tls-key)?")
    return Failure("unreachable", detail=code.name if code is not None else "?")


def _ssl_error(details: str) -> str:
    """'... OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer
    certificate: OK' -> 'CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate'"""
    tail = details.rsplit("OPENSSL_internal:", 1)[-1]
    return tail.removesuffix(": OK").strip()[:200]


def next_delay(previous: float, failure: Failure) -> float:
    return min(REFUSED_MAX_S if failure.refused else UNREACHABLE_MAX_S, max(FIRST_S, previous * 2))


class Link:
    """Shared by the agent's report and watch loops (both fail alike on one channel):
    one line when calls start failing or fail for another reason, one when they go
    through again."""

    def __init__(self, target: str, tls: bool):
        self.target, self.tls = target, tls
        self.failing: Failure | None = None
        self._lock = threading.Lock()

    def after(self, e: grpc.RpcError, previous: float, *, say_unreachable: bool = True) -> float:
        """How long to wait before the next try after ``e`` (``previous``: the last wait).
        The watch loop leaves unreachability to the reports (a Watch stream also breaks
        while Reports go through) and retries it at WATCH_RETRY_S, as ever."""
        failure = classify(e, self.tls)
        if not failure.refused and not say_unreachable:
            return WATCH_RETRY_S
        with self._lock:
            was, self.failing = self.failing, failure
        if was is None or was.reason != failure.reason:
            self._say(failure)
        return next_delay(0.0 if was is None else previous, failure)   # a new episode: from the start

    def _say(self, failure: Failure) -> None:
        if failure.refused:
            log.error("coordinator_refused", coordinator=self.target, reason=failure.reason,
                      hint=failure.hint, detail=failure.detail or None,
                      retry=f"backoff to {REFUSED_MAX_S:g}s")
        else:
            log.warn("coordinator_unreachable", coordinator=self.target, code=failure.detail)

    def ok(self) -> None:
        with self._lock:
            was, self.failing = self.failing, None
        if was is not None:
            log.log("coordinator_back", coordinator=self.target)
