#!/usr/bin/env python3
"""A fake Claude Code: a faithful, scriptable stand-in for tests, demos and benchmarks.

Modes, chosen like Claude Code chooses them:

* default: the interactive TUI (run it in a PTY): welcome box, prompt between `───` rules (or in a
  `╭─╮` box with `--tui-style box`) with `>` and a no-break space, `? for shortcuts`, a spinner
  `✻ Thinking… (3s · esc to interrupt)` while busy, `● reply` lines, `Context left until
  auto-compact: N%` once little context is left, colours, Ink-style erase-and-redraw, bracketed paste.
* `--marker`: the same TUI, plus a `SHOAL_DONE` line after each turn (`SHOAL_DONE status=failed
  reason=...` on failure), as the claude-tui profile's Stop hook prints.
* `-p/--print --input-format stream-json --output-format stream-json`: JSON lines on stdin/stdout.
* `-p PROMPT` (or the prompt on stdin): one answer, then exit (`--output-format text|json|stream-json`).

Claude's own flags (--model, --dangerously-skip-permissions, --verbose, --permission-mode,
--settings, ...) are accepted and ignored, but for `--resume ID` (headless modes): as Claude Code, the
agent keeps each conversation in a JSON-lines file, `<dir>/projects/<cwd with non-alphanumerics as
->/<session id>.jsonl` (dir: `FAKE_CLAUDE_SESSIONS`, else `CLAUDE_CONFIG_DIR`; neither set: nothing is
kept), and `--resume ID` goes on with that conversation (the same session id, its context) when it was
kept for this working directory, else it answers "No conversation found with session ID: ID" and exits 1.
Shoal's flags: `--marker`, `--startup-delay S`, `--no-ready`
(never shows the prompt / never answers), `--context-step N` (context % used per task, default 7),
`--context-start N`, `--ignore-sigterm`, `--tui-style rule|box`, `--trust-dialog[=plain]` (the trust
dialog first), `--menu-deaf S` (menus ignore keys this long after drawing; default 0.2),
`--paste-window S` (an Enter within S seconds of a paste's end is taken as pasted text, as 2.0.x does).

Directives inside a prompt, any number, `[[name]]` or `[[name:value]]`, script that task:
`[[think:SECONDS]]`, `[[output:BYTES]]` (reply of exactly that many bytes), `[[crash:CODE]]` (exit with
CODE mid-task after printing a bit), `[[hang]]` (never finish), `[[ratelimit:EPOCH]]` or
`[[ratelimit:+SECONDS]]` (Claude's usage-limit message, no answer), `[[ask]]` (a permission prompt;
"1" then Enter proceeds, "2" or Esc refuses), `[[context:N]]` (context used becomes N%; 100 or more:
context exhausted mid-task, and every later task too until /clear or /compact), `[[fail:REASON]]`
(finish with failure; the TUI prints Claude Code's error line `⎿  API Error: REASON`),
`[[flood:MB]]` (that many MB of ANSI-heavy output, fast), `[[echo]]` (reply with the prompt text),
`[[recall]]` (headless: reply "Recalled: " and the earlier prompts of this conversation, `|`-separated,
directives removed: what a resumed conversation remembers),
`[[limitmenu]]` / `[[limitmenu:+SECONDS]]` (2.1.x's usage-limit menu: "What do you want to do? ❯ 1.
Stop and wait for limit to reset"), `[[trust]]` (the trust dialog mid-turn; `--trust-dialog[=plain]`
shows it at start, as 2.1.212 or, plain, as 2.1.332 without numbers), `[[picker]]` (the /model
picker). Menus take a digit at once, arrows and Enter, or Esc, and ignore keys for 0.2 s after drawing.
What Claude Code says about its API and quota (issue 16), each in the headless and the TUI form:
`[[notice:TEXT]]` (a plain warning line on stdout before the JSON; a line on the TUI screen),
`[[retry:COUNT]]` or `[[retry:COUNT,STATUS,DELAY_S]]` (the API fails COUNT times with STATUS, default
529, DELAY_S apart, default 0.5: `system/api_retry` events, or under the TUI's spinner 2.1.x's words
"⎿  529 Overloaded · retrying in 3s · attempt 1/10"; past `CLAUDE_CODE_MAX_RETRIES`, default 10,
the request fails with `api_error_status`, on the TUI "● API Error: 529 Overloaded. …"),
`[[quota:STATUS,UTILIZATION,WINDOW]]` (a `rate_limit_event`, e.g.
`[[quota:allowed_warning,0.92,seven_day]]`; the TUI footer shows "Approaching weekly limit (92% used)",
an imitation),
`[[extra_usage]]` (a `rate_limit_event` with `isUsingOverage`; the TUI footer "Now using extra usage"),
`[[maxturns:N]]` (the turn limit is hit: `error_max_turns` with "Reached maximum number of turns (N)",
its usage and cost).
File edits, as Claude Code's Write/Edit/Bash tools make them in its working directory (applied in
order during the turn, before its outcome; `\\n` in TEXT is a newline): `[[write:PATH:TEXT]]` (create
or replace), `[[append:PATH:TEXT]]`, `[[delete:PATH]]`, `[[commit:MESSAGE]]` (`git add -A` and
`git commit`: the agent committing on its own).
Without directives the reply is `Done: <first 40 characters of the prompt>`. Invalid directive values
are ignored. Standard library only; starts in a few tens of milliseconds.
"""

from __future__ import annotations

import math
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable

VERSION = "2.1.20 (fake Claude Code)"
NBSP = "\xa0"
ESC = "\x1b"
RESET, DIM, BOLD = "\x1b[0m", "\x1b[2m", "\x1b[1m"
GREY, ORANGE, RED, GREEN, BLUE = "\x1b[38;5;244m", "\x1b[38;5;174m", "\x1b[31m", "\x1b[32m", "\x1b[38;5;75m"
SPINNER = "·✢✳✶✻✽"
VERBS = ("Thinking", "Pondering", "Computing", "Brewing", "Noodling", "Percolating")
CONTEXT_FOOTER_BELOW = 40  # percent left at or under which the footer shows it
MARKER = "SHOAL_DONE"
CONTEXT_LIMIT = "Context limit reached · /compact or /clear to continue"
FRAME_S = 0.1  # spinner redraw period
MENU_DEAF_S = 0.2  # Claude Code ignores keys this long after it draws a menu (measured on 2.1.x)

