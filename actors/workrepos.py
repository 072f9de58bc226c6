"""A task in another repository than its profile's: `metadata.workspace.repo`, `shoal submit --repo`.

A worktree profile works in `workspace.repo`; a task may name another repository, one of the profile's
`workspace.allowed_repos` (the profile's own `repo` is always allowed, nothing else is), so a client
cannot point a task at an arbitrary directory of the server. Paths are compared after `expanduser`
and `realpath`, so `..`, `~` and symlinks cannot reach outside the list. The check runs at submit
(`check_task_repo`: a clear error naming the field, nothing stored) and again on the worker before the
task runs (the configuration may have changed since, and a task may reach a worker of another profile).

`RepoWorktrees` is a worker's `Workspace` for a worktree profile: its worktree of the profile's
repository, and, made on first use, one worktree per other repository its tasks named (one slot per
worker per repository, under `<state_dir>/workspaces/<profile>/repos/<name>-<hash>/<slot>`). A task
runs in the worktree of its repository; the next task goes back to the profile's. The worker moves its
agent when the directory changes (actors/worker.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ..protocols.config import SwarmConfig, WorkspaceConfig
from ..protocols.errors import ValidationError
from ..protocols.profiles import resolve_profile
from ..protocols.tasks import Assignment, Outcome, TaskSpec
from ..protocols.taskworkspace import task_workspace
from .gitcmd import git_try
from .workspace import WorkspaceError
from .worktree import GitWorktree, Worktrees, safe_component

FIELD = "metadata.workspace.repo"


def real_path(path: str) -> str:
    """`path` as the comparison sees it: `~` expanded, `..` and symlinks resolved (blocking)."""
    return os.path.realpath(os.path.expanduser(path))


def allowed_repos(ws: WorkspaceConfig) -> list[str]:
    """The repositories a task of a profile with workspace `ws` may name, resolved (blocking)."""
    return list(dict.fromkeys(real_path(p) for p in (*([ws.repo] if ws.repo else []), *ws.allowed_repos)))


def resolve(requested: str, ws: WorkspaceConfig) -> tuple[str, list[str]]:
    """(the requested repository resolved, the allowed ones resolved) (blocking)."""
    return real_path(requested), allowed_repos(ws)


def repo_key(real: str) -> str:
    """A repository's folder among a profile's worktrees: its name and a hash of its whole path."""
    digest = hashlib.sha256(real.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe_component(os.path.basename(real))[:40]}-{digest}"


def _not_allowed(profile: str, mode: str, allowed: list[str]) -> str:
    if mode != "worktree":
        return f'profile {profile!r} does not work in git worktrees (workspace.mode = "{mode}")'
    return f"is not allowed: profile {profile!r} may use {', '.join(allowed)} (workspace.allowed_repos)"


async def check_task_repo(
    requested: str, profile: str, ws: WorkspaceConfig, field: str = FIELD
) -> str | None:
    """At submit: `requested` must be allowed for `profile` and a git repository with a commit.
    ValidationError naming `field` otherwise (nothing about a path outside the list is read or told).
    Returns the repository resolved, as the task keeps it, or None when it is the profile's own."""
    real, allowed = await trio.to_thread.run_sync(resolve, requested, ws)
    if ws.mode != "worktree" or real not in allowed:
        raise ValidationError(field, _not_allowed(profile, ws.mode, allowed), requested)
    if not await trio.Path(real).is_dir():
        raise ValidationError(field, "is not a directory (any more)", requested)
    if await git_try(real, "rev-parse", "--show-toplevel") is not None:
        raise ValidationError(field, "is not a git repository (a work tree)", requested)
    if await git_try(real, "rev-parse", "--verify", "--quiet", "HEAD^{commit}") is not None:
        raise ValidationError(field, "has no commits", requested)
    return None if real == allowed[0] else real


