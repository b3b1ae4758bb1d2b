"""An alert through Apprise's mailto:// to a real SMTP server on loopback: the
message a person's mail client shows keeps the layout (one ``key: value`` per
line in the text part, a line break between fields in the HTML part) and its
subject is the title with the action."""
from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from aiosmtpd.controller import Controller

from watchdog_d.coordinator.alerts import AlertSender, format_alert
from watchdog_d.core.model import Incident, Verdict

KEYS = ["job", "kind", "rank", "node", "host", "step", "action", "detected_after_s", "cause", "remedy"]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.messages.append(envelope.content)  # type: ignore[attr-defined]
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = _Inbox()
    server = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=5.0)
    server.start()
    try:
        yield inbox, port
    finally:
        server.stop()


class _Lines(HTMLParser):
    """The HTML as a mail client lays it out: a new line at each block or <br>."""

    BREAKS = {"br", "div", "p", "pre", "tr", "li"}

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self.BREAKS:
            self.text += "\n"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BREAKS:
            self.text += "\n"

    def handle_data(self, data: str) -> None:
        self.text += data


def test_email_keeps_one_field_per_line_in_both_parts(
        smtp: tuple[_Inbox, int], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    inbox, port = smtp
    url = f"mailto://127.0.0.1:{port}?from=watchdog@example.com&to=oncall@example.com"
    v = Verdict(job="llama-7b", kind="rank_exited", rank=3, node="node-b", host="10.0.0.2",
                step=1200, detected_after_s=0.4567, cause="exit code 1: CUDA out of memory <GPU 3> & co",
                remedy="lower the micro-batch size",
                excerpt="Traceback (most recent call last):\n  File \"train.py\", line 40\n"
                        "torch.OutOfMemoryError: CUDA out of memory\n")
    incident = Incident(ts=1_700_000_000.0, verdict=v, action="restart 1/3")
    title, body = format_alert(incident)
    sender = AlertSender([url], base_backoff_s=0.1).start()       # the real apprise_notify
    try:
        assert sender.submit(incident)
        assert inbox.arrived.wait(10.0), sender.counters
    finally:
        sender.stop(2.0)
    deadline = time.monotonic() + 2.0
    while len(sender.sent) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(inbox.messages) == 1 and len(sender.sent) == 1

    msg = email.message_from_bytes(inbox.messages[0], policy=email.policy.default)
    assert msg["Subject"] == "[watchdog-d] llama-7b: rank_exited rank 3 on node-b — restart 1/3" == title
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None

    text = plain.get_content().replace("\r\n", "\n")
    head, excerpt = text.split("\n\n", 1)
    assert [line.split(": ", 1)[0] for line in head.splitlines()] == KEYS
    assert "cause: exit code 1: CUDA out of memory <GPU 3> & co" in head.splitlines()
    assert '  File "train.py", line 40' in excerpt.splitlines()     # indentation kept
    assert text.rstrip("\n") == body

    markup = html.get_content()
    assert "&lt;GPU 3&gt; &amp; co" in markup and "<GPU 3>" not in markup
    between = re.search(r"job: llama-7b(.*?)kind: rank_exited", markup, re.S)
    assert between and re.search(r"<br|</div>|</p>", between.group(1)), markup
    parser = _Lines()
    parser.feed(markup)
    shown = [line for line in parser.text.replace("\r\n", "\n").splitlines() if line.strip()]
    assert [line.split(": ", 1)[0] for line in shown[:len(KEYS)]] == KEYS
