"""The stream-json dialect: Claude Code's `-p --input-format stream-json --output-format stream-json`.

Input: one JSON line per task, `{"type":"user","message":{"role":"user","content":[{"type":"text",
"text": PROMPT}]}}`. Output: JSON lines, one event each (`system` init, `assistant`, `user` tool
results, `result`). The `result` event ends the turn, and is read whole, never by its `subtype`
alone (Claude Code reports API failures as `"subtype":"success"` with `is_error: true`):

- no error: TaskDone(result, usage) with `input_tokens`, `output_tokens`, cache tokens, `cost_usd`
  (from `total_cost_usd`), `duration_ms` and `num_turns` when present; unless the result text is a
  usage-limit notice ("You've hit your session limit · resets 7pm (America/Toronto)"), which is a
  RateLimited until that reset, never a task done;
- `api_error_status` 429, 529, 5xx, 401/403 or a network failure (`terminal_reason: api_error`,
  status null): RateLimited, so the task goes back to the queue without an attempt counted and the
  model backs off for a while (`overloaded_park_s`, `auth_park_s`) or until the announced reset;
  the same when the turn's synthetic assistant message says so (`is_api_error_message`, 2.0.x
  `isApiErrorMessage`, `error`: it ends the task at once) or when a result claiming success is an
  API error line ("API Error: 401 …", "Invalid API key · Please run /login"): never TaskDone. Which
  failure is which back-off is patterns.api_error_kind, the rule the TUI dialects use too;
- any other error (`error_max_turns`, `error_during_execution`, ...): TaskFailed whose reason is the
  `errors[]` text ("Reached maximum number of turns (40)"), carrying the usage and cost it ran up.

`system`/`api_retry` events give ApiRetry (attempt, max, delay, status, error); with `error:
rate_limit` also RateLimited (reset from `retry_delay_ms`), which ends the task. `rate_limit_event`
gives QuotaReport (status, window, reset, utilization, overage); `rejected` also RateLimited.
Context usage is the last assistant message's prompt size over `context_window_tokens`.

Every user message gets exactly one result, in order; results of tasks that already ended here (timed
out, rate-limited) are dropped rather than credited to the next task. A line that is not JSON and does
not look like it (a warning Claude Code prints on stdout) is a Notice and skipped; a stream that never
becomes JSON within `max_preamble_lines` lines, a line that starts like JSON but does not parse, or
invalid UTF-8 yields a ProtocolError, and parsing goes on with the next line.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, TypeGuard

from ..tasks import Assignment
from .base import (
    ApiRetry,
    ContextUsage,
    ExtraUsage,
    Notice,
    ProtocolError,
    QuotaReport,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
    Transport,
)
from .common import Options, TaskRun, WallClock, sanitize_prompt, scanner_from, timeout_reason
from .patterns import API_ERROR_LINE, api_backoff, api_error_kind, api_error_status

_PREVIEW = 120
_NOTICE_MAX = 500  # a notice line is cut to this many characters
_LIMIT_NOTICE_MAX = 400  # a "done" result this short may be a usage-limit notice in disguise
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def result_usage(event: Mapping[str, Any]) -> dict[str, Any]:
    """The usage figures of a `result` event, flattened (tokens, cost_usd, duration_ms, num_turns), and
    its `session_id`."""
    usage: dict[str, Any] = {}
    raw = event.get("usage")
    if isinstance(raw, Mapping):
        for key in _USAGE_KEYS:
            value = raw.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                usage[key] = value
    for src, dst in (
        ("total_cost_usd", "cost_usd"),
        ("cost_usd", "cost_usd"),
        ("duration_ms", "duration_ms"),
        ("num_turns", "num_turns"),
    ):
        value = event.get(src)
        if isinstance(value, int | float) and not isinstance(value, bool) and dst not in usage:
            usage[dst] = value
    session = event.get("session_id")  # the conversation a later task may resume (--resume)
    if isinstance(session, str) and session:
        usage["session_id"] = session
    return usage


def _preview(text: str) -> str:
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "…"


class StreamJsonDialect:
    """JSON lines in and out; see the module docstring."""

    name = "stream-json"
    one_process_per_task = False

    def __init__(
        self, options: Mapping[str, Any] | None = None, *, wall_clock: WallClock = time.time
    ) -> None:
        opts = Options(self.name, options)
        self._wall = wall_clock
        self.transport: Transport = opts.choice("transport", "pipe", ("pipe", "pty"))
        self._scanner = scanner_from(opts)
        self._window = opts.integer("context_window_tokens", 200_000, minimum=1)
        self._max_line = opts.integer("max_line_bytes", 16 << 20, minimum=1024)
        self._max_result = opts.integer("max_result_chars", 200_000, minimum=1)
        self._default_timeout = opts.number("task_timeout_s", None, minimum=0.001)
        self._max_preamble = opts.integer("max_preamble_lines", 200, minimum=1)
        opts.finish()
        self._seen_json = False  # at least one JSON event arrived: the stream is what we expect
        self._preamble = 0  # non-JSON lines before the first JSON event
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: drop bytes up to its newline
        self._queue: deque[TaskRun | None] = deque()  # one entry per user message awaiting its result
        self._task: TaskRun | None = None
        self._texts: list[str] = []  # assistant text of the current turn (fallback result)
        self._limited = False  # a rate limit was reported for the current turn
        self._turn_error: str | None = None  # the head turn's API error message (the request's fault)
        self._ready_reported = False
        self._started = False
        self.session_id: str | None = None
        self.model: str | None = None

    # -- the Dialect contract ----------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Signal]:
        out: list[Signal] = []
        self._check_timeout(now, out)
        self._start(out)
        buf = self._buf
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            data = data[nl + 1 :]
            self._discarding = False
        buf += data
        end = buf.rfind(b"\n")
        if end >= 0:
            lines = bytes(buf[:end]).split(b"\n")
            del buf[: end + 1]
            for line in lines:
                self._line(line, out)
        if len(buf) > self._max_line:
            out.append(ProtocolError(f"line longer than {self._max_line} bytes dropped"))
            buf.clear()
            self._discarding = True
        return out

    def start_task(self, assignment: Assignment, now: float) -> None:
        timeout = assignment.timeout_s if assignment.timeout_s is not None else self._default_timeout
        self._task = TaskRun(assignment, now, timeout, keep=1)
        if not self._queue:  # a new turn at the head: its own rate-limit report
            self._limited = False
            self._turn_error = None
            self._scanner.reset_task()
        self._queue.append(self._task)
        self._ready_reported = False
        self._started = True

    def encode(self, assignment: Assignment) -> bytes:
        message = {
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"type": "text", "text": sanitize_prompt(assignment.prompt)}],
            },
        }
        return (json.dumps(message) + "\n").encode()

    def encode_steps(self, assignment: Assignment) -> list[tuple[float, bytes]]:
        return [(0.0, self.encode(assignment))]

    def tick(self, now: float) -> list[Signal]:
        out: list[Signal] = []
        self._check_timeout(now, out)
        self._start(out)
        return out

    def next_deadline(self) -> float | None:
        if not self._started:
            return 0.0  # the agent reads stdin at once: ready as soon as the worker ticks
        return self._task.deadline if self._task is not None else None

    def on_exit(self, exit_code: int | None, signal: int | None) -> list[Signal]:
        out: list[Signal] = []
        if self._buf and not self._discarding:
            line = bytes(self._buf)
            self._buf.clear()
            self._line(line, out)
        return out

    def quit_bytes(self) -> bytes | None:
        return None  # closing stdin ends a stream-json session

    # -- internals ---------------------------------------------------------------------------------

    def _start(self, out: list[Signal]) -> None:
        if not self._started:
            self._started = True
            self._ready_reported = True
            out.append(Ready())

    def _check_timeout(self, now: float, out: list[Signal]) -> None:
        task = self._task
        if task is not None and task.deadline is not None and now >= task.deadline:
            self._end_task(out, TaskFailed(reason=timeout_reason(task.timeout or 0.0)))

    def _end_task(self, out: list[Signal], signal: Signal) -> None:
        """Report how the live task ended; its result, if one still comes, will be dropped."""
        out.append(signal)
        self._task = None

    def _head_is_live(self) -> bool:
        """Events before a result belong to the oldest unanswered message: is that the live task?"""
        return self._task is not None and bool(self._queue) and self._queue[0] is self._task

    def _line(self, raw: bytes, out: list[Signal]) -> None:
        raw = raw.strip()
        if not raw:
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.append(ProtocolError(f"invalid UTF-8 at byte {exc.start}: {_preview(repr(raw))}"))
            return
        if not text.startswith(("{", "[")):
            self._notice(text, out)
            return
        try:
            event = json.loads(text)
        except ValueError as exc:
            out.append(ProtocolError(f"invalid JSON ({exc}): {_preview(text)}"))
            return
        if not isinstance(event, dict):
            out.append(ProtocolError(f"not a JSON object: {_preview(text)}"))
            return
        self._seen_json = True
        kind = event.get("type")
        if kind == "result":
            self._result(event, out)
        elif kind == "assistant":
            self._assistant(event, out)
        elif kind == "system":
            self._system(event, out)
        elif kind == "rate_limit_event":
            self._quota(event, out)
        elif kind is None:
            out.append(ProtocolError(f"event without a type: {_preview(text)}"))

    def _notice(self, text: str, out: list[Signal]) -> None:
        """A plain-text line (a warning on stdout): skipped, unless the stream never turns to JSON."""
        out.append(Notice(text if len(text) <= _NOTICE_MAX else text[:_NOTICE_MAX] + "…"))
        if not self._seen_json:
            self._preamble += 1
            if self._preamble == self._max_preamble:
                out.append(ProtocolError(f"no JSON in the first {self._preamble} lines: {_preview(text)}"))

    def _quota(self, event: Mapping[str, Any], out: list[Signal]) -> None:
        info = event.get("rate_limit_info")
        if not isinstance(info, Mapping):
            return
        status = info.get("status")
        if not isinstance(status, str):
            return
        window = info.get("rateLimitType")
        utilization = info.get("utilization")
        overage = info.get("overageStatus")
        reset = _epoch(info.get("resetsAt"))
        out.append(
            QuotaReport(
                status=status,
                window=window if isinstance(window, str) else None,
                resets_at=reset,
                utilization=float(utilization) if _is_number(utilization) else None,
                overage=overage if isinstance(overage, str) else None,
            )
        )
        if info.get("isUsingOverage") is True:  # the plan's quota is spent: extra usage pays now
            out.append(ExtraUsage("Now using extra usage"))
        if status == "rejected":
            self._rate_limited(
                out, reset, f"rate limit rejected ({window if isinstance(window, str) else '?'})"
            )

    def _system(self, event: Mapping[str, Any], out: list[Signal]) -> None:
        subtype = event.get("subtype")
        if subtype == "init":
            session, model = event.get("session_id"), event.get("model")
            self.session_id = session if isinstance(session, str) else self.session_id
            self.model = model if isinstance(model, str) else self.model
        elif subtype == "api_retry":
            delay = event.get("retry_delay_ms")
            delay_s = delay / 1000.0 if _is_number(delay) else None
            attempt, most, status, error = (
                event.get("attempt"),
                event.get("max_retries"),
                event.get("error_status"),
                event.get("error"),
            )
            out.append(
                ApiRetry(
                    attempt=attempt if _is_int(attempt) else None,
                    max_retries=most if _is_int(most) else None,
                    delay_s=delay_s,
                    status=status if _is_int(status) else None,
                    error=error if isinstance(error, str) else "unknown",
                )
            )
            if error == "rate_limit":
                reset = self._wall() + delay_s if delay_s is not None else None
                shown = (attempt if _is_int(attempt) else "?", most if _is_int(most) else "?")
                self._rate_limited(out, reset, f"API retry {shown[0]}/{shown[1]}: rate_limit")

    def _assistant(self, event: Mapping[str, Any], out: list[Signal]) -> None:
        message = event.get("message")
        if not isinstance(message, Mapping):
            return
        texts = [
            block["text"]
            for block in message.get("content") or ()
            if isinstance(block, Mapping)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        ]
        if texts and self._head_is_live():
            self._texts.extend(texts)
            if sum(len(t) for t in self._texts) > 4 * self._max_result:
                self._texts = self._texts[-8:]
        usage = message.get("usage")
        if isinstance(usage, Mapping):
            self._context(usage, out)
        if texts and _is_api_error_message(event, message):
            self._api_error_message(event, "\n".join(texts), out)

    def _api_error_message(self, event: Mapping[str, Any], text: str, out: list[Signal]) -> None:
        """Claude Code's synthetic assistant message for an API failure (`is_api_error_message`,
        2.0.x `isApiErrorMessage`, `error`): the turn ends with it. A back-off ends the task now
        (the result that follows is dropped); the request's own fault is left to the result, which
        may claim success (`is_error: false`) and still must fail."""
        if self._scan_text(text, out):
            return  # a usage-limit notice with its reset time
        status = event.get("api_error_status")
        status = status if _is_int(status) else api_error_status(text)
        error = event.get("error")
        kind = api_error_kind(status, error if isinstance(error, str) else None, text)
        if kind is not None:
            self._backoff(kind, status, _preview(text.strip() or "no detail"), out)
        elif self._head_is_live():
            self._turn_error = text.strip() or "API error"

    def _context(self, usage: Mapping[str, Any], out: list[Signal]) -> None:
        tokens = 0
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            value = usage.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                tokens += int(value)
        if tokens <= 0:
            return
        used = round(min(100.0, 100.0 * tokens / self._window), 1)
        if used != self._scanner.last_context:
            self._scanner.last_context = used
            out.append(ContextUsage(used_percent=used))

    def _scan_text(self, text: str, out: list[Signal]) -> bool:
        """Usage-limit / context-exhausted text: report it; True when it ended the task."""
        for hit in self._scanner.scan(text + "\n", "", self._wall(), final=True):
            if hit.kind == "limit":
                assert isinstance(hit.signal, RateLimited)
                self._rate_limited(out, hit.signal.reset_at, hit.signal.message)
                return True
            if hit.kind == "exhausted":
                out.append(hit.signal)
                if self._head_is_live():
                    self._end_task(out, TaskFailed(reason=f"context exhausted: {hit.detail}"))
                return True
            if hit.kind == "context":
                out.append(hit.signal)
        return False

    def _rate_limited(self, out: list[Signal], reset_at: float | None, message: str) -> None:
        if self._limited:
            return
        self._limited = True
        signal = RateLimited(reset_at=reset_at, message=message)
        if self._head_is_live():
            self._end_task(out, signal)
        else:
            out.append(signal)  # an older, abandoned turn hit the limit: still news for the model

    def _result(self, event: Mapping[str, Any], out: list[Signal]) -> None:
        """The head turn's end: decide its task (if still live), then move on to the next turn."""
        texts, self._texts = self._texts, []
        raw = event.get("result")
        if self._head_is_live():
            result = raw if isinstance(raw, str) else "\n".join(texts)
            is_error = bool(event.get("is_error")) or event.get("subtype") not in (None, "success")
            if not is_error:
                short = len(result) <= _LIMIT_NOTICE_MAX
                if short and self._limit_notice(result, out):
                    pass  # a usage-limit notice: the model is parked, the task requeued
                elif short and self._api_error_result(result, out):
                    pass  # "API Error: 401 ..." / "Invalid API key · Please run /login" as the result
                elif self._turn_error is not None:
                    reason = _preview(self._turn_error)
                    self._end_task(out, TaskFailed(reason=reason, usage=result_usage(event)))
                else:
                    if len(result) > self._max_result:
                        result = "…[truncated]\n" + result[-self._max_result :]
                    self._end_task(out, TaskDone(result=result, usage=result_usage(event)))
            elif not self._api_error(event, result, out) and not self._scan_text(result, out):
                self._end_task(
                    out, TaskFailed(reason=_failure_reason(event, result), usage=result_usage(event))
                )
        elif not self._limited and event.get("is_error") and isinstance(raw, str):
            self._scan_text(raw, out)  # a limit reported after its task ended still parks the model
        if self._queue:
            self._queue.popleft()
        self._limited = False
        self._turn_error = None
        if self._queue:  # the next turn starts: its own report and question state
            self._scanner.reset_task()
        if not self._queue and self._task is None and not self._ready_reported:
            self._ready_reported = True
            out.append(Ready())

    def _api_error_result(self, text: str, out: list[Signal]) -> bool:
        """A "successful" result whose text is an API error line (older CLIs): never DONE."""
        m = API_ERROR_LINE.match(text.strip())
        if m is None:
            return False
        reason = m.group("reason")
        status = api_error_status(reason)
        kind = api_error_kind(status, None, reason)
        if kind is not None:
            self._backoff(kind, status, _preview(reason), out)
        else:
            self._end_task(out, TaskFailed(reason=_preview(reason)))
        return True

    def _limit_notice(self, text: str, out: list[Signal]) -> bool:
        """A short "done" result that is a usage-limit notice: the model is parked, the task requeued."""
        for hit in self._scanner.scan(text + "\n", "", self._wall(), final=True):
            if hit.kind == "limit":
                assert isinstance(hit.signal, RateLimited)
                self._rate_limited(out, hit.signal.reset_at, hit.signal.message)
                return True
        return False

    def _api_error(self, event: Mapping[str, Any], text: str, out: list[Signal]) -> bool:
        """An error result caused by the API, not by the task: True when it was reported as such.

        A 429 with a reset in its text waits for that reset; other API failures back the model off
        for a fixed while (the agent already retried them). Either way no attempt is counted. The
        rule (which status or text is which back-off) is patterns.api_error_kind, shared with the
        TUI dialects.
        """
        status = event.get("api_error_status")
        network = status is None and event.get("terminal_reason") == "api_error"
        if not _is_int(status):
            status = api_error_status(text) if network else None
        kind = api_error_kind(status, None, text) if status is not None else None
        if kind is None and network:
            kind = api_error_kind(None, None, text) or "network"
        if kind is None:
            return False
        if kind == "rate_limit" and self._scan_text(text, out):
            return True  # a usage-limit notice with its own reset time
        self._backoff(kind, status, _preview(_first_error(event) or text.strip() or "no detail"), out)
        return True

    def _backoff(self, kind: str, status: int | None, detail: str, out: list[Signal]) -> None:
        signal = api_backoff(
            kind,
            status,
            detail,
            self._wall(),
            overloaded_park_s=self._scanner.overloaded_park_s,
            auth_park_s=self._scanner.auth_park_s,
        )
        self._rate_limited(out, signal.reset_at, signal.message)


