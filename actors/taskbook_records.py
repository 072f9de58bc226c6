"""The TaskBook's records and value types, and the state every layer of the book shares.

`StaticRow`, `Change` and `StoredTask` are what the book exchanges with a store (the fields fixed at
submit, one transition, one loaded row); `WorkerView` is what selection knows of an idle worker;
`_Rec` is the mutable record of one task and `_Order` the submission-order index `tasks.list` pages
through. `BookState` holds every index the book's layers work on and the outputs they record:
changes for the store, events for the bus (actors/taskbook.py says how the layers fit).
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..protocols.config import BackoffConfig, ModelsConfig, QueueConfig
from ..protocols.errors import NotFound, ValidationError
from ..protocols.tasks import Attempt, Outcome, Task, TaskState

if TYPE_CHECKING:
    from .taskbook_select import _Bucket

# Outcomes that use up one of the task's max_attempts; the others (rate limit, interruption) do not.
COUNTED_OUTCOMES = frozenset({Outcome.FAILED, Outcome.TIMEOUT, Outcome.CRASHED})
TERMINAL_TOPICS = {
    TaskState.DONE: "task.done",
    TaskState.DEAD: "task.dead",
    TaskState.CANCELLED: "task.cancelled",
    TaskState.SKIPPED: "task.skipped",
}
MAX_ID_CHARS = 200
MAX_PRIORITY = 1_000_000_000
MAX_ATTEMPTS_LIMIT = 1000
OUTPUT_TAIL_CHARS = 4000
ORDER_CHUNK = 512  # ids per chunk of the submission-order index
_READY = TaskState.READY
_BLOCKED = TaskState.BLOCKED
_RUNNING = TaskState.RUNNING
_FAILED = TaskState.FAILED

BucketKey = tuple[str | None, str | None, bool, frozenset[str]]  # category, model, hard pin, avoided
Event = tuple[str, dict[str, Any]]


@attrs.frozen
class StaticRow:
    """The fields of a task fixed at submit (written once by the store)."""

    seq: int
    prompt: str
    category: str | None
    priority: int  # as submitted (the live priority may be boosted)
    deps: tuple[str, ...]
    model: str | None
    max_attempts: int
    timeout_s: float | None
    metadata: dict[str, Any]
    run_on_dep_failure: bool
    digest: str  # unused (content is compared field by field); kept for the schema
    created: float


@attrs.frozen
class Change:
    """One state transition of one task, for the store. Carries the task's whole mutable state after
    the transition (so a batch can be coalesced to the last change per task) and the attempt it
    opened or closed. `kind` names the transition: submit, claim, complete, fail, requeue, dead,
    cancel, skip, boost, assign, retry, ready, block, revive, recover, unassign, and evict (retention
    dropped the finished task: the store deletes it; only `task_id` matters)."""

    kind: str
    task_id: str
    state: TaskState
    priority: int
    reason: str | None
    result: str | None
    not_before: float | None
    worker: str | None
    updated: float
    failed_models: dict[str, int]
    usage: dict[str, Any]
    retry_base: int
    dep_failure: str | None
    attempt: Attempt | None = None
    static: StaticRow | None = None  # set for kind == "submit"
    # a shared store's compare-and-set (docs/architecture.md, "Scale-out"): the row's version this
    # change was decided on (None: a new row) and the version it writes; 0/None on a node's own store
    expect: int | None = None
    version: int = 0


@attrs.frozen
class StoredTask:
    """A task as loaded from the store at start-up."""

    id: str
    static: StaticRow
    state: TaskState
    priority: int
    reason: str | None
    result: str | None
    not_before: float | None
    worker: str | None
    updated: float
    failed_models: dict[str, int]
    usage: dict[str, Any]
    retry_base: int
    dep_failure: str | None
    attempts: tuple[Attempt, ...]
    version: int = 0  # a shared store's row version (see Change.expect)


class WorkerView:
    """What selection needs to know of an idle worker. History is capped to `history_size` (newest
    last) and pre-counted, because affinity adds the bonus once per matching recent category."""

    __slots__ = ("affinity", "capabilities", "history", "id", "model")

    def __init__(
        self,
        id: str,
        model: str | None,
        capabilities: frozenset[str] | None = None,
        history: Sequence[str] = (),
        history_size: int = 10,
    ) -> None:
        self.id = id
        self.model = model
        self.capabilities = capabilities
        self.history: tuple[str, ...] = tuple(history)[-history_size:] if history_size > 0 else ()
        self.affinity: dict[str, int] = dict(Counter(c for c in self.history if c is not None))

    def __repr__(self) -> str:
        return f"WorkerView({self.id!r}, model={self.model!r}, caps={self.capabilities!r})"


class _Rec:
    """The mutable record of one task (internal to the book)."""

    __slots__ = (
        "attempts",
        "bucket",
        "category",
        "counted",
        "created",
        "dep_failure",
        "deps",
        "digest",
        "failed_models",
        "finished",
        "held",
        "id",
        "max_attempts",
        "metadata",
        "model",
        "needed",
        "not_before",
        "priority",
        "prompt",
        "reason",
        "result",
        "retry_base",
        "route",
        "run_on_dep_failure",
        "seq",
        "spec_priority",
        "state",
        "static_row",
        "timeout_s",
        "token",
        "unmet",
        "updated",
        "usage",
        "version",
        "worker",
    )

    def __init__(self, tid: str, static: StaticRow) -> None:
        self.id = tid
        self.seq = static.seq
        self.prompt = static.prompt
        self.category = static.category
        self.spec_priority = static.priority
        self.priority = static.priority
        self.deps = static.deps
        self.model = static.model
        self.max_attempts = static.max_attempts
        self.timeout_s = static.timeout_s
        self.metadata = static.metadata
        self.run_on_dep_failure = static.run_on_dep_failure
        self.digest = static.digest
        self.created = static.created
        self.updated = static.created
        self.state = TaskState.BLOCKED
        self.attempts: list[Attempt] = []
        self.result: str | None = None
        self.reason: str | None = None
        self.not_before: float | None = None
        self.worker: str | None = None  # open attempt's worker, or the manual assignment target
        self.failed_models: dict[str, int] = {}
        self.usage: dict[str, Any] = {}
        self.retry_base = 0  # attempts up to this number predate the last manual retry
        self.counted = 0  # counted failures since the last manual retry
        self.dep_failure: str | None = None  # the dependency whose failure killed this task
        self.unmet = 0  # dependencies not yet satisfied (meaningful while BLOCKED)
        self.token = 0  # bumps on every (un)index: heap entries with an old token are stale
        self.bucket: _Bucket | None = None
        self.route: tuple[str | None, bool, frozenset[str]] = (None, False, frozenset())
        self.static_row: StaticRow | None = None  # kept from submit until the store has it
        self.finished = 0.0  # when it last entered a terminal state (its retention clock)
        self.needed = 0  # dependants in the book that have not succeeded: it may not be evicted
        self.held = False  # taken off the eviction heap while needed; pushed back once it is not
        self.version = 0  # the shared store's row version this record stands on (Change.expect)

    def static(self) -> StaticRow:
        return StaticRow(
            self.seq,
            self.prompt,
            self.category,
            self.spec_priority,
            self.deps,
            self.model,
            self.max_attempts,
            self.timeout_s,
            self.metadata,
            self.run_on_dep_failure,
            self.digest,
            self.created,
        )

    def snapshot(self) -> Task:
        return Task(
            id=self.id,
            prompt=self.prompt,
            category=self.category,
            priority=self.priority,
            deps=self.deps,
            model=self.model,
            max_attempts=self.max_attempts,
            timeout_s=self.timeout_s,
            metadata=self.metadata,
            run_on_dep_failure=self.run_on_dep_failure,
            state=self.state,
            attempts=tuple(self.attempts),
            result=self.result,
            reason=self.reason,
            created=self.created,
            updated=self.updated,
            not_before=self.not_before,
            worker=self.worker,
            failed_models=dict(self.failed_models),
            usage=dict(self.usage),
            retry_base=self.retry_base,
        )

    def open_attempt(self) -> Attempt | None:
        if self.attempts and self.attempts[-1].ended is None:
            return self.attempts[-1]
        return None


class _Order:
    """Task ids in submission order, for `tasks.list` paging: sorted chunks of (seq, id), so an
    eviction removes from the middle in O(chunk) and a cursor seeks in O(log n) (a plain list would
    cost a memmove of the whole index per eviction). Seqs are appended in increasing order."""

    __slots__ = ("_ids", "_len", "_maxes", "_seqs")

    def __init__(self) -> None:
        self._seqs: list[list[int]] = []
        self._ids: list[list[str]] = []
        self._maxes: list[int] = []  # last seq of each chunk
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, seq: int, tid: str) -> None:
        if self._maxes and seq <= self._maxes[-1]:
            self._insert(seq, tid)  # a task another node submitted a moment earlier (a shared store)
            return
        if not self._seqs or len(self._seqs[-1]) >= ORDER_CHUNK:
            self._seqs.append([])
            self._ids.append([])
            self._maxes.append(seq)
        self._seqs[-1].append(seq)
        self._ids[-1].append(tid)
        self._maxes[-1] = seq
        self._len += 1

    def _insert(self, seq: int, tid: str) -> None:
        i = bisect_left(self._maxes, seq)
        seqs, ids = self._seqs[i], self._ids[i]
        j = bisect_left(seqs, seq)
        if j < len(seqs) and seqs[j] == seq:
            raise ValueError(f"seq {seq} is already taken (by {ids[j]!r})")
        seqs.insert(j, seq)
        ids.insert(j, tid)
        self._len += 1
        if len(seqs) > 2 * ORDER_CHUNK:  # split a chunk grown by inserts
            half = len(seqs) // 2
            self._seqs[i : i + 1] = [seqs[:half], seqs[half:]]
            self._ids[i : i + 1] = [ids[:half], ids[half:]]
            self._maxes[i : i + 1] = [seqs[half - 1], seqs[-1]]

    def remove(self, seq: int) -> None:
        i = bisect_left(self._maxes, seq)
        chunk = self._seqs[i] if i < len(self._seqs) else []
        j = bisect_left(chunk, seq)
        if j >= len(chunk) or chunk[j] != seq:
            raise KeyError(seq)
        del chunk[j]
        del self._ids[i][j]
        self._len -= 1
        if not chunk:
            del self._seqs[i], self._ids[i], self._maxes[i]
            return
        self._maxes[i] = chunk[-1]
        if len(chunk) < ORDER_CHUNK // 8:  # keep chunks from thinning out: merge into a neighbour
            k = i + 1 if i + 1 < len(self._seqs) else i - 1
            if k >= 0 and len(self._seqs[k]) + len(chunk) <= ORDER_CHUNK:
                lo, hi = min(i, k), max(i, k)
                self._seqs[lo].extend(self._seqs[hi])
                self._ids[lo].extend(self._ids[hi])
                self._maxes[lo] = self._maxes[hi]
                del self._seqs[hi], self._ids[hi], self._maxes[hi]

    def after(self, seq: int | None) -> Iterator[tuple[int, str]]:
        """(seq, id) in order, starting after `seq` (from the first when None)."""
        i = 0 if seq is None else bisect_right(self._maxes, seq)
        for ci in range(i, len(self._seqs)):
            seqs, ids = self._seqs[ci], self._ids[ci]
            j = 0 if seq is None or ci > i else bisect_right(seqs, seq)
            for k in range(j, len(seqs)):
                yield seqs[k], ids[k]

    def ids(self) -> list[str]:
        return [tid for chunk in self._ids for tid in chunk]

    def seqs(self) -> list[int]:
        return [s for chunk in self._seqs for s in chunk]


class BookState:
    """The state of one TaskBook, shared by all its layers, and the outputs every transition
    records: `Change`s for the store, events for the bus, the ids of tasks that became ready."""

    def __init__(
        self,
        queue: QueueConfig | None = None,
        models: ModelsConfig | None = None,
        *,
        rng: random.Random | None = None,
        stamp: Callable[[], int] | None = None,
        seq_source: Callable[[float], int] | None = None,
    ) -> None:
        self.qcfg = queue or QueueConfig()
        # a shared store (several nodes): each change gets a fresh row version from `stamp` and
        # names the one it was decided on; `seq_source(now)` gives cluster-wide submission seqs
        self.stamp = stamp
        self.seq_source = seq_source
        self.mcfg = models or ModelsConfig()
        self.rng = rng or random.Random()
        self._recs: dict[str, _Rec] = {}
        self._order = _Order()  # ids in submission order
        self._next_seq = 1
        self._dependants: dict[str, dict[str, None]] = {}  # dep id -> dependants (ordered set)
        self._counts: Counter[TaskState] = Counter()
        # ready index
        self._cats: dict[str | None, dict[BucketKey, _Bucket]] = {}
        self._assigned: dict[str, _Bucket] = {}  # worker -> its manual-assignment bucket
        self._lane: Callable[[str], bool] | None = None  # a cluster node's lane (`set_lane`)
        self._targets: dict[str, set[str]] = {}  # worker -> non-running tasks manually assigned to it
        self._running: dict[str, set[str]] = {}  # worker -> tasks running on it
        self._ready_by_model: Counter[str | None] = Counter()
        self._retry_heap: list[tuple[float, int, str]] = []  # (not_before, seq, id) of FAILED tasks
        self._finished: list[tuple[float, int, str]] = []  # (finished, seq, id): eviction candidates
        self.parked: dict[str, float] = {}  # model -> rate-limit reset time (inf: until resumed)
        # models near the end of their quota (limits.prefer_fallback_at): their soft-routed tasks
        # route to their fallback model instead (`_route`)
        self.hot: frozenset[str] = frozenset()
        # outputs
        self._changes: list[Change] = []
        self._events: list[Event] = []
        self._newly_ready: list[str] = []
        self._unsubmitted: set[str] = set()
        self.stale_reports = 0
        self.evicted = 0  # finished tasks dropped by retention since this book was created

    # ---- output ------------------------------------------------------------------------------------

    def drain(self) -> tuple[list[Change], list[Event], list[str]]:
        """Take the changes, events and newly ready task ids recorded since the last drain."""
        out = (self._changes, self._events, self._newly_ready)
        self._changes, self._events, self._newly_ready = [], [], []
        return out

    def _change(self, kind: str, rec: _Rec, attempt: Attempt | None = None, submit: bool = False) -> None:
        if rec.id in self._unsubmitted:
            return  # being submitted: its submit change (emitted last) carries the final state
        expect: int | None = None
        if self.stamp is not None:
            expect = None if submit else rec.version
            rec.version = self.stamp()
        self._changes.append(
            Change(
                kind,
                rec.id,
                rec.state,
                rec.priority,
                rec.reason,
                rec.result,
                rec.not_before,
                rec.worker,
                rec.updated,
                dict(rec.failed_models),
                dict(rec.usage),
                rec.retry_base,
                rec.dep_failure,
                attempt,
                (rec.static_row or rec.static()) if submit else None,
                expect,
                rec.version,
            )
        )

    def _event(self, topic: str, data: dict[str, Any]) -> None:
        self._events.append((topic, data))

    def announce(self, topic: str, data: dict[str, Any]) -> None:
        """An event from the queue in order with the book's own (a storm before the park it causes)."""
        self._events.append((topic, data))

    # ---- records -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._recs)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._recs

    def _rec(self, task_id: Any) -> _Rec:
        rec = self._recs.get(task_id) if isinstance(task_id, str) else None
        if rec is None:
            raise NotFound("task", str(task_id))
        return rec


def backoff_delay(cfg: BackoffConfig, n: int, rng: random.Random) -> float:
    """Delay before retry number `n` (1-based): min(max, min·factor^(n-1))·(1 + jitter·U)."""
    exp = min(max(n - 1, 0), 1000)
    try:
        base = cfg.min_s * cfg.factor**exp
    except OverflowError:
        base = math.inf
    return float(min(cfg.max_s, base) * (1.0 + cfg.jitter * rng.random()))


def _check_int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, "must be an integer", value)
    if not lo <= value <= hi:
        raise ValidationError(field, f"must be between {lo} and {hi}", value)
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(field: str, value: Any, what: str) -> str:
    """Ids, categories, worker names: non-empty, bounded, printable."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"{what} must be a non-empty string", value)
    if len(value) > MAX_ID_CHARS:
        raise ValidationError(field, f"{what} is longer than {MAX_ID_CHARS} characters", value[:40] + "…")
    if _CONTROL.search(value):
        raise ValidationError(field, f"{what} contains control characters", value)
    return value


def check_priority(value: Any, field: str = "priority") -> int:
    """Priorities are integers from 0 (the default) up; higher runs first."""
    checked: int = _check_int(field, value, 0, MAX_PRIORITY)
    return checked
