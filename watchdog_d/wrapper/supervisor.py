"""``watchdog-d run -- COMMAND``: launch a job, then obey the node's agent.

The wrapper runs as the job's owner and is the only process that stops (or
relaunches) training processes. It registers the job with the local agent
(or with one it embeds), starts the command in its own process group, and waits
for one of: the command ending by itself, a verb from the agent, or a signal
from the user.
"""
from __future__ import annotations

import os
import queue
import secrets
import shlex
import signal
import sys
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from .. import log
from ..config import Config
from ..core import policy
from ..core.model import Verdict
from ..logs.redact import redact
from ..proto import localsock
from ..proto.local import AttemptStarted, Command, Ended, Message, MessageError, Refused, Waiting
from . import checkpoints, evidence, launch, launchlog, shape, spare
from .teardown import JobProcesses, become_subreaper

EXIT_TORN_DOWN = 75
EXIT_REFUSED = 2            # as a registration refused before the launch (WrapperError)
USER_SIGNAL = "user_signal"   # in the inbox: the user asked to stop (Ctrl-C, SIGTERM, SIGHUP)
SETTLE_S = 3.0          # after the job ends by itself: wait this long for the verdict
RELAUNCH_WAIT_S = 180.0  # torn down for a restart: give up when no relaunch comes (+ backoff)


class WrapperError(RuntimeError):
    """Could not start the job; the message says what to fix (exit status 2)."""


@dataclass
class Attempt:
    number: int
    proc: subprocess.Popen
    processes: JobProcesses
    beacons: Path
    log_dir: Path