def _is_api_error_message(event: Mapping[str, Any], message: Mapping[str, Any]) -> bool:
    return bool(
        event.get("is_api_error_message")
        or event.get("isApiErrorMessage")
        or message.get("isApiErrorMessage")
        or isinstance(event.get("error"), str)
    )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _first_error(event: Mapping[str, Any]) -> str | None:
    """The `errors[]` texts of a result, joined (Claude Code's own words for what went wrong)."""
    errors = event.get("errors")
    if isinstance(errors, list):
        texts = [
            e if isinstance(e, str) else str(e.get("message", "")) if isinstance(e, Mapping) else ""
            for e in errors
        ]
        joined = "; ".join(t.strip() for t in texts if t and t.strip())
        return joined or None
    return None


_SUBTYPE_REASONS = {
    "error_max_turns": "reached the maximum number of turns",
    "error_during_execution": "error during execution",
    "error_max_budget_usd": "reached the maximum budget",
}


def _failure_reason(event: Mapping[str, Any], result: str) -> str:
    """Why a turn failed, in the agent's words: `errors[]`, else the result text, else the subtype."""
    reason = _first_error(event) or result.strip()
    if not reason:
        subtype = event.get("subtype")
        reason = _SUBTYPE_REASONS.get(subtype, subtype) if isinstance(subtype, str) else "error"
    return _preview(reason)


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return value / 1000.0 if value >= 10**12 else float(value)
    return None
