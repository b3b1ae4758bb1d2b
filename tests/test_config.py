"""Configuration (watchdog_d/config.py): file < env WATCHDOG_D_* < flags, and clear errors.

``env=`` is always passed explicitly: the real environment never leaks in.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from watchdog_d.config import Config, ConfigError, load
from watchdog_d.wrapper.checkpoints import Rule


def toml(tmp_path: Path, text: str, name: str = "wd.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_with_nothing_given() -> None:
    cfg = load(flags={}, env={})
    assert cfg == Config()
    assert (cfg.on_failure, cfg.max_restarts, cfg.min_stall_timeout, cfg.stall_factor,
            cfg.startup_timeout, cfg.node_timeout, cfg.grace) == ("teardown", 0, 60.0, 5.0, 900.0, 5.0, 10.0)
    assert cfg.alert == [] and cfg.coordinator == ""


def test_unrelated_environment_is_ignored() -> None:
    cfg = load(env={"HOME": "/root", "WATCHDOG_D": "x", "WATCHDOG_D_NOT_A_SETTING": "y"})
    assert cfg == Config()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = toml(tmp_path, 'on_failure = "alert"\nmax_restarts = 1\nstall_factor = 2.0\n'
                          'job_id = "from-file"\nalert = ["json://file/x"]\n')
    env = {"WATCHDOG_D_MAX_RESTARTS": "2", "WATCHDOG_D_STALL_FACTOR": "3",
           "WATCHDOG_D_JOB_ID": "from-env"}
    flags = {"stall_factor": 4.0, "job_id": None, "grace": None}     # None: flag not given
    cfg = load(flags=flags, env=env, config_file=path)
    assert cfg.on_failure == "alert"             # file only
    assert cfg.max_restarts == 2                 # env beats file
    assert cfg.stall_factor == 4.0               # flag beats env and file
    assert cfg.job_id == "from-env"              # a None flag does not override
    assert cfg.grace == 10.0                     # nobody set it: default
    assert cfg.alert == ["json://file/x"]


def test_flags_beat_env_for_lists(tmp_path: Path) -> None:
    cfg = load(flags={"alert": ["json://flag/1", "json://flag/2"]},
               env={"WATCHDOG_D_ALERT": "json://env/1"})
    assert cfg.alert == ["json://flag/1", "json://flag/2"]


def test_config_file_from_flag_and_from_env(tmp_path: Path) -> None:
    a = toml(tmp_path, 'job_id = "a"\n', "a.toml")
    b = toml(tmp_path, 'job_id = "b"\n', "b.toml")
    assert load(flags={"config": a}, env={}).job_id == "a"
    assert load(env={"WATCHDOG_D_CONFIG": b}).job_id == "b"
    assert load(flags={"config": a}, env={"WATCHDOG_D_CONFIG": b}).job_id == "a"   # flag wins
    assert load(env={"WATCHDOG_D_CONFIG": b}, config_file=a).job_id == "a"


def test_file_keys_may_use_dashes(tmp_path: Path) -> None:
    cfg = load(env={}, config_file=toml(tmp_path, 'on-failure = "restart"\nmax-restarts = 3\n'))
    assert (cfg.on_failure, cfg.max_restarts) == ("restart", 3)


def test_empty_env_value_means_unset() -> None:
    assert load(env={"WATCHDOG_D_ON_FAILURE": "", "WATCHDOG_D_GRACE": ""}) == Config()


def test_env_values_are_coerced() -> None:
    cfg = load(env={"WATCHDOG_D_MAX_RESTARTS": "3", "WATCHDOG_D_MIN_STALL_TIMEOUT": "30",
                    "WATCHDOG_D_STALL_FACTOR": "2.5", "WATCHDOG_D_COORDINATOR": "10.0.0.1:7700",
                    "WATCHDOG_D_ON_FAILURE": "restart"})
    assert cfg.max_restarts == 3 and isinstance(cfg.max_restarts, int)
    assert cfg.min_stall_timeout == 30.0 and isinstance(cfg.min_stall_timeout, float)
    assert cfg.stall_factor == 2.5
    assert cfg.coordinator == "10.0.0.1:7700"
    assert cfg.on_failure == "restart"


@pytest.mark.parametrize("raw, expected", [
    ("json://a/b", ["json://a/b"]),
    # white space separates; a comma belongs to the URL (several e-mail recipients)
    ("mailtos://u:p@h?to=a@x,b@y", ["mailtos://u:p@h?to=a@x,b@y"]),
    ("json://a/b dingtalk://t", ["json://a/b", "dingtalk://t"]),
    ("  json://a/b   dingtalk://t  mailtos://u:p@h ", ["json://a/b", "dingtalk://t", "mailtos://u:p@h"]),
    ("json://a/b\tdingtalk://t\n", ["json://a/b", "dingtalk://t"]),
    ("   ", []),
])
def test_alert_list_from_env(raw: str, expected: list[str]) -> None:
    assert load(env={"WATCHDOG_D_ALERT": raw}).alert == expected


def test_alert_in_file_as_string_or_list(tmp_path: Path) -> None:
    assert load(env={}, config_file=toml(tmp_path, 'alert = "json://a/b json://c/d"\n')).alert == [
        "json://a/b", "json://c/d"]
    assert load(env={}, config_file=toml(tmp_path, 'alert = ["json://a/b"]\n', "l.toml")).alert == [
        "json://a/b"]


# -- errors name the setting ------------------------------------------------------------------
def test_malformed_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, 'on_failure = "restart\nmax_restarts = \n')
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        load(env={}, config_file=path)
    assert path in str(e.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(env={}, config_file=str(tmp_path / "nope.toml"))


def test_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'stall_factr'"):
        load(env={}, config_file=toml(tmp_path, "stall_factr = 3\n"))


@pytest.mark.parametrize("text, name", [
    ('max_restarts = "many"\n', "max_restarts"),
    ("max_restarts = true\n", "max_restarts"),
    ("stall_factor = true\n", "stall_factor"),
    ('grace = "soon"\n', "grace"),
    ("alert = [1, 2]\n", "alert"),
    ("alert = 3\n", "alert"),
    ("min_stall_timeout = [60]\n", "min_stall_timeout"),
])
def test_wrong_type_in_file(tmp_path: Path, text: str, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(env={}, config_file=toml(tmp_path, text))


@pytest.mark.parametrize("env", [
    {"WATCHDOG_D_MAX_RESTARTS": "two"},
    {"WATCHDOG_D_MAX_RESTARTS": "1.5"},
    {"WATCHDOG_D_STALL_FACTOR": "x5"},
    {"WATCHDOG_D_NODE_TIMEOUT": "5s"},
])
def test_wrong_type_in_env(env: dict[str, str]) -> None:
    name = next(iter(env)).removeprefix("WATCHDOG_D_").lower()
    with pytest.raises(ConfigError, match=name):
        load(env=env)


def test_wrong_type_in_flags() -> None:
    with pytest.raises(ConfigError, match="max_restarts"):
        load(flags={"max_restarts": "lots"}, env={})


@pytest.mark.parametrize("value", ["retry", "Restart", "", "none"])
def test_bad_on_failure(value: str) -> None:
    if value == "":
        # empty in the env means unset; a flag may still say it
        with pytest.raises(ConfigError, match="on_failure"):
            load(flags={"on_failure": value}, env={})
        return
    with pytest.raises(ConfigError, match="on_failure"):
        load(env={"WATCHDOG_D_ON_FAILURE": value})


def test_bad_on_failure_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_failure"):
        load(env={}, config_file=toml(tmp_path, 'on_failure = "reboot"\n'))


@pytest.mark.parametrize("name", ["coordinator", "listen"])
@pytest.mark.parametrize("value", ["localhost", "host:", "host:port", "10.0.0.1:77a0", "host:-1"])
def test_bad_host_port(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(flags={name: value}, env={})
    with pytest.raises(ConfigError, match=name):
        load(env={"WATCHDOG_D_" + name.upper(): value})


@pytest.mark.parametrize("value", ["localhost:7700", "10.0.0.1:1", "[::1]:7700", "node-1.cluster:65535"])
def test_good_host_port(value: str) -> None:
    assert load(flags={"coordinator": value}, env={}).coordinator == value


def test_port_out_of_range() -> None:
    with pytest.raises(ConfigError, match="coordinator"):
        load(flags={"coordinator": "localhost:99999"}, env={})


@pytest.mark.parametrize("flags, name", [
    ({"min_stall_timeout": 0}, "min_stall_timeout"),
    ({"startup_timeout": -1}, "startup_timeout"),
    ({"node_timeout": 0.0}, "node_timeout"),
    ({"stall_factor": 0.5}, "stall_factor"),
    ({"max_restarts": -1}, "max_restarts"),
    ({"grace": -0.1}, "grace"),
    ({"job_id": "my job/1"}, "job_id"),
    ({"tls_cert": "/c.pem"}, "tls_cert"),
])
def test_bad_values(flags: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(flags=flags, env={})


@pytest.mark.parametrize("name", ["stall_factor", "min_stall_timeout", "node_timeout", "grace"])
def test_nan_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(env={"WATCHDOG_D_" + name.upper(): "nan"})


def test_infinite_int_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_restarts"):
        load(env={}, config_file=toml(tmp_path, "max_restarts = inf\n"))


def test_fractional_int_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_restarts"):
        load(env={}, config_file=toml(tmp_path, "max_restarts = 2.5\n"))


def test_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_finish_fills_machine_defaults_without_overriding() -> None:
    cfg = load(flags={"node_id": "n7", "state_dir": "/srv/wd", "socket": "/run/x.sock"}, env={}).finish()
    assert (cfg.node_id, cfg.state_dir, cfg.socket) == ("n7", "/srv/wd", "/run/x.sock")
    blank = load(env={}).finish()
    assert blank.node_id and blank.state_dir and blank.socket.endswith("agent.sock")


def test_the_example_config_file_loads() -> None:
    example = Path(__file__).resolve().parents[1] / "systemd" / "watchdog-d.toml"
    cfg = load(env={}, config_file=str(example))
    assert (cfg.on_failure, cfg.crash_loop, cfg.restart_backoff) == ("teardown", 3, 0.0)
    assert Rule.of(cfg).markers[0] == ".metadata"


def test_restart_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="restart_backoff"):
        load(flags={"restart_backoff": -1.0}, env={})
    cfg = load(env={"WATCHDOG_D_CHECKPOINT_MARKERS": "DONE .metadata", "WATCHDOG_D_CRASH_LOOP": "0"})
    assert Rule.of(cfg).markers == ("DONE", ".metadata") and cfg.crash_loop == 0
