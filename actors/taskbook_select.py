"""The TaskBook's ready index, routing and worker selection.

Selection is indexed so that a pick stays cheap with 100,000 ready tasks: ready tasks live in heaps
("buckets") keyed by (category, routed model, hard pin, avoided models), ordered by priority then
submission order. A pick looks only at the top of each bucket the worker may take from, adds the
affinity bonus for the bucket's category and keeps the best (ties: oldest first). Routing decides a
ready task's bucket from the model rules, the models near the end of their quota (`hot`) and the
parked ones; a manual assignment puts the task in its worker's own bucket, which goes first.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

from ..protocols.config import ModelsConfig, QueueConfig
from ..protocols.tasks import TERMINAL_STATES, TaskState
from .taskbook_records import _READY, _RUNNING, BookState, BucketKey, WorkerView, _Rec

LANE_SKEW_S = 1.0
"""How much later than the head of its bucket a task a cluster node takes from its lane may have been
submitted (`select`): tasks of equal priority start in submission order give or take this much."""


_Entry = tuple[int, int, int, str]  # (-priority, seq, token, id)


class _Bucket:
    """Ready tasks sharing a routing key; a heap of (-priority, seq, token, id) with lazy deletion,
    and with a lane (`set_lane`) a second heap of the entries of the node's lane alone."""

    __slots__ = ("heap", "key", "live", "mine", "worker")

    def __init__(self, key: BucketKey, worker: str | None) -> None:
        self.key = key
        self.worker = worker  # manual-assignment bucket of this worker, else None
        self.heap: list[_Entry] = []
        self.mine: list[_Entry] = []
        self.live = 0


class ReadyIndex(BookState):
    """Every READY task is in exactly one bucket: `_set_state` indexes a task that becomes READY and
    unindexes one that leaves it (heap entries are dropped lazily, by token)."""

    # ---- state plumbing ----------------------------------------------------------------------------

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

    # ---- routing and the index ---------------------------------------------------------------------

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
        entry = (-rec.priority, rec.seq, rec.token, rec.id)
        heapq.heappush(bucket.heap, entry)
        if self._lane is not None and bucket.worker is None and self._lane(rec.id):
            heapq.heappush(bucket.mine, entry)
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

    def _peek(self, bucket: _Bucket, heap: list[_Entry] | None = None) -> _Rec | None:
        """The best live task of the bucket (of its lane heap, given `bucket.mine`)."""
        heap = bucket.heap if heap is None else heap
        recs = self._recs
        while heap:
            _p, seq, token, tid = heap[0]
            rec = recs.get(tid)  # entries are dropped lazily: the task may be evicted, its id reused
            if rec is not None and rec.token == token and rec.seq == seq and rec.bucket is bucket:
                return rec
            heapq.heappop(heap)
        return None

    # ---- selection ---------------------------------------------------------------------------------

    def _key_ok(self, key: BucketKey, wmodel: str | None) -> bool:
        _cat, model, hard, avoid = key
        if model is None:
            return wmodel not in avoid
        if model == wmodel:
            return True
        if hard or model not in self.parked or wmodel is None or wmodel in avoid:
            return False
        return wmodel in self.mcfg.fallback.get(model, ())

    def set_lane(self, lane: Callable[[str], bool] | None) -> None:
        """A cluster node's lane: whether a task is this node's to take first (None: no lanes).
        Every node's book holds the same ready tasks in the same order, so workers of several nodes
        turning idle at once would all pick the head, and all compare-and-sets but one would lose;
        with lanes each node takes the first task of its own lane (`select`). Kept per bucket as a
        second heap, so a pick stays O(log n) however stale the node's view of others' claims."""
        self._lane = lane
        for per_cat in self._cats.values():
            for bucket in per_cat.values():
                if lane is None:
                    bucket.mine = []
                    continue
                mine = [e for e in bucket.heap if self._live(bucket, e) and lane(e[3])]
                heapq.heapify(mine)
                bucket.mine = mine

    def _live(self, bucket: _Bucket, entry: _Entry) -> bool:
        _p, seq, token, tid = entry
        rec = self._recs.get(tid)
        return rec is not None and rec.token == token and rec.seq == seq and rec.bucket is bucket

    def select(self, worker: WorkerView) -> str | None:
        """The id of the best ready task for `worker`, or None. Does not claim it.

        With a lane (`set_lane`), the node takes the first task of its lane in the best bucket
        rather than the head, when it has the head's priority and was submitted at most LANE_SKEW_S
        after it: never before a task of higher priority, and a lane whose node is slow or busy is
        taken from by the others once its head falls that far behind."""
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
        best_bucket: _Bucket | None = None
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
                    best, best_score, best_bucket = rec, score, bucket
        if best is None:
            return None
        if self._lane is not None and best_bucket is not None and best_bucket.worker is None:
            mine = self._peek(best_bucket, best_bucket.mine)
            if (
                mine is not None
                and mine.priority == best.priority
                and mine.created - best.created <= LANE_SKEW_S
            ):
                return mine.id
        return best.id

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

    # ---- manual assignments ------------------------------------------------------------------------

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

    # ---- models: parking, quota, configuration -----------------------------------------------------

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

    def reconfigure(self, queue: QueueConfig, models: ModelsConfig) -> None:
        """Hot configuration: re-route every ready task under the new model rules."""
        self.qcfg = queue
        self.mcfg = models
        ready = [r for r in self._recs.values() if r.state is _READY]
        for rec in ready:
            self._unindex(rec)
        for rec in ready:
            self._index(rec)
