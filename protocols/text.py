"""Text checks at the edge: every string that enters Shoal must be encodable as UTF-8.

Why: JSON can carry a lone surrogate (`"\\ud800"` is valid JSON, and Python's `surrogateescape`
turns undecodable argv bytes into them), but SQLite, the websocket framing, Prometheus' exposition
and a worker's terminal all encode text as UTF-8 and fail on it. One such string that got in
would fail a shared resource for everybody, so it is refused where it enters (the gateway, the
embedding API, the CLI, the configuration) with the path of the offending field.

`check_text(value, "params")` walks JSON-like data (str, dict keys and values, lists, tuples, attrs
instances) without recursion, so nesting as deep as the JSON parser allows cannot overflow the stack.
"""

from __future__ import annotations

from typing import Any

import attrs

from .errors import ValidationError


def bad_char(text: str, nul: bool = False) -> tuple[int, str] | None:
    """(index, why) of the first character of `text` that cannot be encoded as UTF-8 (a lone
    surrogate), or of the first NUL when `nul` is set; None when the text is fine."""
    if text.isascii():
        if nul and "\x00" in text:
            return text.index("\x00"), "contains a NUL character"
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start, f"is not valid Unicode text: lone surrogate U+{ord(text[exc.start]):04X}"
    if nul and "\x00" in text:
        return text.index("\x00"), "contains a NUL character"
    return None


def find_bad_text(value: Any, path: str = "", *, nul: bool = False) -> tuple[str, str, int] | None:
    """The first string in `value` (depth first, in order) that `bad_char` refuses:
    (field path, why, character index); None when every string is fine. Keys are checked too (a
    bad key is reported at its parent's path)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            bad = bad_char(item, nul)
            if bad is not None:
                return where, bad[1], bad[0]
        elif isinstance(item, dict):
            children: list[tuple[str, Any]] = []
            for key, sub in item.items():
                if isinstance(key, str):
                    bad = bad_char(key, nul)
                    if bad is not None:
                        return where, f"has a key that {bad[1]}", bad[0]
                    children.append((f"{where}.{key}" if where else key, sub))
                else:
                    children.append((f"{where}[{key!r}]", sub))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(reversed([(f"{where}[{i}]", sub) for i, sub in enumerate(item)]))
        elif item is None or isinstance(item, int | float):  # most leaves: no attrs lookup
            continue
        elif attrs.has(type(item)):
            stack.extend(
                reversed(
                    [
                        (f"{where}.{f.name}" if where else f.name, getattr(item, f.name))
                        for f in attrs.fields(type(item))
                    ]
                )
            )
    return None


def check_text(value: Any, path: str = "", *, nul: bool = False) -> None:
    """Raise `ValidationError(path, ...)` naming the first string in `value` that cannot be encoded
    as UTF-8 (or holds a NUL, when `nul` is set)."""
    bad = find_bad_text(value, path, nul=nul)
    if bad is not None:
        where, why, index = bad
        raise ValidationError(where or "value", f"{why} at character {index}")


def wire_safe(text: str) -> str:
    """`text` made encodable as UTF-8: a lone surrogate becomes its `\\uXXXX` escape, which inside
    a JSON string is the same character again (used where JSON text goes onto a wire)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
