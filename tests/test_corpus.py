"""The failure-log corpus (tests/corpus/): real logs from public bug reports, each with
the label a careful reader gives it (tests/corpus/SOURCES.md). ``diagnose`` must name
the labelled root cause of at least 95 % of the failures and raise nothing on a healthy
or noisy log. The table of hits per class is printed (``pytest -s``, or run this file:
``python tests/test_corpus.py``)."""
from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from watchdog_d.logs.diagnose import diagnose
from watchdog_d.logs.fingerprints import Catalogue

CORPUS = Path(__file__).with_name("corpus")
TARGET = 0.95
HEALTHY = "none"
MIN_FAILURES, MIN_HEALTHY = 150, 30
_ROW = re.compile(r"^\|\s*(?P<file>[\w.-]+\.log)\s*\|\s*(?P<label>[\w-]+)\s*\|(?P<project>[^|]*)\|"
                  r"(?P<source>[^|]*)\|(?P<note>.*)\|\s*$")


@dataclass(frozen=True)
class Case:
    file: str
    label: str
    project: str
    source: str
    note: str


@dataclass(frozen=True)
class Outcome:
    case: Case
    said: str            # the root cause's kind, or HEALTHY
    confidence: str      # certain | probable | "" (nothing said)

    @property
    def right(self) -> bool:
        return self.said == self.case.label


def cases() -> list[Case]:
    text = (CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    return [Case(m["file"], m["label"], m["project"].strip(), m["source"].strip(),
                 m["note"].strip())
            for m in map(_ROW.match, text.splitlines()) if m]


def judge(case: Case, catalogue: Catalogue) -> Outcome:
    cause = diagnose([str(CORPUS / "logs" / case.file)], catalogue)["root_cause"]
    if cause is None:
        return Outcome(case, HEALTHY, "")
    return Outcome(case, cause["kind"], cause.get("confidence", "certain"))


def table(outcomes: list[Outcome]) -> str:
    """Hits per labelled class, then the misses (what was said instead)."""
    total, hit = Counter(o.case.label for o in outcomes), Counter(o.case.label for o in outcomes if o.right)
    failures = [o for o in outcomes if o.case.label != HEALTHY]
    rows = [f"{'class':<28} {'right':>5} / {'logs':<4} {'rate':>6}"]
    for label in sorted(total, key=lambda k: (k == HEALTHY, -total[k], k)):
        rows.append(f"{label:<28} {hit[label]:>5} / {total[label]:<4} {hit[label] / total[label]:>6.0%}")
    right = sum(o.right for o in failures)
    rows.append(f"{'failures, all classes':<28} {right:>5} / {len(failures):<4} "
                f"{right / max(1, len(failures)):>6.1%}")
    probable = sum(o.right and o.confidence == "probable" for o in failures)
    rows.append(f"  of which said as probable: {probable}")
    for o in outcomes:
        if not o.right:
            rows.append(f"MISS {o.case.file}: {o.case.label} said as {o.said} ({o.case.source})")
    return "\n".join(rows)


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    catalogue = Catalogue.load()
    return [judge(c, catalogue) for c in cases()]


def test_the_corpus_is_whole_and_sourced() -> None:
    listed = cases()
    files = {p.name for p in (CORPUS / "logs").glob("*.log")}
    names = [c.file for c in listed]
    assert len(names) == len(set(names)), "a log listed twice in SOURCES.md"
    assert set(names) == files, (f"not in SOURCES.md: {sorted(files - set(names))}; "
                                 f"listed, no file: {sorted(set(names) - files)}")
    assert all(c.source for c in listed), "every log names its public source"
    assert sum(c.label != HEALTHY for c in listed) >= MIN_FAILURES
    assert sum(c.label == HEALTHY for c in listed) >= MIN_HEALTHY


def test_diagnosis_names_the_labelled_root_cause(outcomes: list[Outcome]) -> None:
    print("\n" + table(outcomes))
    failures = [o for o in outcomes if o.case.label != HEALTHY]
    rate = sum(o.right for o in failures) / len(failures)
    assert rate >= TARGET, table(outcomes)


def test_no_false_alarm_on_a_healthy_or_noisy_log(outcomes: list[Outcome]) -> None:
    alarms = [o for o in outcomes if o.case.label == HEALTHY and o.said != HEALTHY]
    assert not alarms, "\n".join(f"{o.case.file}: said {o.said}" for o in alarms)


def test_a_healthy_log_gives_the_live_agent_nothing_to_act_on() -> None:
    # the live rule tears a job down on a fatal finding of a rank that is still running:
    # no line of a healthy or noisy log may be one (nor an error, which diagnose reports)
    catalogue = Catalogue.load()
    for case in (c for c in cases() if c.label == HEALTHY):
        found = catalogue.scan((CORPUS / "logs" / case.file).read_bytes())
        assert not [f for f in found if f.severity in ("fatal", "error")], (case.file, found)


if __name__ == "__main__":
    catalogue = Catalogue.load()
    picked = [c for c in cases() if not sys.argv[1:] or c.file in sys.argv[1:]]
    print(table([judge(c, catalogue) for c in picked]))
