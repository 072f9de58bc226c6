"""A cluster: several `shoal serve` processes share one queue on a real PostgreSQL (issue 18).

Every node is a separate OS process with its own workers (the fake agent in real PTYs), gateway and
state directory; they share the database and one token file. What the cluster wrote is read from
PostgreSQL itself, not only from what a node says.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from clusterkit import Node, dump, failed, pg_rows, ready, start_node, stop_all

from shoal.actors.auth import read_token
from shoal.actors.client import connect
from shoal.protocols.tasks import TaskState
from shoal.runtime.eventbus import Event

pytestmark = pytest.mark.postgres


@pytest.fixture
def nodes(request: pytest.FixtureRequest, pg_url: str) -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    if failed(request):
        print(dump(started, pg_url))
    stop_all(started)


async def start(nodes: list[Node], root: Path, url: str, node_id: str, **kw: Any) -> Node:
    node = start_node(root, url, node_id, **kw)
    nodes.append(node)
    return await ready(node)


def attempts(url: str, task_id: str) -> list[tuple[Any, ...]]:
    return pg_rows(url, "SELECT n, worker, outcome FROM attempts WHERE task_id = %s ORDER BY n", task_id)


async def until(events: Any, topic: str, **match: Any) -> Event:
    """The next event of `topic` on the stream whose data has `match`."""
    with trio.fail_after(30):
        async for item in events:
            hit = isinstance(item, Event) and item.topic == topic
            if hit and all(item.data.get(k) == v for k, v in match.items()):
                return item
    raise AssertionError("stream ended")


async def wait_state(node: Node, token: str, task_id: str, state: TaskState, timeout: float = 30) -> None:
    async with connect(node.url, token) as client, client.events(["task.*"]) as stream:
        if (await client.get(task_id)).state is state:
            return
        with trio.fail_after(timeout):
            async for item in stream:
                mine = isinstance(item, Event) and item.data.get("task_id") == task_id
                if mine and (await client.get(task_id)).state is state:
                    return


async def test_a_task_submitted_at_one_node_runs_on_another_and_every_gateway_sees_it(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=0)  # no workers of its own
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=2)
    token = read_token(tmp_path / "token")  # one credential for the cluster
    async with (
        connect(a.url, token) as ca,
        connect(b.url, token) as cb,
        ca.events(["task.*"]) as at_a,
        cb.events(["task.*"]) as at_b,
    ):
        submitted = await ca.submit_many([{"id": f"x{i}", "prompt": f"task {i}"} for i in range(4)])
        assert [t.id for t in submitted] == ["x0", "x1", "x2", "x3"]
        seen: dict[str, list[Event]] = {"a": [], "b": []}

        async def collect(name: str, stream: Any) -> None:
            client = {"a": ca, "b": cb}[name]
            with trio.fail_after(30):
                async for item in stream:
                    if isinstance(item, Event):
                        seen[name].append(item)
                        if item.topic == "task.done":  # heard done at a node: read done there
                            assert (await client.get(item.data["task_id"])).state is TaskState.DONE
                        if sum(e.topic == "task.done" for e in seen[name]) == 4:
                            return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, "a", at_a)
            nursery.start_soon(collect, "b", at_b)
        for i in range(4):
            done = await ca.get(f"x{i}")  # node a answers for work node b did
            assert done.state is TaskState.DONE
            assert done.attempts[-1].worker.startswith("b:w")
        # every gateway saw every node's events, with the same cluster-wide seqs, in one order
        done_a = [(e.seq, e.data["task_id"]) for e in seen["a"] if e.topic == "task.done"]
        done_b = [(e.seq, e.data["task_id"]) for e in seen["b"] if e.topic == "task.done"]
        assert done_a == done_b
        assert [e.seq for e in seen["a"]] == sorted(e.seq for e in seen["a"])
        # and a subscriber at node a replays by seq what node b did
        first = seen["a"][0].seq
        async with ca.events(["task.done"], since=first - 1) as replay:
            got: list[tuple[int, str]] = []
            with trio.fail_after(10):
                async for item in replay:
                    if isinstance(item, Event):
                        got.append((item.seq, item.data["task_id"]))
                        if len(got) == 4:
                            break
        assert got == done_a
    rows = pg_rows(pg_url, "SELECT id, state FROM tasks ORDER BY id")
    assert rows == [(f"x{i}", "done") for i in range(4)]
    assert all(len(attempts(pg_url, f"x{i}")) == 1 for i in range(4))  # each ran once


async def test_a_task_submitted_at_a_node_without_workers_is_booked_for_another_nodes_idle_worker(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    # b's idle worker says so in its worker.state event (with its capabilities); a, which knows b
    # alive, claims the task it takes for that worker in the submit's own write, and b hands it
    # over with no write of its own: the task.running event is a's, the attempt b's worker's
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=0)
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1, min_workers=1)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca, ca.events(["nodes.changed", "worker.state"], since=0) as seen:
        known_alive = idle = False
        with trio.fail_after(60):
            async for item in seen:  # what a's queue heard: it publishes nodes.changed, and hands
                if not isinstance(item, Event):  # other nodes' events on after noting them
                    continue
                if item.topic == "nodes.changed" and item.data.get("node") == "a":
                    known_alive = item.data["nodes"].get("b", {}).get("state") == "alive"
                if item.topic == "worker.state" and str(item.data.get("worker")).startswith("b:"):
                    idle = item.data.get("state") == "idle"
                    assert "capabilities" in item.data and item.data["capabilities"] is None
                if known_alive and idle:
                    break
        (task,) = await ca.submit_many([{"id": "booked", "prompt": "for b's idle worker"}])
        await wait_state(a, token, task.id, TaskState.DONE)
    ran = pg_rows(pg_url, "SELECT node, data->>'worker' FROM events WHERE topic = 'task.running'")
    assert len(ran) == 1 and ran[0][0] == "a" and ran[0][1].startswith("b:w"), ran
    assert [(n, outcome) for n, _w, outcome in attempts(pg_url, "booked")] == [(1, "done")]
    assert b.proc.poll() is None


async def test_a_node_killed_mid_task_its_task_runs_again_elsewhere_once(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=0)
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca, ca.events(["task.running"]) as running:
        await ca.submit({"id": "long", "prompt": "work [[think:1.5]]"})
        with trio.fail_after(30):
            async for item in running:
                if isinstance(item, Event) and item.data.get("task_id") == "long":
                    assert item.data["worker"].startswith("b:")
                    break
        b.kill(signal.SIGKILL)  # power loss: no goodbye, its lease runs out
        await b.wait_exit()
        c = await start(nodes, tmp_path, pg_url, "c", max_workers=1)
        await wait_state(c, token, "long", TaskState.DONE)
    rows = attempts(pg_url, "long")
    assert [r[2] for r in rows] == ["crashed", "done"], rows  # counted as a crash, as on one node
    assert rows[0][1].startswith("b:") and rows[1][1].startswith("c:")
    assert pg_rows(pg_url, "SELECT state FROM nodes WHERE id = 'b'") == [("dead",)]


async def test_a_paused_node_past_its_lease_is_fenced_off_and_its_task_runs_once(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1)
    token = read_token(tmp_path / "token")
    async with connect(b.url, token) as cb, cb.events(["task.running"]) as running:
        await cb.submit({"id": "p", "prompt": "work [[think:2]]"})
        with trio.fail_after(30):
            async for item in running:
                if isinstance(item, Event) and item.data.get("task_id") == "p":
                    break
    b.kill(signal.SIGSTOP)  # paused (a VM migration, a debugger): its worker goes on thinking
    c = await start(nodes, tmp_path, pg_url, "c", max_workers=1)
    await wait_state(c, token, "p", TaskState.DONE)  # after b's lease, c ran it
    b.kill(signal.SIGCONT)  # b wakes: its late result must not count
    async with connect(b.url, token) as cb, cb.events(["task.*"]) as events:
        with trio.fail_after(30):
            async for item in events:  # b learns its lease is gone, re-registers, stops the attempt
                if isinstance(item, Event) and item.topic == "task.stale_report":
                    break
    rows = attempts(pg_url, "p")
    assert [r[2] for r in rows] == ["crashed", "done"], rows
    assert rows[1][1].startswith("c:")
    assert pg_rows(pg_url, "SELECT state, result IS NOT NULL FROM tasks WHERE id = 'p'") == [("done", True)]
    assert pg_rows(pg_url, "SELECT state FROM nodes WHERE id = 'b'") == [("alive",)]  # re-registered


async def test_two_nodes_with_one_id_the_second_refuses_to_start(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    await start(nodes, tmp_path, pg_url, "a", max_workers=0)
    twin = start_node(tmp_path / "twin", pg_url, "a", max_workers=0)
    nodes.append(twin)
    code = await twin.wait_exit()
    assert code != 0
    log = twin.log()
    assert "node id 'a' is in use by a running node" in log
    assert "Traceback" not in log


async def test_a_newer_schema_is_refused_naming_its_version(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=0)
    a.kill(signal.SIGTERM)
    assert await a.wait_exit() == 0
    pg_rows(pg_url, "UPDATE shoal_meta SET value = '99' WHERE key = 'schema_version' RETURNING 1")
    later = start_node(tmp_path / "later", pg_url, "a2", max_workers=0)
    nodes.append(later)
    assert await later.wait_exit() != 0
    log = later.log()
    assert "schema version 99 is newer than this Shoal understands" in log
    assert "Traceback" not in log


async def test_a_wrong_password_and_an_unreachable_host_are_one_clear_line(
    tmp_path: Path, pg_cluster: Any, nodes: list[Node]
) -> None:
    wrong = pg_cluster.url(password="not-the-password")
    bad = start_node(tmp_path / "pw", wrong, "a", max_workers=0)
    nodes.append(bad)
    assert await bad.wait_exit() != 0
    log = bad.log()
    assert "password authentication failed" in log
    assert "not-the-password" not in log and "Traceback" not in log
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = start_node(tmp_path / "gone", f"postgresql://shoal:pw@127.0.0.1:{port}/shoal", "b", max_workers=0)
    nodes.append(gone)
    assert await gone.wait_exit() != 0
    log = gone.log()
    assert f"127.0.0.1:{port}" in log and "cannot connect to PostgreSQL" in log
    assert "Traceback" not in log and ":pw@" not in log


async def test_postgresql_restarted_under_a_running_cluster_loses_nothing(
    tmp_path: Path, pg_cluster: Any, nodes: list[Node]
) -> None:
    url = pg_cluster.create_database()
    a = await start(nodes, tmp_path, url, "a", max_workers=0, lease_s=5.0)
    b = await start(nodes, tmp_path, url, "b", max_workers=2, lease_s=5.0)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca, ca.events(["task.running"]) as running:
        await ca.submit_many([{"id": f"r{i}", "prompt": f"work {i} [[think:2]]"} for i in range(2)])
        started: set[str] = set()
        with trio.fail_after(30):
            async for item in running:
                if isinstance(item, Event):
                    started.add(item.data["task_id"])
                    if len(started) == 2:
                        break
    await trio.to_thread.run_sync(pg_cluster.restart)  # the agents keep running meanwhile
    async with connect(a.url, token) as ca:  # and a submit made after the restart runs too
        await ca.submit({"id": "after", "prompt": "after the restart"})
    for tid in ("r0", "r1", "after"):
        await wait_state(a, token, tid, TaskState.DONE, timeout=60)
    for tid in ("r0", "r1"):  # the results of attempts that ran across the restart were recorded
        rows = pg_rows(
            url, "SELECT n, worker, outcome, reason FROM attempts WHERE task_id = %s ORDER BY n", tid
        )
        assert [r[2] for r in rows] == ["done"], (rows, b.log()[-3000:])
    assert pg_rows(url, "SELECT id, state FROM nodes ORDER BY id") == [("a", "alive"), ("b", "alive")]
    assert "reconnected" in b.log()


async def test_max_workers_holds_for_the_whole_cluster(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    # each node could spawn 2 on its own; scaling.max_workers = 2 is for both nodes together
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=2)
    await start(nodes, tmp_path, pg_url, "b", max_workers=2)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca:
        await ca.submit_many([{"id": f"m{i}", "prompt": f"work {i} [[think:0.4]]"} for i in range(8)])
        for i in range(8):
            await wait_state(a, token, f"m{i}", TaskState.DONE)
    workers = {r[0] for r in pg_rows(pg_url, "SELECT DISTINCT worker FROM attempts")}
    assert 1 <= len(workers) <= 2, workers


async def test_a_model_parked_at_one_node_is_parked_on_every_node(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=0)
    await start(nodes, tmp_path, pg_url, "b", max_workers=1, min_workers=1)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca, ca.events(["model.*", "task.running"]) as events:
        await ca.pause_model("sonnet", "the account's usage limit")  # b's worker runs sonnet
        await until(events, "model.park_applied", model="sonnet", node="b")
        await ca.submit({"id": "held", "prompt": "wait for the model"})
        await ca.resume_model("sonnet")
        lifted = await until(events, "model.park_lifted", model="sonnet", node="b")
        running = await until(events, "task.running", task_id="held")
        assert running.seq > lifted.seq  # b took nothing while the model was parked cluster-wide
    await wait_state(a, token, "held", TaskState.DONE)


async def test_config_set_at_any_node_applies_on_every_node(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=1)
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca, connect(b.url, token) as cb, cb.events(["config.*"]) as events:
        patched = await ca.config_patch({"scaling": {"max_workers": 3}, "log": {"level": "debug"}})
        assert patched.scaling.max_workers == 3
        with trio.fail_after(10):
            async for item in events:
                if isinstance(item, Event) and item.topic == "config.applied" and item.data["node"] == "b":
                    break
        at_b = await cb.config_get()
        assert at_b.scaling.max_workers == 3  # the cluster's setting
        assert at_b.log.level != "debug"  # a machine's own section stays on the node it reached
    # a node that starts later takes the cluster's configuration at once
    c = await start(nodes, tmp_path, pg_url, "c", max_workers=1)
    async with connect(c.url, token) as cc:
        assert (await cc.config_get()).scaling.max_workers == 3
    assert pg_rows(pg_url, "SELECT version, node FROM cluster_config") == [(1, "a")]


async def test_dependencies_and_operator_controls_work_across_nodes(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    a = await start(nodes, tmp_path, pg_url, "a", max_workers=0)
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1, min_workers=1)
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca, ca.events(["task.*", "worker.*"]) as events:
        # a task that never finishes, running on b, cancelled at a: b's worker is stopped
        await ca.submit({"id": "stuck", "prompt": "never ends [[hang]]"})
        running = await until(events, "task.running", task_id="stuck")
        worker = running.data["worker"]
        assert worker.startswith("b:")
        with pytest.raises(Exception, match="runs on node 'b'; use that node's gateway") as err:
            await ca.logs(worker)  # attach, input and logs are the worker's node's to answer
        assert str(err.value).endswith(("gateway", f"gateway at {b.url}"))  # its url once a heartbeat had it
        assert (await ca.cancel("stuck")).state is TaskState.CANCELLED
        # a chain submitted at a: the dependant runs only after its dependency, both on b
        await ca.submit_many(
            [
                {"id": "first", "prompt": "first [[think:0.2]]"},
                {"id": "second", "prompt": "second", "deps": ["first"]},
            ]
        )
        await wait_state(a, token, "second", TaskState.DONE)
        first, second = await ca.get("first"), await ca.get("second")
        assert (
            first.attempts[-1].ended is not None and second.attempts[-1].started >= first.attempts[-1].ended
        )
        # assign at a names b's worker (busy now: the task waits for it, ahead of other work)
        await ca.submit({"id": "busy", "prompt": "keeps b's worker busy [[think:1]]"})
        await until(events, "task.running", task_id="busy")
        await ca.submit_many(
            [{"id": "other", "prompt": "any worker"}, {"id": "later", "prompt": "for b's worker"}]
        )
        assert (await ca.assign("later", worker)).worker == worker
        await wait_state(a, token, "other", TaskState.DONE)
        assert (await ca.get("later")).attempts[0].started <= (await ca.get("other")).attempts[0].started
        await wait_state(a, token, "later", TaskState.DONE)
        assert (await ca.get("later")).attempts[-1].worker == worker
    rows = pg_rows(pg_url, "SELECT id, state FROM tasks ORDER BY id")
    assert dict(rows) == {
        "stuck": "cancelled",
        "first": "done",
        "second": "done",
        "busy": "done",
        "other": "done",
        "later": "done",
    }


def _git(cwd: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


async def test_a_dependant_on_another_node_starts_from_its_dependencys_pushed_branch(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    # one origin, a clone per node (two machines would each have theirs); finished branches are pushed
    origin = tmp_path / "origin.git"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    _git(tmp_path, "init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("hello\n")
    _git(seed, "add", "-A")
    _git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial")
    _git(seed, "push", "-q", str(origin), "main")
    clones = {}
    for name in ("a", "b"):
        clones[name] = tmp_path / f"clone-{name}"
        _git(tmp_path, "clone", "-q", str(origin), str(clones[name]))

    def workspace(name: str) -> str:
        return (
            f'[workers.profiles.fake-fast.workspace]\nmode = "worktree"\nrepo = "{clones[name]}"\n'
            'push = "origin"\n'
        )

    a = await start(nodes, tmp_path, pg_url, "a", max_workers=1, extra=workspace("a"))
    token = read_token(tmp_path / "token")
    async with connect(a.url, token) as ca:
        await ca.submit({"id": "first", "prompt": "write [[write:notes.txt:from node a]]"})
    await wait_state(a, token, "first", TaskState.DONE)
    a.kill(signal.SIGTERM)  # only node b is left to run the dependant
    await a.wait_exit()
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1, extra=workspace("b"))
    async with connect(b.url, token) as cb:
        await cb.submit({"id": "second", "prompt": "append [[append:notes.txt:, then b]]", "deps": ["first"]})
    await wait_state(b, token, "second", TaskState.DONE)
    async with connect(b.url, token) as cb:
        second = await cb.get("second")
    record = second.attempts[-1].workspace or {}
    assert second.attempts[-1].worker.startswith("b:")
    text = _git(clones["b"], "show", f"{record['head']}:notes.txt")
    assert text == "from node a, then b"  # b's clone fetched a's pushed branch and built on it


async def test_an_alert_is_fired_once_for_the_cluster_not_once_a_node(
    tmp_path: Path, pg_url: str, nodes: list[Node]
) -> None:
    # every node hears every node's events and evaluates every rule, but the live node first by id
    # (a) fires and delivers the cluster's alerts: a dead letter is one alert.fired, not one a node
    rule = '[[alerts.rules]]\nkind = "task_dead"\ncooldown_s = 0\n'
    await start(nodes, tmp_path, pg_url, "a", max_workers=1, extra=rule)
    b = await start(nodes, tmp_path, pg_url, "b", max_workers=1, extra=rule)
    token = read_token(tmp_path / "token")
    async with connect(b.url, token) as cb, cb.events(["alert.*", "task.done"]) as stream:
        await cb.submit({"id": "doomed", "prompt": "[[fail:no luck]]", "max_attempts": 1})
        fired = await until(stream, "alert.fired")
        assert fired.data["kind"] == "task_dead" and "doomed" in fired.data["details"]["ids"]
        # then a task that ends well: by its end every node has evaluated the dead letter long since
        await cb.submit({"id": "fine", "prompt": "fine"})
        more: list[Event] = []
        with trio.fail_after(30):
            async for item in stream:
                if isinstance(item, Event):
                    if item.topic == "task.done" and item.data.get("task_id") == "fine":
                        break
                    more.append(item)
        assert more == [], "another node fired the same alert"
    assert pg_rows(pg_url, "SELECT node FROM events WHERE topic = 'alert.fired'") == [("a",)]
