"""The plumbing of the shared store's thread (actors/pgstore.py): its state, the jobs the trio side
queues for it, delivery back to trio through the trio token, and one connection kept alive, reconnected
with backoff and retried on the clashes PostgreSQL reports between two nodes' transactions."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import trio

from ..protocols.errors import StoreError
from .cluster import ClusterConfig, FeedBatch, NodeRow, NodesReport
from .pgschema import NodeInfo, check_node_id, connect, redact
from .pgschema import why as _why
from .store import Ticket, batch_size, resolve_from_thread
from .taskbook import Change

log = logging.getLogger("shoal.pgstore")

MAX_CLASH_RETRIES = 10  # a deadlock or serialization failure is retried this often before it counts


class Job:
    """One request to the store thread; its ticket resolves with the answer."""

    __slots__ = ("arg", "changes", "kind", "ticket")

    def __init__(self, kind: str, ticket: Ticket, changes: Sequence[Change] = (), arg: Any = None) -> None:
        self.kind = kind  # write | load | probe | reserve | park | config_get | config_put | close
        self.ticket = ticket
        self.changes = changes
        self.arg = arg


class PgBase:
    """The store's state and its thread's plumbing (PgMembership and PgStore build on it)."""

    # ---- the store thread -----------------------------------------------------------------------

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
        self._jobs: list[Job] = []
        self._wake_feed = False
        # other nodes' notifications since the store thread last looked, in commit order: what each
        # write took and wrote (None: read the feed; PgStore._catch_up)
        self._notes: list[dict[str, Any] | None] = []
        self._closing = False
        self._closed = False
        self._broken: StoreError | None = None
        self._dead: StoreError | None = None  # the store thread is gone (see _die)
        self._opened = False  # the store thread has answered open()
        self._held: list[Job] = []  # the jobs the store thread took and is working on
        self._conn: psycopg.Connection[Any] | None = None
        self._rev = 0  # the change feed's position
        # held by whichever thread moves the feed positions (_rev, _event_pos) and pushes what it
        # read: the store thread (feed reads, loads, its own notifications) or the listener (another
        # node's notification taken as it arrives: PgStore._heard)
        self._feed_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._feed_send, self.feed = trio.open_memory_channel[FeedBatch | NodesReport](256)
        self._bus: Any = None  # the node's EventBus once attached (see attach_bus)
        # the cluster's configuration: each heartbeat looks at its version; a new one goes here
        self._config_send, self.config_feed = trio.open_memory_channel[ClusterConfig](16)
        self._config_version = 0
        self._events: list[tuple[float, str, dict[str, Any]]] = []  # published, not yet written
        self._events_due = math.inf  # (monotonic) when the waiting events go without a write
        # (ts, topic) of the events this node's bus got at once while the store could not write
        # (PgStore.relay_event), in order: their return through the feed is not delivered again
        self._shown: dict[tuple[float, str], None] = {}
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
        self.feed_notes = 0  # other nodes' writes taken from their notification, not a feed read
        self.feed_reads = 0
        self.retried_clashes = 0
        self.frozen_sessions_ended = 0  # other nodes' sessions ended by this node's listener

    def _submit(self, job: Job) -> None:
        with self._cv:
            if self._dead is not None:  # no thread left to answer: fail at once, never hang
                job.ticket._resolve(None, self._dead)
                return
            self._jobs.append(job)
            self._cv.notify()

    def _die(self, exc: BaseException) -> None:
        """The store thread hit a defect (an exception no path handles): log it, fail every job
        waiting and every later one with a StoreError that names it, and stop accepting writes (the
        queue goes read-only and says why) rather than leave callers waiting on a thread that is gone."""
        log.critical("pgstore: the store thread failed; writes stop", exc_info=exc)
        error = StoreError(f"{self.shown_url}: the store thread failed ({type(exc).__name__}: {exc})")
        with self._cv:
            self._dead = error
            self._broken = self._broken or error
            jobs, self._jobs = [*self._held, *self._jobs], []
            self._held = []
        self._notify([(job.ticket, None, error) for job in jobs])

    # ---- delivery to trio -----------------------------------------------------------------------

    def _notify(self, results: list[tuple[Ticket, Any, BaseException | None]]) -> None:
        resolve_from_thread(self._token, results)

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

    def _take(self) -> list[Job]:
        n = batch_size(self._jobs, self.max_batch)
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
                self._conn = connect(
                    self.url, timeout_s=min(10.0, max(1.0, self.reconnect_s)), idle_s=self.lease_s
                )
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

    def _retrying(
        self,
        what: str,
        fn: Callable[[psycopg.Connection[Any]], Any],
        *,
        pipeline: bool = False,
        transaction: bool = True,
    ) -> Any:
        """Run `fn` in a transaction; a lost connection is retried (reconnecting) until
        `reconnect_s` runs out. Data errors propagate at once. `pipeline`: the transaction in
        pipeline mode (BEGIN, the statements and COMMIT go out without waiting for each other's
        answers; the round trips are only those `fn` needs to read a result, plus the COMMIT's).
        `transaction=False`: `fn` is one statement, its own transaction (no BEGIN and COMMIT)."""
        deadline = time.monotonic() + self.reconnect_s
        clashes = 0
        while True:
            conn = self._db()
            try:
                if not transaction:
                    return fn(conn)
                with conn.pipeline() if pipeline else contextlib.nullcontext(), conn.transaction():
                    return fn(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                # two nodes' transactions crossed: PostgreSQL rolled this one back; run it again
                clashes += 1
                self.retried_clashes += 1
                if clashes > MAX_CLASH_RETRIES:
                    raise
                log.info("pgstore: %s clashed with another node (%s); retrying", what, _why(exc, self.url))
                continue
            except psycopg.Error as exc:  # a lost connection is OperationalError; a session the
                # server ended (idle_in_transaction_session_timeout: see pgschema.connect) is not
                if conn.closed or conn.broken:
                    self._close_conn()
                    if time.monotonic() < deadline and not self._closing:
                        log.warning(
                            "pgstore: %s lost the connection (%s); retrying", what, _why(exc, self.url)
                        )
                        continue
                raise

    def _break(self, error: BaseException) -> StoreError:
        if self._broken is None:
            self.failures += 1
            self._broken = StoreError(
                f"{self.shown_url}: write failed, store stopped accepting writes ({_why(error, self.url)})"
            )
        return self._broken


__all__ = ["MAX_CLASH_RETRIES", "Job", "PgBase"]
