"""The wrapper <-> agent messages (watchdog_d/proto/local.py): one typed definition, checked on receipt."""
from __future__ import annotations

import json
import math

import pytest

from watchdog_d.core.model import MAX_COMMAND, JobSpec, Verdict
from watchdog_d.proto import convert
from watchdog_d.proto.local import (NOTE_MAX, AttemptStarted, Command, Ended, MessageError, Refused,
                                    Register, Registered, Waiting, decode, encode)

SPEC = JobSpec(job_id="llama-7b", on_failure="restart", max_restarts=3, min_stall_timeout_s=30.0,
               alert_urls=("json://127.0.0.1:9/x",), command="torchrun train.py", crash_loop=2)
VERDICT = Verdict(job="llama-7b", kind="rank_stalled", rank=2, node="b", host="h", step=9,
                  detected_after_s=61.5, cause="c", remedy="r", excerpt="e", attempt=1,
                  evidence=("one", "two"))


@pytest.mark.parametrize("msg", [
    Register(spec=SPEC, launcher_pid=4242, attempt=1),
    AttemptStarted(attempt=2, launcher_pid=4242, beacon_dir="/dev/shm/x", log_dir="/logs"),
    Waiting(attempt=2, note="no complete checkpoint in /ckpt"),
    Ended(state="stopped", exit_code=130),
    Registered(node_id="node-a", coordinator="10.0.0.1:7700"),
    Refused(error="the launcher is not your process"),
    Command(verb="restart", attempt=1, verdict=VERDICT, action="restart 1/3",
            resume_from="/ckpt/step-10.pt", resume_step=10),
    Command(verb="done", attempt=0),
])
def test_round_trip(msg: object) -> None:
    line = encode(msg)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == msg


def _register(**spec: object) -> bytes:
    return json.dumps({"op": "register", "launcher_pid": 7,
                       "spec": {"job_id": "j", **spec}}).encode()


@pytest.mark.parametrize("line, says", [
    (_register(min_stall_timeout_s=math.nan), "spec.min_stall_timeout_s must be a finite number"),
    (_register(startup_timeout_s=math.inf), "spec.startup_timeout_s must be a finite number"),
    (_register(node_timeout_s=0), "node_timeout_s must be a number > 0"),
    (_register(stall_factor=0.5), "stall_factor must be a number >= 1"),
    (_register(stall_factor="5"), "spec.stall_factor must be a finite number, got '5'"),
    (_register(restart_backoff_s=-1), "restart_backoff_s must be a number >= 0"),
    (_register(min_stall_timeout_s=1e12), "min_stall_timeout_s must be a number > 0 and <= 2.592e+06"),
    (_register(on_failure="reboot"), "on_failure must be alert, teardown or restart, not 'reboot'"),
    (_register(max_restarts=-1), "max_restarts must be a whole number of 0-10000"),
    (_register(max_restarts=True), "spec.max_restarts must be a whole number, got True"),
    (_register(crash_loop=1.5), "spec.crash_loop must be a whole number"),
    (_register(job_id=""), "job_id must be 1-128"),
    (_register(job_id="a/b"), "job_id must be 1-128"),
    (_register(job_id="j" * 129), "job_id must be 1-128"),
    (_register(alert_urls=["json://h/x"] * 33), "alert_urls holds 33 URLs, at most 32"),
    (_register(alert_urls="json://h/x"), "spec.alert_urls must be a list"),
    (_register(alert_urls=[""]), "alert_urls must be non-empty URLs"),
    (_register(command="c" * 70_000), "spec.command must be text of at most"),
    (b'{"op": "register", "launcher_pid": 7}', "spec is missing"),
    (b'{"op": "register", "launcher_pid": -1, "spec": {"job_id": "j"}}', "launcher_pid must be > 0"),
    (b'{"op": "register", "launcher_pid": 7, "spec": []}', "spec must be an object"),
    (b'{"op": "ended", "state": "paused", "exit_code": 0}', "state must be one of exited, stopped, preflight_failed"),
    (b'{"op": "ended", "state": "exited"}', "exit_code is missing"),
    (b'{"op": "waiting", "attempt": -1}', "attempt must be >= 0"),
    (b'{"op": "command", "verb": "rm -rf /", "attempt": 0}', "verb must be one of"),
    (b'{"op": "command", "verb": "teardown", "attempt": 0, "verdict": {"job": "j"}}', "verdict.kind is missing"),
    (b'{"op": "command", "verb": "teardown", "attempt": 0, "verdict": {"job": "j", "kind": "k", '
     b'"rank": "2"}}', "verdict.rank must be a whole number"),
    (b'{"op": "reboot"}', "unknown op 'reboot'"),
    (b'{"no": "op"}', "unknown op"),
    (b"[1, 2]", "not a JSON object"),
    (b"garbage", "not a JSON object"),
    (b"\xff\xfe", "not a JSON object"),
    (b"[" * 100_000, "not a JSON object"),
])
def test_bad_lines_say_what_is_wrong(line: bytes, says: str) -> None:
    with pytest.raises(MessageError) as e:
        decode(line)
    assert says in str(e.value)


def test_lenient_where_it_harms_nobody() -> None:
    # a newer peer's fields are ignored, missing ones take the defaults of JobSpec
    msg = decode(b'{"op": "register", "launcher_pid": 7, "future": 1, "spec": {"job_id": "j", "x": 2}}')
    assert msg == Register(spec=JobSpec("j"), launcher_pid=7)
    # texts meant for people are cut, not refused
    long = decode(_register(command="c" * 5000))
    assert isinstance(long, Register) and len(long.spec.command) == MAX_COMMAND
    note = decode(json.dumps({"op": "waiting", "attempt": 1, "note": "n" * 5000}).encode())
    assert isinstance(note, Waiting) and len(note.note) == NOTE_MAX


def test_the_coordinator_applies_the_same_rules() -> None:
    """A spec the agent refuses is refused by the coordinator too (and the other way)."""
    for bad in (dict(stall_factor=0.5), dict(max_restarts=-1), dict(job_id="a b"),
                dict(alert_urls=("u",) * 40)):
        spec = JobSpec(job_id="j")
        kw = {**{"job_id": spec.job_id}, **bad}
        m = convert.spec_to_pb(JobSpec(**kw))  # type: ignore[arg-type]
        with pytest.raises(convert.WireError):
            convert.spec_from_pb(m)
        with pytest.raises(MessageError):
            decode(_register(**{k: list(v) if isinstance(v, tuple) else v for k, v in bad.items()}))


def test_a_garbled_verdict_from_the_coordinator_is_a_wire_error() -> None:
    with pytest.raises(convert.WireError, match="verdict"):
        convert.verdict_from_json('{"job": "j", "kind": "k", "step": "nine"}')
    with pytest.raises(convert.WireError, match="verdict"):
        convert.verdict_from_json("{")
