"""The throwaway PostgreSQL cluster that the store's tests and benchmarks stand on (tests/pgcluster.py):
real initdb/pg_ctl, real password authentication, isolation, restarts, crashes, and cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import psycopg
import pytest
from pgcluster import PgCluster, PgClusterError

pytestmark = pytest.mark.postgres


def cluster_processes(data_dir: Path) -> list[psutil.Process]:
    """Live processes of a cluster: the postmaster and every backend work in its data dir. Zombies
    do not count (dead; on this machine nobody reaps what pg_ctl daemonized)."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        in_dir = proc.info["cwd"] == str(data_dir)
        named = str(data_dir) in " ".join(proc.info["cmdline"] or [])
        if in_dir or named:
            found.append(proc)
    return found


def test_connects_with_the_password_and_runs_a_query(pg_cluster: PgCluster) -> None:
    with psycopg.connect(pg_cluster.url(), connect_timeout=10) as conn:
        user, port, max_connections = (
            conn.execute(
                "SELECT current_user, current_setting('port'), current_setting('max_connections')"
            ).fetchone()
            or ()
        )
    assert user == "shoal"
    assert int(port) == pg_cluster.port
    assert int(max_connections) == 300
    assert pg_cluster.url().startswith(f"postgresql://shoal:{pg_cluster.password}@127.0.0.1:")


def test_a_wrong_password_is_refused(pg_cluster: PgCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.url(password="not-the-password"), connect_timeout=10)


def test_create_database_gives_isolated_databases(pg_cluster: PgCluster, pg_url: str) -> None:
    other = pg_cluster.create_database()
    assert other != pg_url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE marker (x int)")
    with psycopg.connect(other) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'marker'").fetchone()
    assert tables == (0,)
    with pytest.raises(ValueError, match="database name"):
        pg_cluster.create_database("Robert'); DROP TABLE students;--")


def test_restart_keeps_committed_data_and_the_port() -> None:
    cluster = PgCluster()
    try:
        cluster.start()
        url = cluster.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        port = cluster.port
        cluster.restart()
        assert cluster.port == port
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
        # stop and start again on the same data dir (what a restart-under-load test does)
        cluster.stop()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=10)
        cluster.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        cluster.close()


def test_kill_is_a_crash_that_start_recovers_from() -> None:
    cluster = PgCluster()
    try:
        cluster.start()
        url = cluster.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
        held = psycopg.connect(url)
        cluster.kill()
        assert cluster_processes(cluster.data_dir) == []
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        held.close()
        cluster.start()  # crash recovery replays the WAL: the committed row is there
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
        assert "database system was interrupted" in cluster.log_path.read_text()
    finally:
        cluster.close()


def test_close_leaves_no_process_and_no_directory() -> None:
    cluster = PgCluster()
    cluster.start()
    assert cluster.base_dir is not None
    base, data = cluster.base_dir, cluster.data_dir
    held = psycopg.connect(cluster.create_database())  # a backend is running at close()
    assert cluster_processes(data)
    cluster.close()
    held.close()
    assert cluster_processes(data) == []
    assert not base.exists()
    cluster.close()  # idempotent


def test_a_process_that_exits_without_close_leaves_nothing_behind(tmp_path: Path) -> None:
    """atexit closes a cluster its owner forgot (a benchmark script that raised, say)."""
    script = tmp_path / "forget.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, sys.argv[1])
            from pgcluster import PgCluster, PgClusterError
            cluster = PgCluster()
            cluster.start()
            print(cluster.base_dir, flush=True)
            """
        )
    )
    tests_dir = str(Path(__file__).resolve().parent)
    done = subprocess.run(
        [sys.executable, str(script), tests_dir], capture_output=True, text=True, timeout=120, check=True
    )
    base = Path(done.stdout.strip())
    assert base.name.startswith("shoal-pg-")
    assert not base.exists()
    assert cluster_processes(base / "data") == []


def test_a_failed_start_raises_with_the_log_and_cleans_up() -> None:
    """An unusable setting: the error carries PostgreSQL's own words, and no directory is left."""
    cluster = PgCluster(max_connections=0)  # postgres refuses max_connections below 1
    with pytest.raises(PgClusterError, match=r"(?s)pg_ctl start failed.*PostgreSQL log.*max_connections"):
        cluster.start()
    assert cluster.base_dir is not None
    assert not cluster.base_dir.exists()


def test_runs_as_postgres_when_root(pg_cluster: PgCluster) -> None:
    """postgres refuses to run as root, so under root the cluster belongs to the postgres user."""
    owners = {p.username() for p in cluster_processes(pg_cluster.data_dir)}
    expected = "postgres" if os.geteuid() == 0 else psutil.Process().username()
    assert owners == {expected}
