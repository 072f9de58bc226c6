"""The durable task store: SQLite in WAL mode, owned by one dedicated thread, with group commit.

Only the QueueActor writes, and it never waits on the disk from the trio loop: `Store.write(changes)`
appends to the thread's queue and returns a `Ticket` at once; the thread takes *everything* queued
while its previous transaction ran and commits it as one transaction (group commit), then wakes the
tickets through the trio token. `await store.commit(changes)` is `await store.write(changes).wait()`.
Tickets complete in the order they were written, so "my ticket is done" means every change written
before it is durable too.

The interface speaks in task-state transitions (`Change.kind`: submit, claim, complete, fail,
requeue, cancel, ...) carrying the task's mutable state after the transition, so another backend (a
PostgreSQL store shared by several nodes, with row locks on claim) can implement the same calls.
`evict` (retention dropped a finished task) deletes the task's row and its attempts, in the same
group commit as the changes around it. The schema, its migrations and the row conversion are
actors/store_schema.py; this module is the thread, its connection and its tickets.

Durability with the default `synchronous=NORMAL` in WAL mode: a committed transaction is in the WAL
file (written with write(2)) before its ticket completes, so it survives the Shoal process being
killed at any point; after a power loss or OS crash the last transactions before the failure may roll
back (the database stays consistent). `synchronous=FULL` fsyncs the WAL on every commit: durable
across power loss, at the cost of one fsync per group commit (amortised by batching).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import trio

from ..protocols.errors import StoreError, ValidationError
from .store_schema import APPLICATION_ID as APPLICATION_ID
from .store_schema import MIGRATIONS as MIGRATIONS
from .store_schema import SCHEMA_VERSION as SCHEMA_VERSION
from .store_schema import apply_changes, load_tasks, migrate
from .taskbook import Change, StoredTask


class WriteRefused(StoreError):
    """One write held a value SQLite cannot take; only that write failed, the store goes on."""


def _is_data_error(exc: BaseException) -> bool:
    """A failure caused by the values written, not by the disk or the database file."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.InterfaceError | sqlite3.ProgrammingError | sqlite3.DataError | sqlite3.IntegrityError
    ):
        return False  # disk full, I/O error, read-only file, corrupt database, ...
    return isinstance(exc, sqlite3.Error | UnicodeError | OverflowError | TypeError | ValueError)


SYNCHRONOUS = ("OFF", "NORMAL", "FULL")
Synchronous = Literal["OFF", "NORMAL", "FULL"]


def _private_files(path: str) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives its -wal and -shm files
    the database file's mode, so prompts and results are readable by their owner only."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the database file ({exc.strerror or exc})") from None


def _protect(path: str) -> None:
    """Take group and other access away from store files an older version created 0644 (called
    once the file is known to be a Shoal store: a foreign file is never touched)."""
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(OSError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


# ---- the thread and its tickets -----------------------------------------------------------------


class Ticket:
    """Completion of one write (or other job) in the store thread; await `wait()`."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._error: BaseException | None = None
        self._value: Any = None

    @classmethod
    def settled(cls, value: Any = None, error: BaseException | None = None) -> Ticket:
        """A ticket already resolved (a write refused at once, or one with nothing to write)."""
        ticket = cls()
        ticket._resolve(value, error)
        return ticket

    def done(self) -> bool:
        return self._event.is_set()

    def _resolve(self, value: Any, error: BaseException | None) -> None:
        self._value = value
        self._error = error
        self._event.set()

    def result(self) -> Any:
        """The outcome of a completed ticket (raises its error)."""
        if not self._event.is_set():
            raise RuntimeError("ticket not completed yet")
        if self._error is not None:
            raise self._error
        return self._value

    async def wait(self) -> Any:
        await self._event.wait()
        return self.result()


Result = tuple[Ticket, Any, BaseException | None]  # a job's ticket and how it ended


def resolve_from_thread(token: trio.lowlevel.TrioToken, results: list[Result]) -> None:
    """Resolve tickets from a store's thread: on the trio loop, in order (a run that has finished
    has no one left waiting). Both stores' threads answer this way."""
    if results:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(_resolve_all, results)


def _resolve_all(results: list[Result]) -> None:
    for ticket, value, error in results:
        if not ticket.done():  # the first answer stands (a dying thread fails what it still held)
            ticket._resolve(value, error)


def batch_size(jobs: Sequence[Any], max_batch: int) -> int:
    """How many of the queued `jobs` the next group commit takes: everything, but at most
    `max_batch` changes' worth of writes (whole jobs; a bigger single write goes alone)."""
    taken = n = 0
    for job in jobs:
        if job.kind == "write" and taken and taken + len(job.changes) > max_batch:
            break
        taken += len(job.changes)
        n += 1
    return n


class _Job:
    __slots__ = ("changes", "kind", "ticket")

    def __init__(self, kind: str, ticket: Ticket, changes: Sequence[Change] = ()) -> None:
        self.kind = kind  # "write" | "load" | "probe" | "close"
        self.ticket = ticket
        self.changes = changes


