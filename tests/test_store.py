from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from watchdog_d.core.model import Incident, Verdict
from watchdog_d.coordinator.store import IncidentStore, StoreError


def _inc(ts: float, job: str = "j1", kind: str = "rank_exited", **kw: object) -> Incident:
    return Incident(ts=ts, verdict=Verdict(job=job, kind=kind, **kw), action="teardown")  # type: ignore[arg-type]


def test_record_and_read_back_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "incidents.db"      # parent dirs are created
    store = IncidentStore(path)
    a = _inc(1_700_000_010.0, rank=1, node="n1", step=5, detected_after_s=0.123456, cause="exit 1")
    b = _inc(1_700_000_000.0, job="j2", kind="node_lost")
    c = _inc(1_700_000_020.0, kind="restart")
    for inc in (a, b, c):
        store.record(inc)
    assert store.events() == [b.as_event(), a.as_event(), c.as_event()]
    assert store.events("j1") == [a.as_event(), c.as_event()]
    assert store.events("nope") == []
    assert store.jobs() == ["j1", "j2"]
    # another instance (another process, later) sees the same log
    assert IncidentStore(path).events("j2") == [b.as_event()]


def test_schema_wal_and_indexed_columns(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    IncidentStore(path).record(_inc(1_700_000_000.0, rank=0))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        job, ts, kind, event = conn.execute("SELECT job, ts, kind, event FROM incidents").fetchone()
        assert (job, ts, kind) == ("j1", 1_700_000_000.0, "rank_exited")
        assert json.loads(event)["ts"] == "2023-11-14T22:13:20.000+00:00"
    finally:
        conn.close()


def test_secrets_never_stored(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path / "i.db")
    store.record(_inc(1.0, cause="login failed password=hunter2"))
    assert store.events()[0]["cause"] == "login failed password=[REDACTED]"
    assert all(b"hunter2" not in f.read_bytes() for f in tmp_path.iterdir())   # db, -wal, -shm


def test_meta(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path / "i.db")
    assert store.get_meta("j1/restarts") is None
    store.put_meta("j1/restarts", "1")
    store.put_meta("j1/restarts", "2")
    assert store.get_meta("j1/restarts") == "2"
    assert IncidentStore(tmp_path / "i.db").get_meta("j1/restarts") == "2"


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "incidents.db"
    path.write_bytes(b"this is not sqlite at all\n" * 100)
    with pytest.raises(StoreError) as err:
        IncidentStore(path)
    assert str(path) in str(err.value) and "not a database" in str(err.value)


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file, not a dir")
    with pytest.raises(StoreError, match="cannot create directory"):
        IncidentStore(tmp_path / "f" / "x.db")
    with pytest.raises(StoreError, match=str(tmp_path)):
        IncidentStore(tmp_path)                                 # a directory


def test_threads_and_a_second_process(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    store = IncidentStore(path)

    def writer(n: int) -> None:
        for i in range(20):
            store.record(_inc(float(n * 100 + i), job=f"t{n}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    code = (
        "import sys; from watchdog_d.coordinator.store import IncidentStore;"
        "from watchdog_d.core.model import Incident, Verdict;"
        "s = IncidentStore(sys.argv[1]);"
        "[s.record(Incident(ts=1e9 + i, verdict=Verdict(job='p', kind='k'))) for i in range(20)]"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=Path(__file__).parents[1])
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(timeout=20) == 0
    assert store.jobs() == ["p", "t0", "t1", "t2", "t3"]
    assert len(store.events()) == 100
    ts = [e["ts"] for e in store.events("t2")]
    assert ts == sorted(ts) and len(ts) == 20


def test_recorded_checkpoints_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    s = IncidentStore(path)
    assert s.checkpoints() == {}
    s.save_checkpoint("j1", "r1", 10, "/c/step-10.pt", 1.0)
    s.save_checkpoint("j1", "r1", 20, "/c/step-20.pt", 2.0)
    s.save_checkpoint("j1", "r2", 5, "/d/5", 3.0)      # the same job launched again: a new run
    assert IncidentStore(path).checkpoints() == {"r1": (20, "/c/step-20.pt"), "r2": (5, "/d/5")}
    assert IncidentStore(path).checkpoints(limit=1) == {"r2": (5, "/d/5")}


def test_a_coordinator_restarted_on_the_same_state_dir_knows_the_checkpoint(tmp_path: Path) -> None:
    from watchdog_d.config import Config
    from watchdog_d.coordinator.server import Coordinator

    IncidentStore(tmp_path / "incidents.sqlite").save_checkpoint("j1", "r1", 30, "/c/step-30.pt", 1.0)
    c = Coordinator(Config(state_dir=str(tmp_path)))
    assert c.cluster.checkpoints == {"r1": (30, "/c/step-30.pt")}


def test_ha_records_are_taken_once_whoever_wrote_them(tmp_path: Path) -> None:
    """--ha: an incident this coordinator recorded under an etcd key is not taken again by
    a pull; one another coordinator recorded is taken once, in time order."""
    store = IncidentStore(tmp_path / "i.sqlite")
    event = store.record(_inc(ts=100.0, job="a"), "/watchdog-d/incidents/100-A-0")
    assert store.import_event("/watchdog-d/incidents/100-A-0", json.dumps({**event, "_ts": 100.0})) == 0
    theirs = {**_inc(ts=50.0, job="b").as_event(), "_ts": 50.0}
    assert store.import_event("/watchdog-d/incidents/50-B-0", json.dumps(theirs)) == 1
    assert store.import_event("/watchdog-d/incidents/50-B-0", json.dumps(theirs)) == 0
    assert [e["job"] for e in store.events()] == ["b", "a"]


def _open_when_told(path: str, go, failed) -> None:  # type: ignore[no-untyped-def]
    go.wait(10)
    try:
        IncidentStore(path)
    except StoreError:
        failed.set()


def test_processes_that_create_the_file_at_once_all_open_it(tmp_path: Path) -> None:
    # two jobs started together on one machine: their embedded coordinators create the
    # same new incidents.sqlite; SQLite refused one at once ("database is locked") while
    # the other switched the file to WAL, and that job never started its coordinator
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    failed = ctx.Event()
    for round_ in range(120):
        go = ctx.Event()
        path = str(tmp_path / f"r{round_}.sqlite")
        procs = [ctx.Process(target=_open_when_told, args=(path, go, failed)) for _ in range(4)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(30)
        assert not failed.is_set(), f"round {round_}: a process could not open the new store"
