"""What the shipped fingerprint catalogue finds (watchdog_d/logs/fingerprints.toml), and the
matcher on hostile input. The scanner's offsets, rank attribution and the loader: test_catalogue.py."""
from __future__ import annotations

import random
import time

import pytest

from watchdog_d.logs.fingerprints import EVAL_WINDOW, LINE_MAX, Catalogue, Finding


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.load()


def one(cat: Catalogue, line: str) -> Finding | None:
    """The finding for a single line, checked to agree between scan and scan_line."""
    found = cat.scan((line + "\n").encode())
    assert len(found) <= 1
    by_line = cat.scan_line(line)
    assert (found[0].kind if found else None) == (by_line.kind if by_line else None), line
    return found[0] if found else None


# -- the catalogue's own examples ------------------------------------------

def test_required_kinds_present(cat: Catalogue) -> None:
    kinds = {e.kind for e in cat.entries}
    assert kinds >= {"collective_timeout", "nccl_error", "cuda_oom", "cuda_error", "gpu_xid",
                     "host_oom", "shm_exhausted", "data_loader_error", "checkpoint_mismatch",
                     "model_download_error", "tokenizer_error", "python_exception", "segfault",
                     "rendezvous_error", "peer_connection_lost", "launcher_child_failed",
                     "nccl_heartbeat_timeout", "disk_full", "file_not_found"}
    assert [e.kind for e in cat.entries][-1] == "python_exception"


def test_every_example_is_found_as_its_entry(cat: Catalogue) -> None:
    for e in cat.entries:
        assert len(e.examples) >= 2 or e.severity == "warning", e.kind
        for ex in e.examples:
            f = one(cat, ex)
            assert f is not None, f"#{e.index} {e.kind}: not found: {ex}"
            assert (f.kind, f.severity, f.role) == (e.kind, e.severity, e.role), (e.index, ex, f)
            # the line holds a keyword, and the matcher got there through a trigger
            assert any(k in ex for k in e.keywords), (e.index, ex)
            assert any(t in ex for t in cat.triggers), (e.index, ex)


def test_every_keyword_is_exercised_by_an_example(cat: Catalogue) -> None:
    for e in cat.entries:
        for k in e.keywords:
            assert any(k in ex for ex in e.examples), f"#{e.index} {e.kind}: keyword {k!r} has no example"


def test_non_examples_are_not_their_entry(cat: Catalogue) -> None:
    for e in cat.entries:
        for ex in e.non_examples:
            f = cat.scan_line(ex)
            assert f is None or f.kind != e.kind, (e.index, ex, f)


def corpus(cat: Catalogue) -> list[str]:
    return ([ex for e in cat.entries for ex in e.examples + e.non_examples]
            + VARIANTS_FLAT + BENIGN)


def test_patterns_only_match_lines_holding_a_keyword(cat: Catalogue) -> None:
    # keywords are the prefilter: a pattern matching a line without any of its
    # entry's keywords would be a silent miss in scan
    for e in cat.entries:
        for line in corpus(cat):
            if any(p.search(line) for p in e.patterns):
                assert any(k in line for k in e.keywords), (e.index, e.kind, line)


# -- extracted fields -------------------------------------------------------

