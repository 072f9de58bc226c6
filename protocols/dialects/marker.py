"""The marker dialect: the task is over when the agent prints a marker line.

Default marker: a line `SHOAL_DONE`, optionally `SHOAL_DONE status=failed reason=tests do not pass`
(what a Claude Code `Stop` hook of the claude-tui profile prints). `status` absent or one of ok, done,
success, succeeded, passed means TaskDone; any other status is TaskFailed with the reason. The result
is what the agent printed after the task was written, up to the marker line (TUI chrome removed
unless `strip_chrome` is false). The line may be decorated by a TUI (`● SHOAL_DONE`, `⎿ SHOAL_DONE`,
inside a box); an echoed prompt that merely contains the word does not match.

A task also ends when the agent's own hook says so: `hook_done` (called by the worker when the
claude-tui Stop hook reports through its FIFO, see actors/hooks.py) ends it with the hook's text, and
`hook_failed` (Claude Code's StopFailure hook: an API error ended the turn, after the CLI's own
retries) ends it as the stream-json dialect ends an API failure: RateLimited, so the task goes back
to the queue without an attempt counted and the model backs off (until the reset the message names,
or `overloaded_park_s` / `auth_park_s`); `invalid_request`, `max_output_tokens`, ... are TaskFailed.

Readiness (`ready` option): "immediate" (default: ready at once and after each marker), "prompt"
(Claude Code's prompt box, the prompt dialect's frame detection and its options) or a regex that a
line of output must match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .base import Signal, TaskFailed
from .common import _MAX_PENDING_EVAL, Event, Options
from .patterns import api_backoff, api_error_kind
from .prompt import PromptDialect

_DONE_STATUSES = frozenset({"ok", "done", "success", "succeeded", "passed", "pass", "0"})
_SETTLE_S = 0.05  # a marker line without a newline counts once the agent stayed quiet this long


def marker_regex(marker: str) -> re.Pattern[str]:
    """The default marker line for a literal marker word."""
    return re.compile(
        r"^[^\S\n]*(?:[│●⏺⎿][^\S\n]*)?"
        + re.escape(marker)
        + r"(?:[^\S\n]+status=(?P<status>[\w.-]+))?"
        + r"(?:[^\S\n]+reason=(?P<reason>[^\n]*?))?[^\S\n]*│?[^\S\n]*$",
        re.MULTILINE,
    )


class MarkerDialect(PromptDialect):
    """Done on a marker line; see the module docstring."""

    name = "marker"
    default_transport = "pty"
    default_quit = None

    def _configure(self, opts: Options) -> None:
        super()._configure(opts)
        marker = opts.string("marker", "SHOAL_DONE") or ""
        custom = opts.regex("marker_pattern", None)
        if not marker and custom is None:
            raise opts.error("marker", "must not be empty")
        self._marker_hint: str | None = None if custom is not None else marker
        self._marker_re = custom if custom is not None else marker_regex(marker)
        ready = opts.string("ready", "immediate") or "immediate"
        self._ready_mode = ready if ready in ("immediate", "prompt") else "regex"
        self._ready_re = opts.regex("ready", None) if self._ready_mode == "regex" else None
        self._ready_line_seen = False
        self._clock_started = False
        self._marker_deadline: float | None = None

    # -- scanning ------------------------------------------------------------------------------------

    def _scan(self, text: str) -> list[Event]:
        events = super()._scan(text) if self._ready_mode == "prompt" else []
        if self._ready_re is not None and not self._ready_line_seen and self._ready_re.search(text):
            self._ready_line_seen = True
        if self._marker_hint is None or self._marker_hint in text:
            for m in self._marker_re.finditer(text):
                start = text.rfind("\n", 0, m.start()) + 1
                events.append(Event(start, "marker", m.groupdict()))
            events.sort(key=lambda e: e.pos)
        return events

    def _handle(self, event: Event, base: int, now: float, out: list[Signal]) -> None:
        if event.kind != "marker":
            super()._handle(event, base, now, out)
            return
        if self._task is None:
            return  # a stale marker (the task already ended, e.g. timed out)
        groups: dict[str, Any] = event.data
        status = (groups.get("status") or "").strip()
        reason = (groups.get("reason") or "").strip()
        if not status or status.lower() in _DONE_STATUSES:
            self._finish_done(out, self._result(base + event.pos))
        else:
            self._end_task(out, TaskFailed(reason=reason or f"status={status}"))
        if self._ready_mode == "immediate":
            self._report_ready(True, out)

    def _settle(self, now: float, out: list[Signal]) -> None:
        if self._ready_mode == "prompt":
            ready = self._evaluate()[0]
        else:
            self._chunk = ""
            ready = self._ready_mode == "immediate" or self._ready_line_seen
            if not ready and self._ready_re is not None and self._pending:
                ready = self._ready_re.search(self._pending) is not None
        self._report_ready(ready and (self._clock_started or self._ready_mode != "immediate"), out)
        line = self._pending
        if (
            self._task is not None
            and line
            and len(line) <= _MAX_PENDING_EVAL
            and self._marker_re.search(line)
        ):
            self._marker_deadline = now + _SETTLE_S
        else:
            self._marker_deadline = None

    def hook_done(self, result: str, usage: Mapping[str, Any], now: float) -> list[Signal]:
        """The agent's Stop hook reported the end of its turn: end the running task with `result`
        (the screen's text when empty) and `usage`. Nothing when no task runs (a stale hook)."""
        out: list[Signal] = []
        if self._task is None:
            return out
        self._finish_done(out, result or self._result(), dict(usage))
        if self._ready_mode == "immediate":
            self._report_ready(True, out)
        return out

    def hook_failed(self, error: str, message: str, now: float) -> list[Signal]:
        """An API error ended the agent's turn (its StopFailure hook; `error` is Claude Code's kind,
        `message` its text): end the running task, see the module docstring. Nothing when no task
        runs (the screen's usage-limit text may have ended it first)."""
        out: list[Signal] = []
        if self._task is None:
            return out
        detail = " ".join(message.split())[:200] or "no detail"
        wall = self._wall()
        scanner = self._scanner
        kind = api_error_kind(None, error, detail)  # the rule stream-json and the screen use
        if kind == "rate_limit":
            for hit in scanner.scan(message + "\n", "", wall, final=True):
                if hit.kind == "limit":  # a usage-limit notice with its own reset time
                    self._end_task(out, hit.signal)
                    return out
        if kind is not None:
            park = {"overloaded_park_s": scanner.overloaded_park_s, "auth_park_s": scanner.auth_park_s}
            self._end_task(out, api_backoff(kind, None, detail, wall, **park))
        else:
            self._end_task(out, TaskFailed(reason=f"API error ({error or 'unknown'}): {detail}"))
        if self._ready_mode == "immediate":
            self._report_ready(True, out)
        return out

    # -- time: immediate readiness, a marker without its newline ------------------------------------------

    def _dialect_deadline(self) -> float | None:
        if not self._clock_started:
            return 0.0  # call tick() now: the clock starts and, by default, the agent is ready
        return self._marker_deadline

    def _dialect_tick(self, now: float, out: list[Signal]) -> None:
        if not self._clock_started:
            self._clock_started = True
            if self._ready_mode == "immediate":
                self._report_ready(True, out)
        if self._marker_deadline is not None and now >= self._marker_deadline:
            self._marker_deadline = None
            line, self._pending = self._pending, ""
            self._process(line + "\n", now, out)
            self._settle(now, out)

    def _task_started(self, now: float) -> None:
        super()._task_started(now)
        self._clock_started = True
