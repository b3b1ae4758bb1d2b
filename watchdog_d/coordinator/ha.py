"""``--ha``: this coordinator's dealings with etcd, in a thread of its own (etcd calls
block; the decision loop never waits for one). What they mean is ``core.leadership``'s.

Keys, under PREFIX:
- ``leader``: "NAME@HOST:PORT" on the leader's lease; its create revision is the epoch.
- ``members/NAME``: each running coordinator's address, on its lease: a name given twice
  is refused at start (after waiting out a lease of the same name: systemd restarting a
  coordinator that was killed must not be refused).

Each coordinator keeps one lease alive, renewed every ttl/3 only while its decision loop
passes (``loop_passed``): a wedged coordinator loses the lease, and with it the lead. A
standby reads the leader key each tick and campaigns (create-if-absent) when it is free.
"""
from __future__ import annotations

import math
import socket
import threading
import time
from typing import Callable

from .. import log
from ..config import Config, ConfigError
from ..core.leadership import Leadership
from .etcd import Etcd, EtcdError, EtcdUnavailable, parse_ha
from .replica import Replica

PREFIX = "/watchdog-d/"
LEADER_KEY = PREFIX + "leader"
LOOP_FRESH_S = 1.0       # the decision loop passes every 0.1 s: this long without a pass, no renewal
PULL_S = 2.0             # a standby takes the leader's new records from etcd this often


def advertised(cfg: Config) -> str:
    """Where agents reach this coordinator: --advertise, else --listen with a wildcard
    host replaced by the host name."""
    if cfg.advertise:
        return cfg.advertise
    host, _, port = cfg.listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.getfqdn()
    return f"{host}:{port}"


class HA:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic,
                 loop_passed: Callable[[], float | None] = lambda: None):
        self.endpoints = parse_ha(cfg.ha)
        self.ttl = max(2, math.ceil(cfg.lease_ttl))
        # a call must end well inside a ttl/3 renewal period
        self.etcd = Etcd(self.endpoints, timeout_s=min(1.0, self.ttl / 6))
        self.name = cfg.name or socket.gethostname()
        self.address = advertised(cfg)
        self.me = f"{self.name}@{self.address}"
        self.clock, self.loop_passed = clock, loop_passed
        self.state = Leadership(float(self.ttl))
        self.lock = threading.Lock()           # around ``state``: this thread writes, the loop reads
        self.lease = 0
        self._stop = threading.Event()
        self.wake = threading.Event()           # a report claims a newer epoch: look now
        self._thread: threading.Thread | None = None
        self.replica: Replica | None = None     # set by the coordinator (it owns the store)
        self.on_lead: Callable[[list], None] = lambda _alerts: None   # orphaned alerts, to deliver
        self._pulled_at = float("-inf")

    # -- start and stop -----------------------------------------------------------------
    def join(self) -> None:
        """Before serving: etcd must answer and the name must be free (ConfigError: one line,
        exit 2)."""
        try:
            self.lease = self.etcd.grant(self.ttl)
            deadline = time.monotonic() + self.ttl + 1.0
            while True:
                created, _ = self.etcd.create(self._member_key, self.address, self.lease)
                if created:
                    break
                if time.monotonic() >= deadline:
                    holder = self.etcd.get(self._member_key)
                    self.etcd.revoke(self.lease)
                    raise ConfigError(f"ha: the name {self.name!r} is taken by a running coordinator "
                                      f"(at {holder.value if holder else '?'}); give each --name once")
                time.sleep(0.5)
        except EtcdUnavailable as e:
            raise ConfigError(f"ha: etcd does not answer: {e}") from None
        except EtcdError as e:
            raise ConfigError(f"ha: etcd refused: {e}") from None
        log.log("ha_joined", name=self.name, address=self.address, etcd=",".join(self.endpoints),
                lease_ttl=self.ttl)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coordinator-ha", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let go at once (a clean stop): a standby leads without waiting out the lease."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease:
            try:
                self.etcd.revoke(self.lease)
            except EtcdError:
                pass
        self.etcd.close()

    @property
    def _member_key(self) -> str:
        return f"{PREFIX}members/{self.name}"

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:       # never the end of the thread: the lease would lapse unsaid
                log.error("ha_error", error=repr(e)[:200])
            self.wake.wait(min(0.5, self.ttl / 6))
            self.wake.clear()

    def tick(self) -> None:
        began = self.clock()
        passed = self.loop_passed()
        fresh = passed is not None and began - passed < LOOP_FRESH_S
        with self.lock:
            due, leading = self.state.renew_due(began), self.state.leading
        try:
            if not self.lease:
                if not fresh:
                    return
                self.lease = self.etcd.grant(self.ttl)
                self.etcd.put(self._member_key, self.address, self.lease)
            elif due and fresh:
                if self.etcd.keepalive(self.lease) <= 0:
                    self.lease = 0
                    self._led(0)
                    with self.lock:
                        self.state.lost("its etcd lease expired (paused, cut off or wedged "
                                        "longer than the lease)")
                    return
                with self.lock:
                    self.state.renewed(began)
            holder = self.etcd.get(LEADER_KEY)
            if leading:
                if holder is None or holder.lease != self.lease:
                    self._led(0)
                    with self.lock:
                        self.state.lost("the leader key is gone or another's")
                elif self.replica is not None:
                    self.replica.flush()          # what etcd did not take while it was away
                return
            if self.replica is not None and began - self._pulled_at >= PULL_S:
                self._pulled_at = began
                self.replica.pull()
            if holder is None and fresh and self.lease:
                created, epoch = self.etcd.create(LEADER_KEY, self.me, self.lease)
                if created:
                    self._led(epoch)
                    with self.lock:
                        self.state.won(epoch, self.me, began)
                    return
                holder = self.etcd.get(LEADER_KEY)
            with self.lock:
                self.state.observed(holder.value if holder else "", holder.create_revision if holder else 0)
        except EtcdUnavailable as e:
            with self.lock:
                self.state.unreachable(began, str(e)[:300])

    def _led(self, epoch: int) -> None:
        """Taking the lead (epoch) or losing it (0): the records follow. Taking it, what the
        leaders before wrote is pulled first, and the alerts they left are handed over."""
        if self.replica is None:
            return
        if not epoch:
            if self.replica.epoch:
                self.replica.epoch_before = self.replica.epoch
            self.replica.epoch = 0
            return
        self.replica.pull()
        self.replica.epoch = epoch
        self.on_lead(self.replica.orphaned_alerts())

    # -- for the loop ------------------------------------------------------------------
    def leader_address(self) -> str:
        """Where the leader is, as it advertised itself ("" unknown)."""
        with self.lock:
            return self.state.leader.partition("@")[2]
