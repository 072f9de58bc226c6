"""The task store a configuration names (`store.url`, `$SHOAL_STORE_URL`, `store.path`) and the
`TaskStore` seam the queue is written against."""

from __future__ import annotations

from pathlib import Path

import pytest
from swarmkit import swarm_config

from shoal.actors.store import Store
from shoal.actors.taskstore import ENV_STORE_URL, TaskStore, open_store, sqlite_path, store_url
from shoal.actors.tree import open_swarm
from shoal.protocols.config import StoreConfig, config_from_dict, parse_store_url
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import TaskState


def test_sqlite_urls_in_sqlalchemy_spelling() -> None:
    assert parse_store_url("sqlite:////var/lib/shoal/shoal.db") == ("sqlite", "/var/lib/shoal/shoal.db")
    assert parse_store_url("sqlite:///shoal.db") == ("sqlite", "shoal.db")
    assert parse_store_url("sqlite://") == ("sqlite", ":memory:")
    assert parse_store_url("SQLite:////x.db") == ("sqlite", "/x.db")
    assert sqlite_path("sqlite:///~/shoal.db") == str(Path.home() / "shoal.db")
    pg = "postgresql://shoal:pw@db.example:5432/shoal?sslmode=require"
    assert parse_store_url(pg) == ("postgresql", pg)  # libpq reads it whole: options pass through
    assert parse_store_url("postgres://h/db") == ("postgresql", "postgres://h/db")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://user@host/db", "backend 'mysql' is not available in this build (known: sqlite, postgresql"),
        ("postgresql://", "a PostgreSQL URL is postgresql://user:password@host:port/database"),
        ("/var/lib/shoal.db", "must look like sqlite:////path/to/shoal.db"),
        ("sqlite:/x.db", "must look like sqlite:////path/to/shoal.db"),
        ("sqlite://host/x.db", "sqlite:///relative.db, sqlite:////absolute.db or sqlite://"),
        ("sqlite:///", "sqlite:///relative.db"),
        ("sqlite:////x.db?mode=ro", "query strings"),
    ],
)
def test_a_bad_url_is_refused_naming_the_key(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        config_from_dict({"store": {"url": url}})
    assert err.value.field == "store.url" and says in str(err.value)


def test_url_and_path_together_are_refused() -> None:
    with pytest.raises(ValidationError) as err:
        config_from_dict({"store": {"url": "sqlite://", "path": "/x.db"}})
    assert "store.url or store.path, not both" in str(err.value)


def test_which_store_a_configuration_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_STORE_URL, raising=False)
    assert store_url(StoreConfig(), "/var/lib/shoal") == "sqlite:////var/lib/shoal/shoal.db"
    assert store_url(StoreConfig(path=":memory:"), None) == "sqlite://"
    assert store_url(StoreConfig(path="/srv/x.db"), None) == "sqlite:////srv/x.db"
    with pytest.raises(ValidationError):
        store_url(StoreConfig(), None)
    monkeypatch.setenv(ENV_STORE_URL, "sqlite:////env/x.db")
    assert store_url(StoreConfig(path="/srv/x.db"), None) == "sqlite:////env/x.db"  # env over path
    assert store_url(StoreConfig(url="sqlite://"), None) == "sqlite://"  # the config's url over env
    monkeypatch.setenv(ENV_STORE_URL, "mysql://x")
    with pytest.raises(ValidationError) as err:
        store_url(StoreConfig(), "/tmp")
    assert err.value.field == f"${ENV_STORE_URL}"


async def test_the_sqlite_store_is_a_task_store(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(url=f"sqlite:///{tmp_path}/named.db"), None)
    try:
        assert isinstance(store, Store) and isinstance(store, TaskStore)
        assert (tmp_path / "named.db").exists()
    finally:
        await store.aclose()


async def test_a_swarm_keeps_its_tasks_in_the_store_its_url_names(tmp_path: Path, no_leaks: None) -> None:
    url = f"sqlite:///{tmp_path}/elsewhere/tasks.db"
    (tmp_path / "elsewhere").mkdir()
    config = swarm_config(tmp_path, store={"url": url})
    async with open_swarm(config) as swarm:
        task = await swarm.submit({"id": "kept", "prompt": "hello"})
        assert (await swarm.wait(task.id, timeout=30)).state is TaskState.DONE
    assert (tmp_path / "elsewhere" / "tasks.db").exists()
    assert not (tmp_path / "state" / "shoal.db").exists()
    async with open_swarm(config) as swarm:
        assert (await swarm.get("kept")).state is TaskState.DONE
