"""The shared task store: PostgreSQL, so several Shoal nodes serve one queue (docs/architecture.md,
"Scale-out").

Every node keeps its own TaskBook (the rules: validation, the DAG, selection, retries) and writes its
transitions here with compare-and-set: a row carries a `version`, each change names the version it
was decided on (`Change.expect`) and writes a fresh one (`Change.version`, unique to this node's
incarnation). A change whose row moved on meanwhile is not written: its task is a *conflict*, and the
write's ticket returns the row as it now is, so the node absorbs it and decides again. That is the
claim (two nodes that pick one task: one wins, the other takes the next), the fence (a late completion
from a node that lost its lease finds its attempt taken away) and the rule for every other transition.

Other nodes' writes reach a node through the change feed: each transaction appends the ids it wrote to
`task_log` under one advisory lock, so `rev` order is commit order; `LISTEN shoal_tasks` (its own
connection, its own thread) wakes the store thread, which reads the log past its position every time
it is woken and every `poll_s` (a notification is lost while the listener reconnects) and hands the
rows to the queue (`feed`).

Nodes: each holds a row in `nodes` with a lease it renews every `heartbeat_s`; a node whose lease ran
out is marked dead by whichever node sees it first, and the queue requeues what its workers held. A
node that finds its own row dead (it was paused past its lease) takes a new incarnation: its old
attempts are gone, and its late reports are refused by the version check.

psycopg's async API is asyncio-only, so the synchronous driver runs in the store's own threads, with
group commit as the SQLite store has; nothing here blocks the trio loop. A lost connection is retried
with backoff for `reconnect_s` before the store reports itself broken; writes wait meanwhile (the agents
keep running; their results are written after the reconnect).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
import trio
from psycopg import sql

from ..protocols.errors import StoreError
from ..protocols.tasks import Attempt, Outcome, TaskState
from .cluster import ClusterConfig, FeedBatch, Landed, NodeRow, NodesReport
from .store import Ticket, WriteRefused
from .taskbook import Change, StaticRow, StoredTask

log = logging.getLogger("shoal.pgstore")

RESERVED_NODE_CHARS = ":/"
ADVISORY_KEY = 0x53484F4C  # "SHOL": serialises the change feed's revs in commit order
NOTIFY_CHANNEL = "shoal_tasks"
FEED_PAGE = 5000
MAX_CLASH_RETRIES = 10  # a deadlock or serialization failure is retried this often before it counts
MAX_PENDING_EVENTS = 100_000  # events held while PostgreSQL is unreachable; the oldest go first
KEEP_EVENTS = 100_000  # the events table keeps this many (a gateway's `since` replays from its bus)
KEEP_LOG_S = 3600  # change-feed entries older than this are pruned (a node that lags reloads)
PRUNE_EVERY = 60  # heartbeats between two prunes
# errors caused by the values written, not the connection: only the write holding them fails
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError, TypeError)


def redact(url: str) -> str:
    """The URL with its password replaced, for logs, errors and `config get`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://<unparseable>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def _dsn(url: str) -> str:
    """libpq takes `postgresql://` and `postgres://`; SQLAlchemy's `postgresql+psycopg://` too."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.lower().startswith("postgres") else url


# ---- schema and migrations ----------------------------------------------------------------------

_MIGRATION_1 = """
CREATE TABLE shoal_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE tasks (
    id text PRIMARY KEY,
    seq bigint NOT NULL,
    prompt text NOT NULL,
    category text,
    spec_priority bigint NOT NULL,
    deps json NOT NULL,
    model text,
    max_attempts integer NOT NULL,
    timeout_s double precision,
    metadata json NOT NULL,
    run_on_dep_failure boolean NOT NULL,
    digest text NOT NULL,
    created double precision NOT NULL,
    state text NOT NULL,
    priority bigint NOT NULL,
    reason text,
    result text,
    not_before double precision,
    worker text,
    updated double precision NOT NULL,
    failed_models json NOT NULL,
    usage json NOT NULL,
    retry_base integer NOT NULL,
    dep_failure text,
    version bigint NOT NULL
);
CREATE INDEX tasks_ready ON tasks (priority DESC, seq) WHERE state = 'ready';
CREATE TABLE attempts (
    task_id text NOT NULL,
    n integer NOT NULL,
    worker text NOT NULL,
    model text,
    started double precision NOT NULL,
    ended double precision,
    outcome text,
    reason text,
    exit_code integer,
    signal integer,
    output_tail text,
    usage json NOT NULL,
    workspace json,
    PRIMARY KEY (task_id, n)
);
CREATE TABLE task_log (rev bigint PRIMARY KEY, task_id text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE SEQUENCE shoal_rev;
CREATE SEQUENCE shoal_incarnation;
CREATE TABLE nodes (
    id text PRIMARY KEY,
    incarnation bigint NOT NULL,
    slot integer NOT NULL,
    state text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    url text,
    shoal_version text NOT NULL,
    started timestamptz NOT NULL,
    heartbeat timestamptz NOT NULL,
    lease_until timestamptz NOT NULL,
    workers integer NOT NULL DEFAULT 0
);
CREATE TABLE events (
    seq bigint PRIMARY KEY,
    ts double precision NOT NULL,
    node text NOT NULL,
    topic text NOT NULL,
    data json NOT NULL
);
CREATE SEQUENCE shoal_event_seq;
CREATE TABLE cluster_config (
    id integer PRIMARY KEY CHECK (id = 1),
    overrides json NOT NULL,
    version bigint NOT NULL,
    node text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE model_parks (
    model text PRIMARY KEY,
    until double precision,
    reason text,
    node text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO shoal_meta VALUES ('kind', 'shoal task store');
"""

MIGRATIONS: list[str] = [_MIGRATION_1]
SCHEMA_VERSION = len(MIGRATIONS)

_STATIC = (
    "id",
    "seq",
    "prompt",
    "category",
    "spec_priority",
    "deps",
    "model",
    "max_attempts",
    "timeout_s",
    "metadata",
    "run_on_dep_failure",
    "digest",
    "created",
)
_MUTABLE = (
    "state",
    "priority",
    "reason",
    "result",
    "not_before",
    "worker",
    "updated",
    "failed_models",
    "usage",
    "retry_base",
    "dep_failure",
    "version",
)
_ATTEMPT_COLS = (
    "task_id",
    "n",
    "worker",
    "model",
    "started",
    "ended",
    "outcome",
    "reason",
    "exit_code",
    "signal",
    "output_tail",
    "usage",
    "workspace",
)
_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_STATIC + _MUTABLE)})"
    f" VALUES ({', '.join(['%s'] * len(_STATIC + _MUTABLE))})"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)
_UPDATE_TASK = (
    f"UPDATE tasks SET {', '.join(f'{c} = %s' for c in _MUTABLE)} WHERE id = %s AND version = %s RETURNING id"
)
_UPSERT_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLS)}) VALUES ({', '.join(['%s'] * len(_ATTEMPT_COLS))})"
    " ON CONFLICT (task_id, n) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ATTEMPT_COLS[2:])
)


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _mutable(c: Change) -> tuple[Any, ...]:
    return (
        c.state.value,
        c.priority,
        c.reason,
        c.result,
        c.not_before,
        c.worker,
        c.updated,
        _json(c.failed_models),
        _json(c.usage),
        c.retry_base,
        c.dep_failure,
        c.version,
    )


def _attempt_row(tid: str, a: Attempt) -> tuple[Any, ...]:
    return (
        tid,
        a.n,
        a.worker,
        a.model,
        a.started,
        a.ended,
        a.outcome.value if a.outcome is not None else None,
        a.reason,
        a.exit_code,
        a.signal,
        a.output_tail,
        _json(a.usage or {}),
        _json(a.workspace) if a.workspace is not None else None,
    )


def _load(cur: psycopg.Cursor[Any], ids: Sequence[str] | None) -> list[StoredTask]:
    """Stored tasks with their attempts: every task (ids None) or those named, in seq order."""
    where = "" if ids is None else " WHERE task_id = ANY(%s)"
    cur.execute(
        f"SELECT {', '.join(_ATTEMPT_COLS)} FROM attempts{where} ORDER BY task_id, n",
        () if ids is None else (list(ids),),
    )
    attempts: dict[str, list[Attempt]] = {}
    for tid, n, worker, model, started, ended, outcome, reason, code, sig, tail, usage, ws in cur:
        attempts.setdefault(tid, []).append(
            Attempt(
                n=n,
                worker=worker,
                model=model,
                started=started,
                ended=ended,
                outcome=Outcome(outcome) if outcome is not None else None,
                reason=reason,
                exit_code=code,
                signal=sig,
                output_tail=tail,
                usage=usage or {},
                workspace=ws,
            )
        )
    cols = _STATIC + _MUTABLE
    where = "" if ids is None else " WHERE id = ANY(%s)"
    cur.execute(
        f"SELECT {', '.join(cols)} FROM tasks{where} ORDER BY seq", () if ids is None else (list(ids),)
    )
    out: list[StoredTask] = []
    for row in cur:
        r = dict(zip(cols, row, strict=True))
        static = StaticRow(
            seq=r["seq"],
            prompt=r["prompt"],
            category=r["category"],
            priority=r["spec_priority"],
            deps=tuple(r["deps"]),
            model=r["model"],
            max_attempts=r["max_attempts"],
            timeout_s=r["timeout_s"],
            metadata=r["metadata"],
            run_on_dep_failure=r["run_on_dep_failure"],
            digest=r["digest"],
            created=r["created"],
        )
        out.append(
            StoredTask(
                id=r["id"],
                static=static,
                state=TaskState(r["state"]),
                priority=r["priority"],
                reason=r["reason"],
                result=r["result"],
                not_before=r["not_before"],
                worker=r["worker"],
                updated=r["updated"],
                failed_models=r["failed_models"],
                usage=r["usage"],
                retry_base=r["retry_base"],
                dep_failure=r["dep_failure"],
                attempts=tuple(attempts.get(r["id"], ())),
                version=r["version"],
            )
        )
    return out


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of a Shoal database, 0 for an empty one, None for a foreign one."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('shoal_meta') IS NOT NULL, to_regclass('tasks') IS NOT NULL")
        has_meta, has_tasks = cur.fetchone() or (False, False)
        if not has_meta:
            return None if has_tasks else 0
        cur.execute("SELECT value FROM shoal_meta WHERE key = 'schema_version'")
        row = cur.fetchone()
    conn.rollback()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any], where: str, *, apply: bool = True) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION (one transaction per step, under an advisory lock so two
    nodes starting together do not both migrate). Returns (found, now). Refuses a foreign database
    and a newer schema, naming the version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY + 1,))
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('shoal_meta') IS NOT NULL, to_regclass('tasks') IS NOT NULL")
            has_meta, has_tasks = cur.fetchone() or (False, False)
            if not has_meta and has_tasks:
                raise StoreError(
                    f"{where}: has a `tasks` table but is not a Shoal store; refusing to touch it"
                )
            found = 0
            if has_meta:
                cur.execute("SELECT value FROM shoal_meta WHERE key = 'schema_version'")
                row = cur.fetchone()
                found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema version {found} is newer than this Shoal understands ({SCHEMA_VERSION});"
                " upgrade Shoal on this node"
            )
        if not apply:
            return found, found
        for step in range(found, SCHEMA_VERSION):
            conn.execute(sql.SQL(MIGRATIONS[step]))  # type: ignore[arg-type,unused-ignore]
            conn.execute(
                "INSERT INTO shoal_meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(step + 1),),
            )
    return found, SCHEMA_VERSION


def connect(url: str, *, timeout_s: float = 10.0, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection, or StoreError naming the host and the reason (never the password). Autocommit:
    every transaction is an explicit `conn.transaction()` block, none is left open by a read."""
    try:
        return psycopg.connect(
            _dsn(url), autocommit=autocommit, connect_timeout=max(1, int(timeout_s)), application_name="shoal"
        )
    except psycopg.Error as exc:
        raise StoreError(f"{redact(url)}: cannot connect to PostgreSQL ({_why(exc, url)})") from None


def _why(exc: BaseException, url: str) -> str:
    """An error's text without the URL's password in it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = None
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return text


# ---- nodes --------------------------------------------------------------------------------------


@attrs.frozen
class NodeInfo:
    """What a node says of itself in its row."""

    host: str = attrs.field(factory=socket.gethostname)
    pid: int = attrs.field(factory=os.getpid)
    url: str | None = None
    shoal_version: str = "0.1.0"


def check_node_id(value: Any) -> str:
    """Node ids name a node in worker ids (`<node>:w3`): printable, no ':' or '/', ≤ 64 chars."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise StoreError(f"node id must be 1-64 characters, got {value!r}")
    if any(c in RESERVED_NODE_CHARS or not c.isprintable() or c.isspace() for c in value):
        raise StoreError(f"node id {value!r} may not hold ':', '/', spaces or control characters")
    return value


# ---- the store ----------------------------------------------------------------------------------


class _Job:
    __slots__ = ("arg", "changes", "kind", "ticket")

    def __init__(self, kind: str, ticket: Ticket, changes: Sequence[Change] = (), arg: Any = None) -> None:
        self.kind = kind  # write | load | probe | reserve | close
        self.ticket = ticket
        self.changes = changes
        self.arg = arg


class PgStore:
    """The PostgreSQL task store of one node. Open with `await PgStore.open(url, node_id)`."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        info: NodeInfo,
        lease_s: float,
        heartbeat_s: float,
        poll_s: float,
        reconnect_s: float,
        max_batch: int,
    ) -> None:
        self.url = url
        self.shown_url = redact(url)
        self.node_id = check_node_id(node_id)
        self.info = info
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.reconnect_s = reconnect_s
        self.max_batch = max_batch
        self.shared = True
        self.incarnation = 0
        self.slot = 0
        self.workers = 0  # this node's live workers, reported with each heartbeat (set by the swarm)
        self._counter = itertools.count(1)
        self._last_seq_us = 0
        self._token = trio.lowlevel.current_trio_token()
        self._cv = threading.Condition()
        self._jobs: list[_Job] = []
        self._wake_feed = False
        self._closing = False
        self._closed = False
        self._broken: StoreError | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._rev = 0  # the change feed's position
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._feed_send, self.feed = trio.open_memory_channel[FeedBatch | NodesReport](256)
        self._bus: Any = None  # the node's EventBus once attached (see attach_bus)
        # the cluster's configuration: each heartbeat looks at its version; a new one goes here
        self._config_send, self.config_feed = trio.open_memory_channel[ClusterConfig](16)
        self._config_version = 0
        self._events: list[tuple[float, str, dict[str, Any]]] = []  # published, not yet written
        self._event_pos = 0  # the events feed's position
        self._event_floor = 0  # the bus's local seq when attached: cluster seqs go on above it
        self._beats = 0
        self._reconnected_at = -math.inf  # when the store last came back from a lost connection
        self.events_dropped = 0
        self.nodes: tuple[NodeRow, ...] = ()
        # statistics (written by the store thread, read anywhere)
        self.commits = 0
        self.changes_written = 0
        self.largest_batch = 0
        self.conflicts = 0
        self.failures = 0
        self.recoveries = 0
        self.reconnects = 0
        self.refused_writes = 0
        self.feed_rows = 0
        self.retried_clashes = 0

    # ---- what the book needs --------------------------------------------------------------------

    def stamp(self) -> int:
        """A row version unique to this node's incarnation (Change.version)."""
        return (self.incarnation << 32) | (next(self._counter) & 0xFFFFFFFF)

    def mine(self, version: int) -> bool:
        return version >> 32 == self.incarnation

    def next_seq(self, now: float) -> int:
        """A cluster-wide submission order: microseconds since the epoch (never going back on this
        node) shifted left, with this node's slot in the low bits so two nodes never collide."""
        us = max(self._last_seq_us + 1, int(now * 1_000_000))
        self._last_seq_us = us
        return (us << 10) | self.slot

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        node_id: str,
        *,
        info: NodeInfo | None = None,
        lease_s: float = 5.0,
        heartbeat_s: float = 1.0,
        poll_s: float = 2.0,
        reconnect_s: float = 60.0,
        max_batch: int = 1024,
    ) -> PgStore:
        """Connect, check (migrating an empty database) the schema and register the node. StoreError
        names what failed: the host unreachable, a wrong password, a newer schema, a node id in use."""
        store = cls(
            url,
            node_id,
            info=info or NodeInfo(),
            lease_s=lease_s,
            heartbeat_s=heartbeat_s,
            poll_s=poll_s,
            reconnect_s=reconnect_s,
            max_batch=max_batch,
        )
        opened = Ticket()
        store._thread = threading.Thread(target=store._run, args=(opened,), name="shoal-pgstore", daemon=True)
        store._thread.start()
        try:
            await opened.wait()
        except BaseException:
            await trio.to_thread.run_sync(store._thread.join)
            raise
        store._listener = threading.Thread(target=store._listen, name="shoal-pglisten", daemon=True)
        store._listener.start()
        return store

    @property
    def broken(self) -> StoreError | None:
        return self._broken

    def write(self, changes: Sequence[Change]) -> Ticket:
        ticket = Ticket()
        if self._broken is not None or self._closing:
            ticket._resolve(None, self._broken or StoreError(f"{self.shown_url}: store is closed"))
            return ticket
        self._submit(_Job("write", ticket, changes))
        return ticket

    async def commit(self, changes: Sequence[Change]) -> None:
        await self.write(changes).wait()

    async def load_all(self) -> list[StoredTask]:
        if self._closing:
            raise StoreError(f"{self.shown_url}: store is closed")
        ticket = Ticket()
        self._submit(_Job("load", ticket))
        result: list[StoredTask] = await ticket.wait()
        return result

    async def reserve(self, max_workers: int) -> bool:
        """Take one of the cluster's `max_workers` slots for a worker about to spawn here: under a
        lock, the live nodes' workers (this one's as it knows them) plus one must fit. Two nodes
        scaling up in the same moment cannot both take the last slot. No connection: refused."""
        if self._closing or self._broken is not None:
            return False
        ticket = Ticket()
        self._submit(_Job("reserve", ticket, (), max_workers))
        granted: bool = await ticket.wait()
        return granted

    def park(self, model: str, until: float, reason: str | None) -> None:
        """A model parked here is parked on every node (written with the next batch; until=inf:
        until an operator resumes it)."""
        self._submit(_Job("park", Ticket(), (), (model, until, reason)))

    def unpark(self, model: str) -> None:
        self._submit(_Job("park", Ticket(), (), (model, None, None)))

    async def load_config(self) -> ClusterConfig:
        """The cluster's configuration overrides as stored now (version 0, {}: none yet)."""
        ticket = Ticket()
        self._submit(_Job("config_get", ticket))
        got: ClusterConfig = await ticket.wait()
        return got

    async def put_config(self, overrides: dict[str, Any], expect: int) -> ClusterConfig | None:
        """Store new overrides if the stored version is still `expect` (None: another node's patch
        came first: load, merge and try again)."""
        ticket = Ticket()
        self._submit(_Job("config_put", ticket, (), (overrides, expect)))
        got: ClusterConfig | None = await ticket.wait()
        return got

    async def probe(self) -> None:
        if self._closing:
            raise StoreError(f"{self.shown_url}: store is closed")
        ticket = Ticket()
        self._submit(_Job("probe", ticket))
        await ticket.wait()

    async def aclose(self) -> None:
        """Commit what is queued, mark the node stopped, close the connections, join the threads."""
        if self._closed:
            return
        self.detach_bus()
        if not self._closing:
            ticket = Ticket()
            with self._cv:
                self._closing = True
                self._jobs.append(_Job("close", ticket))
                self._cv.notify()
            with trio.CancelScope(shield=True):
                await ticket.wait()
        with trio.CancelScope(shield=True):
            if self._thread is not None:
                await trio.to_thread.run_sync(self._thread.join)
            if self._listener is not None:
                await trio.to_thread.run_sync(self._listener.join)
        self._closed = True

    def attach_bus(self, bus: Any) -> None:
        """Relay the node's events through the cluster: each gets the cluster's seq, and every node's
        events come back to this bus in one order (so `since` means the same at every gateway)."""
        self._bus = bus
        with self._cv:
            self._event_floor = bus.last_seq
        bus.relay = self.relay_event

    def detach_bus(self) -> None:
        """Events go straight to the bus again (the store is closing)."""
        if self._bus is not None and self._bus.relay == self.relay_event:
            self._bus.relay = None

    def relay_event(self, topic: str, data: dict[str, Any]) -> None:
        with self._cv:
            self._events.append((time.time(), topic, data))
            if len(self._events) > MAX_PENDING_EVENTS:
                del self._events[0]
                self.events_dropped += 1
            self._cv.notify()

    def _deliver_events(self, rows: list[tuple[int, float, str, str, Any]]) -> None:
        bus = self._bus
        if bus is None:
            return
        me = self.node_id
        for seq, ts, node, topic, data in rows:
            bus.deliver(seq, ts, topic, data if isinstance(data, dict) else {"value": data}, node != me)

    def _submit(self, job: _Job) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    # ---- delivery to trio -----------------------------------------------------------------------

    def _deliver(self, results: list[tuple[Ticket, Any, BaseException | None]]) -> None:
        for ticket, value, error in results:
            ticket._resolve(value, error)

    def _notify(self, results: list[tuple[Ticket, Any, BaseException | None]]) -> None:
        if results:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._deliver, results)

    def _push_config(self, item: ClusterConfig) -> None:
        def send() -> None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._config_send.send_nowait(item)  # full: a newer version follows anyway

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(send)

    def _push(self, item: FeedBatch | NodesReport) -> None:
        def send() -> None:
            if isinstance(item, NodesReport):
                self.nodes = item.nodes
            try:
                self._feed_send.send_nowait(item)
            except trio.WouldBlock:
                log.warning("pgstore: the queue is not reading the feed; a batch waits")
                with contextlib.suppress(trio.RunFinishedError):
                    trio.lowlevel.spawn_system_task(self._feed_send.send, item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(send)

    # ---- the store thread -----------------------------------------------------------------------

    def _run(self, opened: Ticket) -> None:
        try:
            self._conn = connect(self.url)
            migrate(self._conn, self.shown_url, apply=True)
            self._register(self._conn)
            self._rev = self._head(self._conn)
            with self._conn.cursor() as cur:
                cur.execute("SELECT coalesce(max(seq), 0) FROM events")
                self._event_pos = int(cur.fetchone()[0])  # type: ignore[index]
        except StoreError as exc:
            self._close_conn()
            self._notify([(opened, None, exc)])
            return
        except psycopg.Error as exc:
            self._close_conn()
            self._notify([(opened, None, StoreError(f"{self.shown_url}: {_why(exc, self.url)}"))])
            return
        self._notify([(opened, self, None)])
        next_beat = time.monotonic() + self.heartbeat_s
        next_poll = time.monotonic() + self.poll_s
        while True:
            with self._cv:
                while not self._jobs and not self._wake_feed and not self._events:
                    left = min(next_beat, next_poll) - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                jobs = self._take()
                feed_due = self._wake_feed
                self._wake_feed = False
                events, self._events = self._events, []
                wrote_events = bool(events)
            results: list[tuple[Ticket, Any, BaseException | None]] = []
            close: Ticket | None = None
            writes: list[_Job] = []
            for job in jobs:
                if job.kind == "write":
                    writes.append(job)
                    continue
                results.extend(self._commit(writes, events))
                writes, events = [], []
                if job.kind == "load":
                    results.append(self._load_job(job))
                elif job.kind == "probe":
                    results.append(self._probe_job(job))
                elif job.kind == "reserve":
                    results.append(self._reserve_job(job))
                elif job.kind == "park":
                    self._park_job(job)
                elif job.kind in ("config_get", "config_put"):
                    results.append(self._config_job(job))
                elif job.kind == "close":
                    close = job.ticket
            results.extend(self._commit(writes, events))
            events = []
            self._notify(results)
            if close is not None:
                self._stop_node()
                self._close_conn()
                self._notify([(close, None, None)])
                return
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self._heartbeat()
            # other nodes' writes: when one notifies, and at the poll (a notification may be lost);
            # this node's own events come back to its bus after each commit that carried them
            if feed_due or now >= next_poll:
                if now >= next_poll:
                    next_poll = now + self.poll_s
                self._read_feed()
            elif wrote_events and self._bus is not None:
                self._read_events()

    def _take(self) -> list[_Job]:
        taken = n = 0
        for job in self._jobs:
            if job.kind == "write" and taken and taken + len(job.changes) > self.max_batch:
                break
            taken += len(job.changes)
            n += 1
        jobs, self._jobs = self._jobs[:n], self._jobs[n:]
        return jobs

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _db(self) -> psycopg.Connection[Any]:
        """The store's connection, reconnecting with backoff for up to `reconnect_s` (then StoreError)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._close_conn()
        deadline = time.monotonic() + self.reconnect_s
        delay = 0.05
        while True:
            try:
                self._conn = connect(self.url, timeout_s=min(10.0, max(1.0, self.reconnect_s)))
                self.reconnects += 1
                self._reconnected_at = time.monotonic()
                log.warning("pgstore: reconnected to %s", self.shown_url)
                return self._conn
            except StoreError as exc:
                if self._closing or time.monotonic() + delay > deadline:
                    raise
                log.warning("pgstore: %s; retrying in %.2f s", exc, delay)
                with self._cv:
                    self._cv.wait(delay)
                delay = min(delay * 2, 2.0)

    def _retrying(self, what: str, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run `fn` in a transaction; a lost connection is retried (reconnecting) until
        `reconnect_s` runs out. Data errors propagate at once."""
        deadline = time.monotonic() + self.reconnect_s
        clashes = 0
        while True:
            conn = self._db()
            try:
                with conn.transaction():
                    return fn(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                # two nodes' transactions crossed: PostgreSQL rolled this one back; run it again
                clashes += 1
                self.retried_clashes += 1
                if clashes > MAX_CLASH_RETRIES:
                    raise
                log.info("pgstore: %s clashed with another node (%s); retrying", what, _why(exc, self.url))
                continue
            except psycopg.OperationalError as exc:
                if conn.closed or conn.broken:
                    self._close_conn()
                    if time.monotonic() < deadline and not self._closing:
                        log.warning(
                            "pgstore: %s lost the connection (%s); retrying", what, _why(exc, self.url)
                        )
                        continue
                raise

    # ---- writes ---------------------------------------------------------------------------------

    def _commit(
        self,
        writes: list[_Job],
        events: list[tuple[float, str, dict[str, Any]]] = (),  # type: ignore[assignment]
    ) -> list[tuple[Ticket, Any, BaseException | None]]:
        if events and (self._broken is not None or not writes):
            self._write_events(events)
        if not writes:
            return []
        if self._broken is not None:
            return [(j.ticket, None, self._broken) for j in writes]
        changes = [c for j in writes for c in j.changes]
        if not changes:
            if events:
                self._write_events(events)
            return [(j.ticket, Landed(), None) for j in writes]
        try:
            conflicts = self._retrying("a write", lambda conn: self._apply(conn, changes, events))
        except _DATA_ERRORS:
            if events:
                self._write_events(events)
            return self._one_by_one(writes)
        except (psycopg.Error, StoreError) as exc:
            return [(j.ticket, None, self._break(exc)) for j in writes]
        return self._landed(writes, conflicts)

    def _landed(
        self, writes: list[_Job], conflicts: dict[str, StoredTask | None]
    ) -> list[tuple[Ticket, Any, BaseException | None]]:
        self.commits += 1
        n = sum(len(j.changes) for j in writes)
        self.changes_written += n
        self.largest_batch = max(self.largest_batch, n)
        self.conflicts += len(conflicts)
        if not conflicts:
            return [(j.ticket, Landed(), None) for j in writes]
        out: list[tuple[Ticket, Any, BaseException | None]] = []
        for j in writes:
            mine = {c.task_id: conflicts[c.task_id] for c in j.changes if c.task_id in conflicts}
            out.append((j.ticket, Landed(mine), None))
        return out

    def _one_by_one(self, writes: list[_Job]) -> list[tuple[Ticket, Any, BaseException | None]]:
        """A value PostgreSQL cannot take (a NUL in text, ...): each write again on its own, so only
        the one holding it fails."""
        out: list[tuple[Ticket, Any, BaseException | None]] = []
        for job in writes:
            changes = job.changes
            try:
                conflicts = self._retrying("a write", lambda conn: self._apply(conn, changes))  # noqa: B023
            except _DATA_ERRORS as exc:
                self.refused_writes += 1
                err = WriteRefused(
                    f"{self.shown_url}: write refused, a value cannot be stored ({_why(exc, self.url)})"
                )
                out.append((job.ticket, None, err))
                continue
            except (psycopg.Error, StoreError) as exc:
                out.append((job.ticket, None, self._break(exc)))
                continue
            out.extend(self._landed([job], conflicts))
        return out

    def _break(self, error: BaseException) -> StoreError:
        if self._broken is None:
            self.failures += 1
            self._broken = StoreError(
                f"{self.shown_url}: write failed, store stopped accepting writes ({_why(error, self.url)})"
            )
        return self._broken

    def _write_events(self, events: list[tuple[float, str, dict[str, Any]]]) -> None:
        """Events on their own (no task write to ride with); kept for the next try while broken."""
        if self._broken is not None:
            with self._cv:
                self._events[:0] = events
                del self._events[:-MAX_PENDING_EVENTS]
            return
        try:
            self._retrying("events", lambda conn: self._apply(conn, (), events))
        except _DATA_ERRORS as exc:  # a value json cannot hold: each on its own, the bad one dropped
            log.warning("pgstore: an event could not be stored (%s); storing them one by one", exc)
            for one in events:
                try:
                    self._retrying("an event", lambda conn, e=one: self._apply(conn, (), [e]))  # type: ignore[misc]
                except _DATA_ERRORS:
                    self.events_dropped += 1
                except (psycopg.Error, StoreError):
                    self.events_dropped += 1
        except (psycopg.Error, StoreError) as exc:
            self._break(exc)
            with self._cv:
                self._events[:0] = events

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        changes: Sequence[Change],
        events: Sequence[tuple[float, str, dict[str, Any]]] = (),
    ) -> dict[str, StoredTask | None]:
        """One transaction: every task's last change, compare-and-set on its version; then the feed
        entries under the advisory lock, and a notification. Returns the conflicts with their rows."""
        first: dict[str, Change] = {}  # the first change of each task in the batch: its `expect`
        last: dict[str, Change] = {}
        inserts: dict[str, StaticRow] = {}
        evicts: dict[str, Change] = {}
        attempts: dict[str, dict[int, Attempt]] = {}
        for c in changes:
            tid = c.task_id
            if c.kind == "evict":
                if tid in inserts:  # new and gone within the batch: nothing to write
                    inserts.pop(tid)
                    first.pop(tid, None)
                    last.pop(tid, None)
                    attempts.pop(tid, None)
                    continue
                evicts[tid] = first.get(tid, c)
                first.pop(tid, None)
                last.pop(tid, None)
                attempts.pop(tid, None)
                continue
            if c.static is not None:
                inserts[tid] = c.static
                evicts.pop(tid, None)
            first.setdefault(tid, c)
            last[tid] = c
            if c.attempt is not None:
                attempts.setdefault(tid, {})[c.attempt.n] = c.attempt
        conflicts: list[str] = []
        written: list[str] = []
        with conn.cursor() as cur:
            # rows in id order: two nodes' transactions lock shared rows in one order, never crossed
            for tid, c in sorted(evicts.items()):
                cur.execute("DELETE FROM tasks WHERE id = %s AND version = %s RETURNING id", (tid, c.expect))
                if cur.fetchone() is None:
                    conflicts.append(tid)
                    continue
                cur.execute("DELETE FROM attempts WHERE task_id = %s", (tid,))
                written.append(tid)
            for tid, c in sorted(last.items()):
                if tid in inserts:
                    s = inserts[tid]
                    cur.execute(
                        _INSERT_TASK,
                        (
                            tid,
                            s.seq,
                            s.prompt,
                            s.category,
                            s.priority,
                            _json(list(s.deps)),
                            s.model,
                            s.max_attempts,
                            s.timeout_s,
                            _json(s.metadata),
                            s.run_on_dep_failure,
                            s.digest,
                            s.created,
                            *_mutable(c),
                        ),
                    )
                else:
                    cur.execute(_UPDATE_TASK, (*_mutable(c), tid, first[tid].expect))
                if cur.fetchone() is None:
                    conflicts.append(tid)
                    continue
                written.append(tid)
                rows = [_attempt_row(tid, a) for a in attempts.get(tid, {}).values()]
                if rows:
                    cur.executemany(_UPSERT_ATTEMPT, rows)
            if written or events:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY,))
            if events:
                if self._event_floor:
                    cur.execute(
                        "SELECT setval('shoal_event_seq', greatest(%s, (SELECT CASE WHEN is_called"
                        " THEN last_value ELSE 0 END FROM shoal_event_seq)))",
                        (self._event_floor,),
                    )
                    self._event_floor = 0  # setval is not transactional: done once
                cur.executemany(
                    "INSERT INTO events (seq, ts, node, topic, data)"
                    " VALUES (nextval('shoal_event_seq'), %s, %s, %s, %s)",
                    [(ts, self.node_id, topic, _json(data)) for ts, topic, data in events],
                )
            if written:
                cur.execute(
                    "INSERT INTO task_log (rev, task_id)"
                    " SELECT nextval('shoal_rev'), t FROM unnest(%s::text[]) t",
                    (written,),
                )
            if written or events:
                cur.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, self.node_id))
            found: dict[str, StoredTask | None] = dict.fromkeys(conflicts)
            if conflicts:
                for row in _load(cur, conflicts):
                    found[row.id] = row
        return found

    # ---- reads ----------------------------------------------------------------------------------

    def _load_job(self, job: _Job) -> tuple[Ticket, Any, BaseException | None]:
        def load(conn: psycopg.Connection[Any]) -> list[StoredTask]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with conn.cursor() as cur:
                rev = self._head(conn)
                rows = _load(cur, None)
            self._rev = rev  # the feed goes on from the snapshot the book is built from
            return rows

        try:
            return (job.ticket, self._retrying("a load", load), None)
        except (psycopg.Error, StoreError) as exc:
            return (
                job.ticket,
                None,
                StoreError(f"{self.shown_url}: cannot read stored tasks ({_why(exc, self.url)})"),
            )

    def _probe_job(self, job: _Job) -> tuple[Ticket, Any, BaseException | None]:
        if self._broken is None:
            return (job.ticket, None, None)
        try:
            self._retrying("a probe", lambda conn: conn.execute("SELECT 1"))
        except (psycopg.Error, StoreError) as exc:
            return (
                job.ticket,
                None,
                StoreError(f"{self.shown_url}: store still cannot write ({_why(exc, self.url)})"),
            )
        self._broken = None
        self.recoveries += 1
        return (job.ticket, None, None)

    def _config_job(self, job: _Job) -> tuple[Ticket, Any, BaseException | None]:
        def get(conn: psycopg.Connection[Any]) -> ClusterConfig:
            row = conn.execute("SELECT version, overrides FROM cluster_config WHERE id = 1").fetchone()
            return ClusterConfig(int(row[0]), dict(row[1])) if row else ClusterConfig(0, {})

        def put(conn: psycopg.Connection[Any]) -> ClusterConfig | None:
            overrides, expect = job.arg
            row = conn.execute(
                "INSERT INTO cluster_config (id, overrides, version, node) VALUES (1, %s, 1, %s)"
                " ON CONFLICT (id) DO UPDATE SET overrides = EXCLUDED.overrides,"
                " version = cluster_config.version + 1, node = EXCLUDED.node, at = now()"
                " WHERE cluster_config.version = %s RETURNING version",
                (_json(overrides), self.node_id, expect),
            ).fetchone()
            if row is None or (expect == 0 and int(row[0]) != 1):
                return None
            return ClusterConfig(int(row[0]), overrides)

        try:
            value = self._retrying("the cluster's configuration", get if job.kind == "config_get" else put)
        except (psycopg.Error, StoreError) as exc:
            err = StoreError(f"{self.shown_url}: the cluster's configuration: {_why(exc, self.url)}")
            return (job.ticket, None, err)
        if isinstance(value, ClusterConfig):
            self._config_version = max(self._config_version, value.version)
        return (job.ticket, value, None)

    def _park_job(self, job: _Job) -> None:
        model, until, reason = job.arg

        def park(conn: psycopg.Connection[Any]) -> None:
            if until is None:
                conn.execute("DELETE FROM model_parks WHERE model = %s", (model,))
                return
            conn.execute(
                "INSERT INTO model_parks (model, until, reason, node) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (model) DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason,"
                " node = EXCLUDED.node, at = now()",
                (model, until if math.isfinite(until) else None, reason, self.node_id),
            )

        try:
            self._retrying("a model park", park)
        except (psycopg.Error, StoreError) as exc:
            log.warning("pgstore: cannot record the park of %s: %s", model, _why(exc, self.url))

    def _reserve_job(self, job: _Job) -> tuple[Ticket, Any, BaseException | None]:
        cap = int(job.arg)

        def reserve(conn: psycopg.Connection[Any]) -> bool:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY + 3,))
                cur.execute(
                    "SELECT coalesce(sum(workers), 0) FROM nodes WHERE state = 'alive'"
                    " AND lease_until > now() AND id <> %s",
                    (self.node_id,),
                )
                others = int(cur.fetchone()[0])  # type: ignore[index]
                if others + self.workers + 1 > cap:
                    return False
                self.workers += 1  # counted now, so the next node's reservation sees it
                cur.execute("UPDATE nodes SET workers = %s WHERE id = %s", (self.workers, self.node_id))
                return True

        try:
            return (job.ticket, self._retrying("a reservation", reserve), None)
        except (psycopg.Error, StoreError):
            return (job.ticket, False, None)

    @staticmethod
    def _head(conn: psycopg.Connection[Any]) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(rev), 0) FROM task_log")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _read_feed(self) -> None:
        """Other nodes' writes past the feed position, as rows to absorb (own writes skipped)."""
        if self._broken is not None:
            return

        def read(conn: psycopg.Connection[Any]) -> tuple[int, list[tuple[str, StoredTask | None]]]:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT rev, task_id FROM task_log WHERE rev > %s ORDER BY rev LIMIT %s",
                    (self._rev, FEED_PAGE),
                )
                log_rows = cur.fetchall()
                if not log_rows:
                    return self._rev, []
                ids = list(dict.fromkeys(tid for _rev, tid in log_rows))
                rows = {r.id: r for r in _load(cur, ids)}
            out: list[tuple[str, StoredTask | None]] = []
            for tid in ids:
                row = rows.get(tid)
                if row is not None and self.mine(row.version):
                    continue
                out.append((tid, row))
            out.sort(key=lambda item: item[1].static.seq if item[1] is not None else -1)
            return int(log_rows[-1][0]), out

        if self._bus is not None:
            self._read_events()
        while True:
            try:
                rev, rows = self._retrying("the feed", read)
            except (psycopg.Error, StoreError) as exc:
                log.warning("pgstore: cannot read the change feed: %s", _why(exc, self.url))
                return
            more = rev - self._rev >= FEED_PAGE
            self._rev = rev
            if rows:
                self.feed_rows += len(rows)
                self._push(FeedBatch(rows))
            if not more:
                return

    def _read_events(self) -> None:
        """The cluster's events past the position, to the node's bus in seq order."""

        def read(conn: psycopg.Connection[Any]) -> list[tuple[int, float, str, str, Any]]:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT seq, ts, node, topic, data FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                    (self._event_pos, FEED_PAGE),
                )
                return cur.fetchall()

        while True:
            try:
                rows = self._retrying("the events", read)
            except (psycopg.Error, StoreError) as exc:
                log.warning("pgstore: cannot read the events: %s", _why(exc, self.url))
                return
            if not rows:
                return
            self._event_pos = int(rows[-1][0])
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._deliver_events, rows)
            if len(rows) < FEED_PAGE:
                return

    def _prune(self, conn: psycopg.Connection[Any]) -> None:
        """Keep the events table and the change feed bounded (any node may do it; it is idempotent)."""
        conn.execute("DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - %s", (KEEP_EVENTS,))
        conn.execute("DELETE FROM task_log WHERE at < now() - make_interval(secs => %s)", (KEEP_LOG_S,))

    # ---- nodes ----------------------------------------------------------------------------------

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        """Take this node's row: refused while another process holds the id with a live lease."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY + 2,))
            cur.execute(
                "SELECT state, host, pid, extract(epoch FROM now() - heartbeat),"
                " lease_until > now() FROM nodes WHERE id = %s",
                (self.node_id,),
            )
            row = cur.fetchone()
            if row is not None and row[0] == "alive" and row[4]:
                raise StoreError(
                    f"node id {self.node_id!r} is in use by a running node (pid {row[2]} on {row[1]},"
                    f" heartbeat {float(row[3]):.1f} s ago); give this node another --node-id"
                )
            cur.execute("SELECT slot FROM nodes WHERE state = 'alive' AND lease_until > now()")
            taken = {r[0] for r in cur.fetchall()}
            while True:
                cur.execute("SELECT nextval('shoal_incarnation')")
                inc = int(cur.fetchone()[0])  # type: ignore[index]
                if inc % 1024 not in taken:
                    break
            self.incarnation, self.slot = inc, inc % 1024
            cur.execute(
                "INSERT INTO nodes (id, incarnation, slot, state, host, pid, url, shoal_version, started,"
                " heartbeat, lease_until, workers) VALUES (%s, %s, %s, 'alive', %s, %s, %s, %s, now(), now(),"
                " now() + make_interval(secs => %s), %s) ON CONFLICT (id) DO UPDATE SET"
                " incarnation = EXCLUDED.incarnation, slot = EXCLUDED.slot, state = 'alive',"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, url = EXCLUDED.url,"
                " shoal_version = EXCLUDED.shoal_version, started = now(), heartbeat = now(),"
                " lease_until = EXCLUDED.lease_until, workers = EXCLUDED.workers",
                (
                    self.node_id,
                    inc,
                    self.slot,
                    self.info.host,
                    self.info.pid,
                    self.info.url,
                    self.info.shoal_version,
                    self.lease_s,
                    self.workers,
                ),
            )

    def set_url(self, url: str | None) -> None:
        """The node's gateway URL, shown to other nodes (written with the next heartbeat)."""
        self.info = attrs.evolve(self.info, url=url)

    def _heartbeat(self) -> None:
        """Renew this node's lease, mark nodes whose lease ran out dead, report the cluster."""
        if self._broken is not None:
            return

        def beat(conn: psycopg.Connection[Any]) -> tuple[bool, list[tuple[Any, ...]], dict[str, float]]:
            with conn.cursor() as cur:
                cur.execute(
                    "UPDATE nodes SET heartbeat = now(), lease_until = now() + make_interval(secs => %s),"
                    " workers = %s, url = %s WHERE id = %s AND incarnation = %s AND state = 'alive'"
                    " RETURNING id",
                    (self.lease_s, self.workers, self.info.url, self.node_id, self.incarnation),
                )
                kept = cur.fetchone() is not None
                if time.monotonic() - self._reconnected_at > self.lease_s:
                    # (just back from an outage: others get a lease to say they are alive too)
                    cur.execute(
                        "UPDATE nodes SET state = 'dead' WHERE state = 'alive' AND lease_until <= now()"
                    )
                cur.execute(
                    "SELECT id, incarnation, state, host, pid, url, workers, extract(epoch FROM started),"
                    " extract(epoch FROM now() - heartbeat), extract(epoch FROM lease_until - now()),"
                    " shoal_version FROM nodes ORDER BY id"
                )
                rows = cur.fetchall()
                cur.execute("DELETE FROM model_parks WHERE until < extract(epoch FROM now())")
                cur.execute("SELECT model, until FROM model_parks")
                parks = {m: (float(u) if u is not None else math.inf) for m, u in cur.fetchall()}
                cur.execute(
                    "SELECT version, overrides FROM cluster_config WHERE id = 1 AND version > %s",
                    (self._config_version,),
                )
                newer = cur.fetchone()
                if newer is not None:
                    self._config_version = int(newer[0])
                    self._push_config(ClusterConfig(int(newer[0]), dict(newer[1])))
                return kept, rows, parks

        self._beats += 1
        try:
            if self._beats % PRUNE_EVERY == 0:
                self._retrying("pruning", self._prune)
            kept, rows, parks = self._retrying("the heartbeat", beat)
            lost = False
            if not kept:
                log.error(
                    "pgstore: node %s lost its lease (paused or cut off too long); re-registering",
                    self.node_id,
                )
                self._retrying("re-registering", lambda conn: self._register_in(conn))
                lost = True
                kept, rows, parks = self._retrying("the heartbeat", beat)
        except (psycopg.Error, StoreError) as exc:
            log.warning("pgstore: heartbeat failed: %s", _why(exc, self.url))
            return
        nodes = tuple(
            NodeRow(
                id=r[0],
                incarnation=int(r[1]),
                state=r[2],
                host=r[3],
                pid=int(r[4]),
                url=r[5],
                workers=int(r[6]),
                started=float(r[7]),
                heartbeat_age_s=round(float(r[8]), 3),
                lease_left_s=round(float(r[9]), 3),
                shoal_version=r[10],
            )
            for r in rows
        )
        self._push(NodesReport(nodes, self.incarnation, lost, parks))

    def _register_in(self, conn: psycopg.Connection[Any]) -> None:
        # _register opens its own transaction; inside _retrying's, psycopg nests it as a savepoint
        self._register(conn)

    def _stop_node(self) -> None:
        """Leave the cluster cleanly: the row says stopped, so nobody waits out its lease."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            return
        with contextlib.suppress(psycopg.Error), self._conn.transaction():
            self._conn.execute(
                "UPDATE nodes SET state = 'stopped', lease_until = now() WHERE id = %s AND incarnation = %s",
                (self.node_id, self.incarnation),
            )

    # ---- the listener thread --------------------------------------------------------------------

    def _listen(self) -> None:
        """LISTEN on its own connection; each notification wakes the store thread to read the feed.
        Reconnects with backoff; the store's slow poll covers what is missed meanwhile."""
        delay = 0.1
        while not self._closing:
            try:
                conn = connect(self.url, autocommit=True)
            except StoreError as exc:
                log.warning("pgstore: listener: %s", exc)
                with self._cv:
                    self._cv.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self._listen_conn = conn
            try:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                while not self._closing:
                    for note in conn.notifies(timeout=0.5):
                        if note.payload != self.node_id:
                            self._kick()
            except psycopg.Error as exc:
                if not self._closing:
                    log.warning(
                        "pgstore: listener lost its connection (%s); reconnecting", _why(exc, self.url)
                    )
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
                self._listen_conn = None

    def _kick(self) -> None:
        with self._cv:
            self._wake_feed = True
            self._cv.notify()


