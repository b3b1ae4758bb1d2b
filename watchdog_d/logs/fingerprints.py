"""Log fingerprints: name the failure a line of a rank's log reports.

The catalogue is data (``fingerprints.toml`` next to this module, format in its
header); this module loads and validates it and matches log text against it.
Pure and stdlib-only: the agent tails logs with it, ``diagnose`` reads files
with it, neither may import torch.

Speed comes from never running a regex on a normal training line. ``scan``
looks for the catalogue's few broad trigger literals over the whole block at
C speed (``bytes.find``, or memchr on a trigger's rarest byte), takes only the
lines holding one, and on those checks each entry's keywords, then its
patterns. Searching each of the ~130 keywords over the block instead was
measured at ~15 MB/s; the triggers keep the cost to ~15 passes.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lineshape import CONTROL, PREFIX, wrapped_rows, rank_from_text

__all__ = ["Catalogue", "CatalogueError", "Finding", "Fingerprint", "rank_from_text"]

DEFAULT_PATH = Path(__file__).with_name("fingerprints.toml")
SEVERITIES = ("fatal", "error", "warning")
ROLES = ("cause", "consequence")
CONFIDENCES = ("certain", "probable")
DEFAULT_PRIORITY = 100
LINE_MAX = 500        # chars of the line kept in a Finding
EVAL_WINDOW = 8192    # a longer line is matched on this many chars either side of the hit

_REQUIRED = ("kind", "severity", "role", "keywords", "patterns", "explanation", "remedy")
_OPTIONAL = ("priority", "confidence", "exclude", "examples", "non_examples")


try:   # the optional C prefilter (setup.py builds it; pure Python otherwise)
    from . import _fastscan
except ImportError:  # pragma: no cover - depends on the build
    _fastscan = None

class CatalogueError(ValueError):
    """The catalogue file is missing, not TOML, or an entry is malformed."""


@dataclass(frozen=True)
class Fingerprint:
    kind: str
    severity: str
    role: str
    keywords: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    explanation: str
    remedy: str
    priority: int = DEFAULT_PRIORITY
    confidence: str = "certain"   # "probable": the line suggests the cause, not proves it
    exclude: tuple[re.Pattern[str], ...] = ()
    examples: tuple[str, ...] = ()
    non_examples: tuple[str, ...] = ()
    index: int = 0  # 1-based position in the file, for messages

    def match(self, text: str) -> re.Match[str] | None:
        """First pattern match on a cleaned line, or None (keywords are checked too)."""
        if not any(k in text for k in self.keywords):
            return None
        if any(x.search(text) for x in self.exclude):
            return None
        for pattern in self.patterns:
            m = pattern.search(text)
            if m is not None:
                return m
        return None


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    role: str
    line: str            # cleaned, at most LINE_MAX chars
    line_no: int         # 1-based in the scanned stream, -1 when unknown
    offset: int          # byte offset of the line start in the stream, -1 when unknown
    fields: dict[str, str] = field(default_factory=dict)
    explanation: str = ""
    remedy: str = ""
    priority: int = DEFAULT_PRIORITY   # the entry's: generic wordings carry a larger number
    confidence: str = "certain"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "role": self.role,
                "line": self.line, "line_no": self.line_no, "offset": self.offset,
                "fields": dict(self.fields), "explanation": self.explanation,
                "remedy": self.remedy, "priority": self.priority,
                "confidence": self.confidence}


class Catalogue:
    def __init__(self, entries: list[Fingerprint] | tuple[Fingerprint, ...],
                 triggers: tuple[str, ...], ignore: tuple[re.Pattern[str], ...] = ()) -> None:
        self._entries = tuple(entries)
        self._ordered = tuple(sorted(self._entries, key=_order))
        self._ignore = tuple(ignore)
        self._triggers = tuple(triggers)
        # a trigger containing another one finds no line the shorter one misses
        lits = [t for t in dict.fromkeys(triggers) if not any(o != t and o in t for o in triggers)]
        self._plan = tuple((t.encode(), _anchor_candidates(t.encode())) for t in lits)
        self._trigger_bytes = tuple(t for t, _ in self._plan)
        # the C prefilter's terms (see _fastscan.c); else the pure-Python loop
        self._use_c = len(lits) <= 64 and all(len(t) <= 255 for t in self._trigger_bytes)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalogue:
        p = Path(path) if path is not None else DEFAULT_PATH
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise CatalogueError(f"{p}: cannot read: {e}") from e
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise CatalogueError(f"{p}: not valid TOML: {e}") from e
        return cls.from_dict(raw, source=str(p))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "catalogue") -> Catalogue:
        head = raw.get("catalogue", {})
        if not isinstance(head, dict):
            raise CatalogueError(f"{source}: [catalogue] must be a table")
        triggers = _str_list(head.get("triggers"), f"{source}: [catalogue] triggers")
        ignore = tuple(_compile(p, f"{source}: [catalogue] ignore")
                       for p in _str_list(head.get("ignore", []),
                                          f"{source}: [catalogue] ignore", allow_empty=True))
        items = raw.get("fingerprint")
        if not isinstance(items, list) or not items:
            raise CatalogueError(f"{source}: no [[fingerprint]] entries")
        entries = [_entry(i, item, source) for i, item in enumerate(items, 1)]
        return cls(entries, tuple(triggers), ignore)

    @property
    def entries(self) -> tuple[Fingerprint, ...]:
        return self._entries

    @property
    def triggers(self) -> tuple[str, ...]:
        return self._triggers

    def scan_line(self, line: str | bytes) -> Finding | None:
        """Classify one line (a trailing newline is ignored); offsets are unknown (-1)."""
        if isinstance(line, (bytes, bytearray)):
            raw = bytes(line).rstrip(b"\n")
            hits = [i for i in (raw.find(t) for t, _ in self._plan) if i >= 0]
            if not hits:
                return None
            text = _window_bytes(raw, 0, len(raw), min(hits))
        else:
            text = line.rstrip("\n")
            hits = [i for i in (text.find(t) for t in self._triggers) if i >= 0]
            if not hits:
                return None
            text = _window(text, min(hits), "\r")
        return self._finding(text, -1, -1)

    def scan(self, data: bytes, base_offset: int = 0, first_line_no: int = 1) -> list[Finding]:
        """Findings in a block of whole lines, in line order, at most one per line."""
        return self.scan_counted(data, base_offset, first_line_no)[0]

    def scan_counted(self, data: bytes, base_offset: int = 0,
                     first_line_no: int = 1) -> tuple[list[Finding], int]:
        """``scan``, and the number of newlines in ``data`` (counted in the same pass)."""
        if not data:
            return [], 0
        if self._use_c and _fastscan is not None:
            # one pass in C for all triggers and the newlines (the same answer as below)
            first_hit, newlines = _fastscan.first_hits(data, self._trigger_bytes)
        else:
            first_hit, newlines = self._first_hits(data), data.count(b"\n")
        findings: list[Finding] = []
        line_no, counted, done = first_line_no, 0, 0
        for start in sorted(first_hit):
            if start < done:
                continue                  # a row of a wrapped line already matched whole
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end
            joined = wrapped_rows(data, start, end)
            text = _window_bytes(data, start, end, first_hit[start])
            found = self._classify(text)
            if joined is not None:
                # a join stands only where it says as much as the row alone: a generic
                # pattern's tail running on into the next line must not outrank the row's own
                whole = self._classify(joined[0], joined[1])
                if whole is not None and (found is None or _order(whole[0]) <= _order(found[0])):
                    text, found = joined[0], whole
                    start, done = joined[2], joined[3]
            if found is not None:
                # newlines are only counted up to lines that yield a finding
                line_no += data.count(b"\n", counted, start)
                counted = start
                findings.append(_make(text, *found, line_no, base_offset + start))
        return findings, newlines

    # -- internals ---------------------------------------------------------

    def _first_hits(self, data: bytes) -> dict[int, int]:
        """line start -> first trigger hit in that line (pure Python)."""
        first_hit: dict[int, int] = {}
        sample = data[:_SAMPLE] if len(data) >= 4 * _SAMPLE else b""
        counts: dict[bytes, int] = {}
        for lit, anchors in self._plan:
            anchor = _pick_anchor(lit, anchors, sample, counts, len(data))
            if anchor is None:
                _find_all(data, lit, 0, first_hit)
            else:
                _anchor_all(data, lit, anchor, first_hit)
        return first_hit

    def _classify(self, text: str, bounds: tuple[int, ...] = ()
                  ) -> tuple[Fingerprint, re.Match[str], int] | None:
        """The first entry matching ``text`` without its launcher prefix, its match, and
        the prefix's length. With ``bounds`` (where wrapped rows were joined) only a
        match across one of them counts: a join must be what made the line match."""
        if any(p.search(text) for p in self._ignore):
            return None
        cut = PREFIX.match(text)
        shift = cut.end() if cut else 0
        bare = text[shift:]
        for fp in self._ordered:
            m = fp.match(bare)
            if m is not None and (not bounds or any(m.start() + shift < b < m.end() + shift
                                                     for b in bounds)):
                return fp, m, shift
        return None

    def _finding(self, text: str, line_no: int, offset: int) -> Finding | None:
        text = text.translate(CONTROL)
        found = self._classify(text)
        return None if found is None else _make(text, *found, line_no, offset)


def _order(fp: Fingerprint) -> tuple[int, int]:
    """Where an entry is tried: by priority, then file order."""
    return fp.priority, fp.index


def _make(text: str, fp: Fingerprint, m: re.Match[str], shift: int, line_no: int,
          offset: int) -> Finding:
    return Finding(kind=fp.kind, severity=fp.severity, role=fp.role,
                   line=_clip(text, m.start() + shift), line_no=line_no, offset=offset,
                   fields={k: v for k, v in m.groupdict().items() if v},
                   explanation=fp.explanation, remedy=fp.remedy, priority=fp.priority,
                   confidence=fp.confidence)


# -- block search ----------------------------------------------------------
# bytes.find costs ~2.6 ns per (len(needle)+1) bytes; a 1-byte find is memchr
# (~0.1 ns/byte) plus ~300 ns of Python per hit. A trigger holding a byte that
# is rare in this block (an uppercase K or X) is searched through that byte.

_SAMPLE = 1 << 16
_COMMON = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789 \t.,:;/_-=+'\"[](){}<>|%#*")


def _anchor_candidates(lit: bytes) -> tuple[tuple[bytes, int], ...]:
    seen: dict[int, int] = {}
    for k, b in enumerate(lit):
        if b not in _COMMON and b not in seen:
            seen[b] = k
    return tuple((bytes([b]), k) for b, k in seen.items())


def _pick_anchor(lit: bytes, anchors: tuple[tuple[bytes, int], ...], sample: bytes,
                 counts: dict[bytes, int], n: int) -> tuple[bytes, int, int] | None:
    if not anchors or not sample:
        return None
    for a, _ in anchors:
        if a not in counts:
            counts[a] = sample.count(a)
    a, k = min(anchors, key=lambda ak: counts[ak[0]])
    expected = counts[a] * n / len(sample)
    find_ns = n * (2.6 / (len(lit) + 1) + 0.1)
    if n * 0.1 + expected * 300 >= find_ns:
        return None
    return a, k, int(2 * expected) + 256  # hit budget before falling back to find


def _mark(data: bytes, s: int, first_hit: dict[int, int]) -> int:
    """Record the line holding data[s]; return the index of its newline (-1: none)."""
    start = data.rfind(b"\n", 0, s) + 1
    if first_hit.get(start, s + 1) > s:
        first_hit[start] = s
    return data.find(b"\n", s)


def _find_all(data: bytes, lit: bytes, i: int, first_hit: dict[int, int]) -> None:
    find = data.find
    i = find(lit, i)
    while i >= 0:
        end = _mark(data, i, first_hit)
        if end < 0:
            return
        i = find(lit, end + 1)  # the rest of this line is classified anyway


def _anchor_all(data: bytes, lit: bytes, anchor: tuple[bytes, int, int],
                first_hit: dict[int, int]) -> None:
    a, k, budget = anchor
    find, starts = data.find, data.startswith
    i = find(a, k)
    while i >= 0:
        budget -= 1
        if budget < 0:  # the sample lied: finish with a plain search
            _find_all(data, lit, i - k, first_hit)
            return
        if starts(lit, i - k):
            end = _mark(data, i - k, first_hit)
            if end < 0:
                return
            i = find(a, end + 1 + k)
        else:
            i = find(a, i + 1)


# -- helpers ---------------------------------------------------------------

def _window_bytes(data: bytes, start: int, end: int, hit: int) -> str:
    """The cleaned text of data[start:end] to match: around hit, in its \\r segment."""
    lo, hi = max(start, hit - EVAL_WINDOW), min(end, hit + EVAL_WINDOW)
    # a tqdm-style line holds several \\r-separated screens: keep the hit's one
    a = data.rfind(b"\r", lo, hit) + 1 or lo
    b = data.find(b"\r", hit, hi)
    return data[a:hi if b < 0 else b].decode("utf-8", "replace").translate(CONTROL)


def _window(text: str, hit: int, cr: str) -> str:
    lo, hi = max(0, hit - EVAL_WINDOW), min(len(text), hit + EVAL_WINDOW)
    a = text.rfind(cr, lo, hit) + 1 or lo
    b = text.find(cr, hit, hi)
    return text[a:hi if b < 0 else b]


def _clip(text: str, pos: int) -> str:
    if len(text) <= LINE_MAX:
        return text
    start = 0 if pos < LINE_MAX - 100 else pos - 100  # keep the match in view
    return text[start:start + LINE_MAX]


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise CatalogueError(f"{where}: bad regex {pattern!r}: {e}") from e


def _str_list(value: Any, where: str, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogueError(f"{where}: must be a list of non-empty strings")
    if not value and not allow_empty:
        raise CatalogueError(f"{where}: must not be empty")
    return value


def _entry(i: int, item: Any, source: str) -> Fingerprint:
    kind = item.get("kind") if isinstance(item, dict) else None
    where = f"{source}: fingerprint #{i}" + (f" ({kind!r})" if isinstance(kind, str) else "")
    if not isinstance(item, dict):
        raise CatalogueError(f"{where}: must be a table")
    for key in _REQUIRED:
        if key not in item:
            raise CatalogueError(f"{where}: missing field {key!r}")
    unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CatalogueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for key in ("kind", "explanation", "remedy"):
        if not isinstance(item[key], str) or not item[key].strip():
            raise CatalogueError(f"{where}: {key!r} must be a non-empty string")
    if item["severity"] not in SEVERITIES:
        raise CatalogueError(f"{where}: unknown severity {item['severity']!r} (one of {SEVERITIES})")
    if item["role"] not in ROLES:
        raise CatalogueError(f"{where}: unknown role {item['role']!r} (one of {ROLES})")
    priority = item.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise CatalogueError(f"{where}: 'priority' must be an integer")
    confidence = item.get("confidence", "certain")
    if confidence not in CONFIDENCES:
        raise CatalogueError(f"{where}: unknown confidence {confidence!r} (one of {CONFIDENCES})")
    keywords = _str_list(item["keywords"], f"{where}: keywords")
    patterns = [_compile(p, f"{where}: patterns[{n}]")
                for n, p in enumerate(_str_list(item["patterns"], f"{where}: patterns"))]
    exclude = [_compile(p, f"{where}: exclude[{n}]")
               for n, p in enumerate(_str_list(item.get("exclude", []), f"{where}: exclude", True))]
    return Fingerprint(
        kind=item["kind"], severity=item["severity"], role=item["role"],
        keywords=tuple(keywords), patterns=tuple(patterns),
        explanation=item["explanation"].strip(), remedy=item["remedy"].strip(),
        priority=priority, confidence=confidence, exclude=tuple(exclude),
        examples=tuple(_str_list(item.get("examples", []), f"{where}: examples", True)),
        non_examples=tuple(_str_list(item.get("non_examples", []), f"{where}: non_examples",
                                     True)),
        index=i)
