"""Machinery shared by the text dialects (prompt, marker, idle, oneshot): options, tasks, capture.

`TextDialect` strips ANSI incrementally, cuts the text into complete lines plus one pending partial
line, runs the common patterns (context, usage limit, needs input, context exhausted) and the
dialect's own scanner over each complete chunk, and dispatches all findings in the order they appear
on screen. It owns the task life cycle: one terminal signal per task (TaskDone, TaskFailed, or a
RateLimited that ends it), the task timeout, and the captured output a result is cut from.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, NamedTuple

from ..errors import ValidationError
from ..tasks import Assignment
from .ansi import AnsiStripper, strip_ansi
from .base import Ready, Signal, TaskDone, TaskFailed, Transport
from .patterns import Hit, PatternScanner

WallClock = Callable[[], float]

_LOOKBACK = 4096  # text kept before each chunk for look-back (questions above their options)
_MAX_PENDING_EVAL = 4096  # a partial line longer than this is not a prompt, footer or marker
_MAX_PENDING = 65536  # a "line" longer than this is cut, so one endless line cannot grow without bound


class Options:
    """Validated access to a dialect's options; names not read are refused by `finish()`."""

    def __init__(self, dialect: str, raw: Mapping[str, Any] | None) -> None:
        if raw is not None and not isinstance(raw, Mapping):
            raise ValidationError("options", f"dialect {dialect!r} options must be a table", raw)
        self.dialect = dialect
        self.raw: dict[str, Any] = dict(raw or {})
        self.used: set[str] = set()

    def _get(self, name: str) -> Any:
        self.used.add(name)
        return self.raw.get(name)

    def error(self, name: str, message: str) -> ValidationError:
        return ValidationError(f"options.{name}", message, self.raw.get(name))

    def string(self, name: str, default: str | None) -> str | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, "must be a string")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def number(self, name: str, default: float | None, *, minimum: float = 0.0) -> float | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise self.error(name, "must be a number")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum:g}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, "must be an integer")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}")
        return value

    def choice(self, name: str, default: Any, allowed: Collection[Any]) -> Any:
        value = self._get(name)
        if value is None:
            return default
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise self.error(name, "must be one of " + ", ".join(repr(a) for a in allowed))
        return value

    def regex(self, name: str, default: str | None, *, flags: int = re.MULTILINE) -> re.Pattern[str] | None:
        value = self.string(name, default)
        if value is None or value == "":
            return None
        return self._compile(name, value, flags)

    def regexes(self, name: str, *, flags: int = re.MULTILINE) -> list[re.Pattern[str]]:
        """A list of regexes (a single string is a list of one)."""
        value = self._get(name)
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise self.error(name, "must be a regex or a list of regexes")
        return [self._compile(name, item, flags) for item in items]

    def _compile(self, name: str, pattern: str, flags: int) -> re.Pattern[str]:
        try:
            return re.compile(pattern, flags)
        except re.error as exc:
            raise ValidationError(f"options.{name}", f"invalid regex: {exc}", pattern) from None

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ValidationError(
                f"options.{unknown[0]}",
                f"unknown option for dialect {self.dialect!r}; known: {', '.join(sorted(self.used))}",
                self.raw[unknown[0]],
            )


def scanner_from(opts: Options) -> PatternScanner:
    """The pattern scanner every dialect configures from the same common options."""
    return PatternScanner(
        overloaded_park_s=opts.number("overloaded_park_s", 60.0) or 0.0,
        auth_park_s=opts.number("auth_park_s", 300.0) or 0.0,
        builtin=opts.flag("builtin_patterns", True),
        context=opts.regexes("context_patterns"),
        exhausted=opts.regexes("context_exhausted_patterns"),
        usage_limit=opts.regexes("usage_limit_patterns"),
        needs_input=opts.regexes("needs_input_patterns"),
    )


