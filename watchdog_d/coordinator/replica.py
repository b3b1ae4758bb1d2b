"""``--ha``: what must outlive a leader, kept in etcd where the next leader reads it.

The leader writes each record twice: to its own SQLite store (``events`` and a restart
read it, as without ``--ha``) and to etcd, only while it still holds the leader key in its
epoch (a guarded transaction: a deposed leader writes nothing). Every coordinator, leader
or standby, pulls what is new in etcd into its own store every PULL_S, so ``watchdog-d
events`` on any coordinator's host shows one history whichever coordinator led, and a
standby that takes over already has the checkpoint records and suspect nodes.

Keys, under ``ha.PREFIX``:
- ``incidents/TS-NAME-N``: an incident as ``events --json`` shows it;
- ``checkpoints/RUN``: {job, step, path, ts}: the newest checkpoint a run recorded;
- ``suspects/NODE``: {reason, ts};
- ``alerts/NAME/FILE``: an alert the leader NAME has not delivered yet; the next leader
  delivers it (and the key goes when it is delivered).

The per-job restart budget needs no key: attempt N of a job means N restarts were spent,
and every agent says its job's attempt in each heartbeat.
"""
from __future__ import annotations

import itertools
import json
import threading
from dataclasses import asdict

from .. import log
from .etcd import Etcd, EtcdError
from .spool import Pending
from .store import IncidentStore

BACKLOG_MAX = 10_000     # records etcd did not take yet (down): retried, the oldest dropped first


class Replica:
    def __init__(self, etcd: Etcd, prefix: str, leader_key: str, name: str, store: IncidentStore):
        self.etcd, self.prefix, self.leader_key, self.name = etcd, prefix, leader_key, name
        self.store = store
        self.epoch = 0                      # the leader key's create revision while we lead
        self.pulled = 0                     # etcd revision the last pull saw everything up to
        self.epoch_before = 0               # the last epoch this process led in (its sender holds
                                            #   its own alerts from then)
        self._seq = itertools.count()
        self._backlog: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._failing = False

    # -- the leader's writes (its I/O thread, its sender's thread) -------------------------
    def incident_key(self, ts: float) -> str:
        return f"{self.prefix}incidents/{ts:017.6f}-{self.name}-{next(self._seq)}"

    def incident(self, key: str, event: dict) -> None:
        self._put(key, json.dumps(event))

    def checkpoint(self, job: str, run: str, step: int, path: str, ts: float) -> None:
        self._put(f"{self.prefix}checkpoints/{run}", json.dumps(
            {"job": job, "step": step, "path": path, "ts": ts}))

    def suspect(self, node: str, reason: str, ts: float) -> None:
        self._put(f"{self.prefix}suspects/{node}", json.dumps({"reason": reason, "ts": ts}))

    # (the alert sender's mirror: AlertSender.mirror)
    def stored(self, file: str, pending: Pending) -> None:
        self._put(f"{self.prefix}alerts/{self.name}/{file}", json.dumps(asdict(pending)))

    def done(self, file: str) -> None:
        self._put(f"{self.prefix}alerts/{self.name}/{file}", None)

    def _put(self, key: str, value: str | None) -> None:
        """value None: delete. Queued behind what etcd did not take yet."""
        with self._lock:
            self._backlog.append((key, value))
            if len(self._backlog) > BACKLOG_MAX:
                del self._backlog[0]
            self._flush()

    def _flush(self) -> None:
        """(under _lock)"""
        while self._backlog and self.epoch:
            key, value = self._backlog[0]
            try:
                if value is None:
                    self.etcd.delete(key)
                elif not self.etcd.put_if(key, value, self.leader_key, self.epoch):
                    self._backlog.clear()           # deposed: the next leader writes from here
                    return
            except EtcdError as e:
                if not self._failing:
                    self._failing = True
                    log.warn("ha_records_pending", error=str(e)[:200], pending=len(self._backlog),
                             effect="kept here and in the local store; written to etcd when it answers")
                return
            self._backlog.pop(0)
            if self._failing:
                self._failing = False
                log.log("ha_records_written")

    def flush(self) -> None:
        with self._lock:
            self._flush()

    # -- every coordinator (the HA thread) ---------------------------------------------
    def pull(self) -> int:
        """What is new in etcd since the last pull, into the local store; records taken."""
        taken, newest = 0, self.pulled
        for kind, take in (("incidents/", self.store.import_event),
                           ("checkpoints/", self._take_checkpoint), ("suspects/", self._take_suspect)):
            for kv in self.etcd.get_prefix(self.prefix + kind, self.pulled + 1):
                newest = max(newest, kv.mod_revision)
                try:
                    taken += take(kv.key, kv.value)
                except Exception as e:   # a bad record or a full disk: the others still come
                    log.error("ha_record_unreadable", key=kv.key[-80:], error=repr(e)[:200])
        self.pulled = newest
        return taken

    def _take_checkpoint(self, key: str, value: str) -> int:
        r = json.loads(value)
        self.store.save_checkpoint(str(r["job"]), key.rsplit("/", 1)[1], int(r["step"]),
                                   str(r["path"]), float(r["ts"]))
        return 1

    def _take_suspect(self, key: str, value: str) -> int:
        r = json.loads(value)
        self.store.save_suspect(key.rsplit("/", 1)[1], str(r["reason"]), float(r["ts"]),
                                forget_before=0.0)
        return 1

    def orphaned_alerts(self) -> list[Pending]:
        """(taking the lead) the alerts earlier leaders left undelivered; their keys go:
        this leader's sender stores them anew (under its own name) and delivers them."""
        out = []
        for kv in self.etcd.get_prefix(self.prefix + "alerts/"):
            if kv.key.startswith(f"{self.prefix}alerts/{self.name}/") and self.epoch_before:
                continue                       # (ours, from a lead this process held: still queued here)
            try:
                out.append(Pending(**json.loads(kv.value)))
            except Exception as e:
                log.error("ha_record_unreadable", key=kv.key[-80:], error=repr(e)[:200])
            self.etcd.delete(kv.key)
        return out
