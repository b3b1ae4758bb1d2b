"""``watchdog-d run``: pick where to report, register, hand over to the wrapper.

Where: ``--agent-socket`` if given; else the node's agent if its socket answers
(``--coordinator`` is then the agent's business); else an agent embedded in this
process, reporting to ``--coordinator`` if given, else to a coordinator embedded
here too (the zero-set-up default).
"""
from __future__ import annotations

import os
import secrets
import shlex
import socket
import sys
import tempfile
from dataclasses import replace

from .. import log
from ..config import NODE_SOCKET, Config, ConfigError
from ..logs.redact import redact
from ..proto import localsock, rpc
from ..proto.local import MessageError, Refused, Register, Registered
from . import preflight, shape
from .supervisor import EXIT_TORN_DOWN, Wrapper, WrapperError

REGISTER_TIMEOUT_S = 10.0


class Embedded:
    """Agent and (optionally) coordinator inside the wrapper's process."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.coordinator = None
        self.agent = None
        self.tmp = tempfile.mkdtemp(prefix="wd-")
        self.socket = os.path.join(self.tmp, "agent.sock")
        self.link = None

    def start(self) -> str:
        from ..agent.daemon import Agent

        target = self.cfg.coordinator
        if not target:
            from ..coordinator.server import Coordinator

            from ..coordinator.status import embedded_status_path

            self.coordinator = Coordinator(self.cfg)
            self.coordinator.announce_isolation = False
            self.coordinator.status_path = embedded_status_path(self.cfg.state_dir, self.cfg.job_id)
            port = self.coordinator.start("127.0.0.1:0")
            target = f"127.0.0.1:{port}"
        else:       # (several: the --ha ones; one that answers is enough, the agent finds the leader)
            ok = False
            for one in [t.strip() for t in target.split(",") if t.strip()]:
                channel = rpc.make_channel(self.cfg, one)
                ok = rpc.wait_ready(channel, 3.0)
                channel.close()
                if ok:
                    break
            if not ok:
                raise WrapperError(f"coordinator {target} is unreachable (is "
                                   f"'watchdog-d coordinator' running there?)")
        node_id = self.cfg.node_id
        if self.cfg.coordinator and node_id == socket.gethostname():
            # several wrappers of this host may report to one coordinator, each with
            # its own embedded agent: each needs a node id of its own
            node_id = f"{node_id}-{os.getpid()}"
        # no /metrics of its own: it lives as long as the job, and a second job of this
        # host would find the port taken (the agent daemon's port, or the first one's)
        self.agent = Agent(replace(self.cfg, socket=self.socket, node_id=node_id, metrics_port=0),
                           coordinator=target)
        self.agent.start()
        self._link()
        return self.socket

    def _link(self) -> None:
        """``watchdog-d drill`` finds the job's embedded agent by the job id."""
        from .drill import embedded_socket

        self.link = embedded_socket(self.cfg.state_dir, self.cfg.job_id)
        try:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            if self.link.is_symlink():
                self.link.unlink()
            self.link.symlink_to(self.socket)
        except OSError:
            self.link = None

    def stop(self) -> None:
        if self.link is not None:
            try:
                self.link.unlink()
            except OSError:
                pass
        if self.agent:
            self.agent.observe_now()
            self.agent.stop()
        if self.coordinator:
            self.coordinator.stop()
        try:
            os.rmdir(self.tmp)
        except OSError:
            pass


def _live_socket(path: str) -> bool:
    return _probe(path) is None


def _probe(path: str) -> str | None:
    """None when an agent answers on ``path``; else why not ('' when nothing is there)."""
    if not path or not os.path.exists(path):
        return ""
    try:
        localsock.connect(path, timeout=1.0).close()
        return None
    except OSError as e:
        return e.strerror or type(e).__name__


def pick_agent(cfg: Config) -> str | None:
    """The agent to hand the job to: this user's own (``cfg.socket``), else the node's
    (systemd's, ``NODE_SOCKET``, which a non-root user's default does not name); None:
    none answers, embed one. A node agent that is there but cannot be used is said in
    one line: the job would otherwise be watched apart from the cluster's coordinator
    without anyone knowing."""
    for path in dict.fromkeys((cfg.socket, NODE_SOCKET)):
        why = _probe(path)
        if why is None:
            return path
        if why and path == NODE_SOCKET:
            print(f"watchdog-d: the node's agent at {path} cannot be used ({why}); this job is "
                  "watched by an agent and coordinator of its own. On a cluster, ask for access "
                  "to the agent's socket (its group)", file=sys.stderr, flush=True)
    return None


