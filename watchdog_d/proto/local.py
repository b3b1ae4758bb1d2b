"""The wrapper <-> agent seam: the messages on the agent's unix socket, defined once.

    wrapper -> agent                               agent -> wrapper
      Register        the job: spec, launcher        Registered  node id, coordinator
      AttemptStarted  an attempt runs (beacons)      Refused     why a message was not taken
      Waiting         attempt down, next awaited     Command     a verb from the coordinator
      Ended           the job is over, how

On the socket a message is one JSON object per line: its fields plus ``op``. ``decode``
checks every field's type and size, and a Register's spec with ``JobSpec.checked`` (the
rules the coordinator applies to it), and raises MessageError saying what is wrong. Fields
a peer does not know are ignored, missing ones take their defaults (a wrapper and an agent
of different versions still understand each other).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import ClassVar, Union

from ..core.model import MAX_NODES, JobSpec, SpecError, Verdict

MAX_STRING = 64 << 10          # any one text field
MAX_ITEMS = 256                # any one list
NOTE_MAX = 1000                # a wrapper's note for people
RUN_MAX = 64                   # a run token
VERBS = ("teardown", "restart", "relaunch", "dump_stacks", "done", "refuse", "leave")
# exited | stopped (by the user) | preflight_failed (never started: the node's checks failed)
ENDED_STATES = ("exited", "stopped", "preflight_failed")


class MessageError(ValueError):
    """A line that is not a valid message; the text says which field and why."""


@dataclass(frozen=True)
class Register:
    OP: ClassVar[str] = "register"
    spec: JobSpec
    launcher_pid: int
    attempt: int = 0
    run: str = ""                       # this launch of the job (a wrapper's token, kept on reattach)
    spare: bool = False                 # a standby of the job (--spare): no ranks until it takes a place
    node_rank: int = -1                 # torchrun's --node-rank (-1: none, a dynamic rendezvous)

    def check(self) -> "Register":
        try:
            spec = self.spec.checked()
        except SpecError as e:
            raise MessageError(f"spec: {e}") from None
        _positive("launcher_pid", self.launcher_pid)
        _not_negative("attempt", self.attempt)
        _node_rank(self.node_rank)
        if len(self.run) > RUN_MAX or not all(c.isascii() and c.isalnum() for c in self.run):
            raise MessageError(f"run must be at most {RUN_MAX} letters and digits")
        return dataclasses.replace(self, spec=spec)


@dataclass(frozen=True)
class AttemptStarted:
    OP: ClassVar[str] = "attempt"
    attempt: int
    launcher_pid: int
    beacon_dir: str
    log_dir: str = ""
    node_rank: int = -1                 # a spare that took a place: the rank it took

    def check(self) -> "AttemptStarted":
        _not_negative("attempt", self.attempt)
        _positive("launcher_pid", self.launcher_pid)
        _node_rank(self.node_rank)
        return self


@dataclass(frozen=True)
class Waiting:
    OP: ClassVar[str] = "waiting"
    attempt: int
    note: str = ""                      # for people (a checkpoint problem, ...)

    def check(self) -> "Waiting":
        _not_negative("attempt", self.attempt)
        return dataclasses.replace(self, note=self.note[:NOTE_MAX])


@dataclass(frozen=True)
class Ended:
    OP: ClassVar[str] = "ended"
    state: str                          # one of ENDED_STATES
    exit_code: int
    note: str = ""                      # preflight_failed: the checks that failed

    def check(self) -> "Ended":
        if self.state not in ENDED_STATES:
            raise MessageError(f"state must be one of {', '.join(ENDED_STATES)}, not {self.state!r}")
        return dataclasses.replace(self, note=self.note[:NOTE_MAX])


@dataclass(frozen=True)
class Registered:
    OP: ClassVar[str] = "registered"
    node_id: str
    coordinator: str = ""

    def check(self) -> "Registered":
        return self


@dataclass(frozen=True)
class Refused:
    OP: ClassVar[str] = "error"
    error: str

    def check(self) -> "Refused":
        return self


@dataclass(frozen=True)
class Command:
    OP: ClassVar[str] = "command"
    verb: str                           # one of VERBS
    attempt: int
    verdict: Verdict | None = None
    action: str = ""                    # none | teardown | restart i/N | gave_up; refuse: why
    resume_from: str = ""               # relaunch: the checkpoint offered ("" none)
    resume_step: int = -1
    node_rank: int = -1                 # relaunch of a spare: the --node-rank it takes (-1: its own)

    def check(self) -> "Command":
        _node_rank(self.node_rank)
        if self.verb not in VERBS:
            raise MessageError(f"verb must be one of {', '.join(VERBS)}, not {self.verb!r}")
        _not_negative("attempt", self.attempt)
        return self

    @property
    def offered(self) -> tuple[int, str]:
        """(step, path) of the checkpoint the coordinator offers."""
        return self.resume_step, self.resume_from


@dataclass(frozen=True)
class DrillAsk:
    """``watchdog-d drill``: a fault into a live job's rank (the agent asks the coordinator,
    with the asker's uid from the socket)."""
    OP: ClassVar[str] = "drill"
    job_id: str
    fault: str
    rank: int
    node: str = ""

    def check(self) -> "DrillAsk":
        from ..core.drill import FAULTS

        if self.fault not in FAULTS:
            raise MessageError(f"fault must be one of {', '.join(FAULTS)}, not {self.fault!r}")
        if not 0 < len(self.job_id) <= 128 or not self.job_id.isprintable():
            raise MessageError("job_id must be 1-128 printable characters")
        if len(self.node) > 200 or not self.node.isprintable():
            raise MessageError("node must be at most 200 printable characters")
        _not_negative("rank", self.rank)
        return self


