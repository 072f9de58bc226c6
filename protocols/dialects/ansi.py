"""Incremental ANSI escape stripping: raw terminal bytes in, plain text out.

A TUI such as Claude Code redraws its screen with cursor moves, so plain deletion of escape sequences
would glue the old frame's last line to the new frame's first. This stripper turns every sequence that
moves the cursor to another line (up/down/absolute position/erase display, and a bare carriage return)
into a line break, forward moves into a space, and drops everything else (colours, modes, titles).

It works on bytes first (escape sequences are ASCII, so a UTF-8 character split across chunks is never
touched), carries an escape sequence or CR cut at a chunk boundary over to the next call, and decodes
UTF-8 incrementally, so any split of the same bytes yields the same text. The common case (colour
codes only) costs one `re.sub` per chunk.
"""

from __future__ import annotations

import codecs
import re

# Every complete escape sequence: CSI, OSC (BEL or ST), DCS/SOS/PM/APC strings, two-byte/nF escapes.
_ESC_FULL = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]"
    rb"|\][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`-~])"
)
_SGR = re.compile(rb"\x1b\[[0-9;:]*m")
# Every sequence, with the meaning of each final byte (the reference: _replace_slow).
_ESC_ANY = re.compile(
    rb"\x1b(?:\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"
    rb"|\][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`-~])"
)
_LINE_FINALS = frozenset(b"ABEFHJdf")
# C0 controls other than TAB and LF (CR is translated before this), and DEL.
_CONTROLS = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"
_COL1 = b"\x1e"  # internal: "back to column 1" (CR, CSI G); a line break unless already at a line start
_COL1_RUN = re.compile(rb"\x1e{2,}")
_MAX_CARRY = 4096  # an "escape sequence" longer than this is garbage: let it through as text


# A sequence cut short by the end of the chunk (anchored at the end).
_INCOMPLETE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|[\]PX^_][^\x07\x1b]*\x1b?|[ -/]*)\Z")


def _incomplete_tail(data: bytes, esc: int) -> int:
    """Index where an unfinished escape sequence starts at the end of `data` (len(data) if none).

    `esc` is the last ESC. A bare ESC at the very end may open the terminator (ST) of a string
    sequence (OSC/DCS/APC) before it; then the carry starts at that string's opener.
    """
    lo = max(0, len(data) - _MAX_CARRY)
    if esc < lo or not _INCOMPLETE.match(data, esc):
        return len(data)
    if esc == len(data) - 1:
        opener = data.rfind(b"\x1b", lo, esc)
        if opener >= 0 and _INCOMPLETE.match(data, opener):
            return opener
    return esc


# After the colours, every CSI sequence in one split (the final byte and the parameters captured),
# mapped to what it becomes in a list comprehension: a TUI's redraws are mostly cursor moves, and one
# C-level pass plus a lookup per sequence beats a regex pass per kind or a Python callback per match.
# Sequences cannot nest (no ESC inside one), so this gives what one left-to-right pass over _ESC_ANY
# with _replace_slow gives (tests compare the two).
_CSI_SPLIT = re.compile(rb"\x1b\[([0-?]*)[ -/]*([@-~])")
# What a sequence becomes, behind a mark (\x1d, removed after): a stray ESC before a sequence must not
# form a new sequence with what the sequence became or with what follows it ("\x1b" "\x1b[?25l" "A").
_MARK = b"\x1d"
_CSI_BECOMES = {bytes([c]): b"\n" for c in _LINE_FINALS} | {b"C": _MARK + b" "}
_COL1_PARAMS = frozenset({b"", b"0", b"1"})
_ESC_OTHER = re.compile(rb"\x1b(?:\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[ -/]*[0-OQ-WYZ\\`-~])")


def _sequences(data: bytes) -> bytes:
    """Cursor moves to line breaks / spaces / column 1, other sequences dropped, stray ESC removed."""
    if b"\x1b[" in data:
        parts = _CSI_SPLIT.split(data)
        if len(parts) > 1:
            becomes = _CSI_BECOMES.get
            parts[1::3] = [
                becomes(final, _MARK) if final != b"G" else _COL1 if params in _COL1_PARAMS else _MARK + b" "
                for params, final in zip(parts[1::3], parts[2::3], strict=True)
            ]
            del parts[2::3]
            data = b"".join(parts)
    if b"\x1b" in data:
        data = _ESC_OTHER.sub(b"", data).replace(b"\x1b", b"")
    return data.replace(_MARK, b"")


def _replace_slow(m: re.Match[bytes]) -> bytes:
    """What one escape sequence becomes (the reference for _sequences; tests compare the two)."""
    final = m.group("final")
    if final is None:
        return b""
    code = final[0]
    if code in _LINE_FINALS:
        return b"\n"
    if code == 0x43:  # C: cursor forward
        return b" "
    if code == 0x47:  # G: column absolute; to column 1 behaves like CR
        params = m.group("params")
        return _COL1 if params in (b"", b"0", b"1") else b" "
    return b""


class AnsiStripper:
    """Feed raw bytes, get plain text; state carries partial sequences between calls."""

    def __init__(self) -> None:
        self._carry = b""
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
        self._at_line_start = True
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.bracketed_paste: bool = False  # the application turned on bracketed paste (?2004h)

    def feed(self, data: bytes) -> str:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if _COL1 in data:
            data = data.replace(_COL1, b"")
        esc = data.rfind(b"\x1b")
        if esc >= 0:
            cut = _incomplete_tail(data, esc)
            if cut < len(data):
                self._carry = data[cut:]
                data = data[:cut]
            if b"?2004" in data:
                self._note_modes(data)
            data = b"".join(_SGR.split(data))  # colours: nearly all of it (split+join beats sub)
            if b"\x1b" in data:
                data = _sequences(data)
        if not data:
            return ""
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                if not data:
                    return ""
        ends_cr = data[-1] == 0x0D
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", _COL1)
        if _COL1 in data:
            data = self._column_one(data, ends_cr)
        data = data.translate(None, _CONTROLS)
        if data:
            self._at_line_start = data[-1] == 0x0A
        return self._decoder.decode(data)

    def _column_one(self, data: bytes, ends_cr: bool) -> bytes:
        """Moves to column 1 break the line, except where a line starts anyway (no blank lines)."""
        data = _COL1_RUN.sub(_COL1, data)
        data = data.replace(b"\n" + _COL1, b"\n").replace(_COL1 + b"\n", b"\n")
        if data[:1] == _COL1 and self._at_line_start:
            data = data[1:]
        # a CR ending the chunk became a line break: an LF opening the next chunk belongs to it
        self._skip_lf = ends_cr and data[-1:] == _COL1
        return data.replace(_COL1, b"\n")

    def flush(self) -> str:
        """End of stream: whatever is still held back, as text."""
        data, self._carry = self._carry, b""
        text = data.translate(None, _CONTROLS + b"\x1b").decode("utf-8", errors="replace")
        return text + self._decoder.decode(b"", final=True)

    def _note_modes(self, data: bytes) -> None:
        on = data.rfind(b"\x1b[?2004h")
        off = data.rfind(b"\x1b[?2004l")
        if on > off:
            self.bracketed_paste = True
        elif off > on:
            self.bracketed_paste = False


def strip_ansi(data: bytes | str) -> str:
    """One-shot stripping of a complete byte string or text (tests, result cleaning, logs)."""
    stripper = AnsiStripper()
    raw = data.encode("utf-8", errors="surrogateescape") if isinstance(data, str) else data
    return stripper.feed(raw) + stripper.flush()
