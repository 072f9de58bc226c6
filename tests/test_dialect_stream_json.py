"""The stream-json dialect: Claude Code's JSON lines, as plain bytes, split anywhere."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import (
    ApiRetry,
    ContextUsage,
    Notice,
    ProtocolError,
    QuotaReport,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
)
from shoal.protocols.dialects.stream_json import StreamJsonDialect, result_usage
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import Assignment

NOW = 10.0
WALL = 1_750_000_000.0
TASK = Assignment(task_id="t1", attempt=1, prompt="write a haiku")


def line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event) + "\n").encode()


INIT = line(
    {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-sonnet-4", "tools": []}
)
ASSISTANT = line(
    {
        "type": "assistant",
        "message": {
            "role": "assistant",
            "content": [{"type": "text", "text": "Autumn moonlight—"}, {"type": "tool_use", "name": "Bash"}],
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 29_980, "output_tokens": 12},
        },
        "session_id": "s-1",
    }
)
TOOL_RESULT = line(
    {"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}}
)
RESULT = line(
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 2150,
        "num_turns": 2,
        "result": "Autumn moonlight—\na worm digs silently\ninto the chestnut.",
        "session_id": "s-1",
        "total_cost_usd": 0.0123,
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 29_980,
            "output_tokens": 40,
            "server_tool_use": {"web_search_requests": 0},
        },
    }
)
TURN = INIT + ASSISTANT + TOOL_RESULT + RESULT
DONE = TaskDone(
    result="Autumn moonlight—\na worm digs silently\ninto the chestnut.",
    usage={
        "input_tokens": 20,
        "output_tokens": 40,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 29_980,
        "cost_usd": 0.0123,
        "duration_ms": 2150,
        "num_turns": 2,
        "session_id": "s-1",  # the conversation a dependant may resume (metadata.workspace.continue)
    },
)


def new(options: dict[str, object] | None = None) -> StreamJsonDialect:
    dialect = make_dialect("stream-json", options or {}, wall_clock=lambda: WALL)
    assert isinstance(dialect, StreamJsonDialect)
    return dialect


def started(options: dict[str, object] | None = None, task: Assignment = TASK) -> StreamJsonDialect:
    dialect = new(options)
    assert dialect.next_deadline() == 0.0
    assert dialect.tick(NOW) == [Ready()]
    dialect.start_task(task, NOW)
    return dialect


def feed_all(dialect: StreamJsonDialect, data: bytes, cuts: Sequence[int] = ()) -> list[Signal]:
    out: list[Signal] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out += dialect.feed(data[prev:cut], NOW)
        prev = cut
    return out


def test_encode_is_claude_user_message() -> None:
    data = new().encode(Assignment("t", 1, 'say "hi"\nand \x1b[31mbye'))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": 'say "hi"\nand [31mbye'}]},
    }
    assert new().encode_steps(TASK) == [(0.0, new().encode(TASK))]
    assert new().quit_bytes() is None and new().transport == "pipe"


def test_a_turn_gives_context_then_task_done_with_usage_then_ready() -> None:
    dialect = started()
    assert feed_all(dialect, TURN) == [ContextUsage(used_percent=15.0), DONE, Ready()]
    assert dialect.session_id == "s-1" and dialect.model == "claude-sonnet-4"


@pytest.mark.parametrize("cut", range(1, len(TURN), 7))
def test_splits_give_the_same_signals(cut: int) -> None:
    assert feed_all(started(), TURN, [cut]) == feed_all(started(), TURN)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TURN)), max_size=30))
def test_random_splits_give_the_same_signals(cuts: list[int]) -> None:
    assert feed_all(started(), TURN, cuts) == [ContextUsage(used_percent=15.0), DONE, Ready()]


def test_is_error_fails_the_task() -> None:
    dialect = started()
    error = line(
        {"type": "result", "subtype": "error_during_execution", "is_error": True, "result": "tool broke"}
    )
    assert feed_all(dialect, error) == [TaskFailed(reason="tool broke"), Ready()]
    dialect.start_task(TASK, NOW)
    max_turns = line({"type": "result", "subtype": "error_max_turns", "is_error": False})
    assert feed_all(dialect, max_turns) == [TaskFailed(reason="reached the maximum number of turns"), Ready()]


def test_usage_limit_result_is_a_rate_limit_not_a_failure() -> None:
    dialect = started()
    limited = line({"type": "result", "is_error": True, "result": "Claude AI usage limit reached|1750003600"})
    assert feed_all(dialect, limited) == [
        RateLimited(reset_at=1750003600.0, message="Claude AI usage limit reached|1750003600"),
        Ready(),
    ]


def test_api_retry_rate_limit_ends_the_task_and_its_late_result_is_dropped() -> None:
    dialect = started()
    retry = line(
        {
            "type": "system",
            "subtype": "api_retry",
            "attempt": 1,
            "max_retries": 10,
            "retry_delay_ms": 30_000,
            "error_status": 429,
            "error": "rate_limit",
        }
    )
    report = ApiRetry(attempt=1, max_retries=10, delay_s=30.0, status=429, error="rate_limit")
    assert feed_all(dialect, retry + retry) == [
        report,
        RateLimited(reset_at=WALL + 30.0, message="API retry 1/10: rate_limit"),
        report,
    ]
    other = line({"type": "system", "subtype": "api_retry", "attempt": 2, "error": "server_error"})
    assert feed_all(dialect, other) == [
        ApiRetry(attempt=2, max_retries=None, delay_s=None, status=None, error="server_error")
    ]
    assert feed_all(dialect, RESULT) == [Ready()]  # the old task's answer is not the next task's


def test_rate_limit_event_rejected() -> None:
    dialect = started()
    allowed = line({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed", "resetsAt": 1}})
    rejected = line(
        {
            "type": "rate_limit_event",
            "rate_limit_info": {"status": "rejected", "resetsAt": 1750018000, "rateLimitType": "five_hour"},
        }
    )
    assert feed_all(dialect, allowed) == [QuotaReport("allowed", None, 1.0, None, None)]
    assert feed_all(dialect, rejected) == [
        QuotaReport("rejected", "five_hour", 1750018000.0, None, None),
        RateLimited(reset_at=1750018000.0, message="rate limit rejected (five_hour)"),
    ]


def test_results_come_in_order_and_stale_ones_are_dropped() -> None:
    dialect = started({"task_timeout_s": 5})
    assert dialect.next_deadline() == NOW + 5
    assert dialect.tick(NOW + 5) == [TaskFailed(reason="timeout after 5s")]
    second = Assignment("t2", 1, "again")
    dialect.start_task(second, NOW + 6)
    first_result = line({"type": "result", "is_error": False, "result": "answer to t1"})
    second_result = line({"type": "result", "is_error": False, "result": "answer to t2"})
    assert feed_all(dialect, first_result) == []
    assert feed_all(dialect, second_result) == [TaskDone(result="answer to t2"), Ready()]


def test_bad_lines_are_protocol_errors_and_parsing_goes_on() -> None:
    dialect = started()
    garbage = b'{"type": oops\n\xff\xfe{}\n[1, 2]\n{"no": "type"}\n\n   \n'
    signals = feed_all(dialect, garbage + RESULT)
    errors = [s for s in signals if isinstance(s, ProtocolError)]
    assert len(errors) == 4
    assert errors[0].message.startswith("invalid JSON")
    assert errors[1].message.startswith("invalid UTF-8")
    assert errors[2].message.startswith("not a JSON object")
    assert errors[3].message.startswith("event without a type")
    assert signals[-2:] == [DONE, Ready()]


def test_plain_text_lines_are_notices_not_errors() -> None:
    """Claude Code prints warnings on stdout before and between its JSON: skipped, not a failure."""
    dialect = started()
    warning = b"Warning: no stdin data received in 3s, proceeding without it.\n"
    signals = feed_all(dialect, warning + INIT + b"connectors disabled for this session\n" + RESULT)
    assert signals == [
        Notice("Warning: no stdin data received in 3s, proceeding without it."),
        Notice("connectors disabled for this session"),
        DONE,
        Ready(),
    ]


def test_a_stream_that_never_becomes_json_is_a_protocol_error() -> None:
    dialect = started({"max_preamble_lines": 3})
    signals = feed_all(dialect, b"usage: claude [options]\n" * 5)
    assert [s for s in signals if isinstance(s, ProtocolError)] == [
        ProtocolError("no JSON in the first 3 lines: usage: claude [options]")
    ]
    assert sum(isinstance(s, Notice) for s in signals) == 5


def test_an_over_long_line_is_dropped_and_parsing_resumes() -> None:
    dialect = started({"max_line_bytes": 1024})
    signals = dialect.feed(b'{"type":"assistant","x":"' + b"a" * 5000, NOW)
    assert signals == [ProtocolError(message="line longer than 1024 bytes dropped")]
    assert dialect.feed(b'aaaa"}\n' + RESULT, NOW) == [DONE, Ready()]


def test_a_last_line_without_newline_is_read_on_exit() -> None:
    dialect = started()
    assert dialect.feed(RESULT.rstrip(b"\n"), NOW) == []
    assert dialect.on_exit(0, None) == [DONE, Ready()]


def test_result_usage_flattens_known_fields() -> None:
    assert result_usage({"usage": {"input_tokens": 1, "output_tokens": True}, "total_cost_usd": 0.5}) == {
        "input_tokens": 1,
        "cost_usd": 0.5,
    }


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        make_dialect("stream-json", {"context_window_tokens": 0})
    assert info.value.field == "options.context_window_tokens"
    with pytest.raises(ValidationError) as info:
        make_dialect("stream-json", {"idle_ms": 5})
    assert info.value.field == "options.idle_ms"


def test_events_of_an_abandoned_turn_do_not_touch_the_next_task() -> None:
    dialect = started()
    info = {"status": "rejected", "resetsAt": 1750018000, "rateLimitType": "five_hour"}
    rejected = line({"type": "rate_limit_event", "rate_limit_info": info})
    assert feed_all(dialect, rejected)[1:] == [
        RateLimited(reset_at=1750018000.0, message="rate limit rejected (five_hour)")
    ]
    dialect.start_task(Assignment("t2", 1, "next"), NOW)  # written before the first turn's result came
    error_text = "Claude AI usage limit reached|1750018000"
    late = line(
        {
            "type": "assistant",
            "error": "rate_limit",
            "message": {"content": [{"type": "text", "text": error_text}]},
        }
    ) + line({"type": "result", "is_error": True, "result": error_text})
    assert feed_all(dialect, late) == []  # the first turn's end, already reported
    assert feed_all(dialect, RESULT) == [DONE, Ready()]  # the second task gets its own answer


API_ERROR_USAGE = {"input_tokens": 10, "output_tokens": 0}


def api_error(status: int | None, text: str, **extra: Any) -> bytes:
    """A headless result as Claude Code 2.1 reports an API failure: subtype success, is_error true."""
    event = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "api_error_status": status,
        "result": text,
        "total_cost_usd": 0,
        "usage": API_ERROR_USAGE,
        **extra,
    }
    return line(event)


@pytest.mark.parametrize(
    ("status", "extra", "park", "message"),
    [
        (529, {}, 60.0, "API overloaded (529): API Error: 529 overloaded"),
        (500, {}, 60.0, "API server error (500): API Error: 529 overloaded"),
        (401, {}, 300.0, "API authentication failed (401): API Error: 529 overloaded"),
        # status null with terminal_reason api_error: the status in the text, else a network failure
        (None, {"terminal_reason": "api_error"}, 60.0, "API overloaded (529): API Error: 529 overloaded"),
        (
            None,
            {"terminal_reason": "api_error", "result": "API Error: Connection refused (ConnectionRefused)"},
            60.0,
            "API unreachable: API Error: Connection refused (ConnectionRefused)",
        ),
    ],
)
def test_an_api_failure_reported_as_success_is_a_back_off_not_a_result(
    status: int | None, extra: dict[str, Any], park: float, message: str
) -> None:
    dialect = started()
    text = extra.pop("result", "API Error: 529 overloaded")
    signals = feed_all(dialect, api_error(status, text, **extra))
    assert signals == [RateLimited(reset_at=WALL + park, message=message), Ready()]


def test_a_429_without_a_reset_is_a_rate_limit_and_with_one_waits_for_it() -> None:
    dialect = started()
    plain = api_error(429, "API Error: Request rejected (429) · organization rate limit")
    assert feed_all(dialect, plain) == [
        RateLimited(
            None, "API rate limit (429): API Error: Request rejected (429) · organization rate limit"
        ),
        Ready(),
    ]
    dialect.start_task(TASK, NOW)
    notice = "You've hit your 5-hour limit · resets 11am (UTC)"
    signals = feed_all(dialect, api_error(429, notice))
    assert isinstance(signals[0], RateLimited) and signals[0].reset_at is not None
    assert signals[0].reset_at > WALL and signals[1:] == [Ready()]


def test_a_usage_limit_notice_returned_as_success_is_not_done() -> None:
    """`is_error: false` with a limit notice as the result: park the model, never record DONE."""
    dialect = started()
    notice = "You've hit your session limit · resets 7pm (America/Toronto)"
    done_looking = line({"type": "result", "subtype": "success", "is_error": False, "result": notice})
    signals = feed_all(dialect, done_looking)
    assert len(signals) == 2 and isinstance(signals[0], RateLimited) and signals[1] == Ready()
    assert signals[0].reset_at is not None and 0 < signals[0].reset_at - WALL <= 86_400


def test_a_long_answer_that_mentions_a_limit_is_still_done() -> None:
    dialect = started()
    answer = "Here is how rate limits work: when you hit your limit... " + "details " * 60
    assert feed_all(dialect, line({"type": "result", "is_error": False, "result": answer}))[0] == TaskDone(
        result=answer
    )


def test_max_turns_fails_with_the_agents_words_and_keeps_its_cost() -> None:
    dialect = started()
    event = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": True,
        "num_turns": 41,
        "total_cost_usd": 0.82,
        "usage": {"input_tokens": 1200, "output_tokens": 300},
        "errors": ["Reached maximum number of turns (40)"],
    }
    assert feed_all(dialect, line(event)) == [
        TaskFailed(
            reason="Reached maximum number of turns (40)",
            usage={"input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.82, "num_turns": 41},
        ),
        Ready(),
    ]


def test_quota_reports_carry_utilization_and_overage() -> None:
    dialect = started()
    info = {
        "status": "allowed_warning",
        "resetsAt": 1750018000,
        "rateLimitType": "seven_day",
        "utilization": 0.91,
        "overageStatus": "rejected",
    }
    assert feed_all(dialect, line({"type": "rate_limit_event", "rate_limit_info": info})) == [
        QuotaReport("allowed_warning", "seven_day", 1750018000.0, 0.91, "rejected")
    ]


def synthetic(text: str, **extra: Any) -> bytes:
    """Claude Code's synthetic assistant message for an API failure (2.1.332 as captured)."""
    message = {"model": "<synthetic>", "role": "assistant", "content": [{"type": "text", "text": text}]}
    return line({"type": "assistant", "message": message, "is_api_error_message": True, **extra})


