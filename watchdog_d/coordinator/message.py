"""An alert's words: the title and body of an incident (DESIGN §3), and the body
laid out for a channel (HTML for e-mail, cut to a channel's size limit).

The plain-text body is the one source: ``key: value`` lines, then a blank line
and the log excerpt.  Key lines are one line each with single spaces, so the
first blank line always separates them from the excerpt."""
from __future__ import annotations

import html
from collections.abc import Callable

from ..core.model import Incident
from ..logs.redact import redact

EXCERPT_LINES = 40
_EXCERPT_LINE_CHARS = 500   # chat services cap message size; keep lines sane


def _one_line(value: object) -> str:
    # every run of whitespace is one space: the key lines read the same in every
    # channel (HTML collapses runs anyway; the e-mail's text part comes from it)
    return redact(" ".join(str(value).split()))


def action_suffix(action: str) -> str:
    """What the title says was done (DESIGN §3: nothing for a plain teardown).
    ``none`` says "no action": the job was left alone, so a person must look."""
    if not action or action == "teardown":
        return ""
    words = {"gave_up": "gave up", "none": "no action"}.get(action, action.replace("_", " "))
    return f" — {words}"


def format_alert(incident: Incident) -> tuple[str, str]:
    """(title, body) in the contract's shape; every value redacted."""
    v = incident.verdict
    where = f" on {v.node}" if v.node else ""
    title = _one_line(f"[watchdog-d] {v.job}: {v.kind} rank {v.rank_label}{where}"
                      f"{action_suffix(incident.action)}")
    # step < 0 means "no step yet" throughout the model: not worth a line
    step = v.step if v.step is not None and v.step >= 0 else None
    fields: list[tuple[str, object]] = [
        ("job", v.job), ("kind", v.kind), ("rank", v.rank), ("node", v.node),
        ("host", v.host), ("step", step), ("action", incident.action),
        ("detected_after_s", f"{v.detected_after_s:.2f}"),
        ("cause", v.cause), ("remedy", v.remedy),
        ("suspect", v.suspect),      # the job's nodes marked suspect before (core.suspects)
    ]
    lines = [f"{k}: {_one_line(val)}" for k, val in fields if val is not None and str(val).strip()]
    body = "\n".join(lines)
    if v.excerpt and v.excerpt.strip():
        # redact the whole excerpt *before* cutting: a key block cut in half
        # would otherwise lose its BEGIN line and escape the pattern
        tail = redact(v.excerpt.rstrip("\n")).splitlines()[-EXCERPT_LINES:]
        tail = [ln if len(ln) <= _EXCERPT_LINE_CHARS else ln[:_EXCERPT_LINE_CHARS] + "…" for ln in tail]
        body += "\n\n" + "\n".join(tail)
    return title, body


def split_body(body: str) -> tuple[str, str]:
    """(key lines, excerpt); the excerpt is "" when there is none."""
    head, _, excerpt = body.partition("\n\n")
    return head, excerpt


def to_html(body: str) -> str:
    """The body as HTML for e-mail: a block per key line, the excerpt in <pre>
    (its indentation is a traceback's structure).  Apprise derives the e-mail's
    text/plain part from this HTML; blocks, <br/> and <pre> come back as the
    same lines."""
    head, excerpt = split_body(body)
    out = "".join(f"<div>{html.escape(line)}</div>" for line in head.splitlines())
    if excerpt:
        out += f"<br/><pre>{html.escape(excerpt)}</pre>"
    return out


def fit(body: str, fits: Callable[[str], bool], channel: str) -> str:
    """``body`` cut to what ``fits`` accepts: the excerpt's oldest lines go first,
    with a line saying so; the key lines are never cut (a body whose key lines
    alone do not fit is left to the channel)."""
    if fits(body):
        return body
    head, excerpt = split_body(body)
    lines = excerpt.splitlines()
    for keep in range(len(lines) - 1, -1, -1):
        note = f"[{len(lines) - keep} earlier log lines cut to fit {channel}'s message size limit]"
        candidate = "\n".join([head, "", note, *lines[len(lines) - keep:]])
        if fits(candidate):
            return candidate
    return head
