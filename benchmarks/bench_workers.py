"""Worker benchmarks: spawning, round trip, idle cost, and the spawn methods compared.

    python benchmarks/bench_workers.py                 # spawn + roundtrip (the issue's figures)
    python benchmarks/bench_workers.py spawn --workers 64 --slots 2   # default: one per core, and cores-1
    python benchmarks/bench_workers.py roundtrip --tasks 500
    python benchmarks/bench_workers.py idle --workers 1000
    python benchmarks/bench_workers.py methods         # why Popen+setsid on the loop (docs/workers.md)

spawn: time for the loop to start N fake-agent workers until all are idle, and the longest stall of
the trio loop meanwhile (goal: all 64 idle within 2 s, no stall over 5 ms). A stall is measured two
ways: the longest single task step (trio Instrument) and the lateness of a 1 ms ticker.
roundtrip: Assign sent to an idle worker → TaskFinished(DONE) received from its reports channel,
with the fake agent answering at once, per profile (goal p99 ≤ 2 ms for prompt, marker, stream-json).
idle: N idle workers running `cat` in a PTY: CPU of this process at rest and memory per worker
(limits: ≤ 3 % of one core in total, ≤ 256 KiB each).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from shoal.actors.worker import WorkerActor
from shoal.protocols.config import ProfileConfig, WorkersConfig
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import Assignment, Outcome
from shoal.protocols.workers import Assign, StateChanged, Stop, TaskFinished, WorkerState


class StepTimer(trio.abc.Instrument):
    """The longest single task step: how long one task held the loop without yielding."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.culprit = ""
        self._t = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        step = time.perf_counter() - self._t
        if step > self.longest:
            self.longest = step
            self.culprit = task.name.rsplit(".", 1)[-1]


async def _ticker(late: list[float], period: float = 0.001) -> None:
    while True:
        t = time.perf_counter()
        await trio.sleep(period)
        late.append(time.perf_counter() - t - period)


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Fleet:
    """N workers under one nursery, their reports in one channel, waiting on states."""

    def __init__(self, nursery: trio.Nursery, profile: ProfileConfig, limiter: trio.CapacityLimiter | None):
        self.nursery = nursery
        self.profile = profile
        self.limiter = limiter
        self.send, self.recv = trio.open_memory_channel[Any](100_000)
        self.workers: dict[str, WorkerActor] = {}
        self.addresses: dict[str, Any] = {}
        self.states: dict[str, WorkerState] = {}
        self.finished: dict[str, trio.Event] = {}
        self.last_finish: dict[str, TaskFinished] = {}
        self.changed = trio.Event()
        nursery.start_soon(self._pump)

    async def _pump(self) -> None:
        async for report in self.recv:
            if isinstance(report, StateChanged):
                self.states[report.worker] = report.state
                self.changed.set()
                self.changed = trio.Event()
            elif isinstance(report, TaskFinished):
                self.last_finish[report.worker] = report
                self.finished[report.worker].set()

    async def start(self, wid: str) -> None:
        worker = WorkerActor(
            wid,
            wid,
            "bench",
            self.profile,
            "sonnet",
            None,
            self.send.clone(),
            WorkersConfig(),
            spawn_limiter=self.limiter,
        )
        self.workers[wid] = worker
        self.finished[wid] = trio.Event()
        self.addresses[wid] = await self.nursery.start(worker.run)

    async def wait_all(self, state: WorkerState) -> None:
        while sum(1 for s in self.states.values() if s is state) < len(self.workers):
            bad = [w for w, s in self.states.items() if s is WorkerState.CRASHED]
            if bad:
                raise RuntimeError(f"crashed: {bad}: {self.workers[bad[0]].info().reason}")
            await self.changed.wait()

    async def stop_all(self) -> None:
        async with trio.open_nursery() as n:
            for addr in self.addresses.values():
                n.start_soon(addr.send, Stop(reason="bench done"))
        await self.wait_all(WorkerState.STOPPED)


async def bench_spawn(n: int, slots: int | None, profile_name: str) -> None:
    profile = BUILTIN_PROFILES[profile_name]
    timer = StepTimer()
    trio.lowlevel.add_instrument(timer)
    late: list[float] = []
    async with trio.open_nursery() as outer:
        outer.start_soon(_ticker, late)
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(slots) if slots else None
            fleet = Fleet(nursery, profile, limiter)
            await trio.sleep(0.05)
            late.clear()
            timer.longest, timer.culprit = 0.0, ""
            t0 = time.perf_counter()
            async with trio.open_nursery() as starters:
                for i in range(n):
                    starters.start_soon(fleet.start, f"w{i}")
            t_spawned = time.perf_counter() - t0
            await fleet.wait_all(WorkerState.IDLE)
            elapsed = time.perf_counter() - t0
            longest_step, worst_late = timer.longest, max(late, default=0.0)
            culprit = timer.culprit
            await fleet.stop_all()
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(timer)
    print(
        f"spawn  {profile_name:12s} {n} workers, start-up slots {slots or 'unlimited'}: all idle in "
        f"{_ms(elapsed)} (all spawned in {_ms(t_spawned)}); longest task step {_ms(longest_step)} "
        f"({culprit}), "
        f"worst 1 ms-ticker lateness {_ms(worst_late)}"
    )


