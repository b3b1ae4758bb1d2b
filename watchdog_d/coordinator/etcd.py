"""A small etcd v3 client for standby coordinators: one leads while it holds a key on an
etcd lease, the others wait. It speaks etcd's JSON gateway (grpc-gateway) over plain
``http.client``: no gRPC stubs, no protobuf pin, no new dependency.

Why not a library: python-etcd3 breaks with protobuf >= 4 (this project needs >= 7), and
etcd3gw, which speaks the same gateway through requests, was slower when measured against
etcd 3.4.23 on loopback (``python integration/bench_etcd.py --n 1000``, medians in ms, ours
/ etcd3gw): grant 0.85 / 1.44, keepalive 0.51 / 1.06, create-if-absent txn 1.03 / 1.62,
get 0.59 / 1.14, put 0.85 / 1.45 (docs/measured.md, "etcd client"). It would also bring
requests, futurist and pbr, and it talks to one endpoint: failover would be ours anyway.

What the gateway does that one must know (etcd 3.4 serves it at /v3/ and /v3beta/, 3.5
at /v3/ only: found once per endpoint, /v3 first):
- keys and values are base64; int64 fields (revisions, lease ids, TTLs) are JSON strings;
- fields at their zero value are left out: no "kvs" when nothing matched, no "succeeded"
  when a txn's compare failed, no "TTL" when keepalive found no lease;
- an error is {"error", "message", "code"} with the gRPC code and an HTTP status mapped
  from it (lease not found: 404 code 5; etcd without a leader: 503 code 14);
- lease keepalive is a stream: one JSON line {"result": {...}} per request sent.
"""
from __future__ import annotations

import base64
import http.client
import json
import threading
from dataclasses import dataclass

