"""The QueueActor: durable acknowledgements, dispatch, outcomes, timers, controls, recovery.

Workers here are real mailboxes driven by the test: the queue's side of the worker protocol
(`WorkerAvailable` in, `Assign` out, `AttemptEnded` in) is what is under test.
"""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from shoal.actors.queue import (
    AssignTask,
    AttemptEnded,
    Barrier,
    BoostTask,
    CancelTask,
    CompleteTask,
    GetTask,
    ListTasks,
    ModelExtraUsage,
    ModelQuota,
    ModelRateLimited,
    ModelRetrying,
    PauseModel,
    QueueActor,
    QueueStats,
    ResumeModel,
    RetireWorker,
    RetryTask,
    SkipTask,
    Stats,
    Submit,
    UpdateConfig,
    WaitTask,
    WorkerAvailable,
    WorkerUnavailable,
)
from shoal.actors.store import Store, Ticket
from shoal.protocols.config import BackoffConfig, LimitsConfig, ModelsConfig, QueueConfig, SwarmConfig
from shoal.protocols.errors import Conflict, NotFound, StoreError, ValidationError
from shoal.protocols.tasks import Assignment, Outcome, Task, TaskSpec, TaskState
from shoal.protocols.workers import Assign, Restart, TaskFinished
from shoal.runtime.actor import Address, Mailbox
from shoal.runtime.eventbus import EventBus, Subscription


@attrs.define
class Q:
    address: Address[Any]
    actor: QueueActor
    bus: EventBus
    store: Store

    async def submit(self, *specs: TaskSpec) -> list[Task]:
        result: list[Task] = await self.address.call(Submit(tuple(specs)))
        return result

    async def call(self, msg: Any) -> Any:
        return await self.address.call(msg)

    async def stats(self) -> Stats:
        stats: Stats = await self.address.call(QueueStats())
        return stats


@asynccontextmanager
async def running_queue(
    config: SwarmConfig | None = None, path: str | Path = ":memory:", store: Store | None = None
) -> AsyncIterator[Q]:
    own = store is None
    store = store or await Store.open(path)
    try:
        bus = EventBus()
        actor = QueueActor(config or SwarmConfig(), store, bus, rng=random.Random(7))
        async with trio.open_nursery() as nursery:
            address = await nursery.start(actor.run)
            yield Q(address, actor, bus, store)
            nursery.cancel_scope.cancel()
    finally:
        if own:
            await store.aclose()


class Bot:
    """A worker's mailbox, driven by the test."""

    def __init__(
        self, q: Q, wid: str, model: str | None = "sonnet", caps: frozenset[str] | None = None, size: int = 16
    ) -> None:
        self.q = q
        self.id = wid
        self.model = model
        self.caps = caps
        self.history: tuple[str, ...] = ()
        self.mailbox: Mailbox[Any] = Mailbox(wid, size)

    async def available(self) -> None:
        await self.q.address.send(
            WorkerAvailable(self.id, self.model, self.caps, self.history, self.mailbox.address)
        )

    async def next(self, within: float = 30) -> Any:
        with trio.fail_after(within):
            return await self.mailbox.receive()

    async def assignment(self, within: float = 30) -> Assignment:
        msg = await self.next(within)
        assert isinstance(msg, Assign), msg
        return msg.assignment

    def nothing_yet(self) -> bool:
        try:
            msg = self.mailbox.receive_nowait()
        except trio.WouldBlock:
            return True
        raise AssertionError(f"unexpected {msg!r}")

    async def report(self, a: Assignment, outcome: Outcome, **kw: Any) -> None:
        await self.q.address.send(AttemptEnded(TaskFinished(self.id, a.task_id, a.attempt, outcome, **kw)))

    async def finish(self, a: Assignment, outcome: Outcome = Outcome.DONE, **kw: Any) -> None:
        await self.report(a, outcome, **kw)
        await self.available()


async def next_event(sub: Subscription, topic: str) -> dict[str, Any]:
    with trio.fail_after(30):
        async for event in sub:
            if event.topic == topic:
                return event.data
    raise AssertionError("subscription closed")


# ---- submit and dispatch -------------------------------------------------------------------


