"""The Workspace seam of the WorkerActor (actors/workspace.py), driven through a real shell in a real PTY.

The workspace below is a real one: a directory per worker, a file written for each task before its
prompt (off the loop, as a git checkout would be), removed when the attempt has ended. It records
what the worker asked of it, so the order (directory before the spawn, prepare before the prompt,
finish after the report, aclose at the end) is asserted, not assumed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
from test_worker import started

from shoal.actors.swarm_supervisor import shared_directory
from shoal.actors.workspace import SharedDirectory, WorkspaceError
from shoal.protocols.config import ProfileConfig
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import Assignment, Outcome
from shoal.protocols.workers import Stop, WorkerState

S = WorkerState


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


@attrs.define
class TaskFiles:
    """A directory of the worker's own; `task.txt` names the task being run there."""

    root: Path
    fail_prepare: set[str] = attrs.field(factory=set)
    fail_finish: set[str] = attrs.field(factory=set)
    calls: list[str] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)
    fresh_context: bool = False

    def _note(self, call: str) -> None:
        self.calls.append(call)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, call: str) -> None:
        with trio.fail_after(15):
            while call not in self.calls:
                await self.changed.wait()

    async def directory(self) -> str | None:
        await trio.to_thread.run_sync(lambda: self.root.mkdir(exist_ok=True))
        self._note("directory")
        return str(self.root)

    async def prepare(self, task: Assignment) -> None:
        if task.task_id in self.fail_prepare:
            self._note(f"prepare {task.task_id} refused")
            raise WorkspaceError(f"cannot check out a branch for {task.task_id}")
        await trio.to_thread.run_sync((self.root / "task.txt").write_text, f"running {task.task_id}\n")
        self._note(f"prepare {task.task_id}")

    async def verify(self, task: Assignment) -> None:
        return None

    async def finish(self, task: Assignment, outcome: Outcome) -> None:
        await trio.to_thread.run_sync(lambda: (self.root / "task.txt").unlink(missing_ok=True))
        self._note(f"finish {task.task_id} {outcome.value}")
        if task.task_id in self.fail_finish:
            raise OSError(f"cannot reset the tree after {task.task_id}")

    async def aclose(self) -> None:
        self._note("aclose")


async def test_each_task_is_prepared_before_its_prompt_and_finished_after_its_report(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ws = TaskFiles(tmp_path / "w1")
    h = await started(nursery, "shell", workspace=ws)
    assert ws.calls == ["directory"]  # before the spawn: the shell runs there

    done = await h.run_task("cat task.txt; pwd", task_id="t1")
    assert done.outcome is Outcome.DONE
    assert "running t1" in (done.result or "") and str(ws.root) in (done.result or "")
    await ws.wait_for("finish t1 done")
    failed = await h.run_task("cat task.txt && (exit 3)", task_id="t2")
    assert failed.outcome is Outcome.FAILED
    await ws.wait_for("finish t2 failed")
    assert not (ws.root / "task.txt").exists()  # finished: nothing left for the next task
    await h.address.send(Stop())
    await h.finish()
    assert ws.calls == [
        "directory",
        *("prepare t1", "finish t1 done"),
        *("prepare t2", "finish t2 failed"),
        "aclose",
    ]


async def test_a_workspace_that_cannot_be_prepared_fails_the_task_not_the_worker(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ws = TaskFiles(tmp_path / "w1", fail_prepare={"t1"})
    h = await started(nursery, "shell", workspace=ws)
    pid = h.worker.pid
    refused = await h.run_task("echo never-typed", task_id="t1")
    assert refused.outcome is Outcome.FAILED
    assert refused.reason == "workspace: cannot check out a branch for t1"
    await h.state(S.IDLE)
    assert b"never-typed" not in h.worker.output_tail()  # the prompt was never written
    done = await h.run_task("cat task.txt", task_id="t2")
    assert done.outcome is Outcome.DONE and "running t2" in (done.result or "")
    assert h.worker.pid == pid  # the same process ran the next task


async def test_a_workspace_that_cannot_be_finished_gives_the_next_task_a_fresh_process(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ws = TaskFiles(tmp_path / "w1", fail_finish={"t1"})
    h = await started(nursery, "shell", workspace=ws)
    pid = h.worker.pid
    assert (await h.run_task("echo one", task_id="t1")).outcome is Outcome.DONE
    await ws.wait_for("finish t1 done")
    await h.state(S.IDLE)
    assert h.worker.pid != pid  # restarted: the old process may hold state of the unknown tree
    assert ws.calls.count("directory") == 2  # asked again before the new spawn
    done = await h.run_task("cat task.txt", task_id="t2")
    assert done.outcome is Outcome.DONE and "running t2" in (done.result or "")


async def test_the_default_workspace_is_the_profile_directory(tmp_path: Path) -> None:
    profile = ProfileConfig(argv=("sh",), cwd=str(tmp_path))
    ws = shared_directory("p", profile, "w1")
    assert isinstance(ws, SharedDirectory) and await ws.directory() == str(tmp_path)
    assert await SharedDirectory(None).directory() is None  # the service's own directory
    assert BUILTIN_PROFILES["shell"].cwd is None
