"""What a node of a cluster knows of the others, in plain types (no database driver): the shared
store's feed items and write results (actors/pgstore.py makes them, the QueueActor reads them), and
how a worker id names its node (`<node>:w3`). SQLite users never load psycopg."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs

from .taskbook import StoredTask


@attrs.frozen
class NodeRow:
    """One node of the cluster as its `nodes` row says."""

    id: str
    incarnation: int
    state: str  # alive | dead | stopped
    host: str
    pid: int
    url: str | None
    workers: int
    started: float
    heartbeat_age_s: float
    lease_left_s: float
    shoal_version: str

    @property
    def alive(self) -> bool:
        return self.state == "alive" and self.lease_left_s > 0


@attrs.frozen
class Landed:
    """What a write's ticket returns: the tasks whose change lost its compare-and-set, each with the
    row as it now is (None: it is gone), for the queue to absorb and decide again."""

    conflicts: dict[str, StoredTask | None] = attrs.field(factory=dict)


@attrs.frozen
class FeedBatch:
    """Other nodes' writes since the last batch (id -> its row, None when evicted), and the cluster's
    events read with them (seq, ts, node, topic, data): the queue hands those to the bus only after
    it absorbed the rows, so a client that hears `task.done` at any node reads the task done there."""

    rows: list[tuple[str, StoredTask | None]]
    events: list[tuple[int, float, str, str, Any]] = attrs.field(factory=list)


@attrs.frozen
class NodesReport:
    """The cluster's nodes as the last heartbeat saw them; `lost` when this node's own row was taken
    away (its lease ran out) and it re-registered under `incarnation`."""

    nodes: tuple[NodeRow, ...]
    incarnation: int
    lost: bool = False
    parks: dict[str, float] = attrs.field(factory=dict)  # model -> until (inf: until resumed)


@attrs.frozen
class ClusterConfig:
    """The cluster's configuration overrides (what `config set` at any node changed), version-stamped."""

    version: int
    overrides: dict[str, Any]


def fenced_off(data: Any, conflicts: Collection[str]) -> bool:
    """An event that did not happen: its task's change in the same write lost its compare-and-set.
    (The shared store applies the same rule in SQL, in `shoal_write`: an event's `task_id`.)"""
    return isinstance(data, dict) and data.get("task_id") in conflicts


def node_of(worker: str) -> str | None:
    """The node a cluster worker id names (`node:w3` -> `node`), None for a one-node worker id."""
    node, sep, _ = worker.rpartition(":")
    return node if sep else None


__all__ = ["ClusterConfig", "FeedBatch", "Landed", "NodeRow", "NodesReport", "node_of"]