async def test_submit_is_acknowledged_after_commit(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "shoal.db"
    async with running_queue(path=path) as q:
        (task,) = await q.submit(TaskSpec("hello", id="t1", priority=2))
        assert task.id == "t1" and task.state is TaskState.READY

        def read() -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(path)  # another connection only sees committed data
            try:
                return conn.execute("SELECT id, state, prompt FROM tasks").fetchall()
            finally:
                conn.close()

        assert await trio.to_thread.run_sync(read) == [("t1", "ready", "hello")]
        # idempotent: same content, same task; different content: a conflict naming the id
        (again,) = await q.submit(TaskSpec("hello", id="t1", priority=2))
        assert again.created == task.created
        with pytest.raises(Conflict, match="'t1'"):
            await q.submit(TaskSpec("bye", id="t1"))
        assert (await q.stats()).total == 1


async def test_dispatch_runs_a_task_end_to_end() -> None:
    async with running_queue() as q:
        sub = q.bus.subscribe(["task.*"])
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("do it", id="a", category="code", timeout_s=5))
        a = await bot.assignment()
        assert (a.task_id, a.attempt, a.prompt, a.category, a.model, a.timeout_s) == (
            "a",
            1,
            "do it",
            "code",
            "sonnet",
            5.0,
        )
        running = await q.call(GetTask("a"))
        assert running.state is TaskState.RUNNING and running.worker == "w1"
        await bot.finish(a, result="42", usage={"output_tokens": 3})
        done = await q.call(WaitTask("a"))
        assert done.state is TaskState.DONE and done.result == "42" and done.usage == {"output_tokens": 3}
        topics = []
        with trio.fail_after(30):
            async for event in sub:
                topics.append(event.topic)
                if event.topic == "task.done":
                    break
        assert topics == ["task.submitted", "task.ready", "task.running", "task.done"]


async def test_waiting_worker_gets_the_best_task_and_idle_worker_gets_new_ones() -> None:
    cfg = SwarmConfig(queue=QueueConfig(affinity_bonus=5))
    async with running_queue(cfg) as q:
        await q.submit(
            TaskSpec("x", id="low", priority=1),
            TaskSpec("y", id="high", priority=4, category="docs"),
            TaskSpec("z", id="mine", priority=2, category="test"),
        )
        tester = Bot(q, "tester")
        tester.history = ("test",)
        await tester.available()
        assert (await tester.assignment()).task_id == "mine"  # 2 + 5 > 4
        other = Bot(q, "other", caps=frozenset({"code"}))
        await other.available()
        assert (await other.assignment()).task_id == "low"  # docs is not in its capabilities
        # an idle worker takes a new task the moment it is submitted
        idle = Bot(q, "idle")
        await idle.available()
        await q.submit(TaskSpec("w", id="new"))
        assert (await idle.assignment()).task_id in ("high", "new")
        stats = await q.stats()
        assert stats.running == 3 and stats.ready == 1


async def test_dependencies_release_through_the_actor() -> None:
    async with running_queue() as q:
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("b", id="b", deps=("a",)), TaskSpec("a", id="a"))
        a = await bot.assignment()
        assert a.task_id == "a"
        assert (await q.call(GetTask("b"))).state is TaskState.BLOCKED
        await bot.finish(a, result="ok")
        assert (await bot.assignment()).task_id == "b"


async def test_retry_backoff_then_dead_letter(autojump_clock: trio.abc.Clock) -> None:
    cfg = SwarmConfig(queue=QueueConfig(model_failure_limit=10))
    async with running_queue(cfg) as q:
        sub = q.bus.subscribe(["task.failed", "task.dead"])
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("flaky", id="f", max_attempts=3))
        a = await bot.assignment()
        for n in (1, 2):
            assert a.attempt == 2 * n - 1
            failed_at = trio.current_time()
            await bot.finish(a, Outcome.FAILED, reason=f"no {n}")
            ev = await next_event(sub, "task.failed")
            assert ev["will_retry"] is True and ev["reason"] == f"no {n}"
            t = await q.call(GetTask("f"))
            assert t.state is TaskState.FAILED
            a = await bot.assignment()  # the backoff timer fires on the trio clock
            waited = trio.current_time() - failed_at
            assert 2 ** (n - 1) <= waited <= 2 ** (n - 1) * 1.1 + 0.01
            assert a.attempt == 2 * n
            await bot.report(a, Outcome.INTERRUPTED, reason="context refresh")  # not counted
            await bot.available()
            a = await bot.assignment()  # straight back, no backoff
        await bot.finish(a, Outcome.TIMEOUT, reason="too slow")
        dead = await q.call(WaitTask("f"))
        assert dead.state is TaskState.DEAD and "attempts exhausted (3/3)" in (dead.reason or "")
        assert [x.outcome for x in dead.attempts] == [
            Outcome.FAILED,
            Outcome.INTERRUPTED,
            Outcome.FAILED,
            Outcome.INTERRUPTED,
            Outcome.TIMEOUT,
        ]
        assert (await next_event(sub, "task.dead"))["task_id"] == "f"


