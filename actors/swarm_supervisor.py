"""The SwarmSupervisor: a dynamic one_for_one supervisor of workers, with backoff and a circuit breaker.

Each worker belongs to a *lineage*: the slot a spawn creates. When a worker crashes, its lineage
respawns it after an Akka-style backoff (reset after stable uptime); a lineage that exceeds its own
restart intensity is retired, and refilling its slot counts against the swarm-wide budget. The
*circuit breaker* halts the swarm on consecutive spawn failures or a crash rate over a window: no more
spawns, live workers finish their task and pause (or stop, per config), every queued task stays
queued, and `swarm.halted` carries the reason and the evidence. `Resume` (or a half-open canary
after a cool-down) closes it again. Rate limits are not crashes and never count.

It is an actor, in the style of the QueueActor: one task owns every worker record, lineage and the
breaker, and serves one bounded mailbox (actors/swarm_messages.py): calls from the handle, the
scaler and the gateway (`Spawn`, `Retire`, `Halt`, `Resume`, `StopAll`, the per-worker controls,
`Attach`), the workers' reports (each worker sends them straight into this mailbox, in order), and
what its own children report: a worker's task says `WorkerStarted` and `WorkerGone`, a backoff timer
`RestartDue`, the half-open timer `CanaryTick`. Handlers run synchronously against the state; what
they send (to the queue, to workers, events ordered behind the queue's) goes into an outbox flushed
in order after the message (actors/swarm_outbox.py), so a halt and a resume are serialised by the
mailbox and never interleave. The only wait inside a handler is `Retire`'s round trip to the queue
(which never calls back), before it changes anything. A worker whose mailbox is full gets its
command from a helper task rather than blocking the supervisor: the worker may itself be waiting
for room in this mailbox.

Reads stay synchronous and cheap: `roster()` is a snapshot (`Roster`) the actor drops after each
message it handles and builds again on the next read, from its state between two messages (never a
half-made change: no handler waits in the middle of one). The handle's listings (`workers()`,
`worker()`, `logs()`, status, the scaler's inputs) read it; converting each into an awaited call
would make the embedding API (`swarm.workers()` is synchronous) and every status read wait behind a
mailbox full of reports.
A `WorkerEntry` there reads a worker (info, output tail) but cannot change it; attaching to its output
is an `Attach` call, answered with the tail and a bounded channel.

Workers' events are forwarded, in order, to the QueueActor (which owns every task transition, so a
crash can never orphan a task) and published on the event bus behind the queue's events.

Its size (~750 lines): lineages, the breaker and the operator controls change one state and call
each other (a crash may halt, a canary resumes, a resume restarts held lineages); its messages and
records are in actors/swarm_messages.py, its I/O in actors/swarm_outbox.py.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..protocols import workers as commands
from ..protocols.config import ProfileConfig, SwarmConfig
from ..protocols.errors import Conflict, NotFound, ShoalError, ValidationError
from ..protocols.profiles import resolve_profile
from ..protocols.workers import (
    Pause,
    Restart,
    SetCapabilities,
    SetModel,
    StateChanged,
    Stop,
    TaskFinished,
    WorkerCommand,
    WorkerInfo,
    WorkerState,
)
from ..runtime.actor import Address, Call, Mailbox
from ..runtime.backoff import BackoffState, RestartIntensity
from ..runtime.eventbus import EventBus
from .auth import resolve_state_dir
from .queue import (
    AttemptEnded,
    QueueMsg,
    RetireWorker,
    WorkerAvailable,
    WorkerUnavailable,
)
from .scaler import WorkerView
from .swarm_messages import (
    ALIVE,
    Attach,
    BreakerStatus,
    CanaryTick,
    CrashEvidence,
    Detach,
    Halt,
    KillWorker,
    Lineage,
    PauseWorker,
    RestartDue,
    RestartWorker,
    Resume,
    ResumeWorker,
    Retire,
    Roster,
    SetWorkerCapabilities,
    SetWorkerModel,
    Spawn,
    StartAgain,
    StopAll,
    SupervisorMsg,
    SupervisorStatus,
    WorkerEntry,
    WorkerGone,
    WorkerRecord,
    WorkerStarted,
    crash_summary,
    forward,
)
from .swarm_outbox import SupervisorIO
from .worker import WorkerActor, WorkerExit, start_up_slots
from .workspace import SharedDirectory, Workspace

__all__ = ["CrashEvidence", "SwarmSupervisor", "WorkspaceFactory", "crash_summary", "shared_directory"]

WorkspaceFactory = Callable[[str, ProfileConfig, str], Workspace]
"""(profile name, profile, worker id) -> the worker's Workspace (actors/workspace.py)."""

