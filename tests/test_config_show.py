"""``watchdog-d config show``: every setting, its effective value and its source."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from watchdog_d.config import ConfigError, load_with_sources


def _show(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_D_")}
    return subprocess.run([sys.executable, "-m", "watchdog_d", "config", "show", *args],
                          env={**base, **env}, capture_output=True, text=True, timeout=30)


def test_sources_default_file_env_flag(tmp_path: Path) -> None:
    f = tmp_path / "wd.toml"
    f.write_text('grace = 3\nnode_timeout = 7\nalert = ["json://user:secret@127.0.0.1:9/x"]\n')
    out = _show(["--config", str(f), "--state-dir", str(tmp_path / "s"), "--json"],
                {"WATCHDOG_D_NODE_TIMEOUT": "9"})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows["grace"] == {"value": 3.0, "source": f"file {f}"}
    assert rows["node_timeout"] == {"value": 9.0, "source": "env WATCHDOG_D_NODE_TIMEOUT"}
    assert rows["state_dir"] == {"value": str(tmp_path / "s"), "source": "flag"}
    assert rows["stall_factor"]["source"] == "default"
    assert rows["node_id"]["source"] == "default (this machine)"
    assert "secret" not in out.stdout and rows["alert"]["value"] == ["json://127.0.0.1:9/…"]


def test_the_text_form_is_toml_a_config_file_accepts(tmp_path: Path) -> None:
    out = _show(["--state-dir", str(tmp_path)], {"WATCHDOG_D_STALL_FACTOR": "4"})
    assert out.returncode == 0, out.stderr
    assert "stall_factor = 4.0" in out.stdout and "# env WATCHDOG_D_STALL_FACTOR" in out.stdout
    parsed = tomllib.loads(out.stdout)        # comments are the sources
    f = tmp_path / "again.toml"
    f.write_text(out.stdout)
    again, sources = load_with_sources(config_file=str(f), env={})
    assert again.stall_factor == 4.0 == parsed["stall_factor"]
    assert sources["stall_factor"] == f"file {f}"


def test_an_unknown_key_names_the_closest_known_one(tmp_path: Path) -> None:
    f = tmp_path / "wd.toml"
    f.write_text("metric_port = 9100\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'metric_port' \(did you mean 'metrics_port'\?\)"):
        load_with_sources(config_file=str(f), env={})
    out = _show(["--config", str(f)], {})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"watchdog-d: config file {f}: unknown setting 'metric_port' (did you mean 'metrics_port'?)"]
    f.write_text("zzzz = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'zzzz'$"):
        load_with_sources(config_file=str(f), env={})
