"""The task model shared by the queue, the workers, the gateway and the store.

`TaskSpec` is what a client submits; `Task` is the frozen snapshot of a task's record the queue hands
out; `Assignment` is what the queue sends a worker once a claim is recorded. Only the QueueActor
creates `Task` snapshots and decides state transitions.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class TaskState(enum.StrEnum):
    BLOCKED = "blocked"  # dependencies unmet
    READY = "ready"  # may be claimed (after `not_before` when retrying)
    RUNNING = "running"  # claimed by a worker, attempt open
    DONE = "done"
    FAILED = "failed"  # last attempt failed, back to READY after a backoff (visible state while waiting)
    DEAD = "dead"  # attempts exhausted: the dead-letter list
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


TERMINAL_STATES = frozenset({TaskState.DONE, TaskState.DEAD, TaskState.CANCELLED, TaskState.SKIPPED})
# A dependency ending in one of these makes its dependants fail (unless they set run_on_dep_failure).
FAILED_DEP_STATES = frozenset({TaskState.DEAD, TaskState.CANCELLED, TaskState.SKIPPED})


class Outcome(enum.StrEnum):
    """How one attempt ended."""

    DONE = "done"
    FAILED = "failed"  # the agent reported failure (is_error, failure marker, non-zero oneshot exit)
    CRASHED = "crashed"  # the worker process died mid-task
    TIMEOUT = "timeout"  # the task's timeout_s passed
    INTERRUPTED = "interrupted"  # shoal restarted, context ran out, worker killed by an operator
    RATE_LIMITED = "rate_limited"  # usage limit: not counted against max_attempts
    CANCELLED = "cancelled"


@attrs.frozen
class TaskSpec:
    """What a client submits. `id` None means the queue generates one."""

    prompt: str
    id: str | None = None
    category: str | None = None
    priority: int = 0
    deps: tuple[str, ...] = ()
    model: str | None = None
    max_attempts: int | None = None  # None: the queue's default (queue.default_max_attempts)
    timeout_s: float | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    run_on_dep_failure: bool = False  # run even when a dependency ends dead/cancelled/skipped


@attrs.frozen
class Attempt:
    n: int  # 1-based attempt number; a completion must name the open attempt
    worker: str
    model: str | None
    started: float  # wall-clock epoch seconds
    ended: float | None = None
    outcome: Outcome | None = None
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    output_tail: str | None = None
    # tokens and cost this attempt ran up, as the agent reported them: a failed attempt costs too
    usage: dict[str, Any] = attrs.field(factory=dict)
    # what the worker's workspace kept (a worktree: repo, branch, base, head, files, insertions, deletions)
    workspace: dict[str, Any] | None = None


@attrs.frozen
class Task:
    """A snapshot of a task's record."""

    id: str
    prompt: str
    category: str | None
    priority: int
    deps: tuple[str, ...]
    model: str | None
    max_attempts: int
    timeout_s: float | None
    metadata: dict[str, Any]
    run_on_dep_failure: bool
    state: TaskState
    attempts: tuple[Attempt, ...] = ()
    result: str | None = None
    reason: str | None = None  # why it waits, or why it ended
    created: float = 0.0
    updated: float = 0.0
    not_before: float | None = None  # retry backoff: not claimable before this epoch time
    worker: str | None = None  # worker of the open attempt, or the manual assignment target
    failed_models: dict[str, int] = attrs.field(factory=dict)  # model -> failures on it
    usage: dict[str, Any] = attrs.field(factory=dict)  # tokens/cost from the last finished attempt
    retry_base: int = 0  # attempts made before the last manual retry (they no longer count)

    @property
    def attempt_counts(self) -> AttemptCounts:
        """How the attempts split: those that use up `max_attempts`, and the ones that do not."""
        return attempt_counts(self.attempts, self.retry_base)


# Outcomes that do not use up one of a task's max_attempts: not the task's fault.
UNCOUNTED_OUTCOMES = frozenset({Outcome.RATE_LIMITED, Outcome.INTERRUPTED, Outcome.CANCELLED})


@attrs.frozen
class AttemptCounts:
    """`used` of `max_attempts` (the running attempt included), plus attempts that did not count:
    `rate_limited`, `interrupted` (Shoal restarted, context ran out, operator kill) and `earlier`
    (made before a manual retry). `used` never exceeds max_attempts, so `2/3 (+2 rate-limited)`
    is what a listing shows instead of `4/3`."""

    used: int = 0
    rate_limited: int = 0
    interrupted: int = 0
    earlier: int = 0


def attempt_counts(attempts: tuple[Attempt, ...], retry_base: int = 0) -> AttemptCounts:
    """Split `attempts` as the queue counts them against max_attempts (see AttemptCounts)."""
    used = rate_limited = interrupted = earlier = 0
    for a in attempts:
        if a.n <= retry_base:
            earlier += 1
        elif a.outcome is Outcome.RATE_LIMITED:
            rate_limited += 1
        elif a.outcome in UNCOUNTED_OUTCOMES:
            interrupted += 1
        else:
            used += 1
    return AttemptCounts(used, rate_limited, interrupted, earlier)


@attrs.frozen
class Continuation:
    """A task asks to continue a dependency's agent conversation (`metadata.workspace.continue`): what
    the dependency's last attempt left to resume it, or why it cannot be (`error`)."""

    task_id: str  # the dependency
    session: str | None = None  # the agent's session id its attempt reported (usage.session_id)
    cwd: str | None = None  # the directory its agent ran in: the CLI keeps a session per directory
    worker: str | None = None  # the worker that ran it
    error: str | None = None  # set: the conversation cannot be continued; the task runs fresh


@attrs.frozen
class Assignment:
    """The queue's instruction to a worker: run this attempt of this task."""

    task_id: str
    attempt: int
    prompt: str
    category: str | None = None
    model: str | None = None
    timeout_s: float | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    # (dependency id, the commit its finished attempt left in a worktree): a worktree task starts there
    dep_heads: tuple[tuple[str, str], ...] = ()
    # the previous attempt's worktree record when its check failed: the retry may go on from its commit
    after_failed_check: dict[str, Any] | None = None
    # the dependency's conversation to resume (metadata.workspace.continue); None: a fresh one
    continuation: Continuation | None = None