@dataclass(frozen=True)
class StatusAsk:
    """One job's part of the coordinator's status (``watchdog-d drill`` follows it)."""
    OP: ClassVar[str] = "status"
    job_id: str

    def check(self) -> "StatusAsk":
        return self


@dataclass(frozen=True)
class Answer:
    """The coordinator's answer to a DrillAsk or StatusAsk, through the agent."""
    OP: ClassVar[str] = "answer"
    json: str = ""
    error: str = ""

    def check(self) -> "Answer":
        return self


Message = Union[Register, AttemptStarted, Waiting, Ended, Registered, Refused, Command,
                DrillAsk, StatusAsk, Answer]
BY_OP: dict[str, type] = {cls.OP: cls for cls in typing.get_args(Message)}


def encode(msg: Message) -> bytes:
    return (json.dumps({"op": msg.OP, **dataclasses.asdict(msg)}) + "\n").encode()


def decode(line: bytes) -> Message:
    """One line from the socket -> the message it holds, checked; MessageError if none."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise MessageError("not a JSON object") from None
    if not isinstance(obj, dict):
        raise MessageError("not a JSON object")
    cls = BY_OP.get(obj.get("op"))  # type: ignore[arg-type]
    if cls is None:
        raise MessageError(f"unknown op {str(obj.get('op'))[:40]!r}")
    return from_plain(cls, obj).check()


def from_plain(cls: type, obj: object, where: str = "") -> typing.Any:
    """A dataclass ``cls`` from JSON data, every field checked against its type."""
    if not isinstance(obj, dict):
        raise MessageError(f"{where.rstrip('.') or cls.__name__} must be an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in obj:
            values[f.name] = _value(f"{where}{f.name}", hints[f.name], obj[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{where}{f.name} is missing")
    return cls(**values)


def _value(where: str, hint: typing.Any, raw: object) -> object:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if raw is None and type(None) in typing.get_args(hint):
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(where, inner, raw)
    if origin is tuple:
        if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
            raise MessageError(f"{where} must be a list of at most {MAX_ITEMS} items")
        inner = typing.get_args(hint)[0]
        return tuple(_value(f"{where}[{i}]", inner, x) for i, x in enumerate(raw))
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, raw, f"{where}.")
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int) or abs(raw) >= 1 << 63:
            raise MessageError(f"{where} must be a whole number, got {_show(raw)}")
        return raw
    if hint is bool:
        if not isinstance(raw, bool):
            raise MessageError(f"{where} must be true or false, got {_show(raw)}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise MessageError(f"{where} must be a finite number, got {_show(raw)}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str) or len(raw) > MAX_STRING:
            raise MessageError(f"{where} must be text of at most {MAX_STRING} characters, "
                               f"got {_show(raw)}")
        return raw
    raise TypeError(f"{where}: no decoder for {hint!r}")     # a programming error


def _show(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise MessageError(f"{name} must be > 0, got {value}")


def _node_rank(value: int) -> None:
    if not -1 <= value < MAX_NODES:
        raise MessageError(f"node_rank must be -1 (none) or 0-{MAX_NODES - 1}, got {value}")


def _not_negative(name: str, value: int) -> None:
    if value < 0:
        raise MessageError(f"{name} must be >= 0, got {value}")
