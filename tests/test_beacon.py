"""The rank beacon (watchdog_d/rank/beacon.py): the shared-memory slot a rank writes and the
agent reads, tested in-process on files in tmp_path. The rank-side runtime that writes it
is tested in test_rank_runtime.py."""
from __future__ import annotations

from pathlib import Path

from watchdog_d.rank.beacon import EXCEPTION, EXITED, RUNNING, SLOT_SIZE, BeaconWriter, read_slot, scan, slot_path


# -- beacon: write, read back -------------------------------------------------------------
def test_fresh_slot(tmp_path: Path) -> None:
    path = slot_path(tmp_path, 3)
    assert path == tmp_path / "rank-3.beacon"
    BeaconWriter(path, pid=4242, rank=3, local_rank=1, now=100.0)
    assert path.stat().st_size == SLOT_SIZE
    v = read_slot(path)
    assert v is not None
    assert (v.pid, v.rank, v.local_rank, v.start_time) == (4242, 3, 1, 100.0)
    assert (v.step, v.step_time, v.step_dt) == (-1, 100.0, 0.0)
    assert (v.state, v.exit_code, v.exit_time, v.detail) == (RUNNING, 0, 0.0, "")
    assert (v.section, v.section_deadline, v.section_timeout) == ("", 0.0, 0.0)
    assert (v.ckpt_step, v.ckpt_time, v.ckpt_path) == (-1, 0.0, "")


def test_steps_record_time_and_duration(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=10.0)
    w.write_step(0, 12.5)
    w.write_step(1, 13.0)
    v = read_slot(w.path)
    assert v is not None and (v.step, v.step_time, v.step_dt) == (1, 13.0, 0.5)
    assert w.step == 1
    # a section pause is not a step duration: rebase restarts the clock
    w.rebase(20.0)
    w.write_step(2, 20.25)
    v = read_slot(w.path)
    assert v is not None and (v.step, v.step_dt) == (2, 0.25)


def test_section_checkpoint_and_exit(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 1), 7, 1, 1, now=0.0)
    w.write_section("checkpoint", deadline=950.0, timeout=900.0)
    w.write_checkpoint("/ckpt/step-100.pt", 100, 51.0)
    v = read_slot(w.path)
    assert v is not None
    assert (v.section, v.section_deadline, v.section_timeout) == ("checkpoint", 950.0, 900.0)
    assert (v.ckpt_path, v.ckpt_step, v.ckpt_time) == ("/ckpt/step-100.pt", 100, 51.0)
    w.write_section("", 0.0, 0.0)
    w.write_exit(EXCEPTION, 1, 60.0, "RuntimeError: CUDA out of memory")
    v = read_slot(w.path)
    assert v is not None
    assert (v.section, v.section_deadline) == ("", 0.0)
    assert (v.state, v.exit_code, v.exit_time, v.detail) == (EXCEPTION, 1, 60.0,
                                                             "RuntimeError: CUDA out of memory")
    w.write_exit(EXITED, 3, 61.0)
    v = read_slot(w.path)
    assert v is not None and (v.state, v.exit_code, v.detail) == (EXITED, 3, "")


def test_shorter_name_replaces_longer_completely(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    w.write_section("a-very-long-section-name", 10.0, 10.0)
    w.write_section("io", 10.0, 10.0)
    assert read_slot(w.path).section == "io"  # type: ignore[union-attr]


def test_long_names_are_cut_not_raised(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    w.write_section("s" * 500, 1.0, 1.0)
    w.write_checkpoint("/p" * 400, 5, 1.0)
    w.write_exit(EXCEPTION, 1, 2.0, "E" * 1000)
    v = read_slot(w.path)
    assert v is not None
    assert v.section == "s" * 63
    assert v.ckpt_path == ("/p" * 400)[:255]
    assert v.detail == "E" * 79
    # the neighbouring fields are intact
    assert (v.ckpt_step, v.state, v.exit_code) == (5, EXCEPTION, 1)


def test_multibyte_names_cut_mid_character(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    w.write_section("é" * 40, 1.0, 1.0)            # 80 bytes into a 64-byte field
    w.write_exit(EXITED, 2, 1.0, "ошибка " * 20)
    v = read_slot(w.path)
    assert v is not None
    assert v.section.startswith("é" * 31) and len(v.section.encode("utf-8", "replace")) <= 66
    assert v.detail.startswith("ошибка")


def test_missing_short_garbage_and_incomplete_slots_read_as_none(tmp_path: Path) -> None:
    assert read_slot(tmp_path / "rank-0.beacon") is None                 # missing
    good = BeaconWriter(slot_path(tmp_path, 1), 1, 1, 1, now=0.0)
    full = good.path.read_bytes()
    truncated = tmp_path / "rank-2.beacon"
    truncated.write_bytes(full[:SLOT_SIZE // 2])
    assert read_slot(truncated) is None
    empty = tmp_path / "rank-3.beacon"
    empty.write_bytes(b"")
    assert read_slot(empty) is None
    garbage = tmp_path / "rank-4.beacon"
    garbage.write_bytes(bytes(range(256)) * 2)
    assert read_slot(garbage) is None
    zeros = tmp_path / "rank-5.beacon"                                    # magic not yet written
    zeros.write_bytes(b"\0" * SLOT_SIZE)
    assert read_slot(zeros) is None
    a_dir = tmp_path / "rank-6.beacon"
    a_dir.mkdir()
    assert read_slot(a_dir) is None


def test_scan_keeps_complete_slots_by_rank(tmp_path: Path) -> None:
    for r in (0, 1, 5):
        BeaconWriter(slot_path(tmp_path, r), 100 + r, r, r, now=float(r)).write_step(r, 50.0)
    (tmp_path / "rank-7.beacon").write_bytes(b"WDB1 too short")
    (tmp_path / "rank-0.stack").write_text("Thread ...")
    (tmp_path / "rank-0.exc").write_text("Traceback ...")
    (tmp_path / "notes.txt").write_text("hello")
    views = scan(tmp_path)
    assert sorted(views) == [0, 1, 5]
    assert views[5].pid == 105 and views[5].step == 5
    assert scan(tmp_path / "missing") == {}


def test_scan_keys_by_the_rank_inside_the_slot(tmp_path: Path) -> None:
    BeaconWriter(tmp_path / "rank-9.beacon", 1, rank=2, local_rank=0, now=0.0)
    assert list(scan(tmp_path)) == [2]


def test_writer_is_usable_by_a_second_reader_while_open(tmp_path: Path) -> None:
    w = BeaconWriter(slot_path(tmp_path, 0), 1, 0, 0, now=0.0)
    for i in range(100):
        w.write_step(i, float(i))
        v = read_slot(w.path)
        assert v is not None and v.step == i and v.step_time == float(i)