async def test_stale_reports_are_ignored_and_counted() -> None:
    async with running_queue() as q:
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("p", id="t"))
        a = await bot.assignment()
        await bot.report(attrs.evolve(a, attempt=7), Outcome.DONE, result="wrong attempt")
        await bot.report(a, Outcome.DONE, result="right")
        await bot.report(a, Outcome.DONE, result="twice")
        t = await q.call(WaitTask("t"))
        assert t.result == "right" and len(t.attempts) == 1
        assert (await q.stats()).stale_reports == 2


async def test_explicit_completion_names_the_open_attempt() -> None:
    async with running_queue() as q:
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("p", id="t"))
        a = await bot.assignment()
        with pytest.raises(Conflict, match="attempt 2 of task 't' is not open"):
            await q.call(CompleteTask("t", 2, "done", "x"))
        with pytest.raises(ValidationError, match="status"):
            await q.call(CompleteTask("t", 1, "maybe"))  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await q.call(CompleteTask("nope", 1, "done"))
        t = await q.call(CompleteTask("t", a.attempt, "done", "via gateway"))
        assert t.state is TaskState.DONE and t.result == "via gateway"
        with pytest.raises(Conflict):
            await q.call(CompleteTask("t", a.attempt, "done", "again"))
        await bot.report(a, Outcome.DONE, result="late report")  # stale now
        assert (await q.call(GetTask("t"))).result == "via gateway"


# ---- workers coming and going --------------------------------------------------------------


async def test_worker_gone_mid_task_returns_it_to_the_queue(autojump_clock: trio.abc.Clock) -> None:
    async with running_queue() as q:
        first, second = Bot(q, "w1"), Bot(q, "w2")
        await first.available()
        await q.submit(TaskSpec("p", id="t"))
        a = await first.assignment()
        await second.available()
        await q.address.send(WorkerUnavailable("w1", gone=True))
        b = await second.assignment()  # after the retry backoff
        assert (b.task_id, b.attempt) == ("t", 2)
        t = await q.call(GetTask("t"))
        assert t.attempts[0].outcome is Outcome.CRASHED and t.attempts[0].worker == "w1"
        await first.report(a, Outcome.DONE, result="ghost")  # stale
        await second.finish(b, result="real")
        assert (await q.call(WaitTask("t"))).result == "real"


async def test_unreachable_worker_claim_is_undone() -> None:
    async with running_queue() as q:
        sub = q.bus.subscribe(["queue.worker_unreachable"])
        dead = Bot(q, "dead")
        await dead.available()
        dead.mailbox.close()  # the worker actor has gone, the queue does not know yet
        full = Bot(q, "full", size=1)
        await full.available()
        await full.mailbox.address.send("filler")  # its mailbox is full
        good = Bot(q, "good")
        await good.available()
        await q.submit(TaskSpec("p", id="t"))
        a = await good.assignment()
        t = await q.call(GetTask("t"))
        assert [(x.worker, x.outcome, x.reason) for x in t.attempts[:-1]] == [
            ("dead", Outcome.INTERRUPTED, "worker unreachable"),
            ("full", Outcome.INTERRUPTED, "worker unreachable"),
        ]
        assert a.attempt == 3 and t.state is TaskState.RUNNING
        assert (await next_event(sub, "queue.worker_unreachable"))["gone"] is True
        stats = await q.stats()
        assert stats.known_workers == 2 and stats.idle_workers == 0


async def test_paused_workers_take_nothing_and_retire_handshake() -> None:
    async with running_queue() as q:
        bot = Bot(q, "w1")
        await bot.available()
        await q.address.send(WorkerUnavailable("w1", gone=False))
        await q.submit(TaskSpec("p", id="t"))
        assert bot.nothing_yet()
        assert (await q.stats()).ready == 1
        await bot.available()  # resumed
        a = await bot.assignment()
        assert await q.call(RetireWorker("w1")) is False  # it holds a claim
        await bot.finish(a)
        assert await q.call(RetireWorker("w1")) is True
        await q.submit(TaskSpec("p2", id="t2"))
        assert bot.nothing_yet()  # retired: takes nothing
        assert await q.call(RetireWorker("never-seen")) is True


