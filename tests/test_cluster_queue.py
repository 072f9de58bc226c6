"""Two nodes' QueueActors on one real PostgreSQL store, their workers mailboxes driven by the test
(the queue's side of the worker protocol is what is under test, as in test_queue.py): what a node
does when another node's claim wins a race."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from test_queue import Bot, Q

from shoal.actors.pgstore import PgStore
from shoal.actors.queue import GetTask, QueueActor, WaitTask
from shoal.protocols.config import SwarmConfig
from shoal.protocols.tasks import Outcome, TaskSpec, TaskState
from shoal.protocols.workers import Assign
from shoal.runtime.eventbus import EventBus

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def node_queue(url: str, node_id: str) -> AsyncIterator[Q]:
    store = await PgStore.open(url, node_id, lease_s=5.0, heartbeat_s=0.5)
    try:
        bus = EventBus()
        store.attach_bus(bus)  # every node's events on every node's bus, after their rows
        actor = QueueActor(SwarmConfig(), store, bus, rng=random.Random(7))
        async with trio.open_nursery() as nursery:
            address = await nursery.start(actor.run)
            yield Q(address, actor, bus, store)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


async def test_a_claim_lost_to_another_node_leaves_the_worker_untouched_and_idle(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # b's view of the task is stale (its feed held back) while a runs it to the end; then b gets an
    # idle worker, claims the task and loses the compare-and-set, learning the task is done. Its
    # worker never heard of that claim, so it must not be told to restart (that respawned its
    # agent once per lost race: 792 respawns a node in the 3-node throughput benchmark); it takes
    # the next task instead.
    async with node_queue(pg_url, "a") as a, node_queue(pg_url, "b") as b:
        with b.bus.subscribe(["task.submitted"]) as heard:
            (task,) = await a.submit(TaskSpec("first"))
            with trio.fail_after(30):
                await heard.receive()  # b has absorbed the task's row (events follow their rows)
        assert (await b.call(GetTask(task.id))).state is TaskState.READY
        store_b: PgStore = b.store  # type: ignore[assignment]
        monkeypatch.setattr(store_b, "_read_feed", lambda: None)  # b hears nothing for now
        bot_a, bot_b = Bot(a, "a:w1"), Bot(b, "b:w1")
        await bot_a.available()
        claimed = await bot_a.assignment()
        await bot_a.report(claimed, Outcome.DONE, result="ok")
        assert (await a.call(WaitTask(task.id))).state is TaskState.DONE
        await bot_b.available()  # b still sees the task ready: claims it, and loses
        (second,) = await b.submit(TaskSpec("second"))
        nxt = await bot_b.next()
        assert isinstance(nxt, Assign), f"the losing worker was sent {nxt!r}, not the next task"
        assert nxt.assignment.task_id == second.id
        assert b.actor.conflicts >= 1  # b did claim the first task, and lost it
        assert (await b.call(GetTask(task.id))).state is TaskState.DONE  # the row the refusal brought