@pytest.mark.parametrize("line, kind, fields", [
    ("[rank0]:[E709 17:05:38.162555850 ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught collective "
     "operation timeout: WorkNCCL(SeqNum=20585, OpType=ALLREDUCE, NumelIn=1259621, NumelOut=1259621, "
     "Timeout(ms)=600000) ran for 600000 milliseconds before timing out.", "collective_timeout",
     {"rank": "0", "op": "ALLREDUCE", "seq": "20585", "numel": "1259621", "timeout_ms": "600000",
      "ran_ms": "600000"}),
    ("[E ProcessGroupNCCL.cpp:457] [Rank 1] Watchdog caught collective operation timeout: "
     "WorkNCCL(SeqNum=49, OpType=BROADCAST, Timeout(ms)=1800000) ran for 1805457 milliseconds before "
     "timing out.", "collective_timeout",
     {"rank": "1", "op": "BROADCAST", "seq": "49", "timeout_ms": "1800000", "ran_ms": "1805457"}),
    ("[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
     "Timed out waiting 3000ms for recv operation to complete", "collective_timeout",
     {"timeout_ms": "3000", "op": "recv"}),
    ("[1234567.890123] NVRM: Xid (PCI:0000:3b:00): 79, pid=48723, name=python, GPU has fallen off the bus.",
     "gpu_xid", {"xid": "79", "pci": "PCI:0000:3b:00", "pid": "48723"}),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.30 GiB. GPU 0 has a total capacity "
     "of 79.14 GiB of which 1.02 GiB is free.", "cuda_oom",
     {"size": "2.30 GiB", "gpu": "0", "free": "1.02 GiB"}),
    ("Out of memory: Killed process 1234 (python) total-vm:1000kB", "host_oom",
     {"pid": "1234", "comm": "python"}),
    ("RuntimeError: DataLoader worker (pid 1234) is killed by signal: Killed.", "data_loader_error",
     {"pid": "1234", "signal": "Killed"}),
    ("E1122 05:24:32.301000 8448 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
     "(exitcode: 1) local_rank: 0 (pid: 8452) of binary: /usr/bin/python3", "launcher_child_failed",
     {"exitcode": "1", "local_rank": "0", "pid": "8452", "binary": "/usr/bin/python3"}),
    ("  traceback : Signal 15 (SIGTERM) received by PID 56213", "launcher_child_failed",
     {"signal_no": "15", "signal": "SIGTERM", "pid": "56213"}),
    ("  traceback : Signal 6 (SIGABRT) received by PID 56213", "process_abort", {"pid": "56213"}),
    ("mpirun noticed that process rank 3 with PID 0 on node node1 exited on signal 9 (Killed).",
     "host_oom", {}),
    ("torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1333, "
     "unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.18.1", "nccl_error",
     {"reason": "unhandled system error", "nccl_version": "2.18.1",
      "source": "../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1333"}),
    ("[rank1]: RuntimeError: Error(s) in loading state_dict for LlamaForCausalLM:",
     "checkpoint_mismatch", {"model": "LlamaForCausalLM"}),
    ("[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
     "by peer [127.0.0.1]:11419.", "peer_connection_lost", {"peer": "127.0.0.1", "port": "11419"}),
    ("RuntimeError: The client socket has failed to connect to [gpu-node-1]:29500 (errno: 111 - "
     "Connection refused).", "rendezvous_error", {"host": "gpu-node-1", "port": "29500"}),
    ("[rank5]: ValueError: Expected input batch_size (16) to match target batch_size (8).",
     "python_exception", {"exception": "ValueError",
                          "message": "Expected input batch_size (16) to match target batch_size (8)."}),
])
def test_fields(cat: Catalogue, line: str, kind: str, fields: dict[str, str]) -> None:
    f = one(cat, line)
    assert f is not None and f.kind == kind, f
    assert f.fields == fields
    assert all(isinstance(v, str) and v for v in f.fields.values())


# -- wordings written for this test, not in the catalogue -------------------
# Other versions, prefixes, headers, values and extra fields: the catalogue
# must recognise the stable part, not the sample.

