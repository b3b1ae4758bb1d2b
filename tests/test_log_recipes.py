"""examples/logging: the log-shipping recipes find the files watchdog-d writes and label
them right. Their path patterns and regexes are run here against the paths watchdog-d
itself builds (wrapper.launch) for the job ids it makes; the daemons' JSON lines have the
keys the recipes read. (The shippers themselves do not install here: docs/not-yet.md.)"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from watchdog_d import log
from watchdog_d.wrapper.launch import job_id_for, rank_log_dir

RECIPES = Path(__file__).parents[1] / "examples" / "logging"


def _glob_re(pattern: str) -> re.Pattern:
    """A shipper's glob: ``*`` within one path component."""
    return re.compile("".join("[^/]*" if c == "*" else re.escape(c) for c in pattern) + "$")


def _vector() -> tuple[list[str], re.Pattern]:
    cfg = tomllib.loads((RECIPES / "vector.toml").read_text())
    source = cfg["transforms"]["rank_labels"]["source"]
    regex = re.search(r"parse_regex!\(\.file, r'(.+?)'\)", source).group(1)
    return cfg["sources"]["rank_logs"]["include"], re.compile(regex)


def _fluent_bit() -> tuple[list[str], re.Pattern]:
    conf = (RECIPES / "fluent-bit.conf").read_text()
    paths = re.search(r"^\s*Path\s+(\S+)$", conf, re.M).group(1).split(",")
    parsers = (RECIPES / "parsers-watchdog-d.conf").read_text()
    regex = re.search(r"Name\s+watchdog_d_rank_path\s+Format\s+regex\s+Regex\s+(\S+)", parsers).group(1)
    return paths, re.compile(regex.replace("(?<", "(?P<"))      # (Onigmo's named groups)


JOB_IDS = [job_id_for(["torchrun", "--rdzv-id=exp.v2_3", "t.py"], {}),
           job_id_for(["torchrun", "t.py"], {"SLURM_JOB_ID": "481516"}),
           job_id_for(["torchrun", "t.py"], {})]


@pytest.mark.parametrize("recipe", [_vector, _fluent_bit], ids=["vector", "fluent-bit"])
@pytest.mark.parametrize("state_dir", ["/var/lib/watchdog-d", "/var/lib/watchdog-d/jobs"])
def test_the_recipe_finds_every_rank_log_and_labels_it(recipe, state_dir: str) -> None:
    includes, regex = recipe()
    for job in JOB_IDS:
        attempt_dir = rank_log_dir("", state_dir, job, 3)
        for name, rank in (("rank-0.log", "0"), ("rank-127.log", "127"), ("launcher.log", None)):
            path = str(attempt_dir / name)
            assert any(_glob_re(g).match(path) for g in includes), (path, includes)
            m = regex.search(path)
            assert m and m["job_id"] == job and m["attempt"] == "3", (path, regex.pattern)
            assert m["rank"] == rank and (m["launcher"] == "launcher") == (rank is None)
        rotated = str(attempt_dir / "rank-0.log.1")
        assert not any(_glob_re(g).match(rotated) for g in includes)


def test_the_daemons_json_lines_have_the_keys_the_recipes_read() -> None:
    text = (RECIPES / "vector.toml").read_text()
    for key in log.FIXED:
        assert f"line.{key}" in text
    assert "--log-format json" in text
