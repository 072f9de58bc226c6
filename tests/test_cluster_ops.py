"""Operating a cluster (issue 18): `shoal db migrate/check`, `nodes.list` and `shoal nodes`, the
cluster line of `swarm.status`, and the store URL's password kept out of everything Shoal shows.

Real PostgreSQL (the `pg_url` fixture: a fresh database per test on the session's throwaway cluster)
and real `shoal` processes: each command runs as its own subprocess, as a user or a script runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import trio
from swarmkit import swarm_config

from shoal.actors import pgstore
from shoal.actors.auth import read_endpoint
from shoal.actors.cli import EXIT_CONFLICT, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from shoal.actors.client import connect
from shoal.actors.cluster import NodeRow, NodesReport
from shoal.actors.http import dashboard_url
from shoal.actors.pgmembership import in_grace
from shoal.actors.pgschema import SCHEMA_VERSION
from shoal.actors.pgschema import connect as pgconnect
from shoal.actors.pgstore import PgStore
from shoal.actors.store import StoreError
from shoal.actors.tree import open_swarm
from shoal.runtime.eventbus import Event

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HEARTBEAT_S = 0.2  # short, so a node's view of the others is fresh within a fraction of a second


def _password(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    assert password, url
    return unquote(password)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL", "PG"))}
    env.update({"COLUMNS": "200", **extra})
    return env


def shoal(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHOAL, *argv], capture_output=True, text=True, timeout=timeout, env=env or _env(), check=False
    )


def _sql(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


# ---- shoal db (no node runs) ------------------------------------------------------------------------


@pytest.mark.postgres
def test_db_check_says_an_empty_database_needs_migrate_and_migrate_makes_it_ready(pg_url: str) -> None:
    secret = _password(pg_url)
    check = shoal("db", "check", "--store", pg_url)
    assert check.returncode == EXIT_FAILED, check
    assert "no Shoal schema" in check.stderr and "shoal db migrate" in check.stderr
    migrated = shoal("db", "migrate", "--store", pg_url)
    assert migrated.returncode == EXIT_OK, migrated
    assert f"schema version 0 → {SCHEMA_VERSION} (migrated)" in migrated.stdout
    again = shoal("db", "migrate", "--store", pg_url, "--json")
    assert again.returncode == EXIT_OK, again
    report = json.loads(again.stdout)
    assert report["found"] == report["now"] == SCHEMA_VERSION and report["migrated"] is False
    ready = shoal("db", "check", "--json", env=_env(SHOAL_STORE_URL=pg_url))  # the URL from the environment
    assert ready.returncode == EXIT_OK, ready
    assert json.loads(ready.stdout)["ok"] is True
    for run in (check, migrated, again, ready):
        assert secret not in run.stdout + run.stderr
        assert ":***@" in run.stdout + run.stderr


@pytest.mark.postgres
def test_db_check_and_migrate_refuse_a_newer_schema_naming_its_version(pg_url: str) -> None:
    assert shoal("db", "migrate", "--store", pg_url).returncode == EXIT_OK
    _sql(pg_url, "UPDATE shoal_meta SET value = '99' WHERE key = 'schema_version'")
    for action in ("check", "migrate"):
        run = shoal("db", action, "--store", pg_url)
        assert run.returncode == EXIT_CONFLICT, run
        assert f"schema version 99 is newer than this Shoal understands ({SCHEMA_VERSION})" in run.stderr
        assert _password(pg_url) not in run.stderr + run.stdout
    with psycopg.connect(pg_url) as conn:  # migrate touched nothing
        assert conn.execute("SELECT value FROM shoal_meta WHERE key = 'schema_version'").fetchone() == ("99",)


@pytest.mark.postgres
def test_db_check_says_an_older_schema_needs_migrate(pg_url: str) -> None:
    assert shoal("db", "migrate", "--store", pg_url).returncode == EXIT_OK
    _sql(pg_url, f"UPDATE shoal_meta SET value = '{SCHEMA_VERSION - 1}' WHERE key = 'schema_version'")
    run = shoal("db", "check", "--store", pg_url)
    assert run.returncode == EXIT_FAILED, run
    assert f"schema version {SCHEMA_VERSION - 1} is older than this Shoal's ({SCHEMA_VERSION})" in run.stderr


@pytest.mark.postgres
async def test_a_schema_1_database_with_a_task_migrates_to_the_write_function_keeping_it(pg_url: str) -> None:
    # a database of the version before the write function (schema 1: the tables) holds a task;
    # `shoal db check` says it needs migrating, `shoal db migrate` adds the function and keeps the
    # rows, and a node then reads the task and writes through the function
    from shoal.actors.pgschema import MIGRATIONS
    from shoal.actors.taskbook import TaskBook

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(MIGRATIONS[0])  # type: ignore[call-overload]
        conn.execute("INSERT INTO shoal_meta VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO tasks VALUES ('old', 1, 'from schema 1', NULL, 0, '[]', NULL, 3, NULL, '{\"k\": 1}',"
            " false, 'd', 1.0, 'ready', 0, NULL, NULL, NULL, NULL, 1.0, '{}', '{}', 0, NULL, 7)"
        )
        conn.execute("INSERT INTO task_log (rev, task_id) VALUES (nextval('shoal_rev'), 'old')")
    check = await trio.to_thread.run_sync(lambda: shoal("db", "check", "--store", pg_url))
    assert check.returncode == EXIT_FAILED and "schema version 1 is older" in check.stderr, check
    migrated = await trio.to_thread.run_sync(lambda: shoal("db", "migrate", "--store", pg_url))
    assert migrated.returncode == EXIT_OK, migrated
    assert f"schema version 1 → {SCHEMA_VERSION}" in migrated.stdout, migrated
    store = await PgStore.open(pg_url, "n")
    try:
        (row,) = await store.load_all()
        assert (row.id, row.static.prompt, row.static.metadata) == ("old", "from schema 1", {"k": 1})
        assert row.version == 7
        book = TaskBook(stamp=store.stamp, seq_source=store.next_seq)
        book.restore([row], 2.0)
        book.drain()
        book.cancel("old", 3.0)
        changes, _events, _ready = book.drain()
        landed = await store.write(changes).wait()
        assert not landed.conflicts
    finally:
        await store.aclose()
    ((state, version),) = await trio.to_thread.run_sync(
        pg_rows_simple, pg_url, "SELECT state, version FROM tasks WHERE id = 'old'"
    )
    assert state == "cancelled" and version != 7


@pytest.mark.postgres
def test_db_refuses_a_foreign_database_and_reads_store_url_from_a_config_file(
    pg_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "shoal.toml"
    config.write_text(f'[store]\nurl = "{pg_url}"\n')
    _sql(pg_url, "CREATE TABLE tasks (id text)")
    run = shoal("db", "migrate", "--config", str(config))
    assert run.returncode == EXIT_CONFLICT, run
    assert "not a Shoal store" in run.stderr


@pytest.mark.postgres
def test_db_errors_name_the_host_and_never_the_password(pg_url: str) -> None:
    secret = _password(pg_url)
    wrong = pg_url.replace(secret, secret + "x")  # a wrong password: refused by the server
    run = shoal("db", "check", "--store", wrong)
    assert run.returncode == EXIT_UNREACHABLE, run
    assert "cannot connect" in run.stderr and secret not in run.stderr + run.stdout
    missing = shoal("db", "check", env=_env())
    assert missing.returncode == EXIT_USAGE and "--store" in missing.stderr
    sqlite = shoal("db", "check", "--store", f"sqlite:///{Path(pg_url).name}.db")
    assert sqlite.returncode == EXIT_USAGE and "PostgreSQL" in sqlite.stderr


@pytest.mark.postgres
async def test_a_node_frozen_inside_a_transaction_cannot_hold_its_locks_past_its_lease(pg_url: str) -> None:
    # a node SIGSTOPped between two statements of a transaction (its heartbeat's row lock on its
    # nodes row, the feed's advisory lock) would otherwise stall every other node until it runs again

    def frozen_then_freed(idle_s: float | None, ended_by: type[psycopg.Error]) -> None:
        frozen = pgconnect(pg_url, idle_s=idle_s)  # as a node with a 0.5 s lease connects
        frozen.execute("BEGIN")
        frozen.execute("SELECT pg_advisory_xact_lock(18)")
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '30s'")  # a bound on the wait, not the figure tested
            other.execute("SELECT pg_advisory_lock(18)")  # granted once the frozen session ended
        # the node, running again, finds its session gone (and pgbase._db reconnects to retry),
        # and what ended it; or, when libpq sees the socket closed before it reads the server's
        # last message (1 run of ~200 on a loaded machine), only that it is gone
        with pytest.raises((ended_by, psycopg.OperationalError)) as ended:
            frozen.execute("SELECT 1")
        if not isinstance(ended.value, ended_by):
            assert "closed" in str(ended.value), ended.value
        assert frozen.broken or frozen.closed
        frozen.close()

    # PostgreSQL's idle_in_transaction_session_timeout (a node's sessions set it to the lease)
    await trio.to_thread.run_sync(frozen_then_freed, 0.5, psycopg.errors.IdleInTransactionSessionTimeout)
    # a session that timeout misses (one left inside a pipeline, as psycopg's executemany may leave
    # it; here: no timeout at all): another node's listener sees it frozen past the lease and ends it
    watcher = await PgStore.open(pg_url, "watcher", lease_s=0.5, heartbeat_s=0.2)
    try:
        with trio.fail_after(60):
            # pg_terminate_backend: "terminating connection due to administrator command"
            await trio.to_thread.run_sync(frozen_then_freed, None, psycopg.errors.AdminShutdown)
    finally:
        await watcher.aclose()


@pytest.mark.postgres
async def test_a_node_back_from_an_outage_gives_the_others_a_lease_before_taking_them_for_gone(
    pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL down for longer than a lease: every node's lease ran out meanwhile. The first node
    # back must not take the others for gone at once (their running attempts requeued as crashed
    # while their agents run on, as the restart test saw beside CPU burners): it gives them the
    # rest of a lease from its reconnection to heartbeat, and only then takes a silent one for gone
    url = pg_cluster.create_database()
    lease = 1.5
    a = await PgStore.open(url, "a", lease_s=lease, heartbeat_s=0.2)
    b = await PgStore.open(url, "b", lease_s=lease, heartbeat_s=0.2)
    reports: list[tuple[float, bool]] = []  # (when, b alive) as a's heartbeats report the cluster
    b_gone = trio.Event()

    async def watch() -> None:
        async for item in a.feed:
            if isinstance(item, NodesReport):
                alive = {n.id: n.alive for n in item.nodes}
                if "b" not in alive:
                    continue  # a's first report, made as it opened: before b registered
                reports.append((trio.current_time(), alive["b"]))
                if not alive["b"]:
                    b_gone.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            assert await b.reserve(2) and await b.reserve(2)  # b runs 2 of the cluster's 2 workers
            monkeypatch.setattr(b, "_heartbeat", lambda: None)  # b is slow to come back: silent
            await trio.to_thread.run_sync(pg_cluster.stop)
            await trio.sleep(lease + 0.5)  # the outage itself (the scenario, not a wait for a condition)
            await trio.to_thread.run_sync(pg_cluster.start)
            back = trio.current_time()  # reports after this are a's after its reconnection
            # (served once a is back: within its grace) b's workers still count: no slot for a
            assert not await a.reserve(2), "a spawned past scaling.max_workers while b was in its grace"
            with trio.fail_after(30):
                await b_gone.wait()
            assert await a.reserve(2)  # b gone: its workers no longer hold the slots
            nursery.cancel_scope.cancel()
        after = [alive for when, alive in reports if when > back]
        assert after[0], "a took b for gone on its first heartbeat back, before b could say it is alive"
        assert not after[-1]  # and once the grace is over, a silent b is gone
        rows = await trio.to_thread.run_sync(pg_rows_simple, url, "SELECT id, state FROM nodes ORDER BY id")
        assert rows == [("a", "alive"), ("b", "dead")]
    finally:
        await b.aclose()
        await a.aclose()


def test_in_grace_gives_alive_rows_the_rest_of_a_lease_and_nothing_else() -> None:
    row = NodeRow("b", 1, "alive", "h", 1, None, 2, 0.0, 9.0, -4.0, "0.1.0")
    stopped = attrs.evolve(row, id="c", state="stopped")
    assert not row.alive
    assert [r.alive for r in in_grace([row, stopped], 0.8)] == [True, False]
    assert in_grace([row, stopped], 0.8)[0].lease_left_s == 0.8
    assert in_grace([row], 0.0) == [row]  # the grace is over: the rows as they are
    live = attrs.evolve(row, lease_left_s=3.0)
    assert in_grace([live], 0.8) == [live]  # a lease longer than the grace stays as it is


@pytest.mark.postgres
async def test_a_defect_in_the_store_thread_fails_callers_instead_of_hanging_them(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fault injection: an exception no path of the store thread expects (a bug), at open and later
    def broken_migrate(*_a: Any, **_k: Any) -> Any:
        raise TypeError("a defect at open")

    with monkeypatch.context() as m:
        m.setattr(pgstore, "migrate", broken_migrate)
        with trio.fail_after(30), pytest.raises(StoreError, match=r"cannot open.*a defect at open"):
            await PgStore.open(pg_url, "a")
    store = await PgStore.open(pg_url, "a")

    def broken_commit(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a defect in a write")

    monkeypatch.setattr(store, "_commit", broken_commit)
    with trio.fail_after(30):
        with pytest.raises(StoreError, match=r"store thread failed \(RuntimeError: a defect in a write\)"):
            await store.commit([])
        assert store.broken is not None  # the queue sees it and goes read-only, saying why
        with pytest.raises(StoreError, match="store thread failed"):
            await store.load_all()  # answered at once: no thread is left to wait on
        await store.aclose()
    assert store._thread is not None and not store._thread.is_alive()


# ---- nodes of a running cluster ---------------------------------------------------------------------


@attrs.define
class Node:
    """One `shoal serve` of the cluster: its own state directory and ports, the shared token file."""

    node_id: str
    proc: subprocess.Popen[str]
    log_path: Path
    url: str = ""
    output: list[str] = attrs.field(factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") + "".join(self.output)


@contextmanager
def serve_node(root: Path, store: str, node_id: str, token_file: Path, *extra: str) -> Iterator[Node]:
    """`shoal serve --store URL --node-id ID`; stopped with SIGTERM, which must end it cleanly."""
    state = root / node_id
    state.mkdir(parents=True)
    log_path = root / f"{node_id}.log"
    argv = [
        *SHOAL, "serve", "--state-dir", str(state), "--port", "0", "--http-port", "0",
        "--store", store, "--node-id", node_id, "--token-file", str(token_file),
        "--set", f"node.heartbeat_s={HEARTBEAT_S}", "--set", "node.lease_s=3", "--set", "scaling.tick_s=0.05",
        *extra,
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=_env())
        node = Node(node_id, proc, log_path)
        ready = threading.Event()

        def drain() -> None:  # read stdout to the end so the server never blocks on a full pipe
            assert proc.stdout is not None
            for line in proc.stdout:
                node.output.append(line)
                if "gateway:" in line:
                    ready.set()
            ready.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            assert ready.wait(30) and proc.poll() is None, f"{node_id} did not start: {node.log()[-3000:]}"
            node.url = read_endpoint(state) or ""
            yield node
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            reader.join(5)
    assert code == 0, f"{node_id} exited with {code}: {node.log()[-3000:]}"


@asynccontextmanager
async def running_node(
    root: Path, store: str, node_id: str, token_file: Path, *extra: str
) -> AsyncIterator[Node]:
    """serve_node from a trio test: starting and stopping the process (blocking waits) in a thread,
    so the loop, and an in-process node on it, keeps running meanwhile."""
    stack = ExitStack()
    node = await trio.to_thread.run_sync(
        stack.enter_context, serve_node(root, store, node_id, token_file, *extra)
    )
    try:
        yield node
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stack.close)


async def ashoal(*argv: str) -> subprocess.CompletedProcess[str]:
    """`shoal ...` from a trio test, in a thread."""
    return await trio.to_thread.run_sync(lambda: shoal(*argv))


def _token_file(root: Path) -> Path:
    path = root / "token"
    path.write_text("cluster-ops-test-token-0123456789abcdef\n")
    path.chmod(0o600)
    return path


async def _nodes_until(
    url: str, token: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """nodes.list once the answering node's view of the cluster shows what `pred` wants: asked
    again at each `nodes.changed` that node announces (its heartbeat saw a node join, leave, die or
    move its gateway)."""
    async with connect(url, token) as client, client.events(["nodes.changed"]) as changes:
        reply = await client.nodes()
        with trio.fail_after(timeout):
            while not pred(reply):
                async for item in changes:
                    if isinstance(item, Event) and item.data.get("node") == reply["node_id"]:
                        break
                reply = await client.nodes()
        return reply


def _by_id(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in reply["nodes"]}


@pytest.mark.postgres
async def test_nodes_list_over_either_gateway_lists_both_nodes_of_a_cluster(
    pg_url: str, tmp_path: Path
) -> None:
    token_file = _token_file(tmp_path)
    token = token_file.read_text().strip()
    async with (
        running_node(tmp_path, pg_url, "a", token_file, "--min-workers", "1") as a,
        running_node(tmp_path, pg_url, "b", token_file, "--max-workers", "0") as b,
    ):

        def both_alive(reply: dict[str, Any]) -> bool:
            nodes = _by_id(reply)
            return (
                set(nodes) == {"a", "b"}
                and all(n["alive"] and n["url"] for n in nodes.values())  # a url: written by a heartbeat
                and nodes["a"]["workers"] == 1
            )

        from_a = await _nodes_until(a.url, token, both_alive)
        from_b = await _nodes_until(b.url, token, both_alive)
        assert from_a["node_id"] == "a" and from_b["node_id"] == "b" and from_a["cluster"] is True
        na, nb = _by_id(from_a)["a"], _by_id(from_a)["b"]
        assert na["this"] and not nb["this"] and _by_id(from_b)["b"]["this"]
        assert na["state"] == nb["state"] == "alive" and na["url"] == a.url and nb["url"] == b.url
        assert na["pid"] == a.proc.pid and nb["pid"] == b.proc.pid and nb["workers"] == 0
        assert 0 <= na["heartbeat_age_s"] < 3 and 0 < na["lease_left_s"] <= 3
        assert na["version"] and na["incarnation"] != nb["incarnation"]

        cli = await ashoal("nodes", "--url", a.url, "--token-file", str(token_file))
        assert cli.returncode == EXIT_OK, cli
        rows = [line.split() for line in cli.stdout.splitlines()]
        assert rows[0][:4] == ["ID", "STATE", "HOST", "PID"]
        assert ["a", "*", "alive"] in [r[:3] for r in rows] and ["b", "alive"] in [r[:2] for r in rows], (
            cli.stdout
        )
        as_json = await ashoal("nodes", "--json", "--url", b.url, "--token-file", str(token_file))
        assert {n["id"] for n in json.loads(as_json.stdout)["nodes"]} == {"a", "b"}

        status = await ashoal("status", "--json", "--url", a.url, "--token-file", str(token_file))
        cluster = json.loads(status.stdout)["cluster"]
        assert cluster["node_id"] == "a" and cluster["nodes"] == 2 and cluster["alive"] == 2
        text = (await ashoal("status", "--url", a.url, "--token-file", str(token_file))).stdout
        assert "node a · 2 nodes, 2 alive" in text

        b.proc.send_signal(signal.SIGTERM)  # b leaves cleanly: its row says stopped, a sees it
        await trio.to_thread.run_sync(b.proc.wait)
        left = await _nodes_until(a.url, token, lambda r: _by_id(r)["b"]["state"] == "stopped")
        assert not _by_id(left)["b"]["alive"] and _by_id(left)["a"]["alive"]
        direct = await ashoal("nodes", "--json", "--store", pg_url)  # no gateway: straight from the database
        assert direct.returncode == EXIT_OK, direct
        assert {n["id"]: n["state"] for n in json.loads(direct.stdout)["nodes"]} == {
            "a": "alive",
            "b": "stopped",
        }


async def test_a_one_node_sqlite_swarm_lists_itself(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, node={"id": "solo"}, scaling={"min_workers": 0, "max_workers": 0})
    async with open_swarm(config) as swarm:
        reply = swarm.nodes()
        assert reply["cluster"] is False and reply["node_id"] == "solo"
        [node] = reply["nodes"]
        assert node["id"] == "solo" and node["state"] == "alive" and node["alive"] and node["this"]
        assert node["workers"] == 0 and node["pid"] == os.getpid() and node["lease_left_s"] is None
        assert (await swarm.status())["cluster"] is None


@pytest.mark.postgres
async def test_the_store_password_is_shown_nowhere(pg_url: str, tmp_path: Path) -> None:
    """config get (gateway and CLI), config set's reply and its event, status, the banner, the
    dashboard's config.json and the server's log: the URL everywhere, its password nowhere."""
    secret = _password(pg_url)
    token_file = _token_file(tmp_path)
    conn = ["--url", "", "--token-file", str(token_file)]
    async with running_node(tmp_path, pg_url, "solo", token_file) as node:
        conn[1] = node.url
        shown: list[str] = []
        for argv in (
            ["config", "get", "--json"],
            ["config", "get", "store.url"],
            ["status", "--json"],
            ["status"],
            ["nodes", "--json"],
            ["config", "set", f"store.url={pg_url}"],  # a patch naming it: the reply and config.changed
        ):
            run = await ashoal(*argv, *conn)
            assert run.returncode == EXIT_OK, run
            shown.append(run.stdout + run.stderr)
        assert shown[1].strip() == pg_url.replace(f":{secret}@", ":***@")
        status = json.loads(shown[2])
        assert status["cluster"]["store"] == pg_url.replace(f":{secret}@", ":***@")
        changed: dict[str, Any] = {}
        async with connect(node.url, token_file.read_text().strip()) as client:
            with trio.fail_after(10):
                async with client.events(["*"], since=0) as stream:
                    async for item in stream:  # every event so far, replayed, up to the patch's
                        assert isinstance(item, Event), item
                        shown.append(json.dumps(item.data))
                        if item.topic == "config.changed":
                            changed = item.data
                            break
            shown.append(json.dumps((await client.call("swarm.config.get"))["store"]))
        assert changed["partial"]["store"]["url"] == pg_url.replace(f":{secret}@", ":***@")
        async with httpx.AsyncClient() as web:  # what the dashboard's page reads before it signs in
            shown.append((await web.get(status["http_url"] + "config.json")).text)
    log = await trio.to_thread.run_sync(node.log)
    shown.append(log)
    assert "cluster:   node solo · store postgresql://shoal:***@" in log
    leaks = [text[:200] for text in shown if secret in text]
    assert leaks == []
    assert sum(":***@" in text for text in shown) >= 6


# ---- the dashboard's Nodes (a real browser) ---------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()  # scripts/test installs it; a bare checkout may not have it


@pytest.mark.postgres
@pytest.mark.browser
@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")
async def test_the_dashboard_shows_the_clusters_nodes(pg_url: str, tmp_path: Path) -> None:
    """Node a in-process with its dashboard, node b a `shoal serve`: the Nodes tab lists both, alive,
    with their workers and heartbeats; b stopping shows as stopped; the page never holds the password."""
    sync_api = pytest.importorskip("playwright.sync_api")
    secret = _password(pg_url)
    token_file = _token_file(tmp_path)
    config = swarm_config(
        tmp_path,
        store={"url": pg_url},
        node={"id": "a", "heartbeat_s": HEARTBEAT_S, "lease_s": 3.0},
        http={"enabled": True, "port": 0},
        gateway={"enabled": True, "port": 0, "token_file": str(token_file)},
        workers={"profile": "shell"},
        scaling={"min_workers": 1, "max_workers": 1},
    )
    async with open_swarm(config) as swarm:
        url = dashboard_url(*swarm.http_address, swarm.token)
        async with running_node(tmp_path, pg_url, "b", token_file, "--max-workers", "0") as b:

            def body() -> None:
                expect = sync_api.expect
                with sync_api.sync_playwright() as pw:
                    browser = pw.chromium.launch(
                        executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                    )
                    try:
                        page = browser.new_page(viewport={"width": 1400, "height": 860})
                        page.set_default_timeout(30_000)
                        errors: list[str] = []
                        page.on("pageerror", lambda exc: errors.append(str(exc)))
                        page.goto(url)
                        page.wait_for_selector('#conn[data-state="open"]')
                        expect(page.locator("#cluster")).to_have_text("node a · 2/2 alive", timeout=30_000)
                        page.click("#tab-nodes")
                        row_a, row_b = page.locator('tr[data-node="a"]'), page.locator('tr[data-node="b"]')
                        expect(row_a.locator("td.state")).to_have_text("alive")
                        expect(row_a.locator("td.workers")).to_have_text("1")
                        expect(row_a).to_contain_text("(this)")
                        expect(row_b.locator("td.state")).to_have_text("alive")
                        expect(row_b).to_contain_text(b.url)
                        assert page.locator("tr[data-node] td.heartbeat").first.inner_text().endswith(" ago")
                        ARTIFACTS.mkdir(exist_ok=True)
                        page.screenshot(path=str(ARTIFACTS / "dashboard-nodes.png"))
                        b.proc.send_signal(signal.SIGTERM)  # b leaves: the page sees it within a refresh
                        expect(row_b.locator("td.state")).to_have_text("stopped")
                        expect(page.locator("#cluster")).to_have_text("node a · 1/2 alive")
                        assert "***" in (page.locator("#cluster").get_attribute("title") or "")
                        page.click('#tabs [data-tab="settings"]')
                        assert secret not in page.content()
                        assert secret not in json.dumps(page.evaluate("() => window.shoal.config"))
                        assert not errors, errors
                    finally:
                        browser.close()

            await trio.to_thread.run_sync(body)


@pytest.mark.postgres
async def test_hostile_text_on_a_postgresql_store_gets_clear_errors_and_loses_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    """What PostgreSQL cannot hold (a NUL in a text column) or nobody can encode (a lone surrogate):
    refused with a clear error, the store stays writable and every task already in it stays."""
    config = swarm_config(
        tmp_path, store={"url": pg_url}, node={"id": "h"}, scaling={"min_workers": 0, "max_workers": 0}
    )
    async with open_swarm(config) as swarm:
        await swarm.submit({"id": "kept", "prompt": "stays"})
        with pytest.raises(Exception, match="surrogate"):
            await swarm.submit({"id": "bad", "prompt": "lone \udc80 surrogate"})
        with pytest.raises(Exception, match="NUL"):
            await swarm.submit({"id": "nul", "prompt": "a\x00b"})
        with pytest.raises(Exception, match="is over 1000000 bytes as JSON"):
            await swarm.submit({"id": "huge", "prompt": "meta", "metadata": {"big": "x" * (1 << 20)}})
        # json columns take the \u0000 escape and half a megabyte: stored and read back whole
        big = "x" * (1 << 19)
        odd = await swarm.submit({"id": "odd", "prompt": "meta", "metadata": {"nul": "a\x00b", "big": big}})
        assert odd.metadata == {"nul": "a\x00b", "big": big}
        await swarm.submit({"id": "after", "prompt": "the store still takes writes"})
        assert [(await swarm.get(t)).id for t in ("kept", "odd", "after")] == ["kept", "odd", "after"]
    rows = dict(pg_rows_simple(pg_url, "SELECT id, metadata::text FROM tasks"))
    assert set(rows) == {"kept", "odd", "after"}
    assert json.loads(rows["odd"]) == {"nul": "a\x00b", "big": big}


def pg_rows_simple(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]
