"""Retention benchmarks: what finished tasks cost in memory, and what evicting them costs the loop.

    python benchmarks/bench_retention.py [--tasks 100000] [--batch 500 2000 5000]

1. memory: the task book's Python memory (tracemalloc) with 100,000 finished tasks (prompt 200 B,
   result 500 B, one attempt with a 1,000-character output tail, usage), then after evicting them.
2. eviction through the QueueActor with the durable store (SQLite WAL, a real file): 100,000 finished
   tasks are kept, then `queue.keep_finished_s` is lowered at run time so all of them are due. Reported
   per `queue.evict_batch`: the longest single step of any trio task while evicting (an instrument
   times every task step), the worst lateness of a 1 ms ticker, the latency of `GetTask` calls and
   of durable submits made meanwhile, the steps taken and the wall time until the last row is
   deleted. Batch 0 is the baseline: the same load for 2.5 s with nothing to evict.
3. steady state: submit + claim + complete cycles through the QueueActor (durable store, 8 workers,
   64 submitters, the same payload), keeping every task, then with `queue.keep_finished` 5,000 so
   that, once 5,000 have finished, every finish is followed by an eviction: cycles/s and
   submit -> acknowledged latency.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio
from bench_queue import run_cycles

from shoal.actors.queue import (
    GetTask,
    QueueActor,
    QueueStats,
    Submit,
    UpdateConfig,
)
from shoal.actors.store import Store
from shoal.actors.taskbook import TaskBook
from shoal.protocols.config import QueueConfig, SwarmConfig
from shoal.protocols.tasks import Outcome, TaskSpec
from shoal.protocols.workers import TaskFinished
from shoal.runtime.eventbus import EventBus

PROMPT = "p" * 200
RESULT = "r" * 500
TAIL = "t" * 1000
USAGE = {"input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.0123}
KEEP_ALL = QueueConfig(keep_finished_s=0, keep_finished=0)


def finish_chunk(book: TaskBook, start: int, stop: int, t0: float) -> None:
    """Submit, run and finish tasks start..stop-1; every text is its own string, as in real use."""
    ids = [f"task-{i:07d}" for i in range(start, stop)]
    book.submit([TaskSpec(f"{tid} {PROMPT}", id=tid, category="code", metadata={"n": 1}) for tid in ids], t0)
    for tid in ids:
        book.claim(tid, "worker-1", "sonnet", t0 + 1)
        book.finish(
            tid,
            1,
            Outcome.DONE,
            t0 + 2,
            result=f"{tid} {RESULT}",
            output_tail=f"{tid} {TAIL}",
            usage=dict(USAGE),
            exit_code=0,
        )


def finished_book(n: int, t0: float) -> TaskBook:
    """A book with `n` finished tasks (and one still ready)."""
    book = TaskBook(KEEP_ALL)
    for start in range(0, n, 1000):
        finish_chunk(book, start, min(n, start + 1000), t0)
        book.drain()
    book.submit([TaskSpec(PROMPT, id="still-open")], t0)
    book.drain()
    return book


def bench_memory(n: int) -> None:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    book = finished_book(n, 1_000_000.0)
    gc.collect()
    full = tracemalloc.get_traced_memory()[0] - base
    book.qcfg = QueueConfig(keep_finished_s=1, keep_finished=0)
    while book.eviction_due(2_000_000.0):
        book.evict(2_000_000.0, 2_000)
        book.drain()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(book) == 1
    print(
        f"memory, {n:,} finished tasks in the book: {full / 2**20:.1f} MiB "
        f"({full / n / 1024:.2f} KiB per task); "
        f"after evicting them: {after / 2**20:.2f} MiB ({(full - after) / 2**20:.1f} MiB freed)"
    )


class StepTimer(trio.abc.Instrument):
    """The longest single step of any trio task (how long the loop was held by one task)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.who = ""
        self.steps = 0
        self._t0 = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self._t0:
            return  # the step that added the instrument: its start was not seen
        took = time.perf_counter() - self._t0
        self.steps += 1
        if took > self.longest:
            self.longest, self.who = took, task.name


