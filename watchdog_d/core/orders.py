"""What a node must do whatever it heard before: the orders sent with every ack (pure).

Verbs are idempotent on the node (the agent hands each (verb, attempt) to the wrapper
once), so a lost command, a node cut off for a while or a coordinator that restarted
still gets every node to the same place.
"""
from __future__ import annotations

from typing import Iterable

from .book import JobBook
from .decision import Order
from .owner import Refusal
from .standby import Standby


def standing(node_id: str, jobs: dict[str, JobBook], node_jobs: Iterable[str],
             refused: dict[tuple[str, str], Refusal], standby: Standby) -> list[Order]:
    """Verbs a node must carry out whatever it heard before: the teardown (or the
    restart's teardown) of a stopping attempt it is part of; the relaunch of a newer
    generation it has not started; the end of a job it waits in that will not
    come back."""
    out = [Order(r.job_id, "refuse", 0, action=r.reason)
           for (_, node), r in sorted(refused.items()) if node == node_id]
    out += standby.orders(node_id, jobs)
    for job_id in sorted(node_jobs):
        book = jobs.get(job_id)
        node = book.nodes.get(node_id) if book is not None else None
        why = book.leaving.get(node_id) or book.left.get(node_id) if book is not None else None
        if why:
            out.append(Order(job_id, "leave", book.attempt, book.verdict, f"suspect ({why})"))
            continue
        if node is None:
            continue
        behind = node.attempt_seen < book.attempt
        action = book.action if book.outcome != "stopped" else "stopped"
        step, path = book.offer
        if behind and book.status == "running":
            out.append(Order(job_id, "relaunch", book.attempt, resume_from=path, resume_step=step,
                             node_rank=book.handed.get(node_id, -1)))
        elif node.part.state == "waiting":
            if not book.relaunch_due:
                # it tore its ranks down for a relaunch that is not coming
                out.append(Order(job_id, "teardown", max(book.attempt, node.attempt_seen),
                                 book.verdict, action))
        elif not behind and book.status == "stopping" and book.verdict is not None:
            out.append(Order(job_id, "restart" if book.relaunch_due else "teardown", book.attempt,
                             book.verdict, action, resume_from=path, resume_step=step))
    return out
