"""The oneshot dialect: one process per task (`claude -p {prompt}`), the exit status decides.

The worker substitutes `{prompt}` in the profile's argv and starts a process for each task; `encode`
is empty. On exit: status 0 gives TaskDone with what the process printed (ANSI removed), any other
status TaskFailed with the exit code and the last line printed, a signal TaskFailed naming it. When
the output is Claude's `--output-format json` (or stream-json) result object, its `result`,
`is_error` and usage are read as the stream-json dialect reads them (`output_format`: auto, text or
json): an API failure is a back-off (RateLimited), `errors[]` the failure reason. A usage-limit message in
the output gives RateLimited (which ends the task) even here. There is no Ready: the worker is ready
whenever no process runs.
"""

from __future__ import annotations

import json
from typing import Any

from ..tasks import Assignment
from .base import RateLimited, Signal, TaskDone, TaskFailed
from .common import Options, TextDialect
from .stream_json import StreamJsonDialect, result_usage


def _json_result(text: str) -> dict[str, Any] | None:
    """Claude's result object: the whole output, or its last line (stream-json)."""
    stripped = text.strip()
    if not stripped.endswith("}"):
        return None
    candidates = [stripped]
    last_line = stripped.rsplit("\n", 1)[-1]
    if last_line != stripped:
        candidates.append(last_line)
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and "result" in value and value.get("type", "result") == "result":
            return value
    return None


def _whole_is(text: str, parsed: dict[str, Any]) -> bool:
    """Whether the whole output is the one (maybe pretty-printed) result object."""
    try:
        return bool(json.loads(text.strip()) == parsed)
    except ValueError:
        return False


class OneshotDialect(TextDialect):
    """Exit-status completion; see the module docstring."""

    name = "oneshot"
    default_transport = "pipe"
    default_strip_chrome = False
    one_process_per_task = True

    def _configure(self, opts: Options) -> None:
        self._format = opts.choice("output_format", "auto", ("auto", "text", "json"))
        self._early: list[str] = []  # output that arrived before start_task (the worker spawns first)

    def _process(self, complete: str, now: float, out: list[Signal]) -> None:
        if self._task is None and sum(map(len, self._early)) < 4 * self._max_result:
            self._early.append(complete)
        super()._process(complete, now, out)

    def _task_started(self, now: float) -> None:
        if self._task is not None and self._early:
            self._task.capture.append("".join(self._early))
        self._early = []

    def encode(self, assignment: Assignment) -> bytes:
        return b""

    def encode_steps(self, assignment: Assignment) -> list[tuple[float, bytes]]:
        return []

    def _read_result(self, text: str, parsed: dict[str, Any], assignment: Assignment) -> Signal | None:
        """The outcome of Claude's result object, read by the stream-json dialect (one rule for
        `is_error`, `api_error_status`, `errors[]`, limit notices, API error messages): a JSON-lines
        output is fed whole, a single object as one line."""
        scanner = self._scanner
        reader = StreamJsonDialect(
            {"overloaded_park_s": scanner.overloaded_park_s, "auth_park_s": scanner.auth_park_s},
            wall_clock=self._wall,
        )
        reader.tick(self._now)
        reader.start_task(assignment, self._now)
        lines = text.strip().split("\n")
        single = len(lines) == 1 or not lines[-1].lstrip().startswith("{") or _whole_is(text, parsed)
        body = json.dumps(parsed) + "\n" if single else text.strip() + "\n"
        for decided in reader.feed(body.encode(), self._now) + reader.on_exit(0, None):
            if isinstance(decided, TaskDone | TaskFailed | RateLimited):
                return decided
        return None

    def _exited(self, exit_code: int | None, signal: int | None, out: list[Signal]) -> None:
        task = self._task
        if task is None:
            return
        text = task.capture.text()
        parsed = _json_result(text) if self._format != "text" else None
        if self._format == "json" and parsed is None and exit_code == 0:
            self._end_task(out, TaskFailed(reason="output is not a JSON result object", exit_code=exit_code))
            return
        if signal is not None:
            self._end_task(out, TaskFailed(reason=f"killed by signal {signal}"))
            return
        if parsed is not None:
            decided = self._read_result(text, parsed, task.assignment)
            result = parsed.get("result")
            result_text = result if isinstance(result, str) else ""
            if isinstance(decided, TaskDone) and exit_code not in (0, None):
                reason = result_text.strip() or f"exit code {exit_code}"
                self._end_task(out, TaskFailed(reason=reason[:500], exit_code=exit_code))
            elif isinstance(decided, TaskFailed):
                self._end_task(out, TaskFailed(decided.reason, exit_code=exit_code, usage=decided.usage))
            elif decided is not None:
                self._end_task(out, decided)
            else:
                self._finish_done(out, result_text, result_usage(parsed))
            return
        if exit_code == 0:
            self._finish_done(out, self._result())
            return
        last = next((line.strip() for line in reversed(text.split("\n")) if line.strip()), "")
        reason = f"exit code {exit_code}" + (f": {last[:300]}" if last else "")
        self._end_task(out, TaskFailed(reason=reason, exit_code=exit_code))
