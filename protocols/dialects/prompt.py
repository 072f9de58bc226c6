"""The prompt dialect: an interactive TUI (Claude Code by default) is done when its prompt box returns.

Claude Code redraws a dynamic region at the bottom of the screen: an optional spinner line, the prompt
(`>` or `❯`, often followed by a no-break space) inside a `╭─╮ │ > │ ╰─╯` box or between two `───`
rules, and a footer (`? for shortcuts`, `Context left until auto-compact: 8%`). The ANSI stripper
turns each redraw into a fresh run of lines, so the text stream is a sequence of *frames*. A frame is
busy when a spinner line in present tense (`✻ Thinking… (esc to interrupt)`, `Compacting
conversation…`) or `esc to interrupt` belongs to it: above its prompt (since the previous frame's
footer ended) or in its own footer. Past tense (`✻ Worked for 11m 47s`) is not busy.

Ready = the latest frame is closed (box drawn, or bottom rule seen) and neither it nor anything after
it is busy. A task is done at the first ready frame drawn after the task was written, once the agent
showed it worked on it (a busy frame, a `●` reply line or a past-tense spinner line; typing the prompt
into the box redraws a frame too, and that one must not count). Only lines holding a literal hint
(`───`, `…`, `to interrupt`, `●`, `✻`) are looked at, so a flood of ordinary output costs
one `str.find` per hint.

A TUI ends a failed turn the same way as a good one: its prompt comes back. What tells them apart is
an error line, Claude Code's `⎿  API Error: …` (or a `failure_patterns` match). patterns.py reads
it (one rule for every dialect): an API failure that is not the task's fault (429, 529, 5xx, 401/403,
"Invalid API key", a network failure) is a RateLimited at once (the model waits `overloaded_park_s`
or `auth_park_s`, the task goes back without an attempt counted); the request's own fault (400,
"Operation aborted") ends the task TaskFailed with that line as the reason, at the ready frame.
Retry lines (`Retrying in 4 seconds… (attempt 4/10)`, 2.1.x `✻ 529 Overloaded · retrying in 3s ·
attempt 3/3`) are ApiRetry: the turn goes on.
"""

from __future__ import annotations

import re
from typing import ClassVar

from .base import Signal, TaskFailed
from .common import _MAX_PENDING_EVAL, Event, Options, TextDialect

_OUT, _BOX, _FOOTER = 0, 1, 2

_RULE = re.compile(r"^[^\S\n]*[╭╰]?─{3,}", re.MULTILINE)
_PROMPT = re.compile(r"^\s*(?P<box>│)?\s*[>❯](?:\s+(?P<input>.*?))?\s*│?\s*$")
_MENU = re.compile(r"^\d+\.\s")
_SPINNER_GLYPH = re.compile(r"[^\S\n]*[·✢✳✶✻✽✦*⋆][^\S\n]")
_SPINNER = re.compile(r"^\s*[·✢✳✶✻✽✦*⋆]\s+[^\n…]{1,100}…")
_PAST = re.compile(r"^\s*[·✢✳✶✻✽✦*⋆]\s+\w+ for \d")  # "✻ Worked for 11m 47s": a turn just ended
_BULLET = re.compile(r"^[ \t]*[●⏺]", re.MULTILINE)
_PROMPT_ANY = re.compile(r"^[^\S\n]*│?[^\S\n]*[>❯](?=[^\S\n]|$)", re.MULTILINE)
_NONSPACE = re.compile(r"\S")
_BLANK_AFTER = re.compile(r"\n[^\S\n]*\n")
_LEADING_BLANK = re.compile(r"[^\S\n]*\n")


