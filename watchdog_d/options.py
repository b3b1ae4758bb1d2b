"""The command line's flags: what each means. Each default is written once, in
``config.Config`` (or ``JobSpec``), and shown from there in ``--help``: a flag left out
takes the config file's value, then the environment's, then that default."""
from __future__ import annotations

import argparse
import dataclasses

from . import __version__
from .config import Config
from .core.drill import FAULTS

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"watchdog-d: {message} (see '{self.prog} --help')\n")


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="the cluster's coordinator (unset: the node's agent if there is one, "
                        "else an agent and coordinator embedded in this process)")
    p.add_argument("--agent-socket", metavar="PATH", dest="agent_socket",
                   help="hand the job to the agent on this socket (unset: this user's, then the node's)")
    p.add_argument("--job-id", dest="job_id",
                   help="the job's id, the same on every node (unset: torchrun's --rdzv-id, "
                        "else SLURM_JOB_ID / TORCHX_APP_ID / PBS_JOBID, else a fresh one)")
    p.add_argument("--alert", action="append", metavar="URL",
                   help="an Apprise URL to alert (dingtalk://, mailtos://, json://, ...); repeatable")
    p.add_argument("--on-failure", dest="on_failure", choices=("alert", "teardown", "restart"),
                   help="what a verdict does: tell people only, stop every rank on every node, "
                        "or stop and relaunch from the latest checkpoint")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, metavar="N",
                   help="relaunches --on-failure restart may spend")
    p.add_argument("--checkpoint-dir", dest="checkpoint_dir", metavar="DIR",
                   help="where the job writes checkpoints: a relaunch resumes from the newest "
                        "complete one ({resume_from}, WATCHDOG_D_RESUME_FROM)")
    p.add_argument("--checkpoint-glob", dest="checkpoint_glob", metavar="GLOB",
                   help="entries of --checkpoint-dir that are checkpoints")
    p.add_argument("--checkpoint-marker", dest="checkpoint_markers", action="append", metavar="NAME",
                   help="a checkpoint directory is complete when it holds this file (repeatable)")
    p.add_argument("--restart-backoff", dest="restart_backoff", type=float, metavar="SECONDS",
                   help="wait before relaunch i: SECONDS x 2^(i-1)")
    p.add_argument("--crash-loop", dest="crash_loop", type=int, metavar="K",
                   help="give up after K attempts in a row end before their first step (0: never)")
    p.add_argument("--min-stall-timeout", dest="min_stall_timeout", type=float, metavar="SECONDS",
                   help="the floor of the stall timeout, max(this, --stall-factor x p99 step time)")
    p.add_argument("--stall-factor", dest="stall_factor", type=float, metavar="X",
                   help="the stall timeout in p99 step times, above the floor")
    p.add_argument("--startup-timeout", dest="startup_timeout", type=float, metavar="SECONDS",
                   help="the stall timeout before a rank's first step")
    p.add_argument("--checkpoint-timeout", dest="checkpoint_timeout", type=float, metavar="SECONDS",
                   help="a rank inside a checkpoint save or load (and its peers) gets this long")
    p.add_argument("--evaluation-timeout", dest="evaluation_timeout", type=float, metavar="SECONDS",
                   help="... inside an evaluation (Trainer.evaluate, Lightning)")
    p.add_argument("--shutdown-timeout", dest="shutdown_timeout", type=float, metavar="SECONDS",
                   help="the end of training: a rank in destroy_process_group() or still running after "
                        "a peer exited 0 gets this long before it is warned about")
    p.add_argument("--node-timeout", dest="node_timeout", type=float, metavar="SECONDS",
                   help="a node silent this long, its peers stalled too, is node_lost")
    p.add_argument("--grace", type=float, metavar="SECONDS",
                   help="a teardown's SIGTERM, then SIGKILL after this long")
    p.add_argument("--log-dir", dest="log_dir", metavar="DIR",
                   help="each rank's log (rank-N.log) and the launcher's, per attempt "
                        "(unset: STATE_DIR/logs)")
    p.add_argument("--spare", action="store_true", default=None,
                   help="stand by as a spare of the job (the same command as its nodes): no ranks "
                        "until a relaunch leaves a suspect node out and this one takes its place")
    p.add_argument("--straggler-window", dest="straggler_window", type=int, metavar="STEPS",
                   help="a straggler is judged over this many steps")
    p.add_argument("--straggler-lag", dest="straggler_lag", type=float, metavar="FRACTION",
                   help="a straggler is late by at least this share of the step time")
    p.add_argument("--exclude-stragglers", dest="exclude_stragglers", action="store_true", default=None,
                   help="a persistent straggler's node is suspect: it leaves the job on its next relaunch")
    p.add_argument("--preflight", action="store_true", default=None,
                   help="run the doctor's checks on this node first; an error: the job is "
                        "not started, and torn down on its other nodes (exit 75)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="a TOML config file (watchdog-d config show: every setting and where it came from)")
    p.add_argument("--state-dir", dest="state_dir", metavar="DIR",
                   help="incidents, status, alert spool, rank logs (unset: /var/lib/watchdog-d for "
                        "root, else ~/.local/state/watchdog-d)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="run: print watchdog-d's own log lines too (the job's console stays the job's)")
    p.add_argument("--log-format", dest="log_format", choices=("text", "json"),
                   help="operator log lines on stderr: text (key=value) or json (one object per "
                        "line, for a log collector)")


def _security(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", dest="token_file", metavar="FILE",
                   help="a bearer token shared by agents and coordinator (gRPC)")
    p.add_argument("--tls-cert", dest="tls_cert", metavar="FILE", help="this side's certificate (mTLS)")
    p.add_argument("--tls-key", dest="tls_key", metavar="FILE", help="... and its key")
    p.add_argument("--tls-ca", dest="tls_ca", metavar="FILE", help="the CA that signs the other side's")


def _metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", dest="metrics_port", type=int, metavar="N",
                   help="serve Prometheus /metrics on this port (0: off)")
    p.add_argument("--metrics-address", dest="metrics_address", metavar="ADDR",
                   help="... on this address")


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"{what} as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="watchdog-d", description="A watchdog for distributed PyTorch training.")
    parser.add_argument("--version", action="version", version=f"watchdog-d {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="launch and guard a job: watchdog-d run [OPTIONS] -- COMMAND")
    _job_options(p)
    _common(p)
    _security(p)

    p = sub.add_parser("agent", help="the per-node daemon")
    p.add_argument("--coordinator", metavar="HOST:PORT[,...]",
                   help="the coordinator to report to (required); several: the --ha ones, the agent "
                        "follows whichever leads")
    p.add_argument("--node-id", dest="node_id", help="this node's name (unset: the host name)")
    p.add_argument("--on-suspect", dest="on_suspect", choices=("none", "drain"),
                   help="when the coordinator marks this node suspect: say it, or also drain it "
                        "from Slurm (scontrol update NodeName=... State=DRAIN)")
    p.add_argument("--slurm-node", dest="slurm_node", metavar="NAME",
                   help="this node's Slurm NodeName (unset: the short host name)")
    p.add_argument("--socket", metavar="PATH",
                   help="the socket wrappers register on (unset: /run/watchdog-d/agent.sock for "
                        "root, else under $XDG_RUNTIME_DIR)")
    _metrics(p)
    _common(p)
    _security(p)

    p = sub.add_parser("coordinator", help="the cluster's decision maker")
    p.add_argument("--listen", metavar="HOST:PORT", help="gRPC address agents report to")
    p.add_argument("--ha", metavar="etcd://HOST:PORT[,...]",
                   help="one of several coordinators: one leads on an etcd lease, the others stand by")
    p.add_argument("--name", metavar="NAME", help="this coordinator's name among the --ha ones "
                                                  "(unset: the host name)")
    p.add_argument("--advertise", metavar="HOST:PORT",
                   help="where agents reach this coordinator (--ha; unset: --listen with the host name)")
    p.add_argument("--lease-ttl", dest="lease_ttl", type=float, metavar="SECONDS",
                   help="the leader's etcd lease (--ha; default 5)")
    p.add_argument("--alert", action="append", metavar="URL",
                   help="an Apprise URL for the coordinator's own warnings (jobs bring their own); repeatable")
    _metrics(p)
    _common(p)
    _security(p)

    p = sub.add_parser("status", help="every job, node and rank")
    _json(p, "the status")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="ask this coordinator (unset: the status files in the state dir)")
    _common(p)
    _security(p)

    p = sub.add_parser("events", help="the incident log, newest last")
    p.add_argument("--job", help="only this job's incidents")
    _json(p, "one incident a line")
    _common(p)

    p = sub.add_parser("diagnose", help="offline: classify the failures in log files")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="log files, a torchrun --log-dir, or kept flight-recorder dumps")
    _json(p, "the findings")
    p.add_argument("--catalogue", metavar="FILE", help="another fingerprint catalogue (TOML)")

    p = sub.add_parser("doctor", help="pre-flight report of this node: exit 0 ok, 1 warnings, 2 errors")
    _json(p, "the checks")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="also check that this coordinator answers")
    p.add_argument("--checkpoint-dir", dest="checkpoint_dir", metavar="DIR",
                   help="also check free space and writability here")
    p.add_argument("--log-dir", dest="log_dir", metavar="DIR", help="... and here")
    _common(p)
    _security(p)

    p = sub.add_parser("config", help="the effective configuration: watchdog-d config show [--json]")
    p.add_argument("action", choices=("show",), help="show: every setting and where it came from")
    _json(p, "the settings")
    _common(p)

    p = sub.add_parser("drill", help="inject a fault into a live job and check what follows: "
                                     "watchdog-d drill --job ID kill|freeze|exit|hang --rank R")
    p.add_argument("fault", choices=tuple(FAULTS),
                   help="kill: SIGKILL; freeze: SIGSTOP; exit: the rank exits 1; hang: its main "
                        "thread stops at its next step, alive")
    p.add_argument("--job", required=True, help="the job (its owner or root only)")
    p.add_argument("--rank", required=True, type=int, help="the global rank to hit")
    p.add_argument("--node", default="", help="refuse unless the rank runs on this node")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="FAIL when the verdict, teardown and relaunch have not all come by then (default 300)")
    p.add_argument("--agent-socket", dest="agent_socket", metavar="PATH",
                   help="ask this agent (unset: the job's embedded one, this user's, the node's)")
    _json(p, "the timeline and the result")
    _common(p)

    p = sub.add_parser("demo", help="a self-contained show on this CPU")
    _common(p)
    for name, sp in sub.choices.items():
        _show_defaults(sp)
    return parser


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Each setting's help ends with its default, read from Config: written once."""
    defaults = Config()
    fields = {f.name for f in dataclasses.fields(Config)}
    for action in p._actions:
        if action.dest not in fields or not action.help or "(unset:" in action.help:
            continue
        value = getattr(defaults, action.dest)
        if value in ("", [], None) or isinstance(value, bool):
            continue
        shown = " ".join(value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else value
        action.help += f" (default {shown})"
