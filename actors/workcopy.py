"""Plain-directory workspaces: each worker works in its own copy of a directory that is not a git
repository (`workspace.mode = "copy"`, docs/workspaces.md).

Before each task the worker's copy is made afresh from `workspace.repo` (at most
`workspace.copy_max_mb`), so nothing leaks from one task to the next; when the attempt ends the files it
added, changed or deleted are measured against the copy as it was made, its artifacts kept, and the
check run as for a worktree. There is no branch to review or merge: the record lists the changed
files, and `workspace.artifacts` keeps what the task produced. File work runs in a thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import attrs
import trio

from ..protocols.config import ProfileConfig, WorkspaceConfig
from ..protocols.tasks import Assignment, Outcome
from ..protocols.taskworkspace import task_workspace
from .workrepos import worktree_workspace
from .workspace import Workspace, WorkspaceError, refuse_task_repo
from .worktree import Worktrees, artifact_dir, collect_artifacts, verify_in

Manifest = dict[str, tuple[int, int]]  # relative path -> (size, mtime in ns)


def measure(root: Path, limit: int) -> tuple[Manifest, int]:
    """Every file under `root` with its size and mtime, and the total size (blocking). Stops with
    WorkspaceError as soon as the total passes `limit`."""
    files: Manifest = {}
    total = 0
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            total += st.st_size
            if total > limit:
                raise WorkspaceError(
                    f"workspace.repo {root} holds over {limit / 2**20:g} MiB (workspace.copy_max_mb)"
                )
            files[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return files, total


def fresh_copy(source: Path, target: Path, limit: int) -> Manifest:
    """`target` becomes a copy of `source` (symlinks kept as links); the copy's manifest (blocking)."""
    if not source.is_dir():
        raise WorkspaceError(f"workspace.repo {source} is not a directory")
    measure(source, limit)
    if target.is_dir():  # emptied in place: an agent running there keeps a valid working directory
        for child in os.scandir(target):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path)
            else:
                os.unlink(child.path)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    return measure(target, limit)[0]


def changes(before: Manifest, root: Path, limit: int) -> tuple[list[str], list[str], list[str]]:
    """(added, changed, deleted) files under `root` since `before` (blocking)."""
    try:
        after, _ = measure(root, limit * 4)  # the agent may have grown it; a bound all the same
    except WorkspaceError:
        after = {}
    added = sorted(set(after) - set(before))
    deleted = sorted(set(before) - set(after))
    changed = sorted(p for p in set(after) & set(before) if after[p] != before[p])
    return added, changed, deleted


@attrs.define
class CopyWorkspace:
    """One worker's copy of a plain directory (see the module docstring)."""

    pool: Worktrees
    profile: str
    source: str
    worker: str
    config: WorkspaceConfig
    _slot: int | None = None
    _path: Path | None = None
    _manifest: Manifest | None = None

    @property
    def fresh_context(self) -> bool:
        return self.config.fresh_context

    @property
    def _limit(self) -> int:
        return int(self.config.copy_max_mb * 1024 * 1024)

    async def directory(self) -> str | None:
        if self._path is None:
            if self._slot is None:
                self._slot = self.pool.take_slot(self.profile, self.worker)
            self._path = self.pool.slot_path(self.profile, self._slot)
        if self._manifest is None or not await trio.Path(self._path).is_dir():
            self._manifest = await trio.to_thread.run_sync(
                fresh_copy, Path(self.source), self._path, self._limit
            )
        return str(self._path)

    async def prepare(self, task: Assignment) -> str | None:
        refuse_task_repo(task, "copy")
        await self.directory()  # a fresh copy unless the one made for this spawn is still untouched
        return None

    async def verify(self, task: Assignment) -> dict[str, Any] | None:
        return None if self._path is None else await verify_in(self._path, self.config, task)

    async def finish(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        if self._path is None or self._manifest is None:
            return None
        path, before = self._path, self._manifest
        if not await trio.Path(path).is_dir():
            return {"source": self.source, "error": f"the copy {path} was deleted while the task ran"}
        own = task_workspace(task.metadata)
        patterns = (*self.config.artifacts, *(own.artifacts if own else ()))
        record: dict[str, Any] = {"source": self.source, "copy": str(path)}
        if patterns:
            record.update(
                await trio.to_thread.run_sync(
                    collect_artifacts,
                    path,
                    patterns,
                    artifact_dir(self.pool.root.parent, task.task_id, task.attempt),
                    int(self.config.artifact_max_mb * 1024 * 1024),
                )
            )
        added, changed, deleted = await trio.to_thread.run_sync(changes, before, path, self._limit)
        files = [*added, *changed, *deleted]
        record.update({"files": files[:1000], "files_changed": len(files)})
        record.update({"added": len(added), "changed": len(changed), "deleted": len(deleted)})
        self._manifest = None  # the next task starts from a fresh copy
        return record

    async def aclose(self) -> None:
        if self._slot is not None:
            self.pool.release_slot(self.profile, self._slot)
            self._slot = None


class Workspaces(Worktrees):
    """The worker supervisor's workspace factory: `worktree` and `copy` profiles get their own
    directory from the pool's slots (a worktree profile's workers also one per repository a task
    names, actors/workrepos.py); others share `profile.cwd`."""

    def __call__(self, profile_name: str, profile: ProfileConfig, worker_id: str) -> Workspace:
        ws = profile.workspace
        if ws.mode == "copy":
            assert ws.repo is not None  # the config refuses mode = "copy" without a directory
            return CopyWorkspace(self, profile_name, os.path.expanduser(ws.repo), worker_id, ws)
        if ws.mode == "worktree":
            return worktree_workspace(self, profile_name, ws, worker_id)
        return super().__call__(profile_name, profile, worker_id)
