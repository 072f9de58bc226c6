"""What the worker supervisor's mailbox carries, the records it keeps, what it publishes for
synchronous reads (the `Roster`), and what each worker report becomes (`forward`):
actors/swarm_supervisor.py serves them.

Calls (`address.call(msg)`) reply with what each message's docstring says, or fail with its error
(NotFound for an unknown worker, Conflict, ValidationError); casts (`address.send(msg)`) reply
nothing. Worker reports (`protocols/workers.py`) arrive in the same mailbox, sent by the workers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from ..protocols.errors import NotFound
from ..protocols.workers import (
    AnsweredReport,
    ApiRetryReport,
    ContextReport,
    ExtraUsageReport,
    NeedsInputReport,
    NoticeReport,
    QuotaUpdate,
    RateLimitReport,
    RetryInfo,
    Stop,
    WorkerCommand,
    WorkerInfo,
    WorkerReport,
    WorkerState,
)
from ..runtime.actor import Address, Call
from ..runtime.backoff import BackoffState, RestartIntensity
from .capacity import ProcessView
from .queue import ModelExtraUsage, ModelQuota, ModelRateLimited, ModelRetrying, QueueSend
from .scaler import WorkerView
from .worker import WorkerActor, WorkerExit

# ---- calls ------------------------------------------------------------------------------------------


@attrs.frozen
class Spawn:
    """Start a new lineage. Replies its id, or None when the swarm is halted, stopping or over budget;
    the reply comes once the worker is registered (STARTING), so the next roster counts it."""

    model: str | None
    reason: str
    canary: bool = False


@attrs.frozen
class Retire:
    """Stop an idle worker for good. Replies False when it just took a task (the queue decides)."""

    worker_id: str
    reason: str


@attrs.frozen
class Halt:
    """Open the breaker: no spawns, live workers paused (or stopped), every task stays queued."""

    reason: str
    evidence: Mapping[str, Any] | None = None


@attrs.frozen
class Resume:
    """Close the breaker: counters reset, workers paused by the halt take tasks again."""

    reason: str = "resumed by operator"


@attrs.frozen
class StopAll:
    """Stop every worker (after its task when `drain`) and spawn nothing more."""

    drain: bool


@attrs.frozen
class StartAgain:
    """Undo `StopAll`: spawns are allowed again."""


@attrs.frozen
class PauseWorker:
    worker_id: str


@attrs.frozen
class ResumeWorker:
    """Conflict while the swarm is halted."""

    worker_id: str


@attrs.frozen
class RestartWorker:
    worker_id: str


@attrs.frozen
class KillWorker:
    worker_id: str


@attrs.frozen
class SetWorkerModel:
    """ValidationError for a model not in `models.known`."""

    worker_id: str
    model: str


@attrs.frozen
class SetWorkerCapabilities:
    worker_id: str
    capabilities: tuple[str, ...] | None


@attrs.frozen
class Attach:
    """Replies `(tail, channel)`: the output so far and a bounded channel of the live output (a
    viewer that falls behind loses chunks; the channel ends when the worker ends)."""

    worker_id: str


@attrs.frozen
class BreakerStatus:
    """Replies the breaker's `SupervisorStatus`."""


# ---- casts ------------------------------------------------------------------------------------------


@attrs.frozen
class Detach:
    """An attach viewer leaves: its channel is unsubscribed (and closed)."""

    worker_id: str
    channel: trio.MemoryReceiveChannel[bytes]


# ---- from the supervisor's own children ------------------------------------------------------------


@attrs.frozen
class WorkerStarted:
    """A worker's mailbox is open: its address."""

    worker: str
    address: Address[WorkerCommand]


@attrs.frozen
class WorkerGone:
    """A worker's `run` returned (sent after its last report, so it comes after them);
    `spawn_error` when it never started."""

    worker: str
    exit: WorkerExit
    spawn_error: str | None = None


@attrs.frozen
class RestartDue:
    """A lineage's restart backoff has elapsed."""

    lineage: str


@attrs.frozen
class CanaryTick:
    """Half-open: a cool-down elapsed while halted."""

    cool_down: float


SupervisorRequest = (
    Spawn
    | Retire
    | Halt
    | Resume
    | StopAll
    | StartAgain
    | PauseWorker
    | ResumeWorker
    | RestartWorker
    | KillWorker
    | SetWorkerModel
    | SetWorkerCapabilities
    | Attach
    | BreakerStatus
)
"""What others `call` the worker supervisor with."""
SupervisorMsg = (
    Call[SupervisorRequest] | Detach | WorkerReport | WorkerStarted | WorkerGone | RestartDue | CanaryTick
)
"""Everything the worker supervisor's mailbox carries: its address is an `Address[SupervisorMsg]`."""


@attrs.frozen
class SupervisorStatus:
    state: str  # running | halted | stopping
    halt_reason: str | None
    halt_evidence: dict[str, Any]
    halted_at: float | None  # epoch
    breaker: dict[str, Any]


# ---- the supervisor's records (its task alone changes them) -----------------------------------

ALIVE = frozenset(
    {WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.REFRESHING, WorkerState.PAUSED}
)