async def bench_roundtrip(tasks: int, profile_name: str) -> None:
    # no context refresh: the fake agent's context grows 7 % per task, and a respawn mid-run would
    # time a process start-up, not a round trip (stream-json is ready before its first output)
    profile = attrs.evolve(BUILTIN_PROFILES[profile_name], context_refresh_percent=0.0)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, profile, None)
        await fleet.start("rt")
        await fleet.wait_all(WorkerState.IDLE)
        addr = fleet.addresses["rt"]
        times: list[float] = []
        for i in range(tasks + 20):
            fleet.finished["rt"] = trio.Event()
            idle = fleet.changed
            t = time.perf_counter()
            await addr.send(Assign(Assignment(f"t{i}", 1, "hi")))
            await fleet.finished["rt"].wait()
            dt = time.perf_counter() - t
            report = fleet.last_finish["rt"]
            if report.outcome is not Outcome.DONE:
                raise RuntimeError(f"task ended {report.outcome}: {report.reason}")
            while fleet.states.get("rt") is not WorkerState.IDLE:
                await idle.wait()
                idle = fleet.changed
            if i >= 20:  # warm-up
                times.append(dt)
        await fleet.stop_all()
        nursery.cancel_scope.cancel()
    print(
        f"rtt    {profile_name:12s} {tasks} tasks: p50 {_ms(statistics.median(times))}, "
        f"p99 {_ms(_pct(times, 99))}, max {_ms(max(times))}"
    )


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def bench_idle(n: int) -> None:
    # `cat` in a PTY, done when it echoes a marker: the "trivial profile"
    profile = ProfileConfig(argv=("cat",), dialect="idle", transport="pty", options={"idle_ms": 50})
    gc.collect()
    rss0 = _rss()
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, profile, trio.CapacityLimiter(os.cpu_count() or 2))
        async with trio.open_nursery() as starters:
            for i in range(n):
                starters.start_soon(fleet.start, f"c{i}")
        await fleet.wait_all(WorkerState.IDLE)
        gc.collect()
        await trio.sleep(1.0)
        rss1 = _rss()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        await trio.sleep(10.0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - t0
        cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall * 100
        await fleet.stop_all()
        nursery.cancel_scope.cancel()
    print(
        f"idle   {n} idle `cat` workers: this process at rest {cpu:.2f} % of one core; "
        f"memory {(rss1 - rss0) / n / 1024:.1f} KiB per worker (RSS of the Shoal process)"
    )


# ---- spawn methods compared ---------------------------------------------------------------------


def _methods() -> None:
    """Block time of each way to start `cat` on a PTY with a controlling terminal."""
    import fcntl
    import termios

    import ptyprocess

    setsid = shutil.which("setsid")
    ballast = bytearray(200 * 1024 * 1024)  # a big parent, as a swarm with many workers is
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1

    def pre() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def via(kind: str) -> Any:
        if kind == "ptyprocess":
            return ptyprocess.PtyProcess.spawn(["cat"])
        master, slave = os.openpty()
        try:
            if kind == "setsid --ctty":
                p = subprocess.Popen(
                    [setsid or "setsid", "--ctty", "cat"], stdin=slave, stdout=slave, stderr=slave
                )
            elif kind == "preexec_fn":
                p = subprocess.Popen(["cat"], stdin=slave, stdout=slave, stderr=slave, preexec_fn=pre)
            else:
                p = subprocess.Popen(["cat"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        finally:
            os.close(slave)
        return p, master

    def done(handle: Any) -> None:
        if isinstance(handle, tuple):
            handle[0].kill()
            handle[0].wait()
            os.close(handle[1])
        else:
            handle.terminate(force=True)

    for kind, n in (
        ("start_new_session (no ctty)", 50),
        ("setsid --ctty", 50),
        ("preexec_fn", 50),
        ("ptyprocess", 5),
    ):
        blocks = []
        for _ in range(n):
            t = time.perf_counter()
            h = via(kind)
            blocks.append(time.perf_counter() - t)
            done(h)
        print(
            f"method {kind:28s} caller blocked: median {_ms(statistics.median(blocks))}, "
            f"max {_ms(max(blocks))} (n={n}, 200 MB parent)"
        )

    async def threaded() -> None:
        late: list[float] = []
        async with trio.open_nursery() as outer:
            outer.start_soon(_ticker, late)
            await trio.sleep(0.02)
            late.clear()
            handles = []
            async with trio.open_nursery() as n:
                for _ in range(32):

                    async def one() -> None:
                        handles.append(await trio.to_thread.run_sync(via, "setsid --ctty"))

                    n.start_soon(one)
            outer.cancel_scope.cancel()
        for h in handles:
            done(h)
        print(
            f"method {'Popen in a thread (x32)':28s} worst 1 ms-ticker lateness {_ms(max(late))} "
            "(GIL hand-offs between the spawning thread and the loop)"
        )

    trio.run(threaded)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", nargs="*", default=["spawn", "roundtrip"], help="spawn roundtrip idle methods"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--slots", type=int, action="append", help="start-up slots (0: unlimited); repeatable"
    )
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--profiles", default="fake,fake-marker,fake-stream")
    args = parser.parse_args()
    for what in args.what:
        if what == "spawn":
            cores = os.cpu_count() or 2
            for slots in args.slots or sorted({cores, max(1, cores - 1)}, reverse=True):
                trio.run(bench_spawn, args.workers or 64, slots, "fake")
        elif what == "roundtrip":
            for name in args.profiles.split(","):
                trio.run(bench_roundtrip, args.tasks, name)
        elif what == "idle":
            trio.run(bench_idle, args.workers or 1000)
        elif what == "methods":
            _methods()
        else:
            parser.error(f"unknown benchmark {what!r}")


if __name__ == "__main__":
    main()
