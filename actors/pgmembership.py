"""A node's membership of the cluster (the shared store's side): its row in `nodes` and its lease,
marking nodes past their lease dead, the cluster's worker slots (`scaling.max_workers` for every node
together), model parks and the cluster's configuration. Runs in the store's thread (actors/pgbase.py)."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import attrs
import psycopg

from ..protocols.errors import StoreError
from .cluster import ClusterConfig, NodeRow, NodesReport
from .pgbase import Job, PgBase, log
from .pgschema import ADVISORY_KEY, read_nodes
from .pgschema import json_text as _json
from .pgschema import why as _why
from .store import Ticket

KEEP_EVENTS = 100_000  # the events table keeps this many (a gateway's `since` replays from its bus)
KEEP_LOG_S = 3600  # change-feed entries older than this are pruned (a node that lags reloads)
PRUNE_EVERY = 60  # heartbeats between two prunes


class PgMembership(PgBase):
    """This node in the cluster: registration, heartbeat, reservations, parks, configuration."""

    async def reserve(self, max_workers: int) -> bool:
        """Take one of the cluster's `max_workers` slots for a worker about to spawn here: under a
        lock, the live nodes' workers (this one's as it knows them) plus one must fit. Two nodes
        scaling up in the same moment cannot both take the last slot. No connection: refused."""
        if self._closing or self._broken is not None:
            return False
        ticket = Ticket()
        self._submit(Job("reserve", ticket, (), max_workers))
        granted: bool = await ticket.wait()
        return granted

    def park(self, model: str, until: float, reason: str | None) -> None:
        """A model parked here is parked on every node (written with the next batch; until=inf:
        until an operator resumes it)."""
        self._submit(Job("park", Ticket(), (), (model, until, reason)))

    def unpark(self, model: str) -> None:
        self._submit(Job("park", Ticket(), (), (model, None, None)))

    async def load_config(self) -> ClusterConfig:
        """The cluster's configuration overrides as stored now (version 0, {}: none yet)."""
        ticket = Ticket()
        self._submit(Job("config_get", ticket))
        got: ClusterConfig = await ticket.wait()
        return got

    async def put_config(self, overrides: dict[str, Any], expect: int) -> ClusterConfig | None:
        """Store new overrides if the stored version is still `expect` (None: another node's patch
        came first: load, merge and try again)."""
        ticket = Ticket()
        self._submit(Job("config_put", ticket, (), (overrides, expect)))
        got: ClusterConfig | None = await ticket.wait()
        return got

    def _config_job(self, job: Job) -> tuple[Ticket, Any, BaseException | None]:
        def get(conn: psycopg.Connection[Any]) -> ClusterConfig:
            row = conn.execute("SELECT version, overrides FROM cluster_config WHERE id = 1").fetchone()
            return ClusterConfig(int(row[0]), dict(row[1])) if row else ClusterConfig(0, {})

        def put(conn: psycopg.Connection[Any]) -> ClusterConfig | None:
            overrides, expect = job.arg
            row = conn.execute(
                "INSERT INTO cluster_config (id, overrides, version, node) VALUES (1, %s, 1, %s)"
                " ON CONFLICT (id) DO UPDATE SET overrides = EXCLUDED.overrides,"
                " version = cluster_config.version + 1, node = EXCLUDED.node, at = now()"
                " WHERE cluster_config.version = %s RETURNING version",
                (_json(overrides), self.node_id, expect),
            ).fetchone()
            if row is None or (expect == 0 and int(row[0]) != 1):
                return None
            return ClusterConfig(int(row[0]), overrides)

        try:
            value = self._retrying("the cluster's configuration", get if job.kind == "config_get" else put)
        except (psycopg.Error, StoreError) as exc:
            err = StoreError(f"{self.shown_url}: the cluster's configuration: {_why(exc, self.url)}")
            return (job.ticket, None, err)
        if isinstance(value, ClusterConfig):
            self._config_version = max(self._config_version, value.version)
        return (job.ticket, value, None)

    def _park_job(self, job: Job) -> None:
        model, until, reason = job.arg

        def park(conn: psycopg.Connection[Any]) -> None:
            if until is None:
                conn.execute("DELETE FROM model_parks WHERE model = %s", (model,))
                return
            conn.execute(
                "INSERT INTO model_parks (model, until, reason, node) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (model) DO UPDATE SET until = EXCLUDED.until, reason = EXCLUDED.reason,"
                " node = EXCLUDED.node, at = now()",
                (model, until if math.isfinite(until) else None, reason, self.node_id),
            )

        try:
            self._retrying("a model park", park)
        except (psycopg.Error, StoreError) as exc:
            log.warning("pgstore: cannot record the park of %s: %s", model, _why(exc, self.url))

    def _reserve_job(self, job: Job) -> tuple[Ticket, Any, BaseException | None]:
        cap = int(job.arg)

        def reserve(conn: psycopg.Connection[Any]) -> bool:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(current_database()))", (ADVISORY_KEY + 3,)
                )
                cur.execute(  # (a node in its grace after an outage counts the others' too: in_grace)
                    "SELECT coalesce(sum(workers), 0) FROM nodes WHERE state = 'alive'"
                    " AND (lease_until > now() OR %s) AND id <> %s",
                    (self._grace_s() > 0, self.node_id),
                )
                others = int(cur.fetchone()[0])  # type: ignore[index]
                if others + self.workers + 1 > cap:
                    return False
                self.workers += 1  # counted now, so the next node's reservation sees it
                cur.execute("UPDATE nodes SET workers = %s WHERE id = %s", (self.workers, self.node_id))
                return True

        try:
            return (job.ticket, self._retrying("a reservation", reserve), None)
        except (psycopg.Error, StoreError):
            return (job.ticket, False, None)

    def _grace_s(self) -> float:
        """How much longer this node, back from a lost connection, gives the others to heartbeat
        before it takes any of them for gone (a lease from its reconnection: `in_grace`)."""
        return self.lease_s - (time.monotonic() - self._reconnected_at)

    def _prune(self, conn: psycopg.Connection[Any]) -> None:
        """Keep the events table and the change feed bounded (any node may do it; it is idempotent)."""
        conn.execute("DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - %s", (KEEP_EVENTS,))
        conn.execute("DELETE FROM task_log WHERE at < now() - make_interval(secs => %s)", (KEEP_LOG_S,))

    # ---- nodes ----------------------------------------------------------------------------------

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        """Take this node's row: refused while another process holds the id with a live lease."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_database()))", (ADVISORY_KEY + 2,))
            cur.execute(
                "SELECT state, host, pid, extract(epoch FROM now() - heartbeat),"
                " lease_until > now() FROM nodes WHERE id = %s",
                (self.node_id,),
            )
            row = cur.fetchone()
            if row is not None and row[0] == "alive" and row[4]:
                raise StoreError(
                    f"node id {self.node_id!r} is in use by a running node (pid {row[2]} on {row[1]},"
                    f" heartbeat {float(row[3]):.1f} s ago); give this node another --node-id"
                )
            cur.execute("SELECT slot FROM nodes WHERE state = 'alive' AND lease_until > now()")
            taken = {r[0] for r in cur.fetchall()}
            while True:
                cur.execute("SELECT nextval('shoal_incarnation')")
                inc = int(cur.fetchone()[0])  # type: ignore[index]
                if inc % 1024 not in taken:
                    break
            self.incarnation, self.slot = inc, inc % 1024
            cur.execute(
                "INSERT INTO nodes (id, incarnation, slot, state, host, pid, url, shoal_version, started,"
                " heartbeat, lease_until, workers) VALUES (%s, %s, %s, 'alive', %s, %s, %s, %s, now(), now(),"
                " now() + make_interval(secs => %s), %s) ON CONFLICT (id) DO UPDATE SET"
                " incarnation = EXCLUDED.incarnation, slot = EXCLUDED.slot, state = 'alive',"
                " host = EXCLUDED.host, pid = EXCLUDED.pid, url = EXCLUDED.url,"
                " shoal_version = EXCLUDED.shoal_version, started = now(), heartbeat = now(),"
                " lease_until = EXCLUDED.lease_until, workers = EXCLUDED.workers",
                (
                    self.node_id,
                    inc,
                    self.slot,
                    self.info.host,
                    self.info.pid,
                    self.info.url,
                    self.info.shoal_version,
                    self.lease_s,
                    self.workers,
                ),
            )

    def set_url(self, url: str | None) -> None:
        """The node's gateway URL, shown to other nodes (written with the next heartbeat)."""
        self.info = attrs.evolve(self.info, url=url)

    def _heartbeat(self) -> None:
        """Renew this node's lease, mark nodes whose lease ran out dead, report the cluster."""
        if self._broken is not None:
            return

        def beat(conn: psycopg.Connection[Any]) -> tuple[bool, list[NodeRow], dict[str, float]]:
            with conn.cursor() as cur:
                cur.execute(
                    "UPDATE nodes SET heartbeat = now(), lease_until = now() + make_interval(secs => %s),"
                    " workers = %s, url = %s WHERE id = %s AND incarnation = %s AND state = 'alive'"
                    " RETURNING id",
                    (self.lease_s, self.workers, self.info.url, self.node_id, self.incarnation),
                )
                kept = cur.fetchone() is not None
                grace = self._grace_s()
                if grace <= 0:
                    cur.execute(
                        "UPDATE nodes SET state = 'dead' WHERE state = 'alive' AND lease_until <= now()"
                    )
                rows = in_grace(read_nodes(cur), grace)
                cur.execute("DELETE FROM model_parks WHERE until < extract(epoch FROM now())")
                cur.execute("SELECT model, until FROM model_parks")
                parks = {m: (float(u) if u is not None else math.inf) for m, u in cur.fetchall()}
                cur.execute(
                    "SELECT version, overrides FROM cluster_config WHERE id = 1 AND version > %s",
                    (self._config_version,),
                )
                newer = cur.fetchone()
                if newer is not None:
                    self._config_version = int(newer[0])
                    self._push_config(ClusterConfig(int(newer[0]), dict(newer[1])))
                return kept, rows, parks

        self._beats += 1
        try:
            if self._beats % PRUNE_EVERY == 0:
                self._retrying("pruning", self._prune)
            kept, rows, parks = self._retrying("the heartbeat", beat)
            lost = False
            if not kept:
                log.error(
                    "pgstore: node %s lost its lease (paused or cut off too long); re-registering",
                    self.node_id,
                )
                self._retrying("re-registering", self._register)
                lost = True
                kept, rows, parks = self._retrying("the heartbeat", beat)
        except (psycopg.Error, StoreError) as exc:
            log.warning("pgstore: heartbeat failed: %s", _why(exc, self.url))
            return
        self._push(NodesReport(tuple(rows), self.incarnation, lost, parks))

    def _stop_node(self) -> None:
        """Leave the cluster cleanly: the row says stopped, so nobody waits out its lease."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            return
        with contextlib.suppress(psycopg.Error), self._conn.transaction():
            self._conn.execute(
                "UPDATE nodes SET state = 'stopped', lease_until = now() WHERE id = %s AND incarnation = %s",
                (self.node_id, self.incarnation),
            )


def in_grace(rows: list[NodeRow], grace_s: float) -> list[NodeRow]:
    """The nodes as a node just back from an outage must take them: the others' leases ran out
    while nobody could renew one, so each alive row gets `grace_s` more (the rest of a lease since
    this node reconnected) to say it is alive too, before its workers' attempts are taken for gone.
    The rows as they are once the grace is over (`grace_s <= 0`)."""
    if grace_s <= 0:
        return rows
    left = round(grace_s, 3)
    return [
        attrs.evolve(r, lease_left_s=max(r.lease_left_s, left)) if r.state == "alive" else r for r in rows
    ]


__all__ = ["KEEP_EVENTS", "KEEP_LOG_S", "PRUNE_EVERY", "PgMembership", "in_grace"]
