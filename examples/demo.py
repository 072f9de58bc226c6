"""A 20-second tour of Shoal, embedded in a trio program:

    python3 examples/demo.py

It submits a dependency graph of fake-agent tasks (plan → 8 builds → 8 tests → release), watches the
swarm scale up in one batch, kills a worker in the middle of a task to show the task come back and
finish on another worker, and waits for the idle workers to be retired. State goes to a temporary
directory; nothing is left behind.

Run by a Python that does not have Shoal installed (the system's `python3`, outside the virtualenv),
it runs itself again with the checkout's `.venv/bin/python`, creating that virtualenv first the way
`scripts/serve` does when it does not exist yet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _in_the_venv() -> None:
    """Re-run this file with the checkout's virtualenv when this Python cannot import Shoal."""
    try:
        import trio  # noqa: F401

        import shoal.runtime  # noqa: F401
    except ModuleNotFoundError as exc:
        venv = Path(os.environ.get("SHOAL_VENV") or ROOT / ".venv")
        python = venv / "bin" / "python"
        if Path(sys.executable).absolute() == python.absolute() or os.environ.get("SHOAL_DEMO_REEXEC"):
            sys.exit(f"demo: {exc.name} is not installed in {sys.executable}: run scripts/serve once")
        if not python.exists():
            print(f"demo: no Shoal in this Python; creating {venv} (first run only)", file=sys.stderr)
            subprocess.run(["bash", str(ROOT / "scripts" / "_bootstrap.sh")], check=True)
        os.environ["SHOAL_DEMO_REEXEC"] = "1"
        os.execv(python, [str(python), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    _in_the_venv()

import signal  # noqa: E402  (after the switch to the virtualenv)
import tempfile  # noqa: E402
import time  # noqa: E402

import trio  # noqa: E402

from shoal.runtime import config_from_dict, open_swarm  # noqa: E402

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

        killed = released = False
        topics = ("scale.*", "worker.crashed", "worker.exited", "task.running", "task.done")
        with swarm.events(topics) as events:
            async for event in events:
                data = event.data
                if event.topic == "scale.up":
                    say(f"scale up   +{data['count']} {data.get('model')} ({data.get('reason')})")
                elif event.topic in ("scale.down", "worker.exited"):
                    if event.topic == "scale.down":
                        say(f"scale down -{data['count']} {data.get('worker')} ({data.get('reason')})")
                    # done once the release is and every worker is retired or on its way out (a check on
                    # each retirement and each exit: the last two may be retired in one decision)
                    working = [w for w in swarm.workers() if w.state.value not in ("stopping", "stopped")]
                    if released and not working:
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
                    released = True
                    release = await swarm.get("release")
                    say(f"release done: {release.result!r}; waiting for idle workers to be retired")
        build3 = await swarm.get("build-3")
        say("build-3 attempts: " + ", ".join(f"#{a.n} {a.outcome} on {a.worker}" for a in build3.attempts))
        status = await swarm.status()
        say(f"final: {status['queue']}, workers {status['workers']}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        trio.run(main, tmp)