class Capture:
    """Text printed since a task was written, keeping the last `keep` characters (bounded memory)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._parts: list[str] = []
        self._size = 0
        self.start = 0  # absolute offset of the first character still held

    @property
    def end(self) -> int:
        return self.start + self._size

    def append(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self._keep:
            joined = "".join(self._parts)
            drop = len(joined) - self._keep
            self._parts = [joined[drop:]]
            self.start += drop
            self._size = self._keep

    def text(self, upto: int | None = None) -> str:
        joined = "".join(self._parts)
        self._parts = [joined] if joined else []
        if upto is None:
            return joined
        return joined[: max(0, upto - self.start)]


class TaskRun:
    """The task in flight: what was assigned, its deadline, its captured output, per-dialect flags."""

    __slots__ = ("activity", "assignment", "bytes", "capture", "deadline", "frames", "started", "timeout")

    def __init__(self, assignment: Assignment, now: float, timeout: float | None, keep: int) -> None:
        self.assignment = assignment
        self.started = now
        self.timeout = timeout
        self.deadline = None if timeout is None else now + timeout
        self.capture = Capture(keep)
        self.activity = False  # the agent visibly started working on it (prompt dialect)
        self.frames = 0  # prompt frames drawn since it was written (prompt dialect)
        self.bytes = 0  # raw bytes received since it was written (idle dialect)


class Event(NamedTuple):
    """A dialect-specific finding at `pos` in a chunk of complete text."""

    pos: int
    kind: str
    data: Any = None


def timeout_reason(timeout: float) -> str:
    return f"timeout after {timeout:g}s"


def sanitize_prompt(prompt: str) -> str:
    """Text to type: no escape sequences (a prompt must not end a bracketed paste or drive the TUI)."""
    return prompt.replace("\x1b", "")


# ----------------------------------------------------------------------------------------------------
# result cleaning: what Claude Code's TUI draws around the answer

_BULLET = re.compile(r"^[ \t]*[●⏺][ \t\xa0]?")
_RULE_LINE = re.compile(r"^\s*[╭╰├]?[─━═╌]{3,}")
_BOX_LINE = re.compile(r"^\s*[│┃]")
_SPINNER_LINE = re.compile(r"^\s*[·✢✳✶✻✽✦*⋆]\s+(?:[^\n…]{1,100}…|\w+ for \d[\dhms .]*$)")
_CHEVRON = re.compile(r"^\s*[>❯](?:\s|$)")
_PROGRAM_PROMPT = re.compile(r"[$#%>❯›»]\s*$")  # how a shell's or a REPL's own prompt ends
_DIALOG_LINE = re.compile(
    r"^\s*(?:[❯>›]\s*)?\d\.\s+(?:Yes|No)\b|^\s*(?:Do you (?:want|trust)|Would you like)[^?]*\?\s*$"
)
_FOOTER_WORDS = (
    "? for shortcuts",
    "Context left until auto-compact",
    "to interrupt",
    "⏵⏵",
    "accept edits on",
    "shift+tab to cycle",
    "Esc to cancel",
    "[Pasted text #",
)
_FOOTER = re.compile("|".join(re.escape(word) for word in _FOOTER_WORDS), re.IGNORECASE)
_CHROME_LINE = re.compile("|".join(f"(?:{p.pattern})" for p in (_BOX_LINE, _SPINNER_LINE, _DIALOG_LINE)))


def _strip_screen(lines: list[str]) -> list[str]:
    """Drop what the TUI draws around the text: frames (a rule, the prompt, a rule and the footer
    below, up to the next blank line), boxes, spinner lines, dialogs and footer words."""
    kept: list[str] = []
    in_frame = False
    chrome = _CHROME_LINE.match
    footer = _FOOTER.search
    for line in lines:
        if not line or line.isspace():
            in_frame = False
            kept.append("")
        elif _RULE_LINE.match(line):
            in_frame = True
        elif not in_frame and not chrome(line) and not footer(line):
            kept.append(line)
    return kept


def _echo_piece(line: str, rest: str) -> int | None:
    """How much of the prompt's remaining echo `rest` this line shows (None: not the echo).

    A line is the echo when it continues the prompt (a wrapped line) or ends with its start after
    the program's own prompt (`$ echo hi`)."""
    if not rest:
        return None
    if rest.startswith(line):
        return len(line)
    start = line.find(rest[:20])
    if start >= 0 and rest.startswith(line[start:]):
        return len(line) - start
    return None


