"""The SQLite store: round trips, group commit, WAL, migrations, and refusing bad files."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

from shoal.actors.store import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Store, WriteRefused
from shoal.actors.taskbook import Change, TaskBook, WorkerView
from shoal.protocols.errors import StoreError, ValidationError
from shoal.protocols.tasks import Outcome, TaskSpec, TaskState

T0 = 1_700_000_000.0


def sample_changes() -> tuple[TaskBook, list[Change]]:
    b = TaskBook()
    b.submit(
        [
            TaskSpec("first", id="a", category="code", priority=3, metadata={"k": [1, 2]}, timeout_s=9.5),
            TaskSpec("second", id="b", deps=("a",), model="opus", max_attempts=2, run_on_dep_failure=True),
            TaskSpec("third", id="c"),
        ],
        T0,
    )
    w = WorkerView("w1", "sonnet")
    b.claim("a", "w1", "sonnet", T0 + 1)
    b.finish("a", 1, Outcome.FAILED, T0 + 2, reason="boom", exit_code=3, output_tail="tail")
    b.release_due(T0 + 100)
    b.claim(b.select(w) or "", "w1", "sonnet", T0 + 101)
    b.finish("a", 2, Outcome.DONE, T0 + 102, result="ok", usage={"output_tokens": 7})
    b.claim("c", "w1", "sonnet", T0 + 103)  # left running
    return b, b.drain()[0]


async def db_read(path: Path, sql: str) -> list[tuple[object, ...]]:
    def read() -> list[tuple[object, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return await trio.to_thread.run_sync(read)


@pytest.mark.parametrize("where", ["memory", "file"])
async def test_round_trip(tmp_path: Path, where: str) -> None:
    b, changes = sample_changes()
    async with await Store.open(":memory:" if where == "memory" else tmp_path / "s.db") as store:
        assert store.inline is (where == "memory")
        await store.commit(changes)
        rows = {r.id: r for r in await store.load_all()}
    assert set(rows) == {"a", "b", "c"}
    a = rows["a"]
    assert a.state is TaskState.DONE and a.result == "ok" and a.usage == {"output_tokens": 7}
    assert a.static.metadata == {"k": [1, 2]} and a.static.timeout_s == 9.5 and a.static.priority == 3
    assert a.failed_models == {"sonnet": 1}
    assert [(x.n, x.outcome, x.reason, x.exit_code) for x in a.attempts] == [
        (1, Outcome.FAILED, "boom", 3),
        (2, Outcome.DONE, None, None),
    ]
    assert a.attempts[0].output_tail == "tail"
    assert rows["b"].static.deps == ("a",) and rows["b"].static.model == "opus"
    assert rows["b"].static.run_on_dep_failure is True and rows["b"].state is TaskState.READY
    assert rows["c"].state is TaskState.RUNNING and rows["c"].attempts[0].ended is None
    # the snapshots rebuilt from the store equal the book's
    fresh = TaskBook()
    fresh.restore(rows.values(), T0 + 200)
    assert fresh.get("a") == b.get("a") and fresh.get("b") == b.get("b")


async def test_file_store_is_wal_and_survives_reopen(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "state" / "shoal.db"  # the directory is created
    _b, changes = sample_changes()
    store = await Store.open(path)
    await store.commit(changes)
    assert (await db_read(path, "PRAGMA journal_mode"))[0][0] == "wal"
    assert store.commits == 1
    await store.aclose()
    await store.aclose()  # idempotent
    async with await Store.open(path, "FULL") as again:
        assert {r.id for r in await again.load_all()} == {"a", "b", "c"}
    assert (await db_read(path, "PRAGMA application_id"))[0][0] == APPLICATION_ID
    assert (await db_read(path, "PRAGMA user_version"))[0][0] == SCHEMA_VERSION


async def test_group_commit_batches_queued_writes_and_resolves_in_order(tmp_path: Path) -> None:
    b = TaskBook()
    async with await Store.open(tmp_path / "s.db", max_batch=50) as store:
        tickets = []
        # hold the store thread off while 200 single-task writes queue up (the lock is reentrant)
        with store._cv:
            for i in range(200):
                b.submit([TaskSpec("p", id=f"t{i}")], T0)
                tickets.append(store.write(b.drain()[0]))
        order: list[int] = []

        async def waiter(i: int) -> None:
            await tickets[i].wait()
            order.append(i)

        async with trio.open_nursery() as nursery:
            for i in reversed(range(200)):
                nursery.start_soon(waiter, i)
        # 200 writes of one change each, at most 50 changes per transaction
        assert store.commits == 4 and store.largest_batch == 50
        assert len(await store.load_all()) == 200
    assert sorted(order) == list(range(200))


def _submit_change(tid: str, prompt: str = "p") -> list[Change]:
    b = TaskBook()
    b.submit([TaskSpec(prompt, id=tid)], T0)
    return b.drain()[0]


def _with_prompt(changes: list[Change], prompt: str) -> list[Change]:
    """The same submit carrying a prompt the book would refuse (what a bug upstream would write)."""
    return [attrs.evolve(c, static=attrs.evolve(c.static, prompt=prompt)) for c in changes]


@pytest.mark.parametrize("where", ["memory", "file"])
async def test_a_value_sqlite_cannot_take_fails_only_its_own_write(tmp_path: Path, where: str) -> None:
    """A lone surrogate (or a duplicate key) in one write: that write fails, the writes committed
    in the same group commit land, and the store keeps taking writes (it is not the disk)."""
    async with await Store.open(":memory:" if where == "memory" else tmp_path / "s.db") as store:
        await store.commit(_submit_change("x"))
        with store._cv:  # file store: the three writes go into one group commit
            good = store.write(_submit_change("a"))
            bad = store.write(_with_prompt(_submit_change("b"), "bad \ud800"))
            dup = store.write(_submit_change("x"))
            later = store.write(_submit_change("c"))
        await later.wait()
        await good.wait()
        with pytest.raises(WriteRefused, match="surrogates not allowed"):
            await bad.wait()
        with pytest.raises(WriteRefused, match="UNIQUE"):
            await dup.wait()
        assert store.broken is None and store.refused_writes == 2
        await store.commit(_submit_change("d"))
        assert sorted(r.id for r in await store.load_all()) == ["a", "c", "d", "x"]


async def test_a_failed_store_refuses_writes_until_a_probe_commits() -> None:
    """A real SQLite write failure (the database turned read-only) stops the store; committed data
    stays readable; a probe fails while the cause lasts and, once it is gone, commits and the store
    takes writes again with nothing acknowledged before lost."""
    async with await Store.open(":memory:") as store:
        await store.commit(_submit_change("kept"))
        assert store._conn is not None
        store._conn.execute("PRAGMA query_only = ON")
        with pytest.raises(StoreError, match=r"write failed.*readonly"):
            await store.commit(_submit_change("lost"))
        assert store.broken is not None and store.failures == 1
        with pytest.raises(StoreError, match="stopped accepting writes"):
            await store.commit(_submit_change("refused"))
        assert [r.id for r in await store.load_all()] == ["kept"]
        with pytest.raises(StoreError, match="still cannot write"):
            await store.probe()
        store._conn.execute("PRAGMA query_only = OFF")
        await store.probe()
        assert store.broken is None and store.recoveries == 1
        await store.commit(_submit_change("after"))
        assert sorted(r.id for r in await store.load_all()) == ["after", "kept"]


_FSIZE_SCRIPT = """
import json, resource, signal, sys
import trio
from shoal.actors.store import Store
from shoal.actors.taskbook import TaskBook
from shoal.protocols.errors import StoreError
from shoal.protocols.tasks import TaskSpec