def _line(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end < 0 else end


class PromptDialect(TextDialect):
    """Screen-scraping completion for interactive TUIs; see the module docstring."""

    name = "prompt"
    default_transport = "pty"
    default_quit: ClassVar[str | None] = "/exit\r"

    def _configure(self, opts: Options) -> None:
        self._prompt_re = opts.regex("prompt_pattern", None)
        frame = opts.string("frame_pattern", None)
        self._use_frame = frame != ""
        self._frame_re = opts.regex("frame_pattern", None) if frame else None
        self._busy_res = opts.regexes("busy_patterns")
        self._require_activity = opts.flag("require_activity", True)
        # only the prompt dialect decides failure from the screen (the marker dialect's marker line
        # carries its own status)
        self._failure_res = opts.regexes("failure_patterns") if self.name == "prompt" else []
        self._failure_builtin = self.name == "prompt" and self._scanner.builtin
        self._failure: str | None = None  # the error line seen during the task in flight
        self._state = _OUT
        self._frame_seen = False
        self._frame_busy = False
        self._frame_closed = False
        self._cur_busy = False  # busy lines since the last frame's footer: they belong to the next frame
        self._rule_open: int | None = None  # a frame line (abs. position) with no non-blank line after it yet
        self._frame_rule = 0  # capture position of the latest frame's top rule (the result ends there)
        self._zone_end: int | None = None  # where the current footer ends in the chunk being handled
        self._chunk = ""
        self._typed_at: float | None = None  # when the newest frame was drawn, if its prompt holds text

    def unsent_input_since(self) -> float | None:
        """When the newest prompt frame still holds typed text while a task runs that the agent has
        shown no sign of working on: the time that frame was drawn (else None). Drawn after the task's
        Enter was written, it means the Enter was lost (Claude Code 2.0.x reads a task written the moment
        its prompt appears only once its input is raw, paste and Enter then arriving as pasted text);
        the worker presses Enter again."""
        task = self._task
        if task is None or task.activity:
            return None
        return self._typed_at

    # -- recognising lines ---------------------------------------------------------------------------

    def _prompt_input(self, line: str) -> tuple[str, bool] | None:
        """(typed text, boxed) when `line` is the prompt line, else None."""
        if self._prompt_re is not None:
            m = self._prompt_re.search(line)
            if not m:
                return None
            groups = m.groupdict()
            return (groups.get("input") or "").strip(), True
        m = _PROMPT.match(line)
        if not m:
            return None
        typed = (m.group("input") or "").strip()
        if _MENU.match(typed):
            return None  # "❯ 1. Yes": a selection menu, not the input prompt
        return typed, m.group("box") is not None

    def _is_busy(self, line: str) -> bool:
        if self._scanner.builtin and ("to interrupt" in line or ("…" in line and _SPINNER.match(line))):
            return True
        return any(p.search(line) for p in self._busy_res)

    def _is_frame_line(self, line: str) -> bool:
        if self._frame_re is not None:
            return self._frame_re.search(line) is not None
        return _RULE.match(line) is not None

    # -- scanning ------------------------------------------------------------------------------------

    def _task_started(self, now: float) -> None:
        self._failure = None
        if self._rule_open is not None:
            self._rule_open = 0

    def _scan(self, text: str) -> list[Event]:
        events: list[Event] = []
        base = self._task.capture.end - len(text) if self._task is not None else 0
        self._chunk = text
        self._zone_end = None
        if self._state == _FOOTER:
            self._zone_end = self._blank_from(text, 0)
        if not self._use_frame:
            pattern = self._prompt_re or _PROMPT_ANY
            for m in pattern.finditer(text):
                start, end = _line(text, m.start())
                found = self._prompt_input(text[start:end])
                if found is not None:
                    events.append(Event(start, "prompt", (True, base + start, found[0])))
        else:
            if self._rule_open is not None:
                first = _NONSPACE.search(text)
                if first:
                    start, end = _line(text, first.start())
                    found = self._prompt_input(text[start:end])
                    if found is not None:
                        events.append(Event(start, "prompt", (found[1], self._rule_open, found[0])))
                    self._rule_open = None
            for start, end in self._frame_lines(text):
                events.append(Event(start, "rule", end))
                after = _NONSPACE.search(text, end)
                if after is None:
                    self._rule_open = base + start
                    continue
                cstart, cend = _line(text, after.start())
                found = self._prompt_input(text[cstart:cend])
                if found is not None:
                    events.append(Event(cstart, "prompt", (found[1], base + start, found[0])))
        self._scan_busy(text, events)
        if self._task is not None and self._failure_res:
            self._scan_failure(text, events)
        task = self._task
        if task is not None and not task.activity:
            pos = text.find("✻")
            while pos >= 0:
                start, end = _line(text, pos)
                if _PAST.match(text[start:end]):
                    events.append(Event(start, "bullet"))
                    break
                pos = text.find("✻", end)
            for bullet in ("●", "⏺"):
                pos = text.find(bullet)
                while pos >= 0:
                    start, end = _line(text, pos)
                    if _BULLET.match(text, start):
                        events.append(Event(start, "bullet"))
                        break
                    pos = text.find(bullet, end)
        events.sort(key=lambda e: e.pos)
        return events

    def _frame_lines(self, text: str) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        if self._frame_re is not None:
            for m in self._frame_re.finditer(text):
                found.append(_line(text, m.start()))
            return found
        pos = text.find("───")
        while pos >= 0:
            start, end = _line(text, pos)
            if _RULE.match(text, start):
                found.append((start, end))
            pos = text.find("───", end)
        return found

    def _scan_busy(self, text: str, events: list[Event]) -> None:
        if self._scanner.builtin:
            for hint in ("to interrupt", "…"):
                pos = text.find(hint)
                while pos >= 0:
                    start, end = _line(text, pos)
                    spinner = _SPINNER_GLYPH.match(text, start) is not None
                    if hint != "…" or _SPINNER.match(text[start:end]):
                        events.append(Event(start, "busy", spinner))
                    pos = text.find(hint, end)
        for pattern in self._busy_res:
            for m in pattern.finditer(text):
                start = _line(text, m.start())[0]
                events.append(Event(start, "busy", _SPINNER_GLYPH.match(text, start) is not None))

    def _on_failure_line(self, reason: str) -> None:
        """Claude Code's `⎿  API Error: 400 …` (patterns.py decides which API errors are the task's)."""
        if self._failure_builtin and self._task is not None:
            self._task.activity = True  # the agent answered, with an error
            if self._failure is None:
                self._failure = reason or "failed"

    def _scan_failure(self, text: str, events: list[Event]) -> None:
        """`failure_patterns` lines: they end a turn as failed."""
        for pattern in self._failure_res:
            for m in pattern.finditer(text):
                start, end = _line(text, m.start())
                groups = m.groupdict()
                reason = groups.get("reason") or (m.group(1) if pattern.groups else None)
                events.append(Event(start, "failure", (reason or text[start:end]).strip()))

    @staticmethod
    def _blank_from(text: str, pos: int) -> int | None:
        """Start of the first blank line at or after line start `pos`, or None."""
        if pos == 0 and _LEADING_BLANK.match(text):
            return 0
        m = _BLANK_AFTER.search(text, max(0, pos - 1))
        return None if m is None else m.start() + 1

    # -- the frame state machine -----------------------------------------------------------------------

    def _handle(self, event: Event, base: int, now: float, out: list[Signal]) -> None:
        if self._state == _FOOTER and self._zone_end is not None and event.pos >= self._zone_end:
            self._state = _OUT
        kind = event.kind
        if kind == "rule":
            if self._state == _BOX:
                self._state = _FOOTER
                self._frame_closed = True
                self._zone_end = self._blank_from(self._chunk, event.data + 1)
        elif kind == "prompt":
            boxed, rule_pos, typed = event.data
            self._new_frame(boxed, rule_pos)
            self._typed_at = now if typed else None
        elif kind == "busy":
            self._busy(event.data)
        elif kind == "bullet" and self._task is not None:
            self._task.activity = True
        elif kind == "failure" and self._task is not None:
            self._task.activity = True  # the agent answered, with an error
            if self._failure is None:
                self._failure = event.data or "failed"

    def _new_frame(self, boxed: bool, rule_pos: int) -> None:
        self._frame_seen = True
        self._frame_busy = self._cur_busy
        self._cur_busy = False
        self._frame_closed = boxed
        self._state = _BOX
        self._scanner.clear_questions()
        if self._task is not None:
            self._task.frames += 1
            self._frame_rule = rule_pos

    def _busy(self, spinner: bool) -> None:
        if self._state == _FOOTER and not spinner:
            self._frame_busy = True  # "esc to interrupt" in this frame's footer
        else:
            # a spinner line starts the next frame (even without a blank line before it); in _BOX
            # a busy line means the "box" was not one (no bottom rule came): start over
            self._state = _OUT
            self._cur_busy = True
        if self._task is not None:
            self._task.activity = True
        self._scanner.clear_questions()

    def _settle(self, now: float, out: list[Signal]) -> None:
        ready, frames, activity, rule_pos = self._evaluate()
        task = self._task
        if task is not None and ready and frames > 0 and (activity or not self._require_activity):
            if self._failure is not None:
                self._end_task(out, TaskFailed(reason=self._failure))
            else:
                self._finish_done(out, self._result(rule_pos))
        self._report_ready(ready, out)

    def _evaluate(self) -> tuple[bool, int, bool, int]:
        """(ready, frames since the task started, activity seen, capture position of the frame).

        Closes the footer zone of the chunk just handled, then looks at the partial last line as if
        it were complete (a screen often ends inside the prompt box), on copies of the state: the line
        is processed for real once its newline arrives.
        """
        if self._state == _FOOTER and self._zone_end is not None:
            self._state = _OUT
            self._zone_end = None
        self._chunk = ""
        frame_seen, frame_busy, closed = self._frame_seen, self._frame_busy, self._frame_closed
        cur_busy, state = self._cur_busy, self._state
        task = self._task
        activity = task.activity if task is not None else False
        frames = task.frames if task is not None else 0
        rule_pos = self._frame_rule
        line = self._pending
        if line.strip() and len(line) <= _MAX_PENDING_EVAL:
            if self._is_busy(line):
                activity = True
                if state == _FOOTER and not _SPINNER_GLYPH.match(line):
                    frame_busy = True
                else:
                    cur_busy = True
            elif (self._rule_open is not None or not self._use_frame) and (
                found := self._prompt_input(line)
            ) is not None:
                frame_seen, frame_busy, cur_busy, closed = True, cur_busy, False, found[1]
                frames += 1
                if self._rule_open is not None:
                    rule_pos = self._rule_open
                else:  # no frame line: the result ends where this prompt line starts
                    rule_pos = task.capture.end if task is not None else 0
            elif state == _BOX and self._is_frame_line(line):
                closed = True
            if _BULLET.match(line) or _PAST.match(line):
                activity = True
        ready = frame_seen and closed and not frame_busy and not cur_busy
        return ready, frames, activity, rule_pos
