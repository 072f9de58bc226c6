"""PostgreSQL's side of the shared store (actors/pgstore.py): the schema and its migrations, rows to and
from the book's types, connecting (errors name the host, never the password), and the small reads the
CLI makes without a running node (`shoal db`, `shoal nodes --store`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from ..protocols.errors import StoreError
from ..protocols.tasks import Attempt
from ..runtime.fastjson import dumps
from ..runtime.fastjson import loads as fast_json_loads
from .cluster import NodeRow
from .store_schema import (
    ATTEMPT_COLUMNS,
    MUTABLE_COLUMNS,
    STATIC_COLUMNS,
    attempt_from_row,
    attempt_values,
    task_from_row,
)
from .store_schema import mutable_values as sqlite_mutable_values
from .taskbook import Change, StaticRow, StoredTask

RESERVED_NODE_CHARS = ":/"
ADVISORY_KEY = 0x53484F4C  # "SHOL"; with the database (advisory locks span the server): feed order


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

NOTIFY_CHANNEL = "shoal_tasks"  # each write notifies it (payload: the node), listeners wake on it

# A write in one round trip (pgstore.PgStore._apply): what the node decided, as json documents, and
# the function does in one statement's transaction what a pipeline of ten statements did (the
# round trips and psycopg's work for each statement were most of a commit's ~1 ms on an idle
# machine; a call takes ~0.3). Rows are locked in id order first, as the statements did one by one,
# so two nodes' writes never cross. Returns the ids whose compare-and-set lost (the conflicts).
_STATIC_TYPES = {
    "id": "text", "seq": "bigint", "prompt": "text", "category": "text", "spec_priority": "bigint",
    "deps": "json", "model": "text", "max_attempts": "integer", "timeout_s": "double precision",
    "metadata": "json", "run_on_dep_failure": "boolean", "digest": "text",
    "created": "double precision",
}  # fmt: skip
_TASK_TYPES = {
    "state": "text", "priority": "bigint", "reason": "text", "result": "text",
    "not_before": "double precision", "worker": "text", "updated": "double precision",
    "failed_models": "json", "usage": "json", "retry_base": "integer", "dep_failure": "text",
    "version": "bigint",
}  # fmt: skip
_ATTEMPT_TYPES = {
    "task_id": "text", "n": "integer", "worker": "text", "model": "text",
    "started": "double precision", "ended": "double precision", "outcome": "text", "reason": "text",
    "exit_code": "integer", "signal": "integer", "output_tail": "text", "usage": "json",
    "workspace": "json",
}  # fmt: skip


def _recordset(doc: str, types: dict[str, str], extra: str = "") -> str:
    """`json_to_recordset(doc) AS x(...)`: json columns come as text (their json inside a json
    string), as json would not carry a \\u0000 into a json column; `_select` casts them back."""
    cols = ", ".join(f"{c} {'text' if t == 'json' else t}" for c, t in types.items())
    return f"json_to_recordset({doc}) AS x({extra}{cols})"


def _select(types: dict[str, str]) -> str:
    return ", ".join(f"x.{c}::json" if t == "json" else f"x.{c}" for c, t in types.items())


_ALL_TASK_TYPES = {**_STATIC_TYPES, **_TASK_TYPES}
_MIGRATION_2 = (
    """
CREATE FUNCTION shoal_write(p_node text, p_lock integer, p_floor bigint, p_evict json, p_insert json,
                            p_update json, p_attempts json, p_events json) RETURNS text[]
LANGUAGE plpgsql
-- every row it touches is found by its key: a seq scan or hash join (the planner guessing 100 rows
-- for a json document, or planning `id = ANY(an array)` once for any array) took ~2 ms a write
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    conflicts text[] := '{}';
    written text[] := '{}';
    gone text[];
    ok text[] := '{}';
    wanted text[];
    n_events integer;