VALUE_FLAGS = {
    "--model", "--resume", "-r", "--permission-mode", "--output-format", "--input-format",
    "--allowedTools", "--allowed-tools", "--disallowedTools", "--disallowed-tools",
    "--append-system-prompt", "--system-prompt", "--mcp-config", "--add-dir", "--settings",
    "--session-id", "--max-turns", "--fallback-model", "--agents", "--setting-sources",
    "--max-budget-usd", "--permission-prompt-tool", "--tools", "--betas", "--agent", "--plugin-dir",
    "--startup-delay", "--context-step", "--context-start", "--tui-style", "--menu-deaf",
    "--paste-window",
}  # fmt: skip
LIMIT_OPTIONS = ("Stop and wait for limit to reset", "Switch to usage credits", "Upgrade your plan")
MODELS = (
    ("Default (recommended)", "Sonnet 4.5 · Best for everyday tasks", "sonnet"),
    ("Opus", "Opus 4.5 · Most capable for complex work", "opus"),
    ("Haiku", "Haiku 4.5 · Fastest for quick answers", "haiku"),
)


# what the API answers per status (Claude Code's api_retry `error` and its error body)
API_ERRORS = {
    529: ("overloaded", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
    500: ("server_error", '{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'),
    429: ("rate_limit", '{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}'),
    401: ("authentication_failed", '{"type":"error","error":{"type":"authentication_error","message":"x"}}'),
    0: ("network", "Connection error."),
}
API_SHORT = {529: "Overloaded", 500: "Internal server error", 429: "Rate limited", 401: "Unauthorized"}
WINDOW_NAMES = {"five_hour": "session", "seven_day": "weekly", "seven_day_opus": "Opus weekly"}
EXTRA_USAGE = "Now using extra usage"


def max_retries() -> int:
    try:
        return max(0, int(os.environ.get("CLAUDE_CODE_MAX_RETRIES", "10")))
    except ValueError:
        return 10


def api_error(status: int) -> tuple[str, str]:
    """(api_retry error kind, error body) for an HTTP status (0: a network failure)."""
    if status in API_ERRORS:
        return API_ERRORS[status]
    return ("server_error" if status >= 500 else "unknown", f'{{"type":"error","status":{status}}}')


DIRECTIVE = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")
KEY_SEQUENCE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1bO[ -~]")
PARTIAL_SEQUENCE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|O)?\Z")


# ------------------------------------------------------------------------------------------------
# arguments and directives


class Args:
    def __init__(self, argv: list[str]) -> None:
        self.values: dict[str, str] = {}
        self.flags: set[str] = set()
        self.positional: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                self.positional.extend(argv[i + 1 :])
                break
            if arg.startswith("-") and len(arg) > 1:
                name, eq, value = arg.partition("=")
                if eq:
                    self.values[name] = value
                elif name in VALUE_FLAGS and i + 1 < len(argv):
                    self.values[name] = argv[i + 1]
                    i += 1
                else:
                    self.flags.add(name)
            else:
                self.positional.append(arg)
            i += 1
        self.print_mode = bool(self.flags & {"-p", "--print"})
        self.marker = "--marker" in self.flags
        self.no_ready = "--no-ready" in self.flags
        self.model = self.values.get("--model", "sonnet")
        self.output_format = self.values.get("--output-format", "text")
        self.input_format = self.values.get("--input-format", "text")
        self.startup_delay = _number(self.values.get("--startup-delay"), 0.0)
        self.context_step = _number(self.values.get("--context-step"), 7.0)
        self.context_start = _number(self.values.get("--context-start"), 0.0)
        self.box = self.values.get("--tui-style", "rule") == "box"
        self.menu_deaf = _number(self.values.get("--menu-deaf"), MENU_DEAF_S)
        self.paste_window = _number(self.values.get("--paste-window"), 0.0)
        # --trust-dialog: the first-start trust dialog of 2.1.212 (numbered); =plain: 2.1.332's
        trust = self.values.get("--trust-dialog", "numbered" if "--trust-dialog" in self.flags else "")
        self.trust = trust if trust in ("numbered", "plain") else ""


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


class Plan:
    """What a prompt's directives ask for."""

    def __init__(self, prompt: str, now: float) -> None:
        self.prompt = prompt
        self.think = 0.0
        self.output: int | None = None
        self.crash: int | None = None
        self.hang = False
        self.ratelimit: int | None = None
        self.ask = False
        self.limitmenu: int | None = None  # the reset time (epoch) the usage-limit menu announces
        self.trust = False
        self.picker = False
        self.context: float | None = None
        self.fail: str | None = None
        self.flood_mb = 0.0
        self.echo = False
        self.recall = False
        self.notices: list[str] = []
        self.retries = 0
        self.retry_status = 529
        self.retry_delay = 0.5
        self.quota: tuple[str, float | None, str] | None = None
        self.extra_usage = False
        self.max_turns: int | None = None
        self.edits: list[tuple[str, str, str]] = []  # (write|append|delete|commit, path, text)
        for name, value in DIRECTIVE.findall(prompt):
            try:
                self._set(name.lower(), value, now)
            except ValueError:
                continue  # an invalid value: the directive is ignored
        self.text = " ".join(DIRECTIVE.sub(" ", prompt).split())

    def _set(self, name: str, value: str, now: float) -> None:
        if name == "think":
            self.think = max(0.0, float(value))
        elif name == "output":
            self.output = max(0, int(value))
        elif name == "crash":
            self.crash = int(value) if value else 1
        elif name == "hang":
            self.hang = True
        elif name == "ratelimit":
            self.ratelimit = int(now + float(value[1:])) if value.startswith("+") else int(float(value))
        elif name == "ask":
            self.ask = True
        elif name == "limitmenu":
            value = value or "+3600"
            self.limitmenu = int(now + float(value[1:])) if value.startswith("+") else int(float(value))
        elif name == "trust":
            self.trust = True
        elif name == "picker":
            self.picker = True
        elif name == "context":
            self.context = max(0.0, float(value))
        elif name == "fail":
            self.fail = value.strip() or "failed"
        elif name == "notice":
            self.notices.append(value.strip() or "Warning: a notice")
        elif name == "retry":
            parts = [p.strip() for p in value.split(",")]
            count = max(0, int(parts[0] or 1))
            status = int(parts[1]) if len(parts) > 1 and parts[1] else 529
            delay = max(0.0, float(parts[2])) if len(parts) > 2 and parts[2] else 0.5
            self.retries, self.retry_status, self.retry_delay = count, status, delay
        elif name == "quota":
            parts = [p.strip() for p in value.split(",")]
            util = float(parts[1]) if len(parts) > 1 and parts[1] else None
            window = parts[2] if len(parts) > 2 and parts[2] else "five_hour"
            self.quota = (parts[0] or "allowed", util, window)
        elif name == "extra_usage":
            self.extra_usage = True
        elif name == "maxturns":
            self.max_turns = max(1, int(value or 40))
        elif name == "flood":
            self.flood_mb = max(0.0, float(value))
        elif name == "echo":
            self.echo = True
        elif name == "recall":
            self.recall = True
        elif name in ("write", "append"):
            path, _, text = value.partition(":")
            if path.strip():
                self.edits.append((name, path.strip(), text.replace("\\n", "\n")))
        elif name == "delete" and value.strip():
            self.edits.append(("delete", value.strip(), ""))
        elif name == "commit":
            self.edits.append(("commit", "", value.strip() or "the agent's own commit"))

    def apply_edits(self) -> None:
        """Make the turn's file edits in the working directory (once; errors go to stderr)."""
        edits, self.edits = self.edits, []
        for op, path, text in edits:
            try:
                if op == "commit":
                    import subprocess

                    ident = ["-c", "user.name=Fake Claude", "-c", "user.email=fake-claude@localhost"]
                    subprocess.run(["git", "add", "-A"], check=True, capture_output=True)
                    subprocess.run(["git", *ident, "commit", "-qm", text], check=True, capture_output=True)
                elif op == "delete":
                    os.unlink(path)
                else:
                    if os.path.dirname(path):
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "a" if op == "append" else "w", encoding="utf-8") as f:
                        f.write(text)
            except (OSError, ValueError) as exc:
                sys.stderr.write(f"fake agent: {op} {path}: {exc}\n")
            except Exception as exc:  # a failed git commit (nothing to commit, no repository)
                sys.stderr.write(f"fake agent: {op}: {exc}\n")

    def reply(self) -> str:
        if self.output is not None:
            return filler(self.output)
        if self.echo:
            return self.text
        return "Done: " + self.text[:40]


