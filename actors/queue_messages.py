"""What the QueueActor's mailbox carries: the calls others make (with their replies), the sends they
fire and forget, the actor's notes to itself, and the statistics it answers with (actors/queue.py)."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ..protocols.config import SwarmConfig
from ..protocols.tasks import Assignment, TaskSpec, TaskState
from ..protocols.workers import TaskFinished, WorkerCommand
from ..runtime.actor import Address, Call
from .cluster import FeedBatch, NodesReport
from .taskbook import StoredTask

# ---- calls (address.call(msg)) ------------------------------------------------------------------


@attrs.frozen
class Submit:
    """Add tasks (atomically). Replies `list[Task]` once they are committed."""

    specs: tuple[TaskSpec, ...]


@attrs.frozen
class GetTask:
    id: str


@attrs.frozen
class ListTasks:
    state: TaskState | None = None
    limit: int = 100
    cursor: str | None = None


@attrs.frozen
class CancelTask:
    id: str


@attrs.frozen
class RetryTask:
    id: str


@attrs.frozen
class SkipTask:
    id: str


@attrs.frozen
class BoostTask:
    id: str
    priority: int


@attrs.frozen
class AssignTask:
    id: str
    worker: str


@attrs.frozen
class CompleteTask:
    """Explicit completion by an agent (gateway `tasks.complete`): must name the open attempt."""

    task_id: str
    attempt: int
    status: Literal["done", "failed"]
    result: str | None = None
    reason: str | None = None


@attrs.frozen
class QueueStats:
    pass


@attrs.frozen
class WaitTask:
    """Replies with the task once it is in a terminal state (and that state is committed)."""

    id: str


@attrs.frozen
class RetireWorker:
    """Scale-down handshake: True if the worker held no claim and is now out of the idle set."""

    worker_id: str


@attrs.frozen
class PauseModel:
    """An operator parks a model until resumed (models.pause). Replies the model's new state."""

    model: str
    reason: str = "paused by operator"


@attrs.frozen
class ResumeModel:
    """An operator ends a model's park, whatever parked it (models.resume). Replies the model's state."""

    model: str


@attrs.frozen
class Barrier:
    """Replies None once everything the queue received before it is committed and its events are
    published, so events a sender publishes after the reply follow the queue's (cause before effect)."""


# ---- sends (address.send(msg)), from the swarm side ---------------------------------------------


@attrs.frozen
class WorkerAvailable:
    """The worker is idle and may take a task now."""

    worker_id: str
    model: str | None
    capabilities: frozenset[str] | None
    history: tuple[str, ...]
    address: Address[WorkerCommand]


@attrs.frozen
class WorkerUnavailable:
    """Paused/stopping (gone=False) or dead (gone=True: its running attempt ends CRASHED)."""

    worker_id: str
    gone: bool


@attrs.frozen
class AttemptEnded:
    report: TaskFinished


@attrs.frozen
class ModelRateLimited:
    model: str | None  # None (an agent without a model name) parks nothing
    reset_at: float | None  # epoch seconds; None: DEFAULT_PARK_S from now


@attrs.frozen
class ModelRetrying:
    """A worker of `model` reports an API retry: many at once is a storm (limits.retry_storm_*)."""

    model: str
    worker: str
    error: str = "unknown"
    task_id: str | None = None  # the attempt retrying: one started before the last back-off is its tail


@attrs.frozen
class ModelQuota:
    """A worker reported where its model's quota stands (kept per model and window; routing acts)."""

    model: str | None
    status: str
    window: str | None
    resets_at: float | None
    utilization: float | None
    overage: str | None
    worker: str | None = None


@attrs.frozen
class ModelExtraUsage:
    """A worker's agent now spends beyond the plan: limits.on_extra_usage decides."""

    model: str | None
    message: str
    worker: str | None = None
    task_id: str | None = None


@attrs.frozen
class UpdateConfig:
    """Hot configuration: new queue/model rules apply to every ready task."""

    config: SwarmConfig


@attrs.frozen
class _EvictionCommitted:
    """Sent by the acker to the actor itself: the last retention step is durable, take the next."""


@attrs.frozen
class _Feed:
    """From the feed pump: a shared store's batch of other nodes' writes, or its nodes report."""

    item: FeedBatch | NodesReport


@attrs.frozen
class _Landed:
    """From the acker, on a shared store: a write committed with `conflicts` (tasks whose change lost
    its compare-and-set, with their rows as they now are) and the claims it carried, whose workers
    get their `Assign` only now; `rewait` are waits whose reply was in a conflicting write."""

    conflicts: dict[str, StoredTask | None]
    claims: list[tuple[str, Assignment]]
    stale: list[tuple[str, int, str]]  # (task, attempt, worker) of reports the other node fenced off
    rewait: list[Call[Any]]


@attrs.frozen
class _Resync:
    """Sent to the actor itself: the book may hold changes the store does not (a write failed, or
    was refused), so it is rebuilt from the store."""

    reason: str
    recovered: bool = False  # the store took writes again after failing (a probe committed)


QueueRequest = (
    Submit
    | GetTask
    | ListTasks
    | CancelTask
    | RetryTask
    | SkipTask
    | BoostTask
    | AssignTask
    | CompleteTask
    | QueueStats
    | WaitTask
    | RetireWorker
    | Barrier
    | PauseModel
    | ResumeModel
)
"""What others `call` the queue with (the reply types are in each message's docstring)."""
QueueSend = (
    WorkerAvailable
    | WorkerUnavailable
    | AttemptEnded
    | ModelRateLimited
    | ModelRetrying
    | ModelQuota
    | ModelExtraUsage
    | UpdateConfig
)
"""What others `send` the queue (fire-and-forget)."""
QueueMsg = Call[QueueRequest] | QueueSend | _EvictionCommitted | _Resync | _Feed | _Landed
"""Everything the queue's mailbox carries: its address is an `Address[QueueMsg]`."""


@attrs.frozen
class Stats:
    counts: dict[str, int]  # per TaskState value
    ready_by_model: dict[str | None, int]  # READY tasks per effective model (None: unpinned)
    total: int
    ready: int
    running: int
    blocked: int
    waiting_retry: int  # FAILED, backing off before the next attempt
    done: int
    dead: int
    idle_workers: int
    known_workers: int
    parked_models: dict[str, float]  # model -> reset time (epoch s)
    stale_reports: int
    store_commits: int
    store_broken: str | None
    evicted: int = 0  # finished tasks dropped by retention since the queue started (never goes down)
    parked_reasons: dict[str, str] = attrs.field(factory=dict)  # parked model -> the limit's message
    # model -> (failed, finished) over its last MODEL_RECENT finished attempts (done or counted failure)
    model_recent: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    store_failures: int = 0  # times the store stopped taking writes
    store_recoveries: int = 0  # times it took them again by itself (a probe write committed)
    # READY categorised tasks by (category, effective model), manual assignments aside (the scaler)
    ready_by_category: dict[tuple[str, str | None], int] = attrs.field(factory=dict)
    # model -> window ("five_hour", "?" when not said) -> the latest quota report (status,
    # utilization, resets_at, overage, at)
    quota: dict[str, dict[str, dict[str, Any]]] = attrs.field(factory=dict)
    hot_models: tuple[str, ...] = ()  # utilization >= limits.prefer_fallback_at: fallbacks preferred
    retry_storms: dict[str, int] = attrs.field(factory=dict)  # model -> storms so far (the park level)
