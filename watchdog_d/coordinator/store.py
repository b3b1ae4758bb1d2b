"""The incident log: a small SQLite file in the state dir.

It outlives the coordinator (``watchdog-d events`` reads it after the job and
an embedded coordinator are gone) and may be opened by several processes at
once, hence WAL (readers never block the writer) and a busy timeout (writers
queue instead of failing with "database is locked").  A connection is opened
per call: no connection crosses threads or a fork, and the rate is a handful
of incidents per job, far below where that cost would matter.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.model import Incident
from ..logs.redact import redact

BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    ts    REAL NOT NULL,
    job   TEXT NOT NULL,
    kind  TEXT NOT NULL,
    event TEXT NOT NULL            -- Incident.as_event() as JSON
);
CREATE INDEX IF NOT EXISTS incidents_job_ts ON incidents (job, ts);
CREATE INDEX IF NOT EXISTS incidents_ts ON incidents (ts);
CREATE INDEX IF NOT EXISTS incidents_kind ON incidents (kind);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_checkpoints (   -- the newest checkpoint a run's ranks recorded
    run   TEXT PRIMARY KEY,                     -- a node's run token (each node of a run has one)
    job   TEXT NOT NULL,
    step  INTEGER NOT NULL,
    path  TEXT NOT NULL,
    ts    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replicated (        -- --ha: incidents taken from etcd (or put there)
    key   TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS suspects (          -- nodes marked suspect (core/suspects.py)
    node   TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    ts     REAL NOT NULL                        -- wall time of the marking
);
"""


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """The switch needs the file to itself, and SQLite answers "database is locked" at
    once, without its busy timeout, while another process switches the same new file
    (two embedded coordinators of jobs started together): tried again until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class StoreError(Exception):
    """The incident store cannot be opened or used; the message names the file."""


class IncidentStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"incident store {self.path}: cannot create directory: {e}") from None
        with self._connect() as conn:
            # WAL is a property of the file: set once, every later opener gets
            # it.  Where WAL is refused (some network filesystems) SQLite keeps
            # its rollback journal, which still works, only with less concurrency.
            _switch_to_wal(conn)
            # the write lock first: two coordinators creating the file at once (two
            # jobs started together on one machine) would otherwise each hold a read
            # lock and want the write one, and SQLite fails one of them at once,
            # busy timeout or not ("database is locked")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One short-lived connection; every sqlite3 error becomes a StoreError."""
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            with conn:   # commit on success, roll back on error
                yield conn
        except sqlite3.Error as e:
            hint = ""
            if isinstance(e, sqlite3.DatabaseError) and ("not a database" in str(e) or "malformed" in str(e)):
                hint = "; move the file aside or choose another --state-dir"
            raise StoreError(f"incident store {self.path}: {e}{hint}") from None
        finally:
            if conn is not None:
                conn.close()

    def record(self, incident: Incident, etcd_key: str = "") -> dict:
        """The event as stored (``etcd_key``: --ha, its key in etcd, so a pull does not
        take it twice)."""
        event = incident.as_event()
        # The incident log is a log too: secrets never reach it.
        for key in ("cause", "remedy"):
            if isinstance(event.get(key), str):
                event[key] = redact(event[key])
        v = incident.verdict
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO incidents (ts, job, kind, event) VALUES (?, ?, ?, ?)",
                (incident.ts, v.job, v.kind, json.dumps(event)),
            )
            if etcd_key:
                conn.execute("INSERT OR IGNORE INTO replicated (key) VALUES (?)", (etcd_key,))
        return event

    def import_event(self, key: str, text: str) -> int:
        """--ha: an incident another coordinator recorded (``events --json``'s object with
        its ``ts`` in seconds as ``_ts``); 1 if new here, 0 if held already."""
        event = json.loads(text)
        ts = float(event.pop("_ts"))
        with self._connect() as conn:
            if conn.execute("INSERT OR IGNORE INTO replicated (key) VALUES (?)", (key,)).rowcount == 0:
                return 0
            conn.execute("INSERT INTO incidents (ts, job, kind, event) VALUES (?, ?, ?, ?)",
                         (ts, str(event["job"]), str(event["kind"]), json.dumps(event)))
        return 1

    def events(self, job: str | None = None) -> list[dict]:
        """Event dicts, oldest first (ties in insertion order)."""
        sql = "SELECT event FROM incidents"
        args: tuple[str, ...] = ()
        if job is not None:
            sql += " WHERE job = ?"
            args = (job,)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY ts, id", args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def jobs(self) -> list[str]:
        """Every job with at least one incident, sorted by name."""
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT job FROM incidents ORDER BY job").fetchall()
        return [r[0] for r in rows]

    def save_checkpoint(self, job: str, run: str, step: int, path: str, ts: float) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO run_checkpoints (run, job, step, path, ts) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(run) DO UPDATE SET job = excluded.job, step = excluded.step,"
                " path = excluded.path, ts = excluded.ts", (run, job, int(step), str(path), ts))

    def checkpoints(self, limit: int = 100_000) -> dict[str, tuple[int, str]]:
        """run token -> (step, path), the most recently recorded first ``limit``."""
        with self._connect() as conn:
            rows = conn.execute("SELECT run, step, path FROM run_checkpoints ORDER BY ts DESC LIMIT ?",
                                (limit,)).fetchall()
        return {run: (int(step), path) for run, step, path in rows}

    def save_suspect(self, node: str, reason: str, ts: float, forget_before: float) -> None:
        """Mark ``node`` (the latest reason wins); markings older than ``forget_before`` go."""
        with self._connect() as conn:
            conn.execute("INSERT INTO suspects (node, reason, ts) VALUES (?, ?, ?)"
                         " ON CONFLICT(node) DO UPDATE SET reason = excluded.reason, ts = excluded.ts",
                         (node, reason, ts))
            conn.execute("DELETE FROM suspects WHERE ts < ?", (forget_before,))

    def suspects(self, after: float, limit: int = 10_000) -> list[tuple[str, str, float]]:
        """(node, reason, wall time) of the markings made after ``after``, oldest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT node, reason, ts FROM suspects WHERE ts >= ? ORDER BY ts"
                                " LIMIT ?", (after, limit)).fetchall()
        return [(node, reason, float(ts)) for node, reason, ts in rows]

    def put_meta(self, key: str, value: str) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )

    def get_meta(self, key: str) -> str | None:
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]
