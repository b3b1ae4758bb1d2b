"""Tailer / OffsetStore / DirectoryTailer: every line exactly once, whatever the file does."""
from __future__ import annotations

import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from watchdog_d.logs.directory import DirectoryTailer
from watchdog_d.logs.tail import Block, FilePosition, Line, OffsetStore, Tailer


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def rotate(path: Path, backups: int) -> None:
    """What the tee does: PATH.i -> PATH.i+1 ..., PATH -> PATH.1."""
    for i in range(backups - 1, 0, -1):
        if Path(f"{path}.{i}").exists():
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def datas(lines: list[Line]) -> list[bytes]:
    return [ln.data for ln in lines]


def block_lines(blocks: list[Block]) -> list[bytes]:
    """The lines of blocks, checking what every block promises."""
    out: list[bytes] = []
    for b in blocks:
        assert b.data.endswith(b"\n") and b.data.count(b"\n") == b.lines >= 1
        assert b.truncated_lines == 0 or (b.lines, b.truncated_lines) == (1, 1)
        out += b.data[:-1].split(b"\n")
    return out


def file_of(fid: str, tmp_path: Path) -> Path:
    return next(f for f in tmp_path.iterdir() if f"{f.stat().st_dev}:{f.stat().st_ino}" == fid)


def restart(t: Tailer, tmp_path: Path) -> Tailer:
    """An agent restart: the position goes through JSON on disk into a fresh Tailer."""
    store = OffsetStore(tmp_path / "offsets.json")
    pos = t.position
    store.save({"r": pos} if pos else {})
    t.close()
    saved = store.load().get("r")
    return Tailer(t.path, FilePosition.from_dict(saved) if saved else None, t.max_line, t.max_backups)


def test_complete_lines_only_and_offsets(tmp_path: Path) -> None:
    p = tmp_path / "rank-0.log"
    t = Tailer(p)
    assert t.read() == [] and t.position is None          # not there yet: no error
    append(p, b"one\ntw")
    lines = t.read()
    assert datas(lines) == [b"one"] and lines[0].offset == 0 and not lines[0].truncated
    assert t.position is not None and t.position.offset == 4  # the pending "tw" is re-read after a restart
    append(p, b"o\n\nthree\n")
    lines = t.read()
    assert [(ln.offset, ln.data) for ln in lines] == [(4, b"two"), (8, b""), (9, b"three")]
    st = p.stat()
    assert lines[0].file_id == f"{st.st_dev}:{st.st_ino}"
    assert t.read() == []


def test_flush_partial_returns_a_last_line_without_newline(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"a\nlast words")
    t = Tailer(p)
    assert datas(t.read()) == [b"a"]
    assert datas(t.read(flush_partial=True)) == [b"last words"]
    assert t.position is not None and t.position.offset == p.stat().st_size


def test_binary_invalid_utf8_and_nul_are_bytes(tmp_path: Path) -> None:
    p = tmp_path / "log"
    junk = bytes(range(256)).replace(b"\n", b"")
    append(p, b"\xff\xfe\xc3(\n\x00\x00\n" + junk + b"\n")
    assert datas(Tailer(p).read()) == [b"\xff\xfe\xc3(", b"\x00\x00", junk]


def test_long_line_cut_and_skipped_across_reads_and_restart(tmp_path: Path) -> None:
    p = tmp_path / "log"
    t = Tailer(p, max_line=10)
    append(p, b"0123456789\n" + b"x" * 25)
    lines = t.read()
    assert [(ln.data, ln.truncated) for ln in lines] == [(b"0123456789", False), (b"x" * 10, True)]
    t = restart(t, tmp_path)                               # still skipping after a restart
    append(p, b"y" * 30)
    assert t.read() == []
    append(p, b"yy\nnext\n")
    assert [(ln.data, ln.truncated) for ln in t.read()] == [(b"next", False)]


def test_50mb_line_without_newline_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "log"
    block = b"z" * (1 << 20)
    with open(p, "wb") as f:
        f.write(b"before\n")
        for _ in range(50):
            f.write(block)
    t = Tailer(p)
    tracemalloc.start()
    got: list[Line] = []
    for _ in range(20):                                    # 4 MiB per read
        got += t.read()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 6 << 20, peak
    assert [(len(ln.data), ln.truncated) for ln in got] == [(6, False), (65536, True)]
    append(p, b"tail\nafter\n")
    assert datas(t.read()) == [b"after"]


