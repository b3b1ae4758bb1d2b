"""What the coordinator writes to its SQLite store, off its loop (a worker thread):
incidents, the checkpoints runs recorded, the nodes marked suspect (so that a restarted
coordinator still warns about them). A write that fails (a full or read-only disk) is
logged; detection, teardowns and alerts go on."""
from __future__ import annotations

import time
from typing import Callable

from .. import log
from ..core.state import Cluster
from ..core.suspects import KEEP_S, Suspicion
from .replica import Replica
from .store import IncidentStore


class Records:
    """Mixed into the Coordinator, which owns ``store``, ``cluster`` and ``clock``."""

    store: IncidentStore
    cluster: Cluster
    clock: Callable[[], float]
    replica: Replica | None            # --ha: the records also go to etcd (coordinator.replica)

    def _record(self, incident) -> None:  # type: ignore[no-untyped-def]
        v = incident.verdict
        key = self.replica.incident_key(incident.ts) if self.replica is not None else ""
        event = None
        try:
            event = self.store.record(incident, key) if key else self.store.record(incident)
        except Exception as e:   # a full or read-only disk: detection and alerts go on
            log.error("incident_not_stored", job=v.job, kind=v.kind, rank=v.rank_label,
                      error=str(e)[:200], effect="acted on and alerted; missing from 'events'")
        if self.replica is not None:
            self.replica.incident(key, {**(event or incident.as_event()), "_ts": incident.ts})

    def _store_checkpoints(self, recorded: dict[tuple[str, str], tuple[int, str]]) -> None:
        logged = set()
        for (job, run), (step, path) in recorded.items():
            try:
                self.store.save_checkpoint(job, run, step, path, time.time())
            except Exception as e:
                log.error("store_failed", error=repr(e))
            if self.replica is not None:
                self.replica.checkpoint(job, run, step, path, time.time())
            if (job, step) not in logged:
                logged.add((job, step))
                log.log("checkpoint_recorded", job=job, step=step, path=path)

    def _wall(self, since: float) -> float:
        """A moment on the coordinator's clock, as wall time (what outlives the process)."""
        return time.time() - (self.clock() - since)

    def _store_suspects(self, marked: list[Suspicion]) -> None:
        for s in marked:
            try:
                wall = self._wall(s.since)
                self.store.save_suspect(s.node, s.reason, wall, forget_before=wall - KEEP_S)
            except Exception as e:
                log.error("store_failed", error=repr(e))
            if self.replica is not None:
                self.replica.suspect(s.node, s.reason, self._wall(s.since))

    def _restore_suspects(self) -> None:
        """The markings of the coordinator before this one that have not aged out."""
        wall, now = time.time(), self.clock()
        try:
            rows = self.store.suspects(after=wall - KEEP_S)
        except Exception as e:
            log.error("store_failed", error=repr(e))
            return
        for node, reason, ts in rows:
            self.cluster.suspects.restore(node, reason, now - (wall - ts))
        if rows:
            log.log("suspects_restored", nodes=len(rows))
