"""Where a worker's agent works: the `Workspace` seam of the WorkerActor.

A worker asks its workspace for the directory its processes run in (`directory`, before every
spawn), lets it `prepare` each task before the prompt is written (e.g. check out a fresh branch)
and `finish` it once the attempt has ended, before the outcome is reported (e.g. commit what the
agent left, reset the tree): what `finish` returns is the attempt's workspace record, reported with
the outcome and kept on the task. Implementations do their file, git or network work off the trio loop
(`trio.to_thread.run_sync`, `trio.run_process`); the worker shields `finish` so a cancelled worker
still leaves its directory clean.

`SharedDirectory` is today's behaviour: every worker of a profile runs in `profile.cwd` (or the
service's own directory) and nothing happens per task. Per-worker git worktrees (a branch per task)
are the next implementation; see docs/architecture.md, "Workspaces".
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from ..protocols.errors import ShoalError
from ..protocols.tasks import Assignment, Outcome


class WorkspaceError(ShoalError):
    """A task's workspace could not be prepared: the attempt fails with this reason, the worker lives."""


class Workspace(Protocol):
    """What a worker needs of the place its agent works in."""

    @property
    def fresh_context(self) -> bool:
        """True: a persistent agent gets a fresh process (a fresh conversation) before each task."""
        ...

    async def directory(self) -> str | None:
        """The working directory for the worker's next process (None: the service's own)."""
        ...

    async def prepare(self, task: Assignment) -> str | None:
        """Make the directory ready for `task` before its prompt is written. Raises WorkspaceError.
        Returns the directory the task runs in when it may differ from what `directory` gave the
        agent (a task in another repository): the worker moves a persistent agent there. None: the
        agent's directory."""
        ...

    async def verify(self, task: Assignment) -> dict[str, Any] | None:
        """The agent says done: run the workspace's check, if any (`passed`, `exit_code`, `output_tail`)."""
        ...

    async def finish(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        """The attempt ended with `outcome`: keep its work, clean for the next; the attempt's record."""
        ...

    async def aclose(self) -> None:
        """The worker is gone for good: release what `directory` set up."""
        ...


def refuse_task_repo(task: Assignment, mode: str) -> None:
    """A task that names its own repository (`metadata.workspace.repo`) runs only in a worktree
    profile: anywhere else it would run in the wrong directory. Raises WorkspaceError."""
    own = task.metadata.get("workspace") if isinstance(task.metadata, dict) else None
    if isinstance(own, dict) and own.get("repo") is not None:
        raise WorkspaceError(
            f"the task names a repository (metadata.workspace.repo) but its worker's profile has "
            f'workspace.mode = "{mode}"; only "worktree" profiles run tasks in other repositories'
        )


@attrs.define
class SharedDirectory:
    """Every task of every worker of the profile runs in one directory (`profile.cwd`)."""

    cwd: str | None = None
    fresh_context: bool = False

    async def directory(self) -> str | None:
        return self.cwd

    async def prepare(self, task: Assignment) -> str | None:
        if task.metadata:
            refuse_task_repo(task, "none")
        return None

    async def verify(self, task: Assignment) -> dict[str, Any] | None:
        return None

    async def finish(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        return None

    async def aclose(self) -> None:
        return None
