"""One config object, loaded once: file < env ``WATCHDOG_D_*`` < flags.

The file is TOML with the same names as the flags (``on_failure = "restart"``,
``alert = ["json://..."]``). Lists in the environment are separated by white
space (not commas: an Apprise URL may contain commas).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import socket
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .core.model import JobSpec, SpecError


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and why."""


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/watchdog-d"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "watchdog-d")


NODE_SOCKET = "/run/watchdog-d/agent.sock"   # the node's agent under systemd (its unit)


def default_socket() -> str:
    if os.geteuid() == 0:
        return NODE_SOCKET
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/watchdog-d-{os.geteuid()}"
    return os.path.join(base, "watchdog-d", "agent.sock")


# the settings that make a job's spec: config name -> JobSpec field (its default is the spec's)
SPEC_FIELDS = {"job_id": "job_id", "on_failure": "on_failure", "max_restarts": "max_restarts",
               "min_stall_timeout": "min_stall_timeout_s", "stall_factor": "stall_factor",
               "startup_timeout": "startup_timeout_s", "node_timeout": "node_timeout_s",
               "alert": "alert_urls", "restart_backoff": "restart_backoff_s",
               "crash_loop": "crash_loop", "shutdown_timeout": "shutdown_timeout_s",
               "straggler_window": "straggler_window", "straggler_lag": "straggler_lag",
               "exclude_stragglers": "exclude_stragglers"}
_SPEC = JobSpec(job_id="")


