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
    assert title == "[watchdog-d] llama-7b: rank_exited rank 3 on node-b — restart 1/3"
    assert body == (
        "job: llama-7b\nkind: rank_exited\nrank: 3\nnode: node-b\nhost: 10.0.0.2\n"
        "step: 1200\naction: restart 1/3\ndetected_after_s: 0.46\n"
        "cause: exit code 1: CUDA out of memory\nremedy: lower the micro-batch size"
    )


def test_format_no_rank_no_node_skips_empty() -> None:
    title, body = format_alert(_incident(rank=None, node="", host="", step=None, remedy="", action="none"))
    assert title == "[watchdog-d] llama-7b: rank_exited rank - — no action"
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


# -- the title says what was done; the body keeps its lines ---------------------
@pytest.mark.parametrize("action, suffix", [
    ("teardown", ""), ("restart 1/3", " — restart 1/3"), ("gave_up", " — gave up"),
    ("none", " — no action"),
])
def test_title_suffix_per_action(action: str, suffix: str) -> None:
    title, body = format_alert(_incident(action=action))
    assert title == "[watchdog-d] llama-7b: rank_exited rank 3 on node-b" + suffix
    assert f"action: {action}" in body.splitlines()


def test_body_is_one_key_value_per_line_in_contract_order() -> None:
    inc = _incident(cause="exit code 1:\n  Traceback\n\n\tline 2", remedy="a\r\nb",
                    excerpt="Traceback (most recent call last):\n  File \"t.py\", line 3\n")
    _, body = format_alert(inc)
    head, excerpt = body.split("\n\n", 1)
    keys = [line.split(": ", 1)[0] for line in head.splitlines()]
    assert keys == ["job", "kind", "rank", "node", "host", "step", "action", "detected_after_s",
                    "cause", "remedy"]
    assert "cause: exit code 1: Traceback line 2" in head.splitlines()
    assert excerpt.splitlines()[1] == '  File "t.py", line 3'     # indentation kept


def test_a_restart_alert_names_the_rank_that_caused_it() -> None:
    from wdtest_helpers import SIGKILL, dead, rank, report, spec

    from watchdog_d.core.state import Cluster

    job = spec(on_failure="restart", max_restarts=2, node_timeout_s=5.0)
    c = Cluster()
    c.ingest(report("a", [rank(0, step=0), rank(1, step=0)], job_spec=job), 99.0)
    c.ingest(report("b", [rank(2, step=0), rank(3, step=0)], job_spec=job), 99.0)
    c.ingest(report("b", [rank(2, step=0), dead(3, sig=SIGKILL)], job_spec=job), 100.0)
    c.evaluate(102.0)
    for node in ("a", "b"):
        c.ingest(report(node, [], state="waiting", job_spec=job), 103.0)
    import dataclasses
    r = report("a", [], state="waiting", job_spec=job)
    c.ingest(dataclasses.replace(r, jobs=(dataclasses.replace(r.jobs[0], note="no checkpoint"),)), 103.0)
    d = [x for x in c.evaluate(103.0) if x.verb == "relaunch"]
    title, body = format_alert(d[0].incident)
    assert title == "[watchdog-d] j1: restart rank 3 on b — restart 1/2"
    assert "cause: attempt 1 relaunched after rank_exited rank 3 on b; a: no checkpoint" in body


# -- per channel ------------------------------------------------------------------
def _service(url: str):  # type: ignore[no-untyped-def]
    import apprise

    obj = apprise.Apprise()
    assert obj.add(url)
    return obj[0]


def test_email_gets_escaped_html_with_a_block_per_line() -> None:
    from apprise.common import NotifyFormat
    from apprise.conversion import convert_between

    from watchdog_d.coordinator.channels import render_for

    title, body = format_alert(_incident(cause="<script>x</script> & more",
                                         excerpt="Traceback:\n  File \"a.py\"\n"))
    out, fmt = render_for(_service("mailto://127.0.0.1:2525?from=a@example.com&to=b@example.com"),
                          title, body)
    assert fmt == NotifyFormat.HTML
    assert "<div>kind: rank_exited</div>" in out and "&lt;script&gt;" in out and "<script>" not in out
    assert convert_between(NotifyFormat.HTML, NotifyFormat.TEXT, out) == body   # the text part
    # ?format=text on the URL: plain text as it is
    out, fmt = render_for(_service("mailto://127.0.0.1:2525?from=a@example.com&to=b@example.com"
                                   "&format=text"), title, body)
    assert (out, fmt) == (body, NotifyFormat.TEXT)
    out, fmt = render_for(_service("json://127.0.0.1/x"), title, body)
    assert (out, fmt) == (body, NotifyFormat.TEXT)


