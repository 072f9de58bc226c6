"""Patterns every dialect recognises: context pressure, usage limits, questions that need an answer.

Built-in patterns follow what Claude Code prints (`Context left until auto-compact: 8%`, `Claude AI
usage limit reached|1732460000`, `5-hour limit reached ∙ resets 3pm (UTC)`, `Do you want to proceed?`
over a `1. Yes` option, `API Error: 529 Overloaded`, `Retrying in 4 seconds… (attempt 4/10)`); profiles
add their own regexes through options. Built-ins are found through
a cheap literal hint (`str.find`) before any regex runs, so output without those words costs nearly
nothing: this sits on the hot path of a 50 MB/s parser.

What an API failure calls for and when a usage limit resets (`parse_reset`) are
protocols/dialects/apierrors.py, re-exported here; this module is the scanner.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .apierrors import API_ERROR_LINE as API_ERROR_LINE
from .apierrors import BACKOFF_KINDS as BACKOFF_KINDS
from .apierrors import api_backoff as api_backoff
from .apierrors import api_error_kind as api_error_kind
from .apierrors import api_error_status as api_error_status
from .apierrors import parse_reset as parse_reset
from .apierrors import retry_category
from .base import ApiRetry, ContextUsage, ExtraUsage, NeedsInput, RateLimited, Signal, TaskFailed

_LINES_READ_MAX = 512  # decided lines remembered (a TUI redraws the same few lines over and over)
_API_HINTS = ("imit", "etrying in", "API Error", "Invalid API key", "OAuth token", "has disabled Claude")


def _api_hint(text: str) -> bool:
    """Cheap check for the API error lines that do not say "API Error"."""
    return "Invalid API key" in text or "OAuth token" in text or "has disabled Claude" in text


# The CLI's retry line: 1.0.x `API Error (529 ...) · Retrying in 4 seconds… (attempt 4/10)`, 2.0.x
# `Retrying in 19 seconds… (attempt 10/10)` under `⎿  529 {...}`, 2.1.x `✻ 529 Overloaded · retrying in
# 3s · attempt 3/3` (`✻ API error · retrying in 1s · attempt 1/3` when it names no status).
_RETRY_LINE = re.compile(
    r"[Rr]etrying in (?P<delay>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|secs?|seconds?|m|mins?|minutes?)?\b…?"
    r"[^\n]{0,40}?\battempt (?P<attempt>\d+)\s*/\s*(?P<max>\d+)"
)
_DANGLING_RESET = re.compile(
    r"(?:\bresets?|\breset at|\btry again(?: at)?|\bavailable again(?: at)?)[^\S\n]*[│]?[^\S\n]*$",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------------------------------
# detection

_CONTEXT_LEFT = re.compile(r"Context left until auto-compact:\s*(\d{1,3})\s*%")
_CONTEXT_LOW = re.compile(r"Context low \((\d{1,3})% remaining\)")
_EXHAUSTED = re.compile(r"Context limit reached|Prompt is too long|context window exceeded", re.IGNORECASE)
_LIMIT = re.compile(
    r"usage limit reached|\blimit reached\b|hit your (?:[\w-]+ )?limit|limit will reset", re.IGNORECASE
)
_NOT_LIMIT = re.compile(r"now using|approaching|not your usage limit", re.IGNORECASE)
_QUESTION = re.compile(r"(?:Do you (?:want|trust)|Would you like)[^\n?]{0,300}\?")
_YES_OPTION = re.compile(r"(?:^|[\s>❯›])1\.\s+Yes\b")
# A menu option line: optional box border, optional cursor, "N. label" (the label ends at a border).
_OPTION = re.compile(r"^[\s│]*(?P<cur>[❯›>]\s*)?(?P<n>[1-9])\.\s+(?P<label>[^│\n]*?)\s*│?\s*$")
# ... or the first option on the question's own line ("Do you want to proceed? > 1. Yes").
_OPTION_INLINE = re.compile(r"(?P<pre>\?\s*|\s)(?P<cur>[❯›>]\s*)?(?P<n>1)\.\s+(?P<label>[^│\n]*?)\s*│?\s*$")
_PLAIN_CURSOR = re.compile(r"^[\s│]*[❯›]\s*")  # the highlighted option of a menu without numbers
_PLAIN_MAX = 9  # options of a menu without numbers, at most
_MENU_LOOKUP_LINES = 12  # how far above the first option its question may be
_MENU_TAIL = 1500  # a menu split across chunks: its first options may be this far back in lookback
_EXTRA_USAGE = re.compile(r"Now using extra usage|using (?:your )?usage credits", re.IGNORECASE)
_QUESTION_LOOKBACK = 3000
_MESSAGE_MAX = 500


class Hit(NamedTuple):
    """One finding at `pos` in the scanned text; `kind` is context, exhausted, limit, needs_input,
    extra_usage, retry (ApiRetry), api_backoff (RateLimited: an API failure that is not the task's)
    or api_failure (TaskFailed: the API refused the request itself)."""

    pos: int
    kind: str
    signal: Signal
    detail: str = ""


def _line_at(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end < 0 else end


def _clean(line: str) -> str:
    return " ".join(line.replace("│", " ").split())[:_MESSAGE_MAX]


class PatternScanner:
    """Finds context/limit/needs-input lines in complete text and de-duplicates repeats.

    TUIs redraw their footer and dialogs on every frame, so each finding is reported once: context
    usage when the value changes, a usage limit once per task (or per message outside a task), a
    question until `clear_questions()` (the dialect calls it when the screen moves on).
    """

    def __init__(
        self,
        *,
        builtin: bool = True,
        context: Sequence[re.Pattern[str]] = (),
        exhausted: Sequence[re.Pattern[str]] = (),
        usage_limit: Sequence[re.Pattern[str]] = (),
        needs_input: Sequence[re.Pattern[str]] = (),
        overloaded_park_s: float = 60.0,
        auth_park_s: float = 300.0,
    ) -> None:
        self.builtin = builtin
        self.overloaded_park_s = overloaded_park_s
        self.auth_park_s = auth_park_s
        self._held: str | None = None  # a last line whose meaning depends on the next one
        self.context = tuple(context)
        self.exhausted = tuple(exhausted)
        self.usage_limit = tuple(usage_limit)
        self.needs_input = tuple(needs_input)
        self.last_context: float | None = None
        self._limits_seen: set[str] = set()
        self._lines_read: set[str] = set()  # hint lines (with the line after) decided since reset_task
        self._question: tuple[str, tuple[str, ...]] | None = None  # the last question asked
        self._open_menu: tuple[str, ...] | None = None  # options of a menu the last read ended in
        self.question_seen = False  # a question (new or repeated) was in the last scanned text
        self._hits: list[Hit] = []

    def reset_task(self) -> None:
        self._limits_seen.clear()
        self._lines_read.clear()
        self._question = None

    def flush(self, now_epoch: float) -> list[Hit]:
        """Decide a held line as it stands (the output ended, no continuation will come)."""
        if self._held is None:
            return []
        held, self._held = self._held, None
        hits: list[Hit] = []
        self._hits = hits
        self._builtin_api(held, 0, now_epoch, final=True)
        return hits

    def clear_questions(self) -> None:
        self._question = None

    def scan(self, text: str, lookback: str, now_epoch: float, *, final: bool = False) -> list[Hit]:
        """Findings in `text` (complete lines), in order; `lookback` is the text just before it.

        A usage-limit line that ends in "resets" (its time wrapped onto the next line) or an API
        error line (the next line may say "Retrying in ...") that is the last line of `text` is held
        and read with the next call's text; `final`: nothing follows, hold nothing.
        """
        hits: list[Hit] = []
        self._hits = hits
        self.question_seen = False
        if self.builtin:
            if "Context " in text:
                self._hinted(text, "Context ", self._builtin_context)
            if self._held is not None:
                held, self._held = self._held, None
                self._builtin_api(held + text, len(held), now_epoch, final=final, lookback=lookback)
            elif "imit" in text or "API Error" in text or "etrying in" in text or _api_hint(text):
                self._builtin_api(text, 0, now_epoch, final=final, lookback=lookback)
            for hint in ("too long", "exceeded"):
                if hint in text:
                    self._hinted(text, hint, lambda line, s: self._builtin_exhausted(line, s))
            if "1. " in text or "1. " in lookback[-_MENU_TAIL:]:
                self._builtin_menus(text, lookback[-_MENU_TAIL:])
            if "Enter to confirm" in text:
                self._hinted(text, "Enter to confirm", lambda _l, s: self._plain_menu(text, s, lookback))
            if "usage" in text:
                self._hinted(text, "usage", self._builtin_extra_usage)
        for pat in self.context:
            for m in pat.finditer(text):
                used = _used_from_match(m)
                if used is not None:
                    self._context(hits, m.start(), used)
        for pat in self.exhausted:
            for m in pat.finditer(text):
                self._exhausted(hits, m.start(), m.group(0))
        for pat in self.usage_limit:
            for m in pat.finditer(text):
                start, end = _line_at(text, m.start())
                self._limit(hits, m.start(), m, text[start:end], text[start : end + 400], now_epoch)
        for pat in self.needs_input:
            for m in pat.finditer(text):
                groups = m.groupdict()
                prompt = groups.get("prompt") or m.group(0)
                self._ask(hits, m.start(), _clean(prompt))
        if len(hits) > 1:
            hits.sort(key=lambda h: h.pos)
        return hits

    def scan_context(self, line: str) -> list[Hit]:
        """Context usage in a partial last line: a TUI leaves its footer unterminated until the next
        redraw. Only context is read here; a cut-off limit message could give a wrong reset time."""
        hits: list[Hit] = []
        self._hits = hits
        if self.builtin and "Context " in line:
            self._builtin_context(line, 0)
        for pat in self.context:
            for m in pat.finditer(line):
                used = _used_from_match(m)
                if used is not None:
                    self._context(hits, m.start(), used)
        return hits

    # -- built-ins ---------------------------------------------------------------------------------

    @staticmethod
    def _hinted(text: str, hint: str, on_line: Callable[[str, int], None]) -> None:
        """Call `on_line(line, line_start)` for each line holding `hint`."""
        pos = text.find(hint)
        while pos >= 0:
            start, end = _line_at(text, pos)
            on_line(text[start:end], start)
            pos = text.find(hint, end)

    def _builtin_context(self, line: str, start: int) -> None:
        m = _CONTEXT_LEFT.search(line) or _CONTEXT_LOW.search(line)
        if m:
            self._context(self._hits, start + m.start(), 100.0 - min(100, int(m.group(1))))

    def _builtin_exhausted(self, line: str, start: int) -> None:
        e = _EXHAUSTED.search(line)
        if e:
            self._exhausted(self._hits, start + e.start(), line)

    def _builtin_api(
        self, text: str, shift: int, now_epoch: float, *, final: bool, lookback: str = ""
    ) -> None:
        """Usage limits, context exhaustion, API error lines and retry lines, line by line.

        `text` may start with a held line (`shift` characters) read again with what followed it;
        findings in it are placed at the start of the new text.
        """
        hits = self._hits
        size = len(text)
        starts: set[int] = set()  # only lines holding a hint are looked at
        for hint in _API_HINTS:
            found = text.find(hint)
            while found >= 0:
                start = text.rfind("\n", 0, found) + 1
                starts.add(start)
                end = text.find("\n", found)
                found = -1 if end < 0 else text.find(hint, end)
        for pos in sorted(starts):
            end = text.find("\n", pos)
            if end < 0:
                end = size
            line = text[pos:end]
            nxt_end = text.find("\n", end + 1) if end < size else -1
            last = end + 1 >= size  # no line after this one (yet)
            nxt = None if last else text[end + 1 : size if nxt_end < 0 else nxt_end]
            key = line if nxt is None else f"{line}\n{nxt}"
            if key in self._lines_read:
                continue  # a redraw of a line already decided: same finding, already reported
            at = max(0, pos - shift)
            if "imit" in line:
                e = _EXHAUSTED.search(line)
                if e:
                    self._exhausted(hits, at + e.start(), line)
                else:
                    m = _LIMIT.search(line)
                    if m and not _NOT_LIMIT.search(line):
                        if _DANGLING_RESET.search(line):
                            if last and not final:
                                self._held = line + "\n"
                                return
                            region = line if nxt is None else line + " " + nxt.strip(_RULE_CHARS)
                        else:
                            region = line
                        self._limit(hits, at + m.start(), None, region, region, now_epoch)
            if "etrying in" in line:
                before = text[max(0, pos - 400) : pos] if pos >= 400 else lookback[-400:] + text[:pos]
                self._retry(line, before, at)
            elif ("API Error" in line or _api_hint(line)) and (a := API_ERROR_LINE.match(line)):
                if last and not final:
                    self._held = line + "\n"
                    return
                if nxt is None or "etrying in" not in nxt:
                    self._api_line(a.group("reason"), at, now_epoch)
            if len(self._lines_read) >= _LINES_READ_MAX:
                self._lines_read.clear()
            self._lines_read.add(key)

    def _retry(self, line: str, before: str, at: int) -> None:
        """A TUI retry line: ApiRetry, once per attempt (the screen redraws it)."""
        m = _RETRY_LINE.search(line)
        if m is None:
            return
        status = api_error_status(line[: m.start()])
        if status is None:  # 2.0.x: the status is on the line above
            above = before.rstrip("\n").rsplit("\n", 1)[-1]
            status = api_error_status(above)
        attempt, most = int(m.group("attempt")), int(m.group("max"))
        key = f"retry|{attempt}|{most}|{status}"
        if key in self._limits_seen:
            return
        self._limits_seen.add(key)
        unit = (m.group("unit") or "s").lower()
        delay = float(m.group("delay")) * (0.001 if unit == "ms" else 60.0 if unit.startswith("m") else 1.0)
        error = retry_category(status, line)
        signal = ApiRetry(attempt=attempt, max_retries=most, delay_s=delay, status=status, error=error)
        self._hits.append(Hit(at, "retry", signal))

    def _api_line(self, reason: str, at: int, now_epoch: float) -> None:
        """A turn-ending API error line: a back-off (RateLimited) or the task's own failure."""
        reason = _clean(reason)
        status = api_error_status(reason)
        kind = api_error_kind(status, None, reason)
        key = f"api|{reason}"
        if key in self._limits_seen:
            return
        self._limits_seen.add(key)
        if kind is None:
            self._hits.append(Hit(at, "api_failure", TaskFailed(reason=reason), reason))
            return
        signal = api_backoff(
            kind,
            status,
            reason,
            now_epoch,
            overloaded_park_s=self.overloaded_park_s,
            auth_park_s=self.auth_park_s,
        )
        self._hits.append(Hit(at, "api_backoff", signal, reason))

    def _builtin_menus(self, text: str, tail: str) -> None:
        """Numbered menus: the agent waits for a choice (permission, trust, usage limit, picker).

        A menu is reported with the options read so far; when a read ended inside a menu and the
        next read brings more of its options, it is reported again with all of them (same question,
        more options). A menu read before is otherwise not news (it is still on screen, or gone).
        `tail` is the end of the text before `text`.
        """
        window = tail + text
        offset = len(tail)
        pos = window.find("1. ")
        while pos >= 0:
            start, end = _line_at(window, pos)
            after = self._builtin_menu(window, offset, window[start:end], start)
            pos = window.find("1. ", max(end, after))

    def _builtin_menu(self, window: str, offset: int, line: str, start: int) -> int:
        """Read the menu whose first option is `line` (at `start` in `window`); returns where it ends.

        A `1. Yes` line under a known question is one (the permission prompts of every version);
        otherwise it takes a cursor (`❯ 1.`) on an option and at least two options, so that a
        numbered list in a reply is not mistaken for a menu. The question is the nearest known
        question above, else the nearest line above the options ending in `?`, else the nearest text.
        """
        first = _OPTION.match(line) or _OPTION_INLINE.search(line)
        if first is None or first.group("n") != "1":
            return start + len(line)
        if first.re is _OPTION_INLINE and "?" not in first.group("pre") and first.group("cur") is None:
            return start + len(line)  # "see step 1. below": not an option
        options, cursor = [first.group("label")], first.group("cur") is not None
        pos = start + len(line) + 1
        terminated = False
        while pos < len(window):
            end = window.find("\n", pos)
            if end < 0:
                break  # an incomplete line: wait for the rest
            nxt = window[pos:end]
            m = _OPTION.match(nxt)
            if m is not None and m.group("n") == str(len(options) + 1):
                options.append(m.group("label"))
                cursor = cursor or m.group("cur") is not None
            elif m is not None or nxt.strip(" │\u00a0"):
                terminated = True  # the footer (or anything that is not the next option) ends it
                break
            elif len(options) >= 2 or window[end + 1 : end + 2] == "\n":
                terminated = True  # a blank line after the options (two blanks for a lone option)
                break
            pos = end + 1
        labels = tuple(_clean(o) for o in options)
        if start < offset:  # its first line was read before: news only if more options came since
            was = self._open_menu
            if was is None or len(labels) <= len(was) or labels[: len(was)] != was:
                return pos
        self._open_menu = None if terminated else labels
        yes_menu = bool(_YES_OPTION.search(line))
        if not yes_menu and not (cursor and (len(options) >= 2 or not terminated)):
            return pos
        inline = line[: first.end("pre")] if first.re is _OPTION_INLINE else ""
        before = window[max(0, start - _QUESTION_LOOKBACK) : start] + inline
        question = None
        for q in _QUESTION.finditer(before):
            question = q.group(0)
        if question is None and yes_menu and not cursor:
            return pos  # "1. Yes" in plain text, with no question above it
        if question is None or len(before) - before.rfind(question) > 160 * _MENU_LOOKUP_LINES:
            question = _menu_title(before) or question
        if question is not None:
            self._ask(self._hits, max(0, start - offset), _clean(question), labels)
        return pos

    def _plain_menu(self, text: str, footer: int, lookback: str) -> None:
        """A menu drawn without numbers above its `Enter to confirm` footer (CLI 2.1.332's trust
        dialog: `❯ No, exit` / `Yes, I trust this folder`): the block of lines just above the footer
        with exactly one cursor line and no numbered option is the options, cursor included."""
        window = lookback[-_MENU_TAIL:] + text[:footer]
        lines = window.split("\n")[:-1]  # the last is the footer's own (empty) start
        while lines and not lines[-1].strip(" │\u00a0"):
            lines.pop()
        block: list[str] = []
        while lines and lines[-1].strip(" │\u00a0") and len(block) <= _PLAIN_MAX:
            block.insert(0, lines.pop())
        if not 2 <= len(block) <= _PLAIN_MAX or any(_OPTION.match(b) for b in block):
            return
        cursors = [i for i, b in enumerate(block) if _PLAIN_CURSOR.match(b)]
        if len(cursors) != 1:
            return
        options = tuple(_clean(_PLAIN_CURSOR.sub("", b).strip(_RULE_CHARS)) for b in block)
        question = _menu_title("\n".join(lines) + "\n")
        if question is not None and all(options):
            self._ask(self._hits, footer, _clean(question), options, numbered=False, cursor=cursors[0])

    def _builtin_extra_usage(self, line: str, start: int) -> None:
        m = _EXTRA_USAGE.search(line)
        if m and "extra" not in self._limits_seen:
            self._limits_seen.add("extra")
            self._hits.append(Hit(start + m.start(), "extra_usage", ExtraUsage(message=m.group(0))))

    # -- recording (with de-duplication) -----------------------------------------------------------

    def _context(self, hits: list[Hit], pos: int, used: float) -> None:
        if used != self.last_context:
            self.last_context = used
            hits.append(Hit(pos, "context", ContextUsage(used_percent=used)))

    def _exhausted(self, hits: list[Hit], pos: int, message: str) -> None:
        self._context(hits, pos, 100.0)
        key = "exhausted"
        if key not in self._limits_seen:
            self._limits_seen.add(key)
            hits.append(Hit(pos, "exhausted", ContextUsage(used_percent=100.0), _clean(message)))

    def _limit(
        self, hits: list[Hit], pos: int, m: re.Match[str] | None, line: str, region: str, now_epoch: float
    ) -> None:
        reset: float | None = None
        if m is not None:
            groups = m.groupdict()
            if groups.get("epoch"):
                value = int(groups["epoch"])
                reset = value / 1000.0 if value >= 10**12 else float(value)
            elif groups.get("reset"):
                reset = parse_reset(groups["reset"], now_epoch)
        if reset is None:
            reset = parse_reset(region, now_epoch)
        message = _clean(line)
        key = f"{message}|{reset}"
        if key in self._limits_seen:
            return
        self._limits_seen.add(key)
        hits.append(Hit(pos, "limit", RateLimited(reset_at=reset, message=message)))

    def _ask(
        self,
        hits: list[Hit],
        pos: int,
        question: str,
        options: tuple[str, ...] = (),
        *,
        numbered: bool = True,
        cursor: int | None = None,
    ) -> None:
        """Report a question once; a menu seen again with more options (its rest arrived) again."""
        self.question_seen = True
        if self._question != (question, options):
            self._question = (question, options)
            asked = NeedsInput(prompt=question, options=options, numbered=numbered, cursor=cursor)
            hits.append(Hit(pos, "needs_input", asked))


_RULE_CHARS = "│ \u00a0╭╮╰╯─╌━═"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ASKING = re.compile(r"\w[^?]*\?")


def _menu_title(before: str) -> str | None:
    """The question of a menu from the lines above it: the sentence with a `?` in the nearest
    paragraph that has one (wrapped lines joined), else the first line of the nearest paragraph
    ("Select model")."""
    paragraphs: list[list[str]] = [[]]
    for raw in reversed(before.splitlines()[-_MENU_LOOKUP_LINES:]):
        line = _clean(raw.strip(_RULE_CHARS))
        if line:
            paragraphs[-1].insert(0, line)
        elif paragraphs[-1]:
            paragraphs.append([])
    paragraphs = [p for p in paragraphs if p]
    for para in paragraphs:
        whole = next((x for x in reversed(para) if x.endswith("?") and x[:1].isupper()), None)
        if whole is not None:
            return whole  # a question on a line of its own ("What do you want to do?")
        # a sentence with words before its "?" ("? for shortcuts", a footer left above by the
        # previous frame, is not a question)
        asking = next((s for s in _SENTENCE_END.split(" ".join(para)) if _ASKING.search(s)), None)
        if asking is not None:
            return asking[:_MESSAGE_MAX]
    return paragraphs[0][0] if paragraphs else None


def _used_from_match(m: re.Match[str]) -> float | None:
    """A user context pattern gives `used` or `left` (named groups), else group 1 is percent left."""
    groups = m.groupdict()
    try:
        if groups.get("used") is not None:
            return max(0.0, min(100.0, float(groups["used"])))
        left = groups.get("left")
        if left is None and m.re.groups >= 1:
            left = m.group(1)
        if left is None:
            return None
        return max(0.0, min(100.0, 100.0 - float(left)))
    except ValueError:
        return None
