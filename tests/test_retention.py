"""Retention of finished tasks: age and count limits, oldest finish first, dependencies kept while
needed, bounded steps, and the store forgetting evicted tasks across restarts."""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from swarmkit import swarm_config, wait_for
from test_queue import Bot, Q, running_queue

from shoal.actors.metrics import MetricsActor
from shoal.actors.queue import EVICT_TICK_S, GetTask, ListTasks, UpdateConfig
from shoal.actors.store import Store, apply_changes, load_tasks, migrate
from shoal.actors.taskbook import TaskBook, WorkerView
from shoal.actors.tree import open_swarm
from shoal.protocols.config import QueueConfig, SwarmConfig, config_from_dict
from shoal.protocols.errors import NotFound, ValidationError
from shoal.protocols.rpc import NOT_FOUND, error_from_exception
from shoal.protocols.tasks import Outcome, TaskSpec, TaskState
from shoal.runtime.eventbus import Subscription

T0 = 1_000_000.0


W = WorkerView("w1", "sonnet")


def book(**queue: Any) -> TaskBook:
    return TaskBook(QueueConfig(**queue), rng=random.Random(1))


def finish(b: TaskBook, tid: str, now: float, outcome: Outcome = Outcome.DONE) -> None:
    b.claim(tid, "w1", "sonnet", now)
    b.finish(tid, len(b.get(tid).attempts), outcome, now, result=f"r-{tid}")


def evict_all(b: TaskBook, now: float, limit: int = 1000) -> list[str]:
    out: list[str] = []
    while b.eviction_due(now):
        out += b.evict(now, limit)
    b.check()
    return out


def q_cfg(**queue: Any) -> SwarmConfig:
    return SwarmConfig(queue=QueueConfig(**queue))


# ---- configuration ---------------------------------------------------------------------------


def test_defaults_and_validation_name_the_dotted_field() -> None:
    q = QueueConfig()
    assert (q.keep_finished_s, q.keep_finished, q.evict_batch) == (604_800.0, 100_000, 250)
    for bad, field in (
        ({"keep_finished_s": -1}, "queue.keep_finished_s"),
        ({"keep_finished_s": "7d"}, "queue.keep_finished_s"),
        ({"keep_finished": -5}, "queue.keep_finished"),
        ({"keep_finished": 1.5}, "queue.keep_finished"),
        ({"evict_batch": 0}, "queue.evict_batch"),
    ):
        with pytest.raises(ValidationError) as info:
            config_from_dict({"queue": bad})
        assert info.value.field == field, (bad, info.value.field)
    forever = config_from_dict({"queue": {"keep_finished_s": 0, "keep_finished": 0}}).queue
    b = TaskBook(forever)
    b.submit([TaskSpec("x", id="x")], T0)
    finish(b, "x", T0)
    assert b.eviction_deadline() is None and b.evict(T0 + 1e9, 10) == []


# ---- the book --------------------------------------------------------------------------------


def test_age_limit_evicts_by_finish_time_and_forgets_the_task() -> None:
    b = book(keep_finished_s=100, keep_finished=0)
    b.submit([TaskSpec("a", id="a"), TaskSpec("b", id="b"), TaskSpec("c", id="c")], T0)
    finish(b, "b", T0 + 1)  # b finishes first although submitted later
    finish(b, "a", T0 + 50, Outcome.FAILED)  # a failure is not the end: a is waiting to retry
    b.release_due(T0 + 60)
    finish(b, "a", T0 + 60)
    b.drain()
    assert b.eviction_deadline() == T0 + 101
    assert b.evict(T0 + 100.5, 10) == [] and not b.eviction_due(T0 + 100.5)
    assert b.evict(T0 + 101, 10) == ["b"]
    changes, _events, _ready = b.drain()
    assert [(c.kind, c.task_id) for c in changes] == [("evict", "b")]
    with pytest.raises(NotFound):
        b.get("b")
    assert "b" not in b and b.ids() == ["a", "c"]
    assert [t.id for t in b.list_tasks()[0]] == ["a", "c"]
    assert b.eviction_deadline() == T0 + 160
    assert evict_all(b, T0 + 1e6) == ["a"]
    assert b.ids() == ["c"] and b.evicted == 2 and b.finished_count() == 0
    assert b.get("c").state is TaskState.READY  # what has not finished is never touched


