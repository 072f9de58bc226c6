"""A 529 storm on 16 workers of one model: API requests to that model per minute, without and with
the swarm-wide back-off (issue 16, `limits.retry_storm_*`).

    python benchmarks/bench_retry_storm.py                 # 120 s each way
    python benchmarks/bench_retry_storm.py --seconds 60 --retries 10 --delay 1

16 `fake-stream` workers (the fake agent speaking Claude Code's stream-json on pipes), all on sonnet,
and a deep backlog of tasks whose API is overloaded: each task's request fails RETRIES times with 529
(`system/api_retry`, DELAY seconds apart, as Claude Code retries) before it goes through. A request
is a task's first try (`task.running`) or one of its retries (`worker.api_retry`). The same workload
runs twice for the same time: with the back-off off (`retry_storm_workers` out of reach), then on
(the defaults: 3 workers retrying within 60 s park the model 30 s, doubling per storm up to 600 s).
Printed: requests per minute over the whole window and per 10 s slice, the storms and parks.
Nothing is asserted: RESULTS.md records what it printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Any

import trio

from shoal.actors.tree import open_swarm
from shoal.protocols.config import SwarmConfig, config_from_dict

WORKERS = 16
SLICE_S = 10.0


def config(state: str, backoff: bool) -> SwarmConfig:
    return config_from_dict(
        {
            "state_dir": state,
            "log": {"json": True, "level": "warning"},
            "workers": {"profile": "fake-stream"},
            "scaling": {
                "min_workers": WORKERS,
                "max_workers": WORKERS,
                "tick_s": 0.5,
                "idle_s": 3600,
                "stabilisation_s": 3600,
            },
            # off: a storm would need more workers than there are
            "limits": {} if backoff else {"retry_storm_workers": 1_000_000},
        }
    )


async def run(backoff: bool, seconds: float, retries: int, delay: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_swarm(config(tmp, backoff)) as swarm:
            with swarm.events(("worker.state",)) as sub:
                idle: set[str] = set()
                with trio.fail_after(120):
                    while len(idle) < WORKERS:
                        event = await sub.receive()
                        if event.data.get("state") == "idle":
                            idle.add(event.data["worker"])
            per_task = retries * delay
            backlog = int(WORKERS * (seconds / max(per_task, 0.1) + 2) * 1.5)
            topics = (
                "task.running",
                "worker.api_retry",
                "model.retry_storm",
                "model.parked",
                "model.unparked",
            )
            requests: list[float] = []
            storms: list[dict[str, Any]] = []
            with swarm.events(topics, size=100_000) as sub:
                start = trio.current_time()
                await swarm.submit_many(
                    [
                        {"prompt": f"storm {i} [[retry:{retries},529,{delay}]]", "model": "sonnet"}
                        for i in range(backlog)
                    ]
                )
                with trio.move_on_at(start + seconds):
                    async for event in sub:
                        at = trio.current_time() - start
                        if event.topic in ("task.running", "worker.api_retry"):
                            if event.data.get("model") in ("sonnet", None):
                                requests.append(at)
                        elif event.topic == "model.retry_storm":
                            storms.append({"at": round(at, 1), **event.data})
            dropped = sub.dropped
            await swarm.stop(drain=False)
    slices = [0] * int(seconds // SLICE_S + (1 if seconds % SLICE_S else 0))
    for at in requests:
        slices[min(len(slices) - 1, int(at // SLICE_S))] += 1
    return {
        "requests": len(requests),
        "per_min": len(requests) / seconds * 60.0,
        "slices": slices,
        "storms": storms,
        "dropped": dropped,
    }


def show(label: str, result: dict[str, Any], seconds: float) -> None:
    rate = f"{result['per_min']:.0f} per minute"
    print(f"{label}: {result['requests']} requests to sonnet in {seconds:g} s = {rate}")
    print(f"  per {SLICE_S:g} s: {' '.join(str(n) for n in result['slices'])}")
    for s in result["storms"]:
        print(
            f"  storm at {s['at']:g} s: {len(s['workers'])} workers retrying ({s['error']}),"
            f" sonnet parked {s['park_s']:g} s (level {s['level']})"
        )
    if result["dropped"]:
        print(f"  (events dropped: {result['dropped']})")


async def main(args: argparse.Namespace) -> None:
    print(
        f"bench_retry_storm: {WORKERS} fake-stream workers on sonnet, each request fails {args.retries}x"
        f" with 529 ({args.delay:g} s apart) before it goes through; {args.seconds:g} s each way"
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    t0 = time.time()
    before = await run(False, args.seconds, args.retries, args.delay)
    show("back-off off", before, args.seconds)
    after = await run(True, args.seconds, args.retries, args.delay)
    show("back-off on (limits defaults: 3 workers / 60 s, park 30 s doubling to 600 s)", after, args.seconds)
    ratio = after["per_min"] / before["per_min"] if before["per_min"] else float("nan")
    print(
        f"requests per minute: {before['per_min']:.0f} -> {after['per_min']:.0f} ({ratio:.0%} of the storm's)"
    )
    print(f"took {time.time() - t0:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measuring window, each way")
    parser.add_argument("--retries", type=int, default=10, help="529s per request before it goes through")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between retries")
    trio.run(main, parser.parse_args())
    sys.exit(0)