@dataclass
class Config:
    """Every setting of every process, with its default; nothing else holds a default."""

    # where to report
    coordinator: str = ""
    agent_socket: str = ""
    socket: str = ""                     # the agent's own socket (agent command)
    node_id: str = ""
    listen: str = "0.0.0.0:7700"
    # standby coordinators (docs/operations.md): etcd://H1:2379,H2:2379 ("": one coordinator, no etcd)
    ha: str = ""
    name: str = ""                       # this coordinator among the --ha ones (unset: the host name)
    advertise: str = ""                  # where agents reach it (unset: --listen, its host the host name)
    lease_ttl: float = 5.0               # the leader's etcd lease; a standby leads within this + 1 s
    metrics_port: int = 0                # Prometheus /metrics (agent, coordinator); 0: off
    metrics_address: str = "0.0.0.0"     # ... on this address
    # the job (the defaults of a job's policy are JobSpec's)
    job_id: str = ""
    alert: list[str] = field(default_factory=list)
    on_failure: str = _SPEC.on_failure
    max_restarts: int = _SPEC.max_restarts
    restart_backoff: float = _SPEC.restart_backoff_s   # seconds before relaunch i: this x 2^(i-1)
    crash_loop: int = _SPEC.crash_loop                  # attempts in a row without a step -> gave_up
    checkpoint_dir: str = ""
    checkpoint_glob: str = "*"
    # a checkpoint directory counts only with one of these files directly inside
    # (.metadata: torch.distributed.checkpoint writes it last; trainer_state.json: HF
    # Trainer); an empty list accepts any non-empty directory
    checkpoint_markers: list[str] = field(default_factory=lambda: [
        ".metadata", "trainer_state.json", "COMPLETE", "_SUCCESS", ".complete"])
    checkpoint_partial: list[str] = field(default_factory=lambda: [
        "*.tmp", "*.partial", "*.incomplete", "*.lock", "tmp*", ".*"])
    min_stall_timeout: float = _SPEC.min_stall_timeout_s
    stall_factor: float = _SPEC.stall_factor
    startup_timeout: float = _SPEC.startup_timeout_s
    node_timeout: float = _SPEC.node_timeout_s
    shutdown_timeout: float = _SPEC.shutdown_timeout_s   # the end of training (docs/how-it-decides.md)
    # stragglers (docs/how-it-decides.md): judged over this many steps; late by this share of
    # the step time at least; a persistent one's node leaves the job on its next relaunch
    straggler_window: int = _SPEC.straggler_window
    straggler_lag: float = _SPEC.straggler_lag
    exclude_stragglers: bool = _SPEC.exclude_stragglers
    spare: bool = False                  # run: a standby of the job: no ranks until it takes a place
    straggler_checks: bool = True        # agent: read the ranks' collective timings (false: never asks)
    timing_interval: float = 5.0         # agent: ... this often, of a rank that stepped since
    # the automatic sections a rank opens around known long pauses (rank/hooks.py)
    checkpoint_timeout: float = 1800.0   # torch.save/load, safetensors, DCP, Trainer checkpoints
    evaluation_timeout: float = 3600.0   # Trainer.evaluate, Lightning's evaluation loop
    grace: float = 10.0
    preflight: bool = False              # run: the doctor's checks first; errors -> not started here
    log_dir: str = ""
    rank_log_max_bytes: int = 100 << 20  # each rank's log file rotates at this size (0: never)
    rank_log_backups: int = 3            # ... keeping this many old files
    state_dir: str = ""
    # security
    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # internals worth tuning
    poll_interval: float = 0.1           # agent: beacons and processes
    heartbeat_interval: float = 1.0      # agent: heartbeat when nothing changed
    alert_cooldown: float = 300.0
    gpu_checks: bool = True              # agent: GPU health through NVML (false: never loads it)
    gpu_poll_interval: float = 5.0       # agent: GPU telemetry read this often (Xid events: at once)
    kmsg_path: str = "/dev/kmsg"         # agent: kernel log followed for OOM kills, NVRM Xids ("": off)
    log_format: str = "text"             # operator log lines: text (key=value) or json (collectors)
    on_suspect: str = "none"             # agent: none | drain (Slurm: scontrol ... State=DRAIN)
    slurm_node: str = ""                 # agent: this node's Slurm NodeName ("": the short host name)

    def job_spec(self, command: str = "") -> JobSpec:
        """The spec a wrapper registers (``command``: the job's command line, redacted)."""
        values = {spec: getattr(self, name) for name, spec in SPEC_FIELDS.items()}
        values["alert_urls"] = tuple(self.alert)
        return JobSpec(**values, command=command)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        try:   # the job's settings obey the rules every receiver of a spec applies
            dataclasses.replace(self.job_spec(), job_id=self.job_id or "-").checked()
        except SpecError as e:
            name = next(n for n, s in SPEC_FIELDS.items() if s == e.field)
            raise ConfigError(f"{name} {e.problem}") from None
        for name in ("poll_interval", "heartbeat_interval", "checkpoint_timeout", "evaluation_timeout",
                     "gpu_poll_interval", "timing_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("grace", "alert_cooldown", "rank_log_max_bytes", "rank_log_backups"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be 0-65535, got {self.metrics_port}")
        for name in ("coordinator", "listen", "advertise"):
            for value in getattr(self, name).split(",") if getattr(self, name) else ():
                port = value.rsplit(":", 1)[1] if ":" in value else ""
                if not (port.isdigit() and 0 <= int(port) <= 65535):
                    raise ConfigError(f"{name} must be HOST:PORT with a port of 0-65535"
                                      f"{' (a comma-separated list)' if name == 'coordinator' else ''}, "
                                      f"got {value!r}")
        if self.ha:
            from .coordinator.etcd import parse_ha

            try:
                parse_ha(self.ha)
            except ValueError as e:
                raise ConfigError(f"ha: {e}") from None
            # the lease must outlive a heartbeat or two: a standby must not take over while
            # the leader's renewals are merely a heartbeat apart
            if self.lease_ttl < 2 * self.heartbeat_interval or self.lease_ttl < 2:
                raise ConfigError(f"lease_ttl must be at least 2 s and twice heartbeat_interval "
                                  f"({self.heartbeat_interval:g} s), got {self.lease_ttl:g}")
        if self.on_suspect not in ("none", "drain"):
            raise ConfigError(f"on_suspect must be none or drain, got {self.on_suspect!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        return self

    def finish(self) -> "Config":
        """Fill the defaults that depend on the machine."""
        self.state_dir = self.state_dir or _default_state_dir()
        self.node_id = self.node_id or socket.gethostname()
        self.socket = self.socket or default_socket()
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def writable_dir(path: str, what: str = "state dir") -> None:
    """Create ``path`` if needed and prove that a file can be written in it: a daemon
    with a read-only or full state dir says so in one line instead of starting."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable: {e.strerror or e}") from None


def _coerce(name: str, value: object) -> object:
    kind = _FIELDS[name].type
    try:
        if kind == "list[str]":
            if isinstance(value, str):
                # whitespace only: an Apprise URL may hold commas (several recipients)
                return value.split()
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError
        if kind == "bool":
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)  # type: ignore[arg-type]
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # type: ignore[arg-type]
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: expected {kind}, got {value!r}") from None


def load(flags: dict[str, object] | None = None, env: dict[str, str] | None = None,
         config_file: str | None = None) -> Config:
    """Build the config: file, then environment, then flags (None means 'not given')."""
    return load_with_sources(flags, env, config_file)[0]


def load_with_sources(flags: dict[str, object] | None = None, env: dict[str, str] | None = None,
                      config_file: str | None = None) -> tuple[Config, dict[str, str]]:
    """``load``, and where each value came from: ``default``, ``file PATH``,
    ``env WATCHDOG_D_NAME`` or ``flag`` (what ``config show`` prints)."""
    env = dict(os.environ) if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values: dict[str, object] = {}
    sources = {name: "default" for name in _FIELDS}
    path = config_file or flags.pop("config", None) or env.get("WATCHDOG_D_CONFIG")
    flags.pop("config", None)
    if path:
        try:
            data = tomllib.loads(Path(str(path)).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                close = difflib.get_close_matches(name, _FIELDS, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"config file {path}: unknown setting {key!r}{hint}")
            values[name] = _coerce(name, value)
            sources[name] = f"file {path}"
    for name in _FIELDS:
        raw = env.get("WATCHDOG_D_" + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
            sources[name] = "env WATCHDOG_D_" + name.upper()
    for name, value in flags.items():
        if name in _FIELDS:
            values[name] = _coerce(name, value)
            sources[name] = "flag"
    return Config(**values).validate(), sources  # type: ignore[arg-type]


# -- `watchdog-d config show` -------------------------------------------------------------
_MACHINE = ("state_dir", "node_id", "socket")     # defaults ``finish`` reads off this machine


def effective(cfg: Config, sources: dict[str, str]) -> dict[str, dict[str, object]]:
    """name -> {"value", "source"}, in the Config's order; alert URLs without secrets."""
    from .logs.redact import redact_url

    out: dict[str, dict[str, object]] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "alert":
            value = [redact_url(u) for u in value]
        source = sources.get(f.name, "default")
        if source == "default" and f.name in _MACHINE:
            source = "default (this machine)"
        out[f.name] = {"value": value, "source": source}
    return out


def show(rows: dict[str, dict[str, object]], as_json: bool) -> str:
    """JSON, or TOML with each source as a comment (it can be pasted into a config file:
    JSON's strings, numbers and arrays of strings are TOML's)."""
    if as_json:
        return json.dumps(rows, indent=1)
    lines = [(f"{name} = {json.dumps(row['value'])}", row["source"]) for name, row in rows.items()]
    width = min(48, max(len(text) for text, _ in lines))
    return "\n".join(f"{text.ljust(width)}  # {source}" for text, source in lines)