def test_dingtalk_message_is_cut_to_its_size_limit_keeping_the_key_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import apprise.plugins.dingtalk as dingtalk_plugin

    posted: list[bytes] = []

    class _Ok:
        status_code, content, text = 200, b'{"errcode": 0}', '{"errcode": 0}'

        def json(self) -> dict:
            return {"errcode": 0}

    def post(url: str, data: str = "", **kw: object) -> _Ok:
        posted.append(data.encode() if isinstance(data, str) else data)
        return _Ok()

    monkeypatch.setattr(dingtalk_plugin.requests, "post", post)
    lines = [f"{i:03d} 日志 " + "x" * 480 for i in range(100)]     # non-ASCII: \uXXXX in JSON
    inc = _incident(excerpt="\n".join(lines))
    title, body = format_alert(inc)
    assert len(json.dumps(body)) > 20_000
    s = AlertSender(["dingtalk://abcdef0123456789"], base_backoff_s=0.05).start()
    try:
        s.submit(inc)
        assert _wait(lambda: len(s.sent) == 1, 5.0), s.counters
    finally:
        s.stop(1.0)
    assert len(posted) == 1 and len(posted[0]) <= 20_000
    content = json.loads(posted[0])["text"]["content"]
    assert content.startswith(title + "\r\n")
    head, excerpt = content[len(title) + 2:].split("\n\n", 1)
    assert head == body.split("\n\n", 1)[0]                     # every key line, whole
    got = excerpt.splitlines()
    assert got[0].startswith("[") and "earlier log lines cut to fit DingTalk's message size" in got[0]
    assert got[-1] == lines[-1][:500] and len(got) < 41


def test_sent_keeps_only_the_last_hundred() -> None:
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True)
    for r in range(150):
        s.submit(_incident(rank=r))
    s.start().stop(5.0)
    assert s.counters["sent"] == 150 and len(s.sent) == 100
    assert s.sent[-1][1].startswith("[watchdog-d] llama-7b: rank_exited rank 149 ")


# -- kept on disk until delivered -------------------------------------------------
def _files(root: object) -> list:  # type: ignore[type-arg]
    from pathlib import Path

    return sorted(Path(str(root)).glob("*/*.json"))


def test_spool_round_trip(tmp_path: object) -> None:
    from watchdog_d.coordinator.spool import Pending, Spool

    a = Spool(tmp_path)
    p1 = Pending("json://h/x?token=s3cret", "t1", "b1\nline", "j", "rank_exited", 3, 1)
    n1, n2 = a.put(p1), a.put(Pending("json://h/y", "t2", "b2", "j", "node_lost"))
    assert [f.name for f in _files(tmp_path)] == sorted([n1, n2])
    assert oct(_files(tmp_path)[0].stat().st_mode & 0o777) == "0o600"   # its URL may hold a token
    assert [p for _, p in a.take_over()][0] == p1
    a.remove(n1)
    a.close()                          # as the kernel does when the process dies
    b = Spool(tmp_path)
    left = b.take_over()
    assert [p.title for _, p in left] == ["t2"] and len(_files(tmp_path)) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == [b.dir.name]   # type: ignore[attr-defined]
    b.remove(left[0][0])
    b.close()
    assert list(tmp_path.iterdir()) == []                  # type: ignore[attr-defined]


def test_a_living_senders_spool_is_not_taken(tmp_path: object) -> None:
    from watchdog_d.coordinator.spool import Pending, Spool

    a = Spool(tmp_path)
    a.put(Pending("json://h/x", "t", "b", "j", "k"))
    b = Spool(tmp_path)                 # another coordinator on the same STATE_DIR
    assert b.take_over() == [] and len(list(a.dir.glob("*.json"))) == 1
    a.close()
    assert [p.title for _, p in b.take_over()] == ["t"]


def _crashing_sender(root: object, incidents: list[Incident]) -> AlertSender:
    """A sender whose channel is down, "killed" once every alert is on disk: its
    lock is let go as the kernel does for a dead process; it never sends."""
    a = AlertSender(["fake://a"], notify=lambda u, t, b: False, spool_dir=root,
                    base_backoff_s=0.01, max_backoff_s=0.02).start()
    for inc in incidents:
        a.submit(inc)
    assert _wait(lambda: len(_files(root)) == len(incidents))
    assert a._spool is not None
    a._spool.close()
    return a


