"""Apprise: check an alert URL, lay the body out for its service, send it.

Apprise renders a body given without a format as the service's default format:
plain text handed to ``mailto://`` went out as HTML (no line breaks) with a
text part made from that HTML (one run-on paragraph).  So every send says what
it hands over: plain text, which a service that can show text shows as is
(json:// gets title and body exactly; Apprise converts for HTML- or
Markdown-only services, keeping the lines), or, for SMTP e-mail, our own HTML."""
from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

from ..log import error
from ..logs.redact import redact_url
from .message import fit, to_html

# DingTalk refuses a request over 20,000 bytes (its robot API; Apprise's plugin
# says the same).  The text is measured as it travels, JSON-escaped (\n, \uXXXX),
# with room left for the rest of the request (msgtype, @mobiles).
DINGTALK_TEXT_BYTES = 19_000


class InvalidAlertURL(ValueError):
    """Raised by a notify function for a URL that can never work (not retried)."""


@functools.cache
def _apprise() -> Any:
    # Lazy: importing Apprise loads ~180 plugins (~0.4 s).  Its logger is cut
    # off from the root logger: at DEBUG it prints full endpoint paths, which
    # hold tokens for most services; our own log lines report failures.
    import apprise

    logging.getLogger("apprise").addHandler(logging.NullHandler())
    logging.getLogger("apprise").propagate = False
    return apprise


def warm_up() -> None:
    """Pay the plugin import and the first URL parse (which loads the plugin
    table, ~0.2 s) now, not on the first alert; nothing is sent."""
    try:
        _apprise().Apprise().add("json://127.0.0.1/warm-up")
    except Exception as e:
        error("alert_apprise_unavailable", error=type(e).__name__)


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


def render_for(service: Any, title: str, body: str) -> tuple[str, Any]:
    """(body, body_format) for one Apprise service object."""
    fmt = _apprise().NotifyFormat
    from apprise.plugins.dingtalk import NotifyDingTalk
    from apprise.plugins.email import NotifyEmail

    if isinstance(service, NotifyDingTalk):
        # its text message is "title\r\nbody"; the limit is on bytes
        body = fit(body, lambda b: len(json.dumps(f"{title}\r\n{b}")) <= DINGTALK_TEXT_BYTES, "DingTalk")
    else:
        limit = int(getattr(service, "body_maxlen", 0) or 0)
        if limit > 0 and (service.title_maxlen <= 0 or getattr(service, "overflow_amalgamate_title", False)):
            limit -= len(title) + 2      # the title travels inside the body
        if limit > 0:
            body = fit(body, lambda b: len(b) <= limit, str(service.service_name))
    # SMTP e-mail is HTML unless its URL says ?format=text: hand it our HTML
    # (line breaks, escaped); Apprise makes the text/plain part from it
    if isinstance(service, NotifyEmail) and service.resolve_format(None) == fmt.HTML:
        return to_html(body), fmt.HTML
    return body, fmt.TEXT


def apprise_notify(url: str, title: str, body: str, reasons: list[str] | None = None) -> bool:
    """Send to one URL with a fresh Apprise object (which also sidesteps the
    per-object throttle: most plugins sleep up to 5.5 s between two sends on
    one object).  Raises InvalidAlertURL when the URL cannot be parsed."""
    obj = _apprise().Apprise()
    if not obj.add(url) or len(obj) != 1:
        raise InvalidAlertURL(validate_alert_url(url) or "unparseable alert URL")
    out, body_format = render_for(obj[0], title, body)
    result = obj.notify(body=out, title=title, body_format=body_format)
    ok = bool(result)   # Apprise 2.x returns an AppriseResult; bool() is success
    if not ok and reasons is not None:
        try:
            reasons.extend(e.message for e in result.logs() if e.level in ("WARNING", "ERROR"))
        except Exception:
            pass
    return ok
