"""The idle dialect: done after idle_ms of silence following min_bytes of output; time passed in."""

from __future__ import annotations

import pytest

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import NeedsInput, Ready, TaskDone, TaskFailed
from shoal.protocols.dialects.idle import IdleDialect
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import Assignment

T0 = 100.0
TASK = Assignment(task_id="t1", attempt=1, prompt="summarise")


def new(options: dict[str, object] | None = None) -> IdleDialect:
    dialect = make_dialect("idle", {"idle_ms": 500, **(options or {})})
    assert isinstance(dialect, IdleDialect)
    return dialect


def test_ready_after_silence_at_start_up() -> None:
    dialect = new()
    assert dialect.next_deadline() == 0.0  # start the clock
    assert dialect.tick(T0) == []
    assert dialect.feed(b"\x1b[1mbanner\x1b[0m\r\n> ", T0 + 0.2) == []
    assert dialect.next_deadline() == pytest.approx(T0 + 0.7)
    assert dialect.tick(T0 + 0.69) == []
    assert dialect.tick(T0 + 0.7) == [Ready()]
    assert dialect.next_deadline() is None


def test_done_after_silence_with_enough_output() -> None:
    dialect = new({"min_bytes": 10})
    dialect.tick(T0)
    dialect.tick(T0 + 1)
    dialect.start_task(TASK, T0 + 1)
    assert dialect.next_deadline() is None  # nothing printed yet: no silence to measure
    assert dialect.feed(b"summarise\r\n", T0 + 1.1) == []  # 11 bytes, the echo
    assert dialect.feed(b"\x1b[32mthe answer\x1b[0m\r\n", T0 + 1.3) == []
    assert dialect.tick(T0 + 1.79) == []  # silence is measured from the last byte
    assert dialect.tick(T0 + 1.8) == [TaskDone(result="the answer"), Ready()]


def test_a_reply_that_repeats_the_prompt_is_kept() -> None:
    dialect = new()
    dialect.tick(T0)
    dialect.start_task(TASK, T0)
    assert dialect.feed(b"summarise\r\nsummarise\r\n", T0 + 0.1) == []  # the echo, then the reply
    assert dialect.tick(T0 + 0.6) == [TaskDone(result="summarise"), Ready()]


def test_silence_before_min_bytes_is_not_done() -> None:
    dialect = new({"min_bytes": 1000})
    dialect.tick(T0)
    dialect.start_task(TASK, T0)
    dialect.feed(b"thinking\r\n", T0)
    assert dialect.next_deadline() is None
    assert dialect.tick(T0 + 60) == []
    dialect.feed(b"x" * 1000 + b"\r\n", T0 + 61)
    assert dialect.tick(T0 + 61.5) == [TaskDone(result="thinking\n" + "x" * 1000), Ready()]


def test_a_question_on_screen_pauses_completion_until_new_output() -> None:
    dialect = new()
    dialect.tick(T0)
    dialect.start_task(TASK, T0)
    asked = dialect.feed(b"Do you want to proceed?\r\n \xe2\x9d\xaf 1. Yes\r\n   2. No\r\n", T0)
    assert asked == [NeedsInput(prompt="Do you want to proceed?", options=("Yes", "No"))]
    assert dialect.next_deadline() is None
    assert dialect.tick(T0 + 30) == []
    assert dialect.feed(b"ran it: hello\r\n", T0 + 31) == []
    assert dialect.tick(T0 + 31.5) == [TaskDone(result="ran it: hello"), Ready()]


def test_timeout_wins_over_idleness() -> None:
    dialect = new()
    dialect.tick(T0)
    dialect.start_task(Assignment("t1", 1, "x", timeout_s=0.3), T0)
    dialect.feed(b"partial", T0 + 0.1)
    assert dialect.next_deadline() == pytest.approx(T0 + 0.3)
    assert dialect.tick(T0 + 0.3) == [TaskFailed(reason="timeout after 0.3s")]


def test_a_partial_last_line_is_part_of_the_result() -> None:
    dialect = new()
    dialect.tick(T0)
    dialect.start_task(TASK, T0)
    dialect.feed(b"line one\r\nline two, no newline", T0)
    assert dialect.tick(T0 + 0.5) == [TaskDone(result="line one\nline two, no newline"), Ready()]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"idle_ms": 0}, "options.idle_ms"),
        ({"min_bytes": -1}, "options.min_bytes"),
        ({"idle_ms": "2s"}, "options.idle_ms"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_dialect("idle", options)
    assert info.value.field == field
