"""Alerts: deduplicate incidents, keep each delivery on disk until it is made,
deliver through Apprise, never block detection.

A dispatcher thread stores each new delivery (``spool``) and hands each due one
to a short daemon worker thread, at most one in flight per URL: a black-holed
endpoint (Apprise waits 4 s to connect + 4 s to read) holds up only its own
deliveries.  Failures are retried with exponential backoff for as long as the
process lives; a delivery still pending when it dies is on disk, and the next
sender started on the same STATE_DIR sends it.

Delivery is at least once: the file goes after the channel took the alert, so
a crash between the two (a few microseconds) sends that one again after the
restart.  The other order would lose it instead."""
from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.model import Incident
from ..log import error, log, warn
from ..logs.redact import redact, redact_url
from .channels import InvalidAlertURL, apprise_notify, validate_alert_url, warm_up
from .message import EXCERPT_LINES, format_alert
from .spool import Pending, Spool, age_s

__all__ = ["AlertSender", "InvalidAlertURL", "apprise_notify", "format_alert",
           "validate_alert_url", "EXCERPT_LINES"]

_POLL_S = 0.5               # dispatcher re-checks at least this often (clock may be fake)
KEEP_SENT = 100             # AlertSender.sent holds the last this many
# a delivery found on disk older than this is stale news (and an endpoint that
# refused it for a day would otherwise be retried by every coordinator after)
SPOOL_MAX_AGE_S = 24 * 3600.0

Notify = Callable[[str, str, str], bool]


