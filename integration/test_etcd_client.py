"""The etcd client (watchdog_d/coordinator/etcd.py) against a real etcd (integration/etcd.py):
leases run out, create-if-absent has one winner, a leader's guarded write is refused once
its key is gone, and the client fails over, gives up in bounded time, and outlives an etcd
that is killed and started again."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from etcd import etcd  # noqa: F401  (fixture)
from harness import free_port
from watchdog_d.coordinator.etcd import Etcd, EtcdUnavailable

pytestmark = pytest.mark.integration


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_lease_keepalive_then_expiry(etcd):
    c = Etcd([etcd.url])
    lease = c.grant(1)                       # etcd raises it to its minimum (2 s by default)
    assert lease > 0
    assert c.put("wd/lease/key", "v", lease) > 0
    for _ in range(3):                       # kept alive past its TTL
        assert c.keepalive(lease) >= 1
        time.sleep(0.8)
    assert c.get("wd/lease/key").lease == lease
    # no more keepalives: the lease expires and its key goes with it
    assert _wait(lambda: c.get("wd/lease/key") is None, timeout=8), "the lease did not expire"
    assert c.keepalive(lease) == 0
    c.revoke(lease)                          # already gone: no error

    lease = c.grant(60)
    c.put("wd/lease/key2", "v", lease)
    c.revoke(lease)
    assert c.get("wd/lease/key2") is None and c.keepalive(lease) == 0


def test_create_if_absent_race_has_one_winner(etcd):
    a, b = Etcd([etcd.url]), Etcd([etcd.url])
    leases = {a: a.grant(60), b: b.grant(60)}
    for round_ in range(10):
        key, results = f"wd/leader/{round_}", {}
        start = threading.Barrier(2, timeout=5)

        def run(c: Etcd) -> None:
            start.wait()
            results[c] = c.create(key, f"client-{id(c)}", leases[c])

        threads = [threading.Thread(target=run, args=(c,)) for c in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert sorted(created for created, _ in results.values()) == [False, True]
        winner = next(c for c, (created, _) in results.items() if created)
        held = a.get(key)
        # the loser is told the holder's create_revision, the same as the winner's own
        assert {rev for _, rev in results.values()} == {held.create_revision}
        assert held.lease == leases[winner] and held.value == f"client-{id(winner)}"
        # asked again, the holder is told it holds the key (a retried create on its lease)
        assert winner.create(key, "again", leases[winner]) == (True, held.create_revision)


def test_put_if_refused_once_the_guard_key_is_gone(etcd):
    c = Etcd([etcd.url])
    lease = c.grant(60)
    created, rev = c.create("wd/leader", "me", lease)
    assert created
    assert c.put_if("wd/state", "1", "wd/leader", rev)
    c.revoke(lease)                          # leadership lost: the lease key is gone
    assert not c.put_if("wd/state", "2", "wd/leader", rev)
    # another leader's key (a new create_revision) does not let the old one write either
    assert c.create("wd/leader", "other", c.grant(60))[0]
    assert not c.put_if("wd/state", "3", "wd/leader", rev)
    assert c.get("wd/state").value == "1"


def test_get_prefix(etcd):
    c = Etcd([etcd.url])
    for key in ("wd/nodes/b", "wd/nodes/a", "wd/nodes0", "wd/node", "wd/x"):
        c.put(key, key.upper())
    got = c.get_prefix("wd/nodes/")
    assert [(kv.key, kv.value) for kv in got] == [("wd/nodes/a", "WD/NODES/A"), ("wd/nodes/b", "WD/NODES/B")]
    assert got[0].create_revision <= got[0].mod_revision
    assert c.get_prefix("wd/none/") == []
    c.delete("wd/nodes/a")
    assert [kv.key for kv in c.get_prefix("wd/nodes/")] == ["wd/nodes/b"]


def test_failover_past_a_dead_endpoint(etcd):
    dead = f"127.0.0.1:{free_port()}"
    c = Etcd([dead, etcd.url], timeout_s=0.5)
    t = time.monotonic()
    assert c.put("wd/k", "v") > 0
    assert c.endpoint() == etcd.url and time.monotonic() - t < 1.5
    assert c.get("wd/k").value == "v"        # from the last good one on: no new detour
    assert c.endpoint() == etcd.url


def test_unavailable_when_no_endpoint_answers(etcd):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    etcd.pause()                             # accepts connections, answers nothing
    try:
        c = Etcd([*dead, etcd.url], timeout_s=0.5)
        t = time.monotonic()
        with pytest.raises(EtcdUnavailable) as e:
            c.get("wd/k")
        assert time.monotonic() - t < 2.0
        message = str(e.value)
        assert "\n" not in message and all(ep in message for ep in [*dead, etcd.url])
        assert "timed out" in message and "refused" in message
    finally:
        etcd.resume()
    assert c.get("wd/k") is None             # back once it answers again


def test_client_survives_etcd_kill_and_start(etcd):
    c = Etcd([etcd.url], timeout_s=0.5)
    c.put("wd/k", "before")
    etcd.kill()
    for call in (lambda: c.get("wd/k"), lambda: c.put("wd/k", "down"), lambda: c.grant(5)):
        with pytest.raises(EtcdUnavailable):
            call()
    etcd.start()                             # same data dir and ports
    assert c.get("wd/k").value == "before"
    c.put("wd/k", "after")
    # a restart between two calls: the kept-alive connection is stale, the call still works
    etcd.stop()
    etcd.start()
    assert c.get("wd/k").value == "after"


class _FakeGateway:
    """A stand-in gateway: answers with (status, content type, body) per path."""

    def __init__(self, answer):
        self.paths: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                gateway.paths.append(self.path)
                status, ctype, body = answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_v3beta_gateway_is_found_once():
    def answer(path):
        if path.startswith("/v3beta/"):
            return 200, "application/json", json.dumps({"header": {"revision": "7"}}).encode()
        return 404, "text/plain; charset=utf-8", b"Not Found\n"

    gw = _FakeGateway(answer)
    try:
        c = Etcd([gw.url])
        assert c.get("k") is None and c.put("k", "v") == 7
        assert gw.paths == ["/v3/kv/range", "/v3beta/kv/range", "/v3beta/kv/put"]
    finally:
        gw.close()


def test_503_moves_to_the_next_endpoint(etcd):
    body = json.dumps({"error": "etcdserver: no leader", "message": "etcdserver: no leader",
                       "code": 14}).encode()
    gw = _FakeGateway(lambda path: (503, "application/json", body))
    try:
        c = Etcd([gw.url, etcd.url])
        assert c.put("wd/k", "v") > 0 and c.endpoint() == etcd.url
    finally:
        gw.close()
