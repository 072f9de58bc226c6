"""Reviewing an attempt's work: its diff and merge from the repository's objects, its artifacts, its check.

Apart from the per-worker worktrees (actors/worktree.py) because these run on an attempt's record
after the fact (`tasks.diff`, `tasks.merge`, `tasks.artifacts`), or, for artifacts and the check, on
a tree the worker hands over; worktree.py re-exports them for its importers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..protocols.config import WorkspaceConfig
from ..protocols.tasks import Assignment
from ..protocols.taskworkspace import task_workspace
from .gitcmd import checked_out_at, git, git_ok
from .workspace import WorkspaceError

if TYPE_CHECKING:
    from .worktree import Worktrees


VERIFY_TAIL_BYTES = 4000  # the end of a check's output kept on the attempt and shown to the retry


MAX_DIFF_BYTES = 4 * 1024 * 1024  # tasks.diff returns at most this much patch text (`truncated`)


async def diff(
    record: dict[str, Any], *, stat: bool = False, max_bytes: int = MAX_DIFF_BYTES
) -> dict[str, Any]:
    """The change an attempt's record names (`git diff base head` in its repository), as text.

    Read from the repository's objects, so it does not depend on the worktree still existing. Raises
    WorkspaceError when the repository or one of the commits is gone.
    """
    repo, base, head = record.get("repo"), record.get("base"), record.get("head")
    if not (isinstance(repo, str) and isinstance(base, str) and isinstance(head, str)):
        raise WorkspaceError("the attempt's workspace record names no commits to compare")
    if not await trio.Path(repo).is_dir():
        raise WorkspaceError(f"the repository {repo} is gone")
    for commit in (base, head):
        if not await git_ok(repo, "cat-file", "-e", f"{commit}^{{commit}}"):
            raise WorkspaceError(f"commit {commit[:12]} is no longer in {repo}")
    args = ["diff", "--no-color", "--no-ext-diff", "--find-renames"]
    text = await git(repo, *args, *(["--stat=100"] if stat else []), base, head)
    truncated = len(text.encode()) > max_bytes
    if truncated:
        text = text.encode()[:max_bytes].decode(errors="ignore")
    return {"diff": text, "truncated": truncated}


async def merge(
    pool: Worktrees, record: dict[str, Any], *, into: str | None, squash: bool, message: str
) -> dict[str, Any]:
    """Merge the attempt's branch head into `into` (default: the repository's checked-out branch).

    Where `into` is checked out (the user's own checkout, say) the merge runs there and needs a
    clean tree; elsewhere it runs in a scratch worktree and the branch is moved with a compare-and-
    swap `update-ref`. A conflict aborts it: nothing changed, the files named (WorkspaceError).
    """
    repo, head = record.get("repo"), record.get("head")
    if not (isinstance(repo, str) and isinstance(head, str)):
        raise WorkspaceError("the attempt's workspace record names no commit to merge")
    if not await trio.Path(repo).is_dir():
        raise WorkspaceError(f"the repository {repo} is gone")
    async with pool.lock(repo):
        if into is None:
            into = (await git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False)).strip()
            if not into:
                raise WorkspaceError(f"{repo} has no branch checked out: name one with into")
        if not await git_ok(repo, "check-ref-format", "--branch", into):
            raise WorkspaceError(f"into: {into!r} is not a valid branch name")
        old = (await git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{into}", check=False)).strip()
        if not old:
            raise WorkspaceError(f"into: branch {into!r} does not exist in {repo}")
        if await git_ok(repo, "merge-base", "--is-ancestor", head, old):
            return {"into": into, "commit": old, "merged": False, "squash": squash, "already": True}
        checked_out = await checked_out_at(repo, into)
        if checked_out is not None:
            if (await git(checked_out, "status", "--porcelain", "--untracked-files=no")).strip():
                raise WorkspaceError(
                    f"{into} is checked out in {checked_out} with uncommitted changes: commit or stash them"
                )
            new = await _merge_in(checked_out, head, squash, message, into)
        else:
            scratch = Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="shoal-merge-")))
            try:
                await git(repo, "worktree", "add", "-q", "--detach", str(scratch / "tree"), old)
                new = await _merge_in(scratch / "tree", head, squash, message, into)
                await git(
                    repo, "update-ref", "-m", f"shoal merge {head[:12]}", f"refs/heads/{into}", new, old
                )
            finally:
                await git(repo, "worktree", "remove", "--force", str(scratch / "tree"), check=False)
                await trio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
    return {"into": into, "commit": new, "merged": True, "squash": squash, "already": False}


async def _merge_in(tree: str | Path, head: str, squash: bool, message: str, into: str) -> str:
    ident = ("-c", "user.name=Shoal", "-c", "user.email=shoal@localhost", "-c", "commit.gpgsign=false")
    if squash:
        ok = await git_ok(tree, *ident, "merge", "-q", "--squash", head)
        if ok:
            await git(tree, *ident, "commit", "-q", "--no-verify", "-m", message)
    else:
        ok = await git_ok(tree, *ident, "merge", "-q", "--no-ff", "--no-verify", "-m", message, head)
    if not ok:
        files = (await git(tree, "diff", "--name-only", "--diff-filter=U", check=False)).split()
        await git(tree, "reset", "-q", "--merge", check=False)  # back as it was (also after --squash)
        shown = ", ".join(files[:20]) + (f" and {len(files) - 20} more" if len(files) > 20 else "")
        raise WorkspaceError(f"merging into {into} conflicts in {shown or 'the merge'}; nothing was changed")
    return (await git(tree, "rev-parse", "HEAD")).strip()


MAX_ARTIFACT_FILES = 1000  # files one attempt may leave; the rest are reported, not copied


def artifact_dir(state_dir: Path, task_id: str, attempt: int) -> Path:
    """Where an attempt's artifacts are kept: <state_dir>/artifacts/<task id, hex>/<attempt>."""
    return state_dir / "artifacts" / task_id.encode("utf-8", "surrogatepass").hex() / str(attempt)


def collect_artifacts(tree: Path, patterns: Sequence[str], into: Path, max_bytes: int) -> dict[str, Any]:
    """Copy the files matching `patterns` (globs inside `tree`) into `into` (blocking: run it in a
    thread). A file that resolves outside the tree (a symlink out), is not a regular file, or is over
    `max_bytes` is skipped and reported; a copy that fails (disk full) is reported and fails nothing.
    Returns {artifacts: [{name, size}], artifacts_missing: [pattern], artifacts_skipped: [{name, reason}]}."""
    root = tree.resolve()
    kept: list[dict[str, Any]] = []
    missing: list[str] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for pattern in patterns:
        matches = sorted(p for p in tree.glob(pattern) if ".git" not in p.relative_to(tree).parts[:1])
        if not matches:
            missing.append(pattern)
        for found in matches:
            name = found.relative_to(tree).as_posix()
            if name in seen or found.is_dir():
                continue
            seen.add(name)
            real = found.resolve()
            if not real.is_relative_to(root):
                skipped.append({"name": name, "reason": "points outside the worktree"})
                continue
            if not real.is_file():
                skipped.append({"name": name, "reason": "not a regular file"})
                continue
            size = real.stat().st_size
            if size > max_bytes:
                skipped.append(
                    {
                        "name": name,
                        "reason": f"{size / 2**20:.1f} MiB, over the {max_bytes / 2**20:g} MiB cap",
                    }
                )
                continue
            if len(kept) >= MAX_ARTIFACT_FILES:
                skipped.append({"name": name, "reason": f"more than {MAX_ARTIFACT_FILES} files"})
                continue
            target = into / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.copyfile(real, target)
            except OSError as exc:
                target.unlink(missing_ok=True)
                skipped.append({"name": name, "reason": f"cannot copy: {exc.strerror or exc}"})
                continue
            kept.append({"name": name, "size": size})
    return {"artifacts": kept, "artifacts_missing": missing, "artifacts_skipped": skipped}


def read_artifact(state_dir: Path, task_id: str, attempt: int, name: str, max_bytes: int) -> bytes:
    """An artifact's bytes (blocking). WorkspaceError when it is not there, escapes its folder, or is
    bigger than `max_bytes`."""
    folder = artifact_dir(state_dir, task_id, attempt).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise WorkspaceError(f"attempt {attempt} of task {task_id} kept no artifact {name!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise WorkspaceError(
            f"{name} is {size / 2**20:.1f} MiB: over the {max_bytes / 2**20:g} MiB a reply carries"
        )
    return path.read_bytes()


async def verify_in(path: Path, config: WorkspaceConfig, task: Assignment) -> dict[str, Any] | None:
    """The task's check in `path` as the agent left it: required artifacts first, then the task's own
    `verify` or `workspace.verify` (a shell command; exit 0 passes). None when there is no check.
    Cancellable (the worker stopping); a check past `verify_timeout_s` is killed with its whole
    process group, so nothing it started outlives it."""
    own = task_workspace(task.metadata)
    if own is not None and own.required:
        patterns = (*config.artifacts, *own.artifacts)
        unmatched = await trio.to_thread.run_sync(lambda: [p for p in patterns if not any(path.glob(p))])
        if unmatched:
            return {
                "command": None,
                "passed": False,
                "exit_code": None,
                "timed_out": False,
                "reason": f"required artifact(s) missing: {', '.join(unmatched)}",
                "output_tail": "nothing matched " + ", ".join(unmatched),
                "elapsed_s": 0.0,
            }
    command = own.verify if own is not None and own.verify is not None else config.verify
    if command is None:
        return None
    started = trio.current_time()
    env = {**os.environ, "SHOAL_TASK": task.task_id, "SHOAL_ATTEMPT": str(task.attempt)}
    done: subprocess.CompletedProcess[bytes] | None = None
    with trio.move_on_after(config.verify_timeout_s):
        done = await trio.run_process(
            ["sh", "-c", command],
            cwd=str(path),
            env=env,
            stdin=b"",
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
            start_new_session=True,  # its own process group: a timeout kills everything it started
            deliver_cancel=_kill_group,
        )
    tail = b"" if done is None else done.stdout[-VERIFY_TAIL_BYTES:]
    code = None if done is None else done.returncode
    return {
        "command": command,
        "passed": code == 0,
        "exit_code": code,
        "timed_out": done is None,
        "output_tail": tail.decode(errors="replace"),
        "elapsed_s": round(trio.current_time() - started, 3),
    }


async def _kill_group(process: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
