"""The coordinator's status picture (``watchdog-d status``, ``status.json``): rebuilt at
most every ``_snap_interval`` and at most STATUS_SHARE of the loop's time, JOBS_PER_PASS
jobs at a time with reports served in between; written from a worker thread."""
from __future__ import annotations

import asyncio
import json
import time

from .status import job_status, snapshot, status_text, to_json, write_status

JOBS_PER_PASS = 16        # jobs put in the snapshot before reports get a turn
STATUS_MIN_S = 0.25       # the snapshot is rebuilt at most this often ...
STATUS_SHARE = 0.01       # ... and at most this share of the loop's time goes to it


class Picture:
    """(a part of ``server.Coordinator``)"""

    def _write_status(self, snap_json: tuple[dict, str] | None) -> None:
        text = to_json(snapshot(self.cluster, self.clock())) if snap_json is None else snap_json[1]
        self._status_failing = write_status(self.status_path, text, self._status_failing)

    def _snap_interval(self) -> float:
        return max(STATUS_MIN_S, self._snap_cost / STATUS_SHARE)

    async def _fresh_snapshot(self) -> dict:
        """The status picture, rebuilt at most every ``_snap_interval``, JOBS_PER_PASS jobs
        at a time with reports served in between (a job that ended meanwhile is left out)."""
        now = self.clock()
        if now - self._snap_at < self._snap_interval():
            return self._snap
        self._snap_at = now                 # (one rebuild at a time)
        cost, began, jobs, texts = 0.0, time.perf_counter(), [], []
        for i, job_id in enumerate(sorted(self.cluster.jobs)):
            if i and i % JOBS_PER_PASS == 0:
                cost += time.perf_counter() - began
                await asyncio.sleep(0)
                began = time.perf_counter()
            book = self.cluster.jobs.get(job_id)
            if book is not None:
                job = job_status(self.cluster, book, self.clock())
                job["alerts"] = {"to": len({*self.sender.default_urls, *book.spec.alert_urls}),
                                 "drill_sent": self.sender.sent_for(job_id, "[drill: ")}
                jobs.append(job)
                texts.append(json.dumps(job))     # here, in slices, not in one long hold of the GIL
        self._snap_cost = cost + time.perf_counter() - began
        self._snap = {"written_at": time.time(), "jobs": jobs}
        if self.ha is not None:
            with self.ha.lock:
                state = self.ha.state
                self._snap["coordinator"] = {"name": self.ha.name, "role": state.role,
                                             "epoch": state.epoch, "leader": state.leader}
        self._snap_json = (self._snap, status_text(self._snap["written_at"], texts,
                                                   self._snap.get("coordinator")))
        return self._snap

    async def status_json(self) -> str:
        snap = await self._fresh_snapshot()
        if self._snap_json is None or self._snap_json[0] is not snap:
            self._snap_json = (snap, to_json(snap))
        return self._snap_json[1]

    def status(self) -> dict:
        """The status picture, from any thread."""
        loop = self.loop
        if loop is None or not loop.is_running():
            return snapshot(self.cluster, self.clock())
        try:
            return asyncio.run_coroutine_threadsafe(self._fresh_snapshot(), loop).result(timeout=5)
        except Exception:
            return self._snap