def test_count_limit_evicts_the_oldest_finished_first() -> None:
    b = book(keep_finished_s=0, keep_finished=3)
    b.submit([TaskSpec(f"t{i}", id=f"t{i}") for i in range(8)], T0)
    order = ["t5", "t0", "t7", "t2", "t1", "t6"]  # finish order, not submission order
    for i, tid in enumerate(order):
        finish(b, tid, T0 + i)
    b.cancel("t3", T0 + 10)  # cancelled counts as finished too (the newest)
    assert b.finished_count() == 7 and b.eviction_due(T0)
    assert b.evict(T0 + 20, 10) == ["t5", "t0", "t7", "t2"]
    assert b.finished_count() == 3 and not b.eviction_due(T0 + 1e9)
    assert b.ids() == ["t1", "t3", "t4", "t6"]
    b.check()


def test_a_dependency_stays_while_a_dependant_may_still_run() -> None:
    b = book(keep_finished_s=10, keep_finished=0)
    b.submit(
        [TaskSpec("a", id="a"), TaskSpec("c", id="c"), TaskSpec("b", id="b", deps=("a", "c"))],
        T0,
    )
    finish(b, "a", T0)
    assert b.evict(T0 + 100, 10) == []  # b waits for c: a is held, not evicted
    assert b.get("a").state is TaskState.DONE
    b.submit([TaskSpec("late", id="late", deps=("a",))], T0 + 100)  # a still resolves
    assert b.get("late").state is TaskState.READY
    b.cancel("c", T0 + 101)  # b dies of its dependency; a retry of c would bring it back
    assert b.get("b").state is TaskState.DEAD
    assert b.evict(T0 + 105, 10) == []  # b (dead, but retryable) still needs a: held
    b.retry("c", T0 + 106)
    assert b.get("b").state is TaskState.BLOCKED  # revived, and it still finds a done
    finish(b, "c", T0 + 107)
    assert b.get("b").state is TaskState.READY
    finish(b, "b", T0 + 108)
    assert b.evict(T0 + 109, 10) == []  # late has not run yet
    finish(b, "late", T0 + 109)
    b.check()
    # every dependant succeeded: a goes (at its own finish time, first), then the others
    assert evict_all(b, T0 + 1000) == ["a", "c", "b", "late"]


def test_a_finished_dependant_that_could_be_retried_holds_its_dependency() -> None:
    b = book(keep_finished_s=10, keep_finished=0)
    b.submit([TaskSpec("a", id="a"), TaskSpec("b", id="b", deps=("a",))], T0)
    finish(b, "a", T0)
    b.cancel("b", T0 + 9)
    assert b.evict(T0 + 15, 10) == []  # a is due, but b (cancelled) may be retried: a stays
    b.retry("b", T0 + 16)
    assert b.get("b").state is TaskState.READY
    finish(b, "b", T0 + 17)
    assert evict_all(b, T0 + 18) == ["a"]  # b succeeded: a may go; b is younger than the limit
    assert b.get("b").deps == ("a",)  # the record still says what it depended on
    assert evict_all(b, T0 + 27) == ["b"]


def test_held_tasks_count_towards_the_count_limit() -> None:
    b = book(keep_finished_s=0, keep_finished=1)
    b.submit([TaskSpec("a", id="a"), TaskSpec("b", id="b", deps=("a",)), TaskSpec("c", id="c")], T0)
    finish(b, "a", T0)
    finish(b, "c", T0 + 1)
    assert evict_all(b, T0 + 2) == ["c"]  # a is held (b waits for it) and fills the one place
    assert b.ids() == ["a", "b"]


def test_evicting_a_dead_dependant_releases_its_dependency_in_the_same_step() -> None:
    b = book(keep_finished_s=10, keep_finished=0)
    b.submit([TaskSpec("a", id="a"), TaskSpec("b", id="b", deps=("a",))], T0)
    finish(b, "a", T0)
    b.cancel("b", T0 + 1)
    assert b.evict(T0 + 100, 10) == ["b", "a"]
    b.check()


