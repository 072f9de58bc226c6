"""The stream-json dialect: Claude Code's `-p --input-format stream-json --output-format stream-json`.

Input: one JSON line per task, `{"type":"user","message":{"role":"user","content":[{"type":"text",
"text": PROMPT}]}}`. Output: JSON lines, one event each (`system` init, `assistant`, `user` tool
results, `result`). The `result` event ends the turn: `is_error` false gives TaskDone(result, usage)
with `input_tokens`, `output_tokens`, cache tokens, `cost_usd` (from `total_cost_usd`), `duration_ms`
and `num_turns` when present; `is_error` true gives TaskFailed, or RateLimited when its text is a
usage-limit message. `system`/`api_retry` with `error: rate_limit` and a `rate_limit_event` whose
status is `rejected` give RateLimited (reset from `retry_delay_ms` / `resetsAt`), which ends the task.
Context usage is the last assistant message's prompt size over `context_window_tokens`.

Every user message gets exactly one result, in order; results of tasks that already ended here (timed
out, rate-limited) are dropped rather than credited to the next task. Invalid JSON or UTF-8 yields a
ProtocolError and parsing goes on with the next line.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..tasks import Assignment
from .base import (
    ContextUsage,
    ProtocolError,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
    Transport,
)
from .common import Options, TaskRun, WallClock, sanitize_prompt, scanner_from, timeout_reason

_PREVIEW = 120
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def result_usage(event: Mapping[str, Any]) -> dict[str, Any]:
    """The usage figures of a `result` event, flattened (tokens, cost_usd, duration_ms, num_turns)."""
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
        opts.finish()
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: drop bytes up to its newline
        self._queue: deque[TaskRun | None] = deque()  # one entry per user message awaiting its result
        self._task: TaskRun | None = None
        self._texts: list[str] = []  # assistant text of the current turn (fallback result)
        self._limited = False  # a rate limit was reported for the current turn
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
        try:
            event = json.loads(text)
        except ValueError as exc:
            out.append(ProtocolError(f"invalid JSON ({exc}): {_preview(text)}"))
            return
        if not isinstance(event, dict):
            out.append(ProtocolError(f"not a JSON object: {_preview(text)}"))
            return
        kind = event.get("type")
        if kind == "result":
            self._result(event, out)
        elif kind == "assistant":
            self._assistant(event, out)
        elif kind == "system":
            self._system(event, out)
        elif kind == "rate_limit_event":
            info = event.get("rate_limit_info")
            if isinstance(info, Mapping) and info.get("status") == "rejected":
                reset = info.get("resetsAt")
                self._rate_limited(
                    out, _epoch(reset), f"rate limit rejected ({info.get('rateLimitType', '?')})"
                )
        elif kind is None:
            out.append(ProtocolError(f"event without a type: {_preview(text)}"))

    def _system(self, event: Mapping[str, Any], out: list[Signal]) -> None:
        subtype = event.get("subtype")
        if subtype == "init":
            session, model = event.get("session_id"), event.get("model")
            self.session_id = session if isinstance(session, str) else self.session_id
            self.model = model if isinstance(model, str) else self.model
        elif subtype == "api_retry" and event.get("error") == "rate_limit":
            delay = event.get("retry_delay_ms")
            reset = None
            if isinstance(delay, int | float) and not isinstance(delay, bool):
                reset = self._wall() + delay / 1000.0
            attempt, most = event.get("attempt", "?"), event.get("max_retries", "?")
            self._rate_limited(out, reset, f"API retry {attempt}/{most}: rate_limit")

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
        if texts and (
            event.get("error") or event.get("isApiErrorMessage") or message.get("isApiErrorMessage")
        ):
            self._scan_text("\n".join(texts), out)

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
        for hit in self._scanner.scan(text + "\n", "", self._wall()):
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
                if len(result) > self._max_result:
                    result = "…[truncated]\n" + result[-self._max_result :]
                self._end_task(out, TaskDone(result=result, usage=result_usage(event)))
            elif not self._scan_text(result, out):
                subtype = event.get("subtype")
                reason = result.strip() or (subtype if isinstance(subtype, str) else "error")
                self._end_task(out, TaskFailed(reason=_preview(reason)))
        elif not self._limited and event.get("is_error") and isinstance(raw, str):
            self._scan_text(raw, out)  # a limit reported after its task ended still parks the model
        if self._queue:
            self._queue.popleft()
        self._limited = False
        if self._queue:  # the next turn starts: its own report and question state
            self._scanner.reset_task()
        if not self._queue and self._task is None and not self._ready_reported:
            self._ready_reported = True
            out.append(Ready())


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return value / 1000.0 if value >= 10**12 else float(value)
    return None