MAILBOX_SIZE = 4096  # the workers' reports arrive here too


def shared_directory(profile_name: str, profile: ProfileConfig, worker_id: str) -> Workspace:
    """Today's workspace: every worker of the profile in `profile.cwd`."""
    return SharedDirectory(profile.cwd)


class SwarmSupervisor(SupervisorIO):
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
        mailbox_size: int = MAILBOX_SIZE,
    ) -> None:
        super().__init__(bus, queue)
        self._config = config_getter
        self._worker_prefix = worker_prefix  # `<node>:` in a cluster, so worker ids are unique in it
        self._workspaces = workspaces
        self._clock = clock
        self._rng = rng or random.Random()
        self._mailbox_size = mailbox_size
        self._workers: dict[str, WorkerRecord] = {}
        self._lineages: dict[str, Lineage] = {}  # every lineage still alive (a worker, or between two)
        # lineages with no live worker right now (waiting out a restart backoff, or for a resume):
        # they are capacity the scaler must count, or it would spawn around the backoff (a storm)
        self._between: dict[str, Lineage] = {}
        self._held: list[Lineage] = []  # restarts due while halted: they start on resume
        self._ended: deque[WorkerInfo] = deque(maxlen=50)  # recently ended workers, for listings
        self._ids = itertools.count(1)
        self._lineage_ids = itertools.count(1)
        self._roster: Roster | None = None
        # breaker state
        self.state = "running"  # running | halted | stopping
        self.halt_reason: str | None = None
        self.halt_evidence: dict[str, Any] = {}
        self.halted_at: float | None = None
        self.trips = 0
        self._consecutive_spawn_failures = 0
        self._crashes: deque[CrashEvidence] = deque(maxlen=1000)
        self._swarm_intensity = self._new_swarm_intensity()
        self._deficit = 0  # lineages retired for exhausting their budget, not yet refilled
        self._canary_scope: trio.CancelScope | None = None
        # one agent initialising per spare core: a burst of spawns must not starve the loop
        self._spawn_limiter = trio.CapacityLimiter(start_up_slots())
        self.total_crashes = 0
        self.total_spawns = 0
        self.total_restarts = 0
        self._calls: dict[type, Callable[[Any], Any]] = {
            Spawn: self._on_spawn,
            Halt: self._on_halt,
            Resume: self._on_resume,
            StopAll: self._on_stop_all,
            StartAgain: self._on_start_again,
            PauseWorker: self._on_pause,
            ResumeWorker: self._on_resume_worker,
            RestartWorker: self._on_restart,
            KillWorker: self._on_kill,
            SetWorkerModel: self._on_set_model,
            SetWorkerCapabilities: self._on_set_capabilities,
            Attach: self._on_attach,
            BreakerStatus: self._on_status,
        }
        self._casts: dict[type, Callable[[Any], None]] = {
            StateChanged: self._on_state,
            TaskFinished: self._on_finished,
            WorkerStarted: self._on_started,
            WorkerGone: self._on_gone,
            RestartDue: self._on_restart_due,
            CanaryTick: self._on_canary_tick,
            Detach: self._on_detach,
        }

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Address[SupervisorMsg]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the mailbox; `task_status.started(address)`. Cancelling it ends every worker."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._publisher)
            async with Mailbox[SupervisorMsg]("workers", self._mailbox_size) as mailbox:
                self._address = mailbox.address
                task_status.started(mailbox.address)
                await self._serve(mailbox)
            nursery.cancel_scope.cancel()

    async def _serve(self, mailbox: Mailbox[SupervisorMsg]) -> None:
        async for msg in mailbox:
            if isinstance(msg, Call):
                await self._answer(msg)
            else:
                handler = self._casts.get(type(msg))
                if handler is not None:
                    handler(msg)
                else:
                    self._on_report(msg)
                self._roster = None
            if self._out and not self._flush_nowait():
                await self._flush()

    async def _answer(self, call: Call[Any]) -> None:
        """Run a call's handler; the reply goes out once what it sent is out (a halt's pauses)."""
        payload = call.payload
        try:
            if isinstance(payload, Retire):
                value = await self._on_retire(payload)
            else:
                handler = self._calls.get(type(payload))
                if handler is None:
                    raise ValidationError("message", "unknown worker supervisor call", type(payload).__name__)
                value = handler(payload)
        except ShoalError as exc:
            self._roster = None
            call.fail(exc)
            return
        self._roster = None
        if self._out and not self._flush_nowait():
            await self._flush()
        call.reply(value)

    def roster(self) -> Roster:
        """The workers as of the last message handled (see the module docstring)."""
        roster = self._roster
        if roster is None:
            views = [
                WorkerView(
                    id=w.id,
                    model=w.model,
                    state=w.state,
                    idle_since=w.idle_since,
                    task_id=w.task_id,
                    capabilities=w.capabilities,
                )
                for w in self._workers.values()
            ]
            counts: dict[str, int] = {}
            for view in views:
                counts[view.state.value] = counts.get(view.state.value, 0) + 1
            views.extend(
                WorkerView(lineage.id, lineage.model, WorkerState.STARTING, capabilities=lineage.capabilities)
                for lineage in self._between.values()
                if not lineage.retired
            )
            roster = self._roster = Roster(
                state=self.state,
                views=tuple(views),
                live={w.id: w.entry for w in self._workers.values()},
                ended=tuple(self._ended),
                counts=counts,
            )
        return roster

    @property
    def halted(self) -> bool:
        return self.state == "halted"

    def _command(self, worker: WorkerRecord, command: WorkerCommand) -> None:
        self._send_worker(worker.address, command)

    def _new_swarm_intensity(self) -> RestartIntensity:
        sup = self._config().supervision
        return RestartIntensity(sup.swarm_max_restarts, sup.swarm_period_s)

    # ---- spawning -------------------------------------------------------------------------------

    def _on_spawn(self, msg: Spawn) -> str | None:
        if (self.halted and not msg.canary) or self.state == "stopping":
            return None
        config = self._config()
        if self._deficit > 0:  # refilling the slot of a lineage retired for its restart budget
            self._deficit -= 1
            if self._swarm_intensity.record(trio.current_time()):
                self._halt(
                    "swarm restart budget exhausted",
                    {
                        "swarm_max_restarts": config.supervision.swarm_max_restarts,
                        "swarm_period_s": config.supervision.swarm_period_s,
                    },
                )
                return None
        lineage = Lineage(
            id=f"L{next(self._lineage_ids)}",
            model=msg.model,
            capabilities=None,
            backoff=BackoffState(config.supervision.backoff, rng=self._rng),
            intensity=RestartIntensity(
                config.supervision.lineage_max_restarts, config.supervision.lineage_period_s
            ),
            canary=msg.canary,
        )
        self._bus.publish(
            "worker.spawning", {"lineage": lineage.id, "model": msg.model, "reason": msg.reason}
        )
        self._lineages[lineage.id] = lineage
        self._start_worker(lineage)
        return lineage.id

    def _start_worker(self, lineage: Lineage) -> None:
        """A new worker of `lineage`: registered now (STARTING), run by a child task."""
        config = self._config()
        profile_name = config.workers.profile
        profile = resolve_profile(profile_name, config.workers.profiles)
        worker_id = f"{self._worker_prefix}w{next(self._ids)}"
        assert self._address is not None and self._nursery is not None
        actor = WorkerActor(
            worker_id,
            lineage.id,
            profile_name,
            profile,
            lineage.model,
            lineage.capabilities,
            self._address,  # reports come straight into this mailbox, in order
            config.workers,
            history_size=config.queue.history_size,
            spawn_limiter=self._spawn_limiter,
            state_dir=resolve_state_dir(config.state_dir),  # Claude profiles' prepared configuration
            workspace=self._workspaces(profile_name, profile, worker_id),
        )
        scope = trio.CancelScope()
        worker = WorkerRecord(
            worker_id, lineage, actor, WorkerEntry(actor), lineage.model, lineage.capabilities, scope
        )
        self._workers[worker_id] = worker
        self._between.pop(lineage.id, None)
        self.total_spawns += 1
        self._nursery.start_soon(self._run_worker, worker_id, actor, scope)

    def _on_started(self, msg: WorkerStarted) -> None:
        worker = self._workers.get(msg.worker)
        if worker is None:
            return
        worker.entry.address = msg.address
        worker.start_scope = None
        worker.lineage.backoff.started(trio.current_time())
        self._bus.publish(
            "worker.spawned",
            {
                "worker": worker.id,
                "lineage": worker.lineage.id,
                "model": worker.lineage.model,
                "profile": worker.actor.profile_name,
            },
        )
        if worker.pending_stop is not None:  # StopAll came while it was spawning
            self._command(worker, worker.pending_stop)
        elif worker.paused_by_halt or worker.paused_by_operator:  # paused before its mailbox opened
            self._command(worker, Pause())
        elif worker.state is WorkerState.IDLE:  # its IDLE came before its address: announce it now
            self._on_idle(worker)

    def _spawn_failed(self, worker: WorkerRecord, reason: str) -> None:
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
            self._halt(
                f"consecutive spawn failures: {reason}",
                {"consecutive_spawn_failures": self._consecutive_spawn_failures, "last_error": reason},
            )

    def _on_gone(self, gone: WorkerGone) -> None:
        worker = self._workers.get(gone.worker)
        if worker is not None and gone.spawn_error is not None:
            worker.state = WorkerState.CRASHED
            self._spawn_failed(worker, gone.spawn_error)
        self._workers.pop(gone.worker, None)
        self._to_queue(WorkerUnavailable(gone.worker, gone=True))
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
        self._after_exit(worker.lineage, gone.exit)

    def _after_exit(self, lineage: Lineage, worker_exit: WorkerExit) -> None:
        """A lineage's worker ended: respawn it after its backoff, or end the lineage."""
        if not worker_exit.crashed or lineage.retired or self.state == "stopping":
            self._end_lineage(lineage)
            return
        self._between[lineage.id] = lineage
        now = trio.current_time()
        if lineage.intensity.record(now):
            lineage.retired = True
            self._deficit += 1
            self._bus.publish(
                "worker.lineage_retired",
                {"lineage": lineage.id, "restarts": lineage.restarts, "reason": "restart budget exhausted"},
            )
            self._end_lineage(lineage)
            return
        if self._swarm_intensity.record(now):
            self._halt(
                "swarm restart budget exhausted", {"restarts_in_period": self._swarm_intensity.count(now)}
            )
        delay = lineage.backoff.next_delay(now)
        self._bus.publish(
            "worker.restarting",
            {"lineage": lineage.id, "delay_s": round(delay, 3), "restarts": lineage.restarts + 1},
        )
        assert self._nursery is not None
        self._nursery.start_soon(self._after, delay, RestartDue(lineage.id))

    def _end_lineage(self, lineage: Lineage) -> None:
        self._between.pop(lineage.id, None)
        self._lineages.pop(lineage.id, None)

    def _on_restart_due(self, msg: RestartDue) -> None:
        lineage = self._lineages.get(msg.lineage)
        if lineage is not None:
            self._restart(lineage)

    def _restart(self, lineage: Lineage) -> None:
        if lineage.retired or self.state == "stopping":
            self._end_lineage(lineage)
        elif self.halted and not lineage.canary:
            self._held.append(lineage)  # started by the resume
        else:
            lineage.restarts += 1
            self.total_restarts += 1
            self._start_worker(lineage)

    # ---- the workers' reports ---------------------------------------------------------------------

    def _on_report(self, report: Any) -> None:
        ordered, message = forward(report)
        if ordered is not None:
            self._publish_ordered(*ordered)
        if message is not None:
            self._to_queue(message)

    def _on_finished(self, report: TaskFinished) -> None:
        worker = self._workers.get(report.worker)
        if worker is not None:
            worker.task_id = None
        self._to_queue(AttemptEnded(report))

    def _on_state(self, report: StateChanged) -> None:
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
                # what it takes: another node books an idle worker of this one from this event
                "capabilities": None if worker.capabilities is None else sorted(worker.capabilities),
                "pid": report.pid,
                "exit_code": report.exit_code,
                "signal": report.signal,
            },
        )
        if report.state is WorkerState.IDLE:
            worker.idle_since = trio.current_time()
            self._consecutive_spawn_failures = 0
            self._on_idle(worker)
        else:
            worker.idle_since = None
            if report.state is WorkerState.BUSY:
                worker.task_id = worker.actor.info().task_id
            if report.state in (WorkerState.PAUSED, WorkerState.STOPPING, WorkerState.REFRESHING):
                self._to_queue(WorkerUnavailable(worker.id, gone=False))
        if report.state is WorkerState.CRASHED:
            self._record_crash(worker, report)

    def _on_idle(self, worker: WorkerRecord) -> None:
        if self.state == "stopping":
            return  # never announced: a worker that comes up while the swarm stops takes nothing
        if worker.lineage.canary and self.halted:
            worker.lineage.canary = False
            self._resume("canary worker is healthy")
        if self.halted and not worker.lineage.canary:
            self._pause_for_halt(worker)
            return
        self._announce(worker)

    def _announce(self, worker: WorkerRecord) -> None:
        if worker.address is None:
            return  # announced once its address comes (WorkerStarted)
        info = worker.actor.info()
        self._to_queue(
            WorkerAvailable(worker.id, worker.model, worker.capabilities, info.history, worker.address)
        )

    def _record_crash(self, worker: WorkerRecord, report: StateChanged) -> None:
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
        if len(recent) >= breaker.crash_rate_max and not self.halted:
            self._halt(
                crash_summary(recent) or "crash rate",
                {
                    "crashes": [attrs.asdict(c) for c in recent[-20:]],
                    "count": len(recent),
                    "window_s": breaker.crash_window_s,
                },
            )

    # ---- circuit breaker ------------------------------------------------------------------------

    def _on_halt(self, msg: Halt) -> None:
        self._halt(msg.reason, dict(msg.evidence or {}))

    def _halt(self, reason: str, evidence: dict[str, Any]) -> None:
        """Open the breaker: stop spawning, park live workers, keep every task queued."""
        if self.halted:
            return
        self.state = "halted"
        self.trips += 1
        self.halt_reason = reason
        self.halt_evidence = evidence
        self.halted_at = self._clock()
        self._bus.publish(
            "swarm.halted", {"reason": reason, "evidence": self.halt_evidence, "trips": self.trips}
        )
        breaker = self._config().supervision.breaker
        for worker in list(self._workers.values()):
            if worker.state not in ALIVE or worker.lineage.canary:
                continue
            if breaker.on_halt == "stop":
                worker.lineage.retired = True
                self._command(worker, Stop(reason=f"swarm halted: {reason}"))
            else:
                self._pause_for_halt(worker)
        if breaker.canary_after_s is not None and self._canary_scope is None:
            assert self._nursery is not None
            self._canary_scope = trio.CancelScope()
            self._nursery.start_soon(self._canary_timer, self._canary_scope, breaker.canary_after_s)

    def _pause_for_halt(self, worker: WorkerRecord) -> None:
        if worker.paused_by_halt:
            return
        worker.paused_by_halt = True
        self._to_queue(WorkerUnavailable(worker.id, gone=False))
        self._command(worker, Pause())

    def _on_resume(self, msg: Resume) -> None:
        self._resume(msg.reason)

    def _resume(self, reason: str) -> None:
        """Close the breaker: counters reset, workers paused by the halt take tasks again."""
        if self._canary_scope is not None:
            self._canary_scope.cancel()
            self._canary_scope = None
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
        self._bus.publish("swarm.resumed", {"reason": reason})
        for worker in list(self._workers.values()):
            if worker.paused_by_halt:
                worker.paused_by_halt = False
                if not worker.paused_by_operator:
                    self._command(worker, commands.Resume())
        held, self._held = self._held, []
        for lineage in held:
            self._restart(lineage)

    def _on_canary_tick(self, msg: CanaryTick) -> None:
        if not self.halted:
            if self._canary_scope is not None:
                self._canary_scope.cancel()
                self._canary_scope = None
            return
        if any(w.lineage.canary for w in self._workers.values()):
            return
        self._bus.publish("swarm.canary", {"cool_down_s": msg.cool_down})
        self._on_spawn(Spawn(self._config().models.default, "half-open canary", canary=True))

    def _on_status(self, _msg: BreakerStatus) -> SupervisorStatus:
        breaker = self._config().supervision.breaker
        now = self._clock()
        return SupervisorStatus(
            state=self.state,
            halt_reason=self.halt_reason,
            halt_evidence=self.halt_evidence,
            halted_at=self.halted_at,
            breaker={
                "state": "open" if self.halted else "closed",
                "trips": self.trips,
                "consecutive_spawn_failures": self._consecutive_spawn_failures,
                "crashes_in_window": sum(1 for c in self._crashes if now - c.at <= breaker.crash_window_s),
                "crash_window_s": breaker.crash_window_s,
            },
        )

    # ---- scale-down and shutdown -------------------------------------------------------------------

    async def _on_retire(self, msg: Retire) -> bool:
        """Stop an idle worker for good; False when it just took a task (the queue decides, atomically).

        The one handler that waits (for the queue, which never calls back): the state it checked
        cannot change meanwhile, since this task alone changes it."""
        worker = self._workers.get(msg.worker_id)
        if worker is None or worker.state is not WorkerState.IDLE:
            return False
        if not await self._queue.call(RetireWorker(msg.worker_id)):
            return False
        worker.lineage.retired = True
        self._bus.publish("worker.retiring", {"worker": msg.worker_id, "reason": msg.reason})
        self._command(worker, Stop(reason=msg.reason))
        return True

    def _on_stop_all(self, msg: StopAll) -> None:
        """Stop every worker (after their current task when `drain`) and spawn nothing more.

        Whatever state a worker is in: one still spawning (no mailbox yet) has its spawn cancelled
        and, should it open its mailbox anyway, gets the Stop at once; lineages between two workers
        (waiting out a restart backoff, or for a resume) start nothing more. The queue is told
        first that no worker takes tasks, so nothing is dispatched while the workers stop.
        """
        self.state = "stopping"
        for lineage in self._between.values():
            lineage.retired = True
        held, self._held = self._held, []
        for lineage in held:
            self._end_lineage(lineage)
        workers = list(self._workers.values())
        for worker in workers:
            worker.lineage.retired = True
            self._to_queue(WorkerUnavailable(worker.id, gone=False))
        for worker in workers:
            stop = Stop(reason="swarm stopping", drain=msg.drain)
            if worker.address is None:
                worker.pending_stop = stop
                if worker.start_scope is not None:
                    worker.start_scope.cancel()
            else:
                self._command(worker, stop)

    def _on_start_again(self, _msg: StartAgain) -> None:
        if self.state == "stopping":
            self.state = "running"

    # ---- operator controls ------------------------------------------------------------------------

    def _get(self, worker_id: str) -> WorkerRecord:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise NotFound("worker", worker_id)
        return worker

    def _on_pause(self, msg: PauseWorker) -> None:
        worker = self._get(msg.worker_id)
        worker.paused_by_operator = True
        self._to_queue(WorkerUnavailable(worker.id, gone=False))
        self._command(worker, Pause())

    def _on_resume_worker(self, msg: ResumeWorker) -> None:
        worker = self._get(msg.worker_id)
        worker.paused_by_operator = False
        if self.halted:
            raise Conflict(f"the swarm is halted ({self.halt_reason}); resume the swarm first")
        self._command(worker, commands.Resume())

    def _on_restart(self, msg: RestartWorker) -> None:
        self._command(self._get(msg.worker_id), Restart(reason="restart requested by operator"))

    def _on_kill(self, msg: KillWorker) -> None:
        worker = self._get(msg.worker_id)
        worker.lineage.retired = True
        self._command(worker, Stop(reason="killed by operator", drain=False))

    def _on_set_model(self, msg: SetWorkerModel) -> None:
        config = self._config()
        if msg.model not in config.models.known:
            raise ValidationError("model", f"unknown model; known: {list(config.models.known)}", msg.model)
        worker = self._get(msg.worker_id)
        worker.lineage.model = msg.model
        self._command(worker, SetModel(msg.model))

    def _on_set_capabilities(self, msg: SetWorkerCapabilities) -> None:
        worker = self._get(msg.worker_id)
        caps = None if msg.capabilities is None else frozenset(msg.capabilities)
        worker.capabilities = caps
        worker.lineage.capabilities = caps
        self._command(worker, SetCapabilities(caps))
        if worker.state is WorkerState.IDLE and not self.halted:
            self._announce(worker)

    def _on_attach(self, msg: Attach) -> tuple[bytes, trio.MemoryReceiveChannel[bytes]]:
        actor = self._get(msg.worker_id).actor
        return actor.output_tail(None), actor.subscribe_output()

    def _on_detach(self, msg: Detach) -> None:
        worker = self._workers.get(msg.worker_id)
        if worker is not None:
            worker.actor.unsubscribe_output(msg.channel)
        else:
            msg.channel.close()