class Store:
    """SQLite task store. Create with `await Store.open(path)`; close with `await store.aclose()`
    (or use `async with`). Every call on a file database runs in the store's own thread. A
    `":memory:"` store (tests, throw-away swarms) has no disk to wait for, so it runs inline on the
    caller's thread: its tickets are complete when `write` returns, which keeps tests that drive
    time with trio's autojump clock deterministic (a real thread is invisible to that clock)."""

    def __init__(self, path: str, synchronous: Synchronous, max_batch: int) -> None:
        self.path = path
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._token = trio.lowlevel.current_trio_token()
        self._cv = threading.Condition()
        self._jobs: list[_Job] = []
        self._closing = False
        self._closed = False
        self._broken: StoreError | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self.inline = path == ":memory:"
        self.shared = False  # this process's own file: the book decides alone
        # statistics (written by the store thread, read anywhere)
        self.commits = 0
        self.changes_written = 0
        self.largest_batch = 0
        self.failures = 0  # writes that stopped the store (disk full, I/O error, ...)
        self.recoveries = 0  # probes that committed after such a failure
        self.refused_writes = 0  # writes refused for a value SQLite cannot take (the store went on)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        synchronous: Synchronous = "NORMAL",
        *,
        max_batch: int = 1024,
    ) -> Store:
        """Open (creating, migrating) the store at `path`, or `":memory:"`. Raises `StoreError` naming
        the path and the reason for a corrupt or foreign file, an unwritable directory, or a store
        already in use by another Shoal process."""
        if synchronous not in SYNCHRONOUS:
            raise ValidationError("store.synchronous", f"must be one of {list(SYNCHRONOUS)}", synchronous)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValidationError("store.max_batch", "must be a positive integer", max_batch)
        store = cls(os.fspath(path), synchronous, max_batch)
        if store.inline:
            store._connect()
            return store
        opened = Ticket()
        store._thread = threading.Thread(target=store._run, args=(opened,), name="shoal-store", daemon=True)
        store._thread.start()
        try:
            await opened.wait()
        except BaseException:
            await trio.to_thread.run_sync(store._thread.join)
            raise
        return store

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def broken(self) -> StoreError | None:
        """The error that stopped the store accepting writes, if any."""
        return self._broken

    def write(self, changes: Sequence[Change]) -> Ticket:
        """Queue `changes` for the next group commit; never blocks. Tickets resolve in write order."""
        if self._broken is not None or self._closing:
            return Ticket.settled(error=self._broken or StoreError(f"{self.path}: store is closed"))
        ticket = Ticket()
        if self.inline:
            assert self._conn is not None
            for done, value, error in self._commit(self._conn, [_Job("write", ticket, changes)]):
                done._resolve(value, error)
            return ticket
        with self._cv:
            self._jobs.append(_Job("write", ticket, changes))
            self._cv.notify()
        return ticket

    async def commit(self, changes: Sequence[Change]) -> None:
        """Write `changes` and wait until they (and everything written before) are committed."""
        await self.write(changes).wait()

    async def load_all(self) -> list[StoredTask]:
        """Every stored task with its attempts (recovery at start-up), read in the store thread."""
        ticket = Ticket()
        if self._closing:
            raise StoreError(f"{self.path}: store is closed")
        if self.inline:
            assert self._conn is not None
            try:
                return load_tasks(self._conn)
            except (sqlite3.Error, ValueError, KeyError) as exc:
                raise StoreError(f"{self.path}: cannot read stored tasks ({exc})") from None
        with self._cv:
            self._jobs.append(_Job("load", ticket))
            self._cv.notify()
        result: list[StoredTask] = await ticket.wait()
        return result

    async def probe(self) -> None:
        """After a failed write: try one small write; when it commits the store takes writes again.
        Raises `StoreError` while it still cannot write. Nothing written before the failure is
        touched (the failed transactions were rolled back; committed ones stay)."""
        if self._closing:
            raise StoreError(f"{self.path}: store is closed")
        if self.inline:
            assert self._conn is not None
            self._probe(self._conn)
            return
        ticket = Ticket()
        with self._cv:
            self._jobs.append(_Job("probe", ticket))
            self._cv.notify()
        await ticket.wait()

    async def aclose(self) -> None:
        """Commit what is queued, close the database and stop the thread."""
        if self._closed:
            return
        if self.inline:
            self._closing = self._closed = True
            if self._conn is not None:
                self._conn.close()
            return
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
        self._closed = True

    # ---- inside the store thread ----------------------------------------------------------------

    def _notify(self, results: list[Result]) -> None:
        resolve_from_thread(self._token, results)

    def _run(self, opened: Ticket) -> None:
        try:
            self._connect()
        except StoreError as exc:
            self._release_lock()
            self._notify([(opened, None, exc)])
            return
        except Exception as exc:  # anything else sqlite or the OS throws at open
            self._release_lock()
            self._notify([(opened, None, StoreError(f"{self.path}: cannot open store ({exc})"))])
            return
        self._notify([(opened, self, None)])
        conn = self._conn
        assert conn is not None
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                jobs = self._take()
            results: list[tuple[Ticket, Any, BaseException | None]] = []
            close: Ticket | None = None
            writes: list[_Job] = []
            for job in jobs:
                if job.kind == "write":
                    writes.append(job)
                    continue
                results.extend(self._commit(conn, writes))
                writes = []
                if job.kind == "load":
                    try:
                        results.append((job.ticket, load_tasks(conn), None))
                    except (sqlite3.Error, ValueError, KeyError) as exc:
                        err = StoreError(f"{self.path}: cannot read stored tasks ({exc})")
                        results.append((job.ticket, None, err))
                elif job.kind == "probe":
                    try:
                        self._probe(conn)
                        results.append((job.ticket, None, None))
                    except StoreError as exc:
                        results.append((job.ticket, None, exc))
                elif job.kind == "close":
                    close = job.ticket
            results.extend(self._commit(conn, writes))
            if close is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._release_lock()
                results.append((close, None, None))
                self._notify(results)
                return
            self._notify(results)

    def _take(self) -> list[_Job]:
        n = batch_size(self._jobs, self.max_batch)
        jobs, self._jobs = self._jobs[:n], self._jobs[n:]
        return jobs

    def _commit(
        self, conn: sqlite3.Connection, writes: list[_Job]
    ) -> list[tuple[Ticket, Any, BaseException | None]]:
        if not writes:
            return []
        if self._broken is not None:
            return [(j.ticket, None, self._broken) for j in writes]
        changes = [c for j in writes for c in j.changes]
        if not changes:
            return [(j.ticket, None, None) for j in writes]
        error = self._transaction(conn, changes)
        if error is None:
            return [(j.ticket, None, None) for j in writes]
        if not _is_data_error(error):
            broken = self._break(error)
            return [(j.ticket, None, broken) for j in writes]
        # A value SQLite cannot take (a string that is not UTF-8, an integer past 64 bits): the
        # disk is fine, so only the write holding it fails. Each write again on its own.
        results: list[tuple[Ticket, Any, BaseException | None]] = []
        stopped: StoreError | None = None
        for job in writes:
            if stopped is not None:
                results.append((job.ticket, None, stopped))
                continue
            error = self._transaction(conn, job.changes) if job.changes else None
            if error is None:
                results.append((job.ticket, None, None))
            elif _is_data_error(error):
                self.refused_writes += 1
                refused = WriteRefused(f"{self.path}: write refused, a value cannot be stored ({error})")
                results.append((job.ticket, None, refused))
            else:
                stopped = self._break(error)
                results.append((job.ticket, None, stopped))
        return results

    def _transaction(self, conn: sqlite3.Connection, changes: Sequence[Change]) -> BaseException | None:
        """Apply `changes` in one transaction; the exception that rolled it back, or None."""
        try:
            conn.execute("BEGIN")
            apply_changes(conn, changes)
            conn.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error, or a value sqlite cannot bind
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return exc
        self.commits += 1
        self.changes_written += len(changes)
        self.largest_batch = max(self.largest_batch, len(changes))
        return None

    def _break(self, error: BaseException) -> StoreError:
        self.failures += 1
        self._broken = StoreError(f"{self.path}: write failed, store stopped accepting writes ({error})")
        return self._broken

    def _probe(self, conn: sqlite3.Connection) -> None:
        """One small write that must commit for the store to take writes again (raises StoreError)."""
        if self._broken is None:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO shoal_meta VALUES ('write_probe', ?)", (str(self.failures),))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: store still cannot write ({exc})") from None
        self._broken = None
        self.recoveries += 1

    def _connect(self) -> None:
        path = self.path
        memory = path == ":memory:" or path.startswith("file::memory:")
        if not memory:
            p = Path(path)
            directory = p.parent
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # new ones: owner only
            except OSError as exc:
                raise StoreError(
                    f"cannot create state directory {directory}: {exc.strerror or exc}"
                ) from None
            if not directory.is_dir():
                raise StoreError(f"state directory {directory} is not a directory")
            probe = directory / f".shoal-write-test-{os.getpid()}-{threading.get_ident()}"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise StoreError(
                    f"state directory {directory} is not writable ({exc.strerror or exc})"
                ) from None
            if p.exists() and not p.is_file():
                raise StoreError(f"{path}: exists and is not a regular file")
            try:
                self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{path}: in use by another Shoal process (locked)") from None
            except OSError as exc:
                raise StoreError(f"{path}: cannot lock ({exc.strerror or exc})") from None
            _private_files(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=64)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open ({exc})") from None
        try:
            migrate(conn, path)
            if not memory:
                _protect(path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if not memory and str(mode).lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (journal_mode is {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = OFF")
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{path}: cannot prepare the database ({exc})") from None
        self._conn = conn

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
