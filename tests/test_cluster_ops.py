"""Operating a cluster (issue 18): `shoal db migrate/check`, `nodes.list` and `shoal nodes`, the
cluster line of `swarm.status`, and the store URL's password kept out of everything Shoal shows.

Real PostgreSQL (the `pg_url` fixture: a fresh database per test on the session's throwaway cluster)
and real `shoal` processes: each command runs as its own subprocess, as a user or a script runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from shoal.actors.cli import EXIT_CONFLICT, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from shoal.actors.pgstore import SCHEMA_VERSION

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]

pytestmark = pytest.mark.postgres


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


# ---- shoal db -----------------------------------------------------------------------------------


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


def test_db_check_says_an_older_schema_needs_migrate(pg_url: str) -> None:
    assert shoal("db", "migrate", "--store", pg_url).returncode == EXIT_OK
    _sql(pg_url, f"UPDATE shoal_meta SET value = '{SCHEMA_VERSION - 1}' WHERE key = 'schema_version'")
    run = shoal("db", "check", "--store", pg_url)
    assert run.returncode == EXIT_FAILED, run
    assert f"schema version {SCHEMA_VERSION - 1} is older than this Shoal's ({SCHEMA_VERSION})" in run.stderr


def test_db_refuses_a_foreign_database_and_reads_store_url_from_a_config_file(
    pg_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "shoal.toml"
    config.write_text(f'[store]\nurl = "{pg_url}"\n')
    _sql(pg_url, "CREATE TABLE tasks (id text)")
    run = shoal("db", "migrate", "--config", str(config))
    assert run.returncode == EXIT_CONFLICT, run
    assert "not a Shoal store" in run.stderr


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
