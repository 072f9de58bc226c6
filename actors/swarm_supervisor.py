"""The SwarmSupervisor: a dynamic one_for_one supervisor of workers, with backoff and a circuit breaker.

Each worker belongs to a *lineage*: the slot a spawn creates. When a worker crashes, its lineage
respawns it after an Akka-style backoff (reset after stable uptime); a lineage that exceeds its own
restart intensity is retired, and refilling its slot counts against the swarm-wide budget. The
*circuit breaker* halts the swarm on consecutive spawn failures or a crash rate over a window: no more
spawns, live workers finish their task and pause (or stop, per config), every queued task stays
queued, and `swarm.halted` carries the reason and the evidence. `resume()` (or a half-open canary
after a cool-down) closes it again. Rate limits are not crashes and never count.

The supervisor is the only owner of worker records. Workers report into one channel; the report pump
forwards each report, in order, to the QueueActor (which owns every task transition, so a crash can
never orphan a task) and publishes it on the event bus.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..protocols.config import ProfileConfig, SwarmConfig
from ..protocols.errors import Conflict, NotFound, ShoalError
from ..protocols.profiles import resolve_profile
from ..protocols.workers import (
    AnsweredReport,
    ApiRetryReport,
    ContextReport,
    ExtraUsageReport,
    NeedsInputReport,
    NoticeReport,
    Pause,
    QuotaUpdate,
    RateLimitReport,
    Restart,
    Resume,
    SetCapabilities,
    SetModel,
    StateChanged,
    Stop,
    TaskFinished,
    WorkerCommand,
    WorkerInfo,
    WorkerReport,
    WorkerState,
)
from ..runtime.actor import ActorGone, Address, CallTimeout
from ..runtime.backoff import BackoffState, RestartIntensity
from ..runtime.eventbus import EventBus
from .auth import resolve_state_dir
from .capacity import ProcessView
from .queue import (
    AttemptEnded,
    Barrier,
    ModelExtraUsage,
    ModelQuota,
    ModelRateLimited,
    ModelRetrying,
    QueueMsg,
    QueueSend,
    RetireWorker,
    WorkerAvailable,
    WorkerUnavailable,
)
from .scaler import WorkerView
from .worker import WorkerActor, WorkerExit, start_up_slots
from .workspace import SharedDirectory, Workspace

WorkspaceFactory = Callable[[str, ProfileConfig, str], Workspace]
"""(profile name, profile, worker id) -> the worker's Workspace (actors/workspace.py)."""


def shared_directory(profile_name: str, profile: ProfileConfig, worker_id: str) -> Workspace:
    """Today's workspace: every worker of the profile in `profile.cwd`."""
    return SharedDirectory(profile.cwd)


_ALIVE = frozenset(
    {WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.REFRESHING, WorkerState.PAUSED}
)


@attrs.frozen
class _WorkerGone:
    """Internal report: the worker's `run` returned (sent through the report channel to keep order)."""

    worker: str
    exit: WorkerExit


@attrs.define(eq=False)
class _Lineage:
    id: str
    model: str | None
    capabilities: frozenset[str] | None
    backoff: BackoffState
    intensity: RestartIntensity
    canary: bool = False
    retired: bool = False  # no more respawns (scale-down, kill, budget exhausted, halt with on_halt=stop)
    restarts: int = 0
    crashes: int = 0


@attrs.define(eq=False)
class _Worker:
    id: str
    lineage: _Lineage
    actor: WorkerActor
    model: str | None
    capabilities: frozenset[str] | None
    address: Address[WorkerCommand] | None = None
    state: WorkerState = WorkerState.STARTING
    idle_since: float | None = None  # trio clock
    task_id: str | None = None
    paused_by_halt: bool = False
    paused_by_operator: bool = False
    # a command for a worker whose mailbox is not open yet (still spawning): delivered at once when
    # it opens, so a Stop sent during the spawn is never lost
    pending_stop: Stop | None = None
    start_scope: trio.CancelScope | None = None  # the spawn itself; cancelled by stop_all


