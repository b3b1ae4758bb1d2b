"""The agent's CPU cost of tailing rank logs: AttemptLogs.poll() over ranks writing at a rate.

    python integration/bench_tail.py [--ranks 8] [--mb-per-s 1.0] [--seconds 10]
                                     [--line-bytes 100 200] [--runs 3] [--lines-reader]

Starts ``ranks`` writer subprocesses, each appending training-like lines of
``line_bytes`` bytes (an error line the catalogue names every ~2 s) to
``rank-R.log`` in a temp dir at ``mb_per_s``, in bursts every 20 ms like a rank
printing a step's lines, rotating by rename (PATH -> PATH.1 ..., as the tee does)
every ~20 MB; the writers start at staggered points of that cycle, so some rotate
during the run. In this process an ``AttemptLogs`` polls the directory every
0.25 s (the agent's log poll interval). Reported: this process's CPU time
(``time.process_time``) spent in ``poll()`` as a percent of one core over the
wall time, and bytes / lines read vs. written (must be equal) and findings vs.
error lines written. The table quotes the median run (by CPU) of ``--runs``, and
splits its CPU into Catalogue.scan ("scan %") and the rest of poll() ("tail %":
reading, line counting, tails, saving offsets).

``--lines-reader`` adds the old way for comparison: a poll that reads one
``Line`` object per line (``DirectoryTailer.read``) and joins them into a block.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watchdog_d.agent import ranklogs  # noqa: E402
from watchdog_d.logs.fingerprints import Catalogue  # noqa: E402
from watchdog_d.agent.ranklogs import POLL_S, AttemptLogs, RankLog  # noqa: E402


BURST_S = 0.02           # a rank writes a step's worth of lines at a time
ROTATE_BYTES = 20 << 20
BACKUPS = 3
ERROR_EVERY_S = 2.0
ERRORS = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.30 GiB. GPU 0 has a total "
    "capacity of 79.14 GiB of which 1.02 GiB is free.",
    "node1:123:456 [2] NCCL WARN Error: failed to extend /dev/shm/nccl-8XQ2ab to 9637892 bytes",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "[1234567.890123] NVRM: Xid (PCI:0000:3b:00): 79, pid=48723, name=python, GPU has fallen off the bus.",
]


# -- the writers (subprocesses) ---------------------------------------------------------------

def _normal_lines(rng: random.Random, rank: int, n: int, line_bytes: int) -> list[bytes]:
    """Training output, each line exactly line_bytes long with its newline."""
    makers = [
        lambda s: f"[rank{rank}]:2024-06-01 12:{s // 60 % 60:02d}:{s % 60:02d} INFO train.py:210 step={s} "
                  f"loss={rng.uniform(1.5, 3.5):.4f} lr={rng.uniform(1e-5, 3e-4):.3e} grad_norm="
                  f"{rng.uniform(0.1, 4):.3f} tokens/s={rng.randint(80000, 200000)} mem={rng.uniform(40, 78):.1f}GiB",
        lambda s: f"{{'loss': {rng.uniform(0.5, 3):.4f}, 'grad_norm': {rng.uniform(0.1, 3):.4f}, "
                  f"'learning_rate': {rng.uniform(1e-6, 2e-5):.2e}, 'epoch': {rng.uniform(0, 3):.2f}}}",
        lambda s: f"gpu-node{rank:02d}:{rng.randint(1000, 99999)}:{rng.randint(1000, 99999)} [{rank % 8}] NCCL INFO "
                  f"Channel {rng.randint(0, 31):02d}/0 : {rank}[{rank % 8}] -> {rng.randint(0, 63)}[0] via P2P/CUMEM",
        lambda s: f"throughput: {rng.uniform(300, 700):.1f} samples/s, {rng.uniform(0.8, 1.6):.2f}M tokens/s, "
                  f"step time {rng.uniform(0.5, 1.5):.2f}s, data time {rng.uniform(0, 0.05):.3f}s",
        lambda s: f"data: shard {rng.randint(0, 4095):05d}/04096 loaded {rng.randint(1000, 9000)} samples from "
                  f"s3://datasets/pile/train-{rng.randint(0, 4095):05d}.jsonl.zst in {rng.uniform(0.1, 2):.2f}s",
    ]
    out = []
    for s in range(n):
        text = rng.choice(makers)(s)
        while len(text) < line_bytes - 1:     # more fields, as a busy logger prints them
            text += " | " + rng.choice(makers)(s)
        out.append(text.encode()[:line_bytes - 1] + b"\n")
    return out


def _rotate(path: str) -> None:
    for i in range(BACKUPS - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def writer(path: str, rank: int, rate: float, seconds: float, line_bytes: int, phase: int) -> None:
    """Append lines to path at rate bytes/s for seconds; print what was written as JSON."""
    rng = random.Random(rank)
    pool = _normal_lines(rng, rank, 4096, line_bytes)
    errors = [(e + " " * max(0, line_bytes - 1 - len(e))).encode() + b"\n" for e in ERRORS]
    per_burst = max(1, round(rate * BURST_S / line_bytes))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    size, written, lines, n_err, rotations, i = phase, 0, 0, 0, 0, 0
    start = time.monotonic()
    next_error = start + rng.uniform(0, ERROR_EVERY_S)
    while (now := time.monotonic()) - start < seconds:
        due = int(rate * (now - start)) - written
        if due < per_burst * line_bytes:
            time.sleep(BURST_S)
            continue
        burst = [pool[(i + k) % len(pool)] for k in range(per_burst)]
        i += per_burst
        if now >= next_error:
            burst[rng.randrange(len(burst))] = errors[n_err % len(errors)]
            n_err, next_error = n_err + 1, next_error + ERROR_EVERY_S
        data = b"".join(burst)
        if size + len(data) > ROTATE_BYTES:          # like the tee: at a line boundary
            os.close(fd)
            _rotate(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size, rotations = 0, rotations + 1
        os.write(fd, data)
        size, written, lines = size + len(data), written + len(data), lines + len(burst)
    os.close(fd)
    print(json.dumps({"bytes": written, "lines": lines, "errors": n_err, "rotations": rotations}))


# -- the agent side (this process) -----------------------------------------------------------

class CountingCatalogue:
    """The catalogue, counting every finding (AttemptLogs keeps only a few per rank) and
    the CPU time spent in it."""

    def __init__(self, cat: Catalogue) -> None:
        self.cat, self.found, self.cpu, self.calls = cat, 0, 0.0, 0

    def scan_counted(self, data: bytes, base_offset: int = 0, first_line_no: int = 1) -> tuple[list, int]:
        c = time.process_time()
        got, lines = self.cat.scan_counted(data, base_offset, first_line_no)
        self.cpu += time.process_time() - c
        self.found, self.calls = self.found + len(got), self.calls + 1
        return got, lines

    def scan(self, data: bytes, base_offset: int = 0, first_line_no: int = 1) -> list:
        return self.scan_counted(data, base_offset, first_line_no)[0]


class LinesAttemptLogs(AttemptLogs):
    """The poll as it was: one Line object per line, joined back into one block."""

    def poll(self) -> None:
        now = self.clock()
        for name, lines in self.tailer.read(ranklogs.READ_PER_POLL).items():
            m = ranklogs._RANK_FILE.match(name)
            if not m or not lines:
                continue
            rl = self.ranks.setdefault(int(m.group(1)), RankLog())
            block = b"\n".join(ln.data for ln in lines) + b"\n"
            for f in self.catalogue.scan(block, lines[0].offset, rl.lines + 1):
                rl.add(now, f)
            rl.lines += len(lines)
            last = lines[-1]
            rl.offset = last.offset + len(last.data) + 1
            rl.tail.extend(ln.data[:1000].decode("utf-8", "replace") for ln in lines[-ranklogs.TAIL_LINES:])
            self._dirty = True
        if self._dirty and now - self._saved_at >= ranklogs.SAVE_EVERY_S:
            self.save()


def tail_cost(ranks: int = 8, mb_per_s: float = 1.0, seconds: float = 10, line_bytes: int = 100,
              reader: str = "blocks") -> dict:
    """One run; returns cpu_pct (of one core, in poll()), bytes/lines written and read, findings."""
    tmp = tempfile.mkdtemp(prefix="bench_tail.")
    log_dir = os.path.join(tmp, "logs")
    os.mkdir(log_dir)
    procs = []
    try:
        for r in range(ranks):
            phase = int(ROTATE_BYTES * (r + 0.5) / ranks)    # staggered: some rotate within the run
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--writer", os.path.join(log_dir, f"rank-{r}.log"), str(r),
                 str(mb_per_s * 1e6), str(seconds), str(line_bytes), str(phase)], stdout=subprocess.PIPE))
        cat = CountingCatalogue(Catalogue.load())
        cls = AttemptLogs if reader == "blocks" else LinesAttemptLogs
        logs = cls(log_dir, os.path.join(tmp, "state", "offsets.json"), cat)  # type: ignore[arg-type]
        cpu, polls = 0.0, 0
        t0 = time.monotonic()
        deadline = t0
        while any(p.poll() is None for p in procs) or polls < 2:
            c = time.process_time()
            logs.poll()
            cpu += time.process_time() - c
            polls += 1
            deadline += POLL_S
            time.sleep(max(0.0, deadline - time.monotonic()))
        for _ in range(3):                    # the writers are done: what is left, then nothing
            c = time.process_time()
            logs.poll()
            cpu += time.process_time() - c
        wall = time.monotonic() - t0
        done = [json.loads(p.communicate()[0]) for p in procs]
        lines_read = sum(rl.lines for rl in logs.ranks.values())
        res = {"reader": reader, "ranks": ranks, "mb_per_s": mb_per_s, "line_bytes": line_bytes,
               "wall_s": wall, "cpu_s": cpu, "cpu_pct": 100 * cpu / wall, "polls": polls,
               "scan_pct": 100 * cat.cpu / wall, "tail_pct": 100 * (cpu - cat.cpu) / wall, "scans": cat.calls,
               "bytes_written": sum(d["bytes"] for d in done), "bytes_read": logs.tailer.bytes_read,
               "lines_written": sum(d["lines"] for d in done), "lines_read": lines_read,
               "errors_written": sum(d["errors"] for d in done), "findings": cat.found,
               "rotations": sum(d["rotations"] for d in done)}
        logs.close()
        return res
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        path, rank, rate, seconds, line_bytes, phase = sys.argv[2:8]
        writer(path, int(rank), float(rate), float(seconds), int(line_bytes), int(phase))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--mb-per-s", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--line-bytes", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lines-reader", action="store_true", help="also the old one-Line-per-line poll")
    a = ap.parse_args()
    readers = ["blocks", "lines"] if a.lines_reader else ["blocks"]
    print(f"{a.ranks} ranks x {a.mb_per_s} MB/s, {a.seconds:g} s, poll every {POLL_S} s; "
          f"median of {a.runs} runs (by CPU)")
    print(f"{'reader':<7} {'line B':>6} {'CPU %':>6} {'runs CPU %':<17} {'scan %':>6} {'tail %':>6} "
          f"{'MB written':>10} {'MB read':>8} "
          f"{'lines written':>13} {'lines read':>10} {'errors':>6} {'findings':>8} {'rotations':>9}")
    ok = True
    for lb in a.line_bytes:
        for reader in readers:
            runs = sorted((tail_cost(a.ranks, a.mb_per_s, a.seconds, lb, reader) for _ in range(a.runs)),
                          key=lambda r: r["cpu_pct"])
            m = runs[len(runs) // 2]
            ok &= all(r["bytes_read"] == r["bytes_written"] and r["lines_read"] == r["lines_written"]
                      and r["findings"] == r["errors_written"] for r in runs)
            each = " ".join(f"{r['cpu_pct']:.2f}" for r in runs)
            print(f"{reader:<7} {lb:>6} {m['cpu_pct']:>6.2f} {each:<17} {m['scan_pct']:>6.2f} {m['tail_pct']:>6.2f} "
                  f"{m['bytes_written'] / 1e6:>10.2f} {m['bytes_read'] / 1e6:>8.2f} {m['lines_written']:>13} "
                  f"{m['lines_read']:>10} {m['errors_written']:>6} {m['findings']:>8} {m['rotations']:>9}")
    print("read == written in every run" if ok else "MISMATCH: read != written in some run")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