def register(path: str, cfg: Config, command: list[str], run: str,
             spare: bool = False) -> tuple[localsock.Conn, str]:
    """Hand the job to the agent at ``path``; returns the connection and node id. ``run``:
    this launch's token (a relaunch, a reattach keep it; another launch has its own)."""
    try:
        conn = localsock.connect(path)
    except OSError as e:
        raise WrapperError(f"cannot reach the agent at {path}: {e.strerror or e}") from None
    form = shape.of(command)
    spec = replace(cfg.job_spec(redact(shlex.join(command))), nnodes_min=form.nnodes_min,
                   nnodes_max=form.nnodes_max, shape=form.digest)
    conn.send(Register(spec=spec, launcher_pid=os.getpid(), run=run, spare=spare,
                       node_rank=form.node_rank))
    try:
        reply = conn.recv(timeout=REGISTER_TIMEOUT_S)
    except (TimeoutError, MessageError):
        reply = None
    if not isinstance(reply, Registered):
        conn.close()
        why = reply.error if isinstance(reply, Refused) else "no answer"
        raise WrapperError(f"the agent at {path} did not take the job: {why}")
    return conn, reply.node_id


def _reattach(path: str, cfg: Config, wrapper: "Wrapper", run: str) -> localsock.Conn | None:
    """After the agent restarted (systemd): register again, quietly (a spare that took a
    place since: as the node it became)."""
    if not os.path.exists(path):
        return None
    try:
        return register(path, cfg, wrapper.command, run, wrapper.spare)[0]
    except WrapperError:
        return None


def run_job(cfg: Config, command: list[str]) -> int:
    if not command:
        raise ConfigError("missing command after '--' (e.g. watchdog-d run -- torchrun ...)")
    from ..coordinator.alerts import validate_alert_url

    for url in cfg.alert:
        problem = validate_alert_url(url)
        if problem:
            raise ConfigError(problem)
    from .launch import job_id_for, torchrun_max_restarts

    cfg = replace(cfg, job_id=cfg.job_id or job_id_for(command, dict(os.environ)))
    if torchrun_max_restarts(command) > 0 and cfg.on_failure != "alert":
        log.warn("torchrun_max_restarts_preempted", job=cfg.job_id,
                 effect=f"on_failure={cfg.on_failure} acts on the first rank failure; "
                        "torchrun's own --max-restarts will not get to restart")
    # before anything starts: a node that fails its checks does not start the job
    failed = preflight.check(cfg) if cfg.preflight else []
    final_line = ""
    embedded = None
    wrapper: Wrapper | None = None
    if cfg.agent_socket:
        if not _live_socket(cfg.agent_socket):
            raise WrapperError(f"no agent answers on {cfg.agent_socket}")
        path = cfg.agent_socket
    elif (node_agent := pick_agent(cfg)) is not None:
        path = node_agent                   # the node's agent (it knows its coordinator)
    else:
        embedded = Embedded(cfg)
        path = embedded.start()
    try:
        run = secrets.token_hex(8)
        conn, node_id = register(path, cfg, command, run, cfg.spare)
        if failed:
            # registered all the same: the coordinator learns why, tears the job down on
            # its other nodes and alerts
            final_line = preflight.refuse(cfg, conn, node_id, failed)
            conn.close()
            return EXIT_TORN_DOWN
        wrapper = Wrapper(cfg, command, conn, node_id,
                          reattach=lambda: _reattach(path, cfg, wrapper, run))
        log.log("job_guarded", job=cfg.job_id, node=wrapper.node_id, agent=path)
        rc = wrapper.run()
        if wrapper.conn is not None:
            wrapper.conn.close()
        return rc
    finally:
        if embedded:
            embedded.stop()
        final_line = wrapper.final_line if wrapper is not None else final_line
        if final_line:
            print(final_line, file=sys.stderr, flush=True)

