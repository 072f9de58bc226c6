"""Swarm benchmarks (issue "The swarm"): cold start, dispatch latency, recovery, throughput, scale,
makespan. Real fake-agent workers in real PTYs, the durable SQLite store in a temporary directory.

    python benchmarks/bench_swarm.py            # all of them
    python benchmarks/bench_swarm.py cold dispatch

Each prints one line of figures and its goal. Nothing here is asserted: RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from shoal.actors.swarm import SwarmHandle
from shoal.actors.tree import open_swarm
from shoal.protocols.config import SwarmConfig, config_from_dict
from shoal.runtime.eventbus import Event, Subscription


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def config(state: str, **sections: dict[str, Any]) -> SwarmConfig:
    base: dict[str, Any] = {
        "state_dir": state,
        "log": {"json": True},
        "scaling": {"tick_s": 0.5, "idle_s": 600, "stabilisation_s": 600},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_dict(base)


async def until(sub: Subscription, pred: Callable[[Event], bool], timeout: float = 120) -> Event:
    with trio.fail_after(timeout):
        while True:
            event = await sub.receive()
            if pred(event):
                return event


def topic_for(topic: str, task_id: str) -> Callable[[Event], bool]:
    return lambda e: e.topic == topic and e.data.get("task_id") == task_id


async def wait_idle(swarm: SwarmHandle, n: int, timeout: float = 120) -> None:
    with swarm.events(("worker.state",)) as sub, trio.fail_after(timeout):
        while sum(1 for w in swarm.workers() if w.state.value == "idle") < n:
            await sub.receive()


# ---- the benchmarks ------------------------------------------------------------------------------


async def bench_cold(state: str) -> str:
    """200 tasks to an empty swarm with max_workers 32: time until 32 tasks are running."""
    cfg = config(state, scaling={"max_workers": 32, "max_spawn_per_tick": 32})
    async with open_swarm(cfg) as swarm:
        with swarm.events(("task.running",), size=10_000) as sub:
            t0 = time.perf_counter()
            await swarm.submit_many([{"prompt": f"t{i} [[think:30]]"} for i in range(200)])
            running = 0
            while running < 32:
                await until(sub, lambda e: True)
                running += 1
            elapsed = time.perf_counter() - t0
    return f"cold start: 32 of 200 tasks running after {elapsed:.3f} s (goal ≤ 1.5 s; seed ≈ 40 s)"


async def bench_dispatch(state: str, n: int = 1000) -> str:
    """Submit → written to an already idle worker, p50/p99.

    The moment of writing is the worker's `busy` report (sent as it writes the prompt), not
    `task.running`, which is published only once the claim is committed to SQLite.
    """
    cfg = config(state, scaling={"min_workers": 4, "max_workers": 4})
    lat: list[float] = []
    async with open_swarm(cfg) as swarm:
        await wait_idle(swarm, 4)
        with swarm.events(("worker.state", "task.done"), size=10_000) as sub:
            for i in range(n):
                t0 = time.time()
                task = await swarm.submit({"prompt": f"d{i}"})
                # Either order: a worker event is published once the queue's events before it are
                # (cause before effect), so an instant task's task.done may precede its busy report.
                busy: Event | None = None
                done = False
                while busy is None or not done:
                    e = await until(sub, lambda e: e.topic == "task.done" or e.data.get("state") == "busy")
                    if e.topic == "worker.state":
                        busy = e
                    done = done or e.data.get("task_id") == task.id
                lat.append(busy.ts - t0)
    return (
        f"dispatch latency ({n} tasks, idle workers): p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}"
        f" (goal p99 ≤ 5 ms)"
    )


async def bench_recovery(state: str, n: int = 30) -> str:
    """Worker SIGKILLed mid-task → its task running again on another idle worker, p50/p99."""
    cfg = config(
        state,
        scaling={"min_workers": 4, "max_workers": 4},
        supervision={"breaker": {"crash_rate_max": 1000}, "backoff": {"min_s": 0.01, "max_s": 0.05}},
    )
    lat: list[float] = []
    async with open_swarm(cfg) as swarm:
        with swarm.events(("task.running",), size=10_000) as sub:
            for i in range(n):
                await wait_idle(swarm, 3)
                task = await swarm.submit({"prompt": f"r{i} [[think:30]]", "max_attempts": 5})
                first = await until(sub, lambda e, t=task.id: e.data.get("task_id") == t)
                pid = swarm.worker(first.data["worker"]).pid
                assert pid is not None
                t0 = time.time()
                os.kill(pid, signal.SIGKILL)
                again = await until(sub, lambda e, t=task.id: e.data.get("task_id") == t)
                lat.append(again.ts - t0)
                await swarm.cancel(task.id)
    return f"recovery ({n} kills): p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))} (goal p99 ≤ 50 ms)"


async def bench_throughput(state: str, n: int = 20_000, workers: int = 32, profile: str = "fake") -> str:
    """n instant tasks through `workers` workers with the durable store."""
    # agents whose context does not grow: "instant tasks" measures dispatch, not context refreshes
    # (a refresh respawns the agent: ~55 ms of interpreter start-up every dozen tasks at 7 %/task)
    from shoal.protocols.profiles import BUILTIN_PROFILES

    base = BUILTIN_PROFILES[profile]
    steady = {
        "argv": [*base.argv, "--context-step", "0"],
        "dialect": base.dialect,
        "transport": base.transport,
        "options": dict(base.options),
    }
    cfg = config(
        state,
        workers={"profile": "steady", "profiles": {"steady": steady}},
        scaling={"min_workers": workers, "max_workers": workers, "max_spawn_per_tick": workers},
    )
    async with open_swarm(cfg) as swarm:
        await wait_idle(swarm, workers)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with swarm.events(("task.done",), size=n + 1000) as sub:
            t0 = time.perf_counter()
            batch = 500
            for start in range(0, n, batch):
                await swarm.submit_many([{"prompt": f"x{i}"} for i in range(start, min(n, start + batch))])
            done = 0
            with trio.fail_after(600):
                while done < n:
                    await sub.receive()
                    done += 1
            elapsed = time.perf_counter() - t0
            dropped = sub.dropped
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        shoal_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        agents = [w.pid for w in swarm.workers() if w.pid]
    agent_cpu = sum(_proc_cpu(pid) for pid in agents)  # read before exit would be better; see note
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    return (
        f"throughput ({n} instant tasks, {workers} {profile} workers): {n / elapsed:,.0f} tasks/s"
        f" in {elapsed:.1f} s (goal ≥ 1,000/s); CPU: shoal {shoal_cpu:.1f} s"
        f" ({shoal_cpu / n * 1e6:.0f} µs/task), agents ≈{max(agent_cpu, reaped):.1f} s on 2 cores"
        f"{f'; {dropped} events dropped by this reader' if dropped else ''}"
    )


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


async def bench_scale(state: str, n: int = 1000, probes: int = 300) -> str:
    """n idle `cat` workers in PTYs: Shoal's CPU at rest, memory per worker, dispatch p99."""
    cat = {
        "argv": ["/bin/sh", "-c", "stty -echo; exec cat"],
        "dialect": "marker",
        "transport": "pty",
        "startup_timeout_s": 120,
        "stop_timeout_s": 1,
    }
    cfg = config(
        state,
        workers={"profile": "cat", "profiles": {"cat": cat}, "ring_buffer_kib": 16},
        scaling={"min_workers": n, "max_workers": n, "max_spawn_per_tick": 100, "tick_s": 1.0},
        supervision={"breaker": {"crash_rate_max": 10_000}},
    )
    rss0 = _rss()
    async with open_swarm(cfg) as swarm:
        t0 = time.perf_counter()
        await wait_idle(swarm, n, timeout=600)
        start_s = time.perf_counter() - t0
        await trio.sleep(2)  # let start-up settle before measuring rest
        rss1 = _rss()
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        rest = 10.0
        await trio.sleep(rest)
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)) / rest * 100
        lat: list[float] = []
        with swarm.events(("task.running", "task.done"), size=10_000) as sub:
            for i in range(probes):
                t = time.time()
                task = await swarm.submit({"prompt": f"probe{i}"})
                running = await until(
                    sub, lambda e, tid=task.id: e.topic == "task.running" and e.data["task_id"] == tid
                )
                lat.append(running.ts - t)
                await swarm.cancel(task.id) if (await swarm.get(task.id)).state.value == "running" else None
    per_worker = (rss1 - rss0) / n
    return (
        f"scale ({n} idle cat workers, up in {start_s:.1f} s): Shoal CPU at rest {cpu:.2f} % of one core"
        f" (goal ≤ 3 %), runtime memory {per_worker / 1024:.0f} KiB/worker (goal ≤ 256 KiB),"
        f" dispatch p50 {ms(pct(lat, 50))} p99 {ms(pct(lat, 99))} (goal p99 ≤ 10 ms)"
    )


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def bench_makespan(state: str) -> str:
    """64 tasks of 1 s think time with max_workers 16 (ideal 4 s)."""
    cfg = config(state, scaling={"max_workers": 16, "max_spawn_per_tick": 16})
    async with open_swarm(cfg) as swarm:
        t0 = time.perf_counter()
        tasks = await swarm.submit_many([{"prompt": f"m{i} [[think:1]]"} for i in range(64)])
        for task in tasks:
            await swarm.wait(task.id, timeout=120)
        elapsed = time.perf_counter() - t0
    return f"makespan: 64 × 1 s tasks on ≤16 workers in {elapsed:.2f} s (ideal 4 s, goal ≤ 4.5 s)"


BENCHES: dict[str, Callable[[str], Any]] = {
    "cold": bench_cold,
    "dispatch": bench_dispatch,
    "recovery": bench_recovery,
    "makespan": bench_makespan,
    "throughput": bench_throughput,
    "scale": bench_scale,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    args = parser.parse_args()
    unknown = [name for name in args.which if name not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    for name in args.which or list(BENCHES):
        with tempfile.TemporaryDirectory(prefix=f"shoal-bench-{name}-") as state:
            line = trio.run(BENCHES[name], str(Path(state) / "state"))
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
