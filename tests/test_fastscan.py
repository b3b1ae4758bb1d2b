"""The optional C prefilter gives exactly the pure-Python answer."""
from __future__ import annotations

import random

import pytest

from watchdog_d import fingerprints as fp

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
        assert fp._fastscan.first_hits(data, trig) == CAT._first_hits(data), seed


@pytest.mark.skipif(fp._fastscan is None, reason="the C prefilter was not built here")
def test_c_prefilter_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        fp._fastscan.first_hits(b"x", (b"",))
    with pytest.raises(ValueError):
        fp._fastscan.first_hits(b"x", tuple(b"a%d" % i for i in range(65)))


def test_scan_is_the_same_without_the_c_prefilter(monkeypatch) -> None:
    block = (b"step 1 loss 0.5 error_rate=0.1\n"
             b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.30 GiB.\n"
             b"NCCL INFO Connected all rings\n"
             b"[rank0]: RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
             b"[127.0.0.1]:11419.\n") * 50
    with_c = [(f.kind, f.line_no, f.offset) for f in CAT.scan(block)]
    monkeypatch.setattr(fp, "_fastscan", None)
    without = [(f.kind, f.line_no, f.offset) for f in CAT.scan(block)]
    assert with_c == without and len(without) == 100