async def bench_eviction(template: Path, n: int, batch: int, workdir: Path) -> None:
    """Evict every finished task of `template` at run time; batch 0: the same load, no eviction."""
    path = workdir / f"evict-{batch}.db"
    shutil.copy(template, path)
    async with await Store.open(path) as store:
        bus = EventBus()
        actor = QueueActor(SwarmConfig(queue=KEEP_ALL), store, bus)
        async with trio.open_nursery() as nursery:
            queue = await nursery.start(actor.run)  # loads every task: not part of the measure
            assert (await queue.call(QueueStats())).done == n
            timer = StepTimer()
            lateness: list[float] = []
            calls: list[float] = []
            submits: list[float] = []
            finished = trio.Event()

            async def ticker() -> None:
                while not finished.is_set():
                    t0 = time.perf_counter()
                    await trio.sleep(0.001)
                    lateness.append(time.perf_counter() - t0 - 0.001)

            async def caller() -> None:
                while not finished.is_set():
                    t0 = time.perf_counter()
                    await queue.call(GetTask("still-open"))
                    calls.append(time.perf_counter() - t0)
                    await trio.sleep(0.002)

            async def submitter() -> None:
                while not finished.is_set():
                    t0 = time.perf_counter()
                    await queue.call(Submit((TaskSpec(PROMPT, id=f"new-{len(submits)}"),)))
                    submits.append(time.perf_counter() - t0)
                    await trio.sleep(0.005)

            steps: list[int] = []
            with bus.subscribe(["queue.evicted"], size=10_000) as sub:
                trio.lowlevel.add_instrument(timer)
                nursery.start_soon(ticker)
                nursery.start_soon(caller)
                nursery.start_soon(submitter)
                t0 = time.perf_counter()
                if batch:
                    lowered = QueueConfig(keep_finished_s=60, keep_finished=0, evict_batch=batch)
                    await queue.send(UpdateConfig(SwarmConfig(queue=lowered)))
                    async for event in sub:  # published once the step's deletions are committed
                        steps.append(event.data["count"])
                        if not event.data["more"]:
                            break
                else:
                    await trio.sleep(2.5)
                wall = time.perf_counter() - t0
                finished.set()
                trio.lowlevel.remove_instrument(timer)
            stats = await queue.call(QueueStats())
            nursery.cancel_scope.cancel()
    late = sorted(lateness)
    loop = (
        f"longest task step {timer.longest * 1000:.1f} ms ({timer.who}); "
        f"1 ms ticker late by p99 {late[int(0.99 * len(late))] * 1000:.1f} ms, max {late[-1] * 1000:.1f} ms; "
        f"GetTask p50 {statistics.median(calls) * 1000:.2f} ms, max {max(calls) * 1000:.1f} ms "
        f"({len(calls)} calls); submit -> ack p50 {statistics.median(submits) * 1000:.2f} ms, "
        f"max {max(submits) * 1000:.1f} ms ({len(submits)} submits)"
    )
    if not batch:
        print(f"baseline, {n:,} finished tasks kept, nothing to evict, {wall:.1f} s: {loop}")
        return
    assert sum(steps) == n and stats.evicted == n and stats.done == 0, (sum(steps), stats)
    print(
        f"evict {n:,} through the queue, evict_batch {batch}: {len(steps)} steps in {wall:.2f} s "
        f"({n / wall:,.0f} tasks/s, {store.commits} commits, largest {store.largest_batch} changes); {loop}"
    )


async def bench_steady(n: int, keep: int, workdir: Path, workers: int = 8, submitters: int = 64) -> None:
    """Cycles through the queue with retention at its count limit (keep 0: no retention)."""
    n -= n % submitters
    path = workdir / f"steady-{keep}.db"
    queue_cfg = QueueConfig(keep_finished_s=0, keep_finished=keep)
    async with await Store.open(path) as store:
        elapsed, latency, stats = await run_cycles(
            QueueActor(SwarmConfig(queue=queue_cfg), store, EventBus()),
            n,
            workers,
            submitters,
            spec=lambda tid: TaskSpec(f"{tid} {PROMPT}", id=tid),
            finish=lambda wid, a: TaskFinished(
                wid,
                a.task_id,
                a.attempt,
                Outcome.DONE,
                result=f"{a.task_id} {RESULT}",
                output_tail=f"{a.task_id} {TAIL}",
                usage=dict(USAGE),
            ),
        )
    path.unlink()
    lat = sorted(latency)
    what = f"keep_finished {keep:,} ({stats.evicted:,} evicted)" if keep else "no retention"
    print(
        f"steady state, {n:,} cycles, {what}: {n / elapsed:,.0f} cycles/s; submit -> ack "
        f"p50 {lat[len(lat) // 2] * 1000:.2f} ms, p99 {lat[int(0.99 * len(lat))] * 1000:.2f} ms, "
        f"max {lat[-1] * 1000:.1f} ms (64 submitters at once)"
    )


async def write_template(path: Path, n: int) -> None:
    """A store holding `n` tasks that finished an hour ago, and one still ready."""
    book = TaskBook(KEEP_ALL)
    t0 = time.time() - 3600
    async with await Store.open(path) as store:
        for start in range(0, n, 1000):
            finish_chunk(book, start, min(n, start + 1000), t0)
            store.write(book.drain()[0])
        book.submit([TaskSpec(PROMPT, id="still-open")], t0)
        await store.commit(book.drain()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[0, 100, 250, 500, 2_000])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--steady", type=int, default=20_000, help="cycles of part 3 (0: skip it)")
    args = parser.parse_args()
    if not args.skip_memory:
        bench_memory(args.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = work / "template.db"
        trio.run(write_template, template, args.tasks)
        print(f"store with {args.tasks:,} finished tasks: {template.stat().st_size / 2**20:.0f} MiB on disk")
        size = 0
        for batch in args.batch:
            trio.run(bench_eviction, template, args.tasks, batch, work)
            copy = work / f"evict-{batch}.db"
            size = copy.stat().st_size
            copy.unlink()
        print(
            f"the file after eviction keeps its size: {size / 2**20:.0f} MiB"
            " (pages reused; VACUUM shrinks it)"
        )
        if args.steady:
            trio.run(bench_steady, args.steady, 0, work)
            trio.run(bench_steady, args.steady, 5_000, work)


if __name__ == "__main__":
    main()
