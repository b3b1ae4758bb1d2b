"""Latency of the etcd calls a standby coordinator makes, with two clients of etcd's JSON
gateway: ours (``watchdog_d.coordinator.etcd``, plain http.client) and the ``etcd3gw``
library (requests). Both send the same requests to one local etcd (integration/etcd.py).

    python integration/bench_etcd.py [--n 500]

Rows: grant (TTL 60), keepalive (one lease), create-if-absent txn (a new key each time:
compare create_revision == 0, put, else range: the same payload for both), get, put.
The two clients' calls alternate (ours, theirs, ours, ...) so drift on a shared machine
falls on both alike; each op is warmed up first. Milliseconds, median and p99.
etcd3gw must be installed to compare (``pip install etcd3gw``); without it, ours alone.
"""
from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from etcd import Etcd as Server, install

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from watchdog_d.coordinator.etcd import Etcd as Client  # noqa: E402


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _create_txn(key: str, value: str) -> dict:
    k = _b64(key)
    return {"compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": _b64(value)}}],
            "failure": [{"request_range": {"key": k}}]}


def ours_ops(url: str) -> dict[str, Callable[[int], object]]:
    c = Client([url], timeout_s=2.0)
    lease = c.grant(60)
    c.put("bench/get", "x" * 64)
    return {"grant": lambda i: c.grant(60), "keepalive": lambda i: c.keepalive(lease),
            "create-if-absent txn": lambda i: c.create(f"bench/ours/{i}", "leader"),
            "get": lambda i: c.get("bench/get"), "put": lambda i: c.put("bench/put/ours", "x" * 64)}


def etcd3gw_ops(url: str) -> dict[str, Callable[[int], object]] | None:
    try:
        import etcd3gw
    except ImportError:
        return None
    host, _, port = url.rpartition(":")
    c = etcd3gw.client(host=host, port=int(port), timeout=2.0)
    lease = c.lease(60)
    return {"grant": lambda i: c.lease(60), "keepalive": lambda i: lease.refresh(),
            "create-if-absent txn": lambda i: c.transaction(_create_txn(f"bench/gw/{i}", "leader")),
            "get": lambda i: c.get("bench/get"), "put": lambda i: c.put("bench/put/gw", "x" * 64)}


def _ms(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples) * 1e3, samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="calls per op and client")
    args = ap.parse_args()
    why = install()
    if why:
        print(f"bench_etcd: {why}", file=sys.stderr)
        return 2
    server = Server()
    try:
        version = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.split("\n")[0]
        clients = {"ours": ours_ops(server.url)}
        gw = etcd3gw_ops(server.url)
        if gw is None:
            print("etcd3gw is not installed: ours alone (pip install etcd3gw to compare)")
        else:
            clients["etcd3gw"] = gw
        times: dict[tuple[str, str], list[float]] = {}
        for op in clients["ours"]:
            for name, ops in clients.items():          # warm-up
                for i in range(20):
                    ops[op](-1 - i)
            for i in range(args.n):
                for name, ops in clients.items():
                    t = time.perf_counter()
                    ops[op](i)
                    times.setdefault((op, name), []).append(time.perf_counter() - t)
        print(f"{version}, loopback, {args.n} calls per op and client, ms")
        names = list(clients)
        print("| op | " + " | ".join(f"{n} median | {n} p99" for n in names) + " |")
        print("|---|" + "---:|---:|" * len(names))
        for op in clients["ours"]:
            cells = [f"{m:.2f} | {p:.2f}" for m, p in (_ms(times[(op, n)]) for n in names)]
            print(f"| {op} | " + " | ".join(cells) + " |")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
