"""The prompt dialect against real Claude Code screens and synthetic Ink-style redraws, as plain bytes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import (
    ApiRetry,
    ContextUsage,
    NeedsInput,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
)
from shoal.protocols.dialects.prompt import PromptDialect
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import Assignment

S = TypeVar("S")
NOW = 1000.0
WALL = 1_750_000_000.0

# What each real screen must produce. done: whether a task written before the screen ends on it.
EXPECT: dict[str, dict[str, object]] = {
    "tui-busy-compacting-context-0pct-v2.1.20-1.txt": {"ready": False, "context": [100.0]},
    "tui-busy-esc-to-interrupt-v2.1.20-1.txt": {"ready": False},
    "tui-idle-after-mcp-toolcall-1.txt": {"ready": True, "done": True},
    "tui-idle-after-reply-1.txt": {"ready": True, "done": True},
    "tui-idle-after-search-tool-1.txt": {"ready": True, "done": True},
    "tui-idle-auto-accept-edits-1.txt": {"ready": True, "done": False},
    "tui-idle-context-left-8pct-1.txt": {"ready": True, "done": True, "context": [92.0]},
    "tui-idle-worked-for-extra-usage-v2.1.20-1.txt": {"ready": True, "done": True},
    "tui-interrupted-context-left-0pct-1.txt": {"ready": True, "done": True, "context": [100.0]},
    "tui-permission-bash-v2.1.20-1.txt": {"ready": False, "ask": ["Do you want to proceed?"]},
    "tui-permission-edit-file-v2.1.20-1.txt": {
        "ready": False,
        "ask": ["Do you want to make this edit to python-first_scrpa_conversion_79b5fb6b.plan.md?"],
    },
    "tui-ready-welcome-idle-1.txt": {"ready": True, "done": False},
    "tui-trust-dialog-then-welcome-1.txt": {
        "ready": False,
        "ask": ["Do you trust the files in this folder?"],
    },
}
FIXTURE_FILES = sorted(FIXTURES.glob("*.txt"))
TASK = Assignment(task_id="t1", attempt=1, prompt="Build a snake game")


def test_every_fixture_has_expectations() -> None:
    assert sorted(p.name for p in FIXTURE_FILES) == sorted(EXPECT)


def new(options: dict[str, object] | None = None) -> PromptDialect:
    dialect = make_dialect("prompt", options or {}, wall_clock=lambda: WALL)
    assert isinstance(dialect, PromptDialect)
    return dialect


def run(data: bytes, cuts: Sequence[int] = (), *, task: Assignment | None = None) -> list[Signal]:
    dialect = new()
    if task is not None:
        dialect.start_task(task, NOW)
    out: list[Signal] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out += dialect.feed(data[prev:cut], NOW)
        prev = cut
    return out


LIFECYCLE = (Ready, TaskDone, TaskFailed, RateLimited)


def same(a: Sequence[Signal], b: Sequence[Signal]) -> bool:
    """The same signals, and the task life cycle (Ready/TaskDone/TaskFailed/RateLimited) in the same order.

    Reports (ContextUsage, NeedsInput) may move relative to Ready: a footer cut by a chunk boundary
    is read once its line is complete, after the prompt above it was already judged ready.
    """
    lifecycle = [s for s in a if isinstance(s, LIFECYCLE)] == [s for s in b if isinstance(s, LIFECYCLE)]
    return lifecycle and sorted(map(repr, _menus_whole(a))) == sorted(map(repr, _menus_whole(b)))


def _menus_whole(signals: Sequence[Signal]) -> list[Signal]:
    """A menu cut by a chunk boundary is reported with the options read so far, then again with all
    of them: keep the last report of each such run (same question, options growing)."""
    out: list[Signal] = []
    for s in signals:
        prev = out[-1] if out else None
        if (
            isinstance(s, NeedsInput)
            and isinstance(prev, NeedsInput)
            and prev.prompt == s.prompt
            and s.options[: len(prev.options)] == prev.options
        ):
            out[-1] = s
        else:
            out.append(s)
    return out


def kinds(signals: Sequence[Signal], kind: type[S]) -> list[S]:
    return [s for s in signals if isinstance(s, kind)]


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_without_a_task(path: Path) -> None:
    expect = EXPECT[path.name]
    signals = run(path.read_bytes())
    assert (Ready() in signals) == expect["ready"]
    assert [s.used_percent for s in kinds(signals, ContextUsage)] == expect.get("context", [])
    assert [s.prompt for s in kinds(signals, NeedsInput)] == expect.get("ask", [])
    assert not kinds(signals, TaskDone) and not kinds(signals, TaskFailed)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_as_the_end_of_a_task(path: Path) -> None:
    expect = EXPECT[path.name]
    signals = run(path.read_bytes(), task=TASK)
    done = kinds(signals, TaskDone)
    assert bool(done) == expect.get("done", False)
    if done:
        assert signals.index(done[0]) < signals.index(Ready())  # TaskDone first, then Ready
        assert done[0].result.strip()
    else:
        assert Ready() not in signals  # no Ready while the task is still open


def test_results_keep_the_reply_and_drop_the_chrome() -> None:
    def result(name: str) -> str:
        done = kinds(run((FIXTURES / name).read_bytes(), task=TASK), TaskDone)
        assert isinstance(done[0], TaskDone)
        return done[0].result

    assert result("tui-idle-after-reply-1.txt") == (
        "I'm doing well! How can I help you with your coding project today?"
    )
    snake = result("tui-idle-after-mcp-toolcall-1.txt")
    assert snake.startswith("I'll build a snake game for you.")
    assert "Build a snake game" not in snake.split("\n")[0]  # the echoed prompt is gone
    assert "Collect the red food to grow" in snake
    assert "───" not in snake and "? for shortcuts" not in snake
    search = result("tui-idle-after-search-tool-1.txt")
    assert search.endswith("/Users/hugodutka/dev/agentapi/chat/src/components/ChatInterface.tsx")
    assert "Which file is this code from?" not in search and "│" not in search
    compact = result("tui-idle-context-left-8pct-1.txt")
    assert "Context left until auto-compact" not in compact and "/compact" not in compact


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_every_byte_boundary_split_gives_the_same_signals(path: Path) -> None:
    data = path.read_bytes()
    for task in (None, TASK):
        whole = run(data, task=task)
        for cut in range(1, len(data)):
            assert same(run(data, [cut], task=task), whole), (path.name, cut, task)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(FIXTURE_FILES),
    st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=40),
    st.booleans(),
)
def test_random_splits_give_the_same_signals(path: Path, cuts: list[int], with_task: bool) -> None:
    data = path.read_bytes()
    task = TASK if with_task else None
    assert same(run(data, [c for c in cuts if c <= len(data)], task=task), run(data, task=task))


def dress(text: str) -> bytes:
    """A fixture as a terminal would receive it: colours on every line, CRLF, a title, a cursor hide."""
    colours = ("\x1b[38;5;244m", "\x1b[1m", "\x1b[2m", "\x1b[38;2;215;119;87m")
    lines = [f"{colours[i % 4]}{line}\x1b[0m" if line else line for i, line in enumerate(text.split("\n"))]
    return ("\x1b]0;claude\x07\x1b[?25l" + "\r\n".join(lines)).encode()


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_in_ansi_colours_gives_the_same_signals(path: Path) -> None:
    plain = path.read_bytes()
    coloured = dress(path.read_text(encoding="utf-8"))
    assert run(coloured) == run(plain)
    assert run(coloured, task=TASK) == run(plain, task=TASK)


# ------------------------------------------------------------------------------------------------
# synthetic Ink-style sessions: a dynamic region erased and redrawn under static output

RULE = "\x1b[38;5;244m" + "─" * 60 + "\x1b[0m"


class Screen:
    """Builds the bytes an Ink TUI writes: erase the dynamic region, print static lines, redraw it."""

    def __init__(self, *, box: bool = False) -> None:
        self.height = 0
        self.box = box

    def frame(
        self, *, spinner: str | None = None, typed: str = "", footer: str = "? for shortcuts"
    ) -> list[str]:
        lines = [f"\x1b[38;5;174m{spinner}\x1b[0m", ""] if spinner else []
        if self.box:
            lines += [
                "╭" + "─" * 58 + "╮",
                f"│ \x1b[1m>\x1b[0m {typed}".ljust(59) + "│",
                "╰" + "─" * 58 + "╯",
            ]
        else:
            lines += [RULE, f"\x1b[1m>\x1b[0m\xa0{typed}", RULE]
        return [*lines, f"  \x1b[2m{footer}\x1b[0m"]

    def draw(self, static: Sequence[str] = (), frame: Sequence[str] | None = None) -> bytes:
        out = ""
        if self.height:
            out += "\x1b[2K\x1b[1A" * (self.height - 1) + "\x1b[2K\x1b[G"
        out += "".join(f"{line}\r\n" for line in static)
        frame = list(frame or [])
        out += "\r\n".join(frame)
        self.height = len(frame)
        return out.encode()


def session(dialect: PromptDialect, chunks: Sequence[bytes], now: float = NOW) -> list[Signal]:
    out: list[Signal] = []
    for chunk in chunks:
        out += dialect.feed(chunk, now)
    return out


def test_a_whole_turn_on_a_redrawn_screen() -> None:
    screen = Screen()
    dialect = new()
    start = screen.draw(["\x1b[?2004h╭───╮", "│ ✻ Welcome to Claude Code! │", "╰───╯", ""], screen.frame())
    assert session(dialect, [start]) == [Ready()]
    task = Assignment("t1", 1, "say hi")
    dialect.start_task(task, NOW)
    assert dialect.encode(task) == b"\x1b[200~say hi\x1b[201~\r"  # bracketed paste: the TUI enabled it
    typed = screen.draw([], screen.frame(typed="say hi"))
    assert session(dialect, [typed]) == []  # the prompt typed into the box is no answer
    busy = [
        screen.draw(["> say hi", ""], screen.frame(spinner=f"{glyph} Thinking… ({n}s · esc to interrupt)"))
        for n, glyph in enumerate("·✢✳✶✻✽")
    ]
    assert session(dialect, busy) == []
    reply = screen.draw(["\x1b[1m●\x1b[0m Hi there!", "  Second line.", ""], screen.frame())
    assert session(dialect, [reply]) == [TaskDone(result="Hi there!\nSecond line."), Ready()]


def test_box_style_and_footer_only_busy_marker() -> None:
    screen = Screen(box=True)
    dialect = new()
    assert session(dialect, [screen.draw([], screen.frame())]) == [Ready()]
    dialect.start_task(TASK, NOW)
    # newer builds: no spinner glyph line, "esc to interrupt" only in the footer
    busy = screen.draw(["> Build a snake game", ""], screen.frame(footer="esc to interrupt"))
    assert session(dialect, [busy]) == []
    done = screen.draw(["● Built it.", ""], screen.frame())
    assert session(dialect, [done]) == [TaskDone(result="Built it."), Ready()]


def test_past_tense_spinner_is_idle_and_present_tense_is_busy() -> None:
    screen = Screen()
    dialect = new()
    dialect.start_task(TASK, NOW)
    compacting = screen.draw([], screen.frame(spinner="✻ Compacting conversation… (12s)"))
    assert session(dialect, [compacting]) == []
    worked = screen.draw(["● Done.", "", "✻ Worked for 11m 47s", ""], screen.frame())
    assert session(dialect, [worked]) == [TaskDone(result="Done."), Ready()]


def test_a_reply_streamed_under_a_busy_frame_is_not_done_early() -> None:
    screen = Screen()
    dialect = new()
    dialect.start_task(TASK, NOW)
    spin = screen.frame(spinner="✶ Pondering… (esc to interrupt)")
    chunks = [screen.draw(["● part one", ""], spin), screen.draw(["  part two", ""], spin)]
    assert session(dialect, chunks) == []
    assert session(dialect, [screen.draw(["  part three", ""], screen.frame())]) == [
        TaskDone(result="part one\n\npart two\n\npart three"),
        Ready(),
    ]


def test_usage_limit_ends_the_task_without_a_result() -> None:
    screen = Screen()
    dialect = new()
    dialect.start_task(TASK, NOW)
    chunks = [
        screen.draw(["> Build a snake game", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)")),
        screen.draw(["  ⎿  Claude AI usage limit reached|1750003600", ""], screen.frame()),
    ]
    signals = session(dialect, chunks)
    assert signals == [
        RateLimited(reset_at=1750003600.0, message="⎿ Claude AI usage limit reached|1750003600"),
        Ready(),
    ]


def test_human_usage_limit_message_uses_the_injected_wall_clock() -> None:
    dialect = new()
    dialect.start_task(TASK, NOW)
    signals = dialect.feed(b"5-hour limit reached \xe2\x88\x99 resets 3pm (UTC)\r\n", NOW)
    assert len(signals) == 1 and isinstance(signals[0], RateLimited)
    assert signals[0].reset_at == 1750086000.0  # the next 15:00 UTC after WALL (2025-06-15 15:06:40)


def test_context_exhausted_mid_task_fails_it() -> None:
    screen = Screen()
    dialect = new()
    dialect.start_task(TASK, NOW)
    chunk = screen.draw(
        ["> Build a snake game", "", "  ⎿  Context limit reached · /compact or /clear to continue", ""],
        screen.frame(footer="Context left until auto-compact: 0%"),
    )
    signals = session(dialect, [chunk])
    assert signals[0] == ContextUsage(used_percent=100.0)
    assert isinstance(signals[1], TaskFailed) and signals[1].reason.startswith("context exhausted: ")
    assert signals[2:] == [Ready()]


def test_permission_prompt_then_answered_then_done() -> None:
    screen = Screen()
    dialect = new()
    dialect.start_task(TASK, NOW)
    dialog = [
        RULE,
        " Bash command",
        "",
        "   echo hi",
        "",
        " Do you want to proceed?",
        " ❯ 1. Yes",
        "   2. No",
        "",
        " Esc to cancel",  # as every real dialog: a footer under the options
    ]
    asked = session(dialect, [screen.draw(["> Build a snake game", ""], dialog)] * 2)
    asked_once = NeedsInput(prompt="Do you want to proceed?", options=("Yes", "No"))
    assert asked == [asked_once]  # once, though redrawn
    working = screen.draw([], screen.frame(spinner="✻ Thinking… (esc to interrupt)"))
    again = session(dialect, [working, screen.draw([], dialog)])
    assert again == [asked_once]  # a new question after work resumed
    assert session(dialect, [screen.draw(["● Ran it.", ""], screen.frame())]) == [
        TaskDone(result="Ran it."),
        Ready(),
    ]


def test_an_api_error_line_fails_the_task_when_the_prompt_returns() -> None:
    """An API error that is the request's own fault (400) fails the task, at the ready frame."""
    screen = Screen()
    dialect = new()
    dialect.start_task(TASK, NOW)
    busy = screen.draw(["> Build a snake game", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)"))
    error = screen.draw(['  ⎿  API Error: 400 {"type":"error","message":"bad request"}', ""], screen.frame())
    assert session(dialect, [busy, error]) == [
        TaskFailed(reason='API Error: 400 {"type":"error","message":"bad request"}'),
        Ready(),
    ]
    # the next task starts clean: a good turn is done
    dialect.start_task(Assignment("t2", 1, "again"), NOW)
    good = screen.draw(["> again", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)"))
    assert session(dialect, [good, screen.draw(["● Fine.", ""], screen.frame())]) == [
        TaskDone(result="Fine."),
        Ready(),
    ]


def test_a_tool_error_or_an_echoed_error_is_no_failure() -> None:
    screen = Screen()
    dialect = new()
    dialect.start_task(Assignment("t1", 1, "why does it say API Error: x?"), NOW)
    chunks = [
        screen.draw(
            ["> why does it say API Error: x?", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)")
        ),
        screen.draw(
            ["● Bash(make)", "  ⎿  Error: make: *** [all] Error 2", "", "● Fixed it."], screen.frame()
        ),
    ]
    signals = session(dialect, chunks)
    assert isinstance(signals[0], TaskDone) and "Fixed it." in signals[0].result


def test_failure_patterns_option_and_builtin_patterns_off() -> None:
    screen = Screen()
    custom = new({"failure_patterns": [r"^FATAL: (?P<reason>.+)$"]})
    custom.start_task(TASK, NOW)
    chunk = screen.draw(["● working", "FATAL: disk full", ""], screen.frame())
    assert session(custom, [chunk]) == [TaskFailed(reason="disk full"), Ready()]
    off = new({"builtin_patterns": False})
    off.start_task(TASK, NOW)
    chunk = screen.draw(["● working", "  ⎿  API Error: 500", ""], screen.frame())
    signals = session(off, [chunk])
    assert isinstance(signals[0], TaskDone)


def test_task_timeout_from_tick_and_next_deadline() -> None:
    dialect = new()
    dialect.start_task(Assignment("t1", 1, "x", timeout_s=5), NOW)
    assert dialect.next_deadline() == NOW + 5
    assert dialect.tick(NOW + 4.9) == []
    assert dialect.tick(NOW + 5) == [TaskFailed(reason="timeout after 5s")]
    assert dialect.next_deadline() is None
    screen = Screen()
    late = screen.draw(["● too late", ""], screen.frame())
    assert dialect.feed(late, NOW + 6) == [Ready()]  # the stale answer is no TaskDone


def test_default_timeout_option_and_feed_also_checks_the_deadline() -> None:
    dialect = new({"task_timeout_s": 2.5})
    dialect.start_task(TASK, NOW)
    assert dialect.feed(b"still working\r\n", NOW + 3) == [TaskFailed(reason="timeout after 2.5s")]


def test_shell_like_prompt_with_custom_patterns() -> None:
    dialect = new({"prompt_pattern": r"^\$ $", "frame_pattern": "", "require_activity": False})
    assert dialect.feed(b"welcome\r\n$ ", NOW) == [Ready()]
    task = Assignment("t1", 1, "echo hi")
    dialect.start_task(task, NOW)
    assert dialect.encode(task) == b"echo hi\r"  # no bracketed paste: the program never enabled it
    assert dialect.feed(b"echo hi\r\nhi\r\n", NOW) == []
    assert dialect.feed(b"$ ", NOW) == [TaskDone(result="hi"), Ready()]


def test_a_plain_reply_that_repeats_the_prompt_is_kept() -> None:
    """Only the echo is dropped: reply lines equal to the prompt or ending with it are the answer."""
    screen = Screen()
    dialect = new()
    task = Assignment("t1", 1, "hello world")
    dialect.start_task(task, NOW)
    typed = screen.draw([], screen.frame(typed="hello world"))
    busy = screen.draw(["> hello world", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)"))
    reply = screen.draw(["hello world", "", "You said: hello world", ""], screen.frame())
    assert session(dialect, [typed, busy, reply]) == [
        TaskDone(result="hello world\n\nYou said: hello world"),
        Ready(),
    ]


def test_an_echoing_repl_keeps_its_reply() -> None:
    """A REPL whose terminal echoes the line, then prints it back (`cat`): the second copy is the reply."""
    dialect = new({"prompt_pattern": r"^\$ $", "frame_pattern": "", "require_activity": False})
    assert dialect.feed(b"$ ", NOW) == [Ready()]
    dialect.start_task(Assignment("t1", 1, "say it twice"), NOW)
    assert dialect.feed(b"say it twice\r\nsay it twice\r\n", NOW) == []
    assert dialect.feed(b"$ ", NOW) == [TaskDone(result="say it twice"), Ready()]


def test_custom_busy_pattern() -> None:
    dialect = new({"busy_patterns": [r"WORKING"], "builtin_patterns": False})
    dialect.start_task(TASK, NOW)
    screen = Screen()
    assert session(dialect, [screen.draw([], screen.frame(spinner="WORKING"))]) == []
    signals = session(dialect, [screen.draw(["answer"], screen.frame())])
    assert [type(s) for s in signals] == [TaskDone, Ready]
    assert isinstance(signals[0], TaskDone) and signals[0].result.endswith("answer")


def test_results_are_bounded_and_memory_stays_bounded() -> None:
    dialect = new({"max_result_chars": 1000})
    dialect.start_task(TASK, NOW)
    screen = Screen()
    dialect.feed(screen.draw([], screen.frame(spinner="✻ Thinking… (esc to interrupt)")), NOW)
    line = b"\x1b[32m" + b"x" * 70 + b"\x1b[0m\r\n"
    for _ in range(200):
        dialect.feed(b"  " + line * 500, NOW)  # 40 MB of output in one task
    dialect.feed(b"y" * 300_000, NOW)  # and one endless line
    assert len(dialect._pending) <= 65536 and len(dialect._lookback) <= 4096
    assert dialect._task is not None and dialect._task.capture._size <= 2 * (1 << 20)
    signals = session(dialect, [b"\r\n" + screen.draw(["● the end", ""], screen.frame())])
    done = kinds(signals, TaskDone)
    assert done and isinstance(done[0], TaskDone)
    assert len(done[0].result) <= 1000 + len("…[truncated]\n")
    assert done[0].result.endswith("the end")


def test_encode_steps_paste_then_enter_after_a_delay() -> None:
    dialect = new({"submit_delay_ms": 120})
    dialect.feed(b"\x1b[?2004h", NOW)
    task = Assignment("t1", 1, "two\nlines \x1b[201~ injected")
    steps = dialect.encode_steps(task)
    assert steps == [(0.0, b"\x1b[200~two\nlines [201~ injected\x1b[201~"), (0.12, b"\r")]
    assert dialect.encode(task) == b"".join(data for _, data in steps)
    assert dialect.quit_bytes() == b"/exit\r"
    assert new({"bracketed_paste": False}).encode(task).startswith(b"two")
    assert new({"transport": "pipe"}).encode(Assignment("t", 1, "x")) == b"x\n"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"nope": 1}, "options.nope"),
        ({"prompt_pattern": "("}, "options.prompt_pattern"),
        ({"busy_patterns": [3]}, "options.busy_patterns"),
        ({"failure_patterns": "("}, "options.failure_patterns"),
        ({"require_activity": "yes"}, "options.require_activity"),
        ({"task_timeout_s": -1}, "options.task_timeout_s"),
        ({"max_result_chars": 0}, "options.max_result_chars"),
        ({"bracketed_paste": "sometimes"}, "options.bracketed_paste"),
        ({"transport": "serial"}, "options.transport"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_dialect("prompt", options)
    assert info.value.field == field


def test_unknown_dialect_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        make_dialect("telepathy", {})
    assert info.value.field == "dialect"
    assert re.search(r"prompt.*marker.*idle.*stream-json.*oneshot", str(info.value))
    assert make_dialect("stream_json", {}).name == "stream-json"


@pytest.mark.parametrize(
    ("line", "options", "expected"),
    [
        (
            '  ⎿  API Error: 500 {"type":"error","message":"Internal"}',
            {},
            RateLimited(
                WALL + 60, 'API server error (500): API Error: 500 {"type":"error","message":"Internal"}'
            ),
        ),
        (
            "● API Error: 529 Overloaded. This is a server-side issue, usually",
            {"overloaded_park_s": 90},
            RateLimited(
                WALL + 90,
                "API overloaded (529): API Error: 529 Overloaded. This is a server-side issue, usually",
            ),
        ),
        (
            "  ⎿  Invalid API key · Please run /login",
            {"auth_park_s": 1200},
            RateLimited(WALL + 1200, "API authentication failed: Invalid API key · Please run /login"),
        ),
        (
            '  ⎿  API Error: 401 {"type":"error","error":{"type":"authentication_error"}}',
            {},
            RateLimited(
                WALL + 300,
                "API authentication failed (401): "
                'API Error: 401 {"type":"error","error":{"type":"authentication_error"}}',
            ),
        ),
    ],
    ids=["500", "529-overloaded_park_s", "invalid-key-auth_park_s", "401"],
)
def test_an_api_failure_line_is_a_back_off_not_a_failed_attempt(
    line: str, options: dict[str, object], expected: RateLimited
) -> None:
    """Overloaded, server errors and auth failures are not the task's fault: RateLimited (the task goes
    back without an attempt counted, the model waits), as soon as the line is read, whole or cut."""
    screen = Screen()
    busy = screen.draw(["> Build a snake game", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)"))
    data = busy + screen.draw([line, ""], screen.frame())
    for cuts in ([], list(range(1, len(data), 7))):
        dialect = new(options)
        dialect.start_task(TASK, NOW)
        out: list[Signal] = []
        prev = 0
        for cut in [*cuts, len(data)]:
            out += dialect.feed(data[prev:cut], NOW)
            prev = cut
        assert out == [expected, Ready()]


@pytest.mark.parametrize(
    ("lines", "retry"),
    [
        (
            ['API Error (529 {"type":"error"}) · Retrying in 4 seconds… (attempt 4/10)'],
            ApiRetry(attempt=4, max_retries=10, delay_s=4.0, status=529, error="overloaded"),
        ),
        (
            [
                '  ⎿  529 {"type":"error","error":{"type":"overloaded_error"}}',
                "     Retrying in 19 seconds… (attempt 10/10)",
            ],
            ApiRetry(attempt=10, max_retries=10, delay_s=19.0, status=529, error="overloaded"),
        ),
        (
            ["✻ 529 Overloaded · retrying in 3s · attempt 3/3"],
            ApiRetry(attempt=3, max_retries=3, delay_s=3.0, status=529, error="overloaded"),
        ),
        (
            ["✻ API error · retrying in 1s · attempt 1/3"],
            ApiRetry(attempt=1, max_retries=3, delay_s=1.0, status=None, error="unknown"),
        ),
        (
            ["✻ 401 invalid x-api-key · retrying in 1s · attempt 1/1"],
            ApiRetry(attempt=1, max_retries=1, delay_s=1.0, status=401, error="authentication_failed"),
        ),
    ],
    ids=["1.0.x", "2.0.x", "2.1.x", "2.1.x-no-status", "2.1.x-401"],
)
def test_retry_lines_are_api_retries_and_the_task_goes_on(lines: list[str], retry: ApiRetry) -> None:
    screen = Screen()
    busy = screen.draw(["> Build a snake game", ""], screen.frame(spinner="✻ Thinking… (esc to interrupt)"))
    data = busy + screen.draw([*lines, ""], [])
    for cuts in ([], list(range(1, len(data), 7))):
        dialect = new()
        dialect.start_task(TASK, NOW)
        out: list[Signal] = []
        prev = 0
        for cut in [*cuts, len(data)]:
            out += dialect.feed(data[prev:cut], NOW)
            prev = cut
        assert out == [retry]  # once, and no outcome: the CLI is still trying
