"""The queue's state machine and task selection, as pure data structures (no I/O, no trio).

`TaskBook` owns every task record in memory. Each operation takes the current time explicitly,
validates before it mutates (a refused operation changes nothing), and records what happened as
`Change` objects (for the durable store) and `(topic, data)` events (for the bus); the QueueActor
drains both with `drain()`. This keeps the rules testable with plain calls and lets the same book be
rebuilt from the store after a crash (`restore`).

Selection is indexed so that a pick stays cheap with 100,000 ready tasks: ready tasks live in heaps
("buckets") keyed by (category, routed model, hard pin, avoided models), ordered by priority then
submission order. A pick looks only at the top of each bucket the worker may take from, adds the
affinity bonus for the bucket's category and keeps the best (ties: oldest first).

Retention: finished tasks wait in a heap by finish time and `evict` drops the oldest past
`queue.keep_finished_s` or beyond `queue.keep_finished`, at most `limit` per call, so the owner can
spread a large backlog over many loop steps. A finished task is kept while a task that depends on it
has not succeeded (a retry of that task must still resolve it), so every dependency of a task that
could still run is in the book and dependency resolution never sees an eviction.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import re
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from ..protocols.config import BackoffConfig, ModelsConfig, QueueConfig
from ..protocols.errors import Conflict, NotFound, ValidationError
from ..protocols.tasks import (
    FAILED_DEP_STATES,
    TERMINAL_STATES,
    Assignment,
    Attempt,
    Outcome,
    Task,
    TaskSpec,
    TaskState,
)
from ..protocols.taskworkspace import task_workspace
from ..protocols.text import check_text

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


class _Bucket:
    """Ready tasks sharing a routing key; a heap of (-priority, seq, token, id) with lazy deletion."""

    __slots__ = ("heap", "key", "live", "worker")

    def __init__(self, key: BucketKey, worker: str | None) -> None:
        self.key = key
        self.worker = worker  # manual-assignment bucket of this worker, else None
        self.heap: list[tuple[int, int, int, str]] = []
        self.live = 0


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


def backoff_delay(cfg: BackoffConfig, n: int, rng: random.Random) -> float:
    """Delay before retry number `n` (1-based): min(max, min·factor^(n-1))·(1 + jitter·U)."""
    exp = min(max(n - 1, 0), 1000)
    try:
        base = cfg.min_s * cfg.factor**exp
    except OverflowError:
        base = math.inf
    return float(min(cfg.max_s, base) * (1.0 + cfg.jitter * rng.random()))


_CONTENT_FIELDS = (
    "prompt",
    "category",
    "priority",
    "deps",
    "model",
    "max_attempts",
    "timeout_s",
    "metadata",
    "run_on_dep_failure",
)


def _content(*values: Any) -> tuple[Any, ...]:
    """What an idempotent re-submit must match (metadata compared as canonical JSON)."""
    meta = values[7]
    return (*values[:7], json.dumps(meta, sort_keys=True) if meta else "{}", values[8])


def _differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> list[str]:
    return [name for name, x, y in zip(_CONTENT_FIELDS, a, b, strict=True) if x != y]


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


class TaskBook:
    """Every task, its state machine, the ready index and worker selection. Not thread-safe; one
    owner (the QueueActor). Times are epoch seconds supplied by the caller."""

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

    # ---- output --------------------------------------------------------------------------------

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

    # ---- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._recs)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._recs

    def get(self, task_id: str) -> Task:
        return self._snap(self._rec(task_id))

    def _snap(self, rec: _Rec) -> Task:
        task = rec.snapshot()
        if rec.state is _BLOCKED:  # name the dependencies it still waits for, as of now
            task = attrs.evolve(task, reason=self._blocked_reason(rec))
        return task

    def state_of(self, task_id: str) -> TaskState:
        return self._rec(task_id).state

    def ids(self) -> list[str]:
        return self._order.ids()

    def _rec(self, task_id: Any) -> _Rec:
        rec = self._recs.get(task_id) if isinstance(task_id, str) else None
        if rec is None:
            raise NotFound("task", str(task_id))
        return rec

    def list_tasks(
        self, state: TaskState | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Task], str | None]:
        """Tasks in submission order, `limit` at a time; the cursor is opaque (the last seq)."""
        if state is not None:
            try:
                state = TaskState(state)
            except ValueError:
                raise ValidationError(
                    "state", f"must be one of {[s.value for s in TaskState]}", state
                ) from None
        limit = _check_int("limit", limit, 1, 10_000)
        after: int | None = None
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.isdigit():
                raise ValidationError("cursor", "is not a cursor returned by tasks.list", cursor)
            after = int(cursor)  # evicted since? seeking by seq still lands after it
        out: list[Task] = []
        last = after
        entries = self._order.after(after)
        for seq, tid in entries:
            rec = self._recs[tid]
            last = seq
            if state is None or rec.state is state:
                out.append(self._snap(rec))
                if len(out) == limit:
                    break
        more = len(out) == limit and next(entries, None) is not None
        return out, (str(last) if more else None)

    def counts(self) -> dict[TaskState, int]:
        return {s: self._counts.get(s, 0) for s in TaskState}

    def ready_by_model(self) -> dict[str | None, int]:
        return {m: n for m, n in self._ready_by_model.items() if n > 0}

    def ready_by_category(self) -> dict[tuple[str, str | None], int]:
        """READY categorised tasks by (category, effective model), manual assignments aside: what the
        scaler needs to see work of a category no live worker takes. O(buckets), not O(tasks)."""
        out: dict[tuple[str, str | None], int] = {}
        for cat, buckets in self._cats.items():
            if cat is None:
                continue
            for key, bucket in buckets.items():
                if bucket.live > 0:
                    out[(cat, key[1])] = out.get((cat, key[1]), 0) + bucket.live
        return out

    def running_on(self, worker: str) -> list[str]:
        return sorted(self._running.get(worker, ()))

    def workers_with_work(self) -> set[str]:
        """Workers holding a running attempt or a manual assignment (a cluster reaps a dead node's)."""
        return set(self._running) | set(self._targets)

    def targets_of(self, worker: str) -> list[str]:
        return sorted(self._targets.get(worker, ()))

    def open_attempt(self, task_id: str) -> Attempt | None:
        return self._rec(task_id).open_attempt()

    def next_deadline(self) -> float | None:
        """The earliest retry backoff or model-parking end (epoch s), for the actor's timer."""
        heap = self._retry_heap
        while heap:
            nb, seq, tid = heap[0]
            rec = self._recs.get(tid)
            if rec is not None and rec.seq == seq and rec.state is _FAILED and rec.not_before == nb:
                break
            heapq.heappop(heap)
        best = heap[0][0] if heap else None
        if self.parked:
            p = min(self.parked.values())
            best = p if best is None else min(best, p)
        return best

    # ---- state plumbing --------------------------------------------------------------------------

    def _set_state(self, rec: _Rec, state: TaskState, now: float) -> None:
        if rec.state is _READY and state is not _READY:
            self._unindex(rec)
        self._counts[rec.state] -= 1
        self._counts[state] += 1
        rec.state = state
        rec.updated = now
        if state is _READY:
            rec.not_before = None
            if rec.bucket is None:
                self._index(rec)
        elif state in TERMINAL_STATES:  # its retention clock starts (again)
            rec.finished = now
            rec.held = False
            heapq.heappush(self._finished, (now, rec.seq, rec.id))

    def _route(self, rec: _Rec) -> tuple[str | None, bool, frozenset[str]]:
        """(effective model, hard pin, models to avoid) following the model rules; a soft route to a
        model whose quota is nearly used (`hot`) moves to its first fallback that is not."""
        model, hard, avoid = self._route_rules(rec)
        if model is not None and not hard and model in self.hot:
            for fallback in self.mcfg.fallback.get(model, ()):
                if fallback not in self.hot and fallback not in avoid:
                    return fallback, False, avoid
        return model, hard, avoid

    def _route_rules(self, rec: _Rec) -> tuple[str | None, bool, frozenset[str]]:
        if rec.model is not None:
            return rec.model, True, frozenset()
        known = self.mcfg.known
        limit = self.qcfg.model_failure_limit
        failed_out = frozenset(m for m, n in rec.failed_models.items() if n >= limit)
        if failed_out and all(m in failed_out for m in known):
            failed_out = frozenset()  # every model failed it: nobody else could take it, avoid none
        cm = self.mcfg.category_models.get(rec.category) if rec.category is not None else None
        if cm is not None and cm in failed_out:
            cm = None
        if failed_out and self.mcfg.escalate:
            top = max((known.index(m) for m in failed_out if m in known), default=-1)
            if cm is not None and cm in known and known.index(cm) > top:
                return cm, False, failed_out  # its category's model is stronger still
            for m in known[top + 1 :]:
                if m not in failed_out:
                    return m, False, failed_out
        if cm is not None:
            return cm, False, failed_out
        return None, False, failed_out

    def _index(self, rec: _Rec) -> None:
        route = self._route(rec)
        rec.route = route
        key: BucketKey = (rec.category, route[0], route[1], route[2])
        if rec.worker is not None:
            bucket = self._assigned.get(rec.worker)
            if bucket is None:
                bucket = self._assigned[rec.worker] = _Bucket(key, rec.worker)
        else:
            per_cat = self._cats.get(rec.category)
            if per_cat is None:
                per_cat = self._cats[rec.category] = {}
            bucket = per_cat.get(key)
            if bucket is None:
                bucket = per_cat[key] = _Bucket(key, None)
        rec.token += 1
        heapq.heappush(bucket.heap, (-rec.priority, rec.seq, rec.token, rec.id))
        bucket.live += 1
        rec.bucket = bucket
        self._ready_by_model[route[0]] += 1
        self._newly_ready.append(rec.id)

    def _unindex(self, rec: _Rec) -> None:
        bucket = rec.bucket
        if bucket is None:
            return
        rec.bucket = None
        rec.token += 1
        bucket.live -= 1
        self._ready_by_model[rec.route[0]] -= 1
        if bucket.live <= 0:
            if bucket.worker is not None:
                self._assigned.pop(bucket.worker, None)
            else:
                per_cat = self._cats.get(bucket.key[0])
                if per_cat is not None:
                    per_cat.pop(bucket.key, None)
                    if not per_cat:
                        del self._cats[bucket.key[0]]

    def _peek(self, bucket: _Bucket) -> _Rec | None:
        heap = bucket.heap
        recs = self._recs
        while heap:
            _p, seq, token, tid = heap[0]
            rec = recs.get(tid)  # entries are dropped lazily: the task may be evicted, its id reused
            if rec is not None and rec.token == token and rec.seq == seq and rec.bucket is bucket:
                return rec
            heapq.heappop(heap)
        return None

    # ---- selection -----------------------------------------------------------------------------

    def _key_ok(self, key: BucketKey, wmodel: str | None) -> bool:
        _cat, model, hard, avoid = key
        if model is None:
            return wmodel not in avoid
        if model == wmodel:
            return True
        if hard or model not in self.parked or wmodel is None or wmodel in avoid:
            return False
        return wmodel in self.mcfg.fallback.get(model, ())

    def select(self, worker: WorkerView) -> str | None:
        """The id of the best ready task for `worker`, or None. Does not claim it."""
        if worker.model is not None and worker.model in self.parked:
            return None
        own = self._assigned.get(worker.id)
        if own is not None:
            rec = self._peek(own)
            if rec is not None:
                return rec.id  # manual assignments go first
        caps = worker.capabilities
        if caps is None:
            cats: Iterable[str | None] = self._cats.keys()
        else:
            cats = [c for c in caps if c in self._cats]
            if None in self._cats:
                cats.append(None)
        bonus = self.qcfg.affinity_bonus
        affinity = worker.affinity
        wmodel = worker.model
        best: _Rec | None = None
        best_score = 0
        for cat in cats:
            extra = bonus * affinity.get(cat, 0) if cat is not None else 0
            for key, bucket in self._cats[cat].items():
                if not self._key_ok(key, wmodel):
                    continue
                rec = self._peek(bucket)
                if rec is None:
                    continue
                score = rec.priority + extra
                if best is None or score > best_score or (score == best_score and rec.seq < best.seq):
                    best, best_score = rec, score
        return best.id if best is not None else None

    def can_take(self, worker: WorkerView, task_id: str) -> bool:
        """Whether `worker` may take this READY task now (the filters of `select`)."""
        rec = self._recs.get(task_id)
        if rec is None or rec.bucket is None:
            return False
        if worker.model is not None and worker.model in self.parked:
            return False
        if rec.bucket.worker is not None:
            return rec.bucket.worker == worker.id
        caps = worker.capabilities
        if caps is not None and rec.category is not None and rec.category not in caps:
            return False
        return self._key_ok(rec.bucket.key, worker.model)

    def bucket_key(self, task_id: str) -> tuple[str | None, BucketKey] | None:
        """(manual target, routing key) of a READY task: tasks sharing it have the same takers."""
        rec = self._recs.get(task_id)
        if rec is None or rec.bucket is None:
            return None
        return rec.bucket.worker, (rec.category, *rec.route)

    def score(self, worker: WorkerView, task_id: str) -> int:
        rec = self._rec(task_id)
        extra = worker.affinity.get(rec.category, 0) if rec.category is not None else 0
        return rec.priority + self.qcfg.affinity_bonus * extra

    # ---- submit --------------------------------------------------------------------------------

    def _validate(self, spec: Any, field: str, now: float) -> tuple[str, TaskSpec, tuple[str, ...]]:
        def f(name: str) -> str:
            return f"{field}.{name}" if field else name

        if not isinstance(spec, TaskSpec):
            raise ValidationError(field or "task", "must be a task spec", type(spec).__name__)
        if spec.max_attempts is None:  # the task did not say: the queue's default applies
            spec = attrs.evolve(spec, max_attempts=self.qcfg.default_max_attempts)
        tid = spec.id if spec.id is not None else uuid.uuid4().hex
        check_name(f("id"), tid, "id")
        if not isinstance(spec.prompt, str):
            raise ValidationError(f("prompt"), "must be a string", type(spec.prompt).__name__)
        if not spec.prompt:
            raise ValidationError(f("prompt"), f"task {tid!r}: must not be empty")
        # a prompt goes onto a command line (oneshot) or into a terminal: neither takes a NUL, and
        # nothing that cannot be encoded as UTF-8 may reach the store or a worker
        check_text(spec.prompt, f("prompt"), nul=True)
        limit = self.qcfg.max_prompt_bytes
        size = len(spec.prompt)
        if size * 4 > limit:  # only then can the UTF-8 size pass the limit: measure it
            size = len(spec.prompt.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise ValidationError(
                f("prompt"),
                f"task {tid!r}: is {size} bytes, over the limit of {limit} (queue.max_prompt_bytes)",
            )
        if spec.category is not None:
            check_name(f("category"), spec.category, "category")
        check_priority(spec.priority, f("priority"))
        _check_int(f("max_attempts"), spec.max_attempts, 1, MAX_ATTEMPTS_LIMIT)
        if spec.model is not None and spec.model not in self.mcfg.known:
            raise ValidationError(
                f("model"), f"task {tid!r}: unknown model; known: {list(self.mcfg.known)}", spec.model
            )
        t = spec.timeout_s
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0
        ):
            raise ValidationError(f("timeout_s"), "must be a positive number of seconds or null", t)
        if not isinstance(spec.run_on_dep_failure, bool):
            raise ValidationError(f("run_on_dep_failure"), "must be true or false", spec.run_on_dep_failure)
        if not isinstance(spec.metadata, dict) or not all(isinstance(k, str) for k in spec.metadata):
            raise ValidationError(f("metadata"), "must be an object with string keys")
        try:
            blob = json.dumps(spec.metadata, allow_nan=False) if spec.metadata else "{}"
        except (TypeError, ValueError) as exc:
            raise ValidationError(f("metadata"), f"task {tid!r}: is not JSON-serialisable: {exc}") from None
        if len(blob) > limit:
            raise ValidationError(f("metadata"), f"task {tid!r}: is over {limit} bytes as JSON")
        task_workspace(spec.metadata, f("metadata"))  # its own worktree options, if any: checked now
        if not isinstance(spec.deps, tuple | list):
            raise ValidationError(f("deps"), "must be a list of task ids", spec.deps)
        deps: list[str] = []
        for i, d in enumerate(spec.deps):
            check_name(f(f"deps[{i}]"), d, "dependency id")
            if d == tid:
                raise ValidationError(f("deps"), f"task {tid!r} depends on itself")
            if d not in deps:
                deps.append(d)
        return tid, spec, tuple(deps)

    def submit(self, specs: Sequence[Any], now: float) -> list[Task]:
        """Add tasks atomically: either every spec is accepted (or matched idempotently) or none is.
        Returns the snapshots in the order given."""
        if not isinstance(specs, list | tuple):
            raise ValidationError("tasks", "must be a list of task specs")
        multi = len(specs) != 1
        checked: list[tuple[str, TaskSpec, tuple[str, ...], str]] = []
        batch: dict[str, tuple[Any, ...]] = {}  # id -> content of new tasks in this batch
        for i, raw in enumerate(specs):
            tid, spec, deps = self._validate(raw, f"tasks[{i}]" if multi else "", now)
            content = _content(
                spec.prompt,
                spec.category,
                spec.priority,
                deps,
                spec.model,
                spec.max_attempts,
                spec.timeout_s,
                spec.metadata,
                spec.run_on_dep_failure,
            )
            existing = self._recs.get(tid)
            if existing is not None:
                differs = _differs(self._content_of(existing), content)
                if differs:
                    raise Conflict(
                        f"task {tid!r} already exists with different content"
                        f" (differs in: {', '.join(differs)})"
                    )
            elif tid in batch:
                if _differs(batch[tid], content):
                    raise Conflict(f"task {tid!r} appears twice in the batch with different content")
                continue
            else:
                batch[tid] = content
            checked.append((tid, spec, deps, ""))
        new = [c for c in checked if c[0] not in self._recs]
        for tid, _spec, deps, _d in new:
            unknown = [d for d in deps if d not in self._recs and d not in batch]
            if unknown:
                raise ValidationError(
                    "deps",
                    f"task {tid!r}: unknown dependency id(s) {unknown}: never submitted, or finished and"
                    " evicted by retention (queue.keep_finished_s, queue.keep_finished); submit them"
                    " first or together",
                )
        if any(deps for _t, _s, deps, _d in new):
            self._check_cycles({tid: deps for tid, _s, deps, _d in new})
        # all checks passed: mutate
        for tid, spec, deps, digest in new:
            seq = self._next_seq if self.seq_source is None else self.seq_source(now)
            static = StaticRow(
                seq,
                spec.prompt,
                spec.category,
                spec.priority,
                deps,
                spec.model,
                spec.max_attempts or self.qcfg.default_max_attempts,  # set by _validate
                float(spec.timeout_s) if spec.timeout_s is not None else None,
                json.loads(json.dumps(spec.metadata)) if spec.metadata else {},  # a private copy
                spec.run_on_dep_failure,
                digest,
                now,
            )
            self._next_seq = max(self._next_seq, seq) + 1
            rec = _Rec(tid, static)
            rec.static_row = static
            self._add(rec)
            self._unsubmitted.add(tid)
            self._event(
                "task.submitted",
                {
                    "task_id": tid,
                    "category": rec.category,
                    "priority": rec.priority,
                    "model": rec.model,
                    "deps": list(deps),
                },
            )
        fresh = [self._recs[tid] for tid, _spec, _deps, _d in new]
        for rec in fresh:  # before any settles: a dependency dying below updates these counts
            self._link(rec)
            rec.unmet = self._dep_status(rec)[0]
        for rec in fresh:
            if rec.state is _BLOCKED:  # not already moved on by an earlier task's settling
                self._settle_deps(rec, now)
        self._unsubmitted.clear()
        for rec in fresh:  # one change per new task, carrying its settled state
            self._change("submit", rec, submit=True)
            rec.static_row = None
        return [self._snap(self._recs[tid]) for tid, _s, _deps, _d in checked]

    @staticmethod
    def _content_of(rec: _Rec) -> tuple[Any, ...]:
        return _content(
            rec.prompt,
            rec.category,
            rec.spec_priority,
            rec.deps,
            rec.model,
            rec.max_attempts,
            rec.timeout_s,
            rec.metadata,
            rec.run_on_dep_failure,
        )

    def _check_cycles(self, graph: Mapping[str, tuple[str, ...]]) -> None:
        """Refuse a dependency cycle among new tasks (old tasks cannot depend on new ones)."""
        state: dict[str, int] = {}  # 1 visiting, 2 done
        for root in graph:
            if state.get(root):
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = []
            while stack:
                node, i = stack.pop()
                if i == 0:
                    state[node] = 1
                    path.append(node)
                deps = [d for d in graph.get(node, ()) if d in graph]
                if i < len(deps):
                    stack.append((node, i + 1))
                    nxt = deps[i]
                    if state.get(nxt) == 1:
                        cycle = [*path[path.index(nxt) :], nxt]
                        raise ValidationError(
                            "deps", f"dependency cycle (-> means depends on): {' -> '.join(cycle)}"
                        )
                    if not state.get(nxt):
                        stack.append((nxt, 0))
                else:
                    state[node] = 2
                    path.pop()

    def _add(self, rec: _Rec) -> None:
        self._recs[rec.id] = rec
        self._order.append(rec.seq, rec.id)
        self._counts[rec.state] += 1
        for d in rec.deps:
            self._dependants.setdefault(d, {})[rec.id] = None

    def _link(self, rec: _Rec) -> None:
        """Count `rec` as needing its dependencies (once all of a batch is added: a task may depend
        on a later one in the same submit)."""
        if rec.state is TaskState.DONE:
            return
        for d in rec.deps:
            dep = self._recs.get(d)
            if dep is not None:
                dep.needed += 1

    def _unneed(self, rec: _Rec) -> None:
        """`rec` succeeded or left the book: its dependencies may become evictable."""
        for d in rec.deps:
            dep = self._recs.get(d)
            if dep is None or dep.needed <= 0:
                continue
            dep.needed -= 1
            if dep.needed == 0 and dep.held and dep.state in TERMINAL_STATES:
                dep.held = False  # it waited for this: back in line, at its own finish time
                heapq.heappush(self._finished, (dep.finished, dep.seq, dep.id))

    # ---- dependencies --------------------------------------------------------------------------

    def _dep_status(self, rec: _Rec) -> tuple[int, tuple[str, str] | None]:
        """(unmet count, (id, state) of a failed dependency that dooms it) for a task's deps."""
        unmet = 0
        for d in rec.deps:
            dep = self._recs.get(d)
            if dep is None:  # only after damage to the store: treat as a failed dependency
                if rec.run_on_dep_failure:
                    continue
                return unmet, (d, "missing")
            if dep.state is TaskState.DONE:
                continue
            if dep.state in FAILED_DEP_STATES:
                if rec.run_on_dep_failure:
                    continue
                return unmet, (d, dep.state.value)
            unmet += 1
        return unmet, None

    def _settle_deps(
        self, rec: _Rec, now: float, kind: str | None = None, attempt: Attempt | None = None
    ) -> None:
        """Put a task that may run (new, revived, retried, or back from an attempt) in BLOCKED, READY
        or DEAD according to its deps: READY always means every dependency is settled, even after
        an operator retried a dependency that had failed."""
        unmet, doomed = self._dep_status(rec)
        rec.unmet = unmet
        if doomed is not None:
            self._dep_dead(rec, doomed, now, attempt)
        elif unmet:
            rec.reason = self._blocked_reason(rec)
            self._set_state(rec, _BLOCKED, now)
            self._change(kind or "block", rec, attempt)
        else:
            rec.reason = None
            self._set_state(rec, _READY, now)
            self._change(kind or "ready", rec, attempt)
            self._event_ready(rec)

    def _blocked_reason(self, rec: _Rec) -> str:
        waiting = [
            d for d in rec.deps if (dep := self._recs.get(d)) is None or dep.state is not TaskState.DONE
        ]
        shown = ", ".join(repr(d) for d in waiting[:5]) + (
            f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        )
        return f"waiting for dependencies: {shown}"

    def _event_failed(
        self,
        rec: _Rec,
        att: Attempt,
        outcome: Outcome,
        why: str,
        *,
        will_retry: bool,
        not_before: float | None,
    ) -> None:
        """`task.failed` for attempt `att`: whether the task will be retried, and not before when."""
        self._event(
            "task.failed",
            {
                "task_id": rec.id,
                "attempt": att.n,
                "worker": att.worker,
                "model": att.model,
                "category": rec.category,
                "outcome": outcome.value,
                "reason": why,
                "will_retry": will_retry,
                "not_before": not_before,
            },
        )

    def _event_ready(self, rec: _Rec) -> None:
        self._event(
            "task.ready",
            {"task_id": rec.id, "category": rec.category, "priority": rec.priority, "model": rec.route[0]},
        )

    def _dep_dead(
        self, rec: _Rec, doomed: tuple[str, str], now: float, attempt: Attempt | None = None
    ) -> None:
        rec.dep_failure = doomed[0]
        self._terminal(rec, TaskState.DEAD, f"dependency {doomed[0]!r} {doomed[1]}", now, "dead", attempt)

    def _terminal(
        self,
        rec: _Rec,
        state: TaskState,
        reason: str | None,
        now: float,
        kind: str,
        attempt: Attempt | None = None,
    ) -> None:
        """Move a task into a terminal state and settle its dependants (iteratively)."""
        # dead -> skipped changes nothing for dependants: they were settled when it died
        settled_already = rec.state in FAILED_DEP_STATES and state in FAILED_DEP_STATES
        rec.reason = reason
        rec.not_before = None
        self._set_state(rec, state, now)
        self._clear_target(rec)
        self._change(kind, rec, attempt)
        if state is TaskState.DONE:  # done stays done: its dependencies have served it
            self._unneed(rec)
        data: dict[str, Any] = {
            "task_id": rec.id,
            "reason": reason,
            "model": attempt.model if attempt else rec.model,
            "category": rec.category,
        }
        if state is TaskState.DONE:
            data["attempt"] = attempt.n if attempt else None
            data["worker"] = attempt.worker if attempt else None
            if attempt is not None and attempt.ended is not None:
                data["run_s"] = round(attempt.ended - attempt.started, 6)
            if rec.usage:  # tokens and cost the agent reported (stream-json): cost per model
                data["usage"] = dict(rec.usage)
                if "cost_usd" in rec.usage:
                    data["cost_usd"] = rec.usage["cost_usd"]
        self._event(TERMINAL_TOPICS[state], data)
        stack = [] if settled_already else [rec]
        while stack:
            r = stack.pop()
            for did in self._dependants.get(r.id, ()):
                d = self._recs[did]
                if d.state is not _BLOCKED:
                    continue
                if r.state is TaskState.DONE or d.run_on_dep_failure:
                    d.unmet -= 1
                    if d.unmet <= 0:
                        d.reason = None
                        self._set_state(d, _READY, now)
                        self._change("ready", d)
                        self._event_ready(d)
                else:
                    d.dep_failure = r.id
                    d.reason = f"dependency {r.id!r} {r.state.value}"
                    self._set_state(d, TaskState.DEAD, now)
                    self._clear_target(d)
                    self._change("dead", d)
                    self._event("task.dead", {"task_id": d.id, "reason": d.reason})
                    stack.append(d)

    def _revive_dependants(self, rec: _Rec, now: float) -> None:
        """After a manual retry of `rec`: dependants it killed come back (blocked), recursively, and
        blocked dependants that counted it as settled wait for it again."""
        stack = [rec]
        while stack:
            r = stack.pop()
            for did in self._dependants.get(r.id, ()):
                d = self._recs[did]
                if d.state is TaskState.DEAD and d.dep_failure == r.id:
                    d.dep_failure = None
                    d.retry_base = len(d.attempts)
                    d.counted = 0
                    self._settle_deps(d, now, "revive")
                    self._event("task.revived", {"task_id": d.id, "state": d.state.value})
                    stack.append(d)
                elif d.state is _BLOCKED:
                    d.unmet, _ = self._dep_status(d)
                elif d.state is _READY and d.run_on_dep_failure:
                    self._settle_deps(d, now, "block")  # it must wait for the retried dependency

    # ---- claims and outcomes -------------------------------------------------------------------

    def claim(self, task_id: str, worker: str, model: str | None, now: float) -> Assignment:
        """Record that `worker` takes a READY task: opens the next attempt."""
        rec = self._rec(task_id)
        if rec.state is not _READY:
            raise Conflict(f"task {task_id!r} is {rec.state.value}, not ready")
        self._forget_target(rec)
        att = Attempt(n=len(rec.attempts) + 1, worker=worker, model=model, started=now)
        rec.attempts.append(att)
        rec.worker = worker
        rec.reason = None
        self._set_state(rec, _RUNNING, now)
        self._running.setdefault(worker, set()).add(rec.id)
        self._change("claim", rec, att)
        self._event(
            "task.running",
            {"task_id": rec.id, "worker": worker, "attempt": att.n, "model": model, "category": rec.category},
        )
        failed_check = _failed_check(rec.attempts[-2]) if len(rec.attempts) > 1 else None
        return Assignment(
            task_id=rec.id,
            attempt=att.n,
            prompt=rec.prompt if failed_check is None else check_feedback(rec.prompt, failed_check),
            category=rec.category,
            model=model,
            timeout_s=rec.timeout_s,
            metadata=rec.metadata,
            dep_heads=self._dep_heads(rec),
            after_failed_check=failed_check,
        )

    def _dep_heads(self, rec: _Rec) -> tuple[tuple[str, str], ...]:
        """Each finished dependency's last commit in a worktree (docs/workspaces.md), in deps order."""
        heads: list[tuple[str, str]] = []
        for d in rec.deps:
            dep = self._recs.get(d)
            done = dep.attempts[-1] if dep is not None and dep.attempts else None
            head = (done.workspace or {}).get("head") if done is not None else None
            if dep is not None and dep.state is TaskState.DONE and isinstance(head, str):
                heads.append((d, head))
        return tuple(heads)

    def is_current(self, task_id: str, attempt: int) -> bool:
        rec = self._recs.get(task_id)
        if rec is None or rec.state is not _RUNNING:
            return False
        att = rec.open_attempt()
        return att is not None and att.n == attempt

    def finish(
        self,
        task_id: str,
        attempt: int,
        outcome: Outcome,
        now: float,
        *,
        result: str | None = None,
        reason: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
        output_tail: str | None = None,
        usage: Mapping[str, Any] | None = None,
        workspace: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record how the open attempt ended. Returns False (and counts it) when the report is for a
        stale or unknown attempt: a result is recorded exactly once."""
        if not self.is_current(task_id, attempt):
            self.stale_reports += 1
            return False
        outcome = Outcome(outcome)
        rec = self._recs[task_id]
        att = rec.attempts[-1]
        if output_tail is not None and len(output_tail) > OUTPUT_TAIL_CHARS:
            output_tail = output_tail[-OUTPUT_TAIL_CHARS:]
        closed = Attempt(
            n=att.n,
            worker=att.worker,
            model=att.model,
            started=att.started,
            ended=now,
            outcome=outcome,
            reason=reason,
            exit_code=exit_code,
            signal=signal,
            output_tail=output_tail,
            usage=dict(usage) if usage else {},
            workspace=dict(workspace) if workspace else None,
        )
        rec.attempts[-1] = closed
        running = self._running.get(att.worker)
        if running is not None:
            running.discard(rec.id)
            if not running:
                del self._running[att.worker]
        rec.worker = None
        if usage:
            rec.usage = dict(usage)
        if outcome is Outcome.DONE:
            rec.result = result
            self._terminal(rec, TaskState.DONE, None, now, "complete", closed)
            return True
        if outcome is Outcome.CANCELLED:
            # a worker-side cancel that the queue did not ask for: treat as an interruption
            outcome = Outcome.INTERRUPTED
        if outcome in COUNTED_OUTCOMES:
            rec.counted += 1
            if att.model is not None:
                rec.failed_models[att.model] = rec.failed_models.get(att.model, 0) + 1
            why = reason or outcome.value
            if rec.counted >= rec.max_attempts:
                self._event_failed(rec, att, outcome, why, will_retry=False, not_before=None)
                self._terminal(
                    rec,
                    TaskState.DEAD,
                    f"attempts exhausted ({rec.counted}/{rec.max_attempts}): {why}",
                    now,
                    "dead",
                    closed,
                )
                return True
            if outcome is Outcome.CRASHED and rec.counted == 1:
                # A worker dying once says little about the task: straight back to the queue, so
                # another idle worker takes it at once (the attempt still counts; repeated crashes
                # back off like any failure).
                self._event_failed(rec, att, outcome, why, will_retry=True, not_before=None)
                self._settle_deps(rec, now, "requeue", closed)
                return True
            delay = backoff_delay(self.qcfg.retry_backoff, rec.counted, self.rng)
            rec.reason = f"retrying after {outcome.value}: {why}"
            self._set_state(rec, _FAILED, now)
            rec.not_before = now + delay
            heapq.heappush(self._retry_heap, (rec.not_before, rec.seq, rec.id))
            self._change("fail", rec, closed)
            self._event_failed(rec, att, outcome, why, will_retry=True, not_before=rec.not_before)
            return True
        # RATE_LIMITED / INTERRUPTED: not the task's fault; straight back to the queue
        self._event(
            "task.requeued",
            {
                "task_id": rec.id,
                "attempt": att.n,
                "worker": att.worker,
                "outcome": outcome.value,
                "reason": reason,
            },
        )
        self._settle_deps(rec, now, "requeue", closed)
        return True

    def release_due(self, now: float) -> list[str]:
        """FAILED tasks whose backoff has elapsed become READY; returns their ids."""
        out: list[str] = []
        heap = self._retry_heap
        while heap and heap[0][0] <= now:
            nb, seq, tid = heapq.heappop(heap)
            rec = self._recs.get(tid)
            if rec is None or rec.seq != seq or rec.state is not _FAILED or rec.not_before != nb:
                continue
            self._settle_deps(rec, now, "ready")
            if rec.state is _READY:
                out.append(tid)
        return out

    def unpark_due(self, now: float) -> list[str]:
        """Models whose rate-limit reset has passed become usable again; returns them."""
        out = [m for m, until in self.parked.items() if until <= now]
        for model in out:
            del self.parked[model]
            self._event("model.unparked", {"model": model})
        return out

    def park(self, model: str, until: float) -> None:
        """A model hit its usage limit: its workers take nothing until `until`; tasks routed to it
        softly may fall back (models.fallback); tasks pinned to it wait."""
        prev = self.parked.get(model)
        if prev is None or until > prev:
            self.parked[model] = until
            # until=inf: parked until an operator resumes it (models.resume); JSON has no infinity
            shown = until if math.isfinite(until) else None
            self._event("model.parked", {"model": model, "until": shown})

    def set_hot(self, models: Iterable[str]) -> None:
        """The models whose quota is nearly used up: ready tasks softly routed to them (category
        model, escalation) are routed again, to their fallback when there is one."""
        self.hot = frozenset(models)
        self.reconfigure(self.qcfg, self.mcfg)

    def unpark(self, model: str, reason: str) -> bool:
        """An operator resumed a parked model (models.resume): usable again at once."""
        if self.parked.pop(model, None) is None:
            return False
        self._event("model.unparked", {"model": model, "reason": reason})
        return True

    # ---- operator controls ---------------------------------------------------------------------

    def cancel(self, task_id: str, now: float, *, skip: bool = False) -> str | None:
        """Cancel (or skip) a task that has not ended. Returns the worker that was running it, if any,
        so the caller can interrupt it; its later report is stale and ignored."""
        rec = self._rec(task_id)
        verb = "skip" if skip else "cancel"
        refused = TERMINAL_STATES - ({TaskState.DEAD} if skip else set())
        if rec.state in refused:
            raise Conflict(f"cannot {verb} task {task_id!r}: it is already {rec.state.value}")
        worker = None
        closed = None
        att = rec.open_attempt()
        if rec.state is _RUNNING and att is not None:
            worker = att.worker
            closed = Attempt(
                n=att.n,
                worker=att.worker,
                model=att.model,
                started=att.started,
                ended=now,
                outcome=Outcome.CANCELLED,
                reason=f"{verb} requested",
            )
            rec.attempts[-1] = closed
            running = self._running.get(worker)
            if running is not None:
                running.discard(rec.id)
                if not running:
                    del self._running[worker]
            rec.worker = None
        state = TaskState.SKIPPED if skip else TaskState.CANCELLED
        self._terminal(rec, state, f"{'skipped' if skip else 'cancelled'} by request", now, verb, closed)
        return worker

    def retry(self, task_id: str, now: float) -> Task:
        """Manual retry: a dead, cancelled, skipped or backing-off task gets a fresh attempt budget."""
        rec = self._rec(task_id)
        if rec.state not in (TaskState.DEAD, TaskState.CANCELLED, TaskState.SKIPPED, _FAILED):
            raise Conflict(f"cannot retry task {task_id!r}: it is {rec.state.value}")
        if not rec.run_on_dep_failure:
            for d in rec.deps:
                dep = self._recs.get(d)
                if dep is not None and dep.state in FAILED_DEP_STATES:
                    raise Conflict(
                        f"cannot retry task {task_id!r}: its dependency {d!r} is {dep.state.value};"
                        " retry that first"
                    )
        rec.retry_base = len(rec.attempts)
        rec.counted = 0
        rec.dep_failure = None
        rec.result = None
        rec.not_before = None
        self._settle_deps(rec, now, "retry")
        self._event("task.retried", {"task_id": rec.id, "state": rec.state.value})
        self._revive_dependants(rec, now)
        return self._snap(rec)

    def boost(self, task_id: str, priority: Any, now: float) -> Task:
        priority = check_priority(priority)
        rec = self._rec(task_id)
        if rec.state in TERMINAL_STATES:
            raise Conflict(f"cannot boost task {task_id!r}: it is already {rec.state.value}")
        rec.priority = priority
        rec.updated = now
        if rec.state is _READY:
            self._unindex(rec)
            self._index(rec)
        self._change("boost", rec)
        self._event("task.boosted", {"task_id": rec.id, "priority": priority})
        return self._snap(rec)

    def assign(self, task_id: str, worker: str, now: float) -> Task:
        """Manual assignment: the task becomes eligible only for `worker` (ahead of its other work),
        skipping any retry backoff. Refused once it runs or has ended."""
        check_name("worker", worker, "worker id")
        rec = self._rec(task_id)
        if rec.state not in (_BLOCKED, _READY, _FAILED):
            raise Conflict(f"cannot assign task {task_id!r}: it is {rec.state.value}")
        was_ready = rec.state is _READY
        if was_ready:
            self._unindex(rec)
        self._clear_target(rec)
        rec.worker = worker
        self._targets.setdefault(worker, set()).add(rec.id)
        rec.updated = now
        if was_ready:
            self._index(rec)
            self._change("assign", rec)
        elif rec.state is _FAILED:
            self._settle_deps(rec, now, "assign")
        else:
            self._change("assign", rec)
        self._event("task.assigned", {"task_id": rec.id, "worker": worker})
        return self._snap(rec)

    def _forget_target(self, rec: _Rec) -> None:
        if rec.worker is None:
            return
        targets = self._targets.get(rec.worker)
        if targets is not None:
            targets.discard(rec.id)
            if not targets:
                del self._targets[rec.worker]

    def _clear_target(self, rec: _Rec) -> None:
        """Drop a manual assignment (callers re-index a READY task around this)."""
        if rec.state is not _RUNNING and rec.worker is not None:
            self._forget_target(rec)
            rec.worker = None

    def worker_gone(
        self, worker: str, now: float, reason: str = "worker gone without reporting"
    ) -> list[str]:
        """A worker died: its running attempt ends CRASHED (counted, so a task that kills workers
        cannot loop forever) and manual assignments to it are released. Returns affected ids."""
        out: list[str] = []
        for tid in sorted(self._running.get(worker, ())):
            att = self._recs[tid].open_attempt()
            if att is not None:
                self.finish(tid, att.n, Outcome.CRASHED, now, reason=reason)
                out.append(tid)
        for tid in sorted(self._targets.get(worker, ())):
            rec = self._recs[tid]
            ready = rec.state is _READY
            if ready:
                self._unindex(rec)
            self._clear_target(rec)
            if ready:
                self._index(rec)
            rec.updated = now
            self._change("unassign", rec)
            self._event("task.unassigned", {"task_id": tid, "worker": worker})
            out.append(tid)
        return out

    # ---- recovery and configuration ------------------------------------------------------------

    def restore(
        self,
        stored: Iterable[StoredTask],
        now: float,
        keep: Callable[[str, Attempt], bool] | None = None,
        keep_target: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Rebuild the book from the store after a restart. Attempts that were open when the process
        died end INTERRUPTED (not counted) and their tasks go back to READY; manual assignments are
        dropped (workers do not survive a restart). `keep` (a reload while Shoal runs, after a
        failed write) names open attempts a live worker still holds: they stay RUNNING. Returns the
        recovered task ids."""
        if self._recs:
            raise Conflict("restore needs an empty task book")
        rows = sorted(stored, key=lambda s: s.static.seq)
        recs: list[_Rec] = []
        for row in rows:
            rec = _Rec(row.id, row.static)
            rec.state = row.state
            rec.priority = row.priority
            rec.reason = row.reason
            rec.result = row.result
            rec.not_before = row.not_before
            rec.worker = row.worker
            rec.updated = row.updated
            rec.failed_models = dict(row.failed_models)
            rec.usage = dict(row.usage)
            rec.retry_base = row.retry_base
            rec.dep_failure = row.dep_failure
            rec.version = row.version
            rec.attempts = sorted(row.attempts, key=lambda a: a.n)
            rec.counted = sum(
                1 for a in rec.attempts if a.n > rec.retry_base and a.outcome in COUNTED_OUTCOMES
            )
            self._add(rec)
            recs.append(rec)
            self._next_seq = max(self._next_seq, rec.seq + 1)
        for rec in recs:
            self._link(rec)
            if rec.state in TERMINAL_STATES:  # its last change was its finish: the retention clock
                rec.finished = rec.updated
                self._finished.append((rec.finished, rec.seq, rec.id))
        heapq.heapify(self._finished)
        recovered: list[str] = []
        for rec in recs:
            att = rec.open_attempt()
            if keep is not None and rec.state is _RUNNING and att is not None and keep(rec.id, att):
                self._running.setdefault(att.worker, set()).add(rec.id)
                continue
            if rec.state is _RUNNING or att is not None:
                if att is not None:
                    rec.attempts[-1] = Attempt(
                        n=att.n,
                        worker=att.worker,
                        model=att.model,
                        started=att.started,
                        ended=now,
                        outcome=Outcome.INTERRUPTED,
                        reason="shoal restarted while the attempt ran",
                    )
                if rec.state is _RUNNING:
                    self._counts[rec.state] -= 1
                    rec.state = _READY
                    self._counts[rec.state] += 1
                rec.worker = None
                rec.reason = None
                rec.updated = now
                self._change("recover", rec, rec.attempts[-1] if att is not None else None)
                self._event(
                    "task.recovered",
                    {
                        "task_id": rec.id,
                        "attempt": att.n if att else None,
                        "worker": att.worker if att else None,
                    },
                )
                recovered.append(rec.id)
            elif rec.worker is not None and rec.state in (_READY, _BLOCKED, _FAILED):
                if keep_target is not None and keep_target(rec.worker):
                    self._targets.setdefault(rec.worker, set()).add(rec.id)
                    continue
                rec.worker = None
                rec.updated = now
                self._change("unassign", rec)
        for rec in recs:
            if rec.state in (_BLOCKED, _READY):
                rec.unmet = self._dep_status(rec)[0]
        for rec in recs:
            if rec.state in (_BLOCKED, _READY) and rec.bucket is None:
                unmet, doomed = self._dep_status(rec)
                if doomed is not None:
                    self._dep_dead(rec, doomed, now)
                elif unmet and rec.state is _READY:
                    self._settle_deps(rec, now, "block")
                elif not unmet and rec.state is _BLOCKED:
                    self._settle_deps(rec, now, "ready")
                elif rec.state is _READY:
                    self._index(rec)
            elif rec.state is _FAILED:
                nb = rec.not_before if rec.not_before is not None else now
                rec.not_before = nb
                heapq.heappush(self._retry_heap, (nb, rec.seq, rec.id))
        return recovered

    def absorb(self, rows: Iterable[tuple[str, StoredTask | None]], now: float) -> list[tuple[str, str]]:
        """Take other nodes' writes from a shared store's change feed: each task's stored row replaces
        its record (None: another node evicted it). The node that wrote a transition also wrote
        what it settled (a dependant made ready, killed, ...), so absorbing decides nothing and
        records no change or event; a task made ready is offered to idle workers (`drain`).
        Returns (task id, worker) for each attempt that ran here and was taken away (its node was
        thought dead, or another node cancelled it): the caller stops those workers."""
        taken: list[tuple[str, str]] = []
        fresh: list[_Rec] = []
        touched: set[str] = set()
        for tid, row in rows:
            old = self._recs.get(tid)
            needed, held, token = 0, False, 0
            if old is not None:
                att = old.open_attempt()
                if old.state is _RUNNING and att is not None:
                    new_att = row.attempts[-1] if row is not None and row.attempts else None
                    if row is None or new_att is None or new_att.n != att.n or new_att.ended is not None:
                        taken.append((tid, att.worker))
                needed, held = old.needed, old.held
                self._detach(old)
                token = old.token  # heap entries of the old record stay stale
            touched.add(tid)
            if row is None:
                continue
            rec = self._record(row)
            rec.needed, rec.held, rec.token = needed, held, token
            if old is None:  # new here: its dependants already in the book count it as needed
                rec.needed = sum(
                    1
                    for d in self._dependants.get(tid, ())
                    if (dr := self._recs.get(d)) is not None and dr.state is not TaskState.DONE
                )
            self._add(rec)
            self._link(rec)
            self._next_seq = max(self._next_seq, rec.seq + 1)
            fresh.append(rec)
        for rec in fresh:
            state = rec.state
            if state is _RUNNING:
                att = rec.open_attempt()
                if att is not None:
                    self._running.setdefault(att.worker, set()).add(rec.id)
            elif state in TERMINAL_STATES:
                rec.finished = rec.updated
                if not rec.held:
                    heapq.heappush(self._finished, (rec.finished, rec.seq, rec.id))
            else:
                if rec.worker is not None:
                    self._targets.setdefault(rec.worker, set()).add(rec.id)
                if state is _FAILED:
                    nb = rec.not_before if rec.not_before is not None else now
                    rec.not_before = nb
                    heapq.heappush(self._retry_heap, (nb, rec.seq, rec.id))
                elif state is _READY:
                    self._index(rec)
        for tid in touched:  # dependants count what is still unmet (their writer settles them)
            for did in self._dependants.get(tid, ()):
                d = self._recs.get(did)
                if d is not None and d.state is _BLOCKED:
                    d.unmet = self._dep_status(d)[0]
        for rec in fresh:
            if rec.state is _BLOCKED:
                rec.unmet = self._dep_status(rec)[0]
        return taken

    def _record(self, row: StoredTask) -> _Rec:
        """A record from a stored row (its indexes are the caller's to set)."""
        rec = _Rec(row.id, row.static)
        rec.state = row.state
        rec.priority = row.priority
        rec.reason = row.reason
        rec.result = row.result
        rec.not_before = row.not_before
        rec.worker = row.worker
        rec.updated = row.updated
        rec.failed_models = dict(row.failed_models)
        rec.usage = dict(row.usage)
        rec.retry_base = row.retry_base
        rec.dep_failure = row.dep_failure
        rec.version = row.version
        rec.attempts = sorted(row.attempts, key=lambda a: a.n)
        rec.counted = sum(1 for a in rec.attempts if a.n > rec.retry_base and a.outcome in COUNTED_OUTCOMES)
        return rec

    def _detach(self, rec: _Rec) -> None:
        """Take a record out of every index (heap entries go stale by identity and are skipped)."""
        self._unindex(rec)
        att = rec.open_attempt()
        if att is not None:
            running = self._running.get(att.worker)
            if running is not None:
                running.discard(rec.id)
                if not running:
                    del self._running[att.worker]
        if rec.state is not _RUNNING:
            self._forget_target(rec)
        del self._recs[rec.id]
        self._order.remove(rec.seq)
        self._counts[rec.state] -= 1
        for d in rec.deps:
            dependants = self._dependants.get(d)
            if dependants is not None:
                dependants.pop(rec.id, None)
                if not dependants and d not in self._recs:
                    del self._dependants[d]
        if rec.state is not TaskState.DONE:
            self._unneed(rec)
        rec.token += 1

    # ---- retention -----------------------------------------------------------------------------

    def finished_count(self) -> int:
        """Tasks in a terminal state still in the book."""
        counts = self._counts
        return sum(counts.get(s, 0) for s in TERMINAL_STATES)

    def _over_count(self) -> bool:
        keep = self.qcfg.keep_finished
        return keep > 0 and self.finished_count() > keep

    def eviction_deadline(self) -> float | None:
        """When an eviction is due next (epoch s): -inf while over `keep_finished`, else the oldest
        candidate's finish plus `keep_finished_s`; None when none will be. Only peeks (a stale
        candidate can make it early; `evict` then drops the stale entry)."""
        if not self._finished:
            return None
        if self._over_count():
            return -math.inf
        keep_s = self.qcfg.keep_finished_s
        return self._finished[0][0] + keep_s if keep_s > 0 else None

    def eviction_due(self, now: float) -> bool:
        at = self.eviction_deadline()
        return at is not None and at <= now

    def evict(self, now: float, limit: int) -> list[str]:
        """Drop finished tasks past retention, oldest finish first; returns their ids. Looks at no
        more than `4·limit` candidates and evicts at most `limit`, so the caller can spread a backlog
        over loop steps. A task still needed by a dependant is held (kept) until it is not."""
        out: list[str] = []
        heap = self._finished
        recs = self._recs
        keep_s = self.qcfg.keep_finished_s
        budget = 4 * limit
        while heap and len(out) < limit and budget > 0:
            fin, seq, tid = heap[0]
            if not self._over_count() and not (keep_s > 0 and fin + keep_s <= now):
                break  # the same test as eviction_deadline's, so "due" always makes progress
            heapq.heappop(heap)
            budget -= 1
            rec = recs.get(tid)
            if (
                rec is None
                or rec.seq != seq
                or rec.finished != fin
                or rec.held
                or rec.state not in TERMINAL_STATES
            ):
                continue  # stale: evicted, held already, retried, or finished again since
            if rec.needed:
                rec.held = True  # a dependant could still run: kept until it no longer needs it
                continue
            self._evict(rec)
            out.append(tid)
        return out

    def _evict(self, rec: _Rec) -> None:
        """Forget a finished task that nothing needs; the store deletes it with the change."""
        assert rec.state in TERMINAL_STATES and rec.bucket is None and not rec.needed, rec.id
        del self._recs[rec.id]
        self._order.remove(rec.seq)
        self._counts[rec.state] -= 1
        for d in rec.deps:
            dependants = self._dependants.get(d)
            if dependants is not None:
                dependants.pop(rec.id, None)
                if not dependants:
                    del self._dependants[d]
        if rec.state is not TaskState.DONE:  # a done task gave its dependencies up when it succeeded
            self._unneed(rec)
        self._dependants.pop(rec.id, None)  # only done dependants are left; they never look back
        self.evicted += 1
        # the store only needs the id: skip copying the record's dicts (a step makes thousands)
        self._changes.append(
            Change(
                "evict",
                rec.id,
                rec.state,
                rec.priority,
                None,
                None,
                None,
                None,
                rec.updated,
                {},
                {},
                0,
                None,
                expect=rec.version if self.stamp is not None else None,
            )
        )

    def reconfigure(self, queue: QueueConfig, models: ModelsConfig) -> None:
        """Hot configuration: re-route every ready task under the new model rules."""
        self.qcfg = queue
        self.mcfg = models
        ready = [r for r in self._recs.values() if r.state is _READY]
        for rec in ready:
            self._unindex(rec)
        for rec in ready:
            self._index(rec)

    # ---- self-check ----------------------------------------------------------------------------

    def check(self) -> None:
        """Assert the book's invariants (used by the property tests; cheap enough for debugging)."""
        counts: Counter[TaskState] = Counter()
        live: Counter[int] = Counter()
        candidates = set(self._finished)
        for tid, rec in self._recs.items():
            assert rec.id == tid
            counts[rec.state] += 1
            for i, att in enumerate(rec.attempts, 1):
                assert att.n == i, (tid, rec.attempts)
                if i < len(rec.attempts):
                    assert att.ended is not None, (tid, "open attempt before the last")
            open_att = rec.open_attempt()
            assert (rec.state is _RUNNING) == (open_att is not None), (tid, rec.state, open_att)
            if rec.state is _RUNNING:
                assert open_att is not None and rec.worker == open_att.worker
                assert tid in self._running.get(rec.worker or "", set())
            assert (rec.state is _READY) == (rec.bucket is not None), (tid, rec.state)
            if rec.bucket is not None:
                live[id(rec.bucket)] += 1
                assert (rec.bucket.worker is not None) == (rec.worker is not None)
            if rec.state is TaskState.DONE:
                done = [a for a in rec.attempts if a.outcome is Outcome.DONE]
                assert len(done) == 1 and rec.attempts[-1] is done[0], (tid, rec.attempts)
            assert rec.counted <= rec.max_attempts, (tid, rec.counted)
            counted = sum(1 for a in rec.attempts if a.n > rec.retry_base and a.outcome in COUNTED_OUTCOMES)
            assert counted == rec.counted, (tid, counted, rec.counted)
            if rec.state is TaskState.DEAD and rec.dep_failure is None:
                assert rec.counted == rec.max_attempts, (tid, rec.counted)
            if rec.state is _READY:
                unmet, doomed = self._dep_status(rec)
                assert doomed is None and unmet == 0, (tid, rec.state, unmet)
            if rec.state is _BLOCKED:
                unmet, doomed = self._dep_status(rec)
                assert doomed is None and unmet > 0 and unmet == rec.unmet, (tid, unmet, rec.unmet)
            if rec.state is _FAILED:
                assert rec.not_before is not None
            if rec.worker is not None and rec.state in (_READY, _BLOCKED):
                assert tid in self._targets.get(rec.worker, set()), tid
            if rec.state is not TaskState.DONE:  # whatever may still run resolves its deps here
                assert all(d in self._recs for d in rec.deps), (tid, rec.deps)
            deps_of = self._dependants.get(tid, {})
            needed = sum(1 for did in deps_of if self._recs[did].state is not TaskState.DONE)
            assert rec.needed == needed, (tid, rec.needed, needed)
            if rec.state in TERMINAL_STATES:
                if rec.held:
                    assert rec.needed > 0, (tid, "held but not needed")
                else:
                    assert (rec.finished, rec.seq, tid) in candidates, (tid, "not an eviction candidate")
        for state in TaskState:
            assert counts[state] == self._counts.get(state, 0), (
                state,
                counts[state],
                self._counts.get(state),
            )
        buckets = [b for per in self._cats.values() for b in per.values()] + list(self._assigned.values())
        for b in buckets:
            assert b.live == live[id(b)] and b.live > 0, (b.key, b.live, live[id(b)])
        assert sum(b.live for b in buckets) == counts[_READY]
        assert sum(self._ready_by_model.values()) == counts[_READY]
        seqs = self._order.seqs()
        assert len(self._order) == len(self._recs) == len(seqs) and seqs == sorted(seqs)
        assert self._order.ids() == sorted(self._recs, key=lambda t: self._recs[t].seq)
        for did_of in self._dependants.values():
            assert all(did in self._recs for did in did_of), "an evicted task is still a dependant"


def _failed_check(previous: Attempt) -> dict[str, Any] | None:
    """The previous attempt's worktree record when its check (workspace.verify) failed."""
    ws = previous.workspace
    check = ws.get("verify") if ws else None
    return dict(ws) if ws and isinstance(check, dict) and check.get("passed") is False else None


def check_feedback(prompt: str, record: Mapping[str, Any]) -> str:
    """The retry's prompt after a failed check: the task, then what the check said and to fix it."""
    check = record["verify"]
    code = "timed out" if check.get("timed_out") else f"exit {check.get('exit_code')}"
    tail = str(check.get("output_tail") or "").strip()
    said = f"\n\n```\n{tail}\n```" if tail else ""
    what = f"The check `{check['command']}` failed ({code})" if check.get("command") else check.get("reason")
    return (
        f"{prompt}\n\n{what} on your previous attempt, "
        f"whose changes are in this working tree.{said}\nFix it so that the check passes."
    )
