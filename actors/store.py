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
group commit as the changes around it.

Durability with the default `synchronous=NORMAL` in WAL mode: a committed transaction is in the WAL
file (written with write(2)) before its ticket completes, so it survives the Shoal process being
killed at any point; after a power loss or OS crash the last transactions before the failure may roll
back (the database stays consistent). `synchronous=FULL` fsyncs the WAL on every commit: durable
across power loss, at the cost of one fsync per group commit (amortised by batching).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import trio

from ..protocols.errors import StoreError, ValidationError
from ..protocols.tasks import Attempt, Outcome, TaskState
from .taskbook import Change, StaticRow, StoredTask


class WriteRefused(StoreError):
    """One write held a value SQLite cannot take; only that write failed, the store goes on."""


def _is_data_error(exc: BaseException) -> bool:
    """A failure caused by the values written, not by the disk or the database file."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.InterfaceError | sqlite3.ProgrammingError | sqlite3.DataError | sqlite3.IntegrityError
    ):
        return False  # disk full, I/O error, read-only file, corrupt database, ...
    return isinstance(exc, sqlite3.Error | UnicodeError | OverflowError | TypeError | ValueError)


APPLICATION_ID = 0x53484F4C  # "SHOL": marks a SQLite file as a Shoal store
SYNCHRONOUS = ("OFF", "NORMAL", "FULL")
Synchronous = Literal["OFF", "NORMAL", "FULL"]


# ---- schema and migrations ----------------------------------------------------------------------


def _migrate_1(conn: sqlite3.Connection) -> None:
    """Version 1: tasks, attempts, meta."""
    conn.execute(
        """CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            category TEXT,
            spec_priority INTEGER NOT NULL,
            deps TEXT NOT NULL,
            model TEXT,
            max_attempts INTEGER NOT NULL,
            timeout_s REAL,
            metadata TEXT NOT NULL,
            run_on_dep_failure INTEGER NOT NULL,
            digest TEXT NOT NULL,
            created REAL NOT NULL,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL,
            reason TEXT,
            result TEXT,
            not_before REAL,
            worker TEXT,
            updated REAL NOT NULL,
            failed_models TEXT NOT NULL DEFAULT '{}',
            retry_base INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"""
    )
    conn.execute(
        """CREATE TABLE attempts (
            task_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            worker TEXT NOT NULL,
            model TEXT,
            started REAL NOT NULL,
            ended REAL,
            outcome TEXT,
            reason TEXT,
            exit_code INTEGER,
            signal INTEGER,
            PRIMARY KEY (task_id, n)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE TABLE shoal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO shoal_meta VALUES ('kind', 'shoal task store')")


def _migrate_2(conn: sqlite3.Connection) -> None:
    """Version 2: usage per task, the dependency that killed a task, output tails of attempts."""
    conn.execute("ALTER TABLE tasks ADD COLUMN usage TEXT NOT NULL DEFAULT '{}'")
    conn.execute("ALTER TABLE tasks ADD COLUMN dep_failure TEXT")
    conn.execute("ALTER TABLE attempts ADD COLUMN output_tail TEXT")


def _migrate_3(conn: sqlite3.Connection) -> None:
    """Version 3: usage per attempt (a failed attempt cost tokens and money too)."""
    conn.execute("ALTER TABLE attempts ADD COLUMN usage TEXT NOT NULL DEFAULT '{}'")


def _migrate_4(conn: sqlite3.Connection) -> None:
    """Version 4: what an attempt's workspace kept (a worktree's branch, commits and change)."""
    conn.execute("ALTER TABLE attempts ADD COLUMN workspace TEXT")


# MIGRATIONS[i] upgrades a database from user_version i to i + 1, inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1, _migrate_2, _migrate_3, _migrate_4]
SCHEMA_VERSION = len(MIGRATIONS)

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
)
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
_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_STATIC + _MUTABLE)}) VALUES ({', '.join('?' * len(_STATIC + _MUTABLE))})"
)
_UPDATE_TASK = f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in _MUTABLE)} WHERE id = ?"
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
_UPSERT_ATTEMPT = (
    f"INSERT OR REPLACE INTO attempts ({', '.join(_ATTEMPT_COLS)}) "
    f"VALUES ({', '.join('?' * len(_ATTEMPT_COLS))})"
)
# Evictions delete a whole batch in one statement (ids as one JSON array): sqlite then runs without
# the GIL for the whole batch, where executemany would take it back for every row and, by the GIL's
# hand-offs, stall the trio thread for tens of milliseconds per batch.
_DELETE_TASKS = "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?))"
_DELETE_ATTEMPTS = "DELETE FROM attempts WHERE task_id IN (SELECT value FROM json_each(?))"  # PK prefix


def _mutable_values(c: Change) -> tuple[Any, ...]:
    return (
        c.state.value,
        c.priority,
        c.reason,
        c.result,
        c.not_before,
        c.worker,
        c.updated,
        json.dumps(c.failed_models) if c.failed_models else "{}",
        json.dumps(c.usage, default=str) if c.usage else "{}",
        c.retry_base,
        c.dep_failure,
    )