async def test_an_announcement_sent_before_the_assign_was_read_keeps_the_claim() -> None:
    async with running_queue() as q:
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("p", id="t"), TaskSpec("q", id="u"))
        a = await bot.assignment()
        await bot.available()  # crossed our Assign in flight: the worker still holds the claim
        t = await q.call(GetTask("t"))  # handled after the announcement (one mailbox, in order)
        assert bot.nothing_yet()  # no second task while it holds one
        assert q.actor.stale_announcements == 1
        assert t.state is TaskState.RUNNING and t.worker == "w1" and len(t.attempts) == 1
        await bot.finish(a, result="done once")
        assert (await q.call(WaitTask("t"))).result == "done once"
        assert (await bot.assignment()).task_id == "u"


# ---- models and rate limits ----------------------------------------------------------------


async def test_rate_limited_model_is_parked_until_reset(autojump_clock: trio.abc.Clock) -> None:
    cfg = SwarmConfig(models=ModelsConfig(category_models={"review": "opus"}, fallback={"opus": ("sonnet",)}))
    async with running_queue(cfg) as q:
        opus, sonnet = Bot(q, "o", "opus"), Bot(q, "s", "sonnet")
        await opus.available()
        await q.submit(
            TaskSpec("pinned", id="pin", model="opus", priority=9),
            TaskSpec("soft", id="soft", category="review", priority=5),
        )
        a = await opus.assignment()
        assert a.task_id == "pin"
        reset = q.actor._now() + 120
        await opus.report(a, Outcome.RATE_LIMITED, reason="usage limit", reset_at=reset, model="opus")
        await opus.available()
        stats = await q.stats()
        assert stats.parked_models == {"opus": reset} and stats.ready == 2
        await sonnet.available()
        assert (await sonnet.assignment()).task_id == "soft"  # soft routing falls back
        assert opus.nothing_yet()
        start = trio.current_time()
        b = await opus.assignment(within=300)  # the pinned task waited for the reset
        assert (b.task_id, b.attempt) == ("pin", 2)
        assert trio.current_time() - start == pytest.approx(120, abs=0.5)
        t = await q.call(GetTask("pin"))
        assert t.attempts[0].outcome is Outcome.RATE_LIMITED and t.max_attempts == 3
        await q.address.send(ModelRateLimited("sonnet", None))
        assert (await q.stats()).parked_models["sonnet"] > 0


async def test_unknown_model_is_refused_and_stats_count_demand_per_model() -> None:
    async with running_queue() as q:
        with pytest.raises(ValidationError) as err:
            await q.submit(TaskSpec("p", model="gpt-5"))
        assert err.value.field == "model"
        await q.submit(
            TaskSpec("a", model="opus"), TaskSpec("b", model="opus"), TaskSpec("c"), TaskSpec("d", deps=())
        )
        assert (await q.stats()).ready_by_model == {"opus": 2, None: 2}
        await q.address.send(UpdateConfig(SwarmConfig(models=ModelsConfig(category_models={}))))
        assert (await q.stats()).ready_by_model == {"opus": 2, None: 2}


# ---- operator controls ---------------------------------------------------------------------


async def test_cancel_running_task_interrupts_its_worker() -> None:
    async with running_queue() as q:
        sub = q.bus.subscribe(["task.cancelled"])
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("p", id="t"), TaskSpec("q", id="after", deps=("t",)))
        a = await bot.assignment()
        t = await q.call(CancelTask("t"))
        assert t.state is TaskState.CANCELLED and t.attempts[0].outcome is Outcome.CANCELLED
        restart = await bot.next()
        assert isinstance(restart, Restart) and restart.wait is False and "cancelled" in restart.reason
        assert (await next_event(sub, "task.cancelled"))["task_id"] == "t"
        after = await q.call(WaitTask("after"))
        assert after.state is TaskState.DEAD and after.reason == "dependency 't' cancelled"
        await bot.report(a, Outcome.INTERRUPTED)  # stale
        with pytest.raises(Conflict):
            await q.call(CancelTask("t"))


async def test_skip_boost_assign_retry() -> None:
    async with running_queue() as q:
        busy = Bot(q, "busy")
        await busy.available()
        await q.submit(TaskSpec("first", id="first"))
        first = await busy.assignment()
        await q.submit(
            TaskSpec("a", id="a", priority=1), TaskSpec("b", id="b", priority=5), TaskSpec("c", id="c")
        )
        assert (await q.call(SkipTask("c"))).state is TaskState.SKIPPED
        assert (await q.call(BoostTask("a", 9))).priority == 9
        with pytest.raises(ValidationError):
            await q.call(BoostTask("a", -1))
        with pytest.raises(NotFound, match="worker"):
            await q.call(AssignTask("b", "nobody"))
        assigned = await q.call(AssignTask("b", "busy"))
        assert assigned.worker == "busy"
        other = Bot(q, "other")
        await other.available()
        assert (await other.assignment()).task_id == "a"  # b waits for its worker
        await busy.finish(first)
        assert (await busy.assignment()).task_id == "b"
        retried = await q.call(RetryTask("c"))
        assert retried.state is TaskState.READY
        with pytest.raises(Conflict, match="cannot retry"):
            await q.call(RetryTask("a"))