def _partial_suffix(buf: bytes, marker: bytes, start: int) -> int:
    """How many trailing bytes of `buf` (from `start`) could begin `marker`."""
    for n in range(min(len(marker) - 1, len(buf) - start), 0, -1):
        if marker.startswith(buf[len(buf) - n :]):
            return n
    return 0


def _utf8_incomplete(data: bytes) -> int:
    """Bytes at the end of `data` that start a UTF-8 character whose rest has not arrived."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # continuation byte: look further back for the lead byte
        need = 2 if byte >= 0xC0 else 1
        need = 3 if byte >= 0xE0 else need
        need = 4 if byte >= 0xF0 else need
        return back if need > back else 0
    return 0


def filler(size: int) -> str:
    """Deterministic ASCII text of exactly `size` bytes, in lines of at most 70 characters."""
    words = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")
    lines, line = [], ""
    for n in range(120):
        word = words[n % len(words)]
        if len(line) + 1 + len(word) > 70:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    block = "\n".join(lines) + "\n"
    text = (block * (size // len(block) + 1))[:size]
    if text and text[-1] in " \n":
        text = text[:-1] + "."
    return text


def flood_block(seed: int) -> bytes:
    """About 64 KiB of syntax-highlighted-looking lines: a colour change every few characters."""
    tokens = ("def", "return", "self", "value", "(", ")", "=", "42", '"text"', "import", "for", "in")
    colours = ("\x1b[38;5;204m", "\x1b[38;5;75m", "\x1b[38;5;114m", "\x1b[38;5;180m", "\x1b[1m", "\x1b[2m")
    lines = []
    n = seed
    size = 0
    while size < 65536:
        parts = []
        for _ in range(12):
            n = (n * 1103515245 + 12345) & 0x7FFFFFFF
            parts.append(colours[n % len(colours)] + tokens[(n >> 8) % len(tokens)] + RESET)
        line = "    " + " ".join(parts) + "\r\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()


# ------------------------------------------------------------------------------------------------
# output helpers


def write(data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    view = memoryview(raw)
    while view:
        try:
            n = os.write(1, view)
        except BlockingIOError:
            select.select([], [1], [])
            continue
        view = view[n:]


def write_flood(mb: float, line_end: str = "\r\n") -> None:
    block = flood_block(7)
    if line_end != "\r\n":
        block = block.replace(b"\r\n", line_end.encode())
    remaining = int(mb * 1_000_000)
    while remaining > 0:
        chunk = block if remaining >= len(block) else block[:remaining]
        write(chunk)
        remaining -= len(chunk)


# ------------------------------------------------------------------------------------------------
# the interactive TUI


def reset_text(epoch: int) -> str:
    """`3:42pm (UTC)`: how Claude Code names a reset, rounded up to the minute (never earlier)."""
    t = time.gmtime(epoch + 59)
    hour = t.tm_hour % 12 or 12
    return f"{hour}:{t.tm_min:02d}{'am' if t.tm_hour < 12 else 'pm'} (UTC)"


def spaced(text: str, col: int) -> str:
    """`text` drawn from column `col` as CLI 2.1.332 draws it: each word placed by CSI G, no spaces."""
    out, at = [], col
    for word in text.split(" "):
        out.append(f"{ESC}[{at}G{word}")
        at += len(word) + 1
    return "".join(out)


class Menu:
    """A Claude Code select dialog: text above, options (numbered or not), a cursor, a footer.

    A digit picks a numbered option at once; arrows move the cursor (wrapping), Enter picks it, Esc
    cancels. Keys typed within MENU_DEAF_S of drawing it are ignored, as Claude Code does.
    """

    def __init__(
        self,
        above: list[str],
        options: list[str],
        on_choose: Callable[[int], None],
        *,
        numbered: bool = True,
        cursor: int = 0,
        footer: str = "Enter to confirm · Esc to cancel",
        details: list[str] | None = None,
        plain: bool = False,
    ) -> None:
        self.above = above
        self.options = options
        self.details = details or [""] * len(options)
        self.on_choose = on_choose  # called with the option number, or 0 for Esc
        self.numbered = numbered
        self.cursor = cursor
        self.footer = footer
        self.plain = plain  # drawn word by word (2.1.332)
        self.drawn_at = time.monotonic()

    def render(self) -> list[str]:
        lines = list(self.above)
        width = max(len(o) for o in self.options) + 2
        for i, label in enumerate(self.options):
            mark = "❯" if i == self.cursor else " "
            text = f"{i + 1}. {label}" if self.numbered else label
            if self.details[i]:
                text = text.ljust(width + 3) + self.details[i]
            if self.plain:
                line = (f" {BLUE}❯" if i == self.cursor else "") + spaced(text, 4)
                lines.append(line + (RESET if i == self.cursor else ""))
            elif i == self.cursor:
                lines.append(f" {BLUE}{mark} {text}{RESET}")
            else:
                lines.append(f"   {text}")
        lines.append("")
        footer = spaced(self.footer, 2) if self.plain else f" {self.footer}"
        lines.append(f"{GREY}{footer}{RESET}")
        if self.plain:
            lines.append("")  # 2.1.332 ends its footer line too, the cursor below it
        return lines


class Tui:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.used = min(100.0, max(0.0, args.context_start))
        self.input = ""
        self.paste_count = 0
        self.paste_end = 0.0
        self.frame_lines = 0
        self.cols = self._cols()
        self.busy = False
        self.plan: Plan | None = None
        self.turn_start = 0.0
        self.deadline: float | None = None
        self.asking = False
        self.menu: Menu | None = None
        self.queue: list[str] = []
        self.pending = b""  # undecoded input (a split escape or UTF-8 sequence)
        self.in_paste = False
        self.paste_buf = b""
        self.spin = 0
        self.next_frame = 0.0
        self.compacting = False
        self.retried = 0  # API retries shown for the current turn
        self.footer_note = ""  # right side of the footer: "Now using extra usage", a quota warning

    @staticmethod
    def _cols() -> int:
        try:
            return max(40, os.get_terminal_size(1).columns)
        except OSError:
            return 100

    # -- drawing -----------------------------------------------------------------------------------

    def erase(self) -> str:
        """Ink's eraseLines: clear each line of the dynamic region, moving up, then column 1."""
        if not self.frame_lines:
            return ""
        seq = (ESC + "[2K" + ESC + "[1A") * (self.frame_lines - 1) + ESC + "[2K" + ESC + "[G"
        self.frame_lines = 0
        return seq

    def frame(self) -> list[str]:
        width = self.cols - 1
        lines: list[str] = []
        if self.menu is not None:
            lines.append(GREY + "─" * width + RESET)
            lines.extend(self.menu.render())
            return lines
        if self.busy and not self.asking:
            glyph = SPINNER[self.spin % len(SPINNER)]
            secs = int(time.monotonic() - self.turn_start)
            verb = "Compacting conversation" if self.compacting else VERBS[self.spin // 12 % len(VERBS)]
            lines.append(f"{ORANGE}{glyph} {verb}…{RESET} {GREY}({secs}s · esc to interrupt){RESET}")
            plan = self.plan
            if plan is not None and self.retrying_now():
                # under the spinner, as 2.1.x words it: `529 Overloaded · retrying in 3s · attempt 3/10`
                what = API_SHORT.get(plan.retry_status, "API error")
                what = f"{plan.retry_status} {what}" if plan.retry_status in API_SHORT else what
                left = max(1, math.ceil(self.turn_start + self.retried * plan.retry_delay - time.monotonic()))
                tries = f"attempt {self.retried}/{max_retries()}"
                lines.append(f"  {RED}⎿  {what} · retrying in {left}s · {tries}{RESET}")
            lines.append("")
        if self.asking:
            lines.extend(self.dialog())
            return lines
        if self.args.no_ready:
            return lines
        shown = self.input
        if "\n" in shown or len(shown) > 800:
            shown = f"[Pasted text #{max(1, self.paste_count)} +{shown.count(chr(10))} lines]"
        shown = shown[: max(0, width - 8)]
        if self.args.box:
            inner = width - 2
            lines.append(GREY + "╭" + "─" * inner + "╮" + RESET)
            body = f" {BOLD}>{RESET}{NBSP}{shown}"
            pad = inner - 3 - len(shown)
            lines.append(GREY + "│" + RESET + body + " " * max(0, pad) + GREY + "│" + RESET)
            lines.append(GREY + "╰" + "─" * inner + "╯" + RESET)
        else:
            lines.append(GREY + "─" * width + RESET)
            lines.append(f"{BOLD}>{RESET}{NBSP}{shown}")
            lines.append(GREY + "─" * width + RESET)
        footer = f"  {GREY}? for shortcuts{RESET}"
        left = max(0, round(100 - self.used))
        if left <= CONTEXT_FOOTER_BELOW:
            context = f"Context left until auto-compact: {left}%"
            gap = max(2, width - 17 - len(context))
            footer += " " * gap + f"{GREY}{context}{RESET}"
        elif self.footer_note:
            gap = max(2, width - 17 - len(self.footer_note))
            footer += " " * gap + f"{GREY}{self.footer_note}{RESET}"
        lines.append(footer)
        return lines

    def retrying_now(self) -> bool:
        """Between a failed request and the next try ([[retry]])."""
        plan = self.plan
        return (
            self.busy
            and plan is not None
            and self.retried > 0
            and time.monotonic() < self.turn_start + self.retried * plan.retry_delay
        )

    def dialog(self) -> list[str]:
        width = self.cols - 1
        return [
            GREY + "─" * width + RESET,
            f" {BOLD}Bash command{RESET}",
            "",
            "   echo hello",
            f"   {DIM}Print a greeting{RESET}",
            "",
            " Do you want to proceed?",
            f" {BLUE}❯ 1. Yes{RESET}",
            "   2. No",
            "",
            f" {GREY}Esc to cancel · Tab to amend{RESET}",
        ]

    def redraw(self, static: list[str] | None = None) -> None:
        out = self.erase()
        if static:
            out += "".join(line + "\r\n" for line in static)
        lines = self.frame()
        out += "\r\n".join(lines)
        self.frame_lines = len(lines)
        write(out)

    def static(self, lines: list[str]) -> None:
        self.redraw(lines)

    def welcome(self) -> None:
        cwd = os.getcwd()
        inner = max(52, min(self.cols - 2, len(cwd) + 12))
        rows = [
            f" {ORANGE}✻{RESET} Welcome to Claude Code!",
            "",
            "   /help for help, /status for your current setup",
            "",
            f"   cwd: {cwd}",
            f"   model: {self.args.model}",
        ]
        out = [GREY + "╭" + "─" * inner + "╮" + RESET]
        for row in rows:
            visible = re.sub(r"\x1b\[[0-9;]*m", "", row)
            out.append(GREY + "│" + RESET + row + " " * max(0, inner - len(visible)) + GREY + "│" + RESET)
        out.append(GREY + "╰" + "─" * inner + "╯" + RESET)
        out += [
            "",
            " Tips for getting started:",
            "",
            " 1. Run /init to create a CLAUDE.md file with instructions for Claude",
            " 2. Use Claude to help with file analysis, editing, bash commands and git",
            "",
        ]
        write(ESC + "[?2004h" + ESC + "[?25l")  # bracketed paste on, cursor hidden (as Ink does)
        self.static(out)

    # -- turns ---------------------------------------------------------------------------------------

    def submit(self, text: str) -> None:
        if self.busy:
            self.queue.append(text)
            return
        self.input = ""
        self.paste_count = 0
        command = text.strip()
        if command in ("/exit", "/quit"):
            raise SystemExit(0)
        echo = [
            f"{GREY}>{RESET} {line}" if i == 0 else f"  {line}" for i, line in enumerate(text.split("\n"))
        ]
        if command == "/clear":
            self.used = 0.0
            self.frame_lines = 0
            write(ESC + "[2J" + ESC + "[H")
            self.redraw()
            return
        if command == "/compact":
            self.start_turn(Plan("", time.time()), [*echo, ""], compacting=True)
            return
        if self.used >= 100:
            self.static([*echo, "", f"  {RED}⎿  {CONTEXT_LIMIT}{RESET}", ""])
            return
        self.start_turn(Plan(text, time.time()), [*echo, ""])

    def start_turn(self, plan: Plan, echo: list[str], compacting: bool = False) -> None:
        self.busy = True
        self.compacting = compacting
        self.plan = plan
        self.asking = False
        self.turn_start = time.monotonic()
        self.deadline = self.turn_start + (0.3 if compacting else plan.think)
        self.spin = 0
        self.next_frame = self.turn_start + FRAME_S
        self.retried = 0
        if plan.retries:  # each failed request waits its delay before the next try
            self.deadline += min(plan.retries, max_retries() + 1) * plan.retry_delay
        notes = [f"{GREY}{text}{RESET}" for text in plan.notices]
        if plan.quota is not None:
            status, util, window = plan.quota
            name = WINDOW_NAMES.get(window, window)
            if status == "allowed_warning":
                used = f" ({util:.0%} used)" if util is not None else ""
                self.footer_note = f"Approaching {name} limit{used}"
        if plan.extra_usage:
            self.footer_note = EXTRA_USAGE
        self.static([*echo, *notes] if notes else echo)
        if plan.flood_mb:
            out = self.erase()
            write(out)
            write_flood(plan.flood_mb)
            self.redraw()

    def tick(self, now: float) -> None:
        if not self.busy:
            return
        if self.menu is not None:
            return
        plan = self.plan
        if (
            plan is not None
            and self.retried < min(plan.retries, max_retries())
            and not self.asking
            and now >= self.turn_start + self.retried * plan.retry_delay
        ):
            self.retried += 1  # the spinner line says so until the next try (frame)
            self.redraw()
        if self.deadline is not None and now >= self.deadline and not self.asking:
            self.deadline = None
            self.finish()
            return
        if now >= self.next_frame and not self.asking:
            self.spin += 1
            self.next_frame = now + FRAME_S
            self.redraw()

    def timeout(self, now: float) -> float | None:
        if not self.busy or self.asking or self.menu is not None:
            return None
        wait = self.next_frame - now
        if self.deadline is not None:
            wait = min(wait, self.deadline - now)
        plan = self.plan
        if plan is not None and self.retried < min(plan.retries, max_retries()):
            wait = min(wait, self.turn_start + self.retried * plan.retry_delay - now)
        return max(0.0, wait)

    def finish(self) -> None:
        plan = self.plan
        assert plan is not None
        plan.apply_edits()
        if self.compacting:
            self.used = min(self.used, 10.0)
            self.end_turn(["  ⎿  Compacted (ctrl+o to see full summary)", ""])
            return
        if plan.crash is not None:
            self.static(["● Working on it…", ""])
            self.restore()
            os._exit(plan.crash)
        if plan.hang:
            return  # busy forever: only Esc or a signal ends this turn
        if plan.ask and not self.asking:
            self.asking = True
            self.redraw()
            return
        if plan.ratelimit is not None:
            self.end_turn([f"  {RED}⎿  Claude AI usage limit reached|{plan.ratelimit}{RESET}", ""])
            return
        if plan.limitmenu is not None:
            self.limit_menu(plan.limitmenu)
            return
        if plan.trust:
            plan.trust = False
            self.show_menu(
                self.trust_menu(self.after_trust), static=["● I need to read this folder first.", ""]
            )
            return
        if plan.picker:
            plan.picker = False
            self.show_menu(self.model_picker())
            return
        if plan.retries > max_retries():  # the retries ran out: the request failed
            what = API_SHORT.get(plan.retry_status, "Connection error")
            shown = (
                f"API Error: {plan.retry_status} {what}."
                if plan.retry_status in API_SHORT
                else f"API Error: {what}."
            )
            failed = f"{MARKER} status=failed reason={shown}"
            self.end_turn(
                [f"{RED}●{RESET} {shown} This is a server-side issue, usually temporary.", ""], failed
            )
            return
        if plan.context is not None and plan.context >= 100:
            self.used = 100.0
            self.end_turn([f"  {RED}⎿  {CONTEXT_LIMIT}{RESET}", ""])
            return
        if plan.fail:
            # Claude Code ends a failed turn with an error line under the prompt's echo, then its
            # prompt comes back as after any turn
            self.grow(plan)
            failed = f"{MARKER} status=failed reason={plan.fail}"
            self.end_turn([f"  {RED}⎿  API Error: {plan.fail}{RESET}", ""], failed)
            return
        lines = plan.reply().split("\n")
        reply = [f"{BOLD}●{RESET} {lines[0]}", *("  " + line for line in lines[1:]), ""]
        elapsed = time.monotonic() - self.turn_start
        if elapsed >= 1.0:
            reply += [f"{GREY}✻ Worked for {int(elapsed)}s{RESET}", ""]
        self.grow(plan)
        self.end_turn(reply, MARKER)

    def grow(self, plan: Plan) -> None:
        if plan.context is not None:
            self.used = min(100.0, plan.context)
        else:
            self.used = min(99.0, self.used + self.args.context_step)

    def end_turn(self, lines: list[str], marker: str | None = None) -> None:
        self.busy = False
        self.asking = False
        self.compacting = False
        self.plan = None
        if marker is not None and self.args.marker:
            lines = [*lines, marker]
        self.static(lines)
        if self.queue:
            self.submit(self.queue.pop(0))

    def answer(self, choice: str) -> None:
        plan = self.plan
        assert plan is not None
        self.asking = False
        if choice == "1":
            plan.ask = False
            self.deadline = time.monotonic()
            self.redraw()
        else:
            self.grow(plan)
            self.end_turn(
                ["● I need permission to run `echo hello`; you declined, so I did not run it.", ""],
                f"{MARKER} status=failed reason=permission denied",
            )

    # -- menus ---------------------------------------------------------------------------------------

    def show_menu(self, menu: Menu, static: list[str] | None = None) -> None:
        self.menu = menu
        self.redraw(static)
        menu.drawn_at = time.monotonic()

    def trust_menu(self, on_choose: Callable[[bool], None]) -> Menu:
        """The trust dialog, as 2.1.212 (numbered, Yes first) or 2.1.332 (`plain`: No first)."""
        plain = self.args.trust == "plain"
        text = [
            f" {ORANGE}{BOLD}Accessing workspace:{RESET}",
            "",
            f" {BOLD}{os.getcwd()}{RESET}",
            "",
            " Quick safety check: Is this a project you created or one you trust? (Like your",
            " own code, a well-known open source project, or work from your team). If not,",
            " take a moment to review what's in this folder first.",
            "",
            " Claude Code'll be able to read, edit, and execute files here.",
            "",
            f" {GREY}Security guide{RESET}",
            "",
        ]
        if plain:
            text = [
                spaced(line.strip(), 2) if line.strip() and not line.startswith(" \x1b") else line
                for line in text
            ]
            options = ["No, exit", "Yes, I trust this folder"]
            return Menu(text, options, lambda n: on_choose(n == 2), numbered=False, plain=True)
        options = ["Yes, I trust this folder", "No, exit"]
        return Menu(text, options, lambda n: on_choose(n == 1))

    def after_trust(self, yes: bool) -> None:
        """[[trust]] mid-task: trusted, the turn goes on; refused, it ends declined."""
        plan = self.plan
        assert plan is not None
        if yes:
            self.deadline = time.monotonic()
            self.redraw(["  ⎿  Trusted this folder", ""])
        else:
            self.grow(plan)
            self.end_turn(
                ["● You did not trust this folder, so I did not read it.", ""],
                f"{MARKER} status=failed reason=folder not trusted",
            )

    def model_picker(self) -> Menu:
        current = next((i for i, m in enumerate(MODELS) if m[2] == self.args.model), 0)
        above = [
            f" {BOLD}Select model{RESET}",
            " Switch between Claude models. Applies to this session and future Claude Code",
            " sessions. For other/previous model names, specify with --model.",
            "",
        ]
        labels = [m[0] + (" ✔" if i == current else "") for i, m in enumerate(MODELS)]
        details = [m[1] for m in MODELS]
        return Menu(above, labels, self.picked, cursor=current, footer="Enter to confirm · Esc to exit",
                    details=details)  # fmt: skip

    def picked(self, n: int) -> None:
        if n:
            name, _, model = MODELS[n - 1]
            self.args.model = model
            note = f"  ⎿  Set model to {BOLD}{name}{RESET}"
        else:
            note = f"  ⎿  Kept model as {BOLD}{self.args.model}{RESET}"
        self.deadline = time.monotonic()
        self.redraw([note, ""])

    def limit_menu(self, reset: int) -> None:
        """A usage limit, as 2.1.x shows it: the limit line, then 'What do you want to do?'."""
        limit = f"  ⎿  {RED}You've hit your session limit · resets {reset_text(reset)}{RESET}"
        above = ["  What do you want to do?", ""]
        self.show_menu(Menu(above, list(LIMIT_OPTIONS), self.limit_chosen), static=[limit, ""])

    def limit_chosen(self, n: int) -> None:
        plan = self.plan
        assert plan is not None
        if n == 2:  # usage credits: the turn goes on, paid
            plan.limitmenu = None
            self.deadline = time.monotonic()
            self.redraw([f"  ⎿  {ORANGE}Now using extra usage{RESET}", ""])
        elif n == 3:
            self.end_turn(["  ⎿  Upgrade at https://claude.ai/upgrade", ""])
        else:  # 1 or Esc: stop and wait; the turn ends without an answer
            self.end_turn([])

    def menu_input(self, data: bytes) -> None:
        menu = self.menu
        assert menu is not None
        if time.monotonic() - menu.drawn_at < self.args.menu_deaf:
            return  # Claude Code is still settling the dialog: these keys are lost
        i = 0
        count = len(menu.options)
        while i < len(data) and self.menu is menu:
            rest = data[i:]
            if rest[:3] in (b"\x1b[A", b"\x1bOA", b"\x1b[B", b"\x1bOB"):
                step = -1 if rest[2:3] == b"A" else 1
                menu.cursor = (menu.cursor + step) % count
                self.redraw()
                i += 3
            elif rest[:1] == b"\x1b":
                m = KEY_SEQUENCE.match(rest)
                if m:
                    i += m.end()
                    continue
                self.choose(0)
            elif rest[:1] in (b"\r", b"\n"):
                self.choose(menu.cursor + 1)
            elif menu.numbered and rest[:1].isdigit() and 1 <= int(rest[:1]) <= count:
                self.choose(int(rest[:1]))
            else:
                i += 1

    def choose(self, n: int) -> None:
        menu = self.menu
        assert menu is not None
        self.menu = None
        menu.on_choose(n)

    def interrupt(self) -> None:
        if self.busy:
            self.end_turn(["  ⎿  Interrupted by user", ""])

    # -- input ---------------------------------------------------------------------------------------

    def on_input(self, data: bytes) -> None:
        if self.menu is not None:
            self.menu_input(data)
            return
        buf = self.pending + data
        self.pending = b""
        i = 0
        typed = b""
        while i < len(buf):
            if self.in_paste:
                end = buf.find(b"\x1b[201~", i)
                if end < 0:
                    hold = _partial_suffix(buf, b"\x1b[201~", i)
                    self.paste_buf += buf[i : len(buf) - hold]
                    self.pending = buf[len(buf) - hold :]
                    break
                self.paste_buf += buf[i:end]
                text = self.paste_buf.decode(errors="replace")
                self.input += text.replace("\r\n", "\n").replace("\r", "\n")
                self.paste_buf = b""
                self.in_paste = False
                self.paste_count += 1
                self.paste_end = time.monotonic()
                i = end + 6
                continue
            b = buf[i]
            if b == 0x1B:
                rest = buf[i:]
                if rest.startswith(b"\x1b[200~"):
                    self.input += typed.decode(errors="replace")
                    typed = b""
                    self.in_paste = True
                    i += 6
                    continue
                m = KEY_SEQUENCE.match(rest)
                if m:
                    i += m.end()  # arrows, function keys: ignored
                    continue
                if PARTIAL_SEQUENCE.match(rest):
                    self.pending = rest  # completed by the next read, or a lone Esc after a pause
                    break
                i += 1
                self.escape()
                continue
            if b in (0x0D, 0x0A):
                i += 1
                self.input += typed.decode(errors="replace")
                typed = b""
                if self.paste_count and time.monotonic() - self.paste_end < self.args.paste_window:
                    self.redraw()  # 2.0.x: part of the paste, the prompt still holds the text
                    continue
                self.enter()
                continue
            if b in (0x7F, 0x08):
                i += 1
                if typed:
                    typed = typed[:-1]
                else:
                    self.input = self.input[:-1]
                continue
            if b == 0x03:  # Ctrl-C: interrupt, else clear the input, else quit
                i += 1
                if self.busy:
                    self.interrupt()
                elif self.input or typed:
                    self.input, typed = "", b""
                else:
                    raise SystemExit(0)
                continue
            if b == 0x04:  # Ctrl-D on an empty prompt quits
                i += 1
                if not self.busy and not self.input and not typed:
                    raise SystemExit(0)
                continue
            j = i
            while j < len(buf) and buf[j] >= 0x20 and buf[j] != 0x7F:
                j += 1
            if j == i:
                i += 1  # another control byte: ignored
                continue
            typed += buf[i:j]
            i = j
        if typed:
            hold = _utf8_incomplete(typed)
            if hold:
                self.pending = typed[-hold:] + self.pending
                typed = typed[:-hold]
            self.input += typed.decode(errors="replace")
        if (typed or data) and not self.busy:
            self.redraw()

    def escape(self) -> None:
        if self.asking:
            self.answer("2")
        elif self.busy:
            self.interrupt()

    def flush_escape(self) -> None:
        """A lone ESC that stayed alone: the Esc key."""
        if self.pending == b"\x1b":
            self.pending = b""
            self.escape()

    def enter(self) -> None:
        if self.asking:
            choice = self.input.strip() or "1"
            self.input = ""
            self.answer(choice)
            return
        text = self.input
        if not text.strip():
            return
        self.submit(text)

    # -- life cycle ----------------------------------------------------------------------------------

    def restore(self) -> None:
        restore_terminal()

    def run(self) -> None:
        if self.args.trust:
            write(ESC + "[?2004h" + ESC + "[?25l")
            self.show_menu(self.trust_menu(self.trusted_at_start))
        else:
            self.welcome()
        wake = _signal_wakeup_fd()
        while True:
            now = time.monotonic()
            wait = self.timeout(now)
            if self.pending == b"\x1b":
                wait = 0.05 if wait is None else min(wait, 0.05)
            try:
                ready, _, _ = select.select([0, wake], [], [], wait)
            except InterruptedError:
                continue
            if wake in ready:  # a signal arrived: its Python handler runs as this loop goes on
                _drain(wake)
                ready.remove(wake)
            if ready:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if not data:
                    return  # the terminal closed
                if not self.args.no_ready:
                    self.on_input(data)
            elif self.pending == b"\x1b":
                self.flush_escape()
            self.tick(time.monotonic())

    def trusted_at_start(self, yes: bool) -> None:
        """The first-start trust dialog: 'No, exit' (or Esc) exits 1, as Claude Code does."""
        write(self.erase())
        if not yes:
            self.restore()
            os._exit(1)
        write(ESC + "[2J" + ESC + "[H")
        self.welcome()

    def resize(self) -> None:
        """SIGWINCH: only note the width (the next redraw uses it); never write from a handler."""
        self.cols = self._cols()


_SAVED_TTY: list[object] = []


def _signal_wakeup_fd() -> int:
    """A pipe the interpreter writes to on every signal, for the main loop's select().

    Without it, a SIGTERM landing just before select() starts (after the interpreter's last check
    for pending signals) would not run its handler until select() returned: never, for an idle agent.
    """
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def raw_terminal() -> None:
    if not os.isatty(0):
        return
    import termios
    import tty

    _SAVED_TTY.append(termios.tcgetattr(0))
    tty.setraw(0)


def restore_terminal() -> None:
    if _SAVED_TTY:
        import termios

        try:
            termios.tcsetattr(0, termios.TCSANOW, _SAVED_TTY[0])  # type: ignore[arg-type]
        except (OSError, termios.error):
            pass


# ------------------------------------------------------------------------------------------------
# headless: -p, stream-json


def sessions_dir() -> str | None:
    """Where conversations are kept for `--resume` (see the module docstring); None: not kept."""
    configured = os.environ.get("FAKE_CLAUDE_SESSIONS") or os.environ.get("CLAUDE_CONFIG_DIR")
    if not configured:
        return None
    project = re.sub(r"[^A-Za-z0-9]", "-", os.getcwd())
    return os.path.join(configured, "projects", project)


class NoConversation(Exception):
    """`--resume ID` names a conversation not kept for this working directory."""


class Headless:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.used = min(100.0, max(0.0, args.context_start))
        h = os.urandom(16).hex()  # a UUID 4, as Claude Code's (the uuid module would slow the start)
        self.session = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:]}"
        self.inited = False
        self.turns = 0
        self.prompts: list[str] = []  # this conversation's prompts so far, directives removed
        self.missing: str | None = None  # --resume named an unknown conversation
        resume = args.values.get("--resume") or args.values.get("-r")
        if resume:
            try:
                self.resume(resume)
            except NoConversation:
                self.missing = resume

    def transcript(self) -> str | None:
        where = sessions_dir()
        return None if where is None else os.path.join(where, f"{self.session}.jsonl")

    def resume(self, session: str) -> None:
        """Go on with a kept conversation: its id, its prompts, its context."""
        import json

        where = sessions_dir()
        path = None if where is None or "/" in session else os.path.join(where, f"{session}.jsonl")
        try:
            with open(path or "", encoding="utf-8") as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            raise NoConversation(session) from None
        self.session = session
        for line in lines:
            if isinstance(line, dict) and isinstance(line.get("prompt"), str):
                self.prompts.append(line["prompt"])
                used = line.get("used")
                self.used = float(used) if isinstance(used, int | float) else self.used

    def keep(self, prompt: str) -> None:
        """Append a turn to the conversation's file (as Claude Code writes its transcript)."""
        path = self.transcript()
        if path is None:
            return
        import json

        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"prompt": prompt, "used": self.used}) + "\n")
        except OSError as exc:
            sys.stderr.write(f"fake agent: cannot keep the conversation: {exc}\n")

    def no_conversation(self, stream: bool) -> int:
        """Claude Code's answer to `--resume` of an unknown conversation: a line, an error result, 1."""
        assert self.missing is not None
        sys.stderr.write(f"No conversation found with session ID: {self.missing}\n")
        if stream or self.args.output_format == "json":
            self.session = self.missing
            self.result("", True, time.monotonic(), "error_during_execution", num_turns=0)
        return 1

    def emit(self, event: dict[str, object]) -> None:
        import json

        write(json.dumps(event) + "\n")

    def init(self) -> None:
        if not self.inited:
            self.inited = True
            self.emit(
                {
                    "type": "system",
                    "subtype": "init",
                    "session_id": self.session,
                    "model": self.args.model,
                    "cwd": os.getcwd(),
                    "tools": ["Bash", "Read", "Edit", "Write"],
                    "permissionMode": self.args.values.get("--permission-mode", "default"),
                    "apiKeySource": "none",
                }
            )

    def usage(self, output_chars: int) -> dict[str, int]:
        context_tokens = int(self.used * 2000)  # of a 200k window
        return {
            "input_tokens": max(1, context_tokens // 10),
            "cache_read_input_tokens": context_tokens - context_tokens // 10,
            "cache_creation_input_tokens": 0,
            "output_tokens": max(1, output_chars // 4),
        }

    def assistant(self, text: str, **extra: object) -> None:
        message = {
            "id": f"msg_{self.turns}",
            "type": "message",
            "role": "assistant",
            "model": self.args.model,
            "content": [{"type": "text", "text": text}],
            "usage": self.usage(len(text)),
        }
        self.emit({"type": "assistant", "message": message, "session_id": self.session, **extra})

    def result(
        self, text: str, is_error: bool, started: float, subtype: str = "success", **extra: object
    ) -> None:
        self.emit(
            {
                "type": "result",
                "subtype": subtype,
                "is_error": is_error,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "duration_api_ms": int((time.monotonic() - started) * 1000),
                "num_turns": 1,
                "result": text,
                "session_id": self.session,
                "total_cost_usd": round(0.000015 * len(text) + 0.001, 6),
                "usage": self.usage(len(text)),
                **extra,
            }
        )

    def turn(self, prompt: str, stream: bool) -> int:
        """Answer one prompt; `stream`: JSON events, else the caller prints the text. Exit status."""
        self.turns += 1
        started = time.monotonic()
        plan = Plan(prompt, time.time())
        if stream:
            self.init()
        if self.used >= 100 or (plan.context is not None and plan.context >= 100):
            self.used = 100.0
            return self.end(stream, "Prompt is too long", True, started, code=1)
        if plan.think:
            time.sleep(plan.think)
        plan.apply_edits()
        if plan.flood_mb:
            if stream:
                block = flood_block(7).decode()
                remaining = int(plan.flood_mb * 1_000_000)
                while remaining > 0:
                    piece = block[: min(len(block), remaining)]
                    self.assistant(piece)
                    remaining -= len(piece)
            else:
                write_flood(plan.flood_mb, "\n")
        if plan.crash is not None:
            if stream:
                self.assistant("Working on it…")
            else:
                write("Working on it…\n")
            os._exit(plan.crash)
        if plan.hang:
            while True:
                time.sleep(3600)
        if plan.limitmenu is not None:  # no menu without a terminal: the limit's message, as 2.1.x
            plan.ratelimit = plan.limitmenu
        if stream:
            for text in plan.notices:
                write(text + "\n")  # a warning on stdout, outside the JSON (as Claude Code prints them)
            if plan.quota is not None:
                status, util, window = plan.quota
                info: dict[str, object] = {
                    "status": status,
                    "resetsAt": int(time.time()) + 3600,
                    "rateLimitType": window,
                    "isUsingOverage": False,
                }
                if util is not None:
                    info["utilization"] = util
                self.emit({"type": "rate_limit_event", "rate_limit_info": info, "session_id": self.session})
            if plan.extra_usage:
                info = {
                    "status": "allowed",
                    "resetsAt": int(time.time()) + 3600,
                    "rateLimitType": "five_hour",
                    "overageStatus": "allowed",
                    "isUsingOverage": True,
                }
                self.emit({"type": "rate_limit_event", "rate_limit_info": info, "session_id": self.session})
            most = max_retries()
            for attempt in range(1, min(plan.retries, most) + 1):
                kind, _body = api_error(plan.retry_status)
                self.emit(
                    {
                        "type": "system",
                        "subtype": "api_retry",
                        "attempt": attempt,
                        "max_retries": most,
                        "retry_delay_ms": int(plan.retry_delay * 1000),
                        "error_status": plan.retry_status or None,
                        "error": kind,
                        "session_id": self.session,
                    }
                )
                time.sleep(plan.retry_delay)
            if plan.retries > most:
                _kind, body = api_error(plan.retry_status)
                text = f"API Error: {plan.retry_status} {body}" if plan.retry_status else f"API Error: {body}"
                self.assistant(text, error="unknown", isApiErrorMessage=True)
                return self.end(
                    stream,
                    text,
                    True,
                    started,
                    code=1,
                    api_error_status=plan.retry_status or None,
                    terminal_reason="api_error",
                )
        if plan.max_turns is not None:
            self.grow(plan)
            return self.end(
                stream,
                "",
                True,
                started,
                subtype="error_max_turns",
                code=1,
                errors=[f"Reached maximum number of turns ({plan.max_turns})"],
                num_turns=plan.max_turns + 1,
                total_cost_usd=round(0.0123 * plan.max_turns, 6),
            )
        if plan.ratelimit is not None:
            message = f"Claude AI usage limit reached|{plan.ratelimit}"
            if stream:
                info = {"status": "rejected", "resetsAt": plan.ratelimit, "rateLimitType": "five_hour"}
                self.emit({"type": "rate_limit_event", "rate_limit_info": info, "session_id": self.session})
                self.assistant(message, error="rate_limit")
            return self.end(stream, message, True, started, code=1)
        if plan.ask:
            text = "I need permission to run `echo hello`, which was denied in non-interactive mode."
            self.grow(plan)
            denial = {"tool_name": "Bash", "tool_use_id": "toolu_1", "tool_input": {"command": "echo hello"}}
            return self.end(stream, text, False, started, permission_denials=[denial])
        if plan.fail is not None:
            self.grow(plan)
            return self.end(stream, plan.fail, True, started, subtype="error_during_execution", code=1)
        reply = plan.reply()
        if plan.recall:
            reply = "Recalled: " + (" | ".join(self.prompts) or "nothing")
        self.prompts.append(plan.text)
        self.grow(plan)
        self.keep(plan.text)
        return self.end(stream, reply, False, started)

    def grow(self, plan: Plan) -> None:
        if plan.context is not None:
            self.used = min(100.0, plan.context)
        else:
            self.used = min(99.0, self.used + self.args.context_step)

    def end(
        self,
        stream: bool,
        text: str,
        is_error: bool,
        started: float,
        subtype: str = "success",
        code: int = 0,
        **extra: object,
    ) -> int:
        if stream:
            if not is_error:
                self.assistant(text)
            self.result(text, is_error, started, subtype, **extra)
        elif self.args.output_format == "json":
            self.result(text, is_error, started, subtype, **extra)
        elif is_error and subtype != "success":
            sys.stderr.write(f"Error: {text}\n")
        else:
            write(text + "\n")
        return code

    def stream_loop(self) -> int:
        import json

        if self.missing is not None:
            return self.no_conversation(stream=True)
        for raw in sys.stdin.buffer:
            line = raw.strip()
            if not line:
                continue
            if self.args.no_ready:
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                sys.stderr.write(f"Error parsing JSON input: {exc}\n")
                continue
            if not isinstance(event, dict) or event.get("type") != "user":
                continue
            message = event.get("message") or {}
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                prompt = content
            elif isinstance(content, list):
                prompt = "\n".join(
                    str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
                )
            else:
                continue
            self.turn(prompt, stream=True)
        return 0


# ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = Args(argv)
    if "--version" in args.flags or "-v" in args.flags:
        write(VERSION + "\n")
        return 0
    if "--ignore-sigterm" in args.flags:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: _exit(143))
    signal.signal(signal.SIGHUP, lambda *_: _exit(129))
    if args.startup_delay > 0:
        time.sleep(args.startup_delay)
    if args.print_mode:
        headless = Headless(args)
        if args.input_format == "stream-json":
            if args.output_format != "stream-json":
                sys.stderr.write("Error: --input-format=stream-json requires --output-format=stream-json\n")
                return 1
            return headless.stream_loop()
        prompt = " ".join(args.positional) if args.positional else sys.stdin.read()
        if not prompt.strip():
            sys.stderr.write("Error: Input must be provided either through stdin or as a prompt argument\n")
            return 1
        if args.no_ready:
            while True:
                time.sleep(3600)
        if headless.missing is not None:
            return headless.no_conversation(stream=args.output_format == "stream-json")
        return headless.turn(prompt, stream=args.output_format == "stream-json")
    tui = Tui(args)
    signal.signal(signal.SIGWINCH, lambda *_: tui.resize())
    raw_terminal()
    try:
        tui.run()
    finally:
        restore_terminal()
    return 0


def _exit(code: int) -> None:
    restore_terminal()
    os._exit(code)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os._exit(0)