def apply_changes(conn: sqlite3.Connection, changes: Iterable[Change]) -> int:
    """Write a batch of transitions (the caller owns the transaction). Coalesces to the last state
    of each task (every change carries the whole mutable state) and the last version of each
    attempt; an eviction drops what came before it in the batch and deletes the stored rows first,
    so an id evicted and then submitted anew in one batch ends up as the new task. Returns the
    number of rows written or deleted."""
    inserts: dict[str, tuple[StaticRow, Change]] = {}
    updates: dict[str, Change] = {}
    attempts: dict[str, dict[int, Attempt]] = {}
    deletes: dict[str, None] = {}
    for c in changes:
        tid = c.task_id
        if c.kind == "evict":
            inserts.pop(tid, None)
            updates.pop(tid, None)
            attempts.pop(tid, None)
            deletes[tid] = None
            continue
        if c.static is not None:
            inserts[tid] = (c.static, c)
        elif tid in inserts:
            inserts[tid] = (inserts[tid][0], c)
        else:
            updates[tid] = c
        if c.attempt is not None:
            attempts.setdefault(tid, {})[c.attempt.n] = c.attempt
    if deletes:
        ids = json.dumps(list(deletes))
        conn.execute(_DELETE_ATTEMPTS, (ids,))
        conn.execute(_DELETE_TASKS, (ids,))
    if inserts:
        conn.executemany(
            _INSERT_TASK,
            [
                (
                    tid,
                    s.seq,
                    s.prompt,
                    s.category,
                    s.priority,
                    json.dumps(list(s.deps)),
                    s.model,
                    s.max_attempts,
                    s.timeout_s,
                    json.dumps(s.metadata),
                    int(s.run_on_dep_failure),
                    s.digest,
                    s.created,
                    *_mutable_values(c),
                )
                for tid, (s, c) in inserts.items()
            ],
        )
    if updates:
        conn.executemany(_UPDATE_TASK, [(*_mutable_values(c), tid) for tid, c in updates.items()])
    if attempts:
        conn.executemany(
            _UPSERT_ATTEMPT,
            [
                (
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
                    json.dumps(a.usage, default=str) if a.usage else "{}",
                    json.dumps(a.workspace, default=str) if a.workspace is not None else None,
                )
                for tid, per_task in attempts.items()
                for a in per_task.values()
            ],
        )
    return len(inserts) + len(updates) + sum(map(len, attempts.values())) + len(deletes)


def load_tasks(conn: sqlite3.Connection) -> list[StoredTask]:
    """Every task with its attempts, in submission order."""
    attempts: dict[str, list[Attempt]] = {}
    for row in conn.execute(f"SELECT {', '.join(_ATTEMPT_COLS)} FROM attempts ORDER BY task_id, n"):
        tid, n, worker, model, started, ended, outcome, reason, exit_code, sig, tail, usage, ws = row
        attempts.setdefault(tid, []).append(
            Attempt(
                n=n,
                worker=worker,
                model=model,
                started=started,
                ended=ended,
                outcome=Outcome(outcome) if outcome is not None else None,
                reason=reason,
                exit_code=exit_code,
                signal=sig,
                output_tail=tail,
                usage=json.loads(usage) if usage else {},
                workspace=json.loads(ws) if ws else None,
            )
        )
    out: list[StoredTask] = []
    cols = _STATIC + _MUTABLE
    for row in conn.execute(f"SELECT {', '.join(cols)} FROM tasks ORDER BY seq"):
        r = dict(zip(cols, row, strict=True))
        static = StaticRow(
            seq=r["seq"],
            prompt=r["prompt"],
            category=r["category"],
            priority=r["spec_priority"],
            deps=tuple(json.loads(r["deps"])),
            model=r["model"],
            max_attempts=r["max_attempts"],
            timeout_s=r["timeout_s"],
            metadata=json.loads(r["metadata"]),
            run_on_dep_failure=bool(r["run_on_dep_failure"]),
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
                failed_models=json.loads(r["failed_models"]),
                usage=json.loads(r["usage"]),
                retry_base=r["retry_base"],
                dep_failure=r["dep_failure"],
                attempts=tuple(attempts.get(r["id"], ())),
            )
        )
    return out


def migrate(conn: sqlite3.Connection, where: str, upto: int = SCHEMA_VERSION) -> int:
    """Check that `conn` is a Shoal store (or empty) and bring its schema to version `upto`, one
    transaction per step. Returns the version found. Reads only until the file is known to be ours,
    so a foreign database is never modified."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{where}: not a SQLite database or corrupt ({exc})") from None
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        shown = ", ".join(tables[:5]) or "none"
        raise StoreError(
            f"{where}: not a Shoal task store (application_id {app_id:#x}, tables: {shown}); "
            "refusing to touch it — point store.path or the state directory elsewhere"
        )
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{where}: schema version {version} is newer than this Shoal understands ({len(MIGRATIONS)}); "
            "upgrade Shoal"
        )
    try:
        check = [r[0] for r in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{where}: database is corrupt ({exc})") from None
    if check != ["ok"]:
        raise StoreError(f"{where}: database is corrupt ({'; '.join(check[:3])})")
    for step in range(version, upto):
        try:
            conn.execute("BEGIN IMMEDIATE")
            MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise StoreError(f"{where}: migration to schema version {step + 1} failed ({exc})") from None
    return int(version)


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
        ticket = Ticket()
        if self._broken is not None or self._closing:
            ticket._resolve(None, self._broken or StoreError(f"{self.path}: store is closed"))
            return ticket
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

    def _deliver(self, results: list[tuple[Ticket, Any, BaseException | None]]) -> None:
        for ticket, value, error in results:
            ticket._resolve(value, error)

    def _notify(self, results: list[tuple[Ticket, Any, BaseException | None]]) -> None:
        if results:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._deliver, results)

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
        """Everything queued, but at most `max_batch` changes' worth of writes (whole jobs)."""
        taken = 0
        n = 0
        for job in self._jobs:
            if job.kind == "write" and taken and taken + len(job.changes) > self.max_batch:
                break
            taken += len(job.changes)
            n += 1
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
