"""The SQLite store's schema, its migrations, and the conversion between rows and the TaskBook's records.

Apart from the store's thread (actors/store.py) because these are plain functions of a connection:
the thread calls them inside its transactions, and tests and tools call them on a connection of
their own (retention and property tests replay changes through `apply_changes`/`load_tasks`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..protocols.errors import StoreError
from ..protocols.tasks import Attempt, Outcome, TaskState
from .taskbook import Change, StaticRow, StoredTask

APPLICATION_ID = 0x53484F4C  # "SHOL": marks a SQLite file as a Shoal store


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

MUTABLE_COLUMNS = (
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
STATIC_COLUMNS = (
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
_TASK_COLUMNS = STATIC_COLUMNS + MUTABLE_COLUMNS
_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({', '.join('?' * len(_TASK_COLUMNS))})"
)
_UPDATE_TASK = f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in MUTABLE_COLUMNS)} WHERE id = ?"
ATTEMPT_COLUMNS = (
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
    f"INSERT OR REPLACE INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
)
# Evictions delete a whole batch in one statement (ids as one JSON array): sqlite then runs without
# the GIL for the whole batch, where executemany would take it back for every row and, by the GIL's
# hand-offs, stall the trio thread for tens of milliseconds per batch.
_DELETE_TASKS = "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?))"
_DELETE_ATTEMPTS = "DELETE FROM attempts WHERE task_id IN (SELECT value FROM json_each(?))"  # PK prefix


def mutable_values(c: Change) -> tuple[Any, ...]:
    """A change's mutable columns (MUTABLE_COLUMNS order), as both stores write them."""
    return (
        c.state.value,
        c.priority,
        c.reason,
        c.result,
        c.not_before,
        c.worker,
        c.updated,
        json.dumps(c.failed_models, default=str) if c.failed_models else "{}",
        json.dumps(c.usage, default=str) if c.usage else "{}",
        c.retry_base,
        c.dep_failure,
    )


def attempt_values(tid: str, a: Attempt) -> tuple[Any, ...]:
    """An attempt's row (ATTEMPT_COLUMNS order), as both stores write it."""
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
        json.dumps(a.usage, default=str) if a.usage else "{}",
        json.dumps(a.workspace, default=str) if a.workspace is not None else None,
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
                    *mutable_values(c),
                )
                for tid, (s, c) in inserts.items()
            ],
        )
    if updates:
        conn.executemany(_UPDATE_TASK, [(*mutable_values(c), tid) for tid, c in updates.items()])
    if attempts:
        conn.executemany(
            _UPSERT_ATTEMPT,
            [attempt_values(tid, a) for tid, per_task in attempts.items() for a in per_task.values()],
        )
    return len(inserts) + len(updates) + sum(map(len, attempts.values())) + len(deletes)


def attempt_from_row(row: Sequence[Any], doc: Callable[[Any], Any]) -> tuple[str, Attempt]:
    """(task id, attempt) from an attempts row in ATTEMPT_COLUMNS order; `doc` decodes a JSON column as
    its store keeps it (SQLite: text; PostgreSQL: already decoded by the driver). Both stores use it."""
    tid, n, worker, model, started, ended, outcome, reason, exit_code, sig, tail, usage, ws = row
    return tid, Attempt(
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
        usage=(doc(usage) if usage else None) or {},
        workspace=doc(ws) if ws else None,
    )


def task_from_row(r: Mapping[str, Any], attempts: Sequence[Attempt], doc: Callable[[Any], Any]) -> StoredTask:
    """A stored task from a tasks row keyed by column name (see `attempt_from_row` for `doc`)."""
    static = StaticRow(
        seq=r["seq"],
        prompt=r["prompt"],
        category=r["category"],
        priority=r["spec_priority"],
        deps=tuple(doc(r["deps"])),
        model=r["model"],
        max_attempts=r["max_attempts"],
        timeout_s=r["timeout_s"],
        metadata=doc(r["metadata"]),
        run_on_dep_failure=bool(r["run_on_dep_failure"]),
        digest=r["digest"],
        created=r["created"],
    )
    return StoredTask(
        id=r["id"],
        static=static,
        state=TaskState(r["state"]),
        priority=r["priority"],
        reason=r["reason"],
        result=r["result"],
        not_before=r["not_before"],
        worker=r["worker"],
        updated=r["updated"],
        failed_models=doc(r["failed_models"]),
        usage=doc(r["usage"]),
        retry_base=r["retry_base"],
        dep_failure=r["dep_failure"],
        attempts=tuple(attempts),
        version=r.get("version", 0),
    )


def load_tasks(conn: sqlite3.Connection) -> list[StoredTask]:
    """Every task with its attempts, in submission order."""
    attempts: dict[str, list[Attempt]] = {}
    for row in conn.execute(f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts ORDER BY task_id, n"):
        tid, attempt = attempt_from_row(row, json.loads)
        attempts.setdefault(tid, []).append(attempt)
    cols = STATIC_COLUMNS + MUTABLE_COLUMNS
    return [
        task_from_row(r := dict(zip(cols, row, strict=True)), attempts.get(r["id"], ()), json.loads)
        for row in conn.execute(f"SELECT {', '.join(cols)} FROM tasks ORDER BY seq")
    ]


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
