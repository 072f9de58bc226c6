"""The incremental ANSI stripper: plain bytes in, text out, the same for every split of the input."""

from __future__ import annotations

import pytest
from conftest import FIXTURES
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal.protocols.dialects import ansi
from shoal.protocols.dialects.ansi import AnsiStripper, strip_ansi

SAMPLE = (
    b"\x1b]0;title\x07\x1b[?2004h\x1b[?25l"  # window title, bracketed paste on, cursor hidden
    b"\x1b[38;5;244m\xe2\x95\xad\xe2\x94\x80\xe2\x94\x80\xe2\x95\xae\x1b[0m\r\n"  # coloured box top
    b"\x1b[1m>\x1b[22m\xc2\xa0caf\xc3\xa9 \xe2\x9c\xbb\r\n"  # bold chevron, NBSP, multi-byte text
    b"\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\\r\n"  # OSC 8 hyperlink with ST terminators
    b"\x1b[2K\x1b[1A\x1b[2K\x1b[Gnew frame\x1b[K\r\n"  # Ink's erase-lines, then a redraw
    b"a\x1b[5Cb\rover\r\n"  # cursor forward, a bare CR
    b"\x1bP1$r0m\x1b\\\x1b(Bend"  # DCS string, charset designation
)


def split_feed(data: bytes, cuts: list[int]) -> str:
    stripper = AnsiStripper()
    out = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out.append(stripper.feed(data[prev:cut]))
        prev = cut
    out.append(stripper.flush())
    return "".join(out)


def test_strips_colours_titles_links_and_modes() -> None:
    text = strip_ansi(SAMPLE)
    assert "\x1b" not in text
    assert "╭──╮\n" in text
    assert ">\xa0café ✻\n" in text
    assert "link\n" in text and "example.com" not in text
    assert "title" not in text and "r0m" not in text
    assert text.endswith("end")


def test_cursor_moves_become_line_breaks_so_frames_do_not_glue() -> None:
    erase4 = b"\x1b[2K\x1b[1A" * 3 + b"\x1b[2K\x1b[G"  # Ink erasing a four-line region
    text = strip_ansi(b"? for shortcuts" + erase4 + b"\xe2\x97\x8f Done")
    assert text == "? for shortcuts\n\n\n● Done"
    assert strip_ansi(b"old\x1b[3;1Hnew") == "old\nnew"
    assert strip_ansi(b"top\x1b[2Jclear") == "top\nclear"


def test_cursor_forward_is_a_space_and_cr_a_line_break() -> None:
    assert strip_ansi(b"a\x1b[5Cb") == "a b"
    assert strip_ansi(b"spin 1\rspin 2\r\n") == "spin 1\nspin 2\n"
    # back to column 1 where a line starts anyway adds no blank line
    assert strip_ansi(b"one\r\n\x1b[2K\x1b[Gtwo\r\n\rthree") == "one\ntwo\nthree"
    assert strip_ansi(b"x\x1b[40Gy") == "x y"  # a column move within the line


def test_crlf_split_between_chunks_yields_one_line_break() -> None:
    stripper = AnsiStripper()
    assert stripper.feed(b"line\r") == "line\n"
    assert stripper.feed(b"\nnext") == "next"
    assert stripper.feed(b"\r") == "\n"
    assert stripper.feed(b"\x1b[0m\nafter") == "after"  # an escape between CR and LF is no line


def test_bracketed_paste_mode_is_tracked() -> None:
    stripper = AnsiStripper()
    modes = []
    for chunk in (b"hello \x1b[?20", b"04h prompt", b"\x1b[?2004l"):
        stripper.feed(chunk)
        modes.append(stripper.bracketed_paste)
    assert modes == [False, True, False]


def test_garbage_escape_is_not_held_back_forever() -> None:
    stripper = AnsiStripper()
    assert stripper.feed(b"a\x1b\nb") == "a\nb"  # ESC then a non-sequence byte: dropped
    assert AnsiStripper().feed(b"\x1b]" + b"x" * 5000) != ""  # an endless OSC: let through


@pytest.mark.parametrize("cut", range(len(SAMPLE) + 1))
def test_every_split_of_the_sample_gives_the_same_text(cut: int) -> None:
    assert split_feed(SAMPLE, [cut]) == strip_ansi(SAMPLE)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12))
def test_random_splits_of_the_sample_give_the_same_text(cuts: list[int]) -> None:
    assert split_feed(SAMPLE, cuts) == strip_ansi(SAMPLE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_arbitrary_bytes_never_fail_and_splits_agree(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    whole = strip_ansi(data)
    assert split_feed(data, cuts) == whole
    assert "\x1b" not in whole and "\r" not in whole


def test_fixtures_pass_through_unchanged() -> None:
    for path in sorted(FIXTURES.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        assert strip_ansi(path.read_bytes()) == text, path.name


_SEQUENCES = b"\x1b[2A \x1b[B \x1b[3;1H \x1b[H \x1b[2J \x1b[5C \x1b[G \x1b[1G \x1b[7G \x1b[0G \x1b[d \x1b[12f"
_OTHERS = [
    b"\x1b]0;title\x07",
    b"\x1bP1$r\x1b\\",
    b"\x1b(B",
    b"\x1b",
    b"[",
    b"A",
    b"text ",
    b"\x1b\x1b]2;x\x07[A",
]
_PIECES = st.sampled_from([*_SEQUENCES.split(b" "), *_OTHERS, b"\x1b[?25l"])


@given(st.lists(_PIECES, max_size=30))
@example([b"\x1b", b"\x1b[?25l", b"A"])  # a stray ESC before a dropped sequence: "A" stays
@example([b"\x1b", b"\x1b[5C", b"A"])  # ... before a cursor-forward: " A"
@settings(max_examples=300)
def test_sequences_in_one_split_equal_one_pass_per_sequence(pieces: list[bytes]) -> None:
    """`_sequences` (one split, the hot path) gives what `_replace_slow` gives one sequence at a time."""
    data = b"".join(pieces)
    assert ansi._sequences(data) == ansi._ESC_ANY.sub(ansi._replace_slow, data).replace(b"\x1b", b"")