@attrs.frozen
class CrashEvidence:
    worker: str
    lineage: str
    at: float  # epoch
    reason: str | None
    exit_code: int | None
    signal: int | None


_STARTUP_EXIT = re.compile(r"exited during start-up \((?P<how>[^)]*)\)(?:: (?P<words>.*))?\Z", re.DOTALL)


def crash_summary(crashes: Sequence[CrashEvidence]) -> str | None:
    """A halt reason that names the cause when every crash in the window is the same one.

    Why: "crash rate" alone sends the operator to the logs; when every worker dies at start the
    same way (no network, a bad API key), the agent's own words are the diagnosis. None when the
    crashes differ (the breaker then says "crash rate").
    """
    reasons = {c.reason or "" for c in crashes}
    if len(reasons) != 1 or not crashes:
        return None
    reason = reasons.pop()
    m = _STARTUP_EXIT.match(reason)
    if m is None:
        if reason.startswith("start-up timeout"):
            return f"every worker fails to start: {reason}"
        return f"every worker crashes the same way: {reason}" if reason else None
    how = m["how"]
    code = how.removeprefix("exit code ")
    verb = f"exits {code}" if code != how else f"is {how}"  # "is killed by SIGKILL"
    words = m["words"]
    return f"every worker {verb} at start" + (f": {words}" if words else "")


