from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from watchdog_d import log as wlog
from watchdog_d.coordinator.alerts import AlertSender, format_alert, validate_alert_url
from watchdog_d.core.model import Incident, Verdict

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567"


def _incident(**kw: object) -> Incident:
    v = dict(job="llama-7b", kind="rank_exited", rank=3, node="node-b", host="10.0.0.2",
             step=1200, detected_after_s=0.4567, cause="exit code 1: CUDA out of memory",
             remedy="lower the micro-batch size")
    action = str(kw.pop("action", "restart 1/3"))
    v.update(kw)
    return Incident(ts=1_700_000_000.0, verdict=Verdict(**v), action=action)  # type: ignore[arg-type]


def _wait(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture(autouse=True)
def _quiet_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # requests honours *_PROXY: loopback tests must not go through one
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    yield


# -- formatting ----------------------------------------------------------------
def test_format_exact() -> None:
    title, body = format_alert(_incident())
    assert title == "[watchdog-d] llama-7b: rank_exited rank 3 on node-b"
    assert body == (
        "job: llama-7b\nkind: rank_exited\nrank: 3\nnode: node-b\nhost: 10.0.0.2\n"
        "step: 1200\naction: restart 1/3\ndetected_after_s: 0.46\n"
        "cause: exit code 1: CUDA out of memory\nremedy: lower the micro-batch size"
    )


def test_format_no_rank_no_node_skips_empty() -> None:
    title, body = format_alert(_incident(rank=None, node="", host="", step=None, remedy="", action="none"))
    assert title == "[watchdog-d] llama-7b: rank_exited rank -"
    assert body.splitlines() == [
        "job: llama-7b", "kind: rank_exited", "action: none",
        "detected_after_s: 0.46", "cause: exit code 1: CUDA out of memory",
    ]
    _, body0 = format_alert(_incident(rank=0))
    assert "rank: 0" in body0.splitlines()


def test_excerpt_cut_to_last_40_and_redacted() -> None:
    lines = [f"line {i}" for i in range(100)] + [f"HF_TOKEN={HF}", "Authorization: Bearer abc123"]
    inc = _incident(excerpt="\n".join(lines) + "\n", cause=f"token={HF}")
    title, body = format_alert(inc)
    head, excerpt = body.split("\n\n", 1)
    got = excerpt.splitlines()
    assert len(got) == 40
    assert got[0] == "line 62" and got[-1] == "Authorization: Bearer [REDACTED]"
    assert HF not in body and HF not in title
    assert "cause: token=[REDACTED]" in head.splitlines()


def test_excerpt_key_block_cut_in_half_still_hidden() -> None:
    key = ["-----BEGIN PRIVATE KEY-----"] + ["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" + str(i) for i in range(60)]
    _, body = format_alert(_incident(excerpt="\n".join(key + ["-----END PRIVATE KEY-----", "after"])))
    assert body.endswith("\n\n[REDACTED]\nafter")


# -- URL validation ------------------------------------------------------------
def test_validate_alert_url() -> None:
    assert validate_alert_url("json://127.0.0.1:8080/hook") is None
    assert validate_alert_url("dingtalk://abcdef0123456789") is None
    assert "empty" in (validate_alert_url("") or "")
    assert "scheme" in (validate_alert_url("hooks.example.com/x") or "")
    msg = validate_alert_url("nosuch://user:hunter2@example.com/x")
    assert msg and "nosuch://" in msg and "hunter2" not in msg
    msg = validate_alert_url("json://a/b, json://c/d")
    assert msg and "2 URLs" in msg
    assert "\n" not in msg


# -- dedup -----------------------------------------------------------------------
def test_dedup_by_cooldown_with_injected_clock(capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True, cooldown_s=60, clock=lambda: now[0])
    assert s.submit(_incident())
    now[0] += 59
    assert not s.submit(_incident())                  # same job/kind/rank/attempt
    assert s.submit(_incident(rank=4))               # another rank is another alert
    assert s.submit(_incident(attempt=1))            # after a restart: new alert
    now[0] += 1.5
    assert s.submit(_incident())                     # cooldown over
    assert s.pending() == 4
    assert "alert_deduplicated job=llama-7b kind=rank_exited rank=3" in capsys.readouterr().err


def test_urls_merged_and_deduplicated() -> None:
    s = AlertSender(["fake://a", "fake://b"], notify=lambda u, t, b: True)
    s.submit(_incident(), urls=["fake://b", "fake://c", ""])
    assert s.pending() == 3


def test_submit_never_raises() -> None:
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True)
    assert s.submit(None) is False  # type: ignore[arg-type]


