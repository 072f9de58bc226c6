"""The dialect contract: what every parser of an agent's output must offer.

A dialect never performs I/O. The WorkerActor feeds it every byte the agent writes (`feed`), tells it
when a task starts (`start_task`) and when time passes (`tick`, at `next_deadline()`), and writes what
`encode` returns. Times are passed in (`now`, monotonic seconds) so tests drive them with plain values.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import attrs

from ..tasks import Assignment

Transport = Literal["pty", "pipe"]


@attrs.frozen
class Ready:
    """The agent waits for input (start-up finished, or a task ended and the prompt returned)."""


@attrs.frozen
class TaskDone:
    result: str
    usage: dict[str, Any] = attrs.field(factory=dict)  # tokens, cost_usd when the agent reports them


@attrs.frozen
class TaskFailed:
    reason: str
    exit_code: int | None = None
    usage: dict[str, Any] = attrs.field(factory=dict)  # a failed run still cost tokens and money


@attrs.frozen
class ContextUsage:
    used_percent: float  # 0..100; "Context left until auto-compact: 8%" is 92


@attrs.frozen
class RateLimited:
    reset_at: float | None  # epoch seconds, None when the agent did not say
    message: str


@attrs.frozen
class NeedsInput:
    prompt: str  # the question/permission text the agent waits on
    options: tuple[str, ...] = ()  # a numbered menu's choices in order ("Yes, proceed", "No, exit")
    # A menu drawn without numbers (CLI 2.1.332's trust dialog) is answered with arrow keys from
    # the highlighted option: `numbered` False and `cursor` its index. None: not known (numbered).
    numbered: bool = True
    cursor: int | None = None


@attrs.frozen
class ExtraUsage:
    """The agent says it now spends beyond the plan ("Now using extra usage"): money, not quota."""

    message: str


@attrs.frozen
class ApiRetry:
    """The agent's own client is retrying a failed API request (Claude Code's `system/api_retry`).

    `error` is the agent's category: rate_limit, overloaded, server_error, authentication_failed,
    network, unknown. Not an outcome: the task is still running, but a storm of these is news.
    """

    attempt: int | None
    max_retries: int | None
    delay_s: float | None
    status: int | None  # the HTTP status, None for a network failure
    error: str


@attrs.frozen
class QuotaReport:
    """Where the account's quota stands (Claude Code's `rate_limit_event`), before it runs out.

    `status` is allowed, allowed_warning or rejected; `window` the limit's kind (five_hour,
    seven_day, ...); `utilization` 0..1 when reported; `overage` the overage (extra usage) status.
    """

    status: str
    window: str | None
    resets_at: float | None
    utilization: float | None
    overage: str | None


@attrs.frozen
class Notice:
    """A line that is not part of the protocol (a warning printed on stdout): logged and counted."""

    text: str


@attrs.frozen
class ProtocolError:
    """The agent wrote something the dialect cannot accept (e.g. invalid JSON on stream-json)."""

    message: str


Signal = (
    Ready
    | TaskDone
    | TaskFailed
    | ContextUsage
    | RateLimited
    | NeedsInput
    | ExtraUsage
    | ApiRetry
    | QuotaReport
    | Notice
    | ProtocolError
)


class Dialect(Protocol):
    """One instance per agent process."""

    name: str
    transport: Transport
    one_process_per_task: bool  # oneshot: the task is in argv, the exit status decides

    def feed(self, data: bytes, now: float) -> list[Signal]:
        """Parse more output; `data` may split anywhere, even inside a UTF-8 or escape sequence."""

    def start_task(self, assignment: Assignment, now: float) -> None:
        """A task is about to be written: arm completion detection for it."""

    def encode(self, assignment: Assignment) -> bytes:
        """The bytes that submit the task to the agent (empty for oneshot)."""

    def encode_steps(self, assignment: Assignment) -> list[tuple[float, bytes]]:
        """`encode` split into (delay_s, bytes) writes: sleep delay_s, then write the bytes.

        Same bytes as `encode`. Claude Code can swallow an Enter that arrives in the same read as the
        end of a bracketed paste, so TUI dialects paste first and send Enter after a short delay.
        """

    def tick(self, now: float) -> list[Signal]:
        """Time passed; signals that depend on silence (idle dialect)."""

    def next_deadline(self) -> float | None:
        """When `tick` must be called next (monotonic seconds), or None."""

    def on_exit(self, exit_code: int | None, signal: int | None) -> list[Signal]:
        """The process ended (oneshot decides the task here)."""

    def quit_bytes(self) -> bytes | None:
        """Polite quit to write before SIGTERM (e.g. b"/exit\\r"), or None."""
