"""The swarm's supervision tree (actors/tree.py): a crashed leaf restarts while the swarm serves, a
crashed core child halts the swarm with the evidence and loses nothing, and the tree stops in order.

Crashes are injected the way OTP's `exit(Pid, Reason)` does (`kill_child`: the child is cancelled and
its exit is a crash), and once as a real exception raised inside a running actor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from swarmkit import swarm_config, wait_for

from shoal.actors.client import connect
from shoal.actors.tree import LEAF_MAX_RESTARTS, SwarmHalted, open_swarm
from shoal.protocols.errors import NotFound
from shoal.protocols.tasks import TaskState
from shoal.runtime.eventbus import Event

pytestmark = pytest.mark.usefixtures("no_leaks")


def _served(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    return swarm_config(
        tmp_path,
        gateway={"enabled": True, "port": 0},
        http={"enabled": True, "port": 0},
        scaling={"max_workers": 2},
        **sections,
    )


def _node(tree: list[dict[str, Any]], path: str) -> dict[str, Any]:
    nodes = tree
    node: dict[str, Any] = {}
    for part in path.split("/"):
        node = next(n for n in nodes if n["id"] == part)
        nodes = node.get("children", [])
    return node


def _restarted(path: str) -> Any:
    sup, _, child = path.rpartition("/")
    return lambda e: (
        e.topic == "supervisor.started" and e.data["supervisor"] == sup and e.data["child"] == child
    )


async def _submit_through_the_gateway(swarm: Any, prompt: str) -> None:
    async with connect(swarm.gateway_url, swarm.token) as client:
        reply = await client.call("tasks.submit", {"task": {"prompt": prompt}})
    task_id = reply["id"] if "id" in reply else reply["tasks"][0]["id"]
    assert (await swarm.wait(task_id, timeout=30)).state is TaskState.DONE


@pytest.mark.parametrize(
    "path", ["observers/metrics", "observers/alerts", "services/scaler", "services/http", "services/gateway"]
)
async def test_a_crashed_leaf_restarts_and_the_swarm_keeps_serving(tmp_path: Path, path: str) -> None:
    async with open_swarm(_served(tmp_path)) as swarm:
        await _submit_through_the_gateway(swarm, "before")
        with swarm.events(("supervisor.*",)) as sub:
            await swarm.kill_child(path, "injected by the test")
            crashed = await wait_for(sub, "supervisor.exited")
            assert crashed.data["child"] == path.rpartition("/")[2]
            assert "injected by the test" in crashed.data["error"]
            await wait_for(sub, _restarted(path), timeout=10)
        status = await swarm.status()
        assert status["state"] == "running"
        node = _node(status["tree"], path)
        assert node["state"] == "running" and node["restarts"] == 1
        assert "injected by the test" in node["last_crash"]
        await _submit_through_the_gateway(swarm, "after")  # the gateway may listen on a new port now
        assert (await swarm.metrics_snapshot()) is not None


async def test_a_real_exception_in_the_metrics_actor_is_a_crash_it_recovers_from(tmp_path: Path) -> None:
    async with open_swarm(_served(tmp_path)) as swarm:
        metrics = swarm.metrics
        handle = metrics.handle

        def boom_once(event: Event) -> None:
            if event.topic == "task.submitted":
                metrics.handle = handle  # the next incarnation handles events again
                raise RuntimeError("metrics could not take this event")
            handle(event)

        metrics.handle = boom_once  # type: ignore[method-assign]
        with swarm.events(("supervisor.*",)) as sub:
            task = await swarm.submit({"prompt": "trips the metrics actor"})
            crashed = await wait_for(sub, "supervisor.exited")
            assert "metrics could not take this event" in crashed.data["error"]
            await wait_for(sub, _restarted("observers/metrics"), timeout=10)
        assert (await swarm.wait(task.id, timeout=30)).state is TaskState.DONE


async def test_a_crash_of_the_queue_halts_the_swarm_with_evidence_and_loses_nothing(tmp_path: Path) -> None:
    config = _served(tmp_path)
    pids: list[int] = []
    halted: list[Event] = []
    with pytest.raises(SwarmHalted) as caught:
        async with open_swarm(config) as swarm:
            done = await swarm.submit({"id": "done", "prompt": "finished before the crash"})
            assert (await swarm.wait(done.id, timeout=30)).state is TaskState.DONE
            with swarm.events(("swarm.halted", "task.running")) as sub:
                await swarm.submit({"id": "waiting", "prompt": "[[hang]]"})
                await wait_for(sub, "task.running")
                pids.extend(w.pid for w in swarm.workers() if w.pid is not None)
                await swarm.kill_child("queue", "injected by the test")
                halted.append(await wait_for(sub, "swarm.halted"))
                await trio.sleep_forever()  # the halt cancels the block
    assert caught.value.child_id == "queue"
    assert "queue crashed" in str(caught.value) and "injected by the test" in str(caught.value)
    assert halted[0].data["evidence"]["child"] == "queue"
    assert pids, "a worker was running the hung task"
    for pid in pids:  # the halt stopped every worker: no agent process outlives the swarm
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    async with open_swarm(config) as swarm:  # nothing acknowledged before the halt is lost
        assert (await swarm.get("done")).state is TaskState.DONE
        waiting = await swarm.get("waiting")
        assert waiting.state in (TaskState.READY, TaskState.RUNNING)
        await swarm.cancel("waiting")


async def test_a_leaf_in_a_crash_loop_escalates_to_a_halt(tmp_path: Path, autojump_clock: Any) -> None:
    config = swarm_config(tmp_path, store={"path": ":memory:"}, scaling={"max_workers": 0})
    with pytest.raises(SwarmHalted) as caught:
        async with open_swarm(config) as swarm:
            with swarm.events(("supervisor.*",)) as sub:
                for _ in range(LEAF_MAX_RESTARTS + 1):
                    await swarm.kill_child("observers/alerts", "crash loop")
                    await wait_for(sub, lambda e: e.topic in ("supervisor.started", "supervisor.escalated"))
                await trio.sleep_forever()
    assert caught.value.evidence["child"] == "observers/alerts"
    assert "crash loop" in caught.value.evidence["error"]


async def test_the_tree_is_in_status_and_stops_in_reverse_order(tmp_path: Path) -> None:
    async with open_swarm(_served(tmp_path)) as swarm:
        tree = (await swarm.status())["tree"]
        assert [n["id"] for n in tree] == ["store", "queue", "observers", "workers", "services"]
        assert [n["id"] for n in _node(tree, "services")["children"]] == ["scaler", "http", "gateway"]
        assert _node(tree, "observers")["intensity"] == {"max_restarts": LEAF_MAX_RESTARTS, "period_s": 60.0}
        with pytest.raises(NotFound):
            await swarm.kill_child("services/nope")
        with pytest.raises(NotFound):
            await swarm.kill_child("nowhere/metrics")
        sub = swarm.events(("supervisor.stopped",))
    stopped = []
    while True:
        try:
            event = sub.receive_nowait()
        except trio.WouldBlock:
            break
        stopped.append(f"{event.data['supervisor']}/{event.data['child']}")
    assert stopped == [
        "services/gateway",
        "services/http",
        "services/scaler",
        "swarm/services",
        "swarm/workers",
        "observers/parks",
        "observers/alerts",
        "observers/metrics",
        "swarm/observers",
        "swarm/queue",
        "swarm/store",
    ]


async def test_shoal_status_tree_shows_each_child_its_restarts_and_last_crash(tmp_path: Path) -> None:
    from test_cli import shoal

    async with open_swarm(_served(tmp_path)) as swarm:
        with swarm.events(("supervisor.*",)) as sub:
            await swarm.kill_child("services/scaler", "injected by the test")
            await wait_for(sub, _restarted("services/scaler"), timeout=10)
        conn = ("--url", str(swarm.gateway_url), f"--token={swarm.token}")
        shown = await shoal(None, *conn, "status", "--tree", COLUMNS="200")
        assert shown.code == 0, shown.err
        lines = {line.strip("│├└─ ").split()[0]: line for line in shown.out.splitlines() if line.strip()}
        for child in (
            "store",
            "queue",
            "observers",
            "metrics",
            "alerts",
            "parks",
            "workers",
            "http",
            "gateway",
        ):
            assert child in lines and "running" in lines[child], shown.out
        assert "restarts 1" in lines["scaler"] and "injected by the test" in lines["scaler"], shown.out
        assert "restarts" not in lines["gateway"]
        as_json = await shoal(None, *conn, "status", "--tree", "--json")
        assert _node(as_json.json(), "services/scaler")["restarts"] == 1