VARIANTS: dict[str, list[str]] = {
    "collective_timeout": [
        # a future header, a named sub-group, fields in another order plus one we never saw
        "[rank12]:[E1231 23:59:59.000000001 ProcessGroupNCCL.cpp:9999] [PG ID 7 PG GUID 7(tp_group) Rank 12] "
        "Watchdog caught collective operation timeout: WorkNCCL(OpType=_REDUCE_SCATTER_BASE, SeqNum=77, "
        "NumelIn=4096, NumelOut=512, Timeout(ms)=120000, IsP2P=0) ran for 120107 milliseconds before timing out.",
        "gpu-node-3 [stderr] [E ProcessGroupNCCL.cpp:821] [Rank 6] NCCL watchdog thread terminated with exception: "
        "[Rank 6] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=3, OpType=COALESCED, "
        "Timeout(ms)=60000) ran for 60432 milliseconds before timing out.",
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:133] Timed out waiting "
        "1800000ms for send operation to complete",
    ],
    "nccl_watchdog_abort": [
        "[rank9]:[E101 00:00:01.000000001 ProcessGroupNCCL.cpp:2000] [PG 0 (default_pg) Rank 9] Exception "
        "(either an error or timeout) detected by watchdog at work: 12, last enqueued NCCL work: 13, last "
        "completed NCCL work: 11.",
    ],
    "nccl_heartbeat_timeout": [
        "[rank3]:[F1001 10:00:00.000000000 ProcessGroupNCCL.cpp:1600] [PG ID 2 PG GUID 5 Rank 3] "
        "ProcessGroupNCCL's watchdog got stuck for 900 seconds without making progress in monitoring "
        "enqueued collectives.",
    ],
    "nccl_error": [
        "[rank31]: torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/"
        "NCCLUtils.cpp:77, internal error - please report this issue to the NCCL developers, NCCL version 2.26.2",
    ],
    "cuda_oom": [
        "[rank2]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.25 TiB. GPU 5 has a total "
        "capacity of 139.72 GiB of which 20.00 MiB is free.",
        "torch.OutOfMemoryError: XPU out of memory. Tried to allocate 64.00 MiB.",
    ],
    "cuda_error": [
        "torch.AcceleratorError: CUDA error: operation not permitted when stream is capturing",
        "[rank0]:[E518 03:11:09.1 ProcessGroupNCCL.cpp:1900] [PG ID 1 PG GUID 1 Rank 0] Process group "
        "watchdog thread terminated with exception: CUDA error: an illegal instruction was encountered",
    ],
    "gpu_xid": [
        "Jun 01 12:00:00 node7 kernel: NVRM: Xid (PCI:0000:af:00): 95, pid=3344, name=python3, Uncontained: "
        "FBHUB. RST: Yes, D-RST: No",
        "NVRM: Xid (PCI:0000:18:00.0): 45, pid=9, name=python, Ch 00000010",
    ],
    "host_oom": [
        "[Mon Jun  3 10:00:00 2024] Out of memory: Killed process 777 (pt_main_thread) total-vm:1kB, "
        "anon-rss:2kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        "srun: error: node12: task 3: Killed",
        "RuntimeError: [enforce fail at alloc_cpu.cpp:75] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 132426121216 bytes. Error code 12 (Cannot allocate memory)",
    ],
    "shm_exhausted": [
        "RuntimeError: unable to mmap 1048576 bytes from file </torch_4242_871_12>: No space left on device (28)",
        "/bin/bash: line 1:  4242 Bus error               (core dumped) python train.py",
    ],
    "data_loader_error": [
        "RuntimeError: DataLoader worker (pid 42) is killed by signal: Aborted.",
        "RuntimeError: DataLoader worker (pid 42) exited unexpectedly with exit code 1. Details are lost due "
        "to multiprocessing. Rerunning with num_workers=0 may give better error trace.",
    ],
    "checkpoint_mismatch": [
        "RuntimeError: Error(s) in loading state_dict for DistributedDataParallel:",
    ],
    "checkpoint_corrupt": [
        "RuntimeError: PytorchStreamReader failed locating file data.pkl: file not found",
    ],
    "model_download_error": [
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='hf-mirror.com', port=443): Max retries "
        "exceeded with url: /api/models/x (Caused by ProxyError('Unable to connect to proxy'))",
        "huggingface_hub.errors.EntryNotFoundError: 404 Client Error. (Request ID: Root=1-7)",
    ],
    "tokenizer_error": [
        "EnvironmentError: Can't load tokenizer for 'meta-llama/Meta-Llama-3-8B'. Make sure that the path is right.",
        "Exception: data did not match any variant of untagged enum PyPreTokenizerTypeWrapper at line 70 column 3",
    ],
    "rendezvous_error": [
        "torch.distributed.elastic.rendezvous.api.RendezvousClosedError",
        "[W socket.cpp:697] [c10d] The client socket has timed out after 900s while trying to connect to "
        "(10.0.0.1, 29400).",
    ],
    "segfault": [
        "[rank3]: Fatal Python error: Segmentation fault",
        "!!!!!!! Segfault encountered !!!!!!!  Signal: Segmentation fault (11)",
    ],
    "launcher_child_failed": [
        "E0325 20:57:27.620000 2606 site-packages/torch/distributed/elastic/multiprocessing/api.py:869] failed "
        "(exitcode: 1) local_rank: 5 (pid: 2630) of binary: /root/miniconda3/bin/python",
    ],
    "peer_connection_lost": [
        "[rank1]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection closed by peer "
        "[18.25.6.30]:28048",
    ],
    "disk_full": [
        "OSError: [Errno 28] No space left on device: '/home/u/.cache/huggingface/hub/tmp_x'",
    ],
    "python_exception": [
        "(RayWorkerVllm pid=5304) IndexError: index 4096 is out of bounds for dimension 0 with size 4096",
        "torch._dynamo.exc.TorchRuntimeError: Failed running call_function <built-in function add>",
    ],
}
VARIANTS_FLAT = [line for lines in VARIANTS.values() for line in lines]


