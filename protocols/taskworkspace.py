"""A task's own workspace options: `metadata.workspace` (docs/workspaces.md, "Per task").

A task may refine its profile's worktree: run in another allowed `repo`, start from another `base`,
name its `branch`, declare `artifacts` (and whether they are `required`), name its own `verify`
check, or `continue` a dependency's agent conversation instead of starting a fresh one. They travel in the
task's metadata under the reserved key `workspace`, so they are stored, compared for idempotent
re-submits and shown like the rest of the task; they are checked here, at submit, naming the field.
Sans-IO: no git runs here (git's ref-name rules are applied as text); whether a `repo` is allowed and
is a git repository is checked where files can be read (actors/workrepos.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import attrs

from .errors import ValidationError

KEY = "workspace"
_FIELDS = {"repo", "base", "branch", "artifacts", "required", "verify", "continue"}
# git check-ref-format: no control characters, space, ~ ^ : ? * [ \, no "..", "@{", "//"
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@attrs.frozen
class TaskWorkspace:
    base: str | None = None  # the branch or commit this task's branch starts from
    branch: str | None = None  # the branch's name instead of shoal/<task-id> (attempt n: -n)
    artifacts: tuple[str, ...] = ()  # globs kept besides the profile's workspace.artifacts
    required: bool = False  # an artifact glob matching nothing fails the attempt
    verify: str | None = None  # this task's check instead of the profile's workspace.verify
    repo: str | None = None  # a repository of the server's (absolute or ~) instead of workspace.repo
    # a dependency's id: this task's agent resumes that dependency's conversation (docs/workspaces.md)
    continue_from: str | None = None


def valid_branch(name: str) -> bool:
    """Whether `name` is a branch name git accepts (check-ref-format --branch), and not an option."""
    if not name or name.startswith(("-", "/", ".")) or name.endswith(("/", ".", ".lock")) or name == "@":
        return False
    if _BAD_REF.search(name):
        return False
    return not any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))


def relative_glob(pattern: str) -> bool:
    """A glob that stays inside the worktree: relative, no `..`."""
    return bool(pattern.strip()) and not pattern.startswith("/") and ".." not in PurePosixPath(pattern).parts


def task_workspace(metadata: Mapping[str, Any], field: str = "metadata") -> TaskWorkspace | None:
    """The task's workspace options from its metadata, checked; None when it names none."""
    raw = metadata.get(KEY)
    if raw is None:
        return None
    where = f"{field}.{KEY}"
    if not isinstance(raw, dict):
        raise ValidationError(
            where, "must be an object: {repo, base, branch, artifacts, required, verify, continue}", raw
        )
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ValidationError(f"{where}.{unknown[0]}", f"unknown key; known: {sorted(_FIELDS)}")
    for key in ("repo", "base", "branch", "verify", "continue"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > 4096):
            raise ValidationError(
                f"{where}.{key}", "must be a non-empty string (at most 4,096 characters)", value
            )
    repo = raw.get("repo")
    if repo is not None and _CONTROL.search(repo):
        raise ValidationError(f"{where}.repo", "must not hold control characters (NUL, newline, ...)", repo)
    if repo is not None and not repo.startswith(("/", "~")):
        raise ValidationError(
            f"{where}.repo", "must be an absolute path on the server (or start with ~)", repo
        )
    base, branch = raw.get("base"), raw.get("branch")
    if base is not None and (base.startswith("-") or _BAD_REF.search(base)):
        raise ValidationError(f"{where}.base", "is not a branch or commit name", base)
    if branch is not None and not valid_branch(branch):
        raise ValidationError(f"{where}.branch", "is not a valid git branch name", branch)
    artifacts = raw.get("artifacts", [])
    if not isinstance(artifacts, list) or not all(isinstance(a, str) for a in artifacts):
        raise ValidationError(f"{where}.artifacts", "must be a list of globs", artifacts)
    for i, pattern in enumerate(artifacts):
        if not relative_glob(pattern):
            raise ValidationError(
                f"{where}.artifacts[{i}]", "must be a relative glob inside the worktree", pattern
            )
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise ValidationError(f"{where}.required", "must be true or false", required)
    return TaskWorkspace(
        base, branch, tuple(artifacts), required, raw.get("verify"), repo, raw.get("continue")
    )


def check_continue(own: TaskWorkspace | None, deps: tuple[str, ...], field: str = "metadata") -> None:
    """`continue` names one of the task's own dependencies (the conversation it resumes must have
    ended before it starts). Raises ValidationError naming the field."""
    if own is None or own.continue_from is None:
        return
    if own.continue_from not in deps:
        raise ValidationError(
            f"{field}.{KEY}.continue",
            f"must be one of the task's dependencies (deps: {list(deps)})",
            own.continue_from,
        )
