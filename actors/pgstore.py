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
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import trio
from psycopg import sql

from ..protocols.errors import StoreError
from ..protocols.tasks import Attempt
from ..runtime.fastjson import loads as fast_json_loads
from ..runtime.fastjson import loads_bounded
from .cluster import FeedBatch, Landed
from .pgbase import Job, log
from .pgmembership import PgMembership
from .pgschema import (
    ADVISORY_KEY,
    EVENTS_PAGE,
    NOTIFY_CHANNEL,
    WRITE_CALL,
    NodeInfo,
    connect,
    feed_query,
    feed_rows,
    load_rows,
    migrate,
    write_docs,
)
from .pgschema import why as _why
from .store import Ticket, WriteRefused
from .taskbook import Change, StaticRow, StoredTask

FEED_PAGE = 5000
_FEED_QUERY = {False: feed_query(events=False), True: feed_query(events=True)}
_EventRow = tuple[int, float, str, str, Any]
"""An event as the feed reads it: seq, ts, node, topic, data."""
EVENT_LINGER_S = 0.01
"""How long a relayed event (`relay_event`) waits for a write to commit with: a worker's `busy`
comes a few ms before its task's result is written; alone, each is one more transaction,
notification and read at every node."""
EVENT_BATCH = 256  # relayed events waiting that go at once, without lingering
MAX_PENDING_EVENTS = 100_000  # events held while PostgreSQL is unreachable; the oldest go first
# errors caused by the values written, not the connection: only the write holding them fails
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError, TypeError)


def _page_rows(
    ids: list[str], tasks: list[dict[str, Any]] | None, attempts: list[dict[str, Any]] | None
) -> list[tuple[str, StoredTask | None]]:
    """A feed page's (or a notification's) rows for `ids`, each once, in submission order (None:
    evicted first), as the queue absorbs them."""
    found = {r.id: r for r in feed_rows(tasks, attempts)}
    out = [(tid, found.get(tid)) for tid in dict.fromkeys(ids)]
    out.sort(key=lambda item: item[1].static.seq if item[1] is not None else -1)
    return out


def _page_events(events: list[list[Any]] | None) -> list[_EventRow]:
    """A feed page's (or a notification's) events, their data decoded (it came as json text)."""
    return [(seq, ts, node, topic, fast_json_loads(data)) for seq, ts, node, topic, data in events or ()]


def _task_of(data: Any) -> str | None:
    """The task a write's own event is of: left out when that task's change loses (`fenced_off`)."""
    tid = data.get("task_id") if isinstance(data, dict) else None
    return tid if isinstance(tid, str) else None