def open_nodes(url: str) -> list[NodeRow]:
    """The cluster's nodes (for `shoal nodes` without a running node): a short connection."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, incarnation, state, host, pid, url, workers, extract(epoch FROM started),"
            " extract(epoch FROM now() - heartbeat), extract(epoch FROM lease_until - now()), shoal_version"
            " FROM nodes ORDER BY id"
        )
        return [
            NodeRow(
                id=r[0],
                incarnation=int(r[1]),
                state=r[2],
                host=r[3],
                pid=int(r[4]),
                url=r[5],
                workers=int(r[6]),
                started=float(r[7]),
                heartbeat_age_s=round(float(r[8]), 3),
                lease_left_s=round(float(r[9]), 3),
                shoal_version=r[10],
            )
            for r in cur.fetchall()
        ]


def db_migrate(url: str, *, apply: bool) -> tuple[int, int]:
    """`shoal db migrate` (apply) and `shoal db check` (not): (version found, version now)."""
    try:
        with connect(url) as conn:
            return migrate(conn, redact(url), apply=apply)
    except psycopg.Error as exc:
        raise StoreError(f"{redact(url)}: {_why(exc, url)}") from None


__all__ = [
    "SCHEMA_VERSION",
    "FeedBatch",
    "Landed",
    "NodeInfo",
    "NodeRow",
    "NodesReport",
    "PgStore",
    "check_node_id",
    "db_migrate",
    "open_nodes",
    "redact",
]
