"""Alerts: format an incident, deliver it through Apprise, never block detection.

A dispatcher thread hands each due delivery to a short daemon worker thread,
at most one in flight per URL: a black-holed endpoint (Apprise waits 4 s to
connect + 4 s to read) holds up only its own deliveries.  Failures are retried
with exponential backoff for as long as the process lives."""
from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..core.model import Incident
from ..log import error, log, warn
from ..logs.redact import redact, redact_url

EXCERPT_LINES = 40
_EXCERPT_LINE_CHARS = 500   # chat services cap message size; keep lines sane
_POLL_S = 0.5               # dispatcher re-checks at least this often (clock may be fake)

Notify = Callable[[str, str, str], bool]


class InvalidAlertURL(ValueError):
    """Raised by a notify function for a URL that can never work (not retried)."""


def _one_line(value: object) -> str:
    return redact(re.sub(r"\s*\n\s*", " ", str(value).strip()))


def format_alert(incident: Incident) -> tuple[str, str]:
    """(title, body) in the contract's shape; every value redacted."""
    v = incident.verdict
    where = f" on {v.node}" if v.node else ""
    title = _one_line(f"[watchdog-d] {v.job}: {v.kind} rank {v.rank_label}{where}")
    # step < 0 means "no step yet" throughout the model: not worth a line
    step = v.step if v.step is not None and v.step >= 0 else None
    fields: list[tuple[str, object]] = [
        ("job", v.job), ("kind", v.kind), ("rank", v.rank), ("node", v.node),
        ("host", v.host), ("step", step), ("action", incident.action),
        ("detected_after_s", f"{v.detected_after_s:.2f}"),
        ("cause", v.cause), ("remedy", v.remedy),
    ]
    lines = [f"{k}: {_one_line(val)}" for k, val in fields if val is not None and val != ""]
    body = "\n".join(lines)
    if v.excerpt and v.excerpt.strip():
        # redact the whole excerpt *before* cutting: a key block cut in half
        # would otherwise lose its BEGIN line and escape the pattern
        tail = redact(v.excerpt.rstrip("\n")).splitlines()[-EXCERPT_LINES:]
        tail = [ln if len(ln) <= _EXCERPT_LINE_CHARS else ln[:_EXCERPT_LINE_CHARS] + "…" for ln in tail]
        body += "\n\n" + "\n".join(tail)
    return title, body


@functools.cache
def _apprise() -> Any:
    # Lazy: importing Apprise loads ~180 plugins (~0.4 s).  Its logger is cut
    # off from the root logger: at DEBUG it prints full endpoint paths, which
    # hold tokens for most services; our own log lines report failures.
    import apprise

    logging.getLogger("apprise").addHandler(logging.NullHandler())
    logging.getLogger("apprise").propagate = False
    return apprise


def validate_alert_url(url: str) -> str | None:
    """None when Apprise accepts ``url``; otherwise a one-line reason that
    does not repeat the URL's secrets."""
    if not isinstance(url, str) or not url.strip():
        return "alert URL is empty"
    m = re.match(r"\s*([A-Za-z][A-Za-z0-9+.\-]{0,31})://", url)
    if not m:
        return "alert URL has no scheme:// (expected e.g. json://host:port/path, dingtalk://TOKEN, mailtos://user:pass@host)"
    scheme = m.group(1).lower()
    try:
        obj = _apprise().Apprise()
        ok, n = obj.add(url), len(obj)
    except Exception as e:  # a plugin bug must not take the caller down
        return f"Apprise failed on alert URL {redact_url(url)}: {type(e).__name__}"
    if ok and n == 1:
        return None
    if n > 1:
        # Apprise splits on commas and spaces; one --alert is one URL
        return f"alert URL {redact_url(url)} holds {n} URLs; give each with its own --alert"
    try:  # N_MGR is Apprise-internal; used only for a better message
        if scheme not in _apprise().plugins.N_MGR:
            return f"alert URL scheme {scheme}:// is not supported by Apprise"
    except Exception:
        pass
    return f"Apprise cannot parse alert URL {redact_url(url)}: fields required by {scheme}:// are missing or malformed"


def apprise_notify(url: str, title: str, body: str, reasons: list[str] | None = None) -> bool:
    """Send to one URL with a fresh Apprise object (which also sidesteps the
    per-object throttle: most plugins sleep up to 5.5 s between two sends on
    one object).  Raises InvalidAlertURL when the URL cannot be parsed."""
    obj = _apprise().Apprise()
    if not obj.add(url) or len(obj) != 1:
        raise InvalidAlertURL(validate_alert_url(url) or "unparseable alert URL")
    result = obj.notify(body=body, title=title)
    ok = bool(result)   # Apprise 2.x returns an AppriseResult; bool() is success
    if not ok and reasons is not None:
        try:
            reasons.extend(e.message for e in result.logs() if e.level in ("WARNING", "ERROR"))
        except Exception:
            pass
    return ok


@dataclass
class _Delivery:
    url: str
    title: str
    body: str
    job: str
    kind: str
    tries: int = 0
    next_try: float = 0.0
    in_flight: bool = False


