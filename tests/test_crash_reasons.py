"""Readable crash reasons (issues 13 item 10 and 14): `last_words` over real screens and raw bytes,
and the breaker's halt reason when every worker dies the same way (`crash_summary`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.actors.swarm_supervisor import CrashEvidence, crash_summary
from shoal.protocols.dialects.common import last_words

SCREENS = sorted((Path(__file__).parent / "fixtures" / "claude-code").glob("*.txt"))
CHROME = ("? for shortcuts", "│", "╭", "╰", "───", "auto-compact", "esc to interrupt", "⏵⏵", "Esc to cancel")
UNABLE = "Unable to connect to Anthropic services"


def test_escape_bytes_alone_are_no_words() -> None:
    assert last_words(b"\x1b(B\x0f\x1b7\x1b8") == ""
    assert last_words(b"\x1b]0;claude\x07\x1b[?2004h\x1b[?25l\r\n  \r\n") == ""


@pytest.mark.parametrize("screen", SCREENS, ids=lambda p: p.stem)
def test_real_screens_lose_their_chrome(screen: Path) -> None:
    words = last_words(screen.read_bytes())
    assert not any(mark in words for mark in CHROME), words
    assert "\x1b" not in words and "\n" not in words and len(words) <= 240


@pytest.mark.parametrize("screen", SCREENS, ids=lambda p: p.stem)
def test_an_error_printed_below_a_real_screen_is_the_reason(screen: Path) -> None:
    """The agent's error, then its screen redrawn below it (footer last): the error is kept."""
    data = screen.read_bytes() + f"\r\n\x1b[31m{UNABLE}\x1b[0m\r\n".encode()
    data += (
        b"\xe2\x94\x80" * 40
        + b"\r\n\xe2\x9d\xaf\xc2\xa0\r\n"
        + b"\xe2\x94\x80" * 40
        + b"\r\n  ? for shortcuts\r\n"
    )
    words = last_words(data)
    assert words.endswith(UNABLE)  # (after an earlier error line of the screen, if it shows one)
    assert not any(mark in words for mark in CHROME), words


def test_hints_after_an_error_follow_it_and_the_text_is_bounded() -> None:
    out = (
        f"starting\r\nloading config\r\n{UNABLE}\r\n\r\nPlease check your internet connection.\r\n"
    ).encode()
    assert last_words(out) == f"{UNABLE} · Please check your internet connection."
    assert last_words(b"one\ntwo\nthree\nfour\nfive\n") == "two · three · four · five"
    long = last_words(b"x" * 1000)
    assert len(long) == 240 and long.endswith("…")


def crash(reason: str | None, worker: str = "w1") -> CrashEvidence:
    return CrashEvidence(worker, "L1", 0.0, reason, 1, None)


def test_every_worker_exiting_the_same_way_at_start_names_the_cause() -> None:
    same = [crash(f"exited during start-up (exit code 1): {UNABLE}", f"w{i}") for i in range(4)]
    assert crash_summary(same) == f"every worker exits 1 at start: {UNABLE}"
    silent = [crash("exited during start-up (exit code 7)") for _ in range(3)]
    assert crash_summary(silent) == "every worker exits 7 at start"
    killed = [crash("exited during start-up (killed by SIGKILL)") for _ in range(3)]
    assert crash_summary(killed) == "every worker is killed by SIGKILL at start"
    slow = [crash("start-up timeout: not ready within 10 s: Loading") for _ in range(3)]
    assert (
        crash_summary(slow) == "every worker fails to start: start-up timeout: not ready within 10 s: Loading"
    )
    mid = [crash("agent exited (exit code 3): boom") for _ in range(3)]
    assert crash_summary(mid) == "every worker crashes the same way: agent exited (exit code 3): boom"


def test_different_crashes_are_only_a_crash_rate() -> None:
    mixed = [
        crash("agent exited (exit code 3): boom"),
        crash(f"exited during start-up (exit code 1): {UNABLE}"),
    ]
    assert crash_summary(mixed) is None
    assert crash_summary([]) is None
