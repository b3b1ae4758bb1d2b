"""``/metrics`` for Prometheus, from the coordinator's status snapshot."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Coordinator


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(snap: dict, alerts: dict[str, int]) -> str:
    out = ["# TYPE watchdog_d_jobs gauge", f"watchdog_d_jobs {len(snap['jobs'])}",
           "# TYPE watchdog_d_rank_step gauge",
           "# TYPE watchdog_d_rank_last_step_age_seconds gauge",
           "# TYPE watchdog_d_node_heartbeat_age_seconds gauge",
           "# TYPE watchdog_d_job_stall_timeout_seconds gauge"]
    for job in snap["jobs"]:
        j = _label(job["job"])
        out.append(f'watchdog_d_job_stall_timeout_seconds{{job="{j}"}} {job["stall_timeout_s"]}')
        for node in job["nodes"]:
            n = _label(node["node"])
            out.append(f'watchdog_d_node_heartbeat_age_seconds{{job="{j}",node="{n}"}} '
                       f'{node["heartbeat_age_s"]}')
            for r in node["ranks"]:
                labels = f'job="{j}",node="{n}",rank="{r["rank"]}"'
                out.append(f"watchdog_d_rank_step{{{labels}}} {r['step']}")
                out.append(f"watchdog_d_rank_last_step_age_seconds{{{labels}}} "
                           f"{r['last_step_age_s']}")
    out.append("# TYPE watchdog_d_alerts_total counter")
    for name, value in sorted(alerts.items()):
        out.append(f'watchdog_d_alerts_total{{outcome="{_label(name)}"}} {value}')
    return "\n".join(out) + "\n"


def serve_metrics(coordinator: "Coordinator", port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            counters = dict(getattr(coordinator.sender, "counters", {}))
            body = render(coordinator.status(), counters).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