def _text_column(line: str, text: str) -> int | None:
    """Where `text` (whitespace collapsed) starts in `line` if `line` ends with it, else None.

    Matched backwards in one pass: a space in `text` stands for any run of blanks in `line`."""
    if not text:
        return None
    i, j = len(line.rstrip()), len(text)
    while i > 0 and j > 0:
        if text[j - 1] == " ":
            if not line[i - 1].isspace():
                return None
            while i > 0 and line[i - 1].isspace():
                i -= 1
        elif line[i - 1] == text[j - 1]:
            i -= 1
        else:
            return None
        j -= 1
    return i if j == 0 else None


def _redrawn(line: str, echo: str, column: int) -> bool:
    """Whether `line` draws the one-line echo `echo` again in place, as readline redisplays a pasted
    line: the same text from the same `column`, the program's prompt before it drawn again or stepped
    over (cursor-forward, blanks). The same text anywhere else is the agent's output."""
    if line[column:] != echo[column:]:
        return False
    head = line[:column]
    return head == echo[:column] or head.isspace()


def _prompted_echo(line: str, full: str, *, shaped: bool) -> tuple[str, int] | None:
    """(line, text column) when `line` is the whole prompt `full` after the program's own prompt;
    `shaped`: that prompt must also look like one (end in `$ # % > ❯ › »`), not prose (`You said:`)."""
    column = _text_column(line, full)
    if column is None or not line[:column].strip():
        return None
    if shaped and (column > 80 or not _PROGRAM_PROMPT.search(line, 0, column)):
        return None
    return line, column


def _reply_start(lines: list[str], prompt: str) -> int:
    """Index of the first line after the leading echo of `prompt`: what the agent printed starts there.

    The echo is the prompt's text at the start of the transcript, maybe after the program's own
    prompt (`$ `, `> `) and wrapped over several lines. Once it is complete, only more echoes of it
    are skipped: redraws in place (readline redisplays a pasted line) and, after an echo without a
    program prompt, the same line once more after one (typed before the program read it, the
    terminal echoed it, then the program's line editor drew it after its prompt). The first other
    line starts the reply, and from there every line is kept even when it equals or contains the
    prompt (an agent told to repeat it, a REPL printing a value back, `cat`).
    """
    full = " ".join(prompt.split())
    if not full:
        return 0
    rest = full  # what of the prompt's echo is still to come
    echo: tuple[str, int] | None = None  # a one-line echo after a program prompt, and its text column
    for i, line in enumerate(lines):
        core = " ".join(_CHEVRON.sub("", line).split())
        if not core:
            continue
        if rest:
            eaten = _echo_piece(core, rest)
            if eaten is None:
                return i
            if rest == full and eaten == len(full):
                echo = _prompted_echo(line, full, shaped=False)
            rest = rest[eaten:].lstrip()
            continue
        if echo is not None:
            if not _redrawn(line, *echo):
                return i
        elif (echo := _prompted_echo(line, full, shaped=True)) is None:
            return i
    return len(lines)