BEGIN
    wanted := ARRAY(
        SELECT x.id FROM json_to_recordset(p_evict) AS x(id text)
        UNION SELECT x.id FROM json_to_recordset(p_update) AS x(id text) ORDER BY 1);
    PERFORM 1 FROM tasks WHERE id = ANY(wanted) ORDER BY id FOR UPDATE;
    IF json_array_length(p_evict) > 0 THEN
        WITH d AS (
            DELETE FROM tasks t USING json_to_recordset(p_evict) AS e(id text, expect bigint)
            WHERE t.id = e.id AND t.version = e.expect RETURNING t.id)
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO gone FROM d;
        conflicts := conflicts || ARRAY(
            SELECT e.id FROM json_to_recordset(p_evict) AS e(id text) WHERE e.id <> ALL(gone) ORDER BY 1);
        DELETE FROM attempts WHERE task_id = ANY(gone);
        written := written || gone;
    END IF;
    IF json_array_length(p_insert) > 0 THEN
        WITH i AS (
            INSERT INTO tasks ("""
    + ", ".join(_ALL_TASK_TYPES)
    + ") SELECT "
    + _select(_ALL_TASK_TYPES)
    + " FROM "
    + _recordset("p_insert", _ALL_TASK_TYPES)
    + """ ORDER BY x.id
            ON CONFLICT (id) DO NOTHING RETURNING id)
        SELECT ok || coalesce(array_agg(id), '{}') INTO ok FROM i;
    END IF;
    IF json_array_length(p_update) > 0 THEN
        WITH u AS (
            UPDATE tasks t SET ("""
    + ", ".join(_TASK_TYPES)
    + ") = ("
    + _select(_TASK_TYPES)
    + """)
            FROM """
    + _recordset("p_update", _TASK_TYPES, "id text, expect bigint, ")
    + """
            WHERE t.id = x.id AND t.version = x.expect RETURNING t.id)
        SELECT ok || coalesce(array_agg(id), '{}') INTO ok FROM u;
    END IF;
    conflicts := conflicts || ARRAY(
        SELECT x.id FROM json_to_recordset(p_insert) AS x(id text) WHERE x.id <> ALL(ok)
        UNION ALL SELECT x.id FROM json_to_recordset(p_update) AS x(id text) WHERE x.id <> ALL(ok));
    written := written || ARRAY(SELECT unnest(ok) ORDER BY 1);
    IF json_array_length(p_attempts) > 0 AND cardinality(ok) > 0 THEN
        INSERT INTO attempts ("""
    + ", ".join(_ATTEMPT_TYPES)
    + ") SELECT "
    + _select(_ATTEMPT_TYPES)
    + " FROM "
    + _recordset("p_attempts", _ATTEMPT_TYPES)
    + """
        WHERE x.task_id = ANY(ok) ORDER BY x.task_id, x.n
        ON CONFLICT (task_id, n) DO UPDATE SET """
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in ATTEMPT_COLUMNS[2:])
    + """;
    END IF;
    n_events := json_array_length(p_events);
    IF cardinality(written) = 0 AND n_events = 0 THEN
        RETURN conflicts;
    END IF;
    PERFORM pg_advisory_xact_lock(p_lock, hashtext(current_database()));
    IF n_events > 0 THEN
        IF p_floor > 0 THEN
            PERFORM setval('shoal_event_seq', greatest(p_floor, (SELECT CASE WHEN is_called
                THEN last_value ELSE 0 END FROM shoal_event_seq)));
        END IF;
        INSERT INTO events (seq, ts, node, topic, data)
        SELECT nextval('shoal_event_seq'), e.ts, p_node, e.topic, e.data::json
        FROM (SELECT * FROM ROWS FROM (json_to_recordset(p_events)
                  AS (task_id text, ts double precision, topic text, data text))
              WITH ORDINALITY AS x(task_id, ts, topic, data, k)
              WHERE x.task_id IS NULL OR x.task_id <> ALL(conflicts) ORDER BY x.k OFFSET 0) e;
    END IF;
    IF cardinality(written) > 0 THEN
        INSERT INTO task_log (rev, task_id) SELECT nextval('shoal_rev'), t FROM unnest(written) t;
    END IF;
    PERFORM pg_notify('"""
    + NOTIFY_CHANNEL
    + """', p_node);
    RETURN conflicts;
END
$fn$;
"""
)


# the task schema is the SQLite store's (actors/store_schema.py), plus the row version a shared store
# compares and sets
_STATIC = STATIC_COLUMNS
_MUTABLE = (*MUTABLE_COLUMNS, "version")
_ATTEMPT_COLS = ATTEMPT_COLUMNS


WRITE_CALL = "SELECT shoal_write(%s, %s, %s, %s::json, %s::json, %s::json, %s::json, %s::json)"
"""A write (params: node, advisory key, event seq floor, then `write_docs`' five documents)."""


def _num(value: float | None) -> float | str | None:
    """A double precision value as json can carry it: the infinities and NaN as text PostgreSQL
    reads back exactly ('inf', 'nan'), where json would make them null."""
    return value if value is None or math.isfinite(value) else str(value)


def _task_doc(c: Change) -> dict[str, Any]:
    """A change's mutable columns and version, keyed by column (as both stores write them:
    store_schema.mutable_values, json columns as their text)."""
    doc = dict(zip(MUTABLE_COLUMNS, sqlite_mutable_values(c), strict=True))
    doc["not_before"], doc["updated"] = _num(c.not_before), _num(c.updated)
    doc["version"] = c.version
    return doc


def _attempt_doc(tid: str, a: Attempt) -> dict[str, Any]:
    """An attempt's row keyed by column (store_schema.attempt_values, as both stores write it)."""
    doc = dict(zip(ATTEMPT_COLUMNS, attempt_values(tid, a), strict=True))
    doc["started"], doc["ended"] = _num(a.started), _num(a.ended)
    return doc


def write_docs(
    *,
    evicts: dict[str, int | None],
    inserts: Sequence[tuple[StaticRow, Change]],
    updates: Sequence[tuple[int | None, Change]],
    attempts: Sequence[tuple[str, Attempt]],
    events: Sequence[tuple[str | None, float, str, Any]],
) -> tuple[str, str, str, str, str]:
    """`shoal_write`'s documents: evictions (id, expected version), new tasks (whole rows), updates
    (id, expected version, the mutable columns), attempts, and events (the task each is of, or None:
    an event of a task whose change lost is left out), as json texts."""
    doc_evict = [{"id": tid, "expect": evicts[tid]} for tid in sorted(evicts)]
    doc_insert = [
        {
            "id": c.task_id,
            "seq": st.seq,
            "prompt": st.prompt,
            "category": st.category,
            "spec_priority": st.priority,
            "deps": dumps(list(st.deps)),
            "model": st.model,
            "max_attempts": st.max_attempts,
            "timeout_s": _num(st.timeout_s),
            "metadata": dumps(st.metadata),
            "run_on_dep_failure": st.run_on_dep_failure,
            "digest": st.digest,
            "created": _num(st.created),
            **_task_doc(c),
        }
        for st, c in inserts
    ]
    doc_update = [{"id": c.task_id, "expect": expect, **_task_doc(c)} for expect, c in updates]
    doc_attempts = [_attempt_doc(tid, a) for tid, a in attempts]
    doc_events = [
        {"task_id": tid, "ts": _num(ts), "topic": topic, "data": dumps(data)}
        for tid, ts, topic, data in events
    ]
    return (
        dumps(doc_evict),
        dumps(doc_insert),
        dumps(doc_update),
        dumps(doc_attempts),
        dumps(doc_events),
    )


def json_text(value: Any) -> str:
    return json.dumps(value, default=str)


def load_rows(cur: psycopg.Cursor[Any], ids: Sequence[str] | None) -> list[StoredTask]:
    """Stored tasks with their attempts: every task (ids None) or those named, in seq order. psycopg
    decodes the json columns itself."""
    where = "" if ids is None else " WHERE task_id = ANY(%s)"
    params = () if ids is None else (list(ids),)
    if ids is not None:
        # a few rows by primary key: the index, whatever the planner's statistics say (on tables
        # that grew since the last ANALYZE it scanned them whole: 12x slower at 6,000 tasks, and
        # growing with the queue); SET LOCAL: this transaction only (the caller's)
        cur.execute("SET LOCAL enable_seqscan = off")
    cur.execute(f"SELECT {', '.join(_ATTEMPT_COLS)} FROM attempts{where} ORDER BY task_id, n", params)
    attempts: dict[str, list[Attempt]] = {}
    for row in cur:
        tid, attempt = attempt_from_row(row, _decoded)
        attempts.setdefault(tid, []).append(attempt)
    cols = _STATIC + _MUTABLE
    where = "" if ids is None else " WHERE id = ANY(%s)"
    cur.execute(f"SELECT {', '.join(cols)} FROM tasks{where} ORDER BY seq", params)
    return [
        task_from_row(r := dict(zip(cols, row, strict=True)), attempts.get(r["id"], ()), _decoded)
        for row in cur
    ]


EVENTS_PAGE = "SELECT seq, ts, node, topic, data FROM events WHERE seq > %s ORDER BY seq LIMIT %s"
"""The cluster's events past a position, in seq order (params: seq, page)."""


# json columns that may hold what a user or an agent wrote (metadata, usage, an event's data): the
# feed carries them as text, decoded one by one with `fast_json_loads` (which checks for integers
# beyond 64 bits); the rest of a feed page is Shoal's own columns, which orjson reads as they are
_USER_JSON = frozenset({"metadata", "failed_models", "usage", "workspace"})


def _feed_cols(cols: Sequence[str]) -> str:
    return ", ".join(f"{c}::text AS {c}" if c in _USER_JSON else c for c in cols)


# Migration 3: the write's NOTIFY carries what it wrote when that is small (under 7,900 bytes): the
# feed positions before and after it (the highest rev and event seq, read under the advisory lock
# that orders writes; reading the sequences themselves took ~6 ms), its rows and attempts as a feed
# page has them, and its events. A node whose feed position is right before them takes them from the
# notification (PgStore._catch_up) instead of reading the feed: that read was ~0.5 ms of a
# dispatch's path and most of PostgreSQL's CPU.
# A batch (a busy node's group commit) goes without: under load the readers batch writes into one
# feed read anyway, and building every write's payload cost PostgreSQL more than the reads it saved.
NOTE_MAX_TASKS = 8
NOTE_MAX_EVENTS = 16
_NOTIFY_OLD = "    PERFORM pg_notify('" + NOTIFY_CHANNEL + "', p_node);"
_NOTIFY_NEW = (
    """    SELECT coalesce(max(rev), 0) INTO rev1 FROM task_log;
    SELECT coalesce(max(seq), 0) INTO seq1 FROM events;
    IF cardinality(written) > """
    + str(NOTE_MAX_TASKS)
    + " OR seq1 - seq0 > "
    + str(NOTE_MAX_EVENTS)
    + """ THEN
        payload := json_build_object('node', p_node, 'big', true)::text;
    ELSE
    payload := json_build_object(
        'node', p_node, 'rev0', rev0, 'rev1', rev1, 'seq0', seq0, 'seq1', seq1,
        'ids', written,
        'tasks', (SELECT json_agg(r) FROM (SELECT """
    + _feed_cols((*_STATIC, *_MUTABLE))
    + """ FROM tasks WHERE id = ANY(written)) r),
        'attempts', (SELECT json_agg(a ORDER BY a.task_id, a.n) FROM (SELECT """
    + _feed_cols(_ATTEMPT_COLS)
    + """ FROM attempts WHERE task_id = ANY(written)) a),
        'events', (SELECT json_agg(json_build_array(seq, ts, node, topic, data::text) ORDER BY seq)
                   FROM events WHERE seq > seq0 AND seq <= seq1))::text;
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('node', p_node, 'big', true)::text;
    END IF;
    END IF;
    PERFORM pg_notify('"""
    + NOTIFY_CHANNEL
    + """', payload);"""
)
_MIGRATION_3 = (
    _MIGRATION_2.replace("CREATE FUNCTION shoal_write", "CREATE OR REPLACE FUNCTION shoal_write", 1)
    .replace(
        "    n_events integer;\n",
        "    n_events integer;\n    rev0 bigint;\n    rev1 bigint;\n    seq0 bigint;\n    seq1 bigint;\n"
        "    payload text;\n",
        1,
    )
    .replace(
        "    PERFORM pg_advisory_xact_lock(p_lock, hashtext(current_database()));\n",
        "    PERFORM pg_advisory_xact_lock(p_lock, hashtext(current_database()));\n"
        "    SELECT coalesce(max(rev), 0) INTO rev0 FROM task_log;\n"
        "    SELECT coalesce(max(seq), 0) INTO seq0 FROM events;\n",
        1,
    )
    .replace(_NOTIFY_OLD, _NOTIFY_NEW, 1)
)

MIGRATIONS: list[str] = [_MIGRATION_1, _MIGRATION_2, _MIGRATION_3]
SCHEMA_VERSION = len(MIGRATIONS)


def feed_query(events: bool) -> str:
    """The change feed's page as one statement (one snapshot, one round trip, one row of five json
    texts): the log past a position (params rev, page), the rows it names written by other
    incarnations than `me` with their attempts, the ids of those `me` wrote (the reader has them),
    and with `events` the cluster's events past theirs (params seq, epage). Each task is fetched by
    its primary key (LATERAL ... OFFSET 0: never a scan of the whole table, whatever the planner's
    statistics say); json_agg(t) is the row keyed by column, as the book's decoders take it."""
    events_part = (
        "(SELECT json_agg(json_build_array(seq, ts, node, topic, data::text) ORDER BY seq)::text"
        " FROM (SELECT seq, ts, node, topic, data FROM events WHERE seq > %(seq)s ORDER BY seq"
        " LIMIT %(epage)s) e)"
        if events
        else "NULL::text"
    )
    return (
        "WITH log AS MATERIALIZED (SELECT rev, task_id FROM task_log WHERE rev > %(rev)s ORDER BY rev"
        " LIMIT %(page)s),"
        " ids AS MATERIALIZED (SELECT DISTINCT task_id FROM log),"
        f" rows AS MATERIALIZED (SELECT t.* FROM ids, LATERAL (SELECT {_feed_cols((*_STATIC, *_MUTABLE))}"
        " FROM tasks WHERE id = ids.task_id OFFSET 0) t)"
        " SELECT (SELECT json_agg(json_build_array(rev, task_id) ORDER BY rev) FROM log)::text,"
        " (SELECT json_agg(r) FROM rows r WHERE r.version >> 32 <> %(me)s)::text,"
        " (SELECT json_agg(r.id) FROM rows r WHERE r.version >> 32 = %(me)s)::text,"
        " (SELECT json_agg(a ORDER BY a.task_id, a.n) FROM rows r,"
        f" LATERAL (SELECT {_feed_cols(_ATTEMPT_COLS)} FROM attempts WHERE task_id = r.id OFFSET 0) a"
        " WHERE r.version >> 32 <> %(me)s)::text, " + events_part
    )


def feed_rows(tasks: list[dict[str, Any]] | None, attempts: list[dict[str, Any]] | None) -> list[StoredTask]:
    """The tasks of a feed page (`feed_query`) with their attempts, as the book takes them."""
    by_task: dict[str, list[Attempt]] = {}
    for a in attempts or ():
        _floats(a)
        tid, attempt = attempt_from_row([a[c] for c in _ATTEMPT_COLS], fast_json_loads)
        by_task.setdefault(tid, []).append(attempt)
    return [task_from_row(_user_json(_floats(r)), by_task.get(r["id"], ()), _decoded) for r in tasks or ()]


def _user_json(row: dict[str, Any]) -> dict[str, Any]:
    """A feed row's json columns that came as text (`_USER_JSON`), decoded in place."""
    for c in ("metadata", "failed_models", "usage"):
        if row.get(c) is not None:
            row[c] = fast_json_loads(row[c])
    return row


_FLOAT_COLS = ("timeout_s", "created", "not_before", "updated", "started", "ended")


def _floats(row: dict[str, Any]) -> dict[str, Any]:
    """A row's double precision columns as json has them (a number, 30 for 30.0; "NaN" and
    "Infinity" as strings) made the floats the book keeps, in place."""
    for c in _FLOAT_COLS:
        if row.get(c) is not None:
            row[c] = float(row[c])
    return row


def _decoded(value: Any) -> Any:
    return value


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of a Shoal database, 0 for an empty one, None for a foreign one."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('shoal_meta') IS NOT NULL, to_regclass('tasks') IS NOT NULL")
        has_meta, has_tasks = cur.fetchone() or (False, False)
        if not has_meta:
            return None if has_tasks else 0
        cur.execute("SELECT value FROM shoal_meta WHERE key = 'schema_version'")
        row = cur.fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any], where: str, *, apply: bool = True) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION (one transaction per step, under an advisory lock so two
    nodes starting together do not both migrate). Returns (found, now). Refuses a foreign database
    and a newer schema, naming the version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_database()))", (ADVISORY_KEY + 1,))
        found = schema_version(conn)
        if found is None:
            raise StoreError(f"{where}: has a `tasks` table but is not a Shoal store; refusing to touch it")
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


