"""The QueueActor: the only writer of task state, the durable store's only client, and dispatch.

Every message is handled synchronously against the in-memory `TaskBook`; the changes it produced go
to the store as one write per burst of messages (the store adds group commit across bursts). Replies
to mutating calls, `WaitTask` replies and bus events are released by a second task, the *acker*, only
once the write holding them has committed: a submitted task is on disk before its submitter hears
back, and every event describes durable state.

Dispatch happens the moment a worker becomes available or a task becomes ready: the best pair is
claimed in the book (task RUNNING, attempt opened, change queued) and *then* `Assign` goes to the
worker with `try_send`; if the worker is unreachable the claim is undone (attempt INTERRUPTED, not
counted) and the worker leaves the idle set. Retry backoffs and rate-limit parking are timers on the
trio clock (the actor's receive deadline), never polling.

Times recorded in tasks are epoch seconds derived from the trio clock (`offset + current_time()`), so
tests driven by `autojump_clock` see backoffs elapse, and production sees wall-clock timestamps.

The actor is composed of parts in their own modules: its messages (queue_messages.py), its calls
(queue_calls.py), its models' parks and quotas (queue_models.py) and its cluster side (queue_cluster.py);
this module is the loop, the store plumbing, dispatch and the workers' sends (about 700 lines, a tenth
of them the re-exported message names its importers use as `queue.Submit`).

Retention (`queue.keep_finished_s`, `queue.keep_finished`): at most once per `EVICT_TICK_S`, and only
when something is due, the actor asks the book to evict up to `queue.evict_batch` finished tasks; the
deletions ride in the same group commit as the burst's other changes. A larger backlog (after a
restart, or a lowered limit) continues step by step, each after a checkpoint that lets every other
task run and with the mailbox served in between, so it never stalls the loop; and a step waits until
the previous one's deletions are committed (the acker wakes the actor), so the store's queue never
fills with deletions that a submit would have to wait behind.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import trio

from ..protocols.config import BackoffConfig, SwarmConfig
from ..protocols.errors import NotFound, ShoalError, StoreError, ValidationError
from ..protocols.tasks import TERMINAL_STATES, Assignment, Outcome
from ..protocols.text import check_text, find_bad_text, wire_safe
from ..protocols.workers import Assign, TaskFinished, WorkerCommand
from ..runtime.actor import ActorGone, Address, Call, Mailbox
from ..runtime.backoff import backoff_delay
from ..runtime.eventbus import EventBus
from .cluster import Landed, NodesReport
from .queue_calls import CallsQueue
from .queue_cluster import ClusterQueue, _fenced, _Pending
from .queue_messages import (
    AssignTask,
    AttemptEnded,
    Barrier,
    BoostTask,
    CancelTask,
    CompleteTask,
    GetTask,
    ListTasks,
    ModelExtraUsage,
    ModelQuota,
    ModelRateLimited,
    ModelRetrying,
    PauseModel,
    QueueMsg,
    QueueRequest,
    QueueSend,
    QueueStats,
    ResumeModel,
    RetireWorker,
    RetryTask,
    SkipTask,
    Stats,
    Submit,
    UpdateConfig,
    WaitTask,
    WorkerAvailable,
    WorkerUnavailable,
    _EvictionCommitted,
    _Feed,
    _Landed,
    _Resync,
)
from .queue_models import ModelQueue
from .store import Ticket, WriteRefused
from .taskbook import COUNTED_OUTCOMES, TERMINAL_TOPICS, TaskBook, WorkerView, check_name
from .taskstore import SharedTaskStore, TaskStore

log = logging.getLogger("shoal.queue")

MODEL_RECENT = 10  # finished attempts remembered per model (its recent failure rate, for status)
MAX_BURST = 256  # messages handled before the changes are handed to the store
EVICT_TICK_S = 1.0  # retention steps at most this often, unless a backlog is being worked off
# after a failed write, the store is probed at these delays until a probe write commits
STORE_RETRY = BackoffConfig(min_s=1.0, max_s=60.0, factor=2.0, jitter=0.1, reset_after_s=0.0)


class _Worker:
    __slots__ = ("address", "id", "state", "view")

    def __init__(self, view: WorkerView, address: Address[WorkerCommand]) -> None:
        self.id = view.id
        self.view = view
        self.address = address
        self.state = "idle"  # idle | busy | paused | retired


class QueueActor(CallsQueue, ModelQueue, ClusterQueue):
    """Owns the task book, the store writes and the idle-worker set. See the module docstring."""

    def __init__(
        self,
        config: SwarmConfig,
        store: TaskStore,
        bus: EventBus,
        *,
        rng: random.Random | None = None,
        mailbox_size: int = 1024,
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.shared = bool(getattr(store, "shared", False))  # a cluster: see docs/architecture.md
        self.cluster: SharedTaskStore | None = cast(SharedTaskStore, store) if self.shared else None
        self.node_id: str | None = self.cluster.node_id if self.cluster is not None else None
        self.book = self._new_book(rng)
        self.address: Address[QueueMsg] | None = None
        self._mailbox_size = mailbox_size
        self._workers: dict[str, _Worker] = {}
        self._idle: dict[str, _Worker] = {}  # insertion order = longest idle first
        self._waiters: dict[str, list[Call[Any]]] = {}
        self._acks: list[tuple[Call[Any], Any]] = []
        self._extra_events: list[tuple[str, dict[str, Any]]] = []
        self._ack_send, self._ack_recv = trio.open_memory_channel[_Pending](math.inf)
        self._claims: list[tuple[str, Assignment]] = []  # shared store: claims awaiting their commit
        self._unheard: dict[str, str] = {}  # shared store: worker -> the task it claimed, not yet told
        self._deferred: dict[str, float] = {}  # shared store: task -> until when another node has it first
        self.nodes: NodesReport | None = None  # the cluster as the last heartbeat saw it
        self._lane_nodes: tuple[str, ...] = ()  # shared store: the live nodes with workers (lanes)
        self.conflicts = 0  # writes another node's write beat (shared store)
        self.reaped = 0  # attempts of dead nodes' workers requeued here
        self._remote_idle: dict[str, WorkerView] = {}  # shared store: other nodes' idle workers (booking)
        self.booked = 0  # tasks this node claimed for another node's idle worker in its own write
        self.bookings_taken = 0  # another node's bookings of a worker here, delivered
        self.bookings_declined = 0  # ... and handed back (the worker was not idle any more)
        self._remote_parks: set[str] = set()  # models parked here because another node parked them
        self._offset = 0.0
        self._broken: StoreError | None = None
        self.store_retry = STORE_RETRY  # probe delays after a failed write (tests shorten them)
        self.store_failures = 0
        self.store_recoveries = 0
        self._resync: _Resync | None = None
        self._nursery: trio.Nursery | None = None
        self._last_evict = -math.inf  # epoch s of the last retention step
        self._evict_more = False  # the last step stopped at its bound with more due
        self._evict_ticket: Ticket | None = None  # the write holding the last step's deletions
        self.unknown_messages = 0
        self.stale_announcements = 0  # WorkerAvailable from a worker holding a claim
        self._park_reasons: dict[str, str] = {}  # model -> the message of the limit that parked it
        self._model_recent: dict[str, collections.deque[bool]] = {}  # model -> recent outcomes (failed?)
        self._retries: dict[str, collections.deque[tuple[float, str]]] = {}  # model -> (at, worker)
        self._storms: dict[str, tuple[int, float]] = {}  # model -> (level, when its last park ends)
        self._quota: dict[str, dict[str, dict[str, Any]]] = {}  # model -> window -> latest report
        self._calls: dict[type, Callable[[Call[Any], Any, float], None]] = {
            Submit: self._on_submit,
            GetTask: self._on_get,
            ListTasks: self._on_list,
            CancelTask: self._on_cancel,
            SkipTask: self._on_skip,
            RetryTask: self._on_retry,
            BoostTask: self._on_boost,
            AssignTask: self._on_assign,
            CompleteTask: self._on_complete,
            QueueStats: self._on_stats,
            WaitTask: self._on_wait,
            RetireWorker: self._on_retire,
            Barrier: self._on_barrier,
            PauseModel: self._on_pause_model,
            ResumeModel: self._on_resume_model,
        }
        self._sends: dict[type, Callable[[Any, float], None]] = {
            WorkerAvailable: self._on_available,
            WorkerUnavailable: self._on_unavailable,
            AttemptEnded: self._on_attempt_ended,
            ModelRateLimited: self._on_rate_limited,
            ModelRetrying: self._on_retrying,
            ModelQuota: self._on_quota,
            ModelExtraUsage: self._on_extra_usage,
            UpdateConfig: self._on_config,
            _EvictionCommitted: self._on_eviction_committed,
            _Resync: self._on_resync,
            _Feed: self._on_feed,
            _Landed: self._on_landed,
        }

    # ---- lifecycle -------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._offset + trio.current_time()

    def _new_book(self, rng: random.Random | None) -> TaskBook:
        if not self.shared:
            return TaskBook(self.config.queue, self.config.models, rng=rng)
        store: Any = self.store
        return TaskBook(
            self.config.queue, self.config.models, rng=rng, stamp=store.stamp, seq_source=store.next_seq
        )

    async def run(
        self, *, task_status: trio.TaskStatus[Address[QueueMsg]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Recover from the store, then serve. `task_status.started(address)` once recovered."""
        self._offset = time.time() - trio.current_time()
        stored = await self.store.load_all()
        keep = (lambda _tid, att: self._elsewhere(att.worker)) if self.shared else None
        recovered = self.book.restore(stored, self._now(), keep=keep, keep_target=self._elsewhere)
        if recovered:
            log.info("recovered %d interrupted task(s)", len(recovered))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._acker)
            async with Mailbox[QueueMsg]("queue", self._mailbox_size) as mailbox:
                if self.shared:
                    nursery.start_soon(self._feed_pump, mailbox.address)
                self.address = mailbox.address
                self._flush()
                task_status.started(mailbox.address)
                await self._serve(mailbox)
            nursery.cancel_scope.cancel()

    async def _serve(self, mailbox: Mailbox[QueueMsg]) -> None:
        while True:
            deadline = self._wake_at()
            msg: Any = None
            got = False
            try:
                if deadline == math.inf:  # no timer pending: skip the cancel scope (hot path)
                    msg = await mailbox.receive()
                    got = True
                elif deadline <= trio.current_time():  # due now: let others run, take what waits
                    await trio.lowlevel.checkpoint()
                    try:
                        msg = mailbox.receive_nowait()
                        got = True
                    except trio.WouldBlock:
                        pass
                else:
                    with trio.move_on_at(deadline):
                        msg = await mailbox.receive()
                        got = True
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            if got:
                self._handle(msg)
                for _ in range(MAX_BURST):
                    if self._resync is not None:  # reload before anything else is answered
                        break
                    try:
                        msg = mailbox.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    self._handle(msg)
            self._timers(self._now())
            self._flush()
            if self._resync is not None:
                await self._reload()

    async def _acker(self) -> None:
        """Release events and replies once the write holding them has committed (in order)."""
        async for ticket, events, acks, claims, changes in self._ack_recv:
            try:
                if ticket.done():
                    value = ticket.result()  # committed with an earlier one: no need to yield again
                else:
                    value = await ticket.wait()
            except StoreError as exc:
                for call, _value in acks:
                    call.fail(exc)
                if claims:  # the workers were never told: they are idle again once the book reloads
                    self._ask(_Landed({}, [], [], []))
                if isinstance(exc, WriteRefused):  # one bad value: the store goes on
                    log.error("queue: a write was refused; reloading the task book: %s", exc)
                    self._ask(_Resync(f"a write was refused: {exc}"))
                else:
                    self._store_failed(exc)
                continue
            if isinstance(value, Landed) and value.conflicts:
                events, acks, landed = _fenced(value.conflicts, events, acks, changes)
                self._ask(attrs.evolve(landed, claims=claims))
            elif claims:
                self._ask(_Landed({}, claims, [], []))
            for topic, data in events:
                self.bus.publish(topic, data)
            for call, value in acks:
                call.reply(value)
            if ticket is self._evict_ticket:
                self._wake_for_eviction()

    def _wake_for_eviction(self) -> None:
        """The actor holds retention while a step's deletions are in flight: tell it they landed
        (a full mailbox means it is awake anyway and will look again)."""
        if self.address is None or self.book.eviction_deadline() is None:
            return
        with contextlib.suppress(ActorGone):
            self.address.try_send(_EvictionCommitted())

    def _ask(self, msg: Any) -> None:
        """Send a message to the actor itself (a full mailbox: the actor is awake anyway; retry
        from a task so the message is not lost)."""
        if self.address is None:
            return
        try:
            if self.address.try_send(msg):
                return
        except ActorGone:
            return
        if self._nursery is not None:
            self._nursery.start_soon(self._send_later, msg)

    async def _send_later(self, msg: Any) -> None:
        assert self.address is not None
        with contextlib.suppress(ActorGone):
            await self.address.send(msg)

    def _store_failed(self, exc: StoreError) -> None:
        """The store stopped taking writes: refuse changes, and probe it with backoff until a
        write commits again (then the book is reloaded from it: see `_reload`)."""
        if self._broken is not None:
            return
        self._broken = exc
        self.store_failures += 1
        first = backoff_delay(self.store_retry, 0)
        log.error("task store failed; the queue is read-only until a probe write commits: %s", exc)
        self.bus.publish("queue.store_failed", {"error": str(exc), "retry_in_s": first})
        self._ask(_Resync(f"a write failed: {exc}"))  # drop what did not reach the disk
        if self._nursery is not None:
            self._nursery.start_soon(self._probe_store)

    async def _probe_store(self) -> None:
        """Probe the store at backoff delays until a write commits; then ask for the reload."""
        n = 0
        while True:
            await trio.sleep(backoff_delay(self.store_retry, n, self.book.rng.random()))
            try:
                await self.store.probe()
            except StoreError as exc:
                n += 1
                log.warning("task store still failing (probe %d): %s", n, exc)
                continue
            break
        self._ask(_Resync("the store takes writes again", recovered=True))

    def _on_resync(self, msg: _Resync, now: float) -> None:
        if self._resync is None or msg.recovered:  # a recovery is never folded into a plain reload
            self._resync = msg

    async def _reload(self) -> None:
        """Rebuild the book from the store, so that nothing whose write failed stays in memory.

        Everything the old book still had to write goes to the store first (in order, before the
        load), so the reload loses nothing that could be stored. Attempts a live worker still
        holds stay RUNNING; other attempts the store has open end INTERRUPTED and run again
        (at-least-once, as after a restart). Waiters of tasks that are gone fail with NotFound."""
        msg, self._resync = self._resync, None
        assert msg is not None
        self._flush()
        try:
            stored = await self.store.load_all()
        except StoreError as exc:
            log.error("queue: cannot reload the task book from the store: %s", exc)
            return
        old = self.book
        live = {
            (tid, att.worker, att.n)
            for wid in self._workers
            for tid in old.running_on(wid)
            if (att := old.open_attempt(tid)) is not None
        }
        book = self._new_book(old.rng)
        book.parked = dict(old.parked)
        book.stale_reports = old.stale_reports
        book.evicted = old.evicted
        book.set_lane(self._lane())
        now = self._now()
        recovered = book.restore(
            stored,
            now,
            keep=lambda tid, att: (tid, att.worker, att.n) in live or self._elsewhere(att.worker),
            keep_target=self._elsewhere,
        )
        dropped = len(old) - len(book)
        self.book = book
        self._evict_ticket = None
        self._evict_more = False
        for tid, calls in list(self._waiters.items()):
            if tid not in book:
                del self._waiters[tid]
                for call in calls:
                    call.fail(NotFound("task", tid))
            elif (task := book.get(tid)).state in TERMINAL_STATES:
                del self._waiters[tid]
                self._acks.extend((call, task) for call in calls)
        detail = {"reason": msg.reason, "tasks": len(book), "dropped": dropped, "recovered": len(recovered)}
        if msg.recovered:
            self._broken = None
            self.store_recoveries += 1
            log.warning("task store takes writes again; task book reloaded (%s)", detail)
            self._extra_events.append(("queue.store_recovered", detail))
            if self.store.broken is not None:  # it failed again since the probe: start over
                self._store_failed(self.store.broken)
        else:
            self._extra_events.append(("queue.reloaded", detail))
        self._rematch_idle(now)
        self._flush()

    # ---- the loop's plumbing ---------------------------------------------------------------------

    def _handle(self, msg: Any) -> None:
        now = self._now()
        if isinstance(msg, Call):
            call: Call[Any] = msg
            handler = self._calls.get(type(call.payload))
            if handler is None:
                self.unknown_messages += 1
                call.fail(ValidationError("request", "unknown queue request", type(call.payload).__name__))
                return
            try:
                _check_call_text(call.payload)
                handler(call, call.payload, now)
            except ShoalError as exc:
                call.fail(exc)
            return
        send = self._sends.get(type(msg))
        if send is None:
            self.unknown_messages += 1
            log.warning("queue ignored an unknown message %r", type(msg).__name__)
            return
        try:
            if isinstance(msg, AttemptEnded):
                msg = _safe_report(msg)
            send(msg, now)
        except ShoalError as exc:
            log.warning("queue ignored a bad %s: %s", type(msg).__name__, exc)

    def _flush(self) -> None:
        """Match newly ready tasks, then hand this burst's changes to the store with the replies
        and events that must wait for them."""
        changes, events, ready = self.book.drain()
        while ready:
            if self._broken is None:
                if self._idle:
                    self._match_tasks(ready, self._now())
                if self._remote_idle:
                    self._book_remote(ready, self._now())
            more_changes, more_events, ready = self.book.drain()
            changes.extend(more_changes)
            events.extend(more_events)
        if self._extra_events:
            events.extend(self._extra_events)
            self._extra_events = []
        for topic, data in events:
            if topic in _TERMINAL_TOPIC_SET:
                waiters = self._waiters.get(data["task_id"])
                if waiters:
                    task = self.book.get(data["task_id"])
                    if task.state in TERMINAL_STATES:  # not retried again within this burst
                        del self._waiters[task.id]
                        self._acks.extend((w, task) for w in waiters)
        evicted = self._evict(self._now())  # after the waiters took their snapshots
        if evicted is not None:
            more_changes, more_events, _ready = self.book.drain()
            changes.extend(more_changes)
            events.extend(more_events)
            events.append(evicted)
        if not changes and not events and not self._acks:
            return
        if not changes and not events and self._broken is None and self.store.broken is None:
            # replies alone (a stats call, a worker event's Barrier): nothing to commit, so no
            # round trip to the store's thread; the acker still releases them after every
            # write before them
            ticket = Ticket.settled()
        elif self.cluster is not None and self.bus.relay is not None:
            # the events commit with the changes and come back to the bus through the feed
            ticket = self.cluster.write(changes, events)
            self.bus.published_elsewhere(len(events))
            events = []
        else:
            ticket = self.store.write(changes)
        if evicted is not None:
            self._evict_ticket = ticket
        claims, self._claims = self._claims, []
        self._ack_send.send_nowait((ticket, events, self._acks, claims, changes if self.shared else []))
        self._acks = []

    def _wake_at(self) -> float:
        """The trio time of the next timer: a retry backoff, a parking end, or a retention step."""
        nxt = self.book.next_deadline()
        evict = self._evict_at()
        if evict is not None:
            nxt = evict if nxt is None else min(nxt, evict)
        cool = self._hot_ends()
        if cool is not None:
            nxt = cool if nxt is None else min(nxt, cool)
        if self._deferred:
            soonest = min(self._deferred.values())
            nxt = soonest if nxt is None else min(nxt, soonest)
        return math.inf if nxt is None else nxt - self._offset

    def _evict_at(self) -> float | None:
        """When the next retention step should run (epoch s), or None."""
        if self._broken is not None:
            return None  # read-only: nothing may be deleted either
        if self._evict_ticket is not None and not self._evict_ticket.done():
            return None  # the last step's deletions are in flight; the acker wakes us
        if self._evict_more:
            return -math.inf
        due = self.book.eviction_deadline()
        return None if due is None else max(due, self._last_evict + EVICT_TICK_S)

    def _evict(self, now: float) -> tuple[str, dict[str, Any]] | None:
        """One bounded retention step if one is due; returns its summary event."""
        at = self._evict_at()
        if at is None or at > now:
            return None
        ids = self.book.evict(now, self.config.queue.evict_batch)
        self._last_evict = now
        self._evict_more = self.book.eviction_due(now)
        if not ids:
            return None
        return (
            "queue.evicted",
            {"count": len(ids), "kept": self.book.finished_count(), "more": self._evict_more},
        )

    def _timers(self, now: float) -> None:
        self.book.release_due(now)
        unparked = self.book.unpark_due(now)
        if unparked:
            self._rematch_idle(now)
        if self.book.hot:
            self._update_hot(now)  # a quota window may have reset: its figure no longer holds
        if self._deferred:
            self._deferral_due(now)

    def _writable(self) -> None:
        if self._broken is None and self.store.broken is not None:
            self._store_failed(self.store.broken)
        if self._broken is not None:
            raise self._broken

    # ---- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, worker: _Worker, task_id: str, now: float) -> bool:
        """Claim `task_id` for `worker`, then tell the worker. Undo the claim if it is unreachable."""
        assignment = self.book.claim(task_id, worker.id, worker.view.model, now)
        self._idle.pop(worker.id, None)
        if self.shared:  # another node may claim it too: the worker hears once the claim committed
            worker.state = "busy"
            self._claims.append((worker.id, assignment))
            self._unheard[worker.id] = task_id
            return True
        return self._deliver(worker, assignment, now)

    def _deliver(self, worker: _Worker, assignment: Assignment, now: float) -> bool:
        """Send a claimed task to its worker; undo the claim if the worker is unreachable."""
        task_id = assignment.task_id
        try:
            delivered = worker.address.try_send(Assign(assignment))
            gone = False
        except ActorGone:
            delivered, gone = False, True
        if delivered:
            worker.state = "busy"
            return True
        self.book.finish(task_id, assignment.attempt, Outcome.INTERRUPTED, now, reason="worker unreachable")
        if gone:
            self._workers.pop(worker.id, None)
            self.book.worker_gone(worker.id, now)
        else:
            worker.state = "paused"  # its mailbox is full: it is not really idle
        self._extra_events.append(
            ("queue.worker_unreachable", {"worker": worker.id, "task_id": task_id, "gone": gone})
        )
        return False

    def _match_worker(self, worker: _Worker, now: float) -> None:
        """An idle worker: give it its best task, or keep it in the idle set."""
        if self._broken is not None:
            self._idle[worker.id] = worker
            return
        task_id = self.book.select(worker.view)
        if task_id is None:
            self._idle[worker.id] = worker
            return
        self._dispatch(worker, task_id, now)

    def _match_tasks(self, task_ids: list[str], now: float) -> None:
        """Newly ready tasks: offer each to the idle worker with the most affinity for it (ties:
        longest idle); that worker then takes its own best pick. Keys already known to have no
        taker in this pass are skipped, so a big batch costs O(tasks + keys × idle workers)."""
        no_taker: set[Any] = set()
        for tid in task_ids:
            if not self._idle:
                return
            key = self.book.bucket_key(tid)
            if key is None or key in no_taker or self._left_elsewhere(tid, now):
                continue
            category = key[1][0]
            best: _Worker | None = None
            best_aff = -1
            for worker in self._idle.values():
                if not self.book.can_take(worker.view, tid):
                    continue
                aff = worker.view.affinity.get(category, 0) if category is not None else 0
                if aff > best_aff:
                    best, best_aff = worker, aff
            if best is None:
                no_taker.add(key)
                continue
            pick = self.book.select(best.view)
            if pick is not None and pick != tid and self._left_elsewhere(pick, now):
                pick = tid  # its own best is left to another node for now: this one is not
            if pick is not None:
                self._dispatch(best, pick, now)

    def _rematch_idle(self, now: float) -> None:
        for worker in list(self._idle.values()):
            if worker.id in self._idle:
                del self._idle[worker.id]
                self._match_worker(worker, now)

    # ---- sends -----------------------------------------------------------------------------------

    def _on_available(self, msg: WorkerAvailable, now: float) -> None:
        wid = check_name("worker_id", msg.worker_id, "worker id")
        if msg.model is not None and not isinstance(msg.model, str):
            raise ValidationError("model", "must be a model name or null", msg.model)
        if not isinstance(msg.address, Address):
            raise ValidationError(
                "address", "must be the worker's mailbox address", type(msg.address).__name__
            )
        caps: Any = msg.capabilities
        if caps is not None:
            if not isinstance(caps, set | frozenset | list | tuple) or not all(
                isinstance(c, str) for c in caps
            ):
                raise ValidationError("capabilities", "must be a set of category names or null", caps)
            caps = frozenset(caps)
        history = msg.history or ()
        if not isinstance(history, list | tuple):
            raise ValidationError("history", "must be a list of categories", history)
        size = self.config.queue.history_size
        recent = tuple(c for c in history[-size:] if isinstance(c, str))
        worker = self._workers.get(wid)
        if worker is not None and (worker.view.model, worker.view.capabilities, worker.view.history) == (
            msg.model,
            caps,
            recent,
        ):
            view = worker.view  # unchanged: skip rebuilding the affinity counts
        else:
            view = WorkerView(wid, msg.model, caps, recent, size)
        if worker is None:
            worker = self._workers[wid] = _Worker(view, msg.address)
        else:
            worker.view = view
            worker.address = msg.address
        self._idle.pop(wid, None)
        if self.book.running_on(wid):
            # Announced before it read the Assign we sent: it still holds that claim and will
            # report on it (a worker that is not idle answers an Assign with an interrupted
            # attempt), so it is not idle; a worker that dies instead is WorkerUnavailable(gone).
            worker.state = "busy"
            self.stale_announcements += 1
            return
        worker.state = "idle"
        self._match_worker(worker, now)

    def _on_unavailable(self, msg: WorkerUnavailable, now: float) -> None:
        wid = msg.worker_id
        self._idle.pop(wid, None)
        if msg.gone:
            self._workers.pop(wid, None)
            self.book.worker_gone(wid, now)
        else:
            worker = self._workers.get(wid)
            if worker is not None:
                worker.state = "paused"

    def _on_attempt_ended(self, msg: AttemptEnded, now: float) -> None:
        r = msg.report
        if not isinstance(r, TaskFinished):
            raise ValidationError("report", "must be a TaskFinished report", type(r).__name__)
        try:
            Outcome(r.outcome)
        except ValueError:
            raise ValidationError("report.outcome", "is not an outcome", r.outcome) from None
        att = self.book.open_attempt(r.task_id) if r.task_id in self.book else None
        ok = self.book.finish(
            r.task_id,
            r.attempt,
            r.outcome,
            now,
            result=r.result,
            reason=r.reason,
            exit_code=r.exit_code,
            signal=r.signal,
            output_tail=r.output_tail,
            usage=r.usage,
            workspace=r.workspace,
        )
        if not ok:
            self._extra_events.append(
                ("task.stale_report", {"task_id": r.task_id, "attempt": r.attempt, "worker": r.worker})
            )
            return
        model = r.model or (att.model if att is not None else None)
        if r.outcome is Outcome.RATE_LIMITED:
            if model is not None:
                self._park(model, r.reset_at, now, r.reason)
        elif model is not None and (r.outcome is Outcome.DONE or r.outcome in COUNTED_OUTCOMES):
            recent = self._model_recent.get(model)
            if recent is None:
                recent = self._model_recent[model] = collections.deque(maxlen=MODEL_RECENT)
            recent.append(r.outcome is not Outcome.DONE)

    def _on_eviction_committed(self, msg: _EvictionCommitted, now: float) -> None:
        pass  # waking up was the point: the loop looks at the retention timer again

    def _on_config(self, msg: UpdateConfig, now: float) -> None:
        if not isinstance(msg.config, SwarmConfig):
            raise ValidationError("config", "must be a SwarmConfig", type(msg.config).__name__)
        self.config = msg.config
        self.book.reconfigure(msg.config.queue, msg.config.models)
        self._update_hot(now)  # limits.prefer_fallback_at may have changed
        self._rematch_idle(now)


