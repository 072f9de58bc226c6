"""The queue's state machine and task selection, as pure data structures (no I/O, no trio).

`TaskBook` owns every task record in memory. Each operation takes the current time explicitly,
validates before it mutates (a refused operation changes nothing), and records what happened as
`Change` objects (for the durable store) and `(topic, data)` events (for the bus); the QueueActor
drains both with `drain()`. This keeps the rules testable with plain calls and lets the same book be
rebuilt from the store after a crash (`restore`).

The book is one object built by concern, a module each: a chain of classes over one shared state
(BookState; ReadyIndex; DagBook; then SubmittingBook, RetainingBook and ReloadingBook side by side).
- actors/taskbook_records.py: the value types (`StaticRow`, `Change`, `StoredTask`, `WorkerView`),
  the task record, the submission-order index, and `BookState`: the shared state and its outputs;
- actors/taskbook_select.py: the ready index, routing and worker selection (`ReadyIndex`);
- actors/taskbook_dag.py: dependencies deciding blocked, ready or dead, and their cascades (`DagBook`);
- actors/taskbook_submit.py: validation and the atomic submit (`SubmittingBook`);
- actors/taskbook_retention.py: eviction of finished tasks (`RetainingBook`);
- actors/taskbook_reload.py: `restore` and `absorb`, the book rebuilt from a store (`ReloadingBook`);
- here, `TaskBook`: queries, claims and outcomes, operator controls and the invariants' self-check.
Layers over one state rather than separate objects, because the concerns share every index and the
book is on the queue's hot path: one claim or finish touches the record, the ready index, the graph
and the retention heap together, and as one object each step reads its own attributes and calls its
own methods, exactly as before the split (no indirection, no figure of benchmarks/bench_queue.py
moved). Import from this module: it re-exports what the queue and the stores use.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..protocols.errors import Conflict, ValidationError
from ..protocols.tasks import (
    FAILED_DEP_STATES,
    TERMINAL_STATES,
    Assignment,
    Attempt,
    Continuation,
    Outcome,
    Task,
    TaskState,
)
from .taskbook_continue import continuation, continues
from .taskbook_records import (
    _BLOCKED,
    _FAILED,
    _READY,
    _RUNNING,
    COUNTED_OUTCOMES,
    MAX_ATTEMPTS_LIMIT,
    MAX_ID_CHARS,
    MAX_PRIORITY,
    OUTPUT_TAIL_CHARS,
    TERMINAL_TOPICS,
    BucketKey,
    Change,
    Event,
    StaticRow,
    StoredTask,
    WorkerView,
    _check_int,
    _Rec,
    backoff_delay,
    check_name,
    check_priority,
)
from .taskbook_reload import ReloadingBook
from .taskbook_retention import RetainingBook
from .taskbook_submit import SubmittingBook

__all__ = [
    "COUNTED_OUTCOMES",
    "MAX_ATTEMPTS_LIMIT",
    "MAX_ID_CHARS",
    "MAX_PRIORITY",
    "OUTPUT_TAIL_CHARS",
    "TERMINAL_TOPICS",
    "BucketKey",
    "Change",
    "Event",
    "StaticRow",
    "StoredTask",
    "TaskBook",
    "WorkerView",
    "backoff_delay",
    "check_feedback",
    "check_name",
    "check_priority",
]


class TaskBook(SubmittingBook, RetainingBook, ReloadingBook):
    """Every task, its state machine, the ready index and worker selection. Not thread-safe; one
    owner (the QueueActor). Times are epoch seconds supplied by the caller."""

    # ---- queries -----------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        return self._snap(self._rec(task_id))

    def state_of(self, task_id: str) -> TaskState:
        return self._rec(task_id).state

    def ids(self) -> list[str]:
        return self._order.ids()

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

    # ---- claims and outcomes -----------------------------------------------------------------------

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
        return self._assignment(rec, att)

    def assignment(self, task_id: str) -> Assignment:
        """What the worker of the task's open attempt is sent: in a cluster another node may have
        claimed the task for a worker here (`QueueActor`, booking)."""
        rec = self._rec(task_id)
        att = rec.open_attempt()
        if att is None:
            raise Conflict(f"task {task_id!r} has no open attempt")
        return self._assignment(rec, att)

    def version_of(self, task_id: str) -> int:
        """The shared store's row version the task's record stands on (0 on a node's own store)."""
        return self._rec(task_id).version

    def _assignment(self, rec: _Rec, att: Attempt) -> Assignment:
        failed_check = _failed_check(rec.attempts[-2]) if len(rec.attempts) > 1 else None
        return Assignment(
            task_id=rec.id,
            attempt=att.n,
            prompt=rec.prompt if failed_check is None else check_feedback(rec.prompt, failed_check),
            category=rec.category,
            model=att.model,
            timeout_s=rec.timeout_s,
            metadata=rec.metadata,
            dep_heads=self._dep_heads(rec),
            after_failed_check=failed_check,
            continuation=self._continuation(rec),
        )

    def _continuation(self, rec: _Rec) -> Continuation | None:
        """The dependency conversation the task continues, as its attempt should resume it."""
        dep_id = continues(rec.metadata)
        if dep_id is None:
            return None
        dep = self._recs.get(dep_id)
        return continuation(
            dep_id, dep.state if dep is not None else None, dep.attempts if dep else [], rec.attempts
        )

    def _dep_heads(self, rec: _Rec) -> tuple[tuple[str, str], ...]:
        """Each finished dependency's last commit in a worktree (docs/workspaces.md), in deps order.
        A dependency in another repository (`metadata.workspace.repo`) only orders the tasks."""
        heads: list[tuple[str, str]] = []
        for d in rec.deps:
            dep = self._recs.get(d)
            done = dep.attempts[-1] if dep is not None and dep.attempts else None
            head = (done.workspace or {}).get("head") if done is not None else None
            if dep is None or dep.state is not TaskState.DONE or not isinstance(head, str):
                continue
            if _named_repo(dep.metadata) == _named_repo(rec.metadata):
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

    # ---- operator controls -------------------------------------------------------------------------

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

    # ---- self-check --------------------------------------------------------------------------------

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


def _named_repo(metadata: Mapping[str, Any]) -> Any:
    """The repository a task names (`metadata.workspace.repo`, resolved at submit); None: its profile's."""
    own = metadata.get("workspace") if isinstance(metadata, Mapping) else None
    return own.get("repo") if isinstance(own, Mapping) else None