def test_rotation_by_rename_finishes_old_file_first(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"a1\na2\n")
    t = Tailer(p)
    assert datas(t.read()) == [b"a1", b"a2"]
    append(p, b"a3\n")                                     # unread when the rotation comes
    rotate(p, 3)
    append(p, b"b1\n")
    rotate(p, 3)                                           # two rotations between reads
    append(p, b"c1\nc2")
    assert datas(t.read()) == [b"a3", b"b1", b"c1"]
    append(p, b"\n")
    assert datas(t.read()) == [b"c2"]


def test_line_split_by_rotation_is_joined(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"x\nfirst half ")
    t = Tailer(p)
    assert datas(t.read()) == [b"x"]
    rotate(p, 2)
    append(p, b"second half\ny\n")
    lines = t.read()
    assert datas(lines) == [b"first half second half", b"y"]
    assert lines[0].offset == 2 and lines[0].file_id != lines[1].file_id


def test_truncation_in_place_starts_again(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"aaaa\nbbbb\n")
    t = Tailer(p)
    assert datas(t.read()) == [b"aaaa", b"bbbb"]
    with open(p, "wb") as f:                               # truncated and rewritten past our offset
        f.write(b"new file line 1\nline 2\n")
    assert datas(t.read()) == [b"new file line 1", b"line 2"]
    os.truncate(p, 0)
    append(p, b"z\n")
    assert datas(t.read()) == [b"z"]


def test_deleted_while_tailed_then_recreated(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"1\n")
    t = Tailer(p)
    assert datas(t.read()) == [b"1"]
    with open(p, "ab") as writer:                          # a writer that keeps its fd
        writer.write(b"2\n")
        writer.flush()
        os.unlink(p)
        writer.write(b"3\n")
        writer.flush()
        assert datas(t.read()) == [b"2", b"3"]            # the open fd still has them
        assert t.read() == []
    append(p, b"new\n")                                    # re-created: new inode, from 0
    assert datas(t.read()) == [b"new"]


def test_recreated_with_reused_inode_number_is_a_new_file(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"old old old\n")
    t = Tailer(p)
    t.read()
    t = restart(t, tmp_path)
    pos = t.position
    assert pos is not None
    os.unlink(p)
    append(p, b"fresh content that is longer than before\n")
    fake = FilePosition(**{**pos.to_dict(), "inode": p.stat().st_ino, "dev": p.stat().st_dev})
    assert datas(Tailer(p, fake).read()) == [b"fresh content that is longer than before"]


@pytest.mark.parametrize("seed,max_line", [(7, 65536), (11, 30), (12, 8), (13, 3)])
@pytest.mark.parametrize("blocks", [False, True])
def test_restart_resumes_exactly_once_across_rotation(tmp_path: Path, seed: int, max_line: int,
                                                      blocks: bool) -> None:
    """Random writes, rotations (some mid-line, as the tee may cut), restarts, reads."""
    def read(n: int = 4 << 20) -> list[bytes]:
        return block_lines(t.read_blocks(n)) if blocks else datas(t.read(n))

    rng = random.Random(seed)
    p = tmp_path / "rank-3.log"
    written: list[bytes] = []
    got: list[bytes] = []
    stream = bytearray()
    t = Tailer(p, max_line=max_line, max_backups=8)
    for _ in range(300):
        r = rng.random()
        if r < 0.45:
            for _ in range(rng.randint(1, 5)):
                line = bytes(rng.choice(b"ab\x00\xff\xc3 ") for _ in range(rng.randint(0, 40)))
                written.append(line[:max_line])
                stream += line + b"\n"
            cut = rng.randint(0, len(stream))              # write part; the rest later
            append(p, bytes(stream[:cut]))
            del stream[:cut]
        elif r < 0.55 and p.exists():
            rotate(p, 8)                                   # sometimes twice before a read
            if rng.random() < 0.7:
                got += read(rng.choice([7, 100, 4 << 20]))
        elif r < 0.7:
            t = restart(t, tmp_path)
        else:
            got += read(rng.choice([5, 64, 4 << 20]))
    append(p, bytes(stream))
    for _ in range(5):
        got += read()
    assert got == written


