"""runtime/fastjson.py: orjson's speed with the standard library's answers, on every JSON value
(hypothesis), the corners where the two differ included."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shoal.runtime import fastjson

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson alone would make those floats
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # lone surrogates too: orjson alone refuses them
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@given(_values, st.sampled_from([None, 0, 2]))
def test_loads_decodes_exactly_what_json_loads_decodes(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    expected = json.loads(text)
    assert _same(fastjson.loads(text), expected)
    assert _same(fastjson.loads(text.encode("utf-8", "surrogatepass")), expected)
    assert _same(fastjson.loads(memoryview(text.encode("utf-8", "surrogatepass"))), expected)


@given(_values)
def test_dumps_writes_what_json_reads_back_as_the_value(value: Any) -> None:
    assert _same(json.loads(fastjson.dumps(value)), json.loads(json.dumps(value)))


def test_the_corners_orjson_alone_gets_wrong() -> None:
    for text in ("18446744073709551616", "[1, -9223372036854775809]", '{"n": 123456789012345678901234}'):
        assert _same(fastjson.loads(text), json.loads(text)), text  # ints, not floats
    assert fastjson.loads('"\\ud800"') == "\ud800"
    assert fastjson.loads("NaN") != fastjson.loads("NaN")  # json.loads takes it: so does loads
    assert fastjson.dumps({"a": "\ud800", "big": 2**80}) == '{"a":"\\ud800","big":1208925819614629174706176}'
    assert fastjson.dumps({1: (1, 2), "o": object}) == '{"1":[1,2],"o":"<class \'object\'>"}'
    assert fastjson.dumps(float("nan")) == "null"  # strict JSON, where json.dumps writes NaN
