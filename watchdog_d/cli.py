"""Command line: ``watchdog-d COMMAND ...`` (also ``python -m watchdog_d``)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import log
from .config import Config, ConfigError, load, writable_dir
from .options import EXIT_USAGE, Parser, build_parser  # noqa: F401  (build_parser: tests, docs)


_NOT_CONFIG = {"cmd", "json", "job", "verbose", "paths", "catalogue", "action", "fault", "rank",
               "node", "timeout"}


def _config(args: argparse.Namespace) -> Config:
    return load(_flags(args)).finish()


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["run"]:
        if "--" in argv:
            i = argv.index("--")
            argv, command = argv[:i], argv[i + 1:]
        elif any(not a.startswith("-") for a in argv[1:]) and "-h" not in argv and "--help" not in argv:
            print("watchdog-d: put the command after '--': watchdog-d run [OPTIONS] -- COMMAND",
                  file=sys.stderr)
            return EXIT_USAGE
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
        return _dispatch(args, cfg, command)
    except ConfigError as e:
        print(f"watchdog-d: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, cfg: Config, command: list[str]) -> int:
    # each command imports what it needs, and only that: status, events and diagnose
    # load neither grpc nor psutil nor apprise
    log.set_format(cfg.log_format)
    if args.cmd in ("run", "agent", "coordinator"):
        writable_dir(cfg.state_dir)
    if args.cmd == "run":
        if not args.verbose:
            log.set_quiet(True)   # the job's console stays the job's
        from .wrapper.run import run_job
        from .wrapper.supervisor import WrapperError

        try:
            return run_job(cfg, command)
        except WrapperError as e:
            print(f"watchdog-d: {e}", file=sys.stderr)
            return EXIT_USAGE
    if args.cmd == "agent":
        if not cfg.coordinator:
            raise ConfigError("agent needs --coordinator HOST:PORT")
        writable_dir(os.path.dirname(cfg.socket) or ".", "agent socket dir")
        # before grpc loads: its INFO lines (a failed TLS handshake, at each reconnect)
        # would repeat what the agent says once; a value set wins
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        from .agent.daemon import run_agent

        return run_agent(cfg)
    if args.cmd == "coordinator":
        from .coordinator.server import run_coordinator

        return run_coordinator(cfg)
    if args.cmd == "status":
        return _status(args, cfg)
    if args.cmd == "events":
        return _events(args, cfg)
    if args.cmd == "diagnose":
        return _diagnose(args)
    if args.cmd == "drill":
        from .wrapper.drill import run_drill

        return run_drill(cfg, args.job, args.fault, args.rank, args.node, args.timeout, args.json,
                         args.agent_socket or "")
    if args.cmd == "doctor":
        from .doctor import report

        checks = report.run(cfg)
        print(report.render(checks, args.json, cfg.node_id))
        return report.exit_status(checks)
    if args.cmd == "config":
        from .config import effective, load_with_sources, show

        shown, sources = load_with_sources(_flags(args))
        print(show(effective(shown.finish(), sources), args.json))
        return 0
    if args.cmd == "demo":
        from .demo.show import run_demo

        return run_demo(cfg)
    raise ConfigError(f"unknown command {args.cmd}")


def _status(args: argparse.Namespace, cfg: Config) -> int:
    from .coordinator.status import read_local, render

    if cfg.coordinator:
        from .proto import rpc
        from .proto import watchdog_pb2 as pb
        from .proto import watchdog_pb2_grpc as pb_grpc

        def ask(target: str) -> dict:
            channel = rpc.make_channel(cfg, target)
            try:
                reply = pb_grpc.CoordinatorStub(channel).Status(
                    pb.StatusRequest(), timeout=5, metadata=rpc.call_metadata(cfg))
            finally:
                channel.close()
            return json.loads(reply.json)

        # several (the --ha ones): the first that answers; a standby's answer names the
        # leader, which is asked next (its picture is the cluster's)
        snap, errors = None, []
        for target in [t.strip() for t in cfg.coordinator.split(",") if t.strip()]:
            try:
                snap = ask(target)
            except Exception as e:  # grpc.RpcError, kept lazy
                errors.append(f"{target}: {getattr(e, 'details', lambda: e)()}")
                continue
            ha = snap.get("coordinator") or {}
            leader = ha.get("leader", "").partition("@")[2]
            if ha.get("role") == "standby" and leader:
                try:
                    snap = ask(leader)
                except Exception:  # the standby's own answer then: it says who leads
                    pass
            break
        if snap is None:
            print(f"watchdog-d: coordinator {cfg.coordinator} did not answer: {'; '.join(errors)}",
                  file=sys.stderr)
            return 1
    else:
        snap = read_local(cfg.state_dir)
    print(json.dumps(snap, indent=2) if args.json else render(snap))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    import os

    from .logs.diagnose import diagnose, exit_status, render
    from .logs.fingerprints import Catalogue, CatalogueError

    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"watchdog-d: no such file or directory: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    try:
        catalogue = Catalogue.load(args.catalogue)
    except CatalogueError as e:
        print(f"watchdog-d: {e}", file=sys.stderr)
        return EXIT_USAGE
    from .logs import frdumps

    result = diagnose(args.paths, catalogue)
    fr = frdumps.diagnose(args.paths)
    if fr is not None:
        result["flight_recorder"] = fr
    text = render(result) + ("\n" + frdumps.render(fr) if fr is not None else "")
    print(json.dumps(result, indent=1) if args.json else text)
    hung = fr is not None and fr["kind"] in ("timeout", "mismatch", "behind")
    return max(exit_status(result), 1 if hung else 0)


def _events(args: argparse.Namespace, cfg: Config) -> int:
    from pathlib import Path

    from .coordinator.store import IncidentStore, StoreError

    path = Path(cfg.state_dir) / "incidents.sqlite"
    if not path.exists():
        print(f"watchdog-d: no incident log at {path} (nothing recorded yet, or another "
              f"--state-dir)", file=sys.stderr)
        return 0
    try:
        events = IncidentStore(path).events(args.job)
    except StoreError as e:
        print(f"watchdog-d: {e}", file=sys.stderr)
        return 1
    for ev in events:
        if args.json:
            print(json.dumps(ev))
        else:
            rank = "-" if ev["rank"] is None else ev["rank"]
            print(f"{ev['ts']}  {ev['job']}  {ev['kind']:<18} rank {rank:<3} "
                  f"node {ev['node'] or '-':<10} step {ev['step'] if ev['step'] is not None else '-':<6} "
                  f"action {ev['action']:<10} after {ev['detected_after_s']}s  {ev['cause']}")
    return 0


def torchrun_main() -> int:
    """``watchdog-torchrun ARGS`` == ``watchdog-d run -- torchrun ARGS``.

    The torchrun next to this interpreter is preferred (the same environment the
    drop-in was installed into), then the one on PATH.
    """
    import os
    import shutil

    here = os.path.join(os.path.dirname(sys.executable), "torchrun")
    torchrun = here if os.access(here, os.X_OK) else shutil.which("torchrun") or "torchrun"
    return main(["run", "--", torchrun, *sys.argv[1:]])