def test_selection_skips_the_stale_index_entries_of_evicted_tasks() -> None:
    b = book(keep_finished_s=1, keep_finished=0)
    b.submit([TaskSpec("a", id="a", priority=5), TaskSpec("b", id="b", priority=1)], T0)
    finish(b, "a", T0)  # a's entry stays in the ready heap (lazy deletion)
    assert b.evict(T0 + 5, 10) == ["a"]
    b.submit([TaskSpec("a again", id="a", priority=0)], T0 + 5)  # same id, same index token
    assert b.select(W) == "b"  # not the new a, ranked by the old a's entry; and no KeyError
    b.claim("b", "w1", "sonnet", T0 + 6)
    assert b.select(W) == "a"
    b.check()


def test_a_dead_chain_is_evicted_together() -> None:
    b = book(keep_finished_s=10, keep_finished=0)
    b.submit([TaskSpec("a", id="a", max_attempts=1)], T0)
    b.submit([TaskSpec("b", id="b", deps=("a",)), TaskSpec("c", id="c", deps=("b",))], T0)
    finish(b, "a", T0 + 1, Outcome.FAILED)
    assert [b.get(t).state for t in "abc"] == [TaskState.DEAD] * 3
    assert b.evict(T0 + 20, 10) == ["c", "b", "a"]  # leaves first, each releasing its dependency
    b.check()


def test_depending_on_an_evicted_task_is_refused_naming_it() -> None:
    b = book(keep_finished_s=10, keep_finished=0)
    b.submit([TaskSpec("a", id="a")], T0)
    finish(b, "a", T0)
    assert b.evict(T0 + 20, 10) == ["a"]
    with pytest.raises(ValidationError, match=r"unknown dependency id\(s\) \['a'\].*evicted") as info:
        b.submit([TaskSpec("x", id="x", deps=("a",))], T0 + 21)
    assert info.value.field == "deps"
    assert "x" not in b
    # the id itself is free again: submitting it starts a new task
    (again,) = b.submit([TaskSpec("a", id="a")], T0 + 22)
    assert again.state is TaskState.READY and again.attempts == () and again.created == T0 + 22
    b.check()


def test_a_large_backlog_is_evicted_in_bounded_steps() -> None:
    n = 50_000
    b = book(keep_finished_s=60, keep_finished=0)
    b.submit([TaskSpec("p", id=f"t{i}") for i in range(n)] + [TaskSpec("p", id="open")], T0)
    for i in range(n):
        finish(b, f"t{i}", T0 + i * 1e-3)
    b.drain()
    steps: list[int] = []
    while b.eviction_due(T0 + 1000):
        steps.append(len(b.evict(T0 + 1000, 2_000)))
        assert len(b.drain()[0]) == steps[-1]  # one delete change per eviction
    assert steps == [2_000] * 25
    assert b.ids() == ["open"] and b.evicted == n
    b.check()


def test_list_paging_across_evictions() -> None:
    b = book(keep_finished_s=0, keep_finished=1)
    b.submit([TaskSpec("p", id=f"t{i:04}") for i in range(2_000)], T0)
    page, cursor = b.list_tasks(limit=700)
    assert cursor is not None and page[-1].id == "t0699"
    for i in range(0, 2_000, 3):  # finish every third task; all but the newest get evicted
        finish(b, f"t{i:04}", T0 + i)
    evict_all(b, T0 + 1e4, limit=100)
    assert len(b) == 2_000 - 667 + 1
    # the cursor still works although the task it points at (t0699) is gone
    seen = [t.id for t in page]
    while cursor is not None:
        page, cursor = b.list_tasks(limit=700, cursor=cursor)
        seen += [t.id for t in page]
    assert seen[700:] == [f"t{i:04}" for i in range(700, 2_000) if i % 3 or i == 1998]
    assert b.ids() == [f"t{i:04}" for i in range(2_000) if i % 3 or i == 1998]


