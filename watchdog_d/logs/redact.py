"""Scrub secrets from text before it reaches a log line, an alert or the incident log.

Rank logs are written by user code and may contain anything: an ``hf_`` token
echoed by a login helper, a database URL with a password, a private key dumped
by a misconfigured script.  ``redact`` replaces what looks like a secret with
``[REDACTED]`` and leaves ordinary training output (``step=10 loss=0.5
tokens=4096``) alone.  False positives are cheap (a word hidden in an alert);
false negatives leak credentials, so where in doubt the patterns err on hiding.
"""
from __future__ import annotations

import re
from collections.abc import Callable

MASK = "[REDACTED]"

# PEM private keys span lines; an excerpt may stop before the END line, so an
# unterminated block is hidden up to the end of the text.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)

# scheme://user:pass@host -> scheme://[REDACTED]@host.  The userinfo may itself
# contain '@' (an unescaped password), so match greedily up to the last '@'
# before the path.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]*(?:@[^\s/?#@]*)*@")

# Authorization headers of any scheme (Bearer, Basic, token, ...), in header,
# key=value or JSON form.  The scheme word is kept, the credential hidden.
_AUTH_HEADER = re.compile(
    r"""(?i)\b((?:proxy-)?authorization["']?\s*[:=]\s*["']?)"""
    r"""(?:(bearer|basic|token|digest|negotiate)\s+)?([^\s"',;]+)"""
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")

# Well-known token shapes; lower bounds on length keep identifiers such as
# ``hf_transfer`` or ``sk-learn`` readable.
_TOKENS = re.compile(
    r"\b(?:"
    r"hf_[A-Za-z0-9]{20,}"                       # HuggingFace
    r"|gh[pousr]_[A-Za-z0-9]{20,}"               # GitHub classic tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"             # GitHub fine-grained
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"                # AWS access key id
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"           # Slack
    r"|sk-[A-Za-z0-9_\-]{20,}"                   # OpenAI / Anthropic style
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"  # JWT
    r")"
)

# key=value, key: value, "key": "value", --key value.  The key may carry a
# prefix (HF_TOKEN, db_password, aws_secret_access_key) but must *end* in one of
# the words below, so ``tokens=4096`` or ``max_new_tokens=8`` never match.
_SECRET_WORDS = (
    r"password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key"
    r"|secret[_-]?key|private[_-]?key|credentials?|client[_-]?secret"
)
_KV = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:[A-Za-z0-9]+[_.\-])*(?:" + _SECRET_WORDS + r"))"
    # the look-ahead keeps an already-masked value from being masked twice
    r"""(["']?\s*[:=]\s*)(?!["']?\[REDACTED\])(?:"([^"\n]*)"|'([^'\n]*)'|([^\s"'&,;}\])]+))"""
)
_FLAG = re.compile(
    r"(?i)(--(?:[a-z0-9]+-)*(?:password|passwd|token|secret|api-?key|api_key))(\s+|=)([^\s-][^\s]*)"
)
# Tokenizer settings print as ``eos_token=</s>``; they are not credentials.
_HARMLESS_KEYS = ("eos_token", "bos_token", "pad_token", "unk_token", "sep_token",
                  "cls_token", "mask_token")

# A bare line of PEM body (64 base64 chars) left after an excerpt was cut
# inside a key block.  Pure hex lines (sha256 digests) are not touched.
_PEM_LINE = re.compile(r"(?m)^[ \t]*[A-Za-z0-9+/]{60,76}={0,2}[ \t]*$")
_HEX_LINE = re.compile(r"^\s*[0-9a-fA-F]+\s*$")


def _kv(m: re.Match[str]) -> str:
    key, sep = m.group(1), m.group(2)
    if key.lower().endswith(_HARMLESS_KEYS):
        return m.group(0)
    if m.group(3) is not None:
        value = f'"{MASK}"'
    elif m.group(4) is not None:
        value = f"'{MASK}'"
    else:
        value = MASK
    return f"{key}{sep}{value}"


def _auth(m: re.Match[str]) -> str:
    scheme = f"{m.group(2)} " if m.group(2) else ""
    return f"{m.group(1)}{scheme}{MASK}"


def _pem_line(m: re.Match[str]) -> str:
    return m.group(0) if _HEX_LINE.match(m.group(0)) else MASK


_STEPS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (_PRIVATE_KEY, MASK),
    (_URL_USERINFO, r"\1" + MASK + "@"),
    (_AUTH_HEADER, _auth),
    (_BEARER, r"\1 " + MASK),
    (_TOKENS, MASK),
    (_FLAG, r"\1\2" + MASK),
    (_KV, _kv),
    (_PEM_LINE, _pem_line),
)


def redact(text: str) -> str:
    """``text`` with every recognised secret replaced by ``[REDACTED]``."""
    if not text:
        return text
    for pattern, repl in _STEPS:
        text = pattern.sub(repl, text)
    return text


# Schemes whose URL host is a network host (safe and useful to show).  For
# most Apprise services the "host" slot holds a token (dingtalk://TOKEN,
# tgram://BOTTOKEN/...), so everything after the scheme is hidden there.
_HOST_SCHEMES = {
    "json", "jsons", "xml", "xmls", "form", "forms", "http", "https",
    "mailto", "mailtos", "apprise", "apprises", "gotify", "gotifys",
    "mmost", "mmosts", "matrix", "matrixs", "rocket", "rockets",
}
_URL = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)$", re.DOTALL)
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(:\d{1,5})?$")


def redact_url(url: str) -> str:
    """A loggable form of an (Apprise) URL: scheme and, where it is a real
    host, ``host[:port]``; never user, password, path or query."""
    m = _URL.match(url or "")
    if not m:
        return MASK
    scheme = m.group(1).lower()
    authority = m.group(2).rsplit("@", 1)[-1]   # drop userinfo
    rest = m.group(3)
    if scheme not in _HOST_SCHEMES or not _HOSTPORT.match(authority):
        return f"{scheme}://…" if (m.group(2) or rest) else f"{scheme}://"
    return f"{scheme}://{authority}" + ("/…" if rest.strip("/") else "")