class SwarmSupervisor:
    """Owns every worker and lineage; the only place that spawns, restarts or retires workers."""

    def __init__(
        self,
        config_getter: Callable[[], SwarmConfig],
        bus: EventBus,
        queue: Address[QueueMsg],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        workspaces: WorkspaceFactory = shared_directory,
        worker_prefix: str = "",
    ) -> None:
        self._config = config_getter
        self._worker_prefix = worker_prefix  # `<node>:` in a cluster, so worker ids are unique in it
        self._workspaces = workspaces
        self._bus = bus
        self._queue = queue
        self._clock = clock
        self._rng = rng or random.Random()
        self._workers: dict[str, _Worker] = {}
        # lineages with no live worker right now (starting, or waiting out a restart backoff): they
        # are capacity the scaler must count, or it would spawn around the backoff (a respawn storm)
        self._between: dict[str, _Lineage] = {}
        self._ended: deque[WorkerInfo] = deque(maxlen=50)  # recently ended workers, for listings
        self._ids = itertools.count(1)
        self._lineage_ids = itertools.count(1)
        self._reports_send, self._reports_recv = trio.open_memory_channel[WorkerReport | _WorkerGone](4096)
        # events derived from worker reports, published once the queue has committed (and published)
        # what it received before them: see _publisher
        # (topic, data, a message for the queue once the event is out, or None)
        self._ordered_send, self._ordered_recv = trio.open_memory_channel[
            tuple[str, dict[str, Any], QueueSend | None]
        ](math.inf)
        self._nursery: trio.Nursery | None = None
        # breaker state
        self.state = "running"  # running | halted | stopping
        self.halt_reason: str | None = None
        self.halt_evidence: dict[str, Any] = {}
        self.halted_at: float | None = None
        self.trips = 0
        self._consecutive_spawn_failures = 0
        self._crashes: deque[CrashEvidence] = deque(maxlen=1000)
        self._resumed = trio.Event()
        self._swarm_intensity = self._new_swarm_intensity()
        self._deficit = 0  # lineages retired for exhausting their budget, not yet refilled
        self._canary_scope: trio.CancelScope | None = None
        # one agent initialising per spare core: a burst of spawns must not starve the loop
        self._spawn_limiter = trio.CapacityLimiter(start_up_slots())
        self.total_crashes = 0
        self.total_spawns = 0
        self.total_restarts = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SwarmSupervisor] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._pump)
            nursery.start_soon(self._publisher)
            task_status.started(self)
            await trio.sleep_forever()

    @property
    def halted(self) -> bool:
        return self.state == "halted"

    def _new_swarm_intensity(self) -> RestartIntensity:
        sup = self._config().supervision
        return RestartIntensity(sup.swarm_max_restarts, sup.swarm_period_s)

    # ---- spawning -------------------------------------------------------------------------------

    async def spawn(self, model: str | None, reason: str, *, canary: bool = False) -> str | None:
        """Start a new lineage; returns its id, or None when the swarm is halted or over budget."""
        if self._nursery is None:
            raise Conflict("the supervisor is not running")
        if (self.halted and not canary) or self.state == "stopping":
            return None
        config = self._config()
        if self._deficit > 0:  # refilling the slot of a lineage retired for its restart budget
            self._deficit -= 1
            if self._swarm_intensity.record(trio.current_time()):
                await self.halt(
                    "swarm restart budget exhausted",
                    {
                        "swarm_max_restarts": config.supervision.swarm_max_restarts,
                        "swarm_period_s": config.supervision.swarm_period_s,
                    },
                )
                return None
        lineage = _Lineage(
            id=f"L{next(self._lineage_ids)}",
            model=model,
            capabilities=None,
            backoff=BackoffState(config.supervision.backoff, rng=self._rng),
            intensity=RestartIntensity(
                config.supervision.lineage_max_restarts, config.supervision.lineage_period_s
            ),
            canary=canary,
        )
        self._bus.publish("worker.spawning", {"lineage": lineage.id, "model": model, "reason": reason})
        self._between[lineage.id] = lineage
        self._nursery.start_soon(self._lineage_main, lineage)
        return lineage.id

    async def _lineage_main(self, lineage: _Lineage) -> None:
        try:
            await self._lineage_loop(lineage)
        finally:
            self._between.pop(lineage.id, None)

    async def _lineage_loop(self, lineage: _Lineage) -> None:
        while True:
            worker_exit = await self._run_one(lineage)
            if worker_exit is None or lineage.retired or self.state == "stopping":
                return
            self._between[lineage.id] = lineage
            now = trio.current_time()
            if lineage.intensity.record(now):
                lineage.retired = True
                self._deficit += 1
                self._bus.publish(
                    "worker.lineage_retired",
                    {
                        "lineage": lineage.id,
                        "restarts": lineage.restarts,
                        "reason": "restart budget exhausted",
                    },
                )
                return
            if self._swarm_intensity.record(now):
                await self.halt(
                    "swarm restart budget exhausted",
                    {"restarts_in_period": self._swarm_intensity.count(now)},
                )
            delay = lineage.backoff.next_delay(now)
            self._bus.publish(
                "worker.restarting",
                {"lineage": lineage.id, "delay_s": round(delay, 3), "restarts": lineage.restarts + 1},
            )
            await trio.sleep(delay)
            while self.halted and not lineage.canary:
                await self._resumed.wait()
            if lineage.retired or self.state == "stopping":
                return
            lineage.restarts += 1
            self.total_restarts += 1

    async def _run_one(self, lineage: _Lineage) -> WorkerExit | None:
        """Run one worker of `lineage` to its end; None means it ended on purpose (no respawn)."""
        if lineage.retired or self.state == "stopping":
            return None  # stopped between `spawn` and here: start nothing
        config = self._config()
        profile_name = config.workers.profile
        profile = resolve_profile(profile_name, config.workers.profiles)
        worker_id = f"{self._worker_prefix}w{next(self._ids)}"
        actor = WorkerActor(
            worker_id,
            lineage.id,
            profile_name,
            profile,
            lineage.model,
            lineage.capabilities,
            self._reports_send.clone(),
            config.workers,
            history_size=config.queue.history_size,
            spawn_limiter=self._spawn_limiter,
            state_dir=resolve_state_dir(config.state_dir),  # Claude profiles' prepared configuration
            workspace=self._workspaces(profile_name, profile, worker_id),
        )
        worker = _Worker(worker_id, lineage, actor, lineage.model, lineage.capabilities)
        self._workers[worker_id] = worker
        self._between.pop(lineage.id, None)
        self.total_spawns += 1
        result: list[WorkerExit] = []

        async def main(task_status: trio.TaskStatus[Address[WorkerCommand]]) -> None:
            result.append(await actor.run(task_status=task_status))

        spawn_error: ShoalError | None = None
        async with trio.open_nursery() as nursery:
            try:
                # stop_all cancels a spawn still in progress (e.g. one waiting for a start-up slot):
                # the worker holds no task yet, so nothing is lost, and its process is reaped
                with trio.CancelScope() as worker.start_scope:
                    worker.address = await nursery.start(main)
            except ShoalError as exc:  # SpawnError, or a bad argv template/dialect option
                spawn_error = exc
            worker.start_scope = None
            if worker.address is not None:
                lineage.backoff.started(trio.current_time())
                self._bus.publish(
                    "worker.spawned",
                    {
                        "worker": worker_id,
                        "lineage": lineage.id,
                        "model": lineage.model,
                        "profile": profile_name,
                    },
                )
                if worker.pending_stop is not None:  # stop_all ran while it was spawning
                    await self._command(worker, worker.pending_stop)
            elif spawn_error is None:
                result.append(WorkerExit(crashed=False, reason="swarm stopping (while starting)"))
        if spawn_error is not None:
            result.append(WorkerExit(crashed=True, reason=str(spawn_error), exit_code=None, signal=None))
            worker.state = WorkerState.CRASHED
            await self._spawn_failed(worker, str(spawn_error))
        exit_ = result[0] if result else WorkerExit(crashed=True, reason="worker ended without a result")
        await self._reports_send.send(_WorkerGone(worker_id, exit_))
        if not exit_.crashed:
            return None
        return exit_

    async def _spawn_failed(self, worker: _Worker, reason: str) -> None:
        self._consecutive_spawn_failures += 1
        limit = self._config().supervision.breaker.consecutive_spawn_failures
        self._bus.publish(
            "worker.spawn_failed",
            {
                "worker": worker.id,
                "lineage": worker.lineage.id,
                "reason": reason,
                "consecutive": self._consecutive_spawn_failures,
            },
        )
        if self._consecutive_spawn_failures >= limit and not self.halted:
            await self.halt(
                f"consecutive spawn failures: {reason}",
                {"consecutive_spawn_failures": self._consecutive_spawn_failures, "last_error": reason},
            )

    # ---- the report pump ---------------------------------------------------------------------------

    async def _pump(self) -> None:
        recv = self._reports_recv
        while True:
            try:  # take buffered reports without a scheduler round trip each
                report = recv.receive_nowait()
            except trio.WouldBlock:
                try:
                    report = await recv.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            try:
                await self._handle(report)
            except ActorGone:
                return  # the queue is gone: the swarm is shutting down

    def _publish_ordered(self, topic: str, data: dict[str, Any], then: QueueSend | None = None) -> None:
        """Publish a worker event after the queue's events that came before it.

        Why: the queue publishes `task.running`/`task.done` only after their group commit, while a
        worker reacts at once (it gets its Assign before the claim is committed), so a directly
        published `worker.context` or `worker.state refreshing` could carry an earlier sequence
        number than the task event that caused it. Every event derived from a worker report goes
        through one FIFO; `_publisher` releases it behind a queue `Barrier`. `then` goes to the queue
        right after the event is out, so what the queue concludes from it (`model.retry_storm`) is
        published after its cause.
        """
        self._ordered_send.send_nowait((topic, data, then))

    async def _publisher(self) -> None:
        """Release ordered events in batches, each after one Barrier round trip to the queue."""
        recv = self._ordered_recv
        async for first in recv:
            batch = [first]
            while True:
                try:
                    batch.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:  # the queue's events for everything sent to it before now are published first
                await self._queue.call(Barrier())
            except (ActorGone, ShoalError, CallTimeout):
                pass  # the queue is gone or its store is broken: publish anyway, late beats lost
            for topic, data, then in batch:
                self._bus.publish(topic, data)
                if then is not None:  # what the queue makes of it (a retry storm) follows the event
                    try:
                        await self._to_queue(then)
                    except ActorGone:
                        pass

    async def _to_queue(self, message: QueueSend) -> None:
        """Forward in order; wait for mailbox space only when it is full (no checkpoint otherwise)."""
        if not self._queue.try_send(message):
            await self._queue.send(message)

    async def _handle(self, report: WorkerReport | _WorkerGone) -> None:
        match report:
            case StateChanged():
                await self._on_state(report)
            case TaskFinished():
                worker = self._workers.get(report.worker)
                if worker is not None:
                    worker.task_id = None
                await self._to_queue(AttemptEnded(report))
            case ContextReport():
                self._publish_ordered(
                    "worker.context", {"worker": report.worker, "used_percent": report.used_percent}
                )
            case RateLimitReport():
                self._publish_ordered(
                    "worker.rate_limited",
                    {
                        "worker": report.worker,
                        "model": report.model,
                        "reset_at": report.reset_at,
                        "message": report.message,
                    },
                )
                if report.model is not None:
                    await self._to_queue(ModelRateLimited(report.model, report.reset_at))
            case NeedsInputReport():
                self._publish_ordered(
                    "worker.needs_input",
                    {
                        "worker": report.worker,
                        "task_id": report.task_id,
                        "prompt": report.prompt,
                        "options": list(report.options),
                        "kind": report.kind,
                        "why": report.why,
                    },
                )
            case AnsweredReport():
                self._publish_ordered(
                    "worker.answered",
                    {
                        "worker": report.worker,
                        "task_id": report.task_id,
                        "question": report.question,
                        "choice": report.choice,
                        "label": report.label,
                        "by": report.by,
                        "kind": report.kind,
                    },
                )
            case NoticeReport():
                self._publish_ordered(
                    "worker.notice",
                    {
                        "worker": report.worker,
                        "profile": report.profile,
                        "model": report.model,
                        "text": report.text,
                    },
                )
            case ApiRetryReport():
                self._publish_ordered(
                    "worker.api_retry",
                    {
                        "worker": report.worker,
                        "model": report.model,
                        "task_id": report.task_id,
                        "attempt": report.attempt,
                        "max_retries": report.max_retries,
                        "delay_s": report.delay_s,
                        "status": report.status,
                        "error": report.error,
                    },
                    then=(
                        ModelRetrying(report.model, report.worker, report.error, report.task_id)
                        if report.model
                        else None
                    ),
                )
            case QuotaUpdate():
                # the queue keeps it (routing acts on it) and publishes model.quota
                await self._to_queue(
                    ModelQuota(
                        report.model,
                        report.status,
                        report.window,
                        report.resets_at,
                        report.utilization,
                        report.overage,
                        report.worker,
                    )
                )
            case ExtraUsageReport():
                # the queue applies limits.on_extra_usage and publishes model.extra_usage
                await self._to_queue(
                    ModelExtraUsage(report.model, report.message, report.worker, report.task_id)
                )
            case _WorkerGone():
                await self._on_gone(report)

    async def _on_state(self, report: StateChanged) -> None:
        worker = self._workers.get(report.worker)
        if worker is None:
            return
        worker.state = report.state
        if report.model is not None:
            worker.model = report.model
        self._publish_ordered(
            "worker.state",
            {
                "worker": worker.id,
                "lineage": worker.lineage.id,
                "state": report.state.value,
                "reason": report.reason,
                "model": worker.model,
                "pid": report.pid,
                "exit_code": report.exit_code,
                "signal": report.signal,
            },
        )
        if report.state is WorkerState.IDLE:
            worker.idle_since = trio.current_time()
            self._consecutive_spawn_failures = 0
            if self.state == "stopping":
                return  # never announced: a worker that comes up while the swarm stops takes nothing
            if worker.lineage.canary and self.halted:
                worker.lineage.canary = False
                await self.resume(reason="canary worker is healthy")
            if self.halted and not worker.lineage.canary:
                await self._pause_for_halt(worker)
                return
            await self._announce(worker)
        else:
            worker.idle_since = None
            if report.state is WorkerState.BUSY:
                info = worker.actor.info()
                worker.task_id = info.task_id
            if report.state in (WorkerState.PAUSED, WorkerState.STOPPING, WorkerState.REFRESHING):
                await self._to_queue(WorkerUnavailable(worker.id, gone=False))
        if report.state is WorkerState.CRASHED:
            self._record_crash(worker, report)

    async def _announce(self, worker: _Worker) -> None:
        if worker.address is None:
            return
        info = worker.actor.info()
        await self._to_queue(
            WorkerAvailable(worker.id, worker.model, worker.capabilities, info.history, worker.address)
        )

    def _record_crash(self, worker: _Worker, report: StateChanged) -> None:
        worker.lineage.crashes += 1
        self.total_crashes += 1
        evidence = CrashEvidence(
            worker.id, worker.lineage.id, self._clock(), report.reason, report.exit_code, report.signal
        )
        self._crashes.append(evidence)
        self._publish_ordered(
            "worker.crashed",
            {
                "worker": worker.id,
                "lineage": worker.lineage.id,
                "reason": report.reason,
                "exit_code": report.exit_code,
                "signal": report.signal,
                "model": worker.model,
            },
        )
        breaker = self._config().supervision.breaker
        now = self._clock()
        recent = [c for c in self._crashes if now - c.at <= breaker.crash_window_s]
        if len(recent) >= breaker.crash_rate_max and not self.halted and self._nursery is not None:
            self._nursery.start_soon(
                self.halt,
                crash_summary(recent) or "crash rate",
                {
                    "crashes": [attrs.asdict(c) for c in recent[-20:]],
                    "count": len(recent),
                    "window_s": breaker.crash_window_s,
                },
            )

    async def _on_gone(self, gone: _WorkerGone) -> None:
        worker = self._workers.pop(gone.worker, None)
        await self._to_queue(WorkerUnavailable(gone.worker, gone=True))
        if worker is None:
            return
        info = worker.actor.info()
        self._ended.append(
            attrs.evolve(
                info,
                state=WorkerState.CRASHED if gone.exit.crashed else WorkerState.STOPPED,
                reason=gone.exit.reason,
            )
        )
        self._publish_ordered(
            "worker.exited",
            {
                "worker": worker.id,
                "lineage": worker.lineage.id,
                "crashed": gone.exit.crashed,
                "reason": gone.exit.reason,
                "exit_code": gone.exit.exit_code,
                "signal": gone.exit.signal,
            },
        )

    # ---- circuit breaker ------------------------------------------------------------------------

    async def halt(self, reason: str, evidence: dict[str, Any] | None = None) -> None:
        """Open the breaker: stop spawning, park live workers, keep every task queued."""
        if self.halted:
            return
        self.state = "halted"
        self.trips += 1
        self.halt_reason = reason
        self.halt_evidence = evidence or {}
        self.halted_at = self._clock()
        self._resumed = trio.Event()
        self._bus.publish(
            "swarm.halted", {"reason": reason, "evidence": self.halt_evidence, "trips": self.trips}
        )
        on_halt = self._config().supervision.breaker.on_halt
        for worker in list(self._workers.values()):
            if worker.state not in _ALIVE or worker.lineage.canary:
                continue
            if on_halt == "stop":
                worker.lineage.retired = True
                await self._command(worker, Stop(reason=f"swarm halted: {reason}"))
            else:
                await self._pause_for_halt(worker)
        canary_after = self._config().supervision.breaker.canary_after_s
        if canary_after is not None and self._nursery is not None:
            self._nursery.start_soon(self._canary_loop, canary_after)

    async def _pause_for_halt(self, worker: _Worker) -> None:
        if worker.paused_by_halt:
            return
        worker.paused_by_halt = True
        await self._queue.send(WorkerUnavailable(worker.id, gone=False))
        await self._command(worker, Pause())

    async def resume(self, reason: str = "resumed by operator") -> None:
        """Close the breaker: counters reset, workers paused by the halt take tasks again."""
        if self._canary_scope is not None:
            self._canary_scope.cancel()
        if not self.halted:
            return
        self.state = "running"
        self._consecutive_spawn_failures = 0
        self._crashes.clear()
        self._swarm_intensity = self._new_swarm_intensity()
        self._deficit = 0
        self.halt_reason = None
        self.halt_evidence = {}
        self.halted_at = None
        self._resumed.set()
        self._bus.publish("swarm.resumed", {"reason": reason})
        for worker in list(self._workers.values()):
            if worker.paused_by_halt:
                worker.paused_by_halt = False
                if not worker.paused_by_operator:
                    await self._command(worker, Resume())

    async def _canary_loop(self, cool_down: float) -> None:
        """Half-open: after each cool-down while halted, try one canary worker."""
        with trio.CancelScope() as scope:
            self._canary_scope = scope
            while True:
                await trio.sleep(cool_down)
                if not self.halted:
                    break
                if any(w.lineage.canary for w in self._workers.values()):
                    continue
                self._bus.publish("swarm.canary", {"cool_down_s": cool_down})
                await self.spawn(self._config().models.default, "half-open canary", canary=True)
        self._canary_scope = None

    def breaker_status(self) -> dict[str, Any]:
        breaker = self._config().supervision.breaker
        now = self._clock()
        return {
            "state": "open" if self.halted else "closed",
            "trips": self.trips,
            "consecutive_spawn_failures": self._consecutive_spawn_failures,
            "crashes_in_window": sum(1 for c in self._crashes if now - c.at <= breaker.crash_window_s),
            "crash_window_s": breaker.crash_window_s,
        }

    # ---- scale-down and shutdown -------------------------------------------------------------------

    async def retire(self, worker_id: str, reason: str) -> bool:
        """Stop an idle worker for good; False when it just took a task (the queue decides, atomically)."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.state is not WorkerState.IDLE:
            return False
        if not await self._queue.call(RetireWorker(worker_id)):
            return False
        worker.lineage.retired = True
        self._bus.publish("worker.retiring", {"worker": worker_id, "reason": reason})
        await self._command(worker, Stop(reason=reason))
        return True

    async def stop_all(self, drain: bool) -> None:
        """Stop every worker (after their current task when `drain`) and spawn nothing more.

        Whatever state a worker is in: one still spawning (no mailbox yet) has its spawn cancelled
        and, should it open its mailbox anyway, gets the Stop at once; lineages between two workers
        (spawn requested, or waiting out a restart backoff) start nothing more. The queue is told
        first that no worker takes tasks, so nothing is dispatched while the workers stop.
        """
        self.state = "stopping"
        self._resumed.set()
        for lineage in self._between.values():
            lineage.retired = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.lineage.retired = True
            await self._to_queue(WorkerUnavailable(worker.id, gone=False))
        for worker in workers:
            stop = Stop(reason="swarm stopping", drain=drain)
            if worker.address is None:
                worker.pending_stop = stop
                if worker.start_scope is not None:
                    worker.start_scope.cancel()
            else:
                await self._command(worker, stop)

    def start_again(self) -> None:
        if self.state == "stopping":
            self.state = "running"

    def live_count(self) -> int:
        return len(self._workers)

    # ---- operator controls ------------------------------------------------------------------------

    def _get(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise NotFound("worker", worker_id)
        return worker

    async def _command(self, worker: _Worker, command: WorkerCommand) -> None:
        if worker.address is None:
            return
        try:
            await worker.address.send(command)
        except ActorGone:
            pass  # it just ended; its _WorkerGone report is on the way

    async def pause(self, worker_id: str) -> None:
        worker = self._get(worker_id)
        worker.paused_by_operator = True
        await self._queue.send(WorkerUnavailable(worker.id, gone=False))
        await self._command(worker, Pause())

    async def resume_worker(self, worker_id: str) -> None:
        worker = self._get(worker_id)
        worker.paused_by_operator = False
        if self.halted:
            raise Conflict(f"the swarm is halted ({self.halt_reason}); resume the swarm first")
        await self._command(worker, Resume())

    async def restart(self, worker_id: str) -> None:
        await self._command(self._get(worker_id), Restart(reason="restart requested by operator"))

    async def kill(self, worker_id: str) -> None:
        worker = self._get(worker_id)
        worker.lineage.retired = True
        await self._command(worker, Stop(reason="killed by operator", drain=False))

    async def set_model(self, worker_id: str, model: str) -> None:
        config = self._config()
        if model not in config.models.known:
            from ..protocols.errors import ValidationError

            raise ValidationError("model", f"unknown model; known: {list(config.models.known)}", model)
        worker = self._get(worker_id)
        worker.lineage.model = model
        await self._command(worker, SetModel(model))

    async def set_capabilities(self, worker_id: str, capabilities: Sequence[str] | None) -> None:
        worker = self._get(worker_id)
        caps = None if capabilities is None else frozenset(capabilities)
        worker.capabilities = caps
        worker.lineage.capabilities = caps
        await self._command(worker, SetCapabilities(caps))
        if worker.state is WorkerState.IDLE and not self.halted:
            await self._announce(worker)

    def address_of(self, worker_id: str) -> Address[WorkerCommand]:
        worker = self._get(worker_id)
        if worker.address is None:
            raise Conflict(f"worker {worker_id} is still starting")
        return worker.address

    def actor_of(self, worker_id: str) -> WorkerActor:
        return self._get(worker_id).actor

    # ---- views ----------------------------------------------------------------------------------

    def infos(self, include_ended: bool = False) -> list[WorkerInfo]:
        out = [w.actor.info() for w in self._workers.values()]
        if include_ended:
            out.extend(self._ended)
        return out

    def info(self, worker_id: str) -> WorkerInfo:
        worker = self._workers.get(worker_id)
        if worker is not None:
            return worker.actor.info()
        for info in self._ended:
            if info.id == worker_id:
                return info
        raise NotFound("worker", worker_id)

    def views(self) -> list[WorkerView]:
        """What the scaler sees: one row per live worker."""
        return [
            WorkerView(
                id=w.id,
                model=w.model,
                state=w.state,
                idle_since=w.idle_since,
                task_id=w.task_id,
                capabilities=w.capabilities,
            )
            for w in self._workers.values()
        ] + [
            WorkerView(lineage.id, lineage.model, WorkerState.STARTING, capabilities=lineage.capabilities)
            for lineage in self._between.values()
            if not lineage.retired
        ]

    def processes(self) -> list[ProcessView]:
        """Each live worker's process (id, profile, pid, state): what the capacity meter samples."""
        return [
            ProcessView(w.id, w.actor.profile_name, w.actor.pid, w.state)
            for w in self._workers.values()
            if w.state is not WorkerState.STOPPED
        ]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self._workers.values():
            out[w.state.value] = out.get(w.state.value, 0) + 1
        return out