class PgStore(PgMembership):
    """The PostgreSQL task store of one node. Open with `await PgStore.open(url, node_id)`."""

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

    def write(self, changes: Sequence[Change], events: Sequence[tuple[str, dict[str, Any]]] = ()) -> Ticket:
        """`events`: what these changes make happen. They commit in the same transaction (those of a
        task whose change lost its compare-and-set left out by `shoal_write`: `fenced_off`'s rule),
        so other nodes hear of a change and its events with one notification and one feed read, not
        two of each; every bus gets them from the feed, this node's too."""
        if self._broken is not None or self._closing:
            return Ticket.settled(error=self._broken or StoreError(f"{self.shown_url}: store is closed"))
        ticket = Ticket()
        now = time.time()
        self._submit(Job("write", ticket, changes, [(now, topic, data) for topic, data in events]))
        return ticket

    async def commit(self, changes: Sequence[Change]) -> None:
        await self.write(changes).wait()

    async def load_all(self) -> list[StoredTask]:
        if self._closing:
            raise StoreError(f"{self.shown_url}: store is closed")
        ticket = Ticket()
        self._submit(Job("load", ticket))
        result: list[StoredTask] = await ticket.wait()
        return result

    async def probe(self) -> None:
        if self._closing:
            raise StoreError(f"{self.shown_url}: store is closed")
        ticket = Ticket()
        self._submit(Job("probe", ticket))
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
            self._submit(Job("close", ticket))  # answered at once if the thread is gone
            with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                await ticket.wait()  # StoreError: the thread is gone already (see PgBase._die)
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
        """An event of this node's other actors (a worker's state, a scaling step, an alert): it
        waits up to EVENT_LINGER_S for a write to commit with (`_serve`). While the store cannot
        write, this node's bus gets it at once too (`EventBus.deliver_now`; `deliver_events` then
        passes it over when it comes back written)."""
        ts = time.time()
        if self._broken is not None and self._bus is not None:
            self._bus.deliver_now(ts, topic, data)
            self._shown[(ts, topic)] = None
            if len(self._shown) > MAX_PENDING_EVENTS:
                del self._shown[next(iter(self._shown))]
        with self._cv:
            if not self._events:
                self._events_due = time.monotonic() + EVENT_LINGER_S
                self._cv.notify()  # the store thread's wait gets this deadline
            self._events.append((ts, topic, data))
            if len(self._events) > MAX_PENDING_EVENTS:
                del self._events[0]
                self.events_dropped += 1
            elif len(self._events) == EVENT_BATCH:
                self._cv.notify()

    def deliver_events(self, rows: list[tuple[int, float, str, str, Any]]) -> None:
        """The cluster's events to the node's bus (the queue calls it once it absorbed their rows)."""
        bus = self._bus
        if bus is None:
            return
        me, shown = self.node_id, self._shown
        for seq, ts, node, topic, data in rows:
            seen = node == me and bool(shown) and shown.pop((ts, topic), False) is None
            bus.deliver(
                seq, ts, topic, data if isinstance(data, dict) else {"value": data}, node != me, shown=seen
            )

    def _run(self, opened: Ticket) -> None:
        """The store thread: `_serve`, and whatever defect escapes it fails the callers (never a
        silent dead thread that every later write waits on forever)."""
        try:
            self._serve(opened)
        except BaseException as exc:
            self._close_conn()
            if not self._opened:
                self._notify([(opened, None, StoreError(f"{self.shown_url}: cannot open ({exc!r})"))])
            self._die(exc)

    def _serve(self, opened: Ticket) -> None:
        try:
            self._conn = connect(self.url, idle_s=self.lease_s)
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
        self._opened = True
        self._notify([(opened, self, None)])
        next_beat = time.monotonic()  # the first at once: the node knows the cluster from its start
        next_poll = time.monotonic() + self.poll_s
        while True:
            with self._cv:
                while not self._jobs and not self._wake_feed and not self._events_ready():
                    left = min(next_beat, next_poll, self._events_deadline()) - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                jobs = self._held = self._take()
                feed_due = self._wake_feed
                self._wake_feed = False
                notes, self._notes = self._notes, []
                events, self._events = self._events, []
                self._events_due = math.inf
                wrote_events = bool(events) or any(j.arg for j in jobs if j.kind == "write")
            results: list[tuple[Ticket, Any, BaseException | None]] = []
            close: Ticket | None = None
            writes: list[Job] = []
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
            # this node's own events come back to its bus after each commit that carried them, and
            # with the feed's rows: the events read may be another node's too, whose rows must be
            # absorbed first (a client that hears `task.done` reads the task done)
            # (a notification that carries its write is taken as it is, this node's own too:
            # `_catch_up`; while the listener is away, a commit that carried events reads them)
            listening = self._listen_conn is not None
            read = now >= next_poll or (wrote_events and self._bus is not None and not listening)
            if feed_due and not read:
                with self._feed_lock:
                    read = not self._catch_up(notes)
            if read:
                if now >= next_poll:
                    next_poll = now + self.poll_s
                with self._feed_lock:
                    self._read_feed()

    def _events_deadline(self) -> float:
        """When the relayed events waiting go without a write to ride with (called holding the
        condition's lock): EVENT_LINGER_S after the first, at once when EVENT_BATCH wait; never
        while the store is broken (they wait for the next write, which probes it)."""
        if not self._events or self._broken is not None:
            return math.inf
        return -math.inf if len(self._events) >= EVENT_BATCH else self._events_due

    def _events_ready(self) -> bool:
        return time.monotonic() >= self._events_deadline()

    # ---- writes ---------------------------------------------------------------------------------

    def _commit(
        self,
        writes: list[Job],
        events: list[tuple[float, str, dict[str, Any]]] = (),  # type: ignore[assignment]
    ) -> list[tuple[Ticket, Any, BaseException | None]]:
        if events and (self._broken is not None or not writes):
            self._write_events(events)
        if not writes:
            return []
        if self._broken is not None:
            return [(j.ticket, None, self._broken) for j in writes]
        changes = [c for j in writes for c in j.changes]
        ridden = [e for j in writes for e in j.arg or ()]
        if not changes:
            if events or ridden:
                self._write_events([*events, *ridden])
            return [(j.ticket, Landed(), None) for j in writes]
        try:
            conflicts = self._retrying(
                "a write", lambda conn: self._apply(conn, changes, events, ridden), transaction=False
            )
        except _DATA_ERRORS:
            if events:
                self._write_events(events)
            return self._one_by_one(writes)
        except (psycopg.Error, StoreError) as exc:
            return [(j.ticket, None, self._break(exc)) for j in writes]
        return self._landed(writes, conflicts)

    def _landed(
        self, writes: list[Job], conflicts: dict[str, StoredTask | None]
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

    def _one_by_one(self, writes: list[Job]) -> list[tuple[Ticket, Any, BaseException | None]]:
        """A value PostgreSQL cannot take (a NUL in text, ...): each write again on its own, so only
        the one holding it fails."""
        out: list[tuple[Ticket, Any, BaseException | None]] = []
        for job in writes:
            changes, ridden = job.changes, job.arg or []
            try:
                try:
                    conflicts = self._retrying(
                        "a write",
                        lambda conn: self._apply(conn, changes, (), ridden),  # noqa: B023
                        transaction=False,
                    )
                except _DATA_ERRORS as exc:
                    if not ridden:
                        raise
                    # an event json cannot hold: the write without its events, as a relayed one is
                    log.warning("pgstore: a write's events could not be stored (%s); dropped", exc)
                    self.events_dropped += len(ridden)
                    conflicts = self._retrying(
                        "a write",
                        lambda conn: self._apply(conn, changes),  # noqa: B023
                        transaction=False,
                    )
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

    def _write_events(self, events: list[tuple[float, str, dict[str, Any]]]) -> None:
        """Events on their own (no task write to ride with); kept for the next try while broken."""
        if self._broken is not None:
            with self._cv:
                self._events[:0] = events
                del self._events[:-MAX_PENDING_EVENTS]
                self._events_due = time.monotonic()  # due as soon as the store writes again
            return
        try:
            self._retrying("events", lambda conn: self._apply(conn, (), events), transaction=False)
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
                self._events_due = time.monotonic()

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        changes: Sequence[Change],
        events: Sequence[tuple[float, str, dict[str, Any]]] = (),
        ridden: Sequence[tuple[float, str, dict[str, Any]]] = (),
    ) -> dict[str, StoredTask | None]:
        """One transaction, one round trip (the `shoal_write` function, pgschema): every task's last
        change, compare-and-set on its version; then the feed entries and the events (`ridden`: the
        changes' own, less those of conflicts) under the advisory lock, and a notification. Returns
        the conflicts with their rows (read after, as they are now)."""
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
        order = sorted(last)
        docs = write_docs(
            evicts={tid: c.expect for tid, c in evicts.items()},
            inserts=[(inserts[tid], last[tid]) for tid in order if tid in inserts],
            updates=[(first[tid].expect, last[tid]) for tid in order if tid not in inserts],
            attempts=[(tid, a) for tid in order for a in attempts.get(tid, {}).values()],
            events=[
                *((None, ts, topic, data) for ts, topic, data in events),
                *((_task_of(data), ts, topic, data) for ts, topic, data in ridden),
            ],
        )
        floor = self._event_floor if (events or ridden) else 0
        with conn.cursor() as cur:
            cur.execute(WRITE_CALL, (self.node_id, ADVISORY_KEY, floor, *docs))
            row = cur.fetchone()
            conflicts: list[str] = list(row[0]) if row is not None and row[0] else []
            if floor:
                self._event_floor = 0  # setval is not transactional: done once
            found: dict[str, StoredTask | None] = dict.fromkeys(conflicts)
            if conflicts:
                for stored in load_rows(cur, conflicts):
                    found[stored.id] = stored
        return found

    # ---- reads ----------------------------------------------------------------------------------

    def _load_job(self, job: Job) -> tuple[Ticket, Any, BaseException | None]:
        def load(conn: psycopg.Connection[Any]) -> list[StoredTask]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with conn.cursor() as cur:
                rev = self._head(conn)
                rows = load_rows(cur, None)
            with self._feed_lock:
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

    def _probe_job(self, job: Job) -> tuple[Ticket, Any, BaseException | None]:
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

    @staticmethod
    def _head(conn: psycopg.Connection[Any]) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(rev), 0) FROM task_log")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _read_feed(self) -> None:
        """Other nodes' writes past the feed position, as rows to absorb (own writes skipped), and
        the cluster's events past theirs."""
        if self._broken is not None:
            return
        self.feed_reads += 1
        # one snapshot and one round trip a page: the events, the log and the rows it names (an
        # event's row was committed with it, so it is in the rows; the queue absorbs the rows,
        # then delivers the events: FeedBatch)
        events: list[_EventRow] = []
        want_events = self._bus is not None
        while True:
            try:
                rev, rows, got = self._retrying(
                    "the feed",
                    lambda conn: self._feed_page(conn, want_events),  # noqa: B023
                    transaction=False,
                )
            except (psycopg.Error, StoreError) as exc:
                log.warning("pgstore: cannot read the change feed: %s", _why(exc, self.url))
                rev, rows, got = self._rev, [], []
            events += got
            if got:
                self._event_pos = int(got[-1][0])
            want_events = want_events and len(got) >= FEED_PAGE
            more = rev - self._rev >= FEED_PAGE
            self._rev = rev
            self.feed_rows += len(rows)
            if more:
                if rows:
                    self._push(FeedBatch(rows))
                continue
            if want_events:  # a page of events more than the log had
                events += self._read_events()
            if rows or events:
                self._push(FeedBatch(rows, events))
            return

    def _feed_page(
        self, conn: psycopg.Connection[Any], want_events: bool
    ) -> tuple[int, list[tuple[str, StoredTask | None]], list[_EventRow]]:
        """One page of the feed, in one statement (`feed_query`)."""
        params = {
            "rev": self._rev,
            "page": FEED_PAGE,
            "me": self.incarnation,
            "seq": self._event_pos,
            "epage": FEED_PAGE,
        }
        with conn.cursor() as cur:
            cur.execute(_FEED_QUERY[want_events], params)
            texts = cur.fetchone() or (None, None, None, None, None)
        log_rows, tasks, own, attempts, events = (loads_bounded(t) if t is not None else None for t in texts)
        got = _page_events(events)
        if not log_rows:
            return self._rev, [], got
        mine = set(own or ())
        ids = [tid for _rev, tid in log_rows if tid not in mine]
        return int(log_rows[-1][0]), _page_rows(ids, tasks, attempts), got

    def _read_events(self) -> list[_EventRow]:
        """The cluster's events past the position, in seq order (for the queue to deliver)."""

        def read(conn: psycopg.Connection[Any]) -> list[_EventRow]:
            with conn.cursor() as cur:
                cur.execute(EVENTS_PAGE, (self._event_pos, FEED_PAGE))
                return cur.fetchall()

        out: list[_EventRow] = []
        while True:
            try:
                rows = self._retrying("the events", read, transaction=False)
            except (psycopg.Error, StoreError) as exc:
                log.warning("pgstore: cannot read the events: %s", _why(exc, self.url))
                return out
            out += rows
            if rows:
                self._event_pos = int(rows[-1][0])
            if len(rows) < FEED_PAGE:
                return out

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
                sweep_at = time.monotonic() + self.lease_s / 2
                while not self._closing:
                    for note in conn.notifies(timeout=0.5):
                        self._heard(note.payload)
                    if time.monotonic() >= sweep_at:
                        sweep_at = time.monotonic() + self.lease_s / 2
                        self._end_frozen_sessions(conn)
            except psycopg.Error as exc:
                if not self._closing:
                    log.warning(
                        "pgstore: listener lost its connection (%s); reconnecting", _why(exc, self.url)
                    )
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
                self._listen_conn = None

    def _end_frozen_sessions(self, conn: psycopg.Connection[Any]) -> None:
        """End any Shoal session of this database that has sat inside a transaction for longer than
        a lease: its node is frozen (SIGSTOP, a paused VM) between two statements, and the row and
        advisory locks it holds would stall every node that needs them, this one's store thread
        included (which is why the listener's connection does it). `idle_in_transaction_session_timeout`
        (pgschema.connect) does not fire for a session left inside a pipeline, as psycopg's
        executemany leaves it. Needs the nodes to share a role (or pg_signal_backend)."""
        try:
            ended = conn.execute(
                "WITH frozen AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'shoal'"
                " AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
                " AND state_change < now() - make_interval(secs => %s))"
                " SELECT pid FROM frozen WHERE pg_terminate_backend(pid)",
                (self.lease_s,),
            ).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            log.debug("pgstore: cannot end frozen sessions: %s", _why(exc, self.url))
            return
        if ended:
            self.frozen_sessions_ended += len(ended)
            log.warning(
                "pgstore: ended %d session(s) frozen inside a transaction for over %.1f s (pid %s):"
                " their node was paused holding locks",
                len(ended),
                self.lease_s,
                ", ".join(str(r[0]) for r in ended),
            )

    def _heard(self, payload: str) -> None:
        """A write was committed (another node's or this one's): its notification. Another node's
        write that starts right at the feed position is taken here, as it arrives (one thread
        wake-up less on a dispatch's path: the store thread sleeps on); anything else goes to the
        store thread, which also takes this node's own events from its notes (after the write's
        landing: a client hears of a write after its reply) and reads the feed for a gap."""
        note: Any = None
        if payload.startswith("{"):
            try:
                note = loads_bounded(payload)
            except ValueError:
                note = None
            if not isinstance(note, dict) or note.get("big"):
                note = None  # too big to carry its write: read the feed
        elif payload == self.node_id:
            return  # (a node of the version before notifies its id alone: read the feed)
        if note is not None and note.get("node") != self.node_id and self._opened:
            with self._cv:
                behind = bool(self._notes)  # notes before it wait for the store thread: keep order
            if not behind and self._feed_lock.acquire(blocking=False):  # (not while it reads)
                try:
                    if self._catch_up([note]):
                        return
                except Exception as exc:  # a payload this version cannot read: the feed can
                    log.warning("pgstore: a notification could not be read (%r); reading the feed", exc)
                    note = None
                finally:
                    self._feed_lock.release()
        with self._cv:
            self._notes.append(note)
            self._wake_feed = True
            self._cv.notify()

    def _catch_up(self, notes: list[dict[str, Any] | None]) -> bool:
        """Take other nodes' writes from their notifications (`shoal_write`: the revs and event seqs
        a write took, its rows, attempts and events) when each starts right where this node's feed
        position is; False when one does not (a write missed, one too big to carry, a node of the
        version before): then the caller reads the feed, which covers them all. The caller holds
        the feed lock."""
        if self._broken is not None or not notes:
            return not notes
        events_too = self._bus is not None
        for note in notes:
            if note is None:
                return False
            try:
                rev0, rev1, seq0, seq1 = (int(note[k]) for k in ("rev0", "rev1", "seq0", "seq1"))
            except (KeyError, TypeError, ValueError):
                return False
            if rev1 <= self._rev and (not events_too or seq1 <= self._event_pos):
                continue  # read with the feed already
            if rev0 != self._rev or (events_too and seq0 != self._event_pos):
                return False
            rows: list[tuple[str, StoredTask | None]] = []
            if note.get("node") != self.node_id:  # (this node's own rows are in its book)
                rows = _page_rows(note.get("ids") or [], note.get("tasks"), note.get("attempts"))
            events: list[_EventRow] = []
            if events_too:
                events = _page_events(note.get("events"))
                self._event_pos = seq1
            self._rev = rev1
            self.feed_rows += len(rows)
            self.feed_notes += 1
            if rows or events:
                self._push(FeedBatch(rows, events))
        return True


__all__ = ["FEED_PAGE", "NOTIFY_CHANNEL", "PgStore"]
