"""Git plumbing for the workspaces: `git` as a subprocess started the trio way, and the readers of its output.

Shared by the per-worker worktrees (actors/worktree.py) and the review of an attempt's work
(actors/review.py); nothing here knows about tasks or workers.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .workspace import WorkspaceError

GIT_TIMEOUT_S = 120.0


_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait on a credential prompt
    "LC_ALL": "C",  # messages we read back, in one language
}


MAX_FILES_LISTED = 1000  # an attempt's record lists this many changed files; `files_changed` counts all


async def git(cwd: str | Path, *args: str, check: bool = True, timeout: float = GIT_TIMEOUT_S) -> str:
    """Run `git -C cwd args…` off the loop; its stdout. Raises WorkspaceError with git's own words."""
    argv = ["git", "-C", str(cwd), *args]
    env = {**os.environ, **_ENV}
    try:
        with trio.fail_after(timeout):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=env
            )
    except trio.TooSlowError:
        raise WorkspaceError(f"git {args[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise WorkspaceError(f"cannot run git: {exc.strerror}") from None
    if check and done.returncode != 0:
        words = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise WorkspaceError(f"git {args[0]} failed: {words[-1] if words else f'exit {done.returncode}'}")
    return str(done.stdout.decode(errors="replace"))


async def is_worktree_of(path: Path, top: str) -> bool:
    if not await trio.Path(path).is_dir():
        return False
    inside = await git(path, "rev-parse", "--show-toplevel", check=False)
    if inside.strip() != str(path):
        return False
    common = (await git(path, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)).strip()
    mine = (await git(top, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)).strip()
    return bool(common) and common == mine


async def clean(path: Path) -> None:
    """Back to the commit checked out: no change, no untracked or ignored file left."""
    await git(path, "reset", "-q", "--hard")
    await git(path, "clean", "-q", "-fdx")


async def git_ok(cwd: str | Path, *args: str) -> bool:
    """Whether `git -C cwd args…` exits 0 (for git's yes/no questions)."""
    return await git_try(cwd, *args) is None


async def git_try(cwd: str | Path, *args: str) -> str | None:
    """Run `git -C cwd args…`: None when it exits 0, else what it said (its last lines)."""
    env = {**os.environ, **_ENV}
    argv = ["git", "-C", str(cwd), *args]
    done = await trio.run_process(argv, check=False, env=env, capture_stdout=True, capture_stderr=True)
    if done.returncode == 0:
        return None
    words = (done.stderr + done.stdout).decode(errors="replace").strip()
    return words[-500:] or f"exit {done.returncode}"


_MID_OPERATION = ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")


async def together(*jobs: Callable[[], Awaitable[object]]) -> None:
    """Run independent git commands side by side; a failure is raised as itself (not in a group)."""
    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
    except BaseExceptionGroup as group:
        failed: BaseException | None = group.split(WorkspaceError)[0]
        while isinstance(failed, BaseExceptionGroup):
            failed = failed.exceptions[0]
        if failed is None:
            raise
        raise failed from None


def head_state(rev_parse: str) -> tuple[str, str, str, str] | None:
    """`rev-parse --absolute-git-dir HEAD HEAD^{tree} --symbolic-full-name HEAD` as (git dir, commit,
    tree, HEAD's ref or "HEAD" when detached); None when HEAD is unborn."""
    lines = rev_parse.split("\n")
    if len(lines) < 4 or not all(lines[:4]) or lines[1] == "HEAD":
        return None
    return lines[0], lines[1], lines[2], lines[3]


def mid_operation(git_dir: str) -> bool:
    """Whether the agent left a merge, cherry-pick or revert to conclude (blocking: a thread's)."""
    return any(os.path.exists(os.path.join(git_dir, name)) for name in _MID_OPERATION)


def stat_record(out: str) -> dict[str, Any]:
    """`git diff --numstat` output as an attempt's record of its change (files listed up to a cap)."""
    files, insertions, deletions = numstat(out)
    return {
        "files": files[:MAX_FILES_LISTED],
        "files_changed": len(files),
        "insertions": insertions,
        "deletions": deletions,
    }


def numstat(out: str) -> tuple[list[str], int, int]:
    files: list[str] = []
    insertions = deletions = 0
    for line in out.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        added, removed, name = parts
        files.append(name)
        insertions += int(added) if added.isdigit() else 0  # "-" for a binary file
        deletions += int(removed) if removed.isdigit() else 0
    return files, insertions, deletions


def worktree_entries(porcelain: str) -> list[dict[str, str]]:
    """`git worktree list --porcelain` as one dict per worktree (`worktree`, `HEAD`, `branch`, ...)."""
    entries: list[dict[str, str]] = []
    for block in porcelain.strip().split("\n\n"):
        entry: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            entry[key] = value
        if entry:
            entries.append(entry)
    return entries


async def checked_out_at(repo: str, branch: str) -> str | None:
    """The worktree (the main one included) that has `branch` checked out, if any."""
    for entry in worktree_entries(await git(repo, "worktree", "list", "--porcelain")):
        if entry.get("branch") == f"refs/heads/{branch}":
            return entry.get("worktree")
    return None
