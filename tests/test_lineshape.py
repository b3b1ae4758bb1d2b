"""Issue 12 part 5: launcher prefixes, wrapped lines, specific beats generic, SIGKILL as a
probable host OOM, and diagnose's evidence (watchdog_d/logs/lineshape.py, diagnose.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchdog_d.logs import diagnose as dg
from watchdog_d.logs.fingerprints import Catalogue, rank_from_text
from test_fingerprints import BENIGN


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.load()


BARE = [
    ("Killed", "host_oom"),
    ("ValueError: Size mismatch between saved torch.Size([64, 32]) and current: torch.Size([32, 32]) "
     "for layers.1.w", "checkpoint_mismatch"),
    ("Timeout at NCCL work: 77, last enqueued NCCL work: 78, last completed NCCL work: 76.",
     "collective_timeout"),
    ("size mismatch for decoder.w: copying a param with shape torch.Size([3]) from checkpoint, "
     "the shape in current model is torch.Size([4]).", "checkpoint_mismatch"),
]
PREFIXES = ["trainjob.gpu-node-3 [stderr] ", "srun: ", "[1,3]<stderr>:", "[rank3]: ", "[default3]:",
            "3: ", "job-7.n12 [stdout] [rank3]: "]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("line, kind", BARE)
def test_launcher_prefixes_are_stripped(cat: Catalogue, prefix: str, line: str, kind: str) -> None:
    for f in (cat.scan_line(prefix + line), cat.scan((prefix + line + "\n").encode())[0]):
        assert f.kind == kind and f.line == prefix + line   # the finding keeps the whole line


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("line", [b for b in BENIGN if b])
def test_prefixed_benign_lines_stay_benign(cat: Catalogue, prefix: str, line: str) -> None:
    assert cat.scan_line(prefix + line) is None


def test_open_mpi_prefix_names_the_rank() -> None:
    assert rank_from_text("[1,3]<stderr>:RuntimeError: x") == 3


NCCL = ("[rank0]:[E709 17:05:38.162555850 ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught collective "
        "operation timeout: WorkNCCL(SeqNum=20585, OpType=ALLREDUCE, NumelIn=1259621, NumelOut=1259621, "
        "Timeout(ms)=600000) ran for 600000 milliseconds before timing out.")


def wrap(line: str, width: int) -> str:
    return "\n".join(line[i:i + width] for i in range(0, len(line), width))


@pytest.mark.parametrize("width", [80, 120, 160, 200])
def test_wrapped_lines_are_joined(cat: Catalogue, width: int) -> None:
    data = f"step 1 loss 0.5\n{wrap(NCCL, width)}\nstep 2\n".encode()
    (f,) = cat.scan(data, first_line_no=10)
    assert f.kind == "collective_timeout" and f.line_no == 11 and f.offset == len("step 1 loss 0.5\n")
    assert f.fields["seq"] == "20585" and f.fields["ran_ms"] == "600000"
    # the match starts in a row without a trigger (only the continuation has one):
    # still found, at the first row, with the fields from both rows
    head = "[rank2]:[E709 17:05:38.1 ProcessGroupNCCL.cpp:1664] [Rank 2] "
    line = head.ljust(80 - len("Timeout at NC"), "x") + ("Timeout at NCCL work: 158046, last enqueued "
                                                           "NCCL work: 158046, last completed NCCL work: 158045.")
    found = cat.scan(("step 1\n" + wrap(line, 80) + "\n").encode())
    assert [(g.kind, g.line_no, g.fields.get("seq")) for g in found] == [
        ("collective_timeout", 2, "158046")]


def test_wrap_joins_make_no_false_positives(cat: Catalogue) -> None:
    # rows of a wrap width that are not a wrapped failure: each line as it is
    info = "2024-06-01 12:00:01,123 INFO train.py:210 step=20585 loss=0.35 grad_norm=1.2 lr=3e-4"
    rows = [info.ljust(80, "0")[:80], "Error: handled, retrying", info.ljust(80, "0")[:80], "Killed",
            info.ljust(120, "0")[:120], "ValueError: one of its own", *BENIGN]
    found = cat.scan(("\n".join(rows) + "\n").encode())
    # ("Error: handled, retrying" is no Python exception: a bare "Error:" names no class)
    assert [(f.kind, f.line_no) for f in found] == [("host_oom", 4), ("python_exception", 6)]
    # benign lines wrapped at every width: nothing
    for width in (80, 120, 160, 200):
        text = "\n".join(wrap(b * 3, width) for b in BENIGN if b)
        assert cat.scan(text.encode()) == []


def _job(tmp_path: Path, files: dict[str, str]) -> dict:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return dg.diagnose([str(tmp_path)])


def test_specific_cause_beats_the_generic_line(tmp_path: Path) -> None:
    # rank 1's generic follow-up is stamped earlier than rank 0's specific line
    res = _job(tmp_path, {
        "rank-0.log": "[rank0]:[E709 17:05:38.500000 ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught "
                      "collective operation timeout: WorkNCCL(SeqNum=49, OpType=BROADCAST, "
                      "Timeout(ms)=1800000) ran for 1805457 milliseconds before timing out.\n",
        "rank-1.log": "[rank1]:[E709 17:05:38.100000 ProcessGroupNCCL.cpp:630] [Rank 1] Some NCCL "
                      "operations have failed or timed out. Due to the asynchronous nature of CUDA "
                      "kernels, subsequent GPU operations might run on corrupted/incomplete data.\n"})
    rc = res["jobs"][0]["root_cause"]
    assert rc["kind"] == "collective_timeout" and rc["rank"] == 0, rc


TORCHRUN_KILL = """\
E1128 15:30:00.123000 4242 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: -9) local_rank: 1 (pid: 1234) of binary: /usr/bin/python3
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_15:30:00
  host      : node-a
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1234)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 1234
============================================================
"""


def test_sigkill_is_a_probable_host_oom_with_evidence(tmp_path: Path) -> None:
    res = _job(tmp_path, {
        "rank-0.log": "[rank0]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
                      "Connection closed by peer [127.0.0.1]:5000\n",
        "rank-1.log": "step 5 loss 0.3\n",
        "launcher.log": TORCHRUN_KILL})
    rc = res["jobs"][0]["root_cause"]
    assert (rc["kind"], rc["confidence"], rc["line"]) == ("host_oom", "probable", 1)
    launcher = str(tmp_path / "launcher.log")
    assert [(e["path"], e["line"]) for e in rc["evidence"]] == [(launcher, 1), (launcher, 10),
                                                               (launcher, 12)]
    assert rc["evidence"][1]["rank"] is None and "exitcode  : -9" in rc["evidence"][1]["text"]
    text = dg.render(res)
    assert "root cause: host_oom (probable) on rank -" in text and "why:" in text
    assert f"evidence:   {launcher}:1  E1128" in text and f"{launcher}:12  " in text
    json.dumps(res)
    # a certain cause (the kernel's own line) beats the probable one
    (tmp_path / "dmesg.log").write_text("[99.1] Out of memory: Killed process 1234 (python3) "
                                        "total-vm:1kB, anon-rss:1kB\n")
    rc = dg.diagnose([str(tmp_path)])["jobs"][0]["root_cause"]
    assert (rc["kind"], rc["confidence"]) == ("host_oom", "certain")


def test_glog_stamps_with_a_one_digit_month_are_read() -> None:
    # c10's logging writes the month unpadded ("E626" is June 26): such lines were left
    # unordered, so a later heartbeat line could outrank the earlier collective timeout
    from watchdog_d.logs.diagnose import line_time

    june = line_time("[rank2]:[E626 05:06:30.929096625 ProcessGroupNCCL.cpp:632] [Rank 2] Watchdog")
    later = line_time("[rank7]:[E626 05:14:36.393067540 ProcessGroupNCCL.cpp:1743] [Rank 7] stuck")
    november = line_time("E1122 05:24:32.301000 8448 torch/distributed/elastic/api.py:1002] failed")
    assert june is not None and later is not None and november is not None
    assert june < later < november
