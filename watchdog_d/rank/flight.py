"""The rank's flight recorder, read on request (inside the training process).

The wrapper asks by writing a byte to the rank's request pipe (``rank-N.frreq``, a FIFO
beside its beacon), as it asks for stacks. A helper thread that sleeps in ``read()`` on
that pipe (no GIL held, no CPU) wakes, dumps the flight recorder without stack traces
(capturing them needs the GIL inside the dump and has deadlocked for others), summarises
it per process group (``core.frsummary``) and writes two files beside the beacon:

- ``rank-N.fr``: the summary, JSON, replaced atomically; the agent ships it;
- ``rank-N.fr.pkl``: the dump itself, in the form torch's analyzer reads, which the
  wrapper keeps in the job's log directory on a hang verdict.

The agent also asks (byte ``T``), now and then while the rank steps, for the timings of
the collectives completed since it last asked (``core.frtiming``): ``rank-N.frt``, a
numbered batch, from which the coordinator finds stragglers.

Never from a signal handler, never importing torch: a rank that has not imported
torch.distributed has nothing to record. A rank whose main thread holds the GIL in native
code cannot answer; the coordinator notices (no fresh summary) and says so.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time

BUFFER_VARS = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")
SUFFIX_REQUEST, SUFFIX_SUMMARY, SUFFIX_DUMP, SUFFIX_TIMING = ".frreq", ".fr", ".fr.pkl", ".frt"
MAX_DUMP_BYTES = 64 << 20    # a dump larger than this is summarised but not kept
# A dump must not overlap the end of the process group or of the process: one made while
# destroy_process_group() tears the group down, or while the interpreter exits, aborted
# ranks ("terminate called without an active exception"). Dumps run under this lock; the
# main thread takes it on its way out (``settle``, ``close``), so none is under way then
# and none starts after.
_lock = threading.Lock()
_closed = False
SETTLE_S = 5.0               # the main thread waits at most this long for a dump under way
EXIT_GRACE_S = 0.05          # at exit, the GIL left to other threads this long (``close``)


def settle() -> None:
    """destroy_process_group() begins (``api.shutting_down`` is true already): wait out a
    dump under way; none starts after."""
    if _lock.acquire(timeout=SETTLE_S):
        _lock.release()


def close() -> None:
    """atexit: no dump from now on. Then a moment without the GIL: gloo's worker threads
    free a finished collective's Python state under the GIL, and one that takes it after the
    interpreter began to finalize aborts the process (std::terminate in ~AsyncWork: a rank
    "killed by SIGABRT" after its last step, seen once in ten runs while this thread's
    dumps competed for the GIL). Waiting here lets them finish first."""
    global _closed
    got = _lock.acquire(timeout=SETTLE_S)
    _closed = True
    if got:
        _lock.release()
    time.sleep(EXIT_GRACE_S)


def start(slot: str, env) -> None:
    """Open the request pipe of the rank whose beacon is ``slot`` (a path without its
    suffix) and start the helper thread. Any failure: no flight recorder, training goes on."""
    path = slot + SUFFIX_REQUEST
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR)      # (read-write: open never waits for a writer)
    except OSError:
        return
    t = threading.Thread(target=_serve, args=(fd, slot, dict(env)), name="watchdog-d-flight-recorder",
                         daemon=True)
    t.start()
    import atexit

    atexit.register(close)


DRILLS = {b"E": "exit", b"H": "hang"}     # watchdog-d drill, through the same pipe (the agent)


def ask(slot: str, what: bytes = b"?") -> bool:
    """The wrapper's side: ask the rank at ``slot`` for a summary (never blocks; False
    when nobody listens: no pipe, or the rank is gone). The agent's: a drill's byte."""
    try:
        fd = os.open(slot + SUFFIX_REQUEST, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.write(fd, what)
        return True
    except OSError:          # (a full pipe: requests are already waiting, one answer serves all)
        return False
    finally:
        os.close(fd)


def _serve(fd: int, slot: str, env: dict) -> None:
    while True:
        try:
            got = os.read(fd, 64)
            if not got:
                return
        except InterruptedError:
            continue
        except OSError:
            return
        for byte, fault in DRILLS.items():
            if byte in got:
                from . import api

                api.drill(fault)
        try:
            with _lock:
                if b"T" in got:
                    timing(slot, env)
                if b"?" in got:
                    answer(slot, env)
        except Exception:
            pass     # a broken dump is no evidence, never a broken rank


def off_reason(env: dict) -> str:
    for name in BUFFER_VARS:
        value = env.get(name, "").strip()
        if value and value.lstrip("-").isdigit() and int(value) <= 0:
            return f"{name}={value} set for the job: the flight recorder is off"
    return ""


def read_dump() -> tuple[bytes | None, str]:
    """(the pickled dump, "") or (None, why not)."""
    from . import api

    if _closed:
        return None, "the rank is exiting"
    dist = sys.modules.get("torch.distributed")
    c10d = sys.modules.get("torch._C._distributed_c10d")
    if dist is None or c10d is None:
        return None, "torch.distributed is not in use in this rank"
    if api.shutting_down():
        # a dump of a process group torch is tearing down crashed the rank (SIGSEGV)
        return None, "the rank is destroying its process group"
    try:
        if not dist.is_initialized():
            return None, "no process group yet"
    except Exception:
        return None, "no process group yet"
    dump = getattr(c10d, "_dump_fr_trace", None) or getattr(c10d, "_dump_nccl_trace", None)
    if dump is None:
        import torch

        return None, f"torch {getattr(torch, '__version__', '?')} has no flight-recorder dump"
    # includeCollectives, includeStackTraces (off: it needs the GIL inside the dump), onlyActive
    return dump(True, False, False), ""


def members() -> dict[str, list[int]]:
    """Process group name -> its members' global ranks (gloo's dump does not say)."""
    try:
        from torch.distributed import distributed_c10d as c10d

        world = c10d._world
        names = dict(world.pg_names)
        ranks = dict(world.pg_group_ranks)
        return {name: sorted(ranks.get(pg, {}).keys()) for pg, name in names.items()}
    except Exception:
        return {}


def answer(slot: str, env: dict) -> None:
    from ..core import frsummary

    note, groups, raw = off_reason(env), (), None
    if not note:
        raw, note = read_dump()
    if raw is not None:
        try:
            dump = pickle.loads(raw)
            known = members()
            if _fill_config(dump, known):     # (gloo's dump leaves the groups' ranks out)
                raw = pickle.dumps(dump, protocol=pickle.HIGHEST_PROTOCOL)
            groups = frsummary.summarise(dump, time.time_ns(), known)
            if not groups:
                note = "nothing recorded yet" if not dump.get("entries") else ""
        except (pickle.UnpicklingError, frsummary.BrokenDump, ValueError, TypeError, EOFError) as e:
            note, raw = f"unreadable dump: {type(e).__name__}", None
    doc = {"v": 1, "note": note, "groups": [_plain(g) for g in groups]}
    if raw is not None and len(raw) <= MAX_DUMP_BYTES:
        _replace(slot + SUFFIX_DUMP, raw)
    _replace(slot + SUFFIX_SUMMARY, json.dumps(doc, separators=(",", ":")).encode())


_timing = {"after": {}, "batch": 0}    # the last sequence id sent per group; the batch number
TIMING_TARGET = 16           # collectives per group and batch, about (the coordinator's cost)


def timing(slot: str, env: dict) -> None:
    """The collectives completed since the last batch, as ``rank-N.frt`` (none: no file)."""
    from ..core import frtiming

    if off_reason(env):
        return
    raw, _ = read_dump()
    if raw is None:
        return
    groups = frtiming.timings(pickle.loads(raw), time.time_ns(), time.monotonic_ns(),
                              _timing["after"], members(), target=TIMING_TARGET)
    if not groups:
        return
    for g in groups:
        _timing["after"][g.name] = g.seqs[-1]
    _timing["batch"] += 1
    doc = {**frtiming.to_doc(groups), "batch": _timing["batch"]}
    _replace(slot + SUFFIX_TIMING, json.dumps(doc, separators=(",", ":")).encode())


def _fill_config(dump: object, known: dict[str, list[int]]) -> bool:
    """Write the groups' members into the dump's ``pg_config`` where it lacks them, so the
    kept dump says who belongs (torch's analyzer and ``diagnose`` read them there)."""
    if not isinstance(dump, dict) or not known:
        return False
    config = dump.get("pg_config")
    if not isinstance(config, dict):
        config = dump["pg_config"] = {}
    changed = False
    for name, ranks in known.items():
        have = config.get(name)
        if not isinstance(have, dict) or have.get("ranks") in (None, "", "[]"):
            desc = have.get("desc", "") if isinstance(have, dict) else ""
            config[name] = {"name": name, "desc": desc, "ranks": str(list(ranks))}
            changed = True
    return changed


def _plain(g) -> dict:
    from dataclasses import asdict

    return asdict(g)


def _replace(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