def connect(
    url: str, *, timeout_s: float = 10.0, autocommit: bool = True, idle_s: float | None = None
) -> psycopg.Connection[Any]:
    """A connection, or StoreError naming the host and the reason (never the password). Autocommit:
    every transaction is an explicit `conn.transaction()` block, none is left open by a read.

    `idle_s`: PostgreSQL ends the session when it sits that long inside a transaction without a
    statement, so a node frozen mid-transaction (SIGSTOP, a VM paused, a debugger) cannot hold its
    row and advisory locks, and with them the whole cluster, past its lease: the transaction is
    rolled back and the node, once it runs again, reconnects and retries it."""
    try:
        conn = psycopg.connect(
            _dsn(url), autocommit=autocommit, connect_timeout=max(1, int(timeout_s)), application_name="shoal"
        )
    except psycopg.Error as exc:
        raise StoreError(f"{redact(url)}: cannot connect to PostgreSQL ({why(exc, url)})") from None
    set_json_loads(fast_json_loads, conn)  # the feed's json columns: a node's largest decode
    if idle_s is not None:
        try:
            conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (str(max(1, round(idle_s * 1000))),),
            )
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"{redact(url)}: cannot set up the session ({why(exc, url)})") from None
    return conn


def why(exc: BaseException, url: str) -> str:
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


def read_nodes(cur: psycopg.Cursor[Any]) -> list[NodeRow]:
    """Every node's row as a node (and `shoal nodes`) shows it: ages and leases by PostgreSQL's clock."""
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


def open_nodes(url: str) -> list[NodeRow]:
    """The cluster's nodes (for `shoal nodes` without a running node): a short connection."""
    with connect(url) as conn, conn.cursor() as cur:
        return read_nodes(cur)


def db_migrate(url: str, *, apply: bool) -> tuple[int, int]:
    """`shoal db migrate` (apply) and `shoal db check` (not): (version found, version now)."""
    try:
        with connect(url) as conn:
            return migrate(conn, redact(url), apply=apply)
    except psycopg.Error as exc:
        raise StoreError(f"{redact(url)}: {why(exc, url)}") from None


__all__ = [
    "ADVISORY_KEY",
    "SCHEMA_VERSION",
    "NodeInfo",
    "check_node_id",
    "connect",
    "db_migrate",
    "migrate",
    "open_nodes",
    "redact",
    "why",
]