@pytest.mark.parametrize("kind, line", [(k, ln) for k, lines in VARIANTS.items() for ln in lines])
def test_variants_generalise(cat: Catalogue, kind: str, line: str) -> None:
    f = one(cat, line)
    assert f is not None and f.kind == kind, (line, f)


def test_variants_are_not_copies_of_examples(cat: Catalogue) -> None:
    examples = {ex for e in cat.entries for ex in e.examples}
    assert not examples & set(VARIANTS_FLAT)


# -- benign lines ------------------------------------------------------------

BENIGN = [
    "eval step=1000 val_loss=2.103 error_rate=0.1 accuracy=0.912",
    "[rank0]:2024-06-01 12:00:01,123 INFO train.py:210 step=20585 loss=0.35 grad_norm=1.2 lr=3.0e-04",
    "gpu-node07:12345:12399 [3] NCCL INFO Channel 05/0 : 3[3] -> 4[4] via P2P/CUMEM/read",
    "gpu-node07:12345:12399 [3] NCCL INFO Connected all rings",
    "node:25146:25852 [0] NCCL INFO [Service thread] Connection closed by localRank 0",
    "node:1:2 [0] NCCL INFO transport/net.cc:1302 -> 6 Error: retrying (timeout=600)",
    "/usr/lib/python3/site-packages/torch/utils/checkpoint.py:464: UserWarning: torch.utils.checkpoint: "
    "the use_reentrant parameter should be passed explicitly; an Error will be raised in the future.",
    "FutureWarning: `torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)` instead.",
    "DeprecationWarning: NCCL_ASYNC_ERROR_HANDLING is deprecated, Killed processes are not restarted",
    "config: {'timeout': 600, 'nccl_timeout_s': 1800, 'on_error': 'raise', 'max_restarts': 3}",
    "timeout=600",
    "checked 128 shards: no errors found",
    "eval finished: 0 errors, 0 warnings",
    "See the ExceptionGroup docs for details on grouped failures",
    "Exception handling: enabled",
    "Epoch 0:  6%|██        | 32040/500150 [6:28:43<94:39:17,  1.37it/s, loss=2.6, v_num=95nc]",
    "{'loss': 0.3521, 'grad_norm': 1.2034, 'learning_rate': 1.98e-05, 'epoch': 0.42}",
    "[rank0]:[W reducer.cpp:1389] Warning: find_unused_parameters=True was specified in DDP constructor",
    "Registered SIGTERM handler; will checkpoint on preemption",
    "Killed 3 stale workers before restart",
    "fault tolerance: enabled (max_restarts=3, checkpoint every 500 steps)",
    "Saving checkpoint to /ckpt/run-7/step_1000 (took 12.3s)",
    "watchdog-d: heartbeat ok, 8 ranks, last step 1200",
    "test_cuda_oom_recovery PASSED",
    "W0601 12:00:00.123000 1234 torch/distributed/run.py:793] Setting OMP_NUM_THREADS environment variable",
    "NCCL_DEBUG=INFO NCCL_SOCKET_IFNAME=eth0 TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=480",
    "",
]


@pytest.mark.parametrize("line", BENIGN)
def test_benign_lines_give_no_finding(cat: Catalogue, line: str) -> None:
    assert cat.scan_line(line) is None
    assert cat.scan((line + "\n").encode()) == []


# -- bad input ---------------------------------------------------------------

def test_binary_garbage_does_not_crash(cat: Catalogue) -> None:
    rng = random.Random(7)
    blob = bytes(rng.getrandbits(8) for _ in range(200_000))
    for f in cat.scan(blob):  # may find something by chance; must be well-formed
        assert len(f.line) <= LINE_MAX
    garbage_then_oom = blob[:5000] + b"\n\xff\xfe\x00torch.OutOfMemoryError: CUDA out of memory.\x80\n"
    assert [f.kind for f in cat.scan(garbage_then_oom)][-1] == "cuda_oom"