async def test_bad_requests_do_not_hurt_the_queue() -> None:
    async with running_queue() as q:
        with pytest.raises(NotFound):
            await q.call(GetTask("missing"))
        with pytest.raises(ValidationError):
            await q.call("what is this")
        await q.address.send(object())  # garbage sends are dropped
        await q.address.send(WorkerAvailable("", None, None, (), q.address))  # bad worker id
        await q.address.send(WorkerAvailable("w", None, None, (), "not an address"))  # type: ignore[arg-type]
        await q.address.send(WorkerAvailable("w", ["list"], None, (), q.address))  # type: ignore[arg-type]
        await q.address.send(ModelRateLimited("sonnet", "soon"))  # type: ignore[arg-type]
        await q.address.send(AttemptEnded("not a report"))  # type: ignore[arg-type]
        with pytest.raises(ValidationError) as err:
            await q.address.call(Submit(({"prompt": "p", "priority": "high"},)))  # type: ignore[arg-type]
        assert "priority" in err.value.field
        (t,) = await q.address.call(Submit(({"prompt": "from a dict", "id": "d"},)))  # type: ignore[arg-type]
        assert t.id == "d"
        page, cursor = await q.call(ListTasks(limit=10))
        assert [x.id for x in page] == ["d"] and cursor is None
        assert q.actor.unknown_messages == 2
        stats = await q.stats()
        assert stats.known_workers == 0 and stats.parked_models == {}


# ---- recovery ------------------------------------------------------------------------------


async def test_restart_recovers_running_tasks_and_keeps_results(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    async with running_queue(path=path) as q:
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("one", id="one"), TaskSpec("two", id="two"))
        a = await bot.assignment()
        await bot.finish(a, result="first result")
        b = await bot.assignment()
        assert b.task_id == "two"
        await q.call(WaitTask("one"))
    # the process "restarts": a new store and actor on the same file
    async with running_queue(path=path) as q2:
        await q2.submit()  # a barrier: everything before it is committed and published
        events, _complete = q2.bus.replay(0, ["task.recovered"])
        assert [(e.data["task_id"], e.data["attempt"], e.data["worker"]) for e in events] == [
            ("two", 1, "w1")
        ]
        one = await q2.call(GetTask("one"))
        assert one.state is TaskState.DONE and one.result == "first result"
        two = await q2.call(GetTask("two"))
        assert two.state is TaskState.READY
        assert two.attempts[0].outcome is Outcome.INTERRUPTED
        assert two.attempts[0].reason == "shoal restarted while the attempt ran"
        bot = Bot(q2, "w2")
        await bot.available()
        c = await bot.assignment()
        assert (c.task_id, c.attempt) == ("two", 2)