class Wrapper:
    def __init__(self, cfg: Config, command: list[str], conn: localsock.Conn, node_id: str,
                 reattach: Callable[[], localsock.Conn | None] | None = None):
        self.cfg = cfg
        self.command = command
        self.conn: localsock.Conn | None = conn
        self.reattach = reattach
        self.next_reattach = 0.0
        self.node_id = node_id
        self.asker = evidence.Asker()       # stacks and flight recorders, one round at a time
        self.job_id = cfg.job_id
        # Commands from the agent, None when its connection ended, USER_SIGNAL. A
        # SimpleQueue: its put() is reentrant, so the signal handler may call it while
        # the main thread it interrupted is inside get() (queue.Queue's lock would
        # deadlock there)
        self.inbox: queue.SimpleQueue[Command | None | str] = queue.SimpleQueue()
        self.user_signal: int | None = None
        self.attempt: Attempt | None = None
        self.final_line = ""
        self.waiting_since: float | None = None   # torn down for a restart, relaunch awaited
        self.resume: launch.Resume | None = None   # chosen when the attempt went down
        self.recorded: list[tuple[int, str]] = []  # (step, path) recorded by ranks, here or elsewhere
        self.spare = cfg.spare                      # standing by: no ranks until it takes a place
        self.node_rank = shape.of(command).node_rank

    # -- pieces --------------------------------------------------------------------
    def _reader(self, conn: localsock.Conn) -> None:
        while True:
            try:
                msg = conn.recv()
            except MessageError as e:
                log.warn("agent_message_refused", job=self.job_id, error=str(e)[:300])
                continue
            if isinstance(msg, Refused):      # the agent did not take what this wrapper sent
                log.warn("agent_refused", job=self.job_id, error=msg.error[:300])
            elif msg is None or isinstance(msg, Command):
                self.inbox.put(msg)
            if msg is None:
                return

    def _send(self, msg: Message) -> None:
        if self.conn is not None:
            self.conn.send(msg)

    def _announce(self) -> None:
        """Tell the agent which attempt this is, and whether it is down, waiting for the
        next one (after a launch, a teardown for a restart, or a reattach)."""
        att = self.attempt
        if att is not None:
            self._send(AttemptStarted(attempt=att.number, launcher_pid=os.getpid(),
                                      beacon_dir=str(att.beacons), log_dir=str(att.log_dir),
                                      node_rank=self.node_rank))
            if self.waiting_since is not None:
                self._send_waiting()

    def _send_waiting(self) -> None:
        """The attempt's ranks are down; the next generation is awaited."""
        if self.attempt is not None:
            self._send(Waiting(attempt=self.attempt.number,
                               note=self.resume.note if self.resume else ""))

    def _try_reattach(self, now: float) -> None:
        """The agent went away (restarted?): keep the job running, try to get back."""
        if self.conn is not None or self.reattach is None or now < self.next_reattach:
            return
        self.next_reattach = now + 1.0
        conn = self.reattach()
        if conn is not None:
            self.conn = conn
            threading.Thread(target=self._reader, args=(conn,), daemon=True).start()
            self._announce()
            log.warn("agent_reattached", job=self.job_id)

    def _launch(self, number: int, resume: launch.Resume = launch.Resume()) -> Attempt:
        beacons = launch.beacon_dir(self.job_id, number)
        token = secrets.token_hex(8)
        env = launch.job_env(dict(os.environ), self.cfg, attempt=number, beacons=beacons,
                             token=token, resume=resume, command=self.command)
        Path(env["WATCHDOG_D_RANK_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
        fr = launch.flight_recorder_prefix(env)
        if fr:
            Path(fr).parent.mkdir(parents=True, exist_ok=True)
        argv = launch.substitute(launch.fresh_rendezvous(self.command, self.job_id, number), resume.path)
        streams = launchlog.streams(env, self.cfg, self.job_id)
        try:
            proc = subprocess.Popen(argv, env=env, process_group=0, stdout=streams[0], stderr=streams[1])
        except OSError as e:
            if number == 0:
                raise WrapperError(f"cannot start {argv[0]!r}: {e.strerror}") from None
            # a relaunch that cannot start is an attempt that failed at once: the
            # coordinator sees job_failed, and the budget or the crash-loop guard ends it
            print(f"watchdog-d: job {self.job_id}: cannot relaunch {argv[0]!r}: {e.strerror}",
                  file=sys.stderr, flush=True)
            log.error("relaunch_failed", job=self.job_id, attempt=number, error=e.strerror)
            proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(127)"], process_group=0)
        finally:
            for fd in streams:
                if fd is not None:
                    os.close(fd)
        processes = JobProcesses(token, pgid=proc.pid)
        processes.launcher = proc.pid
        processes.refresh()
        log.log("job_launched", job=self.job_id, attempt=number, pid=proc.pid,
                resume_from=resume.path or None, command=redact(shlex.join(argv))[:200])
        return Attempt(number, proc, processes, beacons, Path(env["WATCHDOG_D_RANK_LOG_DIR"]))

    def _dump_stacks(self) -> None:
        att = self.attempt
        if att is not None:
            self.asker.ask(att.beacons, {p.pid for p in att.processes.living()})

    def _keep_dumps(self, verdict: Verdict | None) -> None:
        att = self.attempt
        if att is None or verdict is None or verdict.kind not in evidence.HANG_KINDS:
            return
        kept = evidence.keep(att.beacons, att.log_dir)
        if kept:
            log.log("flight_recorder_kept", job=self.job_id, dir=kept[0].parent, ranks=len(kept))

    def _stop_job(self, grace: float) -> None:
        att = self.attempt
        if att is None:
            return
        att.processes.stop(grace)
        try:
            att.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            att.proc.kill()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.user_signal = signum
        self.inbox.put(USER_SIGNAL)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        become_subreaper()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        assert self.conn is not None
        threading.Thread(target=self._reader, args=(self.conn,), daemon=True).start()
        if self.spare:
            place = spare.stand_by(self)
            if isinstance(place, int):
                return place
            self.attempt = self._launch(*place)
        else:
            self.attempt = self._launch(0, launch.requeue_resume(self.job_id, self.cfg))
        self._announce()
        try:
            return self._supervise()
        finally:
            if self.attempt is not None:
                self.attempt.processes.stop(0.5)   # nothing of the job outlives the wrapper
                launch.remove_beacons(self.attempt.beacons)

    def _supervise(self) -> int:
        last_refresh = 0.0
        while True:
            att = self.attempt
            assert att is not None
            try:
                msg = self.inbox.get(timeout=0.1)
            except queue.Empty:
                msg = ""
            now = time.monotonic()
            if now - last_refresh > 0.5:
                att.processes.refresh()
                last_refresh = now
            if msg is None:
                log.warn("agent_connection_lost", job=self.job_id,
                         effect="job keeps running; reattaching every second")
                self.conn, self.next_reattach = None, now
            self._try_reattach(now)
            if msg == USER_SIGNAL:
                return self._user_stop()
            if isinstance(msg, Command):
                result = self._command(msg)
                if result is not None:
                    return result
                if self.attempt is not att:
                    continue          # relaunched: the old launcher's exit is no news
            if self.waiting_since is not None:
                if now - self.waiting_since > self._wait_limit():
                    return self._no_relaunch()
                continue              # down for a restart: the old launcher's exit is no news
            rc = att.proc.poll()
            if rc is not None:
                result = self._ended_by_itself(rc)
                if result is not None:
                    return result

    def _command(self, cmd: Command) -> int | None:
        att = self.attempt
        if cmd.verb in ("teardown", "restart") and att is not None and cmd.attempt < att.number:
            # about an attempt this node already replaced: a verb queued while it was cut
            # off can arrive after the relaunch that the coordinator's ack carried
            log.log("stale_command_ignored", job=self.job_id, verb=cmd.verb,
                    attempt=cmd.attempt, running=att.number)
            return None
        if cmd.verb == "dump_stacks":
            self._dump_stacks()
            return None
        if cmd.verb == "relaunch":
            return self._relaunch(cmd.attempt, cmd.offered)
        if cmd.verb == "restart":
            return self._restart(cmd.verdict, cmd.action or cmd.verb, cmd.offered)
        if cmd.verb == "teardown":
            return self._torn_down(cmd.verdict, cmd.action or cmd.verb)
        if cmd.verb == "refuse":
            return self._refused(cmd.action)
        if cmd.verb == "leave":
            return self._left(cmd.verdict, cmd.action)
        return None   # "done" before the job ended: nothing to do

    def _left(self, verdict: Verdict | None, reason: str) -> int:
        """This node is suspect: the job relaunches without it (``core.exclusion``)."""
        log.warn("node_left", job=self.job_id, node=self.node_id, reason=reason[:300])
        self._keep_dumps(verdict)
        self._stop_job(self.cfg.grace)
        self._send(Ended(state="exited", exit_code=EXIT_TORN_DOWN))
        self.final_line = f"watchdog-d: {self.node_id} left job {self.job_id}: {reason}"
        return EXIT_TORN_DOWN

    def _refused(self, reason: str) -> int:
        """The job id is another user's (told after the launch: the coordinator could not
        be asked before it). Nothing of this job is watched: it is stopped."""
        log.error("job_refused", job=self.job_id, reason=reason[:300])
        self._stop_job(self.cfg.grace)
        self._send(Ended(state="exited", exit_code=EXIT_REFUSED))
        self.final_line = f"watchdog-d: job {self.job_id} refused and stopped: {reason}"
        return EXIT_REFUSED

    def _restart(self, verdict: Verdict | None, action: str,
                 offered: tuple[int, str] = (-1, "")) -> None:
        """Tear this attempt down, choose what to resume from, and wait for the next
        generation: it starts when every node's ranks are down (the coordinator's
        ``relaunch``), so no relaunch can meet a rank of the dead attempt."""
        att = self.attempt
        assert att is not None
        if self.waiting_since is not None:
            return None                  # down already
        log.warn("restart", job=self.job_id, reason=verdict.kind if verdict else "command",
                 action=action)
        mine = launch.recorded_checkpoint(att.beacons)
        self.recorded = [ck for ck in (offered, mine, *self.recorded) if ck and ck[1]]
        self._keep_dumps(verdict)
        self._stop_job(self.cfg.grace)
        log.log("attempt_stopped", job=self.job_id, attempt=att.number)
        launch.remove_attempt_beacons(att.beacons)
        self.resume = launch.choose_resume(self.recorded, self.cfg.checkpoint_dir, checkpoints.Rule.of(self.cfg))
        if self.resume.note:
            log.warn("resume_problem", job=self.job_id, note=self.resume.note)
        self.waiting_since = time.monotonic()
        self._send_waiting()
        print(f"watchdog-d: job {self.job_id}: "
              f"{verdict.one_line() if verdict else 'restart asked'} [action: {action}]; "
              f"attempt {att.number} stopped, relaunching when every node is down"
              + (f" ({self.resume.note})" if self.resume.note else ""),
              file=sys.stderr, flush=True)
        return None

    def _relaunch(self, number: int, offered: tuple[int, str]) -> None:
        """The coordinator's go for generation ``number``: launch it."""
        att = self.attempt
        assert att is not None
        if number <= att.number:
            return None                  # old news
        if self.waiting_since is None:   # missed the restart (away, reattaching): stop first
            self._restart(None, "relaunch", offered)
        # the coordinator's offer may be newer than what was known at the teardown (a
        # heartbeat with a rank's record can trail the verdict): every node must
        # resume from the same checkpoint
        resume = self.resume
        if offered[1] and offered not in self.recorded or resume is None \
                or (resume.path and not os.path.exists(resume.path)):
            self.recorded = [ck for ck in (offered, *self.recorded) if ck[1]]
            resume = launch.choose_resume(self.recorded, self.cfg.checkpoint_dir,
                                          checkpoints.Rule.of(self.cfg))
        self.waiting_since, self.resume = None, None
        log.log("relaunch", job=self.job_id, attempt=number, resume_from=resume.path or "-")
        print(f"watchdog-d: job {self.job_id}: relaunching as attempt {number}"
              f"{' from ' + resume.path if resume.path else ' from scratch (no checkpoint found)'}",
              file=sys.stderr, flush=True)
        self.attempt = self._launch(number, resume)
        self._announce()
        return None

    def _wait_limit(self) -> float:
        # attempt N is followed by relaunch N + 1, after that restart's backoff
        number = self.attempt.number + 1 if self.attempt is not None else 1
        return RELAUNCH_WAIT_S + policy.backoff_s(self.cfg.restart_backoff, number)

    def _no_relaunch(self) -> int:
        log.error("relaunch_never_came", job=self.job_id, waited_s=round(self._wait_limit()))
        self._send(Ended(state="exited", exit_code=EXIT_TORN_DOWN))
        self.final_line = (f"watchdog-d: job {self.job_id} torn down: no relaunch came from the "
                           f"coordinator within {self._wait_limit():.0f}s [action: gave_up]")
        return EXIT_TORN_DOWN

    def _torn_down(self, verdict: Verdict | None, action: str) -> int:
        what = verdict.one_line() if verdict else "coordinator asked for teardown"
        log.warn("teardown", job=self.job_id, reason=verdict.kind if verdict else "command",
                 grace_s=self.cfg.grace)
        self._keep_dumps(verdict)
        self._stop_job(self.cfg.grace)
        self._send(Ended(state="exited", exit_code=EXIT_TORN_DOWN))
        # printed by the caller as the very last line on stderr
        self.final_line = f"watchdog-d: job {self.job_id} torn down: {what} [action: {action}]"
        return EXIT_TORN_DOWN

    def _ended_by_itself(self, rc: int) -> int | None:
        """The launcher exited by itself: its status, or None when a relaunch follows."""
        att = self.attempt
        assert att is not None
        att.processes.stop(min(self.cfg.grace, 2.0))     # leftovers of a finished job
        code = rc if rc >= 0 else 128 - rc
        self._send(Ended(state="exited", exit_code=code))
        deadline = time.monotonic() + (SETTLE_S if self.conn is not None else 0.0)
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg is None or msg == USER_SIGNAL:
                break
            if isinstance(msg, Command):
                if msg.verb in ("teardown", "restart", "relaunch", "refuse", "leave"):
                    return self._command(msg)     # an exit status, or None: relaunch ahead
                if msg.verb == "done":
                    return code
        if code != 0:
            log.warn("no_verdict", job=self.job_id, exit_code=code,
                     effect="exit status passed through")
        return code

    def _user_stop(self) -> int:
        signum = self.user_signal or signal.SIGTERM
        log.warn("stopped_by_user", job=self.job_id, signal=signal.Signals(signum).name)
        self._send(Ended(state="stopped", exit_code=128 + signum))
        att = self.attempt
        if att is not None:
            try:   # let the job see the same signal first (torchrun forwards it)
                os.killpg(att.proc.pid, signum)
            except OSError:
                pass
            self._stop_job(self.cfg.grace)
        return 128 + signum