def clean_tui(text: str, prompt: str, *, truncated: bool = False) -> str:
    """The answer inside a captured TUI transcript.

    Claude Code prints its answer as `●` bullets with two-space hanging indents, above a dynamic
    region (spinner, prompt box, footer, dialogs) that is redrawn and erased. The screen's own lines
    are dropped first; then, when bullets exist, only bullet blocks are kept (a bullet line and its
    indented continuation, ended by an unindented line such as the echoed prompt); otherwise what
    remains after the leading echo of the prompt. `truncated`: the text starts mid-output (inside a
    bullet block, after the echo). Erased frames cannot be told apart from printed text without a
    terminal emulator, so this is a heuristic for results and logs, not a transcript.
    """
    lines = _strip_screen([line.rstrip() for line in text.split("\n")])
    out: list[str] = []
    if any(_BULLET.match(line) for line in lines):
        keep = truncated
        for line in lines:
            m = _BULLET.match(line)
            if m:
                keep = True
                out.append(line[m.end() :])
            elif not line:
                if keep:
                    out.append("")
            elif line[:1] in (" ", "\t") and keep:
                out.append(line[2:] if line.startswith("  ") else line.lstrip())
            else:
                keep = False
    else:
        out = lines if truncated else lines[_reply_start(lines, prompt) :]
    # collapse runs of blank lines, trim the ends
    result: list[str] = []
    for line in out:
        if line or (result and result[-1]):
            result.append(line)
    while result and not result[-1]:
        result.pop()
    return "\n".join(result)


# ----------------------------------------------------------------------------------------------------
# last words: the readable end of an agent's output, for crash reasons

_PROMPT_ONLY = re.compile(r"^\s*[$#%>❯›»]?[\s\xa0]*$")
_ERRORISH = re.compile(
    r"\b(?:error|unable|failed|fail|cannot|can't|could not|denied|not found|invalid|refused|"
    r"unauthori[sz]ed|forbidden|exception|fatal|panic|abort(?:ed)?|timed? ?out)\b",
    re.IGNORECASE,
)


def last_words(data: bytes | str, *, max_lines: int = 4, max_chars: int = 240) -> str:
    """The last meaningful lines of terminal output, as one line (empty when there are none).

    Why: a crash reason must say what the agent said, not echo its screen. Escape sequences and
    control characters are stripped (cursor moves become line breaks), the TUI's chrome is dropped
    (frames and boxes, the prompt line, spinner lines, dialogs, footers such as "? for shortcuts"),
    and so are lines with no letter or digit. Of the last `max_lines` lines left, an error-looking
    line (with the error lines right above it) and what follows are preferred (an agent often prints
    hints after its error); lines are joined with " · " and cut to `max_chars`.
    """
    meaningful: list[str] = []
    in_footer = False
    for line in strip_ansi(data).split("\n"):
        if _FOOTER.search(line) or (in_footer and line.startswith("  ")):
            in_footer = True  # a footer, or its wrapped continuation
            continue
        in_footer = False
        if (
            not _PROMPT_ONLY.match(line)
            and any(ch.isalnum() for ch in line)
            and not _RULE_LINE.match(line)  # line by line: text right below a frame is kept
            and not _CHEVRON.match(line)  # the prompt line (and the echo of a prompt)
            and not _CHROME_LINE.match(line)
        ):
            meaningful.append(" ".join(line.split()))
    tail = meaningful[-max_lines:]
    errors = [i for i, line in enumerate(tail) if _ERRORISH.search(line)]
    if errors:  # the last run of error lines, and what follows it
        start = errors[-1]
        while start > 0 and start - 1 in errors:
            start -= 1
        tail = tail[start:]
    text = " · ".join(tail)
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