def test_restore_applies_retention_and_does_not_resurrect(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    migrate(conn, "s.db")

    def persist(b: TaskBook) -> None:
        conn.execute("BEGIN")
        apply_changes(conn, b.drain()[0])
        conn.execute("COMMIT")

    b = book(keep_finished_s=0, keep_finished=0)  # keep everything while running
    b.submit([TaskSpec("p", id=f"t{i}", deps=("t0",) if i == 9 else ()) for i in range(10)], T0)
    for i in range(8):
        finish(b, f"t{i}", T0 + i)
    persist(b)
    assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (8,)
    # restart with a limit: the same retention applies to what was loaded
    b2 = book(keep_finished_s=0, keep_finished=3)
    b2.restore(load_tasks(conn), T0 + 100)
    # t0 is held (t9 waits for it) and counts: two places are left for the newest, t6 and t7
    assert evict_all(b2, T0 + 100) == ["t1", "t2", "t3", "t4", "t5"]
    persist(b2)
    rows = [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY seq")]
    assert rows == ["t0", "t6", "t7", "t8", "t9"]
    assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (3,)
    b3 = book(keep_finished_s=0, keep_finished=0)
    b3.restore(load_tasks(conn), T0 + 200)
    assert b3.ids() == rows
    b3.check()
    conn.close()


def test_a_batch_that_evicts_and_resubmits_an_id_stores_the_new_task() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, ":memory:")
    b = book(keep_finished_s=1, keep_finished=0)
    b.submit([TaskSpec("old", id="a")], T0)
    finish(b, "a", T0)
    conn.execute("BEGIN")
    apply_changes(conn, b.drain()[0])
    conn.execute("COMMIT")
    b.evict(T0 + 5, 10)
    b.submit([TaskSpec("new", id="a")], T0 + 5)
    finish(b, "a", T0 + 6, Outcome.FAILED)
    conn.execute("BEGIN")
    apply_changes(conn, b.drain()[0])  # evict, submit, claim, fail: one batch
    conn.execute("COMMIT")
    (row,) = load_tasks(conn)
    assert (row.id, row.static.prompt, row.state) == ("a", "new", TaskState.FAILED)
    assert [a.outcome for a in row.attempts] == [Outcome.FAILED]


# ---- the actor -------------------------------------------------------------------------------


async def run_to_done(q: Q, bot: Bot, n: int, work_s: float = 0.0) -> list[tuple[str, float]]:
    """Let `bot` run `n` tasks, each taking `work_s`; (id, trio time it finished) in order."""
    done: list[tuple[str, float]] = []
    await bot.available()
    for _ in range(n):
        a = await bot.assignment(within=math.inf)
        await trio.sleep(work_s)
        await bot.finish(a, result="ok")
        await q.call(GetTask(a.task_id))  # a barrier: the report was handled
        done.append((a.task_id, trio.current_time()))
    return done


async def evictions(sub: Subscription, total: int) -> list[dict[str, Any]]:
    """`queue.evicted` events until `total` tasks were evicted (waiting on the autojump clock)."""
    out: list[dict[str, Any]] = []
    async for event in sub:
        out.append(event.data)
        if sum(e["count"] for e in out) >= total:
            return out
    raise AssertionError("subscription closed")


async def test_actor_evicts_by_age_on_its_own_timer(autojump_clock: trio.abc.Clock) -> None:
    async with running_queue(q_cfg(keep_finished_s=3600, keep_finished=0)) as q:
        sub = q.bus.subscribe(["queue.evicted"])
        await q.submit(TaskSpec("a", id="a"), TaskSpec("b", id="b"), TaskSpec("c", id="c", model="opus"))
        done = await run_to_done(q, Bot(q, "w1"), 2, work_s=10)
        assert [tid for tid, _t in done] == ["a", "b"]
        (first,) = await evictions(sub, 1)  # nothing else happens: only the queue's timer wakes it
        waited = trio.current_time() - done[0][1]
        assert 3600 <= waited <= 3600 + EVICT_TICK_S + 0.01
        assert first == {"count": 1, "kept": 1, "more": False}
        with pytest.raises(NotFound):
            await q.call(GetTask("a"))
        assert (await q.call(GetTask("b"))).state is TaskState.DONE  # 10 s younger
        await evictions(sub, 1)
        assert trio.current_time() - done[1][1] <= 3600 + EVICT_TICK_S + 0.01
        with pytest.raises(NotFound):
            await q.call(GetTask("b"))
        tasks, _cursor = await q.call(ListTasks())
        assert [t.id for t in tasks] == ["c"]
        stats = await q.stats()
        assert (stats.total, stats.done, stats.evicted) == (1, 0, 2)


async def test_actor_count_limit_keeps_the_newest_and_metrics_do_not_go_down(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_queue(q_cfg(keep_finished_s=0, keep_finished=2)) as q:
        metrics = MetricsActor(q.bus, lambda: q.actor.config, trio.current_time)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.run)
            sub = q.bus.subscribe(["queue.evicted"])
            await q.submit(*(TaskSpec("p", id=tid) for tid in ("t0", "t1", "t2", "t3", "t4")))
            done = await run_to_done(q, Bot(q, "w1"), 5, work_s=0.2)
            steps = await evictions(sub, 3)
            assert sum(e["count"] for e in steps) == 3 and all(e["kept"] == 2 for e in steps)
            tasks, _cursor = await q.call(ListTasks())
            assert [t.id for t in tasks] == [tid for tid, _t in done[-2:]]  # the newest two
            stats = await q.stats()
            assert (stats.done, stats.evicted) == (2, 3)
            await trio.testing.wait_all_tasks_blocked()  # the metrics actor has had every event
            totals = Counter[str]()
            for (kind, _model, _category), n in metrics.tasks.items():
                totals[kind] += n
            assert (totals["submitted"], totals["started"], totals["completed"]) == (5, 5, 5)
            nursery.cancel_scope.cancel()


async def test_actor_keeps_a_needed_dependency_and_refuses_an_evicted_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_queue(q_cfg(keep_finished_s=60, keep_finished=0)) as q:
        sub = q.bus.subscribe(["queue.evicted"])
        await q.submit(TaskSpec("a", id="a"))
        await run_to_done(q, Bot(q, "w1"), 1)
        await q.submit(
            TaskSpec("gate", id="gate", model="opus"), TaskSpec("b", id="b", deps=("a", "gate"), model="opus")
        )
        await trio.sleep(3600)  # long past a's retention, but b still waits for it
        assert (await q.call(GetTask("a"))).state is TaskState.DONE
        assert (await q.stats()).evicted == 0
        await q.submit(TaskSpec("c", id="c", deps=("a",), model="opus"))  # a still resolves
        done = await run_to_done(q, Bot(q, "w2", model="opus"), 3)
        assert [tid for tid, _t in done] == ["gate", "b", "c"]
        await evictions(sub, 4)
        with pytest.raises(ValidationError, match=r"\['a'\].*evicted") as info:
            await q.submit(TaskSpec("d", id="d", deps=("a",)))
        assert info.value.field == "deps"
        with pytest.raises(NotFound):
            await q.call(GetTask("a"))


async def test_lowering_the_limit_at_run_time_applies_it(autojump_clock: trio.abc.Clock) -> None:
    async with running_queue(q_cfg(keep_finished_s=0, keep_finished=0)) as q:
        sub = q.bus.subscribe(["queue.evicted"])
        await q.submit(*(TaskSpec("p", id=f"t{i}") for i in range(4)))
        await run_to_done(q, Bot(q, "w1"), 4)
        await trio.sleep(10 * 86400)
        assert (await q.stats()).done == 4  # 0 and 0: kept for ever
        await q.address.send(UpdateConfig(q_cfg(keep_finished_s=0, keep_finished=1)))
        assert (await evictions(sub, 3))[0] == {"count": 3, "kept": 1, "more": False}


async def test_restart_from_a_file_evicts_and_never_resurrects(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    keep_all = q_cfg(keep_finished_s=0, keep_finished=0)
    async with running_queue(keep_all, path=path) as q:
        ids = [f"t{i}" for i in range(6)]
        await q.submit(*(TaskSpec(tid, id=tid) for tid in ids), TaskSpec("open", id="open", model="opus"))
        await run_to_done(q, Bot(q, "w1"), len(ids))
        await q.submit()  # a barrier: every change is committed

    def rows() -> list[str]:
        conn = sqlite3.connect(path)
        try:
            ids = [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY seq")]
            orphans = conn.execute(
                "SELECT count(*) FROM attempts WHERE task_id NOT IN (SELECT id FROM tasks)"
            )
            assert orphans.fetchone() == (0,)
            return ids
        finally:
            conn.close()

    assert len(await trio.to_thread.run_sync(rows)) == 7
    # restart with a count limit: retention applies to what was loaded, and the rows are deleted
    async with running_queue(q_cfg(keep_finished_s=0, keep_finished=2), path=path) as q2:
        await q2.submit()  # a barrier: the start-up step is committed and published
        events, _complete = q2.bus.replay(0, ["queue.evicted"])
        assert sum(e.data["count"] for e in events) == 4
        kept = [t.id for t in (await q2.call(ListTasks()))[0]]
        assert len(kept) == 3 and "open" in kept
    assert await trio.to_thread.run_sync(rows) == kept
    # restart with an age limit: every finished task is older than a millisecond by now
    async with running_queue(q_cfg(keep_finished_s=0.001, keep_finished=0), path=path) as q3:
        await q3.submit()
        assert [t.id for t in (await q3.call(ListTasks()))[0]] == ["open"]
    # and once more keeping everything: nothing evicted comes back
    async with running_queue(keep_all, path=path) as q4:
        assert [t.id for t in (await q4.call(ListTasks()))[0]] == ["open"]
        with pytest.raises(NotFound):
            await q4.call(GetTask("t5"))
    assert await trio.to_thread.run_sync(rows) == ["open"]


async def test_a_large_backlog_at_start_is_evicted_in_steps_without_blocking(tmp_path: Path) -> None:
    """50,000 finished tasks older than the limit, loaded at start: the queue answers calls while it
    works them off, one `queue.evicted` step of at most `evict_batch` at a time."""
    n, batch = 50_000, 2_000
    path = tmp_path / "shoal.db"
    b = TaskBook(QueueConfig(keep_finished_s=0, keep_finished=0))
    past = time.time() - 30 * 86400
    b.submit([TaskSpec("p", id=f"t{i}") for i in range(n)] + [TaskSpec("open", id="open")], past)
    for i in range(n):
        finish(b, f"t{i}", past + i * 1e-3)
    async with await Store.open(path) as store:
        await store.commit(b.drain()[0])
    cfg = q_cfg(keep_finished_s=86400, keep_finished=0, evict_batch=batch)
    async with running_queue(cfg, path=path) as q:
        with q.bus.subscribe(["queue.evicted"], size=1000) as sub:
            stats = await q.stats()  # answered between steps, long before the backlog is gone
            assert 0 < stats.evicted <= 4 * batch
            # a step waits for the previous one's commit: a submit is not queued behind them all
            (late,) = await q.submit(TaskSpec("late", id="late"))
            assert late.state is TaskState.READY
            assert (await q.stats()).evicted <= stats.evicted + 4 * batch
            with trio.fail_after(60):
                async for event in sub:
                    if not event.data["more"]:
                        break
        replayed, _complete = q.bus.replay(0, ["queue.evicted"])
        steps = [e.data["count"] for e in replayed]
        assert steps == [batch] * (n // batch)
        assert [e.data["more"] for e in replayed] == [True] * (n // batch - 1) + [False]
        stats = await q.stats()
        assert (stats.total, stats.evicted) == (2, n)
        assert q.store.largest_batch <= batch + 1

    def count() -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
        finally:
            conn.close()

    assert await trio.to_thread.run_sync(count) == 2


async def test_an_evicted_task_is_not_found_through_the_swarm_handle(tmp_path: Path) -> None:
    """What `tasks.get` / `tasks.list` / `tasks.wait` see over the gateway: `NotFound`, which the
    JSON-RPC layer answers as `not_found` naming the task, as for an id never submitted."""

    config = swarm_config(tmp_path, scaling={"max_workers": 0}, queue={"keep_finished_s": 0.05})
    async with open_swarm(config) as swarm:
        with swarm.events(("queue.evicted",)) as sub:
            await swarm.submit({"id": "gone", "prompt": "never runs"})
            await swarm.submit({"id": "kept", "prompt": "never runs either"})
            await swarm.cancel("gone")
            assert (await wait_for(sub, "queue.evicted")).data["count"] == 1
        for call in (swarm.get, swarm.wait, swarm.retry):
            with pytest.raises(NotFound) as info:
                await call("gone")
            reply = error_from_exception(1, info.value)
            assert reply["error"]["code"] == NOT_FOUND
            assert reply["error"]["data"] == {"kind": "task", "id": "gone"}
        tasks, cursor = await swarm.list()
        assert [t.id for t in tasks] == ["kept"] and cursor is None
        assert (await swarm.queue_stats()).evicted == 1
