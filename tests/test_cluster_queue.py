"""Two nodes' QueueActors on one real PostgreSQL store, their workers mailboxes driven by the test
(the queue's side of the worker protocol is what is under test, as in test_queue.py): what a node
does when another node's claim wins a race."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from clusterkit import pg_rows
from test_queue import Bot, Q

from shoal.actors import queue_cluster
from shoal.actors.cluster import FeedBatch, NodesReport
from shoal.actors.pgschema import open_nodes
from shoal.actors.pgstore import PgStore
from shoal.actors.queue import CancelTask, GetTask, QueueActor, WaitTask
from shoal.actors.queue_cluster import _rank
from shoal.actors.queue_messages import _Feed
from shoal.protocols.config import SwarmConfig
from shoal.protocols.errors import StoreError
from shoal.protocols.tasks import Outcome, TaskSpec, TaskState
from shoal.protocols.workers import Assign
from shoal.runtime.eventbus import EventBus

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def node_queue(
    url: str,
    node_id: str,
    *,
    lease_s: float = 5.0,
    heartbeat_s: float = 0.5,
    poll_s: float = 2.0,
    reconnect_s: float = 60.0,
) -> AsyncIterator[Q]:
    store = await PgStore.open(
        url, node_id, lease_s=lease_s, heartbeat_s=heartbeat_s, poll_s=poll_s, reconnect_s=reconnect_s
    )
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
        monkeypatch.setattr(store_b, "_read_feed", lambda: None)  # b hears nothing for now:
        monkeypatch.setattr(store_b, "_catch_up", lambda notes: False)  # neither read nor notified
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
        # the events of b's losing claim rode with it and were left out with it: the cluster heard
        # of one run of the task, a's (b's events of the second task are there)
        ran = await trio.to_thread.run_sync(
            pg_rows,
            a.store.url,  # type: ignore[attr-defined]
            "SELECT node, data->>'task_id' FROM events WHERE topic = 'task.running' ORDER BY seq",
        )
        assert ran == [("a", task.id), ("b", second.id)]


async def test_a_writes_events_commit_in_its_transaction_and_reach_every_bus(pg_url: str) -> None:
    # a submit's events ride with its rows (one transaction, one notification, one feed read at
    # the other nodes; before, each write was followed by a second transaction of its events) and
    # reach the writer's own bus and the other node's, with the cluster's seq
    async with node_queue(pg_url, "a") as a, node_queue(pg_url, "b") as b:
        with a.bus.subscribe(["task.submitted"]) as mine, b.bus.subscribe(["task.submitted"]) as theirs:
            (task,) = await a.submit(TaskSpec("one"))
            with trio.fail_after(30):
                here, there = await mine.receive(), await theirs.receive()
        assert here.data["task_id"] == there.data["task_id"] == task.id
        assert here.seq == there.seq and not here.remote and there.remote
        ((xid_event,),) = await trio.to_thread.run_sync(
            pg_rows, pg_url, "SELECT xmin::text FROM events WHERE topic = 'task.submitted'"
        )
        xid_log = await trio.to_thread.run_sync(
            pg_rows, pg_url, "SELECT xmin::text FROM task_log WHERE task_id = %s", task.id
        )
        assert (xid_event,) in xid_log, "the submit's events were committed apart from its rows"


async def test_a_task_another_node_made_ready_is_claimed_by_its_preferred_node_alone(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a submits (it has no worker); b and c each have an idle one. Without a preference both
    # claim every task and one compare-and-set loses; with it the node the rendezvous hash prefers
    # claims at once and the other leaves it for CLAIM_GRACE_S (here longer than the test: what is
    # tested is who claims, not how fast a loaded machine's feed is); then, the preferred node
    # busy, the other takes the task once the grace is over
    monkeypatch.setattr(queue_cluster, "CLAIM_GRACE_S", 3600.0)
    quiet = {"lease_s": 120.0, "heartbeat_s": 60.0}  # no heartbeat report during the test
    async with (
        node_queue(pg_url, "a", **quiet) as a,
        node_queue(pg_url, "b", **quiet) as b,
        node_queue(pg_url, "c", **quiet) as c,
    ):
        rows = await trio.to_thread.run_sync(open_nodes, pg_url)
        assert {r.id for r in rows} == {"a", "b", "c"}
        rows = [attrs.evolve(r, workers=0 if r.id == "a" else 1) for r in rows]  # as b's and c's
        for q in (a, b, c):  # heartbeats would report: b and c have a worker each
            await q.address.send(_Feed(NodesReport(tuple(rows), q.store.incarnation)))  # type: ignore[attr-defined]
        bots = {"b": Bot(b, "b:w1"), "c": Bot(c, "c:w1")}
        for bot in bots.values():
            await bot.available()
        send, recv = trio.open_memory_channel[tuple[str, Any]](4)

        async def relay(node: str, bot: Bot) -> None:
            while True:
                await send.send((node, await bot.next(within=math.inf)))

        ran: dict[str, int] = {"b": 0, "c": 0}
        async with trio.open_nursery() as nursery:
            for node, bot in bots.items():
                nursery.start_soon(relay, node, bot)
            for i in range(15):
                (task,) = await a.submit(TaskSpec(f"t{i}"))
                with trio.fail_after(30):
                    node, msg = await recv.receive()
                assert isinstance(msg, Assign) and msg.assignment.task_id == task.id
                preferred = max(("b", "c"), key=lambda n: _rank(task.id, n))
                assert node == preferred, f"task {i} ran on {node}, not on {preferred}"
                ran[node] += 1
                await bots[node].finish(msg.assignment)
                assert (await a.call(WaitTask(task.id))).state is TaskState.DONE
            # b busy with a task of its own; a task b is preferred for goes to c after the grace
            monkeypatch.setattr(queue_cluster, "CLAIM_GRACE_S", 0.2)
            (own,) = await b.submit(TaskSpec("b's own"))
            with trio.fail_after(30):
                node, msg = await recv.receive()
            assert node == "b" and msg.assignment.task_id == own.id
            late = next(f"late{k}" for k in range(100) if _rank(f"late{k}", "b") > _rank(f"late{k}", "c"))
            await a.submit(TaskSpec("for b, run by c", id=late))
            with trio.fail_after(30):
                node, msg = await recv.receive()
            assert (node, msg.assignment.task_id) == ("c", late)
            nursery.cancel_scope.cancel()
        assert b.actor.conflicts == 0 and c.actor.conflicts == 0  # no claim was lost
        assert ran["b"] and ran["c"]  # the hash spreads the tasks


async def test_a_node_claims_the_tasks_preferred_to_it_even_behind_ones_left_to_another(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two tasks made ready at once, the older preferred to c: b's worker, offered the younger
    # (preferred to b), must take that one, not its usual best pick (the older, which b leaves
    # to c); else b claims c's task, c claims it too, and b's own waits for nobody
    monkeypatch.setattr(queue_cluster, "CLAIM_GRACE_S", 3600.0)
    quiet = {"lease_s": 120.0, "heartbeat_s": 60.0}
    async with (
        node_queue(pg_url, "a", **quiet) as a,
        node_queue(pg_url, "b", **quiet) as b,
        node_queue(pg_url, "c", **quiet) as c,
    ):
        rows = await trio.to_thread.run_sync(open_nodes, pg_url)
        rows = [attrs.evolve(r, workers=0 if r.id == "a" else 1) for r in rows]
        for q in (a, b, c):
            await q.address.send(_Feed(NodesReport(tuple(rows), q.store.incarnation)))  # type: ignore[attr-defined]
        bots = {"b": Bot(b, "b:w1"), "c": Bot(c, "c:w1")}
        for bot in bots.values():
            await bot.available()
        ids = [f"t{k}" for k in range(100)]
        for_c = next(t for t in ids if _rank(t, "c") > _rank(t, "b"))
        for_b = next(t for t in ids if _rank(t, "b") > _rank(t, "c"))
        await a.submit(TaskSpec("older, for c", id=for_c), TaskSpec("younger, for b", id=for_b))
        got_b, got_c = await bots["b"].assignment(), await bots["c"].assignment()
        assert (got_b.task_id, got_c.task_id) == (for_b, for_c)
        for node, got in (("b", got_b), ("c", got_c)):
            await bots[node].report(got, Outcome.DONE, result="ok")
        for tid in (for_b, for_c):
            assert (await a.call(WaitTask(tid))).state is TaskState.DONE
        assert b.actor.conflicts == 0 and c.actor.conflicts == 0


async def test_the_feed_brings_another_nodes_long_integers_exactly_and_leaves_out_the_readers_own(
    pg_url: str,
) -> None:
    # a feed page's user json (metadata, usage, an event's data) comes as text, decoded on its own
    # with the long-integer check; the rest of the page (Shoal's bigint columns) skips the check.
    # An integer beyond 64 bits reaches the other node exact, not a float; and a node's feed reads
    # leave out the rows its own incarnation wrote (it has them).
    big, neg = 2**70 + 1, -(2**65) - 3
    async with node_queue(pg_url, "a") as a, node_queue(pg_url, "b") as b:
        with b.bus.subscribe(["task.submitted", "custom.big"]) as heard:
            (task,) = await a.submit(
                TaskSpec("one", metadata={"big": big, "nested": [{"neg": neg}], "x": 1.5})
            )
            a.bus.publish("custom.big", {"big": big, "neg": neg})
            with trio.fail_after(30):
                topics = {(await heard.receive()).topic for _ in range(2)}
                got = await b.call(GetTask(task.id))
        assert topics == {"task.submitted", "custom.big"}
        assert got.metadata == {"big": big, "nested": [{"neg": neg}], "x": 1.5}
        assert type(got.metadata["big"]) is int and type(got.metadata["nested"][0]["neg"]) is int
        event = next(e for e in b.bus.replay(0)[0] if e.topic == "custom.big")
        assert event.data == {"big": big, "neg": neg} and type(event.data["big"]) is int
        # a's own rows are in the log past its position, yet its feed reads handed it none
        assert a.store.feed_rows == 0 and b.store.feed_rows >= 1  # type: ignore[attr-defined]


async def test_an_event_holding_nan_reaches_the_other_node_with_null_not_dropped(pg_url: str) -> None:
    # an event's data is stored as orjson writes it (fastjson.dumps): NaN and the infinities become
    # null, as a strict JSON reader needs; json.dumps wrote NaN, which PostgreSQL's json refuses, so
    # such an event was dropped (the write's one-by-one path) and no other node heard it
    async with node_queue(pg_url, "a") as a, node_queue(pg_url, "b") as b:
        with b.bus.subscribe(["custom.*"]) as heard:
            a.bus.publish("custom.nan", {"x": math.nan, "y": math.inf, "ok": 1})
            a.bus.publish("custom.after", {"ok": 2})
            with trio.fail_after(30):
                got = [await heard.receive(), await heard.receive()]
        assert [(e.topic, e.data) for e in got] == [
            ("custom.nan", {"x": None, "y": None, "ok": 1}),
            ("custom.after", {"ok": 2}),
        ]
        assert a.store.events_dropped == 0  # type: ignore[attr-defined]


async def test_a_small_write_reaches_every_node_in_its_notification_and_a_big_one_by_the_feed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shoal_write's NOTIFY carries a small write (its feed positions, rows, attempts and events):
    # the other node takes its row and events from there, the writer its own events, neither by a
    # feed read; a write too big for a notification (a 10 kB prompt) says so, and the nodes read
    # the feed for it, whole. Another node's notification is taken by the listener as it arrives
    # (the store thread sleeps on); the writer's own, by its store thread (after the write's
    # landing). (Each store's hand-over to its queue is watched: whether a task's row or event came
    # while the store thread was reading the feed, and from which thread; the slow poll, a read
    # that may come first, is an hour away.)
    async with node_queue(pg_url, "a", poll_s=3600) as a, node_queue(pg_url, "b", poll_s=3600) as b:
        by_read: dict[str, set[str]] = {"a": set(), "b": set()}
        by_note: dict[str, set[str]] = {"a": set(), "b": set()}
        pushed_by: dict[tuple[str, str], str] = {}
        for name, q in (("a", a), ("b", b)):
            store: Any = q.store
            reading = [False]

            def read(store: Any = store, reading: list[bool] = reading, orig: Any = store._read_feed) -> None:
                reading[0] = True
                try:
                    orig()
                finally:
                    reading[0] = False

            def push(
                item: Any, name: str = name, reading: list[bool] = reading, orig: Any = store._push
            ) -> None:
                if isinstance(item, FeedBatch):
                    ids = {tid for tid, _row in item.rows} | {e[4].get("task_id") for e in item.events}
                    (by_read if reading[0] else by_note)[name].update(i for i in ids if isinstance(i, str))
                    for i in ids:
                        if isinstance(i, str):
                            pushed_by.setdefault((name, i), threading.current_thread().name)
                orig(item)

            monkeypatch.setattr(store, "_read_feed", read)
            monkeypatch.setattr(store, "_push", push)
        with a.bus.subscribe(["task.submitted"]) as mine, b.bus.subscribe(["task.submitted"]) as theirs:
            # first a big write at each node: hearing the other's proves each listener is there
            # and each feed position past whatever was written before it listened
            for q in (a, b):
                await q.submit(TaskSpec("warm-up " + "y" * 10_000))
            with trio.fail_after(30):
                for _ in range(2):
                    await mine.receive()
                    await theirs.receive()
            (small,) = await a.submit(TaskSpec("small", metadata={"big": 2**70}))
            with trio.fail_after(30):
                here, there = await mine.receive(), await theirs.receive()
            assert here.data["task_id"] == there.data["task_id"] == small.id
            got = await b.call(GetTask(small.id))
            assert got.prompt == "small" and got.metadata == {"big": 2**70}
            (big,) = await a.submit(TaskSpec("x" * 10_000))
            with trio.fail_after(30):
                here, there = await mine.receive(), await theirs.receive()
            assert here.data["task_id"] == there.data["task_id"] == big.id
            assert (await b.call(GetTask(big.id))).prompt == "x" * 10_000
        assert small.id in by_note["a"] and small.id in by_note["b"], (by_note, by_read)
        assert small.id not in by_read["a"] | by_read["b"], (by_note, by_read)
        assert big.id in by_read["a"] and big.id in by_read["b"], (by_note, by_read)
        assert big.id not in by_note["a"] | by_note["b"], (by_note, by_read)
        assert pushed_by[("b", small.id)] == "shoal-pglisten", pushed_by
        assert pushed_by[("a", small.id)] == "shoal-pgstore", pushed_by


async def test_an_event_of_the_nodes_other_actors_waits_briefly_to_commit_with_a_write(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an event another actor publishes (a worker's state) waits up to EVENT_LINGER_S for a write:
    # published right before a submit, it commits in the submit's transaction (one transaction,
    # notification and read at every node where there were two); one with no write to ride with
    # goes alone once the linger is over; the other node hears both. (The linger is 2 s here, so
    # the submit comes within it on a loaded machine too.)
    from shoal.actors import pgstore

    monkeypatch.setattr(pgstore, "EVENT_LINGER_S", 2.0)
    async with node_queue(pg_url, "a") as a, node_queue(pg_url, "b") as b:
        with b.bus.subscribe(["custom.*", "task.submitted"]) as heard:
            a.bus.publish("custom.before", {"n": 1})
            (task,) = await a.submit(TaskSpec("rides"))
            with trio.fail_after(30):
                got = [await heard.receive() for _ in range(2)]
            a.bus.publish("custom.alone", {"n": 2})
            with trio.fail_after(30):
                got.append(await heard.receive())
        assert [e.topic for e in got] == ["custom.before", "task.submitted", "custom.alone"]
        xids = await trio.to_thread.run_sync(
            pg_rows, pg_url, "SELECT topic, xmin::text FROM events WHERE topic LIKE 'custom.%%' ORDER BY seq"
        )
        xid_log = await trio.to_thread.run_sync(
            pg_rows, pg_url, "SELECT xmin::text FROM task_log WHERE task_id = %s", task.id
        )
        assert xids[0][0] == "custom.before" and (xids[0][1],) in xid_log, (xids, xid_log)
        assert xids[1][0] == "custom.alone" and (xids[1][1],) not in xid_log


async def test_the_events_waiting_for_a_write_go_after_the_linger_at_a_batch_and_never_while_broken(
    pg_url: str,
) -> None:
    # the store thread's deadline for relayed events (pgstore._events_deadline): none without
    # events; the first one's time plus EVENT_LINGER_S; at once once EVENT_BATCH wait; and never
    # while the store is broken (they wait for the write that probes it: before, the store thread
    # spun on them at full speed until PostgreSQL came back)
    from shoal.actors import pgstore
    from shoal.protocols.errors import StoreError

    store = await PgStore.open(pg_url, "a", poll_s=3600)
    try:
        store.attach_bus(EventBus())
        with store._cv:  # the store thread waits for this lock: it sees none of what follows
            assert store._events_deadline() == math.inf
            t0 = time.monotonic()
            store.relay_event("custom.one", {})
            due = store._events_deadline()
            assert t0 + pgstore.EVENT_LINGER_S <= due <= time.monotonic() + pgstore.EVENT_LINGER_S
            for i in range(pgstore.EVENT_BATCH - 1):
                store.relay_event("custom.more", {"i": i})
            assert store._events_deadline() == -math.inf
            store._broken = StoreError("down")
            assert store._events_deadline() == math.inf
            store._broken = None
    finally:
        await store.aclose()


async def test_a_nodes_own_events_reach_its_bus_while_postgresql_is_down_and_only_once(
    pg_cluster: Any,
) -> None:
    # a node's events reach its own bus through the store (one order at every gateway); while
    # PostgreSQL is down that was silence there: no `queue.store_failed` (nor its alert), no worker
    # crash, until it came back. They are delivered at once then to the subscribers that asked
    # (alerts, metrics, the event log), not a second time when written; a gateway's subscription,
    # which orders and resumes by seq, and the other node get them written, with the cluster's seq
    url = pg_cluster.create_database()
    fast = {"heartbeat_s": 0.2, "reconnect_s": 1.0}
    async with node_queue(url, "a", **fast) as a, node_queue(url, "b", **fast) as b:
        with (
            a.bus.subscribe(["queue.store_*", "custom.*"], outage=True) as mine,
            a.bus.subscribe(["custom.*"]) as ordered,
            b.bus.subscribe(["custom.*"]) as theirs,
        ):
            try:
                await trio.to_thread.run_sync(pg_cluster.stop)
                with trio.fail_after(60), pytest.raises(StoreError):
                    await a.submit(TaskSpec("during the outage"))  # a's store gives up: read-only
                with trio.fail_after(30):
                    failed = await mine.receive()
                assert failed.topic == "queue.store_failed"
                a.bus.publish("custom.during", {"n": 1})
                with trio.fail_after(30):
                    during = await mine.receive()
                assert (during.topic, during.data) == ("custom.during", {"n": 1})
                with pytest.raises(trio.WouldBlock):
                    ordered.receive_nowait()
            finally:
                await trio.to_thread.run_sync(pg_cluster.start)
            with trio.fail_after(90):
                heard = await theirs.receive()  # written once a's store could write again
                recovered = await mine.receive()
            assert (heard.topic, heard.data, heard.remote) == ("custom.during", {"n": 1}, True)
            with trio.fail_after(30):
                here = await ordered.receive()
            assert (here.topic, here.seq, here.remote) == ("custom.during", heard.seq, False)
            assert recovered.topic == "queue.store_recovered"
            a.bus.publish("custom.after", {})
            with trio.fail_after(30):
                after = await mine.receive()  # not custom.during again: it was passed over
            assert after.topic == "custom.after" and after.seq > heard.seq


@asynccontextmanager
async def _a_and_b(pg_url: str) -> AsyncIterator[tuple[Q, Q]]:
    """Nodes a (no worker) and b (one), each told so as a heartbeat would; no real heartbeat
    report comes during the test."""
    quiet = {"lease_s": 120.0, "heartbeat_s": 60.0}
    async with node_queue(pg_url, "a", **quiet) as a, node_queue(pg_url, "b", **quiet) as b:
        await _cluster_of(a, b, workers={"b": 1})
        yield a, b


async def _cluster_of(*queues: Q, workers: dict[str, int]) -> None:
    """Tell each node what a heartbeat would: the nodes alive, and how many workers each has."""
    rows = await trio.to_thread.run_sync(open_nodes, queues[0].store.url)  # type: ignore[attr-defined]
    rows = [attrs.evolve(r, workers=workers.get(r.id, 0)) for r in rows]
    for q in queues:
        await q.address.send(_Feed(NodesReport(tuple(rows), q.store.incarnation)))  # type: ignore[attr-defined]


async def _idle_heard(
    at: Q, on: Q, worker: str, model: str | None = "sonnet", caps: list[str] | None = None
) -> None:
    """`worker` of node `on` says it is idle (its supervisor's event), and node `at` has heard it."""
    with at.bus.subscribe(["worker.state"]) as heard:
        on.bus.publish(
            "worker.state", {"worker": worker, "state": "idle", "model": model, "capabilities": caps}
        )
        with trio.fail_after(30):
            while (await heard.receive()).data.get("worker") != worker:
                pass


async def test_a_task_submitted_where_no_worker_is_idle_is_claimed_for_another_nodes_idle_worker(
    pg_url: str,
) -> None:
    # a has no worker, b an idle one that a heard of (its worker.state event): a claims the task
    # for b's worker in the submit's own write (booking); b hands it to the worker as the row
    # reaches its feed, with no write of its own (one commit less before the agent reads the
    # prompt). The worker then runs it as any task: its report is b's write, fenced as ever.
    async with _a_and_b(pg_url) as (a, b):
        bot = Bot(b, "b:w1")
        await bot.available()
        await _idle_heard(a, b, "b:w1")
        (task,) = await a.submit(TaskSpec("for b's idle worker"))
        got = await bot.assignment()
        assert (got.task_id, got.attempt, got.model, got.prompt) == (
            task.id,
            1,
            "sonnet",
            "for b's idle worker",
        )
        assert (a.actor.booked, b.actor.bookings_taken, b.actor.bookings_declined) == (1, 1, 0)
        ran = await trio.to_thread.run_sync(
            pg_rows, pg_url, "SELECT node, data->>'worker' FROM events WHERE topic = 'task.running'"
        )
        assert ran == [("a", "b:w1")]  # the claim was a's write: b wrote nothing to start it
        await bot.finish(got, result="ok")
        with trio.fail_after(30):
            done = await a.call(WaitTask(task.id))
        assert done.state is TaskState.DONE and done.result == "ok"
        assert [(t.worker, t.outcome) for t in done.attempts] == [("b:w1", Outcome.DONE)]
        # b's worker is busy again as far as a knows (the row showed its attempt) until it says
        # idle: the next task is not booked for it, and waits ready for a worker
        (second,) = await a.submit(TaskSpec("no idle worker known"))
        assert a.actor.booked == 1 and (await a.call(GetTask(second.id))).state is TaskState.READY
        assert b.actor.conflicts == 0 and a.actor.conflicts == 0


async def test_a_booking_of_a_worker_no_longer_idle_is_handed_back_uncounted_and_runs_elsewhere(
    pg_url: str,
) -> None:
    # a heard b's worker is idle, but b has given it nothing to hold (it never said so to b's
    # queue here: as a worker that took one of b's own tasks meanwhile): b hands the booking back:
    # the attempt ends interrupted, not counted, and the task is ready again; b's worker that
    # then turns idle takes it (attempt 2)
    async with _a_and_b(pg_url) as (a, b):
        await _idle_heard(a, b, "b:w9")
        with a.bus.subscribe(["task.requeued"]) as requeued:
            (task,) = await a.submit(TaskSpec("booked too late"))
            with trio.fail_after(30):
                back = await requeued.receive()
        assert back.data["task_id"] == task.id and back.data["worker"] == "b:w9"
        assert (a.actor.booked, b.actor.bookings_taken, b.actor.bookings_declined) == (1, 0, 1)
        seen = await b.call(GetTask(task.id))
        assert seen.state is TaskState.READY and seen.attempts[0].outcome is Outcome.INTERRUPTED
        assert "not idle when another node booked it" in (seen.attempts[0].reason or "")
        bot = Bot(b, "b:w2")
        await bot.available()
        got = await bot.assignment()
        assert (got.task_id, got.attempt) == (task.id, 2)
        await bot.finish(got)
        with trio.fail_after(30):
            done = await a.call(WaitTask(task.id))
        assert done.state is TaskState.DONE and len(done.attempts) == 2
        assert (done.attempt_counts.used, done.attempt_counts.interrupted) == (1, 1)


async def test_a_booking_honours_the_idle_workers_capabilities(pg_url: str) -> None:
    # b's idle worker takes docs tasks only (its worker.state event says so): a does not book it
    # for a code task (that waits ready for a worker that takes it), and does for a docs task
    # (once the code task is gone: with more tasks ready than idle workers heard of, a books none)
    async with _a_and_b(pg_url) as (a, b):
        bot = Bot(b, "b:w1", caps=frozenset({"docs"}))
        await bot.available()
        await _idle_heard(a, b, "b:w1", caps=["docs"])
        (code,) = await a.submit(TaskSpec("code task", category="code"))
        assert a.actor.booked == 0 and (await a.call(GetTask(code.id))).state is TaskState.READY
        await a.call(CancelTask(code.id))
        (docs,) = await a.submit(TaskSpec("docs task", category="docs"))
        got = await bot.assignment()
        assert got.task_id == docs.id and a.actor.booked == 1