# -- delivery --------------------------------------------------------------------
def test_retry_with_backoff_then_success(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[float] = []
    seen: list[tuple[str, str, str]] = []

    def flaky(url: str, title: str, body: str) -> bool:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise ConnectionError("boom password=hunter2")
        return len(calls) >= 3

    s = AlertSender(["fake://a"], notify=flaky, base_backoff_s=0.02, max_backoff_s=0.03,
                    on_sent=lambda *a: seen.append(a)).start()
    try:
        s.submit(_incident())
        assert _wait(lambda: s.pending() == 0)
    finally:
        s.stop(1.0)
    assert len(calls) == 3 and len(s.sent) == 1 and seen == s.sent
    assert calls[1] - calls[0] >= 0.02 * 0.9 and calls[2] - calls[1] >= 0.03 * 0.9   # capped
    err = capsys.readouterr().err
    assert "alert_failed job=llama-7b kind=rank_exited url=fake://… attempt=1 retry_in_s=0.02" in err
    assert "attempt=2 retry_in_s=0.03" in err and "hunter2" not in err
    assert "alert_sent job=llama-7b kind=rank_exited url=fake://…" in err


def test_dead_url_does_not_hold_back_others() -> None:
    hang = threading.Event()

    def notify(url: str, title: str, body: str) -> bool:
        if url == "fake://dead":
            hang.wait(2.0)         # a black-holed endpoint
            return False
        return True

    s = AlertSender(["fake://dead", "fake://ok"], notify=notify, base_backoff_s=0.01).start()
    try:
        s.submit(_incident())
        s.submit(_incident(rank=5))
        assert _wait(lambda: len(s.sent) == 2, 1.0)
        assert {u for u, _, _ in s.sent} == {"fake://ok"}
        assert s.pending() == 2
    finally:
        hang.set()
        s.stop(0.05)


def test_stop_flushes_pending() -> None:
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True)
    s.submit(_incident())           # queued before the thread exists
    s.start().stop(2.0)
    assert s.pending() == 0 and len(s.sent) == 1


# -- real Apprise over loopback ------------------------------------------------
class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        n = int(self.headers.get("Content-Length", "0"))
        _Hook.received.append((self.path, json.loads(self.rfile.read(n))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_real_apprise_json_end_to_end() -> None:
    _Hook.received = []
    srv = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    url = f"json://127.0.0.1:{srv.server_address[1]}/hook"
    s = AlertSender([url], base_backoff_s=0.05).start()
    try:
        inc = _incident(excerpt=f"Traceback...\nHF_TOKEN={HF}")
        s.submit(inc)
        assert _wait(lambda: len(s.sent) == 1, 4.0)
    finally:
        s.stop(1.0)
        srv.shutdown()
        srv.server_close()
    title, body = format_alert(inc)
    path, payload = _Hook.received[0]
    assert path == "/hook"
    assert payload["title"] == title and payload["message"] == body
    assert HF not in json.dumps(payload)


def test_real_apprise_endpoint_down_retries_without_blocking() -> None:
    with socket.socket() as sock:          # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = AlertSender([f"json://127.0.0.1:{port}/hook"], base_backoff_s=0.01, max_backoff_s=0.02).start()
    try:
        t0 = time.monotonic()
        for rank in range(5):
            s.submit(_incident(rank=rank))
        assert time.monotonic() - t0 < 0.1          # submit never waits on the network
        assert _wait(lambda: s.counters["failed"] >= 10, 4.0)
        assert s.pending() == 5 and s.sent == []
    finally:
        wlog.set_quiet(True)
        s.stop(0.1)
        wlog.set_quiet(False)
    assert s.pending() == 5                          # kept, never silently lost


def test_invalid_url_with_real_apprise_is_dropped_not_retried() -> None:
    s = AlertSender(["nosuch://x/y"], base_backoff_s=0.01).start()
    try:
        s.submit(_incident())
        assert _wait(lambda: s.pending() == 0, 3.0)
        assert s.counters["dropped"] == 1 and s.counters["failed"] == 0
    finally:
        s.stop(0.5)
