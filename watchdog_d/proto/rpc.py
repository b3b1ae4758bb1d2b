"""gRPC plumbing shared by agent and coordinator: channels, servers, auth.

Auth is a shared bearer token (``--token-file``) and/or mTLS
(``--tls-cert/--tls-key/--tls-ca``). A call without the right token is refused
with UNAUTHENTICATED before it reaches any handler, except the standard health check
(``grpc.health.v1.Health``): the probes that ask it (a kubelet, ``grpc_health_probe``)
carry no token, and SERVING or not reveals nothing.
"""
from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from ..config import Config, ConfigError

MAX_MESSAGE = 16 * 1024 * 1024
REPORT_TIMEOUT_S = 2.0    # an agent's Report deadline (the coordinator reads how much is left)
HEALTH_PREFIX = "/grpc.health.v1.Health/"     # open without the token (see above)


def read_token(cfg: Config) -> str:
    if not cfg.token_file:
        return ""
    try:
        token = Path(cfg.token_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {cfg.token_file}: {e.strerror}") from None
    if not token:
        raise ConfigError(f"token file {cfg.token_file} is empty")
    return token


_PEM = {"tls_cert": b"-----BEGIN CERTIFICATE-----", "tls_ca": b"-----BEGIN CERTIFICATE-----",
        "tls_key": b"PRIVATE KEY-----"}


def _read(path: str, what: str) -> bytes:
    """A PEM file, checked at start: grpc takes any bytes here and fails only later, at
    each handshake, with nothing said to the operator of this daemon."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    if _PEM[what] not in data:
        kind = "private key" if what == "tls_key" else "certificate"
        raise ConfigError(f"cannot read {what} {path}: not a PEM {kind} (no '{_PEM[what].decode()}' line)")
    return data


class _TokenCheck(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._want = f"Bearer {token}".encode()

        async def deny(request, context):  # type: ignore[no-untyped-def]
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)
        self._deny_bidi = grpc.stream_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if details.method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(got.encode() if isinstance(got, str) else got, self._want):
            return await continuation(details)
        if details.method.endswith("/Stream"):
            return self._deny_bidi
        return self._deny_stream if details.method.endswith("/Watch") else self._deny_unary


def make_server(cfg: Config, listen: str) -> tuple[grpc.aio.Server, int]:
    """An asyncio server (one event loop, no thread per stream); call from that loop."""
    token = read_token(cfg)
    interceptors = [_TokenCheck(token)] if token else []
    server = grpc.aio.server(interceptors=interceptors,
                             options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.so_reuseport", 0)])
    try:
        if cfg.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(_read(cfg.tls_key, "tls_key"), _read(cfg.tls_cert, "tls_cert"))],
                root_certificates=_read(cfg.tls_ca, "tls_ca") if cfg.tls_ca else None,
                require_client_auth=bool(cfg.tls_ca))
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:        # newer grpcio raises where older ones returned 0
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} (address in use or not local?)")
    return server, port


def make_channel(cfg: Config, target: str) -> grpc.Channel:
    # reconnect quickly after a network cut: the default backoff grows to 120 s,
    # which would leave a node that came back deaf to its queued verbs for minutes
    options = [("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
               ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 2_000)]
    if cfg.tls_ca or cfg.tls_cert:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(cfg.tls_ca, "tls_ca") if cfg.tls_ca else None,
            private_key=_read(cfg.tls_key, "tls_key") if cfg.tls_key else None,
            certificate_chain=_read(cfg.tls_cert, "tls_cert") if cfg.tls_cert else None)
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def call_metadata(cfg: Config) -> tuple[tuple[str, str], ...]:
    token = read_token(cfg)
    return (("authorization", f"Bearer {token}"),) if token else ()


def wait_ready(channel: grpc.Channel, timeout: float) -> bool:
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
