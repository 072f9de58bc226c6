"""What the handle shows of the cluster: `nodes.list`'s entries, `swarm.status`'s `cluster` line, and
the configuration with the store URL's password replaced (issue 18).

Driver-free like actors/cluster.py: a SQLite swarm never loads psycopg; `redact` comes from
actors/pgstore.py only for a PostgreSQL URL, and then psycopg is loaded already.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from ..protocols.config import SwarmConfig, config_to_dict, parse_store_url
from .cluster import NodeRow


def shown_url(url: str | None) -> str | None:
    """A store URL as Shoal shows it: a PostgreSQL URL's password reads `***`."""
    if not isinstance(url, str):
        return url
    try:
        backend, _ = parse_store_url(url)
    except ValueError:
        backend = "postgresql" if "@" in url else "sqlite"  # unparseable: hide what might be a password
    if backend != "postgresql":
        return url
    from .pgschema import redact

    return redact(url)


def _redact_store(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    store = out.get("store")
    if isinstance(store, Mapping) and "url" in store:
        out["store"] = {**store, "url": shown_url(store["url"])}
    return out


def shown_config(config: SwarmConfig) -> dict[str, Any]:
    """The configuration as `swarm.config.get` answers it: everything, store.url redacted."""
    return _redact_store(config_to_dict(config))


def shown_partial(partial: Mapping[str, Any]) -> dict[str, Any]:
    """A config patch as `config.changed` announces it (events reach every subscriber and log)."""
    return _redact_store(partial)


def node_entry(row: NodeRow, this: str | None) -> dict[str, Any]:
    """One `nodes.list` entry. A row still `alive` whose lease ran out reads `dead`: no heartbeat has
    marked it yet, but it is dead to the cluster (its work is about to be requeued)."""
    state = "dead" if row.state == "alive" and not row.alive else row.state
    return {
        "id": row.id,
        "state": state,
        "alive": row.alive,
        "this": row.id == this,
        "host": row.host,
        "pid": row.pid,
        "url": row.url,
        "workers": row.workers,
        "started": row.started,
        "heartbeat_age_s": row.heartbeat_age_s,
        "lease_left_s": max(0.0, row.lease_left_s),
        "version": row.shoal_version,
        "incarnation": row.incarnation,
    }


def local_node(
    config: SwarmConfig, *, url: str | None, workers: int, started: float, version: str
) -> dict[str, Any]:
    """A one-node (SQLite) swarm's single entry, so clients of `nodes.list` need no special case."""
    host = socket.gethostname()
    return {
        "id": config.node.id or host,
        "state": "alive",
        "alive": True,
        "this": True,
        "host": host,
        "pid": os.getpid(),
        "url": url,
        "workers": workers,
        "started": started,
        "heartbeat_age_s": 0.0,
        "lease_left_s": None,  # no lease: nothing else could take its work over
        "version": version,
        "incarnation": 0,
    }


def cluster_status(store: Any) -> dict[str, Any]:
    """`swarm.status`'s `cluster`: this node's id, how many nodes the cluster has and how many are
    alive (as of this node's last heartbeat), and the store, redacted."""
    rows: tuple[NodeRow, ...] = tuple(getattr(store, "nodes", ()))
    return {
        "node_id": store.node_id,
        "nodes": len(rows),
        "alive": sum(1 for r in rows if r.alive),
        "store": getattr(store, "shown_url", None) or shown_url(getattr(store, "url", None)),
    }


__all__ = ["cluster_status", "local_node", "node_entry", "shown_config", "shown_partial", "shown_url"]
