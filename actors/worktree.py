"""Git worktrees as workspaces: each worker in its own worktree, each task on its own branch.

The first real implementation of the worker's `Workspace` seam (actors/workspace.py). A profile with
`workspace.mode = "worktree"` gives each of its workers a worktree of `workspace.repo` under
`<state_dir>/workspaces/<profile>/<slot>`; slots are reused by later workers, so a swarm never has more
worktrees than it had workers at once, and a worktree left by an earlier run of Shoal is reused
(reset) rather than added again. Before each task the worktree is reset and a fresh branch
`shoal/<task-id>` (a later attempt: `shoal/<task-id>-<n>`) is started from the base; when the attempt
ends, whatever the agent left uncommitted is committed (author "Shoal agent <worker>"; in git's
plumbing, which skips `git commit`'s second and `git checkout`'s third stat of every file: the end of
an attempt is the figure benchmarks/RESULTS.md tracks), the change is measured against the base (files,
insertions, deletions) and the worktree goes back to the base, detached, so nothing leaks into the next
task. A failed or crashed attempt keeps its branch for inspection.

Every git command runs as a subprocess started the trio way (`trio.run_process`), never on the loop;
commands git serialises per repository (worktree add/prune, branch creation) hold a per-repository
lock, so 32 workers starting at once do not trip over `index.lock`.

The git plumbing is actors/gitcmd.py; an attempt's diff, merge, artifacts and check are
actors/review.py (re-exported here); this module is the worktree pool and the per-worker worktree.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from ..protocols.config import ProfileConfig, WorkspaceConfig
from ..protocols.tasks import Assignment, Outcome
from ..protocols.taskworkspace import task_workspace
from .gitcmd import (
    clean,
    git,
    git_ok,
    git_try,
    head_state,
    is_worktree_of,
    mid_operation,
    stat_record,
    together,
    worktree_entries,
)
from .review import MAX_DIFF_BYTES as MAX_DIFF_BYTES
from .review import artifact_dir as artifact_dir
from .review import collect_artifacts as collect_artifacts
from .review import diff as diff
from .review import merge as merge
from .review import read_artifact as read_artifact
from .review import verify_in as verify_in
from .workspace import SharedDirectory, Workspace, WorkspaceError

_BAD_REF = re.compile(r"[^A-Za-z0-9._/-]+")


def branch_name(task: Assignment, name: str | None = None) -> str:
    """`shoal/<task-id>` (or the task's own `name`), with `-<n>` for attempt n > 1, a valid ref name."""
    if name is None:
        safe = _BAD_REF.sub("-", task.task_id).strip("./-") or "task"
        name = "shoal/" + re.sub(r"\.\.+|/\.|//+|\.lock(?=/|$)", "-", safe)[:200]
    return name if task.attempt <= 1 else f"{name}-{task.attempt}"


@attrs.define
class Worktrees:
    """Hands out worktree slots per (profile, repository) and serialises git's per-repository work."""

    root: Path  # <state_dir>/workspaces
    _locks: dict[str, trio.Lock] = attrs.field(factory=dict)
    _taken: dict[tuple[str, str | None], set[int]] = attrs.field(factory=dict)
    _holders: dict[str, str] = attrs.field(factory=dict)  # worktree path -> the worker using it

    def lock(self, repo: str) -> trio.Lock:
        return self._locks.setdefault(repo, trio.Lock())

    def take_slot(self, profile: str, worker: str = "", repo_key: str | None = None) -> int:
        """A free slot of the profile's (or, with `repo_key`, of one of its task repositories') worktrees."""
        taken = self._taken.setdefault((profile, repo_key), set())
        slot = next(i for i in range(1, len(taken) + 2) if i not in taken)
        taken.add(slot)
        self._holders[str(self.slot_path(profile, slot, repo_key))] = worker
        return slot

    def release_slot(self, profile: str, slot: int, repo_key: str | None = None) -> None:
        self._taken.get((profile, repo_key), set()).discard(slot)
        self._holders.pop(str(self.slot_path(profile, slot, repo_key)), None)

    def slot_path(self, profile: str, slot: int, repo_key: str | None = None) -> Path:
        """<root>/<profile>/<slot>; a task's own repository: <root>/<profile>/repos/<repo_key>/<slot>."""
        folder = self.root / safe_component(profile)
        return (folder if repo_key is None else folder / "repos" / repo_key) / str(slot)

    def holder(self, path: str) -> str | None:
        """The worker using the worktree at `path` now, if any."""
        return self._holders.get(path)

    async def list(self, repos: Sequence[str]) -> dict[str, Any]:
        """Shoal's worktrees and task branches in `repos` (the worktree profiles' repositories)."""
        worktrees: list[dict[str, Any]] = []
        branches: list[dict[str, Any]] = []
        for repo in sorted(set(repos)):
            if not await trio.Path(repo).is_dir():
                continue
            for entry in worktree_entries(await git(repo, "worktree", "list", "--porcelain", check=False)):
                path = entry.get("worktree", "")
                if Path(path).is_relative_to(self.root):
                    worktrees.append(
                        {"repo": repo, "path": path, "head": entry.get("HEAD"), "worker": self.holder(path),
                         "branch": entry.get("branch", "").removeprefix("refs/heads/") or None}
                    )  # fmt: skip
            refs = await git(
                repo, "for-each-ref", "--format=%(refname:short) %(objectname) %(committerdate:unix)",
                "refs/heads/shoal/", check=False,
            )  # fmt: skip
            for line in refs.splitlines():
                name, head, when = line.split(" ")
                branches.append({"repo": repo, "branch": name, "head": head, "committed": int(when)})
        return {"worktrees": worktrees, "branches": branches}

    async def prune(
        self, repos: Sequence[str], *, base: str | None, older_than_s: float | None, now: float
    ) -> dict[str, Any]:
        """Remove the worktrees no worker uses, and the task branches merged into `base` (default: each
        repository's HEAD) or last committed more than `older_than_s` ago. Branches checked out in a
        worktree in use are kept."""
        listed = await self.list(repos)
        removed: list[str] = []
        deleted: list[str] = []
        in_use = {w["branch"] for w in listed["worktrees"] if w["worker"] is not None and w["branch"]}
        for w in listed["worktrees"]:
            if w["worker"] is None:
                async with self.lock(w["repo"]):
                    if await git_try(w["repo"], "worktree", "remove", "--force", w["path"]) is None:
                        removed.append(w["path"])
        for repo in sorted({b["repo"] for b in listed["branches"]}):
            merged_out = await git(
                repo,
                "branch",
                "--format=%(refname:short)",
                "--merged",
                base or "HEAD",
                "--list",
                "shoal/*",
                check=False,
            )
            merged = set(merged_out.split())
            for b in (b for b in listed["branches"] if b["repo"] == repo):
                old = older_than_s is not None and now - b["committed"] > older_than_s
                if b["branch"] in in_use or not (b["branch"] in merged or old):
                    continue
                async with self.lock(repo):
                    if await git_try(repo, "branch", "-D", b["branch"]) is None:
                        deleted.append(f"{repo}:{b['branch']}")
        return {"removed_worktrees": removed, "deleted_branches": deleted}

    def __call__(self, profile_name: str, profile: ProfileConfig, worker_id: str) -> Workspace:
        """A WorkspaceFactory: one worktree of `workspace.repo` for `worktree` profiles, the shared
        directory otherwise. The swarm's (actors/workcopy.py, `Workspaces`) adds copies and the
        repositories tasks name (actors/workrepos.py)."""
        ws = profile.workspace
        if ws.mode != "worktree":
            return SharedDirectory(profile.cwd)
        assert ws.repo is not None  # the config refuses mode = "worktree" without a repo
        return GitWorktree(self, profile_name, os.path.expanduser(ws.repo), ws.base, worker_id, ws)


@attrs.define
class GitWorktree:
    """One worker's worktree (see the module docstring)."""

    pool: Worktrees
    profile: str
    repo: str
    base: str | None  # None: the repository's HEAD when each task starts
    worker: str
    config: WorkspaceConfig = attrs.field(factory=WorkspaceConfig)  # verify, verify_timeout_s, verify_retry
    # a repository a task named (actors/workrepos.py): its slots apart from the profile's, its errors
    # naming the task's field
    repo_key: str | None = attrs.field(default=None, kw_only=True)
    label: str = attrs.field(default="workspace.repo", kw_only=True)
    _slot: int | None = None
    _path: Path | None = None

    @property
    def fresh_context(self) -> bool:
        return self.config.fresh_context

    _current: tuple[str, str] | None = None  # (branch, base commit) of the running task

    @property
    def path(self) -> Path | None:
        return self._path

    async def directory(self) -> str | None:
        if self._path is not None and await trio.Path(self._path).is_dir():
            return str(self._path)
        if self._slot is None:
            self._slot = self.pool.take_slot(self.profile, self.worker, self.repo_key)
        path = self.pool.slot_path(self.profile, self._slot, self.repo_key)
        top = await self._repo_top()
        base = await self._base_commit()
        if not await is_worktree_of(path, top):
            if await trio.Path(path).exists():  # half made, or left by hand: ours to replace
                await trio.to_thread.run_sync(shutil.rmtree, path)
            await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
            add = ("worktree", "add", "-q", "--no-checkout", "--detach", str(path), base)
            async with self.pool.lock(self.repo):  # git's worktree list: serialised per repository
                if await git_try(top, *add) is not None:  # e.g. registered before but deleted since
                    await git(top, "worktree", "prune")
                    await git(top, *add)
        # the files are written outside the lock: 16 workers fill their worktrees side by side
        await git(path, "checkout", "-q", "-f", "--detach", base)
        self._path = path
        return str(path)

    async def prepare(self, task: Assignment) -> str | None:
        """A fresh branch for `task` (module docstring); the worktree stays the agent's (None)."""
        path = Path(await self.directory() or "")
        own = task_workspace(task.metadata)
        branch = branch_name(task, own.branch if own else None)
        heads = [head for _dep, head in task.dep_heads]
        for dep, head in task.dep_heads:
            if not await self._have(path, head):
                raise WorkspaceError(
                    f"dependency {dep}'s commit {head[:12]} is not in {self.repo}"
                    + (
                        f" nor on {self.config.push}"
                        if self.config.push
                        else " (set workspace.push to share branches)"
                    )
                )
        failed = task.after_failed_check if self.config.verify_retry == "continue" else None
        if failed and await git_ok(path, "cat-file", "-e", f"{failed.get('head')}^{{commit}}"):
            # go on from the attempt whose check failed, in the same lineage; its diff still runs
            # from where the task began
            start = str(failed["head"])
            await self._start_branch(path, branch, start)
            self._current = (branch, str(failed.get("base") or start))
            return None
        base = heads[0] if heads else await self._base_commit(own.base if own else None)
        await self._start_branch(path, branch, base)
        if len(heads) > 1:  # several dependencies: the task starts from their merge
            base = await self._merge_deps(path, task)
        self._current = (branch, base)
        return None

    async def _have(self, path: Path, commit: str) -> bool:
        """Whether `commit` is in the repository; if not and finished branches are pushed
        (`workspace.push`), fetch them first: a dependency that ran on another node of a cluster,
        in another clone, reached this one through that remote."""
        if await git_ok(path, "cat-file", "-e", f"{commit}^{{commit}}"):
            return True
        remote = self.config.push
        if remote is None:
            return False
        async with self.pool.lock(self.repo):  # refs and objects of the shared repository
            await git_try(path, "fetch", "-q", "--no-tags", remote, f"+refs/heads/*:refs/remotes/{remote}/*")
        return await git_ok(path, "cat-file", "-e", f"{commit}^{{commit}}")

    async def _start_branch(self, path: Path, branch: str, start: str) -> None:
        """A new branch at `start`, checked out over whatever the tree holds (`-f`), then every file
        git does not track removed (`clean -fdx`): the reset before each task."""
        async with self.pool.lock(self.repo):  # branch creation: git's refs, serialised per repository
            made = await git_try(path, "branch", "--no-track", branch, start)
        if made is not None:
            if "already exists" in made:
                raise WorkspaceError(f"branch {branch} already exists in {self.repo}")
            raise WorkspaceError(f"git branch failed: {made}")
        await git(path, "checkout", "-q", "-f", branch)
        await git(path, "clean", "-q", "-fdx")

    async def finish(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        if self._current is None or self._path is None:
            return None
        branch, base = self._current
        self._current = None
        path = self._path
        if not await trio.Path(path).is_dir():
            return {
                "branch": branch,
                "base": base,
                "error": f"the worktree {path} was deleted while the task ran",
            }
        own = task_workspace(task.metadata)
        patterns = (*self.config.artifacts, *(own.artifacts if own else ()))
        if patterns:  # before the commit and the reset: what the agent left, as it left it
            record_artifacts = await trio.to_thread.run_sync(
                collect_artifacts,
                path,
                patterns,
                artifact_dir(self.pool.root.parent, task.task_id, task.attempt),
                int(self.config.artifact_max_mb * 1024 * 1024),
            )
        else:
            record_artifacts = None
        ident = (
            *("-c", f"user.name=Shoal agent {self.worker}", "-c", "user.email=shoal-agent@localhost"),
            *("-c", "commit.gpgsign=false"),
        )
        message = _commit_message(task, outcome)
        where = ""

        async def read_head() -> None:  # what HEAD is, read while the tree is staged
            nonlocal where
            where = await git(
                path, "rev-parse", "--absolute-git-dir", "HEAD", "HEAD^{tree}", "--symbolic-full-name",
                "HEAD", check=False,
            )  # fmt: skip

        await together(partial(git, path, "add", "-A"), read_head)
        head = head_state(where)
        if head is not None and not await trio.to_thread.run_sync(mid_operation, head[0]):
            record = await self._commit_and_go_back(path, ident, message, branch, base, head)
        else:  # an unborn HEAD, or a merge (cherry-pick, revert) the agent left: git commit concludes it
            failed = await git_try(path, *ident, "commit", "-q", "--no-verify", "-m", message)
            if failed is not None and "nothing to commit" not in failed:
                raise WorkspaceError(f"git commit failed: {failed}")
            new, on = (await git(path, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")).split()
            record = self._record(branch, base, new, failed is None, "" if on == "HEAD" else on)
            record.update(stat_record(await git(path, "diff", "--numstat", base, new) if new != base else ""))
            await self._push(record)
            # the branch keeps the work; the tree goes back to the base (ignored files stay until the
            # next task's reset: a build cache may be worth keeping that long, never longer)
            if await git_try(path, "checkout", "-q", "--detach", base) is not None:  # only the changed
                await git(path, "checkout", "-q", "-f", "--detach", base)  # files; forced if blocked
        if record_artifacts is not None:
            record.update(record_artifacts)
        return record

    async def _commit_and_go_back(
        self,
        path: Path,
        ident: Sequence[str],
        message: str,
        branch: str,
        base: str,
        head: tuple[str, str, str, str],
    ) -> dict[str, Any]:
        """The end of an attempt in git's plumbing, the index staged: its tree, a commit on HEAD's own
        ref when the tree changed (`git commit` without its index refresh, hooks or second index
        write), then HEAD detached at the base, the push and git's auto maintenance; side by side with
        that, the change measured (tree to tree) and the files read back to the base (`read-tree -m
        -u`: only the changed files, no full refresh). A tree that cannot go back plainly is forced."""
        _git_dir, old, old_tree, ref = head
        tree = (await git(path, "write-tree")).strip()
        committed = tree != old_tree
        on = ref.removeprefix("refs/heads/") if ref != "HEAD" else ""
        record = self._record(branch, base, old, committed, on)
        went_back = False

        async def commit_and_detach() -> None:
            if committed:
                new = (await git(path, *ident, "commit-tree", tree, "-p", old, "-m", message)).strip()
                title = message.split("\n", 1)[0]
                await git(path, "update-ref", "--no-deref", "-m", f"commit: {title}", ref, new, old)
                record["head"] = new
            # HEAD leaves the branch (which can then be merged or deleted) while the files go back
            moving = f"checkout: moving from {on or record['head']} to {base}"
            await git(path, "update-ref", "--no-deref", "-m", moving, "HEAD", base)
            if committed:
                await self._push(record)
                # what `git commit` does after committing: gc when git's thresholds say so
                await git(path, "maintenance", "run", "--auto", "--quiet")

        async def stat() -> None:
            record.update(stat_record(await git(path, "diff", "--numstat", base, tree)))

        async def back() -> None:
            nonlocal went_back
            went_back = await git_try(path, "read-tree", "-m", "-u", tree, base) is None

        await together(commit_and_detach, stat, back)
        if not went_back:  # blocked (an ignored file where the base has one): forced, as the next reset
            await git(path, "checkout", "-q", "-f", "--detach", base)
        return record

    def _record(self, branch: str, base: str, head: str, committed: bool, on: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "repo": self.repo,
            "branch": branch,
            "base": base,
            "head": head,
            "committed": committed,
        }
        if on != branch:  # the agent checked out another branch: its work is recorded where it is
            record["agent_branch"] = on or None
        return record

    async def _push(self, record: dict[str, Any]) -> None:
        if self.config.push is None or not record["committed"] or self._path is None:
            return
        pushed = await git_try(
            self._path,
            "push",
            "-q",
            "--no-verify",
            self.config.push,
            f"{record['head']}:refs/heads/{record['branch']}",
        )
        record["pushed"] = self.config.push if pushed is None else None
        if pushed is not None:  # the work is safe on the local branch: a failed push is reported only
            record["push_error"] = pushed

    async def verify(self, task: Assignment) -> dict[str, Any] | None:
        """Run the check in the worktree as the agent left it (see `verify_in`)."""
        return None if self._path is None else await verify_in(self._path, self.config, task)

    async def _merge_deps(self, path: Path, task: Assignment) -> str:
        """Merge the dependencies' heads after the first into the task's new branch; its commit.
        A conflict fails the task before any agent time is spent, naming the files."""
        (first, _), *rest = task.dep_heads
        ident = ("-c", f"user.name=Shoal agent {self.worker}", "-c", "user.email=shoal-agent@localhost")
        for dep, head in rest:
            merged = await git_ok(
                path, *ident, "-c", "commit.gpgsign=false", "merge", "-q", "--no-ff", "--no-verify",
                "-m", f"Merge dependency {dep} for task {task.task_id}", head,
            )  # fmt: skip
            if not merged:
                files = (await git(path, "diff", "--name-only", "--diff-filter=U", check=False)).split()
                await git(path, "merge", "--abort", check=False)
                await clean(path)
                shown = ", ".join(files[:20]) + (f" and {len(files) - 20} more" if len(files) > 20 else "")
                raise WorkspaceError(
                    f"dependencies {first} and {dep} conflict in {shown or 'the merge'}; "
                    "resolve them on a branch and make it the dependency's result"
                )
        return (await git(path, "rev-parse", "HEAD")).strip()

    async def aclose(self) -> None:
        if self._slot is not None:
            self.pool.release_slot(self.profile, self._slot, self.repo_key)
            self._slot = None

    async def _repo_top(self) -> str:
        if not await trio.Path(self.repo).is_dir():
            raise WorkspaceError(f"{self.label} {self.repo} is not a directory")
        try:
            return (await git(self.repo, "rev-parse", "--show-toplevel")).strip()
        except WorkspaceError:
            raise WorkspaceError(f"{self.label} {self.repo} is not a git repository") from None

    async def _base_commit(self, own: str | None = None) -> str:
        """The commit a task starts from: the task's own base, else workspace.base, else HEAD."""
        ref = own or self.base or "HEAD"
        out = await git(self.repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if not out.strip():
            if own is not None:
                raise WorkspaceError(f"the task's base {own!r} does not exist in {self.repo}")
            if self.base is None:
                raise WorkspaceError(f"{self.label} {self.repo} has no commits")
            raise WorkspaceError(f"workspace.base {self.base!r} does not exist in {self.repo}")
        return out.strip()


def safe_component(name: str) -> str:
    """`name` as one folder name: what a ref name would not take replaced, no leading dots."""
    return _BAD_REF.sub("-", name).strip(".-") or "profile"


def _commit_message(task: Assignment, outcome: Outcome) -> str:
    first = next((line.strip() for line in task.prompt.splitlines() if line.strip()), "")
    title = first if len(first) <= 72 else first[:71] + "…"
    trailer = f"Shoal task {task.task_id}, attempt {task.attempt} ({outcome.value})"
    return f"{title or 'Shoal task ' + task.task_id}\n\n{trailer}\n"