_NOT_FOUND = 5              # gRPC code: e.g. revoking a lease that is already gone
_TRY_ELSEWHERE = {4, 14}    # gRPC DeadlineExceeded, Unavailable: another member may answer
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class EtcdError(Exception):
    """etcd answered with an error (``code``: its gRPC code, where it gave one)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def _endpoint(text: str) -> str:
    """ "host:port", checked; ValueError naming what is wrong."""
    text = text.strip()
    if "@" in text:   # never echoed: what stands before "@" may be a password
        raise ValueError("etcd endpoint carries user info (user@host): not supported, give host:port")
    host, sep, port = text.rpartition(":")
    if not sep or not host or "/" in host:
        raise ValueError(f"etcd endpoint {text!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"etcd endpoint {text!r} has no valid port (1-65535)")
    return f"{host}:{int(port)}"


def parse_ha(url: str) -> list[str]:
    """ "etcd://H1:2379,H2:2379" -> ["H1:2379", "H2:2379"]; ValueError for anything else.
    Messages name the endpoint at fault, never the whole URL (it may carry user info)."""
    scheme = "etcd://"
    if not url.startswith(scheme):
        given = url.split("://", 1)[0] + "://" if "://" in url else "no scheme"
        raise ValueError(f"etcd URL must start with {scheme} (e.g. etcd://H1:2379,H2:2379), not {given}")
    parts = url[len(scheme):].split(",")
    if not any(p.strip() for p in parts):
        raise ValueError("etcd URL names no endpoint (e.g. etcd://H1:2379,H2:2379)")
    if not all(p.strip() for p in parts):
        raise ValueError("etcd URL has an empty endpoint (two commas, or one at an end)")
    endpoints = [_endpoint(p) for p in parts]
    twice = sorted({e for e in endpoints if endpoints.count(e) > 1})
    if twice:
        raise ValueError(f"etcd URL names {', '.join(twice)} twice")
    return endpoints


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(b64: str | None) -> str:
    return base64.b64decode(b64 or "").decode("utf-8", "replace")


def _prefix_end(prefix: str) -> str:
    """The range_end covering every key that starts with prefix (etcd's "prefix+1")."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return base64.b64encode(b"\0").decode()   # "\0": to the end of the key space
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def _key_value(kv: dict) -> KeyValue:
    return KeyValue(key=_text(kv.get("key")), value=_text(kv.get("value")),
                    create_revision=int(kv.get("create_revision", 0)),
                    mod_revision=int(kv.get("mod_revision", 0)), lease=int(kv.get("lease", 0)))


class _Unreachable(Exception):
    """This endpoint gave no usable answer: the next one is tried."""


class Etcd:
    """etcd v3 over its JSON gateway, with failover across ``endpoints`` ("host:port", http)."""

    def __init__(self, endpoints: list[str], timeout_s: float = 1.0):
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self._endpoints = [_endpoint(e) for e in endpoints]
        self._timeout_s = timeout_s
        self._last = 0                                       # index of the last that answered
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._api: dict[str, str] = {}                       # endpoint -> "/v3" or "/v3beta"
        self._lock = threading.Lock()                        # one request on the wire at a time

    # -- the API ----------------------------------------------------------------------
    def grant(self, ttl_s: int) -> int:
        """A new lease; etcd raises a TTL below its minimum (~1.5 election timeouts) to it."""
        return int(self._call("/lease/grant", {"TTL": str(ttl_s)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew the lease; the TTL left, 0 when the lease is gone (expired or revoked)."""
        answer = self._call("/lease/keepalive", {"ID": str(lease)})
        return max(0, int(answer.get("result", answer).get("TTL", 0)))

    def revoke(self, lease: int) -> None:
        """Revoke (its keys go with it); a lease already gone is no error."""
        try:
            self._call("/lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if e.code != _NOT_FOUND:   # EtcdUnavailable has no code
                raise

    def create(self, key: str, value: str, lease: int = 0) -> tuple[bool, int]:
        """Put key only if absent, in one txn. (created, the key's create_revision): ours
        when created, the holder's when not."""
        k = _b64(key)
        answer = self._call("/kv/txn", {
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": _b64(value), "lease": str(lease)}}],
            "failure": [{"request_range": {"key": k}}]})
        if answer.get("succeeded"):
            return True, int(answer["header"]["revision"])   # a new key's create_revision
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        if not kvs:   # deleted between compare and range cannot happen in one txn; be safe
            return False, 0
        holder = _key_value(kvs[0])
        # a retry of our own create (timeout after etcd applied it) finds the key on our
        # lease: lease ids are unique, so it is ours
        return (lease != 0 and holder.lease == lease), holder.create_revision

    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _key_value(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, min_mod_revision: int = 0) -> list[KeyValue]:
        """Every key starting with prefix, in key order (only those created at or after
        ``min_mod_revision``, when given: what changed since the last look)."""
        start = _b64(prefix) if prefix else base64.b64encode(b"\0").decode()
        body = {"key": start, "range_end": _prefix_end(prefix)}
        if min_mod_revision > 0:
            body["min_mod_revision"] = str(min_mod_revision)
        answer = self._call("/kv/range", body)
        return [_key_value(kv) for kv in answer.get("kvs", [])]

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Put; the new revision."""
        answer = self._call("/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease)})
        return int(answer["header"]["revision"])

    def put_if(self, key: str, value: str, guard_key: str, guard_create_revision: int) -> bool:
        """Put only while guard_key still has that create_revision (a leader writes only
        while it still holds its lease key); False when refused."""
        answer = self._call("/kv/txn", {
            "compare": [{"key": _b64(guard_key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(guard_create_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        return bool(answer.get("succeeded"))

    def delete(self, key: str) -> None:
        self._call("/kv/deleterange", {"key": _b64(key)})

    def endpoint(self) -> str:
        """The endpoint that answered last."""
        return self._endpoints[self._last]

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    # -- failover -----------------------------------------------------------------------
    def _call(self, path: str, body: dict) -> dict:
        """POST to the gateway, from the last good endpoint on, in order."""
        payload = json.dumps(body).encode()
        with self._lock:
            tried = []
            for i in range(len(self._endpoints)):
                index = (self._last + i) % len(self._endpoints)
                endpoint = self._endpoints[index]
                try:
                    answer = self._on(endpoint, path, payload)
                except _Unreachable as e:
                    tried.append(f"{endpoint} ({e})")
                    continue
                except EtcdError:
                    self._last = index   # it answered, with an error
                    raise
                self._last = index
                return answer
        raise EtcdUnavailable(f"no etcd endpoint answered {path} (timeout {self._timeout_s:g} s "
                              f"each): {', '.join(tried)}")

    def _on(self, endpoint: str, path: str, payload: bytes) -> dict:
        """One endpoint's answer; finds its gateway prefix on first use."""
        known = self._api.get(endpoint)
        for api in [known] if known else ["/v3", "/v3beta"]:
            status, json_type, data = self._post(endpoint, api + path, payload)
            if status == 404 and not json_type:
                continue   # a plain "Not Found": no gateway under this prefix
            self._api[endpoint] = api
            return self._answer(endpoint, status, data)
        self._api.pop(endpoint, None)
        raise _Unreachable("no etcd v3 JSON gateway at /v3 or /v3beta")

    def _post(self, endpoint: str, url: str, payload: bytes) -> tuple[int, bool, bytes]:
        """(HTTP status, whether the answer is JSON, body); _Unreachable when none came."""
        kept = self._conns.pop(endpoint, None)
        try:
            if kept is not None:
                try:
                    return self._exchange(endpoint, kept, url, payload)
                except _STALE:
                    pass   # closed while kept alive (etcd restarted, say): once more, anew
            host, _, port = endpoint.rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=self._timeout_s)
            return self._exchange(endpoint, conn, url, payload)
        except (OSError, http.client.HTTPException) as e:
            raise _Unreachable(_why(e)) from None

    def _exchange(self, endpoint: str, conn: http.client.HTTPConnection, url: str,
                  payload: bytes) -> tuple[int, bool, bytes]:
        try:
            conn.request("POST", url, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        else:
            self._conns[endpoint] = conn
        return resp.status, "json" in (resp.getheader("Content-Type") or ""), data

    @staticmethod
    def _answer(endpoint: str, status: int, data: bytes) -> dict:
        try:
            answer = json.loads(data.split(b"\n", 1)[0] or b"{}")   # a stream: its first line
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if status >= 500:
                raise _Unreachable(f"HTTP {status}")
            raise EtcdError(f"etcd at {endpoint} answered HTTP {status} with no JSON")
        error = answer.get("error")
        if isinstance(error, dict):     # a stream's error: {"error": {"grpc_code", ...}}
            code, message = error.get("grpc_code", error.get("code")), error.get("message", "")
        else:
            code, message = answer.get("code"), answer.get("message") or error
        if status >= 500 or code in _TRY_ELSEWHERE:
            raise _Unreachable(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        if status != 200 or message:
            raise EtcdError(f"etcd at {endpoint}: {message or f'HTTP {status}'}", code)
        return answer


def _why(e: BaseException) -> str:
    """A short reason for a failed connection, for the one-line message."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return str(e) or type(e).__name__
