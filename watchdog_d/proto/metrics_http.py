"""The ``/metrics`` endpoint both daemons serve (Prometheus text): prometheus_client's own
HTTP server, on a registry of the daemon's own. Never the global registry: tests run a
coordinator and agents in one process, and each must show only its own numbers."""
from __future__ import annotations

import errno

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from .. import log
from ..config import Config, ConfigError

# the ``*_created`` series are OpenMetrics'; in the classic text they are one more gauge per
# counter that nobody queries (process-wide: only the daemons import this)
disable_created_metrics()


class MetricsServer:
    """Serves ``registry`` on ADDRESS:PORT, one thread per scrape. A port that cannot be
    had is a ConfigError, so the daemon does not start without the metrics it was told
    to serve."""

    def __init__(self, registry: CollectorRegistry, port: int, address: str):
        try:
            self._httpd, _ = start_http_server(port, addr=address, registry=registry)
        except OSError as e:        # socket.gaierror (a bad address) is one too
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"metrics port {port} on {address} is in use") from None
            raise ConfigError(f"cannot serve metrics on {address}:{port}: "
                              f"{e.strerror or e}") from None
        self.port = self._httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()      # the port is free again at once


class DaemonMetrics:
    """A daemon's own registry, served when ``cfg.metrics_port`` says so."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.server: MetricsServer | None = None

    def serve(self, cfg: Config) -> None:
        if cfg.metrics_port:
            self.server = MetricsServer(self.registry, cfg.metrics_port, cfg.metrics_address)
            log.log("metrics_serving", address=cfg.metrics_address, port=self.server.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
