"""The QueueActor's calls from operators and clients: submit, get, list, cancel, skip, retry, boost,
assign, complete, stats, wait, barrier, retire. Each runs against the book and queues its reply for
the acker (after the write commits)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..protocols.config import structure
from ..protocols.errors import Conflict, NotFound, ValidationError
from ..protocols.tasks import TERMINAL_STATES, Outcome, TaskSpec, TaskState
from ..protocols.workers import Restart
from ..runtime.actor import ActorGone, Call
from .queue_messages import (
    AssignTask,
    Barrier,
    BoostTask,
    CancelTask,
    CompleteTask,
    GetTask,
    ListTasks,
    QueueStats,
    RetireWorker,
    RetryTask,
    SkipTask,
    Stats,
    Submit,
    WaitTask,
)
from .queue_state import QueueParts
from .taskbook import check_name

log = logging.getLogger("shoal.queue")


class CallsQueue(QueueParts):
    """A part of the QueueActor (see the module docstring); QueueActor composes it."""

    def _on_submit(self, call: Call[Any], msg: Submit, now: float) -> None:
        self._writable()
        specs: Any = msg.specs
        if isinstance(specs, TaskSpec | Mapping):
            specs = (specs,)
        if not isinstance(specs, tuple | list):
            raise ValidationError("tasks", "must be a list of task specs")
        multi = len(specs) != 1
        parsed: list[Any] = []
        for i, spec in enumerate(specs):
            if isinstance(spec, Mapping):
                spec = structure(dict(spec), TaskSpec, f"tasks[{i}]" if multi else "task")
            parsed.append(spec)
        tasks = self.book.submit(parsed, now)
        self._acks.append((call, tasks))

    def _on_get(self, call: Call[Any], msg: GetTask, now: float) -> None:
        call.reply(self.book.get(msg.id))

    def _on_list(self, call: Call[Any], msg: ListTasks, now: float) -> None:
        call.reply(self.book.list_tasks(msg.state, msg.limit, msg.cursor))

    def _interrupt(self, worker_id: str | None, task_id: str, why: str) -> None:
        worker = self._workers.get(worker_id) if worker_id is not None else None
        if worker is None:
            return
        try:
            worker.address.try_send(Restart(reason=f"task {task_id} {why}", wait=False))
        except ActorGone:
            pass

    def _on_cancel(self, call: Call[Any], msg: CancelTask, now: float) -> None:
        self._writable()
        worker = self.book.cancel(msg.id, now)
        self._interrupt(worker, msg.id, "cancelled")
        self._acks.append((call, self.book.get(msg.id)))

    def _on_skip(self, call: Call[Any], msg: SkipTask, now: float) -> None:
        self._writable()
        worker = self.book.cancel(msg.id, now, skip=True)
        self._interrupt(worker, msg.id, "skipped")
        self._acks.append((call, self.book.get(msg.id)))

    def _on_retry(self, call: Call[Any], msg: RetryTask, now: float) -> None:
        self._writable()
        self._acks.append((call, self.book.retry(msg.id, now)))

    def _on_boost(self, call: Call[Any], msg: BoostTask, now: float) -> None:
        self._writable()
        self._acks.append((call, self.book.boost(msg.id, msg.priority, now)))

    def _on_assign(self, call: Call[Any], msg: AssignTask, now: float) -> None:
        self._writable()
        check_name("worker", msg.worker, "worker id")
        self.book.get(msg.id)  # NotFound first
        if msg.worker not in self._workers and not self._elsewhere_alive(msg.worker):
            raise NotFound("worker", msg.worker)
        self._acks.append((call, self.book.assign(msg.id, msg.worker, now)))

    def _on_complete(self, call: Call[Any], msg: CompleteTask, now: float) -> None:
        self._writable()
        if msg.status not in ("done", "failed"):
            raise ValidationError("status", "must be 'done' or 'failed'", msg.status)
        for name in ("result", "reason"):
            value = getattr(msg, name)
            if value is not None and not isinstance(value, str):
                raise ValidationError(name, "must be a string or null", type(value).__name__)
        if msg.result is not None and len(msg.result.encode("utf-8", "surrogatepass")) > (
            limit := self.config.queue.max_prompt_bytes
        ):
            raise ValidationError("result", f"is over the limit of {limit} bytes (queue.max_prompt_bytes)")
        if isinstance(msg.attempt, bool) or not isinstance(msg.attempt, int):
            raise ValidationError("attempt", "must be an integer", msg.attempt)
        task = self.book.get(msg.task_id)
        if not self.book.is_current(msg.task_id, msg.attempt):
            current = self.book.open_attempt(msg.task_id)
            raise Conflict(
                f"attempt {msg.attempt} of task {msg.task_id!r} is not open (task is {task.state.value}; "
                f"open attempt: {current.n if current else 'none'})"
            )
        outcome = Outcome.DONE if msg.status == "done" else Outcome.FAILED
        self.book.finish(
            msg.task_id,
            msg.attempt,
            outcome,
            now,
            result=msg.result if outcome is Outcome.DONE else None,
            reason=msg.reason if outcome is not Outcome.DONE else None,
        )
        self._acks.append((call, self.book.get(msg.task_id)))

    def _on_stats(self, call: Call[Any], msg: QueueStats, now: float) -> None:
        call.reply(self.stats())

    def stats(self) -> Stats:
        counts = self.book.counts()
        return Stats(
            counts={s.value: n for s, n in counts.items()},
            ready_by_model=self.book.ready_by_model(),
            ready_by_category=self.book.ready_by_category(),
            total=len(self.book),
            ready=counts[TaskState.READY],
            running=counts[TaskState.RUNNING],
            blocked=counts[TaskState.BLOCKED],
            waiting_retry=counts[TaskState.FAILED],
            done=counts[TaskState.DONE],
            dead=counts[TaskState.DEAD],
            idle_workers=len(self._idle),
            known_workers=len(self._workers),
            parked_models=dict(self.book.parked),
            stale_reports=self.book.stale_reports,
            store_commits=self.store.commits,
            store_broken=str(self._broken) if self._broken is not None else None,
            evicted=self.book.evicted,
            parked_reasons={m: r for m, r in self._park_reasons.items() if m in self.book.parked},
            model_recent={m: (sum(d), len(d)) for m, d in self._model_recent.items()},
            store_failures=self.store_failures,
            store_recoveries=self.store_recoveries,
            quota={m: {w: dict(r) for w, r in windows.items()} for m, windows in self._quota.items()},
            hot_models=tuple(sorted(self.book.hot)),
            retry_storms={m: level for m, (level, _end) in self._storms.items()},
        )

    def _on_wait(self, call: Call[Any], msg: WaitTask, now: float) -> None:
        task = self.book.get(msg.id)
        if task.state in TERMINAL_STATES:
            self._acks.append((call, task))  # after the next commit: the state is durable
        else:
            self._waiters.setdefault(task.id, []).append(call)

    def _on_barrier(self, call: Call[Any], msg: Barrier, now: float) -> None:
        self._acks.append((call, None))  # released by the acker after the next commit, in order

    def _on_retire(self, call: Call[Any], msg: RetireWorker, now: float) -> None:
        wid = msg.worker_id
        if self.book.running_on(wid):
            call.reply(False)
            return
        self._idle.pop(wid, None)
        worker = self._workers.pop(wid, None)
        if worker is not None:
            worker.state = "retired"
        self.book.worker_gone(wid, now, reason="worker retired")
        self._acks.append((call, True))
