"""Result cleaning without `●` bullets: only the leading echo of the prompt is dropped, never the reply."""

from __future__ import annotations

import pytest

from shoal.protocols.dialects.common import clean_tui

# (stripped transcript, prompt, result)
CASES = [
    # the echo, in every form it takes at the start of a transcript
    ("hello world\nthe answer\n", "hello world", "the answer"),
    ("> hello world\n\nthe answer\n", "hello world", "the answer"),
    ("$ echo hi\nhi\n", "echo hi", "hi"),  # after the program's own prompt
    ("> a long prompt that\n  wraps here\nthe answer\n", "a long prompt that wraps here", "the answer"),
    ("$ echo hello\n  echo hello\nhello\n", "echo hello", "hello"),  # readline redisplays a paste
    ("$ echo hello\n$ echo hello\nhello\n", "echo hello", "hello"),  # the whole line drawn again
    ("echo hi\n$ echo hi\nhi\n", "echo hi", "hi"),  # the terminal's echo, then the line editor's
    # the reply repeating the prompt, or containing it, after the echo
    ("hello world\nhello world\n", "hello world", "hello world"),  # `cat`
    ("> hello world\n\nhello world\n", "hello world", "hello world"),
    ("> hello world\nYou said: hello world\n", "hello world", "You said: hello world"),
    ("hello world\nYou said: hello world\n", "hello world", "You said: hello world"),
    ("> hello world\n$ hello world\n", "hello world", "$ hello world"),  # one program prompt only
    ("> hello world\nhello world\n\nhello world\n", "hello world", "hello world\n\nhello world"),
    ('$ echo "$X"\n  echo "$X"\necho "$X"\n', 'echo "$X"', 'echo "$X"'),  # X='echo "$X"'
    ('echo "$X"\n$ echo "$X"\necho "$X"\n', 'echo "$X"', 'echo "$X"'),
    (">>> 'hi'\n'hi'\n", "'hi'", "'hi'"),  # a REPL printing a value back
    ("\n$ ls\nfile\n$\n", "", "$ ls\nfile\n$"),  # no prompt: no echo
    ("$ history 1\n  history 1\n    7  history 1\n", "history 1", "    7  history 1"),
]


@pytest.mark.parametrize(("text", "prompt", "result"), CASES)
def test_only_the_leading_echo_is_dropped(text: str, prompt: str, result: str) -> None:
    assert clean_tui(text, prompt) == result


def test_a_truncated_transcript_keeps_every_line() -> None:
    """The start (and with it the echo) was cut off: a line equal to the prompt is output."""
    assert clean_tui("hello world\nmore\n", "hello world", truncated=True) == "hello world\nmore"
