"""The marker dialect: done on a marker line, with optional status and reason; as plain bytes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import (
    ContextUsage,
    NeedsInput,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
)
from shoal.protocols.dialects.marker import MarkerDialect
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import Assignment

NOW = 50.0
TASK = Assignment(task_id="t1", attempt=1, prompt="fix the build")


def new(options: dict[str, object] | None = None) -> MarkerDialect:
    dialect = make_dialect("marker", options or {}, wall_clock=lambda: 1_750_000_000.0)
    assert isinstance(dialect, MarkerDialect)
    return dialect


def started(options: dict[str, object] | None = None) -> MarkerDialect:
    dialect = new(options)
    assert dialect.next_deadline() == 0.0  # tick me now: ready at once by default
    assert dialect.tick(NOW) == [Ready()]
    dialect.start_task(TASK, NOW)
    return dialect


def feed_all(dialect: MarkerDialect, data: bytes, cuts: Sequence[int] = ()) -> list[Signal]:
    out: list[Signal] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out += dialect.feed(data[prev:cut], NOW)
        prev = cut
    return out


OUTPUT = (
    b"\x1b[?2004h\x1b[1mfix the build\x1b[0m\r\n"  # the echo
    b"\x1b[32mcompiling\x1b[0m...\r\n"
    b"\x1b[2K\x1b[Gall 12 tests pass\r\n"
    b"Context left until auto-compact: 30%\r\n"
    b"SHOAL_DONE\r\n"
    b"after the marker\r\n"
)


def test_done_on_the_marker_with_the_output_before_it() -> None:
    dialect = started()
    signals = feed_all(dialect, OUTPUT)
    assert signals == [
        ContextUsage(used_percent=70.0),
        TaskDone(result="compiling...\nall 12 tests pass"),
        Ready(),
    ]


@pytest.mark.parametrize("cut", range(1, len(OUTPUT)))
def test_every_byte_boundary_split_gives_the_same_signals(cut: int) -> None:
    assert feed_all(started(), OUTPUT, [cut]) == feed_all(started(), OUTPUT)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(OUTPUT)), max_size=20))
def test_random_splits_give_the_same_signals(cuts: list[int]) -> None:
    assert feed_all(started(), OUTPUT, cuts) == feed_all(started(), OUTPUT)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"SHOAL_DONE status=ok\r\n", TaskDone(result="work")),
        (b"SHOAL_DONE status=0 reason=exit status 0\r\n", TaskDone(result="work")),
        (b"SHOAL_DONE status=failed reason=tests do not pass\r\n", TaskFailed(reason="tests do not pass")),
        (b"SHOAL_DONE status=1 reason=exit status 1\r\n", TaskFailed(reason="exit status 1")),
        (b"SHOAL_DONE status=blocked\r\n", TaskFailed(reason="status=blocked")),
        (b"  \xe2\x8e\xbf  SHOAL_DONE\r\n", TaskDone(result="work")),  # shown by a TUI as hook output
        (b"\xe2\x94\x82 SHOAL_DONE \xe2\x94\x82\r\n", TaskDone(result="work")),  # inside a box
    ],
)
def test_status_and_reason(line: bytes, expected: Signal) -> None:
    dialect = started()
    assert feed_all(dialect, b"work\r\n" + line) == [expected, Ready()]


def test_the_echoed_prompt_and_prose_do_not_match() -> None:
    dialect = started()
    dialect.start_task(Assignment("t2", 1, "print SHOAL_DONE when you are done"), NOW)
    echo_and_prose = b"> print SHOAL_DONE when you are done\r\nI will print SHOAL_DONE later\r\n"
    assert feed_all(dialect, echo_and_prose) == []
    assert feed_all(dialect, b"SHOAL_DONE\r\n") == [TaskDone(result="I will print SHOAL_DONE later"), Ready()]


def test_a_marker_outside_a_task_is_ignored() -> None:
    dialect = started()
    assert feed_all(dialect, b"one\r\nSHOAL_DONE\r\n") == [TaskDone(result="one"), Ready()]
    assert feed_all(dialect, b"SHOAL_DONE\r\n") == []  # stale: no task


def test_a_marker_without_its_newline_counts_after_a_quiet_moment() -> None:
    dialect = started()
    assert dialect.feed(b"result\r\nSHOAL_DONE", NOW) == []
    deadline = dialect.next_deadline()
    assert deadline is not None and NOW < deadline <= NOW + 0.1
    assert dialect.tick(deadline) == [TaskDone(result="result"), Ready()]


def test_a_partial_marker_completed_by_more_output_uses_the_whole_line() -> None:
    dialect = started()
    assert dialect.feed(b"result\r\nSHOAL_DONE", NOW) == []
    assert dialect.feed(b" status=failed reason=nope\r\n", NOW) == [TaskFailed(reason="nope"), Ready()]


def test_custom_marker_word_and_pattern() -> None:
    dialect = started({"marker": "<<END>>"})
    assert feed_all(dialect, b"x\r\n<<END>> status=failed reason=r\r\n") == [TaskFailed(reason="r"), Ready()]
    dialect = started({"marker_pattern": r"^=== (?P<status>PASS|FAIL) ===$"})
    assert feed_all(dialect, b"ran\r\n=== FAIL ===\r\n") == [TaskFailed(reason="status=FAIL"), Ready()]


def test_ready_regex_waits_for_a_line() -> None:
    dialect = new({"ready": r"^\$ $"})
    assert dialect.tick(NOW) == []
    assert dialect.feed(b"starting\r\n", NOW) == []
    assert dialect.feed(b"$ ", NOW) == [Ready()]


def test_ready_prompt_waits_for_the_prompt_box() -> None:
    dialect = new({"ready": "prompt"})
    assert dialect.tick(NOW) == []
    rule = "─" * 40
    frame = f"{rule}\r\n>\xa0\r\n{rule}\r\n  ? for shortcuts".encode()
    assert dialect.feed(b"welcome\r\n" + frame, NOW) == [Ready()]
    dialect.start_task(TASK, NOW)
    erase = "\x1b[2K\x1b[1A" * 3 + "\x1b[2K\x1b[G"
    busy = f"{erase}✻ Thinking… (esc to interrupt)\r\n\r\n{rule}\r\n>\xa0\r\n{rule}\r\n".encode()
    assert dialect.feed(busy, NOW) == []
    # the hook's marker comes before the prompt box returns: done at once, Ready with the box
    assert dialect.feed(b"\r\n\xe2\x97\x8f fixed\r\nSHOAL_DONE\r\n", NOW) == [TaskDone(result="fixed")]
    assert dialect.feed(frame + b"\r\n", NOW) == [Ready()]


def test_common_patterns_and_timeout_apply() -> None:
    dialect = started()
    assert feed_all(dialect, b"Do you want to proceed?\r\n \xe2\x9d\xaf 1. Yes\r\n   2. No\r\n") == [
        NeedsInput(prompt="Do you want to proceed?", options=("Yes", "No"))
    ]
    assert feed_all(dialect, b"Claude AI usage limit reached|1750000600\r\n") == [
        RateLimited(reset_at=1750000600.0, message="Claude AI usage limit reached|1750000600"),
        Ready(),  # the limit ended the task; by default the agent takes the next one at once
    ]
    dialect.start_task(Assignment("t2", 1, "x", timeout_s=1.5), NOW)
    assert dialect.tick(NOW + 1.5) == [TaskFailed(reason="timeout after 1.5s")]
    assert feed_all(dialect, b"SHOAL_DONE\r\n") == [Ready()]  # the late marker is no TaskDone


def test_on_exit_reads_a_last_marker_line() -> None:
    dialect = started({"transport": "pipe"})
    assert dialect.transport == "pipe"
    assert dialect.encode(TASK) == b"fix the build\n"
    assert dialect.feed(b"done it\nSHOAL_DONE", NOW) == []
    assert dialect.on_exit(0, None) == [TaskDone(result="done it"), Ready()]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"marker": ""}, "options.marker"),
        ({"marker_pattern": "[x"}, "options.marker_pattern"),
        ({"ready": 3}, "options.ready"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_dialect("marker", options)
    assert info.value.field == field


def test_bash_with_a_marker_prompt_command() -> None:
    """Bytes bash 5 wrote for the shell profile: readline redraws the pasted line before running it."""
    startup = b"\r\nSHOAL_DONE status=0 reason=exit status 0\r\n"
    after = (
        b"\x1b[?2004h$ \x1b[7mecho hello\x1b[27m\r\x1b[C\x1b[Cecho hello\r\n\x1b[?2004l\rhello\r\n\r\n"
        b"SHOAL_DONE status=0 reason=exit status 0\r\n\x1b[?2004h$ "
    )
    dialect = new({"ready": "^SHOAL_DONE status="})
    assert dialect.feed(startup, NOW) == [Ready()]
    dialect.start_task(Assignment("t1", 1, "echo hello"), NOW)
    assert dialect.feed(after, NOW) == [TaskDone(result="hello"), Ready()]
    assert dialect.encode(Assignment("t2", 1, "false")) == b"\x1b[200~false\x1b[201~\r"  # bash enabled pastes


@pytest.mark.parametrize(
    ("startup", "after"),
    [
        (  # pasted while readline reads: the paste highlighted, then redisplayed in place
            b"\r\nSHOAL_DONE status=0 reason=exit status 0\r\n\x1b[?2004h$ ",
            b'\x1b[7mecho "$BASH_COMMAND"\x1b[27m\r\x1b[C\x1b[Cecho "$BASH_COMMAND"\r\n\x1b[?2004l\r'
            b'echo "$BASH_COMMAND"\r\n\r\nSHOAL_DONE status=0 reason=exit status 0\r\n\x1b[?2004h$ ',
        ),
        (  # typed before readline ran (ready at the marker): the terminal's echo, then readline's
            b"\r\nSHOAL_DONE status=0 reason=exit status 0\r\n",
            b'echo "$BASH_COMMAND"\r\n\x1b[?2004h$ echo "$BASH_COMMAND"\r\n\x1b[?2004l\r'
            b'echo "$BASH_COMMAND"\r\n\r\nSHOAL_DONE status=0 reason=exit status 0\r\n\x1b[?2004h$ ',
        ),
    ],
    ids=["pasted", "typed-early"],
)
def test_bash_output_that_repeats_the_command_is_kept(startup: bytes, after: bytes) -> None:
    """Bytes bash 5 wrote for `echo "$BASH_COMMAND"`: the echoes of the command line are dropped; the
    output, the same text again on its own line, is the result."""
    dialect = new({"ready": "^SHOAL_DONE status="})
    assert dialect.feed(startup, NOW) == [Ready()]
    dialect.start_task(Assignment("t1", 1, 'echo "$BASH_COMMAND"'), NOW)
    assert dialect.feed(after, NOW) == [TaskDone(result='echo "$BASH_COMMAND"'), Ready()]


@pytest.mark.parametrize(
    ("output", "result"),
    [
        (b"hello world\r\nhello world\r\n", "hello world"),  # a terminal echo, then the reply
        (b"> hello world\r\n\r\nhello world\r\n", "hello world"),
        (b"> hello world\r\nYou said: hello world\r\n", "You said: hello world"),
        (b"> hello world\r\nhello world\r\nhello world\r\n", "hello world\nhello world"),
        (b"> hello\r\n  world\r\nhello world\r\n", "hello world"),  # a wrapped echo
        (b"hello world\r\nYou said: hello world\r\n", "You said: hello world"),
    ],
)
def test_a_reply_line_that_repeats_the_prompt_is_kept(output: bytes, result: str) -> None:
    dialect = started()
    dialect.start_task(Assignment("t2", 1, "hello world"), NOW)
    assert feed_all(dialect, output + b"SHOAL_DONE\r\n") == [TaskDone(result=result), Ready()]
