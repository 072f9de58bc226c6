"""What the parts of the QueueActor share (actors/queue.py composes queue_calls, queue_models and
queue_cluster): the actor's state, set in QueueActor.__init__, and the methods one part calls on
another, declared once for the type checker."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from ..protocols.config import SwarmConfig
from ..protocols.errors import StoreError
from ..protocols.tasks import Assignment
from ..runtime.actor import Address, Call
from ..runtime.eventbus import EventBus
from .cluster import NodesReport
from .queue_messages import QueueMsg, Stats
from .taskbook import TaskBook, WorkerView
from .taskstore import SharedTaskStore, TaskStore

if TYPE_CHECKING:
    from .queue import _Worker


class QueueParts:
    """The state and cross-part methods of the QueueActor, for the parts it is composed of."""

    config: SwarmConfig
    store: TaskStore
    cluster: SharedTaskStore | None  # the store when shared (a cluster), else None
    bus: EventBus
    book: TaskBook
    shared: bool
    node_id: str | None
    nodes: NodesReport | None
    conflicts: int
    reaped: int
    address: Address[QueueMsg] | None
    _workers: dict[str, _Worker]
    _idle: dict[str, _Worker]
    _waiters: dict[str, list[Call[Any]]]
    _acks: list[tuple[Call[Any], Any]]
    _extra_events: list[tuple[str, dict[str, Any]]]
    _unheard: dict[str, str]
    _deferred: dict[str, float]
    _remote_idle: dict[str, WorkerView]
    booked: int
    bookings_taken: int
    bookings_declined: int
    _lane_nodes: tuple[str, ...]
    _remote_parks: set[str]
    _park_reasons: dict[str, str]
    _model_recent: dict[str, collections.deque[bool]]
    _retries: dict[str, collections.deque[tuple[float, str]]]
    _storms: dict[str, tuple[int, float]]
    _quota: dict[str, dict[str, dict[str, Any]]]
    _broken: StoreError | None
    store_failures: int
    store_recoveries: int
    stale_announcements: int
    unknown_messages: int

    if TYPE_CHECKING:

        def _now(self) -> float: ...
        def _interrupt(self, worker_id: str | None, task_id: str, why: str) -> None: ...
        def _rematch_idle(self, now: float) -> None: ...
        def _match_worker(self, worker: _Worker, now: float) -> None: ...
        def _match_tasks(self, task_ids: list[str], now: float) -> None: ...
        def _deliver(self, worker: _Worker, assignment: Assignment, now: float) -> bool: ...
        def _writable(self) -> None: ...
        def _park(self, model: str, reset_at: Any, now: float, reason: str | None = None) -> None: ...
        def _model_state(self, model: str) -> dict[str, Any]: ...
        def _elsewhere(self, worker: str) -> bool: ...
        def _elsewhere_alive(self, worker: str) -> bool: ...
        def stats(self) -> Stats: ...


__all__ = ["QueueParts"]