@pytest.mark.parametrize(
    ("event", "park", "message"),
    [
        (
            {"error": "authentication_failed", "api_error_status": 401},
            300.0,
            "API authentication failed (401): Invalid API key · Please run /login",
        ),
        (
            {"error": "oauth_org_not_allowed"},
            300.0,
            "API authentication failed: Invalid API key · Please run /login",
        ),
        (
            {"isApiErrorMessage": True},
            300.0,
            "API authentication failed: Invalid API key · Please run /login",
        ),
    ],
    ids=["is_api_error_message-401", "error-name-only", "isApiErrorMessage-2.0.x"],
)
def test_an_api_error_message_then_a_success_result_is_an_auth_back_off_not_done(
    event: dict[str, Any], park: float, message: str
) -> None:
    """Both spellings of the flag (is_api_error_message, isApiErrorMessage), and a result that still
    says `is_error: false`: the model waits auth_park_s, the task is not DONE."""
    dialect = started()
    text = "Invalid API key · Please run /login"
    result = line({"type": "result", "subtype": "success", "is_error": False, "result": text})
    signals = feed_all(dialect, synthetic(text, **event) + result)
    assert signals == [RateLimited(reset_at=WALL + park, message=message), Ready()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('API Error: 401 {"type":"error","error":{"type":"authentication_error"}}', "auth"),
        ("Invalid API key · Please run /login", "auth"),
        ("API Error: 529 Overloaded. This is a server-side issue", "overloaded"),
        ("API Error: 400 prompt is too long for this model", "failed"),
    ],
)
def test_a_success_result_that_is_an_api_error_line_is_never_done(text: str, expected: str) -> None:
    dialect = started()
    signals = feed_all(
        dialect, line({"type": "result", "subtype": "success", "is_error": False, "result": text})
    )
    if expected == "failed":
        assert signals == [TaskFailed(reason=text), Ready()]
    else:
        assert isinstance(signals[0], RateLimited) and signals[1:] == [Ready()]
        assert signals[0].message.startswith(
            "API authentication failed" if expected == "auth" else "API overloaded"
        )


def test_an_api_error_message_for_the_request_itself_fails_even_if_the_result_says_success() -> None:
    dialect = started()
    error = synthetic("API Error: 400 invalid_request_error", api_error_status=400, error="invalid_request")
    result = line(
        {"type": "result", "subtype": "success", "is_error": False, "result": "ok", "total_cost_usd": 0.5}
    )
    assert feed_all(dialect, error + result) == [
        TaskFailed(reason="API Error: 400 invalid_request_error", usage={"cost_usd": 0.5}),
        Ready(),
    ]


def test_park_options_set_the_back_off() -> None:
    dialect = started({"overloaded_park_s": 5, "auth_park_s": 7})
    signals = feed_all(dialect, api_error(529, "API Error: 529 Overloaded"))
    assert signals[0] == RateLimited(
        reset_at=WALL + 5, message="API overloaded (529): API Error: 529 Overloaded"
    )
