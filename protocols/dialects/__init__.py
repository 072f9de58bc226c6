"""Worker dialects: sans-IO parsers, bytes in and signals out, in the style of h11 and wsproto."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ValidationError
from .base import (
    ApiRetry,
    ContextUsage,
    Dialect,
    ExtraUsage,
    NeedsInput,
    Notice,
    ProtocolError,
    QuotaReport,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
    Transport,
)
from .idle import IdleDialect
from .marker import MarkerDialect
from .oneshot import OneshotDialect
from .prompt import PromptDialect
from .stream_json import StreamJsonDialect

DIALECTS: dict[
    str, type[PromptDialect | MarkerDialect | IdleDialect | OneshotDialect | StreamJsonDialect]
] = {
    "prompt": PromptDialect,
    "marker": MarkerDialect,
    "idle": IdleDialect,
    "stream-json": StreamJsonDialect,
    "oneshot": OneshotDialect,
}


def make_dialect(
    name: str, options: Mapping[str, Any] | None = None, *, wall_clock: Callable[[], float] = time.time
) -> Dialect:
    """A fresh dialect for one agent process; `options` are the profile's dialect options.

    Unknown names or options, and options of the wrong type, raise ValidationError naming the field
    (`dialect`, `options.<name>`). `wall_clock` (epoch seconds) turns "resets 3pm" into an epoch.
    """
    cls = DIALECTS.get(name) or DIALECTS.get(name.replace("_", "-"))
    if cls is None:
        raise ValidationError("dialect", f"unknown dialect; known: {', '.join(DIALECTS)}", name)
    return cls(options, wall_clock=wall_clock)


__all__ = [
    "DIALECTS",
    "ApiRetry",
    "ContextUsage",
    "Dialect",
    "ExtraUsage",
    "IdleDialect",
    "MarkerDialect",
    "NeedsInput",
    "Notice",
    "OneshotDialect",
    "PromptDialect",
    "ProtocolError",
    "QuotaReport",
    "RateLimited",
    "Ready",
    "Signal",
    "StreamJsonDialect",
    "TaskDone",
    "TaskFailed",
    "Transport",
    "make_dialect",
]
