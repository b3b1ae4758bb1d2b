"""The shipped alert rules speak of metrics that exist: every ``watchdogd_*`` name in
deploy/prometheus/ is one the agent or the coordinator exports (a renamed family would
leave an alert that can never fire). promtool runs them in integration/test_alert_rules.py."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _exported() -> set[str]:
    text = "\n".join(p.read_text() for p in (ROOT / "watchdog_d").rglob("*.py"))
    return set(re.findall(r'"(watchdogd_[a-z0-9_]+)"', text))


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_metric_the_rules_use_is_exported() -> None:
    exported = _exported()
    used = set()
    for path in (ROOT / "deploy" / "prometheus").glob("*.yml"):
        used |= set(re.findall(r"\bwatchdogd_[a-z0-9_]+", path.read_text()))
    assert used, "no watchdogd_* metric in the rules"
    unknown = {name for name in used if name not in exported and _family(name) not in exported}
    assert not unknown, f"metrics the rules use that nothing exports: {sorted(unknown)}"
