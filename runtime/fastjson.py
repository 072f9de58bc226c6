"""JSON on the hot paths of a cluster node: orjson where it gives exactly what the standard library
would, the standard library where it would not.

A node of a 3-node cluster spent about 10 % of its main thread decoding the change feed's json
(psycopg hands each json column to `loads`) and about 3 % encoding its JSON-lines event log;
orjson does both 3 to 17 times faster. It differs from `json` in a few corners, each routed to
`json` here so nothing changes but the speed:
- an integer beyond 64 bits: orjson would make it a float (a task's metadata may hold one);
- a lone surrogate in a string: orjson refuses it on both sides;
- anything else it rejects (NaN, Infinity, a key that is not a string...).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# a number token orjson would turn into a float: positive with 20 digits or more (beyond u64 from
# 18,446,744,073,709,551,616; some 20-digit ones fit, they just take the slow path) or negative
# with 19 or more (beyond i64); a token starts the text or follows one of `:,[` or whitespace
_LONG_INT = re.compile(rb"(?:^|(?<=[:,\[\s]))(?:\d{20}|-\d{19})")
# that scan costs ~30 ns a byte, ten times orjson's parse; a text without 19 digits in a row cannot
# hold such a token, and bytes.translate finds out at ~3 ns a byte (digits made NUL, which a JSON
# text never holds raw; one there only sends it down the slow path)
_DIGITS_TO_NUL = bytes.maketrans(b"0123456789", b"\0" * 10)
_RUN_19 = b"\0" * 19


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """`json.loads`, faster."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) < 20 or _RUN_19 not in raw.translate(_DIGITS_TO_NUL) or _LONG_INT.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def loads_bounded(data: bytes | bytearray | str) -> Any:
    """`json.loads` of a text whose integers are known to fit in 64 bits (a database's bigint
    columns, say): orjson without `loads`' scan for long integers, which costs ten times the parse
    itself on a large text; `json` where orjson refuses the text."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> str:
    """`json.dumps(value, default=str)`, faster, without the spaces after `:` and `,`; NaN and the
    infinities become null (json.dumps writes NaN, which no strict JSON parser takes)."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError: a surrogate, a long int, a value default= failed on
        return json.dumps(value, default=str, separators=(",", ":"))


__all__ = ["dumps", "loads", "loads_bounded"]