def test_restart_when_saved_file_rotated_away(tmp_path: Path) -> None:
    """Agent down while the saved file went PATH -> .1 -> .2: resume there, then .1, PATH."""
    p = tmp_path / "log"
    append(p, b"a\nb\n")
    t = Tailer(p)
    assert datas(t.read(2)) == [b"a"]
    store = OffsetStore(tmp_path / "off.json")
    assert t.position is not None
    store.save({"log": t.position}, payload={"events": 1})
    t.close()
    rotate(p, 3)
    append(p, b"c\n")
    rotate(p, 3)
    append(p, b"d\n")
    positions, payload = store.load_all()
    assert payload == {"events": 1}
    t2 = Tailer(p, FilePosition.from_dict(positions["log"]))
    assert datas(t2.read()) == [b"b", b"c", b"d"]


def test_offset_store_corrupt_or_missing_loads_empty_with_one_warning(tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "off.json"
    assert OffsetStore(f).load() == {}
    for bad in (b"{not json", b"[]", b'{"positions": {"a": {"dev": "x"}}}', b"\xff\x00"):
        f.write_bytes(bad)
        assert OffsetStore(f).load_all() == ({}, {})
    err = capfd.readouterr().err
    assert err.count("\n") == 5 and "offsets_missing" in err and err.count("offsets_unreadable") == 4


def test_offset_store_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "off.json"
    s = OffsetStore(f)
    pos = FilePosition(1, 2, 3, 4, "abcd", 5, True)
    s.save({"rank-0.log": pos}, payload={"seen": [1, 2]})
    assert FilePosition.from_dict(s.load()["rank-0.log"]) == pos
    assert json.loads(f.read_text())["payload"] == {"seen": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["off.json"]     # no temp left behind
    with pytest.raises(ValueError):
        FilePosition.from_dict({"dev": 1, "inode": 2, "offset": -1})


def test_fifo_and_directory_are_not_read(tmp_path: Path) -> None:
    p = tmp_path / "log"
    os.mkfifo(p)                                           # opening must not block
    assert Tailer(p).read() == []


def test_directory_tailer_caps_files_and_warns_once(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").write_bytes(b"hello\n")
    for i in range(10_000):                     # hard links: 10x faster to make than files
        os.link(tmp_path / "src", tmp_path / f"rank-{i}.log")
    (tmp_path / "rank-0.log.1").write_bytes(b"backup, not a log of its own\n")
    d = DirectoryTailer(tmp_path, max_files=64, rescan_s=0)
    out = d.read()
    assert sorted(out, key=lambda n: int(n[5:-4])) == [f"rank-{i}.log" for i in range(64)]
    assert datas(out["rank-10.log"]) == [b"hello"]
    assert datas(out["rank-0.log"]) == [b"backup, not a log of its own", b"hello"]
    assert d.read() == {} and d.read() == {}
    err = capfd.readouterr().err
    assert err.count("log_files_skipped") == 1 and "skipped=9936" in err


def test_directory_tailer_positions_survive_restart(tmp_path: Path) -> None:
    for i in range(3):
        append(tmp_path / f"rank-{i}.log", b"a\nb\n")
    d = DirectoryTailer(tmp_path)
    assert {k: datas(v) for k, v in d.read().items()} == {f"rank-{i}.log": [b"a", b"b"] for i in range(3)}
    store = OffsetStore(tmp_path / "offsets.json")
    store.save(d.positions())
    d.close()
    append(tmp_path / "rank-1.log", b"c\n")
    d2 = DirectoryTailer(tmp_path, positions=store.load())
    assert {k: datas(v) for k, v in d2.read().items()} == {"rank-1.log": [b"c"]}


# -- read_blocks: runs of lines as one bytes object -------------------------------------------

def test_read_blocks_is_one_object_per_run_of_file_bytes(tmp_path: Path) -> None:
    p = tmp_path / "rank-0.log"
    lines = [b"step %d loss 1.234" % i for i in range(20_000)]
    append(p, b"".join(ln + b"\n" for ln in lines) + b"partial st")
    t = Tailer(p)
    blocks = t.read_blocks()
    assert len(blocks) == 1 and blocks[0].offset == 0 and blocks[0].lines == 20_000
    assert blocks[0].data == p.read_bytes()[:-len(b"partial st")]
    assert file_of(blocks[0].file_id, tmp_path) == p
    at = len(blocks[0].data)
    append(p, b"ep\nnext\n")
    blocks = t.read_blocks()                               # the pending line and the run: one block
    assert [(b.offset, b.data, b.lines) for b in blocks] == [(at, b"partial step\nnext\n", 2)]
    assert t.read_blocks() == [] and t.position is not None and t.position.offset == p.stat().st_size


def test_read_blocks_across_rotation_and_split_line(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"a1\na2\n")
    t = Tailer(p)
    assert block_lines(t.read_blocks()) == [b"a1", b"a2"]
    append(p, b"a3\nhalf ")                                 # the tee cut a line at rotation
    rotate(p, 3)
    append(p, b"of it\nb1\nb2\n")
    rotate(p, 3)
    append(p, b"c1\nc2")
    blocks = t.read_blocks()
    assert block_lines(blocks) == [b"a3", b"half of it", b"b1", b"b2", b"c1"]
    a, joined, b, c = blocks                                # one block per file, the joined line alone
    assert (a.offset, a.data, joined.offset, joined.data, joined.lines) == (6, b"a3\n", 9, b"half of it\n", 1)
    assert a.file_id == joined.file_id != b.file_id != c.file_id
    for blk in (a, b, c):                                   # a multi-line block is the file's bytes
        f = file_of(blk.file_id, tmp_path)
        assert f.read_bytes()[blk.offset:blk.offset + len(blk.data)] == blk.data
    assert (b.offset, c.offset) == (6, 0)
    append(p, b"\n")
    assert [(x.offset, x.data) for x in t.read_blocks()] == [(3, b"c2\n")]


def test_read_blocks_after_truncation_and_restart(tmp_path: Path) -> None:
    p = tmp_path / "log"
    append(p, b"aaaa\nbbbb\ncccc\n")
    t = Tailer(p)
    assert [(b.offset, b.data) for b in t.read_blocks(7)] == [(0, b"aaaa\n")]
    t = restart(t, tmp_path)                               # from the persisted position
    assert [(b.offset, b.data) for b in t.read_blocks()] == [(5, b"bbbb\ncccc\n")]
    with open(p, "wb") as f:                               # truncated, rewritten past our offset
        f.write(b"new 1\nnew 2\nnew 3\n")
    assert [(b.offset, b.lines) for b in t.read_blocks()] == [(0, 3)]
    os.truncate(p, 0)
    append(p, b"x\ny")
    t = restart(t, tmp_path)
    assert block_lines(t.read_blocks()) == [b"x"]
    append(p, b"z\n")
    t = restart(t, tmp_path)                               # the pending "y" was re-read, once
    assert [(b.offset, b.data) for b in t.read_blocks()] == [(2, b"yz\n")]


def test_read_blocks_cuts_over_long_lines(tmp_path: Path) -> None:
    p = tmp_path / "log"
    t = Tailer(p, max_line=10)
    append(p, b"short\n" + b"L" * 25 + b"\n0123456789\nafter\n" + b"M" * 11 + b"\nend\n" + b"N" * 12)
    blocks = t.read_blocks()
    assert [(b.offset, b.data, b.lines, b.truncated_lines) for b in blocks] == [
        (0, b"short\n", 1, 0), (6, b"L" * 10 + b"\n", 1, 1), (32, b"0123456789\nafter\n", 2, 0),
        (49, b"M" * 10 + b"\n", 1, 1), (61, b"end\n", 1, 0), (65, b"N" * 10 + b"\n", 1, 1)]
    t = restart(t, tmp_path)                               # still skipping the N line
    append(p, b"N" * 100 + b"\nok\n")
    assert [(b.offset, b.data, b.truncated_lines) for b in t.read_blocks()] == [(178, b"ok\n", 0)]
    big = b"".join(b"line %05d\n" % i for i in range(5000))
    append(p, big + b"Q" * 50 + b"\n" + big)              # windows of max_line + 1 find the cut
    blocks = t.read_blocks()
    assert [(b.lines, b.truncated_lines) for b in blocks] == [(5000, 0), (1, 1), (5000, 0)]
    assert blocks[0].data == big == blocks[2].data and blocks[1].data == b"Q" * 10 + b"\n"


def test_directory_tailer_read_blocks(tmp_path: Path) -> None:
    for i in range(3):
        append(tmp_path / f"rank-{i}.log", b"a\nb\n" * (i + 1))
    d = DirectoryTailer(tmp_path)
    out = d.read_blocks()
    assert {k: [(b.offset, b.lines) for b in v] for k, v in out.items()} == {
        "rank-0.log": [(0, 2)], "rank-1.log": [(0, 4)], "rank-2.log": [(0, 6)]}
    assert d.bytes_read == 24 and d.read_blocks() == {}
    rotate(tmp_path / "rank-1.log", 2)
    append(tmp_path / "rank-1.log", b"c\n")
    assert {k: block_lines(v) for k, v in d.read_blocks().items()} == {"rank-1.log": [b"c"]}
