"""Patterns common to all dialects: context usage, usage limits with reset times, questions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.protocols.dialects.base import ContextUsage, ExtraUsage, NeedsInput, RateLimited
from shoal.protocols.dialects.patterns import PatternScanner, parse_reset

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC).timestamp()  # a Friday, noon UTC


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Claude AI usage limit reached|1732460000", 1732460000.0),
        ("Claude AI usage limit reached|1732460000123", 1732460000.123),  # milliseconds
        ("Claude usage limit reached. Your limit will reset at 5pm (UTC).", at("2025-01-10T17:00")),
        ("5-hour limit reached ∙ resets 3pm (UTC)", at("2025-01-10T15:00")),
        ("You've hit your session limit · resets 11:50am (Asia/Calcutta)", at("2025-01-11T06:20")),
        ("usage limit reached, resets 11am (UTC)", at("2025-01-11T11:00")),  # already past: tomorrow
        ("limit reached · resets Feb 3 at 10am (UTC)", at("2025-02-03T10:00")),
        ("limit reached, try again at Jan 1st, 2027 12:57 AM (UTC)", at("2027-01-01T00:57")),
        ("limit reached, reset at 17:30 (UTC)", at("2025-01-10T17:30")),
        ("Too many requests: try again in 3h 41m", NOW + 3 * 3600 + 41 * 60),
        ("usage limit reached", None),
        ("limit reached, resets 3 (UTC)", None),  # a bare number is not a time
    ],
)
def test_parse_reset(message: str, expected: float | None) -> None:
    assert parse_reset(message, NOW) == expected


def test_a_time_without_zone_is_local_time() -> None:
    reset = parse_reset("usage limit reached ∙ resets 3pm", NOW)
    assert reset is not None
    local = datetime.fromtimestamp(reset).astimezone()
    assert (local.hour, local.minute) == (15, 0)
    assert 0 < reset - NOW <= 24 * 3600


def scan(scanner: PatternScanner, text: str, lookback: str = "") -> list[object]:
    return [hit.signal for hit in scanner.scan(text, lookback, NOW)]


def test_context_footer_gives_percent_used_once_per_value() -> None:
    scanner = PatternScanner()
    footer = "  ⏵⏵ auto-accept edits on        Context left until auto-compact: 8%\n"
    assert scan(scanner, footer) == [ContextUsage(used_percent=92.0)]
    assert scan(scanner, footer * 3) == []  # redrawn footers repeat nothing
    assert scan(scanner, "Context low (3% remaining) · Run /compact\n") == [ContextUsage(used_percent=97.0)]


def test_usage_limit_messages_and_what_is_not_one() -> None:
    scanner = PatternScanner()
    signals = scan(scanner, "  ⎿  Claude AI usage limit reached|1732460000\n")
    assert signals == [
        RateLimited(reset_at=1732460000.0, message="⎿ Claude AI usage limit reached|1732460000")
    ]
    assert scan(scanner, "  ⎿  Claude AI usage limit reached|1732460000\n") == []  # a redraw
    for benign in (
        "Claude Opus limit reached, now using Sonnet 4\n",
        "Approaching usage limit · resets at 9pm\n",
        "API Error: Server is temporarily limiting requests (not your usage limit)\n",
        "the rate limiter keeps a sliding window\n",
    ):
        assert scan(PatternScanner(), benign) == [], benign


def test_context_exhausted_is_reported_as_full() -> None:
    hits = PatternScanner().scan("  ⎿  Context limit reached · /compact or /clear to continue\n", "", NOW)
    assert [h.kind for h in hits] == ["context", "exhausted"]
    assert hits[0].signal == ContextUsage(used_percent=100.0)
    assert "Context limit reached" in hits[1].detail


def test_question_needs_its_yes_option_even_above_the_chunk() -> None:
    scanner = PatternScanner()
    dialog = " Do you want to proceed?\n ❯ 1. Yes\n   2. No\n"
    assert scan(scanner, dialog) == [NeedsInput(prompt="Do you want to proceed?", options=("Yes", "No"))]
    assert scan(scanner, dialog) == []  # the same dialog redrawn
    scanner.clear_questions()
    assert scan(scanner, " ❯ 1. Yes\n   2. No\n", lookback=" Do you want to proceed?\n") == [
        NeedsInput(prompt="Do you want to proceed?", options=("Yes", "No"))
    ]
    # prose that asks a question, or a numbered list, is no dialog
    assert scan(PatternScanner(), "Do you want to proceed? Tell me.\n") == []
    assert scan(PatternScanner(), "1. Yes, this works because...\n") == []


def test_custom_patterns_extend_the_builtins() -> None:
    scanner = PatternScanner(
        context=[re.compile(r"ctx (?P<used>\d+)% used")],
        usage_limit=[re.compile(r"QUOTA EXHAUSTED until (?P<epoch>\d+)")],
        needs_input=[re.compile(r"^(?P<prompt>Continue\? \[y/N\])", re.M)],
        exhausted=[re.compile(r"TOKENS GONE")],
    )
    signals = scan(scanner, "ctx 40% used\nQUOTA EXHAUSTED until 1800000000\nContinue? [y/N]\n")
    assert signals == [
        ContextUsage(used_percent=40.0),
        RateLimited(reset_at=1800000000.0, message="QUOTA EXHAUSTED until 1800000000"),
        NeedsInput(prompt="Continue? [y/N]"),
    ]
    assert [h.kind for h in scanner.scan("TOKENS GONE\n", "", NOW)] == ["context", "exhausted"]


def test_builtins_can_be_switched_off() -> None:
    scanner = PatternScanner(builtin=False)
    assert scan(scanner, "Context left until auto-compact: 8%\nClaude AI usage limit reached|1\n") == []


CORPUS = Path(__file__).parent / "fixtures" / "claude-code" / "corpus"


def menu(name: str) -> list[object]:
    text = (CORPUS / name).read_text()
    return [h.signal for h in PatternScanner().scan(text + "\n", "", NOW) if h.kind == "needs_input"]


@pytest.mark.parametrize(
    ("name", "question", "options"),
    [
        (
            "tui-usage-limit-menu-weekly-credits-upgrade-vunknown-1.txt",
            "What do you want to do?",
            ("Stop and wait for limit to reset", "Switch to usage credits", "Upgrade your plan"),
        ),
        (
            "tui-usage-limit-menu-ask-admin-v2.1.2xx-1.txt",
            "What do you want to do?",
            ("Stop and wait for limit to reset", "Ask your admin for more usage"),
        ),
        (
            "tui-trust-dialog-accessing-workspace-v2.1.212-1.txt",
            "Quick safety check: Is this a project you created or one you trust?",
            ("Yes, I trust this folder", "No, exit"),
        ),
        (
            "tui-plan-approval-menu-v2.1.212-1.txt",
            "Would you like to proceed?",
            (
                "Yes, and use auto mode",
                "Yes, manually approve edits",
                "No, refine with Ultraplan on Claude Code on the web",
                "Tell Claude what to change",
            ),
        ),
        (
            "tui-model-picker-v2.1.29-1.txt",
            "Select model",
            (
                "Default (recommended) Sonnet 4.5 · Best for everyday tasks",
                "Opus Opus 4.5 · Most capable for complex work",
                "Haiku ✔ Haiku 4.5 · Fastest for quick answers",
            ),
        ),
    ],
)
def test_every_numbered_menu_needs_input_with_its_question_and_options(
    name: str, question: str, options: tuple[str, ...]
) -> None:
    """Menus without `1. Yes` (usage limit, trust, plan, model picker) are questions too (real screens)."""
    assert menu(name) == [NeedsInput(prompt=question, options=options)]


def test_a_numbered_list_without_a_cursor_is_no_menu() -> None:
    reply = "● Here is the plan:\n  1. Install the deps\n  2. Run the tests\n\n> \n"
    assert scan(PatternScanner(), reply) == []
    tips = (
        " Tips for getting started:\n\n 1. Run /init to create a CLAUDE.md file\n 2. Run /terminal-setup\n\n"
    )
    assert scan(PatternScanner(), tips) == []


def test_a_menu_split_across_reads_is_reported_again_when_its_options_grow() -> None:
    scanner = PatternScanner()
    head = "   What do you want to do?\n   ❯ 1. Stop and wait for limit to reset\n"
    rest = "     2. Switch to usage credits\n   Enter to confirm · Esc to cancel\n"
    assert scan(scanner, head) == [
        NeedsInput(prompt="What do you want to do?", options=("Stop and wait for limit to reset",))
    ]
    assert scan(scanner, rest, lookback=head) == [
        NeedsInput(
            prompt="What do you want to do?",
            options=("Stop and wait for limit to reset", "Switch to usage credits"),
        )
    ]
    assert scan(scanner, "   Enter to confirm · Esc to cancel\n", lookback=head + rest) == []


def test_extra_usage_footer_is_reported_once() -> None:
    scanner = PatternScanner()
    footer = "  ⏵⏵ accept edits on (shift+Tab to cycle)          Now using extra usage\n"
    hits = scanner.scan(footer, "", NOW)
    assert [h.signal for h in hits] == [ExtraUsage(message="Now using extra usage")]
    assert scanner.scan(footer, "", NOW) == []


def test_a_reset_zone_is_read_without_system_zoneinfo(tmp_path: Path) -> None:
    """The `tzdata` dependency: with the system zoneinfo hidden (PYTHONTZPATH at an empty folder),
    "resets 7pm (America/Toronto)" is still 7 pm in Toronto, not a time with the zone dropped."""
    empty = tmp_path / "no-zoneinfo"
    empty.mkdir()
    code = (
        "import zoneinfo, sys\n"
        "from shoal.protocols.dialects.patterns import parse_reset\n"
        f"assert zoneinfo.TZPATH == ({str(empty)!r},), zoneinfo.TZPATH\n"
        f'print(parse_reset("You\'ve hit your session limit · resets 7pm (America/Toronto)", {NOW!r}))\n'
    )
    env = {**os.environ, "PYTHONTZPATH": str(empty), "TZ": "UTC"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == at("2025-01-11T00:00")  # 7 pm EST is midnight UTC


def test_a_reset_time_wrapped_onto_the_next_line_is_read_across_reads() -> None:
    """Claude Code wraps "· resets" / "7:50pm (Asia/Tokyo)" at the terminal's width; the two lines may
    arrive in different reads: the limit line is held until the next one comes."""
    first = "  ⎿  You've hit your session limit · resets\n"
    second = "     7:50pm (Asia/Tokyo)\n"
    expected = RateLimited(
        reset_at=at("2025-01-11T10:50"),  # 19:50 in Tokyo (UTC+9), already past today: tomorrow
        message="⎿ You've hit your session limit · resets 7:50pm (Asia/Tokyo)",
    )
    whole = PatternScanner()
    assert scan(whole, first + second + "\n") == [expected]
    split = PatternScanner()
    assert scan(split, first) == []
    assert scan(split, second, first) == [expected]
    ended = PatternScanner()  # nothing follows: read as it stands when the output ends
    assert scan(ended, first) == []
    assert [hit.signal for hit in ended.flush(NOW)] == [
        RateLimited(reset_at=None, message="⎿ You've hit your session limit · resets")
    ]