class _Recent(list):
    """A list that keeps only its last ``keep`` items (still == a list in tests)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def append(self, item: object) -> None:
        super().append(item)
        if len(self) > self.keep:
            del self[: len(self) - self.keep]


@dataclass
class _Delivery:
    """A pending delivery and how its tries went."""

    item: Pending
    tries: int = 0
    next_try: float = 0.0
    in_flight: bool = False
    stored: str | None = None        # its file in the spool, once written
    store_tried: bool = False
    mirrored: str = ""               # --ha: its key in etcd's copy (``mirror``), once written


class AlertSender:
    """Deduplicate, queue and deliver alerts in the background."""

    def __init__(self, default_urls: Iterable[str] = (), *, notify: Notify | None = None,
                 cooldown_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 base_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 on_sent: Callable[[str, str, str], None] | None = None,
                 spool_dir: Path | str | None = None) -> None:
        # notify=None: real Apprise.  clock drives both the cooldown and backoff.
        # spool_dir=None: deliveries are kept in memory only.
        self.default_urls = tuple(default_urls)
        self.spool_dir = None if spool_dir is None else Path(spool_dir)
        self._spool: Spool | None = None
        self._spool_trouble = False      # a disk problem was logged; quiet until it passes
        self._notify, self._clock, self.on_sent = notify, clock, on_sent
        self.cooldown_s, self.base_backoff_s, self.max_backoff_s = cooldown_s, base_backoff_s, max_backoff_s
        self.sent: list[tuple[str, str, str]] = _Recent(KEEP_SENT)
        self.counters = {"submitted": 0, "deduplicated": 0, "sent": 0, "failed": 0, "dropped": 0,
                         "requeued": 0}
        self._last: dict[tuple[str, str, int | None, int], float] = {}
        self._queue: list[_Delivery] = []
        self._busy: set[str] = set()        # URLs with a delivery in flight
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # --ha (coordinator.replica): each delivery also kept in etcd until it is made, where
        # the next leader finds it; an object with stored(file, pending) and done(file)
        self.mirror = None

    # -- producer side: called from the coordinator's decision path ---------
    def submit(self, incident: Incident, urls: Iterable[str] = ()) -> bool:
        """Queue ``incident`` for every URL; True if queued, False if dropped
        as a duplicate (or on an internal error, which is logged)."""
        try:
            v = incident.verdict
            targets = [u for u in dict.fromkeys([*self.default_urls, *urls]) if u]
            key = (v.job, v.kind, v.rank, v.attempt)
            with self._cond:
                now = self._clock()
                last = self._last.get(key)
                # the window runs from the alert that was sent, not from drops
                dup = last is not None and now - last < self.cooldown_s
                if dup:
                    self.counters["deduplicated"] += 1
                else:
                    self._last[key] = now
                    if len(self._last) > 4096:   # forget keys whose cooldown is over
                        self._last = {k: t for k, t in self._last.items() if now - t < self.cooldown_s}
            if dup:
                log("alert_deduplicated", job=v.job, kind=v.kind, rank=v.rank_label,
                    job_attempt=v.attempt, cooldown_s=self.cooldown_s)
                return False
            if not targets:
                log("alert_no_destination", job=v.job, kind=v.kind)
                return True
            title, body = format_alert(incident)
            with self._cond:
                now = self._clock()
                for u in targets:
                    self._queue.append(_Delivery(Pending(u, title, body, v.job, v.kind, v.rank,
                                                         v.attempt), next_try=now))
                self.counters["submitted"] += 1
                self._cond.notify_all()
            return True
        except Exception as e:   # never raise into detection
            error("alert_submit_failed", error=redact(f"{type(e).__name__}: {e}"))
            return False

    def sent_for(self, job: str, marker: str = "") -> int:
        """Deliveries sent lately for ``job`` whose body holds ``marker`` (a drill follows its
        alert by this)."""
        head = f"[watchdog-d] {job}:"
        with self._cond:
            return sum(1 for _, title, body in self.sent if title.startswith(head) and marker in body)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def adopt(self, pendings: list[Pending]) -> None:
        """--ha: deliveries a leader before this one left undone: queued as new."""
        with self._cond:
            now = self._clock()
            for p in pendings:
                self._queue.append(_Delivery(p, next_try=now))
                self._last[(p.job, p.kind, p.rank, p.attempt)] = now
            self.counters["requeued"] += len(pendings)
            self._cond.notify_all()
        if pendings:
            log("alerts_adopted", count=len(pendings))

    def drop_all(self) -> int:
        """--ha, deposed: the next leader delivers what is queued here (it found it in etcd)."""
        with self._cond:
            dropped = [d for d in self._queue if not d.in_flight]
            for d in dropped:
                self._queue.remove(d)
            self._cond.notify_all()
        return len(dropped)

    # -- delivery side -------------------------------------------------------
    def start(self) -> AlertSender:
        """Start delivering; what dead senders left on disk is queued before
        this returns (at start-up, a few small files: not on any hot path)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return self
        self._open_spool()
        with self._cond:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="watchdog-alerts", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Try everything pending once more now, wait up to ``timeout`` for
        the queue to drain, then stop the dispatcher."""
        deadline = time.monotonic() + timeout
        with self._cond:
            running = self._thread is not None and self._thread.is_alive()
            now = self._clock()
            for d in self._queue:
                d.next_try = min(d.next_try, now)
            self._cond.notify_all()
            while running and self._queue and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 0.05))
            self._stopping = True
            self._cond.notify_all()
            thread, left_over = self._thread, len(self._queue)
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
        with self._cond:
            done = not self._queue and not self._busy
        if done and self._spool is not None and (thread is None or not thread.is_alive()):
            self._spool.close()       # (and its directory, empty now)
            self._spool = None
        # with deliveries left, the spool stays locked until the process ends: the
        # next sender takes them over then (this one could still send one)
        if left_over:
            warn("alerts_undelivered", count=left_over,
                 kept_in=self.spool_dir if self.spool_dir is not None else None)

    def _run(self) -> None:
        if self._notify is None:
            warm_up()
        with self._cond:
            while not self._stopping:
                new = [d for d in self._queue if not d.store_tried]
                if new and (self._spool is not None or self.mirror is not None):
                    # written before its first try, off the lock (fsync takes
                    # milliseconds; submit() must never wait for it)
                    for d in new:
                        d.store_tried = True
                    self._cond.release()
                    try:
                        self._store(new)
                    finally:
                        self._cond.acquire()
                now = self._clock()
                wait = _POLL_S
                for d in self._queue:
                    if d.in_flight or d.item.url in self._busy:
                        continue
                    if d.next_try <= now:
                        d.in_flight = True
                        self._busy.add(d.item.url)
                        threading.Thread(target=self._deliver, args=(d,),
                                         name="watchdog-alert-send", daemon=True).start()
                    else:
                        wait = min(wait, d.next_try - now)
                self._cond.wait(max(wait, 0.001))

    # -- the spool (never on submit()'s thread) --------------------------------------
    def _open_spool(self) -> None:
        """Open this process's spool and queue what dead senders left in it."""
        if self.spool_dir is None or self._spool is not None:
            return
        try:
            self._spool = Spool(self.spool_dir)
            left = self._spool.take_over()
        except Exception as e:      # a disk problem (or a bug): deliver from memory
            self._spool = None
            self._spool_failed("open", e)
            return
        if self._spool.skipped:
            warn("alert_spool_unreadable", dir=self._spool.dir, files=self._spool.skipped)
        stale = [(n, p) for n, p in left if age_s(n) > SPOOL_MAX_AGE_S]
        for name, p in stale:
            warn("alert_expired", job=p.job, kind=p.kind, url=redact_url(p.url),
                 age_h=f"{age_s(name) / 3600:.1f}")
            self._unstore(name)
        left = [x for x in left if x not in stale]
        with self._cond:
            now = self._clock()
            for name, p in left:
                self._queue.append(_Delivery(p, next_try=now, stored=name, store_tried=True))
                # the same incident decided again after a restart is a duplicate
                self._last[(p.job, p.kind, p.rank, p.attempt)] = now
            self.counters["requeued"] += len(left)
            self._cond.notify_all()
        if left:
            log("alerts_requeued", count=len(left), dir=self._spool.dir)

    def _store(self, deliveries: list[_Delivery]) -> None:
        if self.mirror is not None:
            for d in deliveries:
                d.mirrored = f"{time.time_ns()}-{id(d):x}"
                self.mirror.stored(d.mirrored, d.item)
        if self._spool is None:
            return
        for d in deliveries:
            try:
                d.stored = self._spool.put(d.item)
            except Exception as e:   # a full or read-only disk: delivered from memory
                self._spool_failed("write", e)
                continue
            if self._spool_trouble:
                self._spool_trouble = False
                log("alert_spool_recovered", dir=self._spool.dir)

    def _unstore(self, name: str) -> None:
        try:
            if self._spool is not None:
                self._spool.remove(name)
        except Exception as e:
            self._spool_failed("remove", e)

    def _spool_failed(self, op: str, e: Exception) -> None:
        """One line per episode, not per alert: a full disk stays full a while."""
        if self._spool_trouble:
            return
        self._spool_trouble = True
        reason = errno.errorcode.get(getattr(e, "errno", None) or 0, type(e).__name__)
        warn("alert_spool_failed", op=op, dir=self.spool_dir, error=reason,
             effect="alerts not on disk are kept in memory until delivered; a restart loses them")

    def _deliver(self, d: _Delivery) -> None:
        reasons: list[str] = []
        it = d.item
        try:
            if self._notify is None:
                ok = apprise_notify(it.url, it.title, it.body, reasons)
            else:
                ok = self._notify(it.url, it.title, it.body)
            outcome = "sent" if ok else "failed"
        except InvalidAlertURL as e:   # retrying cannot help: drop, loudly
            outcome = "dropped"
            reasons.append(str(e))
        except Exception as e:
            outcome = "failed"
            reasons.append(f"{type(e).__name__}: {e}")
        reason = redact(reasons[-1])[:200] if reasons else None
        if outcome != "failed" and d.stored is not None:
            # before the delivery leaves the queue: stop() waits for the queue,
            # so a flushed delivery's file is gone when stop() returns
            self._unstore(d.stored)
        if outcome != "failed" and d.mirrored and self.mirror is not None:
            self.mirror.done(d.mirrored)
        # exponent capped: "forever" must not end in a float overflow
        delay = min(self.base_backoff_s * 2 ** min(d.tries, 40), self.max_backoff_s)
        with self._cond:
            self._busy.discard(d.item.url)
            d.in_flight = False
            d.tries += 1
            self.counters[outcome] += 1
            if outcome == "failed":
                d.next_try = self._clock() + delay
            else:
                self._queue.remove(d)
            if outcome == "sent":
                self.sent.append((d.item.url, d.item.title, d.item.body))
            self._cond.notify_all()
        url = redact_url(d.item.url)
        if outcome == "failed":
            warn("alert_failed", job=d.item.job, kind=d.item.kind, url=url, attempt=d.tries,
                 retry_in_s=f"{delay:.2f}", error=reason)
        elif outcome == "dropped":
            error("alert_dropped", job=d.item.job, kind=d.item.kind, url=url, error=reason)
        else:
            log("alert_sent", job=d.item.job, kind=d.item.kind, url=url, attempt=d.tries)
            if self.on_sent is not None:
                try:
                    self.on_sent(d.item.url, d.item.title, d.item.body)
                except Exception as e:
                    error("alert_on_sent_failed", error=type(e).__name__)