@attrs.define
class RepoWorktrees:
    """One worker's worktrees: of its profile's repository (`home`) and of each repository its tasks
    named (see the module docstring)."""

    home: GitWorktree
    _trees: dict[str, GitWorktree] = attrs.field(factory=dict)  # resolved repository -> its worktree
    _active: GitWorktree | None = None  # the worktree of the task being run, None: home

    @property
    def fresh_context(self) -> bool:
        return self.home.fresh_context

    @property
    def config(self) -> WorkspaceConfig:
        return self.home.config

    async def directory(self) -> str | None:
        return await (self._active or self.home).directory()

    async def prepare(self, task: Assignment) -> str | None:
        """The task's repository's worktree made ready; its path (the agent may be in another)."""
        own = task_workspace(task.metadata)
        self._active = None if own is None or own.repo is None else await self._tree_for(own.repo)
        tree = self._active or self.home
        await tree.prepare(task)
        return None if tree.path is None else str(tree.path)

    async def verify(self, task: Assignment) -> dict[str, Any] | None:
        return await (self._active or self.home).verify(task)

    async def finish(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        tree, self._active = self._active or self.home, None  # the next task: home, unless it names one
        return await tree.finish(task, outcome)

    async def aclose(self) -> None:
        for tree in (self.home, *self._trees.values()):
            await tree.aclose()

    async def _tree_for(self, requested: str) -> GitWorktree:
        """The worktree of the repository a task named, checked against the allow-list again here."""
        real, allowed = await trio.to_thread.run_sync(resolve, requested, self.config)
        if real not in allowed:
            why = _not_allowed(self.home.profile, "worktree", allowed)
            raise WorkspaceError(f"{FIELD} {requested}: {why}")
        if real == allowed[0]:  # the profile's own repository, named explicitly
            return self.home
        tree = self._trees.get(real)
        if tree is None:  # its base: the task's own, else that repository's HEAD (workspace.base is repo's)
            home, key = self.home, repo_key(real)
            tree = GitWorktree(
                home.pool, home.profile, real, None, home.worker, home.config, repo_key=key, label=FIELD
            )
            self._trees[real] = tree
        return tree


def worktree_workspace(pool: Worktrees, profile: str, ws: WorkspaceConfig, worker: str) -> RepoWorktrees:
    """The workspace of a worker of a `worktree` profile."""
    assert ws.repo is not None  # the config refuses mode = "worktree" without a repo
    return RepoWorktrees(GitWorktree(pool, profile, os.path.expanduser(ws.repo), ws.base, worker, ws))


async def check_repos(specs: Sequence[TaskSpec], config: SwarmConfig) -> tuple[TaskSpec, ...]:
    """At submit: the repository each task names, if any, checked for the profile new workers start
    with (`workers.profile`); the field named as the queue names it (`tasks[i].` in a batch). The
    specs as the queue keeps them: a repository resolved (what was checked is what runs, and tasks
    naming one repository two ways build on each other's branches), the profile's own left out."""
    kept: list[TaskSpec] = []
    for i, spec in enumerate(specs):
        kept.append(spec)
        if not isinstance(spec.metadata, dict) or not isinstance(spec.metadata.get("workspace"), dict):
            continue  # none named (or malformed: the queue refuses it, naming the field)
        field = f"tasks[{i}].metadata" if len(specs) != 1 else "metadata"
        own = task_workspace(spec.metadata, field)
        if own is None or own.repo is None:
            continue
        name = config.workers.profile
        ws = resolve_profile(name, config.workers.profiles).workspace
        real = await check_task_repo(own.repo, name, ws, f"{field}.workspace.repo")
        workspace = {k: v for k, v in spec.metadata["workspace"].items() if k != "repo"}
        if real is not None:
            workspace["repo"] = real
        kept[-1] = attrs.evolve(spec, metadata={**spec.metadata, "workspace": workspace})
    return tuple(kept)


def workspace_repos(config: SwarmConfig) -> list[str]:
    """Every repository the profiles work in, each once: each `workspace.repo` as configured, and the
    worktree profiles' `allowed_repos` resolved, as their tasks' records name them (blocking: paths
    are resolved to find one repository spelled twice)."""
    seen: dict[str, str] = {}
    profiles = config.workers.profiles.values()
    for ws in (p.workspace for p in profiles if p.workspace.repo is not None):
        seen.setdefault(real_path(ws.repo or ""), os.path.expanduser(ws.repo or ""))
    for ws in (p.workspace for p in profiles if p.workspace.mode == "worktree"):
        for path in ws.allowed_repos:
            seen.setdefault(real_path(path), real_path(path))
    return list(seen.values())
