"""The oneshot dialect: one process per task, the exit status decides; as plain bytes."""

from __future__ import annotations

import json
import signal

import pytest

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import RateLimited, TaskDone, TaskFailed
from shoal.protocols.dialects.oneshot import OneshotDialect
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import Assignment

NOW = 5.0
TASK = Assignment(task_id="t1", attempt=1, prompt="count to three")


WALL = 1_750_000_000.0


def started(options: dict[str, object] | None = None) -> OneshotDialect:
    dialect = make_dialect("oneshot", options or {}, wall_clock=lambda: WALL)
    assert isinstance(dialect, OneshotDialect)
    assert dialect.one_process_per_task and dialect.transport == "pipe"
    dialect.start_task(TASK, NOW)
    return dialect


def test_the_task_is_in_argv_not_on_stdin() -> None:
    dialect = started()
    assert dialect.encode(TASK) == b"" and dialect.encode_steps(TASK) == []
    assert dialect.quit_bytes() is None
    assert dialect.next_deadline() is None


def test_exit_zero_is_done_with_the_output() -> None:
    dialect = started()
    assert dialect.feed(b"one\ntw", NOW) == []
    assert dialect.feed(b"o\n\x1b[1mthree\x1b[0m\n", NOW) == []
    assert dialect.on_exit(0, None) == [TaskDone(result="one\ntwo\nthree")]


def test_output_before_start_task_is_kept() -> None:
    dialect = make_dialect("oneshot", {})
    assert dialect.feed(b"early line\n", NOW) == []
    dialect.start_task(TASK, NOW)
    dialect.feed(b"late line", NOW)
    assert dialect.on_exit(0, None) == [TaskDone(result="early line\nlate line")]


def test_non_zero_exit_fails_with_the_code_and_last_line() -> None:
    dialect = started()
    dialect.feed(b"working\nError: disk full\n", NOW)
    assert dialect.on_exit(3, None) == [TaskFailed(reason="exit code 3: Error: disk full", exit_code=3)]


def test_a_signal_fails_the_task() -> None:
    dialect = started()
    assert dialect.on_exit(None, int(signal.SIGKILL)) == [TaskFailed(reason="killed by signal 9")]


def test_usage_limit_in_the_output_is_a_rate_limit() -> None:
    dialect = started()
    assert dialect.feed(b"Claude AI usage limit reached|1750003600\n", NOW) == [
        RateLimited(reset_at=1750003600.0, message="Claude AI usage limit reached|1750003600")
    ]
    assert dialect.on_exit(1, None) == []  # the task already ended


def test_claude_json_output_gives_result_and_usage() -> None:
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "1, 2, 3",
        "total_cost_usd": 0.002,
        "usage": {"input_tokens": 9, "output_tokens": 5},
    }
    dialect = started()
    dialect.feed(json.dumps(result).encode() + b"\n", NOW)
    assert dialect.on_exit(0, None) == [
        TaskDone(result="1, 2, 3", usage={"input_tokens": 9, "output_tokens": 5, "cost_usd": 0.002})
    ]
    dialect = started()
    dialect.feed(
        b'{"type":"system","subtype":"init"}\n' + json.dumps({**result, "is_error": True}).encode(), NOW
    )
    usage = {"input_tokens": 9, "output_tokens": 5, "cost_usd": 0.002}  # a failed run still cost money
    assert dialect.on_exit(1, None) == [TaskFailed(reason="1, 2, 3", exit_code=1, usage=usage)]
    dialect = started({"output_format": "text"})
    dialect.feed(json.dumps(result).encode(), NOW)
    done = dialect.on_exit(0, None)
    assert isinstance(done[0], TaskDone) and done[0].result.startswith('{"type": "result"')
    dialect = started({"output_format": "json"})
    dialect.feed(b"plain words", NOW)
    assert dialect.on_exit(0, None) == [TaskFailed(reason="output is not a JSON result object", exit_code=0)]


def test_timeout_then_exit_reports_once() -> None:
    dialect = make_dialect("oneshot", {})
    dialect.start_task(Assignment("t1", 1, "x", timeout_s=2), NOW)
    assert dialect.next_deadline() == NOW + 2
    assert dialect.tick(NOW + 2) == [TaskFailed(reason="timeout after 2s")]
    assert dialect.on_exit(None, int(signal.SIGTERM)) == []


def test_bad_option_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        make_dialect("oneshot", {"output_format": "xml"})
    assert info.value.field == "options.output_format"


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (
            529,
            "API Error: 529 Overloaded.",
            RateLimited(WALL + 60, "API overloaded (529): API Error: 529 Overloaded."),
        ),
        (401, "Invalid API key · Fix external API key", None),
        (400, "API Error: 400 bad request", TaskFailed(reason="API Error: 400 bad request", exit_code=1)),
    ],
)
def test_claude_json_api_failure_is_read_as_stream_json_reads_it(
    status: int, text: str, expected: RateLimited | TaskFailed | None
) -> None:
    """`claude -p --output-format json`: an API failure is a back-off, not a failed attempt (the rule
    of the stream-json dialect, not a second one)."""
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "api_error_status": status,
        "result": text,
    }
    dialect = started()
    dialect.feed(json.dumps(result).encode() + b"\n", NOW)
    [signal] = dialect.on_exit(1, None)
    if expected is None:
        assert isinstance(signal, RateLimited) and signal.message.startswith(
            "API authentication failed (401)"
        )
    else:
        assert signal == expected
