"""Log fingerprints: name the failure a line of a rank's log reports.

The catalogue is data (``fingerprints.toml`` next to this module, format in its
header); this module loads and validates it and matches log text against it.
Pure and stdlib-only: the agent tails logs with it, ``diagnose`` reads files
with it, neither may import torch.

Speed comes from never running a regex on a normal training line. ``scan``
searches the block for a handful of trigger literals with ``bytes.find`` (C
speed, no per-line Python work), takes only the lines around the hits, and on
those checks the entries' keywords and then their patterns.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).with_name("fingerprints.toml")
SEVERITIES = ("fatal", "error", "warning")
ROLES = ("cause", "consequence")
DEFAULT_PRIORITY = 100
LINE_MAX = 500        # chars of the line kept in a Finding
EVAL_WINDOW = 8192    # a longer line is matched on this many chars either side of the hit

_REQUIRED = ("kind", "severity", "role", "keywords", "patterns", "explanation", "remedy")
_OPTIONAL = ("priority", "exclude", "examples", "non_examples")
# C0 and C1 control characters except tab; a log line is for people and alerts
_CONTROL = {c: None for c in (*range(0, 9), *range(10, 32), *range(127, 160))}


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

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "role": self.role,
                "line": self.line, "line_no": self.line_no, "offset": self.offset,
                "fields": dict(self.fields), "explanation": self.explanation,
                "remedy": self.remedy}


class Catalogue:
    def __init__(self, entries: list[Fingerprint] | tuple[Fingerprint, ...],
                 triggers: tuple[str, ...] = (),
                 ignore: tuple[re.Pattern[str], ...] = ()) -> None:
        self._entries = tuple(entries)
        # stable sort: equal priorities keep file order
        self._ordered = tuple(sorted(self._entries, key=lambda e: e.priority))
        self._ignore = tuple(ignore)
        self._triggers = _effective_triggers(triggers, self._entries)
        self._trigger_bytes = tuple(t.encode() for t in self._triggers)
        self._keywords = tuple(sorted({k for e in self._entries for k in e.keywords}))

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
        items = raw.get("fingerprint")
        if not isinstance(items, list) or not items:
            raise CatalogueError(f"{source}: no [[fingerprint]] entries")
        entries = [_entry(i, item, source) for i, item in enumerate(items, 1)]
        triggers = _str_list(head.get("triggers", []), f"{source}: [catalogue] triggers",
                             allow_empty=True)
        ignore = tuple(_compile(p, f"{source}: [catalogue] ignore")
                       for p in _str_list(head.get("ignore", []),
                                          f"{source}: [catalogue] ignore", allow_empty=True))
        for t in triggers:
            if not any(t in k for e in entries for k in e.keywords):
                raise CatalogueError(f"{source}: trigger {t!r} is in no keyword (a wasted scan)")
        return cls(entries, tuple(triggers), ignore)

    @property
    def entries(self) -> tuple[Fingerprint, ...]:
        return self._entries

    @property
    def triggers(self) -> tuple[str, ...]:
        """The literals ``scan`` searches every block for."""
        return self._triggers

    def scan_line(self, line: str | bytes) -> Finding | None:
        """Classify one line (a trailing newline is ignored); offsets are unknown (-1)."""
        if isinstance(line, (bytes, bytearray)):
            raw = bytes(line).rstrip(b"\n")
            hit = _first_hit(raw, self._trigger_bytes)
            if hit < 0:
                return None
            return self._match_bytes(raw, 0, len(raw), hit, -1, -1)
        text = line.rstrip("\n")
        hits = [i for i in (text.find(k) for k in self._keywords) if i >= 0]
        if not hits:
            return None
        text, hit = _window(text, min(hits), "\r")
        return self._match_text(text, hit, -1, -1)

    def scan(self, data: bytes, base_offset: int = 0, first_line_no: int = 1) -> list[Finding]:
        """Findings in a block of whole lines, in line order, at most one per line."""
        if not data:
            return []
        find = data.find
        first_hit: dict[int, int] = {}  # line start -> first trigger hit in that line
        for trig in self._trigger_bytes:
            i = find(trig)
            while i >= 0:
                start = data.rfind(b"\n", 0, i) + 1
                if first_hit.get(start, i + 1) > i:
                    first_hit[start] = i
                end = find(b"\n", i)
                if end < 0:
                    break
                i = find(trig, end + 1)  # the rest of this line is decided below
        findings: list[Finding] = []
        line_no, counted = first_line_no, 0
        for start in sorted(first_hit):
            end = find(b"\n", start)
            if end < 0:
                end = len(data)
            line_no += data.count(b"\n", counted, start)
            counted = start
            f = self._match_bytes(data, start, end, first_hit[start], line_no, base_offset + start)
            if f is not None:
                findings.append(f)
        return findings

    # -- internals ---------------------------------------------------------

    def _match_bytes(self, data: bytes, start: int, end: int, hit: int,
                     line_no: int, offset: int) -> Finding | None:
        # long lines: only a window around the hit is decoded and matched
        lo, hi = max(start, hit - EVAL_WINDOW), min(end, hit + EVAL_WINDOW)
        # a tqdm-style line holds several \r-separated screens: use the hit's
        a = data.rfind(b"\r", lo, hit) + 1 or lo
        b = data.find(b"\r", hit, hi)
        raw = data[max(a, lo):hi if b < 0 else b]
        text = raw.decode("utf-8", "replace")
        return self._match_text(text, None, line_no, offset)

    def _match_text(self, text: str, hit: int | None, line_no: int, offset: int) -> Finding | None:
        text = text.translate(_CONTROL)
        if any(p.search(text) for p in self._ignore):
            return None
        for fp in self._ordered:
            m = fp.match(text)
            if m is not None:
                return Finding(kind=fp.kind, severity=fp.severity, role=fp.role,
                               line=_clip(text, m.start()), line_no=line_no, offset=offset,
                               fields={k: v for k, v in m.groupdict().items() if v},
                               explanation=fp.explanation, remedy=fp.remedy)
        return None


# -- rank attribution ------------------------------------------------------

_RANK_PATTERNS = (
    re.compile(r"^\s*\[rank(\d+)\]:"),                    # torchrun 2.x: "[rank3]:"
    re.compile(r"\[(?:PG\b[^\]]*?\s)?Rank (\d+)\]"),      # "[Rank 3]", "[PG 0 Rank 3]", "[PG ID 0 PG GUID 0(default_pg) Rank 3]"
    re.compile(r"\bglobal[_ ]rank\s*[:=]\s*(\d+)\b"),
    # "rank: 3", "rank=3", torchrun's "rank      : 3 (local_rank: 1)"; not local/node/group ranks
    re.compile(r"(?<![\w-])(?<!local )(?<!node )(?<!group )[Rr]ank\s*[:=]\s*(\d+)\b"),
    re.compile(r"\bon rank (\d+)\b"),                      # "NCCL communicator was aborted on rank 2"
    re.compile(r"\[rank(\d+)\]"),
)


def rank_from_text(line: str) -> int | None:
    """The global rank a log line names in its prefix or text, or None."""
    for pattern in _RANK_PATTERNS:
        m = pattern.search(line)
        if m is not None:
            return int(m.group(1))
    return None


# -- helpers ---------------------------------------------------------------

def _first_hit(raw: bytes, literals: tuple[bytes, ...]) -> int:
    hits = [i for i in (raw.find(t) for t in literals) if i >= 0]
    return min(hits) if hits else -1


def _window(text: str, hit: int, cr: str) -> tuple[str, int]:
    lo, hi = max(0, hit - EVAL_WINDOW), min(len(text), hit + EVAL_WINDOW)
    a = text.rfind(cr, lo, hit) + 1 or lo
    b = text.find(cr, hit, hi)
    a = max(a, lo)
    return text[a:hi if b < 0 else b], hit - a


def _clip(text: str, pos: int) -> str:
    if len(text) <= LINE_MAX:
        return text
    start = 0 if pos < LINE_MAX - 100 else pos - 100  # keep the match in view
    return text[start:start + LINE_MAX]


def _effective_triggers(declared: tuple[str, ...], entries: tuple[Fingerprint, ...]) -> tuple[str, ...]:
    """Declared triggers plus every keyword none of them covers, minus redundant ones."""
    lits = set(declared)
    for e in entries:
        for k in e.keywords:
            if not any(t in k for t in declared):
                lits.add(k)
    # a literal that contains another one finds nothing the shorter one misses
    return tuple(sorted(t for t in lits if not any(o != t and o in t for o in lits)))


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
    keywords = _str_list(item["keywords"], f"{where}: keywords")
    patterns = [_compile(p, f"{where}: patterns[{n}]")
                for n, p in enumerate(_str_list(item["patterns"], f"{where}: patterns"))]
    exclude = [_compile(p, f"{where}: exclude[{n}]")
               for n, p in enumerate(_str_list(item.get("exclude", []), f"{where}: exclude", True))]
    return Fingerprint(
        kind=item["kind"], severity=item["severity"], role=item["role"],
        keywords=tuple(keywords), patterns=tuple(patterns),
        explanation=item["explanation"].strip(), remedy=item["remedy"].strip(),
        priority=priority, exclude=tuple(exclude),
        examples=tuple(_str_list(item.get("examples", []), f"{where}: examples", True)),
        non_examples=tuple(_str_list(item.get("non_examples", []), f"{where}: non_examples", True)),
        index=i)
