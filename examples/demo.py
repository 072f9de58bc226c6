"""A 20-second tour of Shoal, embedded in a trio program:

    python examples/demo.py

It submits a dependency graph of fake-agent tasks (plan → 8 builds → 8 tests → release), watches the
swarm scale up in one batch, kills a worker in the middle of a task to show the task come back and
finish on another worker, and waits for the idle workers to be retired. State goes to a temporary
directory; nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

import trio

from shoal.runtime import config_from_dict, open_swarm

T0 = time.monotonic()


def say(what: str) -> None:
    print(f"{time.monotonic() - T0:6.2f}s  {what}", flush=True)


async def main(state_dir: str) -> None:
    config = config_from_dict(
        {
            "state_dir": state_dir,
            "scaling": {
                "max_workers": 6,
                "tick_s": 0.2,
                "idle_s": 2.0,
                "stabilisation_s": 4.0,
                "max_retire_per_tick": 2,
            },
            "log": {"json": True},
        }
    )
    async with open_swarm(config) as swarm:
        graph = [{"id": "plan", "prompt": "plan the release [[think:0.5]]"}]
        for i in range(8):
            graph.append(
                {
                    "id": f"build-{i}",
                    "prompt": f"build part {i} [[think:1]]",
                    "deps": ["plan"],
                    "category": "build",
                }
            )
            graph.append(
                {
                    "id": f"test-{i}",
                    "prompt": f"test part {i} [[think:0.5]]",
                    "deps": [f"build-{i}"],
                    "category": "test",
                }
            )
        graph.append({"id": "release", "prompt": "ship it", "deps": [f"test-{i}" for i in range(8)]})
        await swarm.submit_many(graph)
        say(f"submitted {len(graph)} tasks: plan → 8 builds → 8 tests → release")

        killed = False
        with swarm.events(("scale.*", "worker.crashed", "task.running", "task.done")) as events:
            async for event in events:
                data = event.data
                if event.topic == "scale.up":
                    say(f"scale up   +{data['count']} {data.get('model')} ({data.get('reason')})")
                elif event.topic == "scale.down":
                    say(f"scale down -{data['count']} {data.get('worker')} ({data.get('reason')})")
                    if not swarm.workers() or len(swarm.workers()) <= 1:
                        break
                elif event.topic == "worker.crashed":
                    say(f"worker {data['worker']} crashed (signal {data.get('signal')})")
                elif event.topic == "task.running":
                    if data.get("attempt", 1) > 1:
                        say(
                            f"{data['task_id']} running again on {data['worker']} (attempt {data['attempt']})"
                        )
                    if data["task_id"] == "build-3" and not killed:
                        killed = True
                        pid = swarm.worker(data["worker"]).pid
                        await trio.sleep(0.3)  # let it get into the task, then pull the plug
                        say(f"killing {data['worker']} (pid {pid}) in the middle of build-3")
                        if pid:
                            os.kill(pid, signal.SIGKILL)
                elif event.topic == "task.done" and data["task_id"] == "release":
                    release = await swarm.get("release")
                    say(f"release done: {release.result!r}; waiting for idle workers to be retired")
        build3 = await swarm.get("build-3")
        say("build-3 attempts: " + ", ".join(f"#{a.n} {a.outcome} on {a.worker}" for a in build3.attempts))
        status = await swarm.status()
        say(f"final: {status['queue']}, workers {status['workers']}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        trio.run(main, tmp)
