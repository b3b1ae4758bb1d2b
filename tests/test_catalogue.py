"""The fingerprint catalogue's scanner and loader (watchdog_d/logs/fingerprints.py): offsets
and line numbers, rank attribution, and loading (or refusing) a catalogue file. What the
shipped catalogue finds is tested in test_fingerprints.py."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from watchdog_d.logs.fingerprints import Catalogue, CatalogueError, rank_from_text


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.load()


# -- offsets and line numbers --------------------------------------------------

def test_offsets_and_line_numbers(cat: Catalogue) -> None:
    lines = [
        "step=1 loss=2.0 (ünïcödé)",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB.",
        "step=2 loss=1.9",
        "",
        "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=python, GPU has fallen off the bus.",
        "Killed",
    ]
    data = ("\n".join(lines) + "\n").encode()
    found = cat.scan(data, base_offset=1000, first_line_no=41)
    assert [(f.kind, f.line_no) for f in found] == [("cuda_oom", 42), ("gpu_xid", 45), ("host_oom", 46)]
    for f in found:
        start = f.offset - 1000
        assert start == 0 or data[start - 1:start] == b"\n"
        assert data[start:].split(b"\n", 1)[0].decode() == f.line
    # the same lines one by one in a stream give the same numbers
    offset, numbered = 1000, []
    for n, ln in enumerate(lines, 41):
        numbered += [(f.kind, f.line_no, f.offset) for f in cat.scan((ln + "\n").encode(), offset, n)]
        offset += len((ln + "\n").encode())
    assert numbered == [(f.kind, f.line_no, f.offset) for f in found]


def test_one_finding_per_line_in_order(cat: Catalogue) -> None:
    data = (b"Killed\nRuntimeError: CUDA error: device-side assert triggered; Segmentation fault\n"
            b"normal\nSegmentation fault\n")
    assert [(f.kind, f.line_no) for f in cat.scan(data)] == [
        ("host_oom", 1), ("cuda_error", 2), ("segfault", 4)]


def test_finding_as_dict(cat: Catalogue) -> None:
    f = cat.scan_line("[rank3]: KeyError: 'input_ids'")
    d = f.as_dict()
    # the fields added since (priority, confidence) come on top: older readers ignore them
    assert set(d) == {"kind", "severity", "role", "line", "line_no", "offset", "fields",
                      "explanation", "remedy", "priority", "confidence"}
    assert d["priority"] == 900 and d["confidence"] == "certain"
    assert d["kind"] == "python_exception" and d["line_no"] == -1 and d["remedy"]
    json.dumps(d)


# -- rank attribution ------------------------------------------------------------

@pytest.mark.parametrize("line, rank", [
    ("[rank3]:[E709 17:05:38.162 ProcessGroupNCCL.cpp:632] [Rank 3] Watchdog caught", 3),
    ("[E ProcessGroupNCCL.cpp:457] [Rank 1] Watchdog caught collective operation timeout", 1),
    ("[rank0]:[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank 25] Heartbeat monitor timed out!", 0),
    ("[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank 25] Heartbeat monitor timed out!", 25),
    ("[PG ID 0 PG GUID 0(default_pg) Rank 7] failure detected by watchdog", 7),
    ("2024-06-01 INFO rank: 3 step=10 loss=1.0", 3),
    ("  rank      : 5 (local_rank: 1)", 5),
    ("metrics global_rank=12 local_rank=4", 12),
    ("RuntimeError: NCCL communicator was aborted on rank 2.", 2),
    ("local_rank: 3 started", None),
    ("step=10 loss=0.3", None),
    ("", None),
])
def test_rank_from_text(line: str, rank: int | None) -> None:
    assert rank_from_text(line) == rank


# -- the loader --------------------------------------------------------------------

GOOD_ENTRY = """
[[fingerprint]]
kind = "demo"
severity = "error"
role = "cause"
keywords = ["boom"]
patterns = ['boom (?P<n>\\d+)']
explanation = "x"
remedy = "y"
"""


def write(tmp_path: Path, body: str, triggers: str = '["boom", "Error"]') -> Path:
    p = tmp_path / "cat.toml"
    p.write_text(f"[catalogue]\ntriggers = {triggers}\n" + textwrap.dedent(body))
    return p


def test_loader_accepts_minimal(tmp_path: Path) -> None:
    c = Catalogue.load(write(tmp_path, GOOD_ENTRY))
    assert c.scan_line("boom 3").fields == {"n": "3"}
    assert c.scan_line("boom x") is None


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.replace('kind = "demo"\n', ""), r"#1.*missing field 'kind'"),
    (lambda b: b.replace('remedy = "y"\n', ""), r"#1 \('demo'\).*missing field 'remedy'"),
    (lambda b: b.replace("'boom (?P<n>\\d+)'", "'boom (['"), r"#1 \('demo'\).*bad regex"),
    (lambda b: b.replace('"error"', '"critical"'), r"#1 \('demo'\).*unknown severity 'critical'"),
    (lambda b: b.replace('"cause"', '"symptom"'), r"#1 \('demo'\).*unknown role 'symptom'"),
    (lambda b: b.replace('["boom"]', "[]"), r"#1 \('demo'\).*keywords.*empty"),
    (lambda b: b.replace('["boom"]', '[""]'), r"#1 \('demo'\).*keywords.*non-empty"),
    (lambda b: b + 'priority = "high"\n', r"#1 \('demo'\).*priority"),
    (lambda b: b + 'keyword = ["x"]\n', r"#1 \('demo'\).*unknown field.*keyword"),
])
def test_loader_errors_name_entry_and_problem(tmp_path: Path, edit, message: str) -> None:
    body = GOOD_ENTRY + GOOD_ENTRY.replace('"demo"', '"other"')
    first, second = body.split("[[fingerprint]]")[1:]
    path = write(tmp_path, "[[fingerprint]]" + edit(first) + "[[fingerprint]]" + second)
    with pytest.raises(CatalogueError, match=message):
        Catalogue.load(path)


def test_loader_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read"):
        Catalogue.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[fingerprint]\nkind=")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        Catalogue.load(bad)
    with pytest.raises(CatalogueError, match="no \\[\\[fingerprint\\]\\]"):
        Catalogue.load(write(tmp_path, ""))
    with pytest.raises(CatalogueError, match="triggers"):
        Catalogue.load(write(tmp_path, GOOD_ENTRY, triggers="[]"))
    with pytest.raises(CatalogueError, match="ignore.*bad regex"):
        Catalogue.load(write(tmp_path, 'ignore = ["("]\n' + GOOD_ENTRY))


def test_priority_and_file_order(tmp_path: Path) -> None:
    generic = GOOD_ENTRY.replace('"demo"', '"generic"').replace("'boom (?P<n>\\d+)'", "'boom'")
    specific = GOOD_ENTRY.replace('"demo"', '"specific"')
    # file order: the first entry that matches wins
    c = Catalogue.load(write(tmp_path, generic + specific))
    assert c.scan_line("boom 1").kind == "generic"
    # a lower priority number is tried first, whatever the file order
    c = Catalogue.load(write(tmp_path, generic + "priority = 900\n" + specific))
    assert c.scan_line("boom 1").kind == "specific"
    assert c.scan_line("boom x").kind == "generic"


def test_catalogue_is_reviewed_data(cat: Catalogue) -> None:
    # every entry explains itself in one line and says what to do
    for e in cat.entries:
        assert "\n" not in e.explanation and "\n" not in e.remedy
        assert len(e.remedy) > 40, e.kind
    # the patterns compile to str regexes and capture only named groups worth reporting
    for e in cat.entries:
        for p in e.patterns:
            assert isinstance(p, re.Pattern) and isinstance(p.pattern, str)
