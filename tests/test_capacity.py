"""End-to-end capacity: real fake-agent workers in real PTYs, the scaler deciding on real events.

Category stranding (issue 13 item 3): at max_workers with idle workers that take other categories,
work of a category none of them takes gets a slot at once. Memory (issue 14 item 4): the scaler
never spawns past the free-memory floor, read here from a file the test writes (`node.meminfo_path`),
and `swarm.status` says what holds the swarm back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from swarmkit import swarm_config, wait_for

from shoal.actors.tree import open_swarm
from shoal.protocols.tasks import TaskState
from shoal.protocols.workers import WorkerState

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_category_no_worker_takes_gets_a_worker_at_once_at_the_cap(tmp_path: Path) -> None:
    # idle_s and the window are long: only the at-once rebalance can free a slot within the test
    config = swarm_config(tmp_path, scaling={"max_workers": 2, "idle_s": 600.0, "stabilisation_s": 600.0})
    async with open_swarm(config) as swarm:
        for i in range(2):
            await swarm.submit({"id": f"warm{i}", "prompt": "[[think:0.3]] warm up"})
        for i in range(2):
            assert (await swarm.wait(f"warm{i}", timeout=30)).state is TaskState.DONE
        workers = swarm.workers()
        assert len(workers) == 2
        for info in workers:
            await swarm.set_capabilities(info.id, ["docs"])
        with swarm.events(("scale.down", "scale.up")) as sub:
            await swarm.submit({"id": "b", "prompt": "build it", "category": "build"})
            down = await wait_for(sub, "scale.down", timeout=30)
            assert down.data["reason"] == "rebalance"
            up = await wait_for(sub, "scale.up", timeout=30)
            assert up.data["reason"] == "category"
            done = await swarm.wait("b", timeout=30)
            assert done.state is TaskState.DONE
            # one retirement for one task: the other limited worker stays, beside the new unlimited one
            live = [i for i in swarm.workers() if i.state in (WorkerState.IDLE, WorkerState.BUSY)]
            assert sorted(i.capabilities is None for i in live) == [False, True]
            later = []
            while True:
                try:
                    later.append(sub.receive_nowait())
                except trio.WouldBlock:
                    break
            assert [e.data["worker"] for e in later if e.topic == "scale.down"] == []
