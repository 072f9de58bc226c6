"""What the queue needs of a task store, and the store a configuration names.

`TaskStore` is the seam between the QueueActor and durable storage: the queue owns the TaskBook (the
decisions) and hands each burst of `Change`s to `write`, acknowledging clients only once the ticket
resolves; at start (and after a failure) it rebuilds the book with `load_all`; while the store is
`broken` it `probe`s it with backoff. SQLite (actors/store.py) is the first backend. `store.url`
chooses it (`sqlite:///relative.db`, `sqlite:////abs/shoal.db`, `sqlite://` in memory); without one,
`$SHOAL_STORE_URL`, then `store.path`, then `<state_dir>/shoal.db`.

A store shared by several nodes (actors/pgstore.py, docs/architecture.md "Scale-out") adds what one
process gets from owning the book: compare-and-set writes (`Change.expect`; a write's ticket returns the
conflicts with their rows), a change feed of other nodes' writes, node leases, `shared = True`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import trio

from ..protocols.config import NodeConfig, StoreConfig, parse_store_url
from ..protocols.errors import StoreError, ValidationError
from .cluster import FeedBatch, NodesReport
from .store import Store, Ticket
from .taskbook import Change, StoredTask

ENV_STORE_URL = "SHOAL_STORE_URL"


@runtime_checkable
class TaskStore(Protocol):
    """The queue's durable store. Writes never block the caller; tickets resolve in write order."""

    commits: int  # transactions committed so far (statistics)
    shared: bool  # several nodes write it (compare-and-set versions, a change feed, node leases)

    @property
    def broken(self) -> StoreError | None:
        """The error that stopped the store taking writes, if any (the queue turns read-only)."""
        ...

    def write(self, changes: Sequence[Change]) -> Ticket:
        """Queue `changes` for the next commit; the ticket resolves once they are durable."""
        ...

    async def commit(self, changes: Sequence[Change]) -> None: ...

    async def load_all(self) -> list[StoredTask]:
        """Every stored task, to rebuild the book from."""
        ...

    async def probe(self) -> None:
        """One small write that commits, or raises the error that still stops the store."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SharedTaskStore(TaskStore, Protocol):
    """A store several nodes write (`shared = True`): what the queue uses beyond `TaskStore`."""

    node_id: str
    feed: trio.MemoryReceiveChannel[FeedBatch | NodesReport]  # other nodes' writes, the nodes

    def write(self, changes: Sequence[Change], events: Sequence[tuple[str, dict[str, Any]]] = ()) -> Ticket:
        """As `TaskStore.write`; `events` (what the changes make happen) commit with them, those of a
        change that lost its compare-and-set left out, and reach every node's bus through the feed."""
        ...

    def mine(self, version: int) -> bool:
        """A row version this node's incarnation wrote (`TaskBook.version_of`)."""
        ...

    def deliver_events(self, rows: list[tuple[int, float, str, str, Any]]) -> None:
        """The cluster's events read with a feed batch, to this node's bus (after their rows)."""
        ...


def store_url(config: StoreConfig, state_dir: str | os.PathLike[str] | None) -> str:
    """The URL of the store a configuration names (see the module docstring for the order)."""
    if config.url is not None:
        return config.url
    env = os.environ.get(ENV_STORE_URL)
    if env:
        try:
            parse_store_url(env)
        except ValueError as exc:
            raise ValidationError(f"${ENV_STORE_URL}", str(exc), env) from None
        return env
    if config.path is not None:
        return "sqlite://" if config.path == ":memory:" else f"sqlite:///{config.path}"
    if state_dir is None:
        raise ValidationError("state_dir", "is needed when store.url and store.path are not set")
    return f"sqlite:///{Path(state_dir) / 'shoal.db'}"


async def open_store(
    config: StoreConfig, state_dir: str | os.PathLike[str] | None, node: NodeConfig | None = None
) -> TaskStore:
    """Open (creating, migrating) the store the configuration names. StoreError names what failed.
    A PostgreSQL URL opens the shared store and registers this node (`node.id`, its lease)."""
    url = store_url(config, state_dir)
    if parse_store_url(url)[0] == "postgresql":
        from .pgstore import PgStore  # psycopg loads only for a cluster

        node = node or NodeConfig()
        return await PgStore.open(
            url,
            node.id or socket.gethostname(),
            lease_s=node.lease_s,
            heartbeat_s=node.heartbeat_s,
            poll_s=node.poll_s,
            max_batch=config.max_batch,
        )
    return await Store.open(sqlite_path(url), config.synchronous, max_batch=config.max_batch)


def sqlite_path(url: str) -> str:
    """The file (or `:memory:`) a sqlite URL names, `~` expanded."""
    backend, location = parse_store_url(url)
    assert backend == "sqlite"  # the only backend parse_store_url accepts in this build
    return location if location == ":memory:" else os.path.expanduser(location)


__all__ = ["ENV_STORE_URL", "TaskStore", "open_store", "sqlite_path", "store_url"]
