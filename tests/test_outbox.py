"""A node's outbox (coordinator/service.py): bounded while nobody listens, nothing lost
between two Watch streams."""
from __future__ import annotations

import asyncio

from watchdog_d.coordinator.service import PENDING_MAX, Outbox
from watchdog_d.proto import watchdog_pb2 as pb


def test_a_node_that_never_listens_holds_at_most_pending_max_commands() -> None:
    box = Outbox()
    kept = [box.put(pb.Command(job_id="j", verb="dump_stacks", attempt=i)) for i in range(PENDING_MAX + 500)]
    assert kept[:PENDING_MAX] == [True] * PENDING_MAX and not any(kept[PENDING_MAX:])
    assert len(box.pending) == PENDING_MAX
    assert box.pending[0].attempt == 500         # the oldest made room for the newest


def test_commands_not_delivered_by_a_stream_that_ended_go_to_the_next() -> None:
    async def scenario() -> list[int]:
        box = Outbox()
        first = box.open()
        for i in range(3):
            box.put(pb.Command(job_id="j", verb="teardown", attempt=i))
        assert (await first.get()).attempt == 0
        box.close(first)                              # the stream broke after one
        assert box.idle is False
        second = box.open()
        return [(await second.get()).attempt for _ in range(2)]

    assert asyncio.run(scenario()) == [1, 2]