class TextDialect:
    """Base of the dialects that read terminal text; subclasses scan for their own completion."""

    name: str = "text"
    default_transport: ClassVar[Transport] = "pty"
    default_quit: ClassVar[str | None] = None
    default_strip_chrome: ClassVar[bool] = True
    one_process_per_task: bool = False

    def __init__(
        self, options: Mapping[str, Any] | None = None, *, wall_clock: WallClock = time.time
    ) -> None:
        opts = Options(self.name, options)
        self._wall = wall_clock
        self.transport: Transport = opts.choice("transport", self.default_transport, ("pty", "pipe"))
        self._scanner = scanner_from(opts)
        self._max_result = opts.integer("max_result_chars", 100_000, minimum=1)
        self._default_timeout = opts.number("task_timeout_s", None, minimum=0.001)
        self._strip_chrome = opts.flag("strip_chrome", self.default_strip_chrome)
        self._paste: bool | str = opts.choice("bracketed_paste", "auto", ("auto", True, False))
        self._submit = opts.string("submit", None)
        self._submit_delay = (opts.number("submit_delay_ms", 80.0) or 0.0) / 1000.0
        self._quit = opts.string("quit", self.default_quit)
        self._configure(opts)
        opts.finish()
        self._stripper = AnsiStripper()
        self._pending = ""
        self._lookback = ""
        self._task: TaskRun | None = None
        self._ready_reported = False
        self._now = 0.0  # the latest time passed in (on_exit gets none)

    # -- hooks for subclasses ----------------------------------------------------------------------

    def _configure(self, opts: Options) -> None:
        """Read dialect-specific options."""

    def _scan(self, text: str) -> list[Event]:
        """Dialect-specific findings in a chunk of complete lines."""
        return []

    def _handle(self, event: Event, base: int, now: float, out: list[Signal]) -> None:
        """Act on one of `_scan`'s events; `base` is the chunk's absolute capture offset."""

    def _settle(self, now: float, out: list[Signal]) -> None:
        """After a chunk: decide readiness/completion, possibly looking at the pending partial line."""

    def _dialect_deadline(self) -> float | None:
        return None

    def _dialect_tick(self, now: float, out: list[Signal]) -> None:
        """Time-based decisions (idle dialect)."""

    # -- the Dialect contract ----------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Signal]:
        out: list[Signal] = []
        self._now = now
        self._check_timeout(now, out)
        if self._task is not None:
            self._task.bytes += len(data)
        self._on_bytes(data, now)
        text = self._stripper.feed(data)
        if text:
            self._consume(text, now, out)
        return out

    def start_task(self, assignment: Assignment, now: float) -> None:
        timeout = assignment.timeout_s if assignment.timeout_s is not None else self._default_timeout
        self._task = TaskRun(assignment, now, timeout, keep=self._window())
        self._ready_reported = False
        self._scanner.reset_task()
        self._task_started(now)

    def _task_started(self, now: float) -> None:
        """Per-dialect reset when a task starts."""

    def encode(self, assignment: Assignment) -> bytes:
        return b"".join(part for _, part in self.encode_steps(assignment))

    def encode_steps(self, assignment: Assignment) -> list[tuple[float, bytes]]:
        """(delay_s, bytes) writes: a bracketed paste, then Enter after `submit_delay_ms`.

        Claude Code may swallow an Enter that arrives in the same read as the end of a paste; a worker
        that can wait between writes should write these steps with their delays, one that cannot
        writes `encode()` (the same bytes, at once).
        """
        submit = (
            self._submit if self._submit is not None else "\r" if self.transport == "pty" else "\n"
        ).encode()
        prompt = sanitize_prompt(assignment.prompt)
        paste = self._paste is True or (self._paste == "auto" and self._stripper.bracketed_paste)
        if paste:
            return [(0.0, b"\x1b[200~" + prompt.encode() + b"\x1b[201~"), (self._submit_delay, submit)]
        return [(0.0, prompt.encode() + submit)]

    def tick(self, now: float) -> list[Signal]:
        out: list[Signal] = []
        self._now = now
        self._check_timeout(now, out)
        self._dialect_tick(now, out)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self._task_deadline(), self._dialect_deadline()) if d is not None]
        return min(deadlines) if deadlines else None

    def on_exit(self, exit_code: int | None, signal: int | None) -> list[Signal]:
        out: list[Signal] = []
        tail = self._stripper.flush() + self._pending
        self._pending = ""
        if tail:
            self._process(tail if tail.endswith("\n") else tail + "\n", self._now, out)
        for hit in self._scanner.flush(self._wall()):  # a held last line: nothing more will come
            self._on_hit(hit, out)
        self._exited(exit_code, signal, out)
        return out

    def _exited(self, exit_code: int | None, signal: int | None, out: list[Signal]) -> None:
        """The process ended (oneshot decides here)."""

    def quit_bytes(self) -> bytes | None:
        return None if self._quit is None else self._quit.encode()

    # -- internals ---------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes, now: float) -> None:
        """Raw bytes arrived (idle dialect watches silence)."""

    def _task_deadline(self) -> float | None:
        return self._task.deadline if self._task is not None else None

    def _check_timeout(self, now: float, out: list[Signal]) -> None:
        task = self._task
        if task is not None and task.deadline is not None and now >= task.deadline:
            self._end_task(out, TaskFailed(reason=timeout_reason(task.timeout or 0.0)))

    def _end_task(self, out: list[Signal], signal: Signal) -> None:
        out.append(signal)
        self._task = None

    def _consume(self, text: str, now: float, out: list[Signal]) -> None:
        combined = self._pending + text if self._pending else text
        cut = combined.rfind("\n") + 1
        if cut == 0 and len(combined) > _MAX_PENDING:
            cut = len(combined)
        if cut:
            self._pending = combined[cut:]
            self._process(combined[:cut], now, out)
        else:
            self._pending = combined
        if self._pending and len(self._pending) <= _MAX_PENDING_EVAL:
            out.extend(hit.signal for hit in self._scanner.scan_context(self._pending))
        self._settle(now, out)

    def _process(self, complete: str, now: float, out: list[Signal]) -> None:
        task = self._task
        base = 0
        if task is not None:
            base = task.capture.end
            task.capture.append(complete)
        hits = self._scanner.scan(complete, self._lookback, self._wall())
        events = self._scan(complete)
        items: list[Hit | Event] = [*hits, *events]
        if hits and events:
            items.sort(key=lambda item: item.pos)
        for item in items:
            if isinstance(item, Hit):
                self._on_hit(item, out)
            else:
                self._handle(item, base, now, out)
        self._after_hits(bool(complete.strip()))
        if len(complete) >= _LOOKBACK:
            self._lookback = complete[-_LOOKBACK:]
        else:
            self._lookback = (self._lookback + complete)[-_LOOKBACK:]

    def _after_hits(self, had_text: bool) -> None:
        """After the common patterns ran over a chunk (idle dialect tracks pending questions)."""

    def _on_hit(self, hit: Hit, out: list[Signal]) -> None:
        if hit.kind == "exhausted":
            if self._task is not None:
                self._end_task(out, TaskFailed(reason=f"context exhausted: {hit.detail}"))
            return
        if hit.kind in ("limit", "api_backoff") and self._task is not None:
            self._end_task(out, hit.signal)  # the agent will not answer this task
            return
        if hit.kind == "api_failure":
            self._on_failure_line(hit.detail)  # decided when the turn ends (prompt dialect)
            return
        out.append(hit.signal)

    def _on_failure_line(self, reason: str) -> None:
        """An error line that ends the turn as failed (the API refused the request itself)."""

    def _window(self) -> int:
        """Characters of output a result is cut from: the answer is at the end of long output."""
        return max(2 * self._max_result, 65536)

    def _result(self, upto: int | None = None, *, extra: str = "") -> str:
        task = self._task
        if task is None:
            return ""
        text = task.capture.text(upto) + extra
        truncated = task.capture.start > 0
        if len(text) > self._window():
            text = text[-self._window() :]
            truncated = True
        prompt = task.assignment.prompt
        result = clean_tui(text, prompt, truncated=truncated) if self._strip_chrome else text.strip("\n")
        if len(result) > self._max_result:
            result = "…[truncated]\n" + result[-self._max_result :]
        return result

    def _report_ready(self, ready: bool, out: list[Signal]) -> None:
        """Edge-triggered Ready while no task runs."""
        if self._task is not None:
            return
        if ready and not self._ready_reported:
            out.append(Ready())
        self._ready_reported = ready

    def _finish_done(self, out: list[Signal], result: str, usage: dict[str, Any] | None = None) -> None:
        self._end_task(out, TaskDone(result=result, usage=usage or {}))
