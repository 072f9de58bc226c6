"""The idle dialect: done after `idle_ms` of silence that follows at least `min_bytes` of output.

The seed pool's only heuristic, kept as the last resort for agents that offer nothing better. It
cannot tell "thinking quietly" from "finished": an agent silent for longer than `idle_ms` mid-task is
declared done. The echo of the typed prompt counts as output on a PTY, so raise `min_bytes` above the
prompt's size when the agent is slow to start answering. While a question is on screen (NeedsInput)
the silence is the agent waiting for an answer, not a finished task, so completion waits for new
output. Ready: after `idle_ms` of silence at start-up and after each task.
"""

from __future__ import annotations

from .base import Signal
from .common import Options, TextDialect


class IdleDialect(TextDialect):
    """Silence-based completion; see the module docstring."""

    name = "idle"
    default_transport = "pty"

    def _configure(self, opts: Options) -> None:
        self._idle_s = (opts.number("idle_ms", 2000.0, minimum=1.0) or 2000.0) / 1000.0
        self._min_bytes = opts.integer("min_bytes", 1, minimum=0)
        self._last_output: float | None = None  # None until the clock starts (first feed or tick)
        self._awaiting_answer = False

    def _on_bytes(self, data: bytes, now: float) -> None:
        if data or self._last_output is None:
            self._last_output = now

    def _after_hits(self, had_text: bool) -> None:
        if self._scanner.question_seen:
            self._awaiting_answer = True
        elif had_text:
            self._awaiting_answer = False

    def _quiet_since(self) -> float | None:
        if self._last_output is None:
            return None
        task = self._task
        return self._last_output if task is None else max(self._last_output, task.started)

    def _dialect_deadline(self) -> float | None:
        quiet = self._quiet_since()
        if quiet is None:
            return 0.0  # call tick() now to start the clock
        task = self._task
        if task is None:
            return None if self._ready_reported else quiet + self._idle_s
        if task.bytes < self._min_bytes or self._awaiting_answer:
            return None
        return quiet + self._idle_s

    def _dialect_tick(self, now: float, out: list[Signal]) -> None:
        if self._last_output is None:
            self._last_output = now
        deadline = self._dialect_deadline()
        if deadline is None or now < deadline:
            return
        if self._task is not None:
            self._finish_done(out, self._result(extra=self._pending))
        self._report_ready(True, out)

    def _task_started(self, now: float) -> None:
        self._awaiting_answer = False
