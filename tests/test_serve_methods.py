"""Every gateway method, once, against a live `shoal serve` subprocess (a fake-agent worker in a PTY,
SQLite state on disk), through `shoal.runtime.connect`: the public contract as a remote client sees
it. test_gateway.py covers each method in depth against an embedded swarm; this one checks that the
served process answers all of them, and fails when a method is added without being exercised here.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli import shoal_serve

from shoal.actors.client import Client, EventStream, connect
from shoal.protocols import api, rpc
from shoal.protocols.errors import Conflict
from shoal.runtime.eventbus import Event


class Calls:
    """`call` that remembers which methods were called."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.called: set[str] = set()

    async def __call__(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.called.add(method)
        return await self.client.call(method, params)


async def until(stream: EventStream, topic: str, **match: Any) -> Event:
    """The next event on `stream` with this topic and these data fields."""
    with trio.fail_after(30):
        async for item in stream:
            if (
                isinstance(item, Event)
                and item.topic == topic
                and all(item.data.get(k) == v for k, v in match.items())
            ):
                return item
    raise AssertionError("stream ended")


@asynccontextmanager
async def idle_worker(call: Calls, stream: EventStream) -> AsyncIterator[str]:
    """The id of an idle worker, waiting for one on `stream` (worker.state) if none is idle yet."""
    for _ in range(100):
        idle = [w for w in (await call("workers.list"))["workers"] if w["state"] == "idle"]
        if idle:
            yield idle[0]["id"]
            return
        try:
            await until(stream, "worker.state", state="idle")
        except trio.TooSlowError:
            raise AssertionError(f"no idle worker: {await call('workers.list')}") from None
    raise AssertionError("no idle worker")


async def test_every_method_against_a_live_shoal_serve(tmp_path: Path) -> None:
    flags = ["--min-workers", "1", "--max-workers", "1", "--no-dashboard", "--set", "scaling.tick_s=0.05"]
    with shoal_serve(tmp_path / "state", *flags) as served:
        async with connect(served.url, served.token) as c:
            call = Calls(c)
            async with c.events(["worker.*", "task.*", "swarm.*"]) as stream:
                await session_and_swarm(call, served.token)
                await tasks_and_workers(call, stream)
                await halt_stop_and_start(call, stream)
            await events(call)
    assert call.called == set(api.METHODS), f"not exercised: {set(api.METHODS) - call.called}"


async def session_and_swarm(call: Calls, token: str) -> None:
    assert (await call("auth.login", {"token": token}))["ok"] is True
    version = await call("shoal.version")
    assert version["protocol"] == rpc.PROTOCOL_VERSION and set(version["methods"]) == set(api.METHODS)
    assert (await call("swarm.status"))["state"] == "running"
    nodes = await call("nodes.list")  # one node on SQLite: itself, so clients need no special case
    assert nodes["cluster"] is False and [n["state"] for n in nodes["nodes"]] == ["alive"]
    assert isinstance(await call("swarm.metrics"), dict)
    series = await call("swarm.series", {"window_s": 60})
    assert isinstance(series, dict) and series
    assert (await call("swarm.config.get"))["scaling"]["max_workers"] == 1
    await call("swarm.config.patch", {"partial": {"scaling": {"idle_s": 123}}})
    assert (await call("swarm.config.get"))["scaling"]["idle_s"] == 123
    outcome = await call("alerts.test")
    assert isinstance(outcome, dict | list)  # no webhooks configured: an empty report, not an error
    paused = await call("models.pause", {"model": "opus", "reason": "budget review"})
    assert paused == {"model": "opus", "parked": True, "until": None, "reason": "budget review"}
    opus = next(m for m in (await call("swarm.status"))["models"] if m["name"] == "opus")
    assert opus["state"] == "parked" and opus["until"] is None
    assert (await call("models.resume", {"model": "opus"}))["parked"] is False


async def tasks_and_workers(call: Calls, stream: EventStream) -> None:
    async with idle_worker(call, stream) as wid:
        assert (await call("workers.get", {"id": wid}))["state"] == "idle"
        await call("tasks.submit", {"task": {"id": "hello", "prompt": "hello there"}})
        await until(stream, "task.done", task_id="hello")
        assert (await call("tasks.get", {"id": "hello"}))["state"] == "done"
        with pytest.raises(Conflict, match="worktree"):  # the fake profile works in no worktree
            await call("tasks.diff", {"id": "hello"})
        with pytest.raises(Conflict, match="worktree"):
            await call("tasks.merge", {"id": "hello", "into": "main"})
        with pytest.raises(Conflict, match="no attempt kept artifacts"):
            await call("tasks.artifacts", {"id": "hello"})
        assert await call("workspaces.list") == {"worktrees": [], "branches": []}  # no worktree profile
        assert await call("workspaces.prune", {"older_than_s": 86400}) == {
            "removed_worktrees": [],
            "deleted_branches": [],
            "removed_artifacts": [],
        }
        page = await call("tasks.list", {"state": "done", "limit": 10})
        assert "hello" in [t["id"] for t in page["tasks"]]
        logs = await call("workers.logs", {"id": wid, "tail": 4096})
        assert b"hello there" in base64.b64decode(logs["data"])

        # a paused worker takes nothing: the queue's controls on a ready task
        await call("workers.pause", {"id": wid})
        await call(
            "tasks.submit",
            {"tasks": [{"id": "queued", "prompt": "later"}, {"id": "pinned", "prompt": "pin"}]},
        )
        assert (await call("tasks.boost", {"id": "queued", "priority": 5}))["priority"] == 5
        assert (await call("tasks.cancel", {"id": "queued"}))["state"] == "cancelled"
        assert (await call("tasks.retry", {"id": "queued"}))["state"] == "ready"
        assert (await call("tasks.skip", {"id": "queued"}))["state"] == "skipped"
        assert (await call("tasks.assign", {"id": "pinned", "worker": wid}))["id"] == "pinned"
        await call("workers.set_capabilities", {"id": wid, "capabilities": None})
        await call("workers.set_model", {"id": wid, "model": "sonnet"})
        await call("workers.resume", {"id": wid})
        done = await until(stream, "task.done", task_id="pinned")
        assert done.data["worker"] == wid

        # a menu the agent waits on (the fake agent's model picker): a person answers it
        await call("tasks.submit", {"task": {"id": "menu", "prompt": "[[picker]] choose a model"}})
        asked = await until(stream, "worker.needs_input", task_id="menu")
        while len(asked.data["options"]) < 3:  # a read ended inside the menu: the rest comes next
            asked = await until(stream, "worker.needs_input", task_id="menu")
        assert asked.data["options"][1].startswith("Opus")
        answered = await call("workers.answer", {"id": asked.data["worker"], "choice": 2})
        assert answered["choice"] == 2 and answered["label"].startswith("Opus")
        await until(stream, "task.done", task_id="menu")

    async with idle_worker(call, stream) as wid:
        # an agent that reports its own completion (while its turn is still drawing)
        await call("tasks.submit", {"task": {"id": "self", "prompt": "[[think:1]] reporting myself"}})
        running = await until(stream, "task.running", task_id="self")
        done = await call(
            "tasks.complete",
            {"id": "self", "attempt": running.data["attempt"], "status": "done", "result": "ok"},
        )
        assert done["state"] == "done" and done["result"] == "ok"

    async with idle_worker(call, stream) as wid:  # the worker's own end of the turn was stale
        assert (await call("tasks.get", {"id": "self"}))["result"] == "ok"
        old_pid = (await call("workers.get", {"id": wid}))["pid"]
        await call("workers.restart", {"id": wid})
        await until(stream, "worker.state", worker=wid, state="refreshing")
        await until(stream, "worker.state", worker=wid, state="idle")
        assert (await call("workers.get", {"id": wid}))["pid"] != old_pid  # a fresh process

    async with idle_worker(call, stream) as wid:
        attached = await call("workers.attach", {"id": wid})
        assert attached["encoding"] == "base64" and base64.b64decode(attached["snapshot"])
        assert (await call("workers.resize", {"id": wid, "rows": 30, "cols": 100}))["rows"] == 30
        typed = await call("workers.input", {"id": wid, "data": base64.b64encode(b" ").decode()})
        assert typed["bytes"] == 1
        assert (await call("workers.detach", {"id": wid}))["attached"] is False
        await call("workers.kill", {"id": wid})
        await until(stream, "worker.exited", worker=wid)


async def halt_stop_and_start(call: Calls, stream: EventStream) -> None:
    await call("swarm.halt", {"reason": "checking the brakes"})
    assert (await call("swarm.status"))["state"] == "halted"
    await call("swarm.resume")
    assert (await call("swarm.status"))["state"] == "running"
    await call("swarm.stop", {"drain": True})
    assert (await call("swarm.status"))["state"] != "running"
    await call("swarm.start")
    assert (await call("swarm.status"))["state"] == "running"
    await call("tasks.submit", {"task": {"id": "after-start", "prompt": "still serving"}})
    await until(stream, "task.done", task_id="after-start")


async def events(call: Calls) -> None:
    sub = await call("events.subscribe", {"topics": ["task.*"], "batch": True})
    assert sub["batch"] is True
    bye = await call("events.unsubscribe", {"subscription": sub["subscription"]})
    assert bye["unsubscribed"] == [sub["subscription"]]
