"""Worker states, the commands a WorkerActor accepts, and the reports it sends its owner.

The worker sends every `WorkerReport` to the send channel it was given (the swarm's dispatcher, i.e.
the QueueActor/supervisor side); reports are also the payloads of `worker.*` events.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .tasks import Assignment, Outcome


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    REFRESHING = "refreshing"  # respawning fresh between tasks (context pressure, model change, restart)
    PAUSED = "paused"  # alive, takes no task
    STOPPING = "stopping"
    STOPPED = "stopped"  # ended on purpose
    CRASHED = "crashed"  # ended on its own, or failed to start


# ---- commands (to the worker's mailbox) -------------------------------------------------------


@attrs.frozen
class Assign:
    assignment: Assignment


@attrs.frozen
class Pause:
    pass


@attrs.frozen
class Resume:
    pass


@attrs.frozen
class Restart:
    """Respawn the process fresh; if busy, the running attempt ends `interrupted` unless `wait`."""

    reason: str = "restart requested"
    wait: bool = True  # wait until the current task ends before restarting


@attrs.frozen
class Stop:
    reason: str = "stop requested"
    drain: bool = False  # finish the current task first


@attrs.frozen
class SetModel:
    model: str


@attrs.frozen
class SetCapabilities:
    capabilities: frozenset[str] | None  # None: takes every category


@attrs.frozen
class SendInput:
    """Bytes typed by an operator (attach)."""

    data: bytes


@attrs.frozen
class Resize:
    rows: int
    cols: int


@attrs.frozen
class AnswerQuestion:
    """A human's answer to the question the agent waits on: an option number (1-based) or text.

    Sent with `call`: the reply is `{question, choice, label}`; Conflict when nothing is asked,
    ValidationError naming `choice` when it is out of range (protocols/menus.parse_choice).
    """

    choice: int | str


WorkerCommand = (
    Assign
    | Pause
    | Resume
    | Restart
    | Stop
    | SetModel
    | SetCapabilities
    | SendInput
    | Resize
    | AnswerQuestion
)


# ---- reports (from the worker to its owner) ----------------------------------------------------


@attrs.frozen
class StateChanged:
    worker: str
    state: WorkerState
    reason: str | None = None
    model: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None


@attrs.frozen
class TaskFinished:
    """One attempt ended. `outcome` DONE carries `result`; others carry `reason`."""

    worker: str
    task_id: str
    attempt: int
    outcome: Outcome
    result: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    output_tail: str | None = None
    model: str | None = None
    elapsed_s: float = 0.0
    usage: dict[str, Any] = attrs.field(factory=dict)  # input/output tokens, cost_usd when known
    reset_at: float | None = None  # for RATE_LIMITED: when the model's limit resets (epoch s)
    # what the worker's workspace kept of the attempt (a worktree: branch, base, head, files changed)
    workspace: dict[str, Any] | None = None


@attrs.frozen
class ContextReport:
    worker: str
    used_percent: float


@attrs.frozen
class RateLimitReport:
    worker: str
    model: str | None
    reset_at: float | None
    message: str


@attrs.frozen
class NeedsInputReport:
    """The agent waits on a question that a human must answer (the policy had none)."""

    worker: str
    task_id: str | None
    prompt: str
    options: tuple[str, ...] = ()
    kind: str = "question"  # protocols/menus.kind_of: trust | permission | menu | question
    why: str = ""  # why Shoal did not answer it itself


@attrs.frozen
class AnsweredReport:
    """A question was answered: by Shoal's policy (protocols/menus.py) or by a human."""

    worker: str
    task_id: str | None
    question: str
    choice: int | None  # the option number; None for free text
    label: str  # the option's label, or the text typed
    by: str  # policy | human
    kind: str = "question"


@attrs.frozen
class NoticeReport:
    """A line the agent printed outside its protocol (a warning on stdout): logged and counted."""

    worker: str
    profile: str
    model: str | None
    text: str


@attrs.frozen
class ApiRetryReport:
    """The agent's client retries a failed API request; the task is still running."""

    worker: str
    model: str | None
    task_id: str | None
    attempt: int | None
    max_retries: int | None
    delay_s: float | None
    status: int | None  # HTTP status, None for a network failure
    error: str  # rate_limit, overloaded, server_error, authentication_failed, network, unknown


@attrs.frozen
class QuotaUpdate:
    """Where the model's quota stands, as the agent reported it (before it runs out)."""

    worker: str
    model: str | None
    status: str  # allowed, allowed_warning, rejected
    window: str | None  # five_hour, seven_day, ...
    resets_at: float | None  # epoch s
    utilization: float | None  # 0..1
    overage: str | None


@attrs.frozen
class ExtraUsageReport:
    """The agent now spends beyond the plan ("Now using extra usage"): limits.on_extra_usage acts."""

    worker: str
    model: str | None
    task_id: str | None
    message: str


WorkerReport = (
    StateChanged
    | TaskFinished
    | ContextReport
    | RateLimitReport
    | NeedsInputReport
    | NoticeReport
    | ApiRetryReport
    | QuotaUpdate
    | ExtraUsageReport
    | AnsweredReport
)


@attrs.frozen
class RetryInfo:
    attempt: int | None
    max_retries: int | None
    delay_s: float | None
    next_at: float | None  # epoch s of the next try
    status: int | None
    error: str
    since: float  # epoch s of the first retry of this run

    def describe(self, now: float) -> str:
        """ "retrying 3/10, next in 8 s" (what the CLI and the dashboard show)."""
        shown = f"{self.attempt if self.attempt is not None else '?'}"
        if self.max_retries is not None:
            shown += f"/{self.max_retries}"
        text = f"retrying {shown}"
        if self.next_at is not None:
            left = max(0.0, self.next_at - now)
            text += f", next in {left:.0f} s"
        return text


@attrs.frozen
class WorkerInfo:
    """A snapshot of one worker for listings (workers.list / dashboard)."""

    id: str
    lineage: str
    state: WorkerState
    profile: str
    model: str | None
    capabilities: tuple[str, ...] | None
    task_id: str | None
    pid: int | None
    started: float
    context_used_percent: float | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    tasks_done: int = 0
    crashes: int = 0
    history: tuple[str, ...] = ()  # recent categories, newest last (affinity)
    reason: str | None = None
    # The question the agent waits on (a permission prompt), and since when (epoch s). The state stays
    # `busy` (a task is in flight); listings show "needs input" so nobody reads it as working. Cleared
    # when the worker changes state or an operator types into it.
    needs_input: str | None = None
    needs_input_since: float | None = None
    needs_input_options: tuple[str, ...] = ()  # a menu's options, in order (answer with their number)
    # The agent's client is retrying an API request (Claude Code's api_retry): attempt of max, the
    # error, and when the next try goes out (epoch s). The state stays `busy`; listings show
    # "retrying 3/10, next in 8 s". Cleared when the API answers or the attempt ends.
    retrying: RetryInfo | None = None
    notices: int = 0  # lines printed outside the protocol since the worker started
