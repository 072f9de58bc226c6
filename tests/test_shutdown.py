"""Stopping `shoal serve` with SIGTERM at every moment around a submit: bounded, and nothing is lost.

A real `shoal serve` subprocess runs fake agents that take half a second to start (so the moments
"spawn requested", "starting" and "waiting for a start-up slot" are wide enough to hit), and the
test sends SIGTERM when an event says the moment has come. Afterwards the service must have exited
within its documented grace period (`STOP_GRACE_S`), and the SQLite store (what the next start
recovers) must still hold every task, none run to `done`: a task dispatched while stopping is not
started unless `--drain`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from shoal.actors.auth import read_endpoint, read_token, token_path
from shoal.actors.client import EventStream, connect
from shoal.actors.service import STOP_GRACE_S
from shoal.actors.store import Store
from shoal.protocols.profiles import FAKE_AGENT
from shoal.protocols.tasks import Outcome, TaskState
from shoal.runtime.eventbus import Event

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]
PORTS = ["--port", "0", "--no-dashboard"]
TASKS = [{"id": f"t{i}", "prompt": f"task {i} [[think:0.3]]"} for i in range(3)]


def config_text() -> str:
    argv = [sys.executable, "-S", FAKE_AGENT, "--startup-delay", "0.5", "--model", "{model}"]
    quoted = ", ".join(f'"{a}"' for a in argv)
    return f"""
[workers]
profile = "slow-start"

[workers.profiles.slow-start]
argv = [{quoted}]
dialect = "prompt"
transport = "pty"
startup_timeout_s = 10.0
stop_timeout_s = 2.0
options = {{ submit_delay_ms = 0 }}

[scaling]
min_workers = 0
max_workers = 2
tick_s = 0.05
"""


@attrs.frozen
class Served:
    proc: subprocess.Popen[str]
    url: str
    token: str
    output: list[str]


@contextmanager
def serve(state: Path, *extra: str) -> Iterator[Served]:
    """`shoal serve` on free ports; killed (not signalled) on the way out if still running."""
    state.mkdir(parents=True)
    config = state.parent / "shoal.toml"
    config.write_text(config_text())
    log = open(state.parent / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*SHOAL, "serve", "--config", str(config), "--state-dir", str(state), *PORTS, *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHOAL")},
    )
    output: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "gateway:" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(60) and proc.poll() is None, f"shoal serve did not start: {''.join(output)}"
        url = read_endpoint(state)
        assert url is not None
        yield Served(proc, url, read_token(token_path(state)), output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        log.close()


async def until(stream: EventStream, topic: str, **match: Any) -> Event:
    with trio.fail_after(30):
        async for item in stream:
            if (
                isinstance(item, Event)
                and item.topic == topic
                and all(item.data.get(k) == v for k, v in match.items())
            ):
                return item
    raise AssertionError("event stream ended")


async def sigterm_at(served: Served, moment: str) -> None:
    """Submit the tasks, then send SIGTERM at `moment` (told by the service's own events)."""
    async with connect(served.url, served.token) as client, client.events(["worker.*"]) as stream:
        await client.call("tasks.submit", {"tasks": TASKS})
        if moment == "spawning":  # the scaler asked for a worker; no process yet
            await until(stream, "worker.spawning")
        elif moment == "starting":  # a process runs and is not ready yet; the other waits for a slot
            await until(stream, "worker.state", state="starting")
        served.proc.send_signal(signal.SIGTERM)


async def exit_code(proc: subprocess.Popen[str], within: float) -> int:
    with trio.fail_after(within):
        return await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)


async def stored(state: Path) -> dict[str, Any]:
    """The tasks as the next start recovers them."""
    store = await Store.open(str(state / "shoal.db"))
    try:
        return {row.id: row for row in await store.load_all()}
    finally:
        await store.aclose()


@pytest.mark.parametrize("moment", ["submitted", "spawning", "starting"])
async def test_sigterm_around_a_submit_stops_within_the_grace_and_keeps_every_task(
    tmp_path: Path, moment: str
) -> None:
    state = tmp_path / "state"
    with serve(state) as served:
        await sigterm_at(served, moment)
        code = await exit_code(served.proc, STOP_GRACE_S[False])
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert "shoal: stopped" in "".join(served.output)
    tasks = await stored(state)
    assert set(tasks) == {t["id"] for t in TASKS}
    for task in tasks.values():
        outcomes = [a.outcome for a in task.attempts]
        assert task.state is TaskState.READY, (task.id, task.state, outcomes)
        assert Outcome.DONE not in outcomes, (task.id, outcomes)
        # nothing dispatched once stopping; one dispatched just before is interrupted, not failed
        assert set(outcomes) <= {Outcome.INTERRUPTED}, (task.id, outcomes)


async def test_sigterm_with_drain_during_a_spawn_still_exits(tmp_path: Path) -> None:
    """Draining waits for running tasks, but a worker that was still starting runs none: it stops."""
    state = tmp_path / "state"
    with serve(state, "--drain") as served:
        await sigterm_at(served, "starting")
        code = await exit_code(served.proc, 60)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    tasks = await stored(state)
    assert set(tasks) == {t["id"] for t in TASKS}
    assert all(t.state in (TaskState.READY, TaskState.DONE) for t in tasks.values())