def test_a_restart_sends_what_was_pending_each_exactly_once(tmp_path: object) -> None:
    incidents = [_incident(rank=r) for r in range(3)]
    a = _crashing_sender(tmp_path, incidents)       # not stopped: as after a SIGKILL
    got: list[str] = []
    b = AlertSender(["fake://a"], notify=lambda u, t, b_: got.append(t) or True, spool_dir=tmp_path)
    b.start()
    try:
        assert _wait(lambda: len(got) == 3)
        time.sleep(0.1)                             # nothing more comes
        assert sorted(got) == sorted(format_alert(i)[0] for i in incidents)
        assert b.counters["requeued"] == 3 and _files(tmp_path) == []
        assert not b.submit(incidents[0])           # decided again after the restart: a duplicate
    finally:
        b.stop(1.0)
        wlog.set_quiet(True)
        a.stop(0.05)
        wlog.set_quiet(False)
    assert a.counters["sent"] == 0


def test_stop_keeps_the_undelivered_for_the_next_start(tmp_path: object) -> None:
    a = AlertSender(["fake://a"], notify=lambda u, t, b: False, spool_dir=tmp_path,
                    base_backoff_s=0.01)
    a.submit(_incident())
    wlog.set_quiet(True)
    a.start().stop(0.2)
    wlog.set_quiet(False)
    assert len(_files(tmp_path)) == 1
    assert a._spool is not None
    a._spool.close()                                # the process ends
    b = AlertSender(["fake://a"], notify=lambda u, t, b: True, spool_dir=tmp_path).start()
    b.stop(2.0)
    assert len(b.sent) == 1 and _files(tmp_path) == [] and list(tmp_path.iterdir()) == []  # type: ignore[attr-defined]


def test_a_full_disk_delivers_from_memory_and_says_so_once(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import errno
    import os

    from watchdog_d.coordinator import spool

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool.os, "replace", full)
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True, spool_dir=tmp_path)
    for r in range(3):
        s.submit(_incident(rank=r))
    s.start().stop(2.0)
    assert len(s.sent) == 3 and _files(tmp_path) == []
    err = capsys.readouterr().err
    assert err.count("alert_spool_failed") == 1, err
    assert "op=write" in err and "error=ENOSPC" in err
    assert not [f for f in tmp_path.rglob("*") if f.name.startswith(".tmp")]   # type: ignore[attr-defined]
    assert os.replace is full


def test_an_unusable_spool_directory_delivers_from_memory(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    blocker = Path(str(tmp_path)) / "state"
    blocker.write_text("a file where the state directory should be")   # root ignores chmod
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True, spool_dir=blocker / "alerts")
    t0 = time.monotonic()
    for r in range(3):
        assert s.submit(_incident(rank=r))
    assert time.monotonic() - t0 < 0.1
    s.start().stop(2.0)
    assert len(s.sent) == 3
    err = capsys.readouterr().err
    assert err.count("alert_spool_failed") == 1 and "op=open" in err and "error=ENOTDIR" in err


def test_submit_never_waits_for_the_disk(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog_d.coordinator.spool import Spool

    real_put = Spool.put

    def slow_put(self: Spool, p: object) -> str:
        time.sleep(0.3)
        return real_put(self, p)  # type: ignore[arg-type]

    monkeypatch.setattr(Spool, "put", slow_put)
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True, spool_dir=tmp_path).start()
    try:
        t0 = time.monotonic()
        for r in range(3):
            s.submit(_incident(rank=r))
        assert time.monotonic() - t0 < 0.1
        assert _wait(lambda: len(s.sent) == 3)
    finally:
        s.stop(2.0)


def test_a_delivery_left_on_disk_for_over_a_day_is_dropped_and_said(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from watchdog_d.coordinator.spool import Pending, Spool

    old = Spool(tmp_path)
    name = old.put(Pending("fake://a", "t-old", "b", "j", "rank_exited"))
    fresh = old.put(Pending("fake://a", "t-new", "b", "j", "node_lost"))
    day_ago = int((time.time() - 25 * 3600) * 1e9)
    (old.dir / name).rename(old.dir / f"{day_ago}-{name.split('-', 1)[1]}")
    old.close()
    s = AlertSender(["fake://a"], notify=lambda u, t, b: True, spool_dir=tmp_path).start()
    s.stop(2.0)
    assert [t for _, t, _ in s.sent] == ["t-new"] and _files(tmp_path) == [] and fresh
    assert "alert_expired job=j kind=rank_exited url=fake://… age_h=25.0" in capsys.readouterr().err