def test_invalid_utf8_and_control_chars(cat: Catalogue) -> None:
    raw = b"\x1b[31m[rank1]:\xc3\x28 RuntimeError: CUDA error: an illegal memory access was encountered\x1b[0m\t!\r\n"
    (f,) = cat.scan(raw)
    assert f.kind == "cuda_error"
    assert "\ufffd" in f.line and "\t" in f.line
    assert not any(ord(c) < 32 and c != "\t" for c in f.line)
    assert cat.scan_line(raw).kind == "cuda_error"


def test_one_megabyte_line(cat: Catalogue) -> None:
    filler = b"x=1 " * 250_000
    f_end = cat.scan(filler + b"Segmentation fault (core dumped)\n")
    f_mid = cat.scan(filler[:500_000] + b" Segmentation fault " + filler[:500_000])
    for found in (f_end, f_mid):
        assert [f.kind for f in found] == ["segfault"]
        assert len(found[0].line) <= LINE_MAX and "Segmentation fault" in found[0].line
    assert cat.scan(filler) == [] and cat.scan_line(filler) is None


def test_patterns_stay_linear_on_hostile_lines(cat: Catalogue) -> None:
    # a matched window is at most 2 * EVAL_WINDOW chars; no pattern may backtrack
    # catastrophically on long runs of spaces, digits, delimiters or its own keyword
    n, slowest = 2 * EVAL_WINDOW, 0.0
    for e in cat.entries:
        for k in e.keywords:
            for line in (k + " " * n + "x", "1" * n + " " + k, "0:" * (n // 2) + k,
                         (k + "(") * (n // (len(k) + 1))):
                t0 = time.perf_counter()
                e.match(line)
                slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.25, slowest


def test_empty_and_degenerate_blocks(cat: Catalogue) -> None:
    assert cat.scan(b"") == []
    assert cat.scan(b"\n\n\n") == []
    assert cat.scan(b"Killed") [0].kind == "host_oom"          # no trailing newline
    assert cat.scan(b"SIG" * 100_000) == []                       # many anchor hits, no match


def test_carriage_return_screens(cat: Catalogue) -> None:
    line = (b"Epoch 0:  6%|###   | 3/50 [00:01<00:10, 1.37it/s]\r"
            b"[E ProcessGroupNCCL.cpp:458] [Rank 0] Watchdog caught collective operation timeout: "
            b"WorkNCCL(SeqNum=96120, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1800123 milliseconds "
            b"before timing out.\r\n")
    (f,) = cat.scan(line)
    assert f.kind == "collective_timeout" and f.fields["seq"] == "96120"
    assert f.line.startswith("[E ProcessGroupNCCL")


SURVIVABLE = [
    # a rank's own subprocess call that failed and was handled
    "subprocess.CalledProcessError: Command '['nvidia-smi', '-q']' returned non-zero exit status 9.",
    "eval harness failed (exitcode: 1) local_rank: 0 (pid: 4242) of binary: /usr/bin/python3",
    # an optional extension that did not load (a slower path is taken)
    "ImportError: /opt/venv/lib/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
    "WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions. xFormers was built for:",
    # torch.compile falling back to eager (suppress_errors)
    "torch._dynamo.exc.BackendCompilerFailed: backend='inductor' raised: CppCompileError",
    # NCCL probing, then falling back
    "node1:1:2 [0] NCCL WARN Cuda failure 1 'invalid argument'",
    "node1:1:2 [0] transport/net_ib.cc:432 NCCL WARN Call to ibv_reg_mr failed",
    # a write to a network volume that failed once and was retried
    "OSError: [Errno 5] Input/output error: '/mnt/nfs/metrics.jsonl'",
    # an fp16 run's loss scaler at work; Ray retrying a task after a memory kill
    "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 3.5e-307",
    "(raylet) node_manager.cc:2963: 1 Workers (tasks / actors) killed due to memory pressure (OOM)",
]


@pytest.mark.parametrize("line", SURVIVABLE)
def test_what_a_running_rank_may_print_and_survive_is_never_fatal(cat: Catalogue, line: str) -> None:
    # the live agent tears a job down on a *fatal* finding of a rank that is still running
    found = cat.scan_line(line)
    assert found is not None and found.severity != "fatal", found
