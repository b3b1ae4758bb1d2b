"""The layout keeps its promises (docs/architecture.md): one package per place the code
runs, daemons that load only what they need, a pure core without import cycles, small
modules, and one home for every default."""
from __future__ import annotations

import ast
import dataclasses
import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import watchdog_d
from watchdog_d.config import SPEC_FIELDS, Config, load
from watchdog_d.core.model import JobSpec

PKG = Path(watchdog_d.__file__).parent
ROOT = PKG.parent
PLACES = ("rank", "wrapper", "agent", "coordinator", "core", "logs", "proto", "demo", "doctor")


def _modules(package: str) -> list[str]:
    path = PKG / package.removeprefix("watchdog_d.").replace(".", "/")
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_one_package_per_place_and_a_small_top_level() -> None:
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(PLACES)
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "config.py", "log.py", "options.py",
                   "sdnotify.py"]
    assert len(top) <= 8


def test_no_hand_written_module_over_400_lines() -> None:
    big = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
           if "_pb2" not in p.name and (n := len(p.read_text().splitlines())) > 400}
    assert not big, f"split these by responsibility: {big}"


@pytest.mark.parametrize("daemon, foreign", [
    ("agent", ("torch", "watchdog_d.coordinator", "watchdog_d.wrapper", "apprise", "sqlite3")),
    ("coordinator", ("torch", "watchdog_d.agent", "watchdog_d.wrapper", "psutil")),
])
def test_a_daemon_loads_neither_torch_nor_the_other_processes_code(daemon: str, foreign: tuple) -> None:
    modules = _modules(f"watchdog_d.{daemon}")
    assert len(modules) >= 3
    loaded = _loaded_after("\n".join(f"import {m}" for m in modules))
    wrong = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in foreign))
    assert not wrong, f"importing watchdog_d.{daemon} loaded {wrong}"


def test_the_rank_side_loads_only_the_standard_library() -> None:
    loaded = _loaded_after("import watchdog_d, watchdog_d.rank.api, watchdog_d.rank.beacon")
    ours = sorted(m for m in loaded if m.startswith("watchdog_d"))
    assert ours == ["watchdog_d", "watchdog_d.rank", "watchdog_d.rank.api", "watchdog_d.rank.beacon"]
    assert not {"grpc", "psutil", "torch", "google.protobuf"} & loaded


@pytest.mark.parametrize("argv", [
    ["status", "--state-dir", "{tmp}"],
    ["events", "--state-dir", "{tmp}"],
    ["diagnose", "{tmp}/rank-0.log"],
])
def test_offline_commands_load_no_grpc_nor_psutil(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "rank-0.log").write_text("RuntimeError: CUDA out of memory. Tried to allocate 2 GiB\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    loaded = _loaded_after(f"from watchdog_d.cli import main\ntry:\n    main({args!r})\n"
                           f"except SystemExit:\n    pass")
    assert not {"grpc", "psutil", "apprise", "torch"} & loaded, sorted(
        {"grpc", "psutil", "apprise", "torch"} & loaded)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, inside an ``if TYPE_CHECKING``) for each import in a file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            guarded = typing_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                base = child.module or ""
                names = [base] if base else [a.name for a in child.names]
                found.extend((n.split(".")[0], guarded) for n in names)
            visit(child, guarded)

    visit(tree, False)
    return found


def test_the_core_has_no_import_cycles_and_no_type_only_imports() -> None:
    core = PKG / "core"
    graph: dict[str, set[str]] = {}
    for path in core.glob("*.py"):
        imports = _imports(path)
        assert not [m for m, typing_only in imports if typing_only], f"{path.name}: TYPE_CHECKING import"
        graph[path.stem] = {m for m, _ in imports}
        text = path.read_text()
        assert "from .." not in text and "import watchdog_d" not in text, f"{path.name} leaves the core"

    def visit(node: str, seen: tuple[str, ...]) -> None:
        assert node not in seen, f"import cycle in core/: {' -> '.join(seen + (node,))}"
        for nxt in graph.get(node, ()):
            visit(nxt, seen + (node,))

    for module in graph:
        visit(module, ())


# -- one home for every default ------------------------------------------------------

# what a deployment chooses (where things are, what is turned on), not a default to restate
DEPLOYMENT = {"coordinator", "listen", "metrics_port", "alert", "state_dir", "node_id", "socket",
              "token_file", "tls_cert", "tls_key", "tls_ca", "checkpoint_dir", "log_dir"}


def test_the_example_config_restates_the_defaults_exactly() -> None:
    example = ROOT / "systemd" / "watchdog-d.toml"
    data = tomllib.loads(example.read_text())
    load(env={}, config_file=str(example))        # every key is a known setting
    defaults = Config()
    wrong = {k: (v, getattr(defaults, k)) for k, v in data.items()
             if k not in DEPLOYMENT and v != getattr(defaults, k)}
    assert not wrong, f"systemd/watchdog-d.toml disagrees with the defaults (file, default): {wrong}"
    # and it shows every job setting a user may want to change
    missing = set(SPEC_FIELDS) - set(data) - {"job_id", "alert"}
    assert not missing, f"systemd/watchdog-d.toml does not show {sorted(missing)}"


def test_a_jobs_defaults_are_the_specs() -> None:
    spec, cfg = JobSpec(job_id="j"), Config(job_id="j")
    assert cfg.job_spec() == spec
    for name, field in SPEC_FIELDS.items():
        if name not in ("job_id", "alert"):
            assert getattr(Config, name) == getattr(JobSpec, field), name


def test_no_default_is_written_twice() -> None:
    """The old copies are gone: a setting read back from a dict with a number as fallback
    (the agent's ``raw.get("min_stall_timeout_s", 60)``), a tee with rotation defaults of
    its own (5 backups, where the rank said 3)."""
    from watchdog_d.rank import tee

    settings = {f.name for f in dataclasses.fields(Config)} | {f.name for f in dataclasses.fields(JobSpec)}
    fallback = re.compile(r"""\.get\(\s*["']([A-Za-z_]+)["']\s*,\s*-?[0-9]""")
    where = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in PKG.rglob("*.py") if "_pb2" not in p.name
             for m in fallback.finditer(p.read_text()) if m.group(1) in settings]
    assert not where, where
    assert tee.OPTIONS["--max-bytes"] == tee.OPTIONS["--backups"] == ""


def test_every_flag_of_every_command_says_what_it_means() -> None:
    import argparse

    from watchdog_d.options import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        silent = [a.option_strings[-1] for a in p._actions
                  if a.option_strings and a.dest != "help" and not a.help]
        assert not silent, f"watchdog-d {name}: flags without help: {silent}"
    run = sub.choices["run"].format_help()
    assert "(default 60)" in run and "(default teardown)" in run      # from Config, not retyped


def test_test_modules_have_unique_basenames() -> None:
    # pytest imports tests/ and integration/ by basename: a name in both stops the whole
    # collection ("import file mismatch"), and CI would run nothing
    root = PKG.parent
    names = [p.name for d in ("tests", "integration") for p in (root / d).glob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