class AlertSender:
    """Deduplicate, queue and deliver alerts in the background."""

    def __init__(self, default_urls: Iterable[str] = (), *, notify: Notify | None = None,
                 cooldown_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 base_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 on_sent: Callable[[str, str, str], None] | None = None) -> None:
        # notify=None: real Apprise.  clock drives both the cooldown and backoff.
        self.default_urls = tuple(default_urls)
        self._notify, self._clock, self.on_sent = notify, clock, on_sent
        self.cooldown_s, self.base_backoff_s, self.max_backoff_s = cooldown_s, base_backoff_s, max_backoff_s
        self.sent: list[tuple[str, str, str]] = []
        self.counters = {"submitted": 0, "deduplicated": 0, "sent": 0, "failed": 0, "dropped": 0}
        self._last: dict[tuple[str, str, int | None, int], float] = {}
        self._queue: list[_Delivery] = []
        self._busy: set[str] = set()        # URLs with a delivery in flight
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- producer side: called from the coordinator's decision path ---------
    def submit(self, incident: Incident, urls: Iterable[str] = ()) -> bool:
        """Queue ``incident`` for every URL; True if queued, False if dropped
        as a duplicate (or on an internal error, which is logged)."""
        try:
            v = incident.verdict
            targets = [u for u in dict.fromkeys([*self.default_urls, *urls]) if u]
            key = (v.job, v.kind, v.rank, v.attempt)
            with self._cond:
                now = self._clock()
                last = self._last.get(key)
                # the window runs from the alert that was sent, not from drops
                dup = last is not None and now - last < self.cooldown_s
                if dup:
                    self.counters["deduplicated"] += 1
                else:
                    self._last[key] = now
                    if len(self._last) > 4096:   # forget keys whose cooldown is over
                        self._last = {k: t for k, t in self._last.items() if now - t < self.cooldown_s}
            if dup:
                log("alert_deduplicated", job=v.job, kind=v.kind, rank=v.rank_label,
                    job_attempt=v.attempt, cooldown_s=self.cooldown_s)
                return False
            if not targets:
                log("alert_no_destination", job=v.job, kind=v.kind)
                return True
            title, body = format_alert(incident)
            with self._cond:
                now = self._clock()
                for u in targets:
                    self._queue.append(_Delivery(u, title, body, v.job, v.kind, next_try=now))
                self.counters["submitted"] += 1
                self._cond.notify_all()
            return True
        except Exception as e:   # never raise into detection
            error("alert_submit_failed", error=redact(f"{type(e).__name__}: {e}"))
            return False

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- delivery side -------------------------------------------------------
    def start(self) -> AlertSender:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="watchdog-alerts", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Try everything pending once more now, wait up to ``timeout`` for
        the queue to drain, then stop the dispatcher."""
        deadline = time.monotonic() + timeout
        with self._cond:
            running = self._thread is not None and self._thread.is_alive()
            now = self._clock()
            for d in self._queue:
                d.next_try = min(d.next_try, now)
            self._cond.notify_all()
            while running and self._queue and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 0.05))
            self._stopping = True
            self._cond.notify_all()
            thread, left_over = self._thread, len(self._queue)
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
        if left_over:
            warn("alerts_undelivered", count=left_over)

    def _run(self) -> None:
        if self._notify is None:
            try:
                # pay the plugin import and the first URL parse (which loads the
                # plugin table, ~0.2 s) here, not on the first alert; nothing is sent
                _apprise().Apprise().add("json://127.0.0.1/warm-up")
            except Exception as e:
                error("alert_apprise_unavailable", error=type(e).__name__)
        with self._cond:
            while not self._stopping:
                now = self._clock()
                wait = _POLL_S
                for d in self._queue:
                    if d.in_flight or d.url in self._busy:
                        continue
                    if d.next_try <= now:
                        d.in_flight = True
                        self._busy.add(d.url)
                        threading.Thread(target=self._deliver, args=(d,),
                                         name="watchdog-alert-send", daemon=True).start()
                    else:
                        wait = min(wait, d.next_try - now)
                self._cond.wait(max(wait, 0.001))

    def _deliver(self, d: _Delivery) -> None:
        reasons: list[str] = []
        try:
            if self._notify is None:
                outcome = "sent" if apprise_notify(d.url, d.title, d.body, reasons) else "failed"
            else:
                outcome = "sent" if self._notify(d.url, d.title, d.body) else "failed"
        except InvalidAlertURL as e:   # retrying cannot help: drop, loudly
            outcome = "dropped"
            reasons.append(str(e))
        except Exception as e:
            outcome = "failed"
            reasons.append(f"{type(e).__name__}: {e}")
        reason = redact(reasons[-1])[:200] if reasons else None
        # exponent capped: "forever" must not end in a float overflow
        delay = min(self.base_backoff_s * 2 ** min(d.tries, 40), self.max_backoff_s)
        with self._cond:
            self._busy.discard(d.url)
            d.in_flight = False
            d.tries += 1
            self.counters[outcome] += 1
            if outcome == "failed":
                d.next_try = self._clock() + delay
            else:
                self._queue.remove(d)
            if outcome == "sent":
                self.sent.append((d.url, d.title, d.body))
            self._cond.notify_all()
        url = redact_url(d.url)
        if outcome == "failed":
            warn("alert_failed", job=d.job, kind=d.kind, url=url, attempt=d.tries,
                 retry_in_s=f"{delay:.2f}", error=reason)
        elif outcome == "dropped":
            error("alert_dropped", job=d.job, kind=d.kind, url=url, error=reason)
        else:
            log("alert_sent", job=d.job, kind=d.kind, url=url, attempt=d.tries)
            if self.on_sent is not None:
                try:
                    self.on_sent(d.url, d.title, d.body)
                except Exception as e:
                    error("alert_on_sent_failed", error=type(e).__name__)
