"""Typed errors shared by every layer; each names what was wrong so callers can show it verbatim."""

from __future__ import annotations

from typing import Any


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""


class ValidationError(ShoalError, ValueError):
    """Bad input: `field` names the offending field (dotted path), `value` is what was given."""

    def __init__(self, field: str, message: str, value: Any = None) -> None:
        self.field = field
        self.message = message
        self.value = value
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{field}: {message}{shown}")


class NotFound(ShoalError, KeyError):
    """An id (task, worker, profile) that does not exist."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"unknown {kind} {ident!r}")

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.ident!r}"


class Conflict(ShoalError):
    """The request is well-formed but not allowed in the current state (e.g. cancel a done task)."""


class StoreError(ShoalError):
    """The durable store cannot be opened or written (corrupt, foreign, read-only)."""


class Elsewhere(Conflict):
    """A worker of another node of the cluster: its node's gateway answers for it."""

    def __init__(self, worker: str, node: str, url: str | None) -> None:
        self.worker, self.node, self.url = worker, node, url
        where = f" at {url}" if url else ""
        super().__init__(f"worker {worker!r} runs on node {node!r}; use that node's gateway{where}")