async def test_concurrent_submits_share_commits(tmp_path: Path) -> None:
    async with running_queue(path=tmp_path / "shoal.db") as q:
        before = q.store.commits

        async def one(i: int) -> None:
            await q.submit(TaskSpec(f"p{i}", id=f"t{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
        stats = await q.stats()
        assert stats.total == 100
        assert q.store.commits - before < 50  # group commit: many submits per transaction


async def test_a_reply_with_nothing_to_write_skips_the_store_yet_waits_for_the_writes_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a call that changes nothing (a stats call, the Barrier each worker event waits behind) costs
    # no round trip to the store's thread, and is still answered only after every write before it
    # committed: the events of those writes come first
    async with running_queue() as q:
        store: Any = q.store
        writes: list[tuple[Any, Ticket]] = []

        def write(changes: Any) -> Ticket:
            ticket = Ticket()
            writes.append((changes, ticket))
            return ticket

        monkeypatch.setattr(store, "write", write)
        replies: list[str] = []

        async def submit() -> None:
            await q.submit(TaskSpec("held"))
            replies.append("submit")

        async def barrier() -> None:
            await q.call(Barrier())
            replies.append("barrier")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(barrier)
            await trio.testing.wait_all_tasks_blocked()
            # the queue took both: the submit's write is held, the barrier made none and waits
            assert len(writes) == 1 and replies == []
            changes, ticket = writes[0]
            monkeypatch.undo()
            await store.commit(changes)
            ticket._resolve(None, None)
        assert replies == ["submit", "barrier"]
        assert len(writes) == 1
        assert (await q.stats()).total == 1  # (answered at once: nothing held before it now)


async def test_a_failing_store_makes_the_queue_read_only_until_a_probe_commits(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A real write failure (SQLite turned read-only): the failed submit is not in the book, the
    queue refuses changes and dispatches nothing, probes follow the backoff (1, 2, 4 s, capped at
    4), and once a probe commits the queue reloads from the store and goes on by itself: nothing
    acknowledged before is lost, an attempt finished while the disk failed runs again."""
    async with running_queue() as q:
        q.actor.store_retry = BackoffConfig(min_s=1.0, max_s=4.0, factor=2.0, jitter=0.0)
        sub = q.bus.subscribe(["queue.*"])
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("run me", id="run"))
        a = await bot.assignment()
        await q.submit(TaskSpec("kept", id="kept"))
        assert q.store._conn is not None
        q.store._conn.execute("PRAGMA query_only = ON")  # from now on every write fails
        t0 = trio.current_time()
        with pytest.raises(StoreError, match="write failed"):
            await q.submit(TaskSpec("new", id="new"))
        failed = await next_event(sub, "queue.store_failed")
        assert "readonly" in failed["error"] and failed["retry_in_s"] == 1.0
        with pytest.raises(NotFound):  # the submit that failed is not in the book either
            await q.call(GetTask("new"))
        with pytest.raises(StoreError, match="stopped accepting writes"):
            await q.call(CancelTask("kept"))
        assert (await q.call(GetTask("kept"))).state is TaskState.READY  # reads go on
        await bot.finish(a)  # the worker finishes while nothing can be written
        await trio.sleep_until(t0 + 4)  # probes at +1 and +3 failed
        assert (await q.stats()).store_broken is not None and bot.nothing_yet()
        q.store._conn.execute("PRAGMA query_only = OFF")  # space is back
        recovered = await next_event(sub, "queue.store_recovered")
        assert trio.current_time() - t0 == pytest.approx(7, abs=0.01)  # the probe at +1+2+4
        assert recovered["dropped"] == 0 and recovered["recovered"] == 1
        again = await bot.assignment()  # its result never reached the disk: it runs again
        assert (again.task_id, again.attempt) == ("run", 2)
        await q.submit(TaskSpec("after", id="after"))
        stats = await q.stats()
        assert (stats.store_broken, stats.store_failures, stats.store_recoveries) == (None, 1, 1)
        assert {t.id for t in (await q.call(ListTasks()))[0]} == {"run", "kept", "after"}


async def test_a_refused_write_fails_only_its_request_and_leaves_the_book_as_stored() -> None:
    """A write the database refuses for its content (here the task's row is already there, put in
    behind the queue's back) fails that request only: the store is not broken, the queue reloads
    its book from the store (so the refused submit is not in it) and keeps taking writes."""
    from shoal.actors.store import apply_changes
    from shoal.actors.taskbook import TaskBook

    async with running_queue() as q:
        sub = q.bus.subscribe(["queue.*"])
        await q.submit(TaskSpec("kept", id="kept"))
        book = TaskBook()
        book._next_seq = 50  # after the queue's own
        book.submit([TaskSpec("stored elsewhere", id="new")], 0.0)
        assert q.store._conn is not None
        apply_changes(q.store._conn, book.drain()[0])  # autocommit: the row is on disk
        with pytest.raises(StoreError, match=r"write refused.*UNIQUE"):
            await q.submit(TaskSpec("mine", id="new"))
        reloaded = await next_event(sub, "queue.reloaded")
        assert "refused" in reloaded["reason"] and reloaded["tasks"] == 2
        assert (await q.call(GetTask("new"))).prompt == "stored elsewhere"
        await q.submit(TaskSpec("later", id="later"))
        assert (await q.stats()).store_broken is None


async def test_text_that_is_not_utf8_never_reaches_the_book_or_the_store() -> None:
    """Direct users of the queue (below the SwarmHandle's own check) get a ValidationError naming
    the field; a worker report with such text is kept, escaped; the store never breaks."""
    async with running_queue() as q:
        with pytest.raises(ValidationError, match=r"^task\.prompt: is not valid Unicode"):
            await q.submit(TaskSpec("bad \ud800", id="a"))
        with pytest.raises(ValidationError, match=r"^tasks\[1\]\.deps\[0\]"):
            await q.submit(TaskSpec("ok", id="b"), TaskSpec("ok", id="c", deps=("\udcff",)))
        with pytest.raises(ValidationError, match=r"^task\.metadata"):
            await q.submit(TaskSpec("ok", id="d", metadata={"k": ["\ud800"]}))
        with pytest.raises(ValidationError, match=r"prompt: contains a NUL"):
            await q.submit(TaskSpec("nul \x00", id="e"))
        bot = Bot(q, "w1")
        await bot.available()
        await q.submit(TaskSpec("ok", id="f"))
        a = await bot.assignment()
        with pytest.raises(ValidationError, match=r"^result: is not valid Unicode"):
            await q.call(CompleteTask("f", a.attempt, "done", result="\ud800"))
        await bot.finish(a, result="out \udcff")  # e.g. bytes decoded with surrogateescape
        done = await q.call(WaitTask("f"))
        assert done.state is TaskState.DONE and done.result == "out \\udcff"
        stats = await q.stats()
        assert stats.store_broken is None and stats.total == 1


# ---- what agents say about the API and the quota (issue 16) -----------------------------------


async def later_event(sub: Subscription, topic: str, within: float = 700) -> dict[str, Any]:
    with trio.fail_after(within):
        async for event in sub:
            if event.topic == topic:
                return event.data
    raise AssertionError("subscription closed")


async def storm(q: Q, model: str = "sonnet", workers: int = 3) -> None:
    for i in range(workers):
        await q.address.send(ModelRetrying(model, f"w{i}", "overloaded"))


async def test_a_retry_storm_parks_its_model_30_s_doubling_to_600_s(autojump_clock: trio.abc.Clock) -> None:
    async with running_queue() as q:
        with q.bus.subscribe(["model.*"]) as sub:
            # two workers retrying, or one worker retrying many times, is no storm
            await storm(q, workers=2)
            for _ in range(5):
                await q.address.send(ModelRetrying("sonnet", "w0", "overloaded"))
            assert (await q.stats()).parked_models == {}
            levels = []
            for _ in range(7):
                start = q.actor._now()
                await storm(q)
                event = await next_event(sub, "model.retry_storm")
                assert (await q.stats()).parked_models["sonnet"] == pytest.approx(start + event["park_s"])
                # the storm's tail (retries of requests already in flight) is not a new storm
                await storm(q)
                await later_event(sub, "model.unparked")  # the back-off ends by itself
                levels.append(event["park_s"])
            assert levels == [30, 60, 120, 240, 480, 600, 600]
            assert (await q.stats()).retry_storms == {"sonnet": 7}
            # calm for as long as the longest back-off: the next storm starts from 30 s again
            await trio.sleep(600)
            await storm(q)
            assert (await next_event(sub, "model.retry_storm"))["park_s"] == 30
            # retries spread wider than the window never add up to a storm
            await later_event(sub, "model.unparked")
            for i in range(3):
                await q.address.send(ModelRetrying("haiku", f"w{i}", "overloaded"))
                await trio.sleep(61)
            assert "haiku" not in (await q.stats()).parked_models


async def test_a_hot_quota_routes_soft_work_to_the_fallback_pinned_work_stays(
    autojump_clock: trio.abc.Clock,
) -> None:
    models = ModelsConfig(category_models={"review": "sonnet"}, fallback={"sonnet": ("haiku",)})
    async with running_queue(SwarmConfig(models=models)) as q:
        await q.address.send(ModelQuota("sonnet", "allowed_warning", "seven_day", None, 0.95, None, "w1"))
        stats = await q.stats()
        assert stats.hot_models == ("sonnet",) and stats.quota["sonnet"]["seven_day"]["utilization"] == 0.95
        assert stats.ready_by_model == {}
        await q.submit(
            TaskSpec("soft", id="soft", category="review"), TaskSpec("pin", id="pin", model="sonnet")
        )
        assert (await q.stats()).ready_by_model == {"haiku": 1, "sonnet": 1}
        haiku = Bot(q, "h", "haiku")
        await haiku.available()
        assert (await haiku.assignment()).task_id == "soft"
        # below the threshold again (a later report of the same window): soft work routes back
        await q.address.send(ModelQuota("sonnet", "allowed", "seven_day", None, 0.5, None, "w1"))
        await q.submit(TaskSpec("soft 2", id="soft2", category="review"))
        assert (await q.stats()).hot_models == ()
        assert (await q.stats()).ready_by_model == {"sonnet": 2}
        # a window whose reset time has passed no longer counts
        reset = q.actor._now() + 60
        await q.address.send(ModelQuota("sonnet", "allowed_warning", "five_hour", reset, 0.99, None, "w1"))
        assert (await q.stats()).hot_models == ("sonnet",)
        await trio.sleep(61)  # the window reset: sonnet cools down by itself (a timer, no new report)
        assert (await q.stats()).hot_models == ()


@pytest.mark.parametrize("policy", ["continue", "pause", "stop"])
async def test_extra_usage_policy(policy: str, autojump_clock: trio.abc.Clock) -> None:
    cfg = SwarmConfig(limits=LimitsConfig(on_extra_usage=policy))  # type: ignore[arg-type]
    async with running_queue(cfg) as q:
        bot = Bot(q, "s", "sonnet")
        await bot.available()
        await q.submit(TaskSpec("running", id="run", model="sonnet"))
        await bot.assignment()
        with q.bus.subscribe(["model.*"]) as sub:
            await q.address.send(ModelExtraUsage("sonnet", "Now using extra usage", "s", "run"))
            event = await next_event(sub, "model.extra_usage")
            assert event["policy"] == policy and event["task_id"] == "run"
            stats = await q.stats()
            if policy == "continue":
                assert stats.parked_models == {} and bot.nothing_yet()
                return
            assert stats.parked_models == {"sonnet": math.inf}  # until an operator resumes it
            assert "shoal models resume sonnet" in stats.parked_reasons["sonnet"]
            parked = await next_event(sub, "model.parked")
            assert parked["until"] is None
            if policy == "stop":  # its running attempt is interrupted (requeued, not counted)
                restart = await bot.next()
                assert isinstance(restart, Restart) and restart.wait is False
            else:
                assert bot.nothing_yet()
            await trio.sleep(3600)
            assert (await q.stats()).parked_models == {"sonnet": math.inf}
            state = await q.call(ResumeModel("sonnet"))
            assert state == {"model": "sonnet", "parked": False, "until": None, "reason": None}
            assert (await next_event(sub, "model.unparked"))["reason"] == "resumed by operator"
            with pytest.raises(Conflict, match="not parked"):
                await q.call(ResumeModel("sonnet"))


async def test_pause_model_validates_and_parks_until_resumed(autojump_clock: trio.abc.Clock) -> None:
    async with running_queue() as q:
        with pytest.raises(ValidationError, match="reason"):
            await q.call(PauseModel("opus", ""))
        with pytest.raises(ValidationError, match="model"):
            await q.call(PauseModel("", "why"))
        assert (await q.call(PauseModel("opus", "budget"))) == {
            "model": "opus",
            "parked": True,
            "until": None,
            "reason": "budget",
        }
        await q.address.send(ModelRateLimited("opus", q.actor._now() + 60))  # a shorter park changes nothing
        await trio.sleep(120)
        assert (await q.stats()).parked_models == {"opus": math.inf}
        assert (await q.call(ResumeModel("opus")))["parked"] is False


async def test_a_storms_tail_is_not_a_new_storm(autojump_clock: trio.abc.Clock) -> None:
    """Requests sent before a back-off ended (or was resumed) keep retrying in the agents: those
    retries are the old storm's tail; only attempts started since count towards a new one."""
    async with running_queue() as q:
        bots = [Bot(q, f"w{i}", "sonnet") for i in range(3)]
        for bot in bots:
            await bot.available()
        await q.submit(*(TaskSpec(f"old {i}", id=f"old{i}", model="sonnet") for i in range(3)))
        old = [await bot.assignment() for bot in bots]
        with q.bus.subscribe(["model.*"]) as sub:
            for bot, a in zip(bots, old, strict=True):
                await q.address.send(ModelRetrying("sonnet", bot.id, "overloaded", a.task_id))
            assert (await later_event(sub, "model.retry_storm"))["level"] == 1
            await q.call(ResumeModel("sonnet"))  # an operator ends the back-off early
            for bot, a in zip(bots, old, strict=True):  # the tail: no new storm
                await q.address.send(ModelRetrying("sonnet", bot.id, "overloaded", a.task_id))
            assert (await q.stats()).parked_models == {}
            await trio.sleep(5)
            for bot, a in zip(bots, old, strict=True):
                await bot.finish(a)
            await q.submit(*(TaskSpec(f"new {i}", id=f"new{i}", model="sonnet") for i in range(3)))
            new = [await bot.assignment() for bot in bots]
            for bot, a in zip(bots, new, strict=True):  # still overloaded: a new storm, a longer park
                await q.address.send(ModelRetrying("sonnet", bot.id, "overloaded", a.task_id))
            storm = await later_event(sub, "model.retry_storm")
            assert (storm["level"], storm["park_s"]) == (2, 60)