@attrs.define(eq=False)
class Lineage:
    """The slot a spawn creates: its workers, one after the other (the supervisor's own record)."""

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
class WorkerRecord:
    """A live worker as the supervisor keeps it; readers get its `entry` through the roster."""

    id: str
    lineage: Lineage
    actor: WorkerActor
    entry: WorkerEntry
    model: str | None
    capabilities: frozenset[str] | None
    start_scope: trio.CancelScope | None  # the spawn itself, until the mailbox opens; cancelled by StopAll
    state: WorkerState = WorkerState.STARTING
    idle_since: float | None = None  # trio clock
    task_id: str | None = None
    paused_by_halt: bool = False
    paused_by_operator: bool = False
    # a Stop for a worker whose mailbox is not open yet (still spawning): delivered at once when it
    # opens, so a Stop sent during the spawn is never lost
    pending_stop: Stop | None = None

    @property
    def address(self) -> Address[WorkerCommand] | None:
        return self.entry.address


# ---- the roster: what synchronous reads see -----------------------------------------------------


class WorkerEntry:
    """A live worker as readers see it: its address (to send it commands, as the queue does) and
    read-only windows on it (its info, output, question, API retry). Nothing here changes a worker;
    the supervisor alone sets `address`, once the worker's mailbox is open."""

    __slots__ = ("_actor", "address", "id")

    def __init__(self, actor: WorkerActor) -> None:
        self.id = actor.id
        self._actor = actor
        self.address: Address[WorkerCommand] | None = None

    def info(self) -> WorkerInfo:
        return self._actor.info()

    def output_tail(self, max_bytes: int | None = None) -> bytes:
        return self._actor.output_tail(max_bytes)

    @property
    def needs_input(self) -> tuple[str, float] | None:
        return self._actor.needs_input

    @property
    def retrying(self) -> RetryInfo | None:
        return self._actor.retrying

    @property
    def pid(self) -> int | None:
        return self._actor.pid

    @property
    def profile(self) -> str:
        return self._actor.profile_name


@attrs.frozen
class Roster:
    """The workers as of the supervisor's last change, published by it (see its module docstring)."""

    state: str  # running | halted | stopping
    views: tuple[WorkerView, ...]  # live workers, then lineages between two workers (STARTING)
    live: Mapping[str, WorkerEntry]
    ended: tuple[WorkerInfo, ...]  # recently ended workers, oldest first
    counts: Mapping[str, int]  # live workers per state

    @property
    def halted(self) -> bool:
        return self.state == "halted"

    def entry(self, worker_id: str) -> WorkerEntry:
        entry = self.live.get(worker_id)
        if entry is None:
            raise NotFound("worker", worker_id)
        return entry

    def infos(self, include_ended: bool = False) -> list[WorkerInfo]:
        out = [e.info() for e in self.live.values()]
        if include_ended:
            out.extend(self.ended)
        return out

    def info(self, worker_id: str) -> WorkerInfo:
        entry = self.live.get(worker_id)
        if entry is not None:
            return entry.info()
        for info in self.ended:
            if info.id == worker_id:
                return info
        raise NotFound("worker", worker_id)

    def processes(self) -> list[ProcessView]:
        """Each live worker's process (id, profile, pid, state): what the capacity meter samples."""
        return [
            ProcessView(v.id, e.profile, e.pid, v.state)
            for v in self.views
            if (e := self.live.get(v.id)) is not None and v.state is not WorkerState.STOPPED
        ]


# ---- crash evidence --------------------------------------------------------------------------------


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


# ---- what a report becomes -----------------------------------------------------------------------

Ordered = tuple[str, dict[str, Any], QueueSend | None]
"""An event published behind the queue's (topic, data), and a message for the queue once it is out."""


def forward(report: WorkerReport) -> tuple[Ordered | None, QueueSend | None]:
    """What a report other than a state change or a finished attempt becomes: an ordered event, a
    message for the queue, or both (the event first)."""
    match report:
        case ContextReport():
            return (
                "worker.context",
                {"worker": report.worker, "used_percent": report.used_percent},
                None,
            ), None
        case RateLimitReport():
            event: dict[str, Any] = {
                "worker": report.worker,
                "model": report.model,
                "reset_at": report.reset_at,
                "message": report.message,
            }
            limited = ModelRateLimited(report.model, report.reset_at) if report.model is not None else None
            return ("worker.rate_limited", event, None), limited
        case NeedsInputReport():
            event = {
                "worker": report.worker,
                "task_id": report.task_id,
                "prompt": report.prompt,
                "options": list(report.options),
                "kind": report.kind,
                "why": report.why,
            }
            return ("worker.needs_input", event, None), None
        case AnsweredReport():
            event = {
                "worker": report.worker,
                "task_id": report.task_id,
                "question": report.question,
                "choice": report.choice,
                "label": report.label,
                "by": report.by,
                "kind": report.kind,
            }
            return ("worker.answered", event, None), None
        case NoticeReport():
            event = {
                "worker": report.worker,
                "profile": report.profile,
                "model": report.model,
                "text": report.text,
            }
            return ("worker.notice", event, None), None
        case ApiRetryReport():
            event = {
                "worker": report.worker,
                "model": report.model,
                "task_id": report.task_id,
                "attempt": report.attempt,
                "max_retries": report.max_retries,
                "delay_s": report.delay_s,
                "status": report.status,
                "error": report.error,
            }
            # what the queue makes of it (a retry storm) is published after the event
            then = (
                ModelRetrying(report.model, report.worker, report.error, report.task_id)
                if report.model
                else None
            )
            return ("worker.api_retry", event, then), None
        case QuotaUpdate():
            # the queue keeps it (routing acts on it) and publishes model.quota
            quota = ModelQuota(
                report.model,
                report.status,
                report.window,
                report.resets_at,
                report.utilization,
                report.overage,
                report.worker,
            )
            return None, quota
        case ExtraUsageReport():
            # the queue applies limits.on_extra_usage and publishes model.extra_usage
            return None, ModelExtraUsage(report.model, report.message, report.worker, report.task_id)
    return None, None
