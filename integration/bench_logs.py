"""Log-scanning cost: the fingerprint catalogue next to grep, on a realistic log.

    python integration/bench_logs.py [--mb 1024] [--runs 3] [--block-mb 4] [--keep]

Generates (deterministic seed, in a temp dir) a log of --mb MB that looks like a
multi-rank training job's output: step/loss/lr/throughput lines, HF Trainer
dicts, tqdm progress with carriage returns, NCCL INFO chatter, warnings, config
dumps with words like ``timeout=600`` and ``error_rate=0.1``; a few hundred real
failure lines (the catalogue's own examples) are sprinkled in.

Then, pinned to one CPU, it times (median of --runs):
- ``Catalogue.scan_counted`` over the file in --block-mb blocks cut at line
  boundaries, offsets and line numbers carried across blocks like the agent's
  tailer does (the call also counts the block's newlines for the next
  first_line_no): reported as the time spent inside it, and end to end (read +
  scan);
- ``grep -c -E`` with every entry's patterns converted to POSIX ERE, C locale.
  The conversion is approximate: look-arounds are dropped (so a pattern that
  needs one, like shm's "No space left on device" *and* /dev/shm, over-matches),
  lazy quantifiers become greedy, ``(?i:...)`` becomes case-sensitive,
  ``\\d \\s \\w`` become classes, bounded repeats wider than {0,16} become * or +
  (they make grep's DFA explode). A pattern grep rejects is replaced by the
  entry's escaped keywords.

The table prints tool, MB, seconds, MB/s and findings (scan) / matching lines
(grep), the speed ratio, and whether every injected failure line was found.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watchdog_d.logs.fingerprints import Catalogue  # noqa: E402

SEED = 20240601
FAILURES = 300


# -- the log -----------------------------------------------------------------

def _normal_line_pool(rng: random.Random, n: int) -> list[str]:
    """Varied normal lines; a weighted mix of what training jobs print."""
    r, u = rng.randint, rng.uniform
    nccl_info = [
        lambda: f"NCCL INFO Channel {r(0, 31):02d}/0 : {r(0, 63)}[{r(0, 7)}] -> {r(0, 63)}[{r(0, 7)}] "
                "via P2P/CUMEM/read",
        lambda: "NCCL INFO Connected all rings",
        lambda: "NCCL INFO Connected all trees",
        lambda: f"NCCL INFO comm 0x{rng.getrandbits(40):x} rank {r(0, 63)} nranks 64 cudaDev {r(0, 7)} "
                f"busId {r(0, 255):x}000 - Init COMPLETE",
        lambda: "NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB eth0:10.0.0.1<0>",
        lambda: "NCCL INFO [Service thread] Connection closed by localRank 3",
        lambda: "NCCL INFO transport/net.cc:1302 -> 6 (timeout=600 retries=7)",
    ]
    warnings = [
        "/usr/local/lib/python3.11/site-packages/torch/utils/checkpoint.py:464: UserWarning: "
        "torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly.",
        "  warnings.warn(",
        "/usr/local/lib/python3.11/site-packages/torch/_dynamo/eval_frame.py:600: FutureWarning: "
        "`torch.cuda.amp.autocast(args...)` is deprecated. Please use `torch.amp.autocast('cuda', "
        "args...)` instead.",
        "[rank0]:[W reducer.cpp:1389] Warning: find_unused_parameters=True was specified in DDP "
        "constructor, but did not find any unused parameters in the forward pass.",
        "DeprecationWarning: The 'warn' method is deprecated, use 'warning' instead",
    ]

    def step(s: int) -> str:
        return (f"[rank{r(0, 63)}]:2024-06-01 12:{r(0, 59):02d}:{r(0, 59):02d},{r(0, 999):03d} INFO "
                f"train.py:210 step={s} loss={u(1.5, 3.5):.4f} lr={u(1e-5, 3e-4):.3e} "
                f"grad_norm={u(0.1, 4):.3f} tokens/s={r(80000, 200000)} mfu={u(30, 55):.1f}% "
                f"mem={u(40, 78):.1f}GiB")

    def tqdm(s: int) -> str:  # several \r-separated screens on one line
        return "\r".join(f"Epoch {s % 7}: {p:3d}%|{'█' * (p // 10):<10}| {s + p}/500150 "
                         f"[6:28:43<94:39:17,  {u(1, 2):.2f}it/s, loss={u(1, 3):.3g}, v_num=95nc]"
                         for p in sorted(rng.sample(range(100), 3)))

    makers = [
        (40, step),
        (15, lambda s: f"{{'loss': {u(0.5, 3):.4f}, 'grad_norm': {u(0.1, 3):.4f}, "
                       f"'learning_rate': {u(1e-6, 2e-5):.2e}, 'epoch': {u(0, 3):.2f}}}"),
        (12, tqdm),
        (4, lambda s: f"gpu-node{r(0, 63):02d}:{r(1000, 99999)}:{r(1000, 99999)} [{r(0, 7)}] "
                      + rng.choice(nccl_info)()),
        (2, lambda s: f"eval step={s} val_loss={u(1, 3):.3f} ppl={u(3, 20):.2f} "
                      f"error_rate={u(0, 0.2):.3f} accuracy={u(0.7, 0.95):.3f} (0 errors, no errors found)"),
        (5, lambda s: f"throughput: {u(300, 700):.1f} samples/s, {u(0.8, 1.6):.2f}M tokens/s, "
                      f"step time {u(0.5, 1.5):.2f}s, data time {u(0, 0.05):.3f}s, comm time {u(0.05, 0.3):.3f}s"),
        (4, lambda s: rng.choice(warnings)),
        (1, lambda s: f"Saving checkpoint to /ckpt/run-7/step_{s} (model.safetensors, optimizer.pt) "
                      f"took {u(5, 40):.1f}s; keeping the last 3"),
        (1, lambda s: f"config: {{'timeout': 600, 'batch_size': {rng.choice([8, 16, 32])}, 'seq_len': 4096, "
                      "'dataloader_num_workers': 8, 'nccl_timeout_s': 1800, 'on_error': 'raise', "
                      "'ExceptionGroup': false, 'max_restarts': 3}"),
        (1, lambda s: f"W0601 12:00:{r(0, 59):02d}.{r(0, 999999):06d} {r(1000, 99999)} "
                      "torch/distributed/run.py:793] Setting OMP_NUM_THREADS environment variable for "
                      "each process to be 1 in default, to avoid your system being overloaded"),
        (6, lambda s: f"data: shard {r(0, 4095):05d}/04096 loaded {r(1000, 9000)} samples from "
                      f"s3://datasets/pile/train-{r(0, 4095):05d}.jsonl.zst in {u(0.1, 2):.2f}s "
                      "(workers=8, prefetch=2)"),
    ]
    weights = [w for w, _ in makers]
    funcs = [f for _, f in makers]
    return [rng.choices(funcs, weights)[0](i) for i in range(n)]


def failure_lines(cat: Catalogue) -> list[str]:
    return [ex for e in cat.entries for ex in e.examples]


def generate(path: Path, mb: int, cat: Catalogue, seed: int = SEED) -> int:
    """Write about mb MB of whole lines to path; returns the failure lines injected."""
    rng = random.Random(seed)
    pool = _normal_line_pool(rng, 50_000)
    fails = failure_lines(cat)
    target = mb * 1_000_000
    chunk_lines = 20_000
    avg = sum(len(x.encode()) + 1 for x in pool) / len(pool)
    per_chunk = FAILURES * chunk_lines * avg / target  # failure lines per chunk, fractional
    due, injected, written = 0.0, 0, 0
    with open(path, "wb") as f:
        while written < target:
            lines = rng.choices(pool, k=chunk_lines)
            due += per_chunk
            for pos in sorted(rng.sample(range(chunk_lines), min(int(due), chunk_lines))):
                lines[pos] = fails[injected % len(fails)]
                injected += 1
            due -= int(due)
            data = ("\n".join(lines) + "\n").encode()
            f.write(data)
            written += len(data)
    return injected


# -- the catalogue ------------------------------------------------------------

def scan_file(cat: Catalogue, path: Path, block: int) -> tuple[int, float]:
    """Stream the file through Catalogue.scan_counted like the agent would: blocks cut at
    line boundaries, byte offsets and line numbers carried across blocks.
    Returns (findings, seconds spent inside scan)."""
    findings, in_scan = 0, 0.0
    offset, line_no, carry = 0, 1, b""
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(block)
            data = carry + chunk if carry else chunk
            if not data:
                return findings, in_scan
            # at EOF the last line may lack its newline: scan it anyway
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            whole, carry = data[:cut], data[cut:]
            if whole:
                t0 = time.perf_counter()
                found, lines = cat.scan_counted(whole, offset, line_no)
                in_scan += time.perf_counter() - t0
                findings += len(found)
                offset += len(whole)
                line_no += lines


# -- grep ---------------------------------------------------------------------

_IN = {"d": "0-9", "s": "[:space:]", "w": "[:alnum:]_"}   # \d \s \w inside brackets
_NEG = {"D": "d", "S": "s", "W": "w"}
_ERE_SPECIAL = set(".[]()*+?{}|^$\\")


def _bracket(p: str, i: int) -> tuple[str, int]:
    """Convert the Python character class at p[i] == '['; returns (ERE, next index)."""
    i += 1
    neg = p.startswith("^", i)
    i += neg
    body, close_first, dash_last = [], False, False
    while i < len(p):
        c = p[i]
        if c == "]" and (body or close_first or dash_last):
            break
        if c == "\\":
            nxt = p[i + 1]
            if nxt in _IN:
                body.append(_IN[nxt])
            elif nxt == "]":
                close_first = True   # POSIX: a literal ']' goes first
            elif nxt == "-":
                dash_last = True     # POSIX: a literal '-' goes last
            else:
                body.append(nxt)     # no escapes inside POSIX brackets
            i += 2
            continue
        body.append(c)
        i += 1
    else:
        raise ValueError("unterminated character class")
    return ("[" + "^" * neg + "]" * close_first + "".join(body) + "-" * dash_last + "]", i + 1)


def _skip_group(p: str, i: int) -> int:
    """Index just after the group that opens at p[i] == '('."""
    depth = 0
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _bracket(p, i)[1]
            continue
        depth += c == "("
        depth -= c == ")"
        i += 1
        if depth == 0:
            return i
    raise ValueError("unbalanced group")


def to_ere(p: str) -> str:
    """A Python regex as POSIX ERE (GNU grep), approximately; see the module doc."""
    out, i = [], 0
    while i < len(p):
        c = p[i]
        if c == "\\":
            nxt = p[i + 1]
            if nxt in _IN:
                out.append(f"[{_IN[nxt]}]")
            elif nxt in _NEG:
                out.append(f"[^{_IN[_NEG[nxt]]}]")
            elif nxt == "b":
                out.append(r"\b")
            elif nxt in _ERE_SPECIAL:
                out.append("\\" + nxt)
            else:
                out.append(nxt)  # a stray escape ("\'", "\-") is a warning in grep 3.8
            i += 2
        elif c == "[":
            cls, i = _bracket(p, i)
            out.append(cls)
        elif p.startswith("(?", i):
            if p[i + 2] in "=!" or p.startswith(("(?<=", "(?<!"), i):
                i = _skip_group(p, i)  # look-around: dropped
                if i < len(p) and p[i] == "?":
                    i += 1
            elif p.startswith("(?P<", i):
                out.append("(")
                i = p.index(">", i) + 1
            elif p.startswith("(?:", i):
                out.append("(")
                i += 3
            else:  # "(?i:" and other flags: dropped
                out.append("(")
                i = p.index(":", i) + 1
        elif c in "*+?}" and p.startswith("?", i + 1):
            out.append(c)  # lazy -> greedy
            i += 2
        else:
            out.append(c)
            i += 1
    ere = "".join(out)
    # a group emptied by a dropped look-around goes, with its quantifier
    ere = re.sub(r"(?<!\\)\(\)[?*]?", "", ere)
    # large bounded repeats ({1,300}) blow up grep's DFA: loosen them
    return re.sub(r"\{(\d+),(\d+)\}",
                  lambda m: m.group(0) if int(m.group(2)) <= 16 else ("*" if m.group(1) == "0" else "+"),
                  ere)


def grep_patterns(cat: Catalogue) -> tuple[list[str], int]:
    """ERE patterns for grep, and how many entries fell back to keywords."""
    pats, fallbacks = [], 0
    for e in cat.entries:
        try:
            conv = [to_ere(p.pattern) for p in e.patterns]
            for c in conv:  # grep exits 2 on a pattern it cannot compile
                r = subprocess.run(["grep", "-E", "-e", c], input=b"", capture_output=True,
                                   env={"LC_ALL": "C"})
                if r.returncode == 2:
                    raise ValueError(r.stderr.decode())
        except (ValueError, IndexError):
            fallbacks += 1
            conv = [re.sub(r"([.\[\]()*+?{}|^$\\])", r"\\\1", k) for k in e.keywords]
        pats.extend(conv)
    return pats, fallbacks


def grep_file(pats: list[str], path: Path) -> int:
    args = ["grep", "-c", "-E"]
    for p in pats:
        args += ["-e", p]
    r = subprocess.run(args + [str(path)], capture_output=True, env={"LC_ALL": "C"})
    if r.returncode not in (0, 1):
        raise RuntimeError(r.stderr.decode())
    return int(r.stdout)


# -- tail ---------------------------------------------------------------------

def tail_cost(runs: int = 3, line_bytes: int = 100) -> dict:
    """Agent CPU for tailing 8 ranks each writing 1 MB/s (the run itself lives in
    bench_tail.py): the median run by CPU."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_tail import tail_cost as one_run

    results = sorted((one_run(8, 1.0, 10, line_bytes) for _ in range(runs)),
                     key=lambda r: r["cpu_pct"])
    return results[len(results) // 2]


# -- main ---------------------------------------------------------------------

def median_runs(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="log size in MB (default 1024)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--block-mb", type=float, default=4.0)
    ap.add_argument("--keep", action="store_true", help="keep the generated log")
    ap.add_argument("--no-tail", action="store_true", help="skip the agent tail-cost part")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, inherited by grep
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    cat = Catalogue.load()
    tmp = Path(tempfile.mkdtemp(prefix="wd-bench-logs-"))
    path = tmp / "train.log"
    try:
        t0 = time.perf_counter()
        injected = generate(path, args.mb, cat)
        size = path.stat().st_size / 1e6
        print(f"log: {path} {size:.0f} MB, {injected} failure lines injected, "
              f"generated in {time.perf_counter() - t0:.1f} s")
        pats, fallbacks = grep_patterns(cat)
        print(f"catalogue: {len(cat.entries)} entries, {len(cat.triggers)} trigger literals; "
              f"grep: {len(pats)} ERE patterns ({fallbacks} entries fell back to keywords)")
        block = int(args.block_mb * 1_000_000)
        scan_file(cat, path, block)  # warm the page cache for both tools
        runs = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            n_scan, in_scan = scan_file(cat, path, block)
            runs.append((time.perf_counter() - t0, in_scan))
        t_total = statistics.median(t for t, _ in runs)
        t_scan = statistics.median(s for _, s in runs)
        t_grep, n_grep = median_runs(lambda: grep_file(pats, path), args.runs)
        print(f"\nmedian of {args.runs} runs, one CPU, {args.block_mb:g} MB blocks")
        print(f"{'tool':<34}{'MB':>7}{'seconds':>9}{'MB/s':>7}{'matches':>9}")
        rows = (("Catalogue.scan_counted (in scan)", t_scan, n_scan),
                ("read + scan", t_total, n_scan),
                ("grep -c -E (LC_ALL=C)", t_grep, n_grep))
        for name, t, n in rows:
            print(f"{name:<34}{size:>7.0f}{t:>9.2f}{size / t:>7.0f}{n:>9}")
        print(f"speed ratio scan/grep: {t_grep / t_scan:.2f} (end to end {t_grep / t_total:.2f})")
        print(f"scan findings {n_scan} for {injected} injected failure lines"
              f"{'' if n_scan == injected else '  <-- MISMATCH'}")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_tail:
        if hasattr(os, "sched_setaffinity"):   # writers and agent: the whole machine again
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        r = tail_cost(args.runs)
        print(f"\nagent tail cost, 8 ranks x 1 MB/s of {r['line_bytes']}-byte lines, median of "
              f"{args.runs}: {r['cpu_pct']:.2f}% of one core (catalogue scan {r['scan_pct']:.2f}%, "
              f"reading/offsets/tails {r['tail_pct']:.2f}%); read {r['bytes_read']} of "
              f"{r['bytes_written']} bytes written, {r['findings']} findings for "
              f"{r['errors_written']} error lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
