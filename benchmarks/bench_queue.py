"""Queue benchmarks: durable submit latency, queue throughput, selection cost.

    python benchmarks/bench_queue.py [--quick]

1. submit -> acknowledged, with the durable store (SQLite WAL, synchronous=NORMAL, a real file):
   p50/p99 over 10,000 single-task submits, one at a time.      goal: p99 <= 2 ms
2. queue throughput: submit + claim + complete cycles per second through the QueueActor with the
   durable store (concurrent submitters, in-process workers that complete at once). goal >= 5,000/s
3. selection: one pick (select + claim) for a worker among 100,000 ready tasks with 1,000 workers
   of mixed models, capabilities and histories.                 goal: <= 1 ms per pick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from shoal.actors.queue import AttemptEnded, QueueActor, QueueStats, Stats, Submit, WorkerAvailable
from shoal.actors.store import Store
from shoal.actors.taskbook import TaskBook, WorkerView
from shoal.protocols.config import ModelsConfig, QueueConfig, SwarmConfig
from shoal.protocols.tasks import Assignment, Outcome, TaskSpec
from shoal.protocols.workers import Assign, TaskFinished
from shoal.runtime.actor import Address, Mailbox
from shoal.runtime.eventbus import EventBus


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_submit_latency(n: int, state: Path) -> None:
    async with await Store.open(state / "latency.db") as store:
        actor = QueueActor(SwarmConfig(), store, EventBus())
        async with trio.open_nursery() as nursery:
            queue: Address[Any] = await nursery.start(actor.run)
            for i in range(200):  # warm up (WAL creation, statement cache)
                await queue.call(Submit((TaskSpec("warm-up", id=f"warm{i}"),)))
            times: list[float] = []
            for i in range(n):
                spec = TaskSpec(f"task number {i}", id=f"t{i}", category="code", priority=i % 5)
                t0 = time.perf_counter()
                await queue.call(Submit((spec,)))
                times.append(time.perf_counter() - t0)
            nursery.cancel_scope.cancel()
        commits = store.commits
    ms = [t * 1000 for t in times]
    p50, p99, mean = pct(ms, 0.5), pct(ms, 0.99), statistics.fmean(ms)
    print(
        f"submit -> ack (durable, {n} single submits): p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
        f"max {max(ms):.2f} ms, mean {mean:.3f} ms ({commits} commits)   goal p99 <= 2 ms"
    )


async def run_cycles(
    actor: QueueActor,
    n: int,
    workers: int,
    submitters: int,
    spec: Callable[[str], TaskSpec] = lambda tid: TaskSpec("p", id=tid),
    finish: Callable[[str, Assignment], TaskFinished] = lambda wid, a: TaskFinished(
        wid, a.task_id, a.attempt, Outcome.DONE, result="ok"
    ),
) -> tuple[float, list[float], Stats]:
    """`n` submit+claim+complete cycles through `actor` (workers answer at once); returns the
    seconds they took, every submit's latency, and the queue's stats once all are committed."""
    done = 0
    all_done = trio.Event()
    latency: list[float] = []

    async def worker(queue: Address[Any], wid: str) -> None:
        nonlocal done
        async with Mailbox[Any](wid, 64) as mb:
            await queue.send(WorkerAvailable(wid, "sonnet", None, (), mb.address))
            async for msg in mb:
                if not isinstance(msg, Assign):
                    continue
                await queue.send(AttemptEnded(finish(wid, msg.assignment)))
                await queue.send(WorkerAvailable(wid, "sonnet", None, (), mb.address))
                done += 1
                if done == n:
                    all_done.set()

    async def submitter(queue: Address[Any], k: int, count: int) -> None:
        for i in range(count):
            t0 = time.perf_counter()
            await queue.call(Submit((spec(f"s{k}-{i}"),)))
            latency.append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        queue: Address[Any] = await nursery.start(actor.run)
        for w in range(workers):
            nursery.start_soon(worker, queue, f"w{w}")
        t0 = time.perf_counter()
        async with trio.open_nursery() as subs:
            for k in range(submitters):
                subs.start_soon(submitter, queue, k, n // submitters)
        await all_done.wait()
        await queue.call(Submit(()))  # every completion before this is committed
        elapsed = time.perf_counter() - t0
        stats = await queue.call(QueueStats())
        nursery.cancel_scope.cancel()
    return elapsed, latency, stats


async def bench_throughput(n: int, workers: int, submitters: int, state: Path) -> None:
    n -= n % submitters  # every submitter sends the same number
    async with await Store.open(state / "throughput.db") as store:
        elapsed, _latency, stats = await run_cycles(
            QueueActor(SwarmConfig(), store, EventBus()), n, workers, submitters
        )
        assert stats.done == n, stats
        print(
            f"queue throughput (durable, {workers} workers, {submitters} submitters): "
            f"{n / elapsed:,.0f} submit+claim+complete cycles/s ({n} in {elapsed:.2f} s, "
            f"{store.commits} commits, largest {store.largest_batch} changes)   goal >= 5,000/s"
        )


def bench_selection(n_tasks: int, n_workers: int, picks: int) -> None:
    rng = random.Random(42)
    categories = [f"cat{i}" for i in range(20)] + [None]
    models = ModelsConfig(category_models={"cat0": "opus", "cat1": "haiku"})
    book = TaskBook(QueueConfig(), models, rng=rng)
    t0 = time.perf_counter()
    batch = []
    for i in range(n_tasks):
        batch.append(
            TaskSpec(
                "p",
                id=f"t{i}",
                category=rng.choice(categories),
                priority=rng.randrange(10),
                model=rng.choice([None, None, None, "haiku", "sonnet", "opus"]),
            )
        )
        if len(batch) == 1000:
            book.submit(batch, 1000.0)
            batch = []
    if batch:
        book.submit(batch, 1000.0)
    book.drain()
    built = time.perf_counter() - t0
    workers = []
    for w in range(n_workers):
        caps = None if rng.random() < 0.3 else frozenset(rng.sample([c for c in categories if c], 3))
        history = tuple(rng.choice([c for c in categories if c]) for _ in range(10))
        workers.append(WorkerView(f"w{w}", rng.choice(["haiku", "sonnet", "opus"]), caps, history))
    select_times: list[float] = []
    pick_times: list[float] = []
    for i in range(picks):
        w = workers[i % n_workers]
        t0 = time.perf_counter()
        tid = book.select(w)
        t1 = time.perf_counter()
        if tid is not None:
            book.claim(tid, w.id, w.model, 1001.0)
        t2 = time.perf_counter()
        select_times.append(t1 - t0)
        pick_times.append(t2 - t0)
        if i % 256 == 0:
            book.drain()
    us = [t * 1e6 for t in pick_times]
    sel = [t * 1e6 for t in select_times]
    print(
        f"selection ({n_tasks:,} ready, {n_workers:,} workers, {picks:,} picks): select+claim mean "
        f"{statistics.fmean(us):.1f} us, p99 {pct(us, 0.99):.1f} us; select alone mean "
        f"{statistics.fmean(sel):.1f} us (book built in {built:.1f} s)   goal <= 1 ms per pick"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check the script works")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        state = Path(tmp)
        trio.run(bench_submit_latency, 10_000 // scale, state)
        trio.run(bench_throughput, 20_000 // scale, 8, 64, state)
    bench_selection(100_000 // scale, 1_000, 5_000 // scale)


if __name__ == "__main__":
    main()
