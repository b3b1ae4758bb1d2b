"""The optional C prefilter gives exactly the pure-Python answer."""
from __future__ import annotations

import random

import pytest

from watchdog_d.logs import fingerprints as fp

CAT = fp.Catalogue.load()


@pytest.mark.skipif(fp._fastscan is None, reason="the C prefilter was not built here")
def test_c_prefilter_equals_python_on_random_blocks() -> None:
    trig = CAT._trigger_bytes
    for seed in range(500):
        r = random.Random(seed)
        parts = []
        for _ in range(r.randint(0, 60)):
            x = r.random()
            if x < 0.1:
                parts.append(r.choice(trig))
            elif x < 0.15:
                parts.append(r.choice(trig)[:-1])        # almost a trigger
            elif x < 0.3:
                parts.append(b"\n")
            else:
                parts.append(bytes(r.randrange(256) for _ in range(r.randint(0, 20))))
        data = b"".join(parts)
        assert fp._fastscan.first_hits(data, trig) == (CAT._first_hits(data), data.count(b"\n")), seed


@pytest.mark.skipif(fp._fastscan is None, reason="the C prefilter was not built here")
def test_c_prefilter_equals_python_for_any_literals() -> None:
    """Overlapping literals of 1..9 bytes (both paths; only the pair table for a third) over a tiny alphabet: many near-misses, hits
    at block edges, several per line, a line longer than any window."""
    for seed in range(1500):
        r = random.Random(seed)
        abc = b"ab \nE:" if seed % 2 else b"ab"
        lits = tuple(dict.fromkeys(bytes(r.choice(b"abE:") for _ in range(r.randint(1 if seed % 3 else 4, 9)))
                                   for _ in range(r.randint(1, 12))))
        data = bytes(r.choice(abc) for _ in range(r.randint(0, 400)))
        cat = fp.Catalogue([], tuple(x.decode() for x in lits))
        want = (cat._first_hits(data), data.count(b"\n"))
        assert fp._fastscan.first_hits(data, cat._trigger_bytes) == want, (seed, lits, data)


@pytest.mark.skipif(fp._fastscan is None, reason="the C prefilter was not built here")
def test_c_prefilter_counts_every_newline() -> None:
    for data in (b"\n" * 100_003, b"x\n" * 30_001, b"\n\n\nabc" * 9_999, b"no newline", b""):
        assert fp._fastscan.first_hits(data, (b"zzz",))[1] == data.count(b"\n")


@pytest.mark.skipif(fp._fastscan is None, reason="the C prefilter was not built here")
def test_c_prefilter_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        fp._fastscan.first_hits(b"x", (b"",))
    with pytest.raises(TypeError):
        fp._fastscan.first_hits(b"x", (b"a\nb",))
    with pytest.raises(ValueError):
        fp._fastscan.first_hits(b"x", tuple(b"a%d" % i for i in range(65)))


def test_scan_is_the_same_without_the_c_prefilter(monkeypatch) -> None:
    block = (b"step 1 loss 0.5 error_rate=0.1\n"
             b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.30 GiB.\n"
             b"NCCL INFO Connected all rings\n"
             b"[rank0]: RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
             b"[127.0.0.1]:11419.\n") * 50
    found, lines = CAT.scan_counted(block)
    with_c = [(f.kind, f.line_no, f.offset) for f in found]
    monkeypatch.setattr(fp, "_fastscan", None)
    found, lines_without = CAT.scan_counted(block)
    without = [(f.kind, f.line_no, f.offset) for f in found]
    assert with_c == without and len(without) == 100 and lines == lines_without == 200


def test_the_shipped_catalogue_stays_within_the_c_prefilter() -> None:
    # past 64 trigger literals (or one over 255 bytes) the scan quietly falls back to the
    # pure-Python loop, ~8x slower: a catalogue that grows must merge triggers instead
    assert CAT._use_c, f"{len(CAT._plan)} trigger literals: the C prefilter takes 64 at most"
