"""KEY=VALUE text and dotted keys: `config set`, `submit --meta`, `serve --set` and SHOAL__* variables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import EXIT_NOT_FOUND, EXIT_USAGE, CliError


def parse_assignment(item: str, option: str | None = None) -> tuple[str, Any]:
    """KEY=VALUE with a dotted key; the value is JSON when it parses (5, true, [..], "x"), else text.

    `option` names where the text came from: "--meta" (a metadata key, not a config key) or a
    config option ("--set", "config set"), so the message says what that option wants.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if option == "--meta":
        if not sep or not key:
            raise CliError(f"--meta wants KEY=VALUE (e.g. --meta ticket=1234), got {item!r}", EXIT_USAGE)
    elif not sep or not key or any(not part for part in key.split(".")):
        example = "scaling.max_workers=4"
        wants = f"{option} wants" if option else "expected"
        raise CliError(
            f"{wants} KEY=VALUE with a dotted config key (e.g. {example}), got {item!r}", EXIT_USAGE
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def nest(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """[("a.b", 1), ("a.c", 2)] → {"a": {"b": 1, "c": 2}}."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CliError(f"{key}: {part} is set to a value and used as a section", EXIT_USAGE)
            node = child
        node[parts[-1]] = value
    return out


def lookup(data: Any, key: str) -> Any:
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CliError(f"no configuration key {key!r}", EXIT_NOT_FOUND)
        node = node[part]
    return node