def change(tid):
    b = TaskBook()
    b.submit([TaskSpec("p" * 20000, id=tid)], 1.0)
    return b.drain()[0]

async def main(path):
    out = {}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    async with await Store.open(path) as store:
        await store.commit(change("kept"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # no file may grow past 1 byte
        try:
            await store.commit(change("lost"))
        except StoreError as exc:
            out["failed"] = str(exc)
        try:
            await store.probe()
        except StoreError as exc:
            out["probe_while_full"] = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back
        await store.probe()
        out["broken_after_probe"] = store.broken is not None
        await store.commit(change("after"))
    async with await Store.open(path) as store:
        out["ids"] = [r.id for r in await store.load_all()]
    print(json.dumps(out))

trio.run(main, sys.argv[1])
"""


def test_a_store_that_hit_its_file_size_limit_resumes_once_writes_fit(tmp_path: Path) -> None:
    """A real disk-full failure (RLIMIT_FSIZE in a child process: writes fail with EFBIG) stops the
    file store; a probe fails while the limit holds and commits once it is lifted; nothing
    committed before is lost and the failed write is not half-applied."""
    proc = subprocess.run(
        [sys.executable, "-c", _FSIZE_SCRIPT, str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "write failed" in out["failed"]
    assert "still cannot write" in out["probe_while_full"]
    assert out["broken_after_probe"] is False
    assert sorted(out["ids"]) == ["after", "kept"]


async def test_store_files_are_private(tmp_path: Path) -> None:
    """Prompts and results are readable by their owner only: the state directory is created 0700,
    the database and its -wal and -shm files 0600, and older 0644 files are tightened on open."""
    state = tmp_path / "state"
    async with await Store.open(state / "s.db") as store:
        await store.commit(_submit_change("a"))
        names = ["s.db", "s.db-wal", "s.db-shm", "s.db.lock"]
        assert {n: oct(os.stat(state / n).st_mode & 0o777) for n in names} == dict.fromkeys(names, "0o600")
        assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    for name in ("s.db", "s.db-wal", "s.db-shm"):
        if (state / name).exists():
            os.chmod(state / name, 0o644)
    async with await Store.open(state / "s.db") as store:
        assert [r.id for r in await store.load_all()] == ["a"]
        assert all(
            os.stat(state / n).st_mode & 0o077 == 0
            for n in ("s.db", "s.db-wal", "s.db-shm")
            if (state / n).exists()
        )


async def test_migration_from_schema_version_1(tmp_path: Path) -> None:
    path = tmp_path / "old.db"

    def make_v1() -> None:
        conn = sqlite3.connect(path)
        MIGRATIONS[0](conn)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO tasks (id, seq, prompt, category, spec_priority, deps, model, max_attempts,"
            " timeout_s, metadata, run_on_dep_failure, digest, created, state, priority, reason, result,"
            " not_before, worker, updated, failed_models, retry_base)"
            " VALUES ('old', 1, 'hello', NULL, 0, '[]', NULL, 3, NULL, '{}', 0, 'd', 1.0,"
            " 'done', 0, NULL, 'kept', NULL, NULL, 2.0, '{}', 0)"
        )
        conn.execute(
            "INSERT INTO attempts (task_id, n, worker, model, started, ended, outcome, reason, exit_code,"
            " signal) VALUES ('old', 1, 'w', NULL, 1.0, 2.0, 'done', NULL, 0, NULL)"
        )
        conn.commit()
        conn.close()

    await trio.to_thread.run_sync(make_v1)
    async with await Store.open(path) as store:
        (old,) = await store.load_all()
    assert old.result == "kept" and old.usage == {} and old.dep_failure is None
    assert old.attempts[0].output_tail is None and old.attempts[0].outcome is Outcome.DONE
    assert old.attempts[0].usage == {}  # version 3: usage per attempt, empty for older rows
    assert (await db_read(path, "PRAGMA user_version"))[0][0] == SCHEMA_VERSION == 4


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "shoal.db"
    path.write_bytes(b"this is my thesis, not a database\n" * 200)
    before = digest(path)
    with pytest.raises(StoreError, match=r"shoal.db: not a SQLite database or corrupt") as err:
        await Store.open(path)
    assert str(path) in str(err.value)
    assert digest(path) == before


async def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"

    def make() -> None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
        conn.commit()
        conn.close()

    await trio.to_thread.run_sync(make)
    before = digest(path)
    with pytest.raises(StoreError, match=r"other.db: not a Shoal task store .*tables: users"):
        await Store.open(path)
    assert digest(path) == before
    assert await db_read(path, "SELECT name FROM users") == [("ada",)]


async def test_a_corrupt_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    b = TaskBook()
    b.submit([TaskSpec("x" * 3000, id=f"t{i}") for i in range(200)], T0)
    async with await Store.open(path) as store:
        await store.commit(b.drain()[0])
    data = bytearray(path.read_bytes())
    assert len(data) > 40_000
    for off in range(8192, 40_000, 7):  # trash b-tree pages, keep the header
        data[off] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shoal.db: (database is corrupt|not a SQLite database or corrupt)"):
        async with await Store.open(path) as store:
            await store.load_all()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with await Store.open(path):
        pass
    await db_read(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this Shoal understands"):
        await Store.open(path)


async def test_an_unusable_state_directory_is_a_clear_error(tmp_path: Path, no_leaks: None) -> None:
    afile = tmp_path / "plain-file"
    afile.write_text("x")
    with pytest.raises(StoreError, match="cannot create state directory") as err:
        await Store.open(afile / "state" / "shoal.db")
    assert str(afile) in str(err.value)
    readonly = trio.Path("/sys")  # read-only even for root
    if await readonly.is_dir():
        with pytest.raises(StoreError, match=r"state directory /sys is not writable"):
            await Store.open(readonly / "shoal.db")


async def test_a_store_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    async with await Store.open(path):
        with pytest.raises(StoreError, match="in use by another Shoal process"):
            await Store.open(path)
    async with await Store.open(path):  # released on close
        pass


async def test_bad_options() -> None:
    with pytest.raises(ValidationError) as err:
        await Store.open(":memory:", "SOMETIMES")  # type: ignore[arg-type]
    assert err.value.field == "store.synchronous"
    with pytest.raises(ValidationError):
        await Store.open(":memory:", max_batch=0)