def _check_call_text(payload: Any) -> None:
    """Refuse a request holding a string that cannot be encoded as UTF-8 before the book sees it
    (the SwarmHandle and the gateway check first; this keeps direct users of the queue from
    putting such a string in the book, where its write would fail)."""
    if isinstance(payload, Submit):
        specs: Any = payload.specs
        if isinstance(specs, tuple | list):
            for i, spec in enumerate(specs):
                check_text(spec, f"tasks[{i}]" if len(specs) != 1 else "task")
            return
    check_text(payload, "")


def _safe_report(msg: AttemptEnded) -> AttemptEnded:
    """A worker's report with text that cannot be encoded as UTF-8 is kept, with the bad characters
    escaped (`\\udcff`): refusing it would leave the attempt open."""
    r = msg.report
    if not isinstance(r, TaskFinished) or find_bad_text(r) is None:
        return msg
    fixed: dict[str, Any] = {
        name: wire_safe(value)
        for name in ("result", "reason", "output_tail", "model", "worker", "task_id")
        if isinstance(value := getattr(r, name), str)
    }
    log.warning(
        "queue: the report on task %r held text that is not valid UTF-8 (escaped)", fixed.get("task_id")
    )
    return AttemptEnded(attrs.evolve(r, **fixed))


ConfigChanged = UpdateConfig  # older name
_TERMINAL_TOPIC_SET = frozenset(TERMINAL_TOPICS.values())

# the messages are the queue's interface: importers use `queue.Submit` etc.
__all__ = [
    "AssignTask",
    "AttemptEnded",
    "Barrier",
    "BoostTask",
    "CancelTask",
    "CompleteTask",
    "GetTask",
    "ListTasks",
    "ModelExtraUsage",
    "ModelQuota",
    "ModelRateLimited",
    "ModelRetrying",
    "PauseModel",
    "QueueActor",
    "QueueMsg",
    "QueueRequest",
    "QueueSend",
    "QueueStats",
    "ResumeModel",
    "RetireWorker",
    "RetryTask",
    "SkipTask",
    "Stats",
    "Submit",
    "UpdateConfig",
    "WaitTask",
    "WorkerAvailable",
    "WorkerUnavailable",
]
