"""`open_swarm`: the swarm as one supervision tree, built with `runtime/supervisor.py`.

    swarm       rest_for_one, 0 restarts: a crash of any child halts the swarm with the evidence
    ├─ store      the SQLite store's lifetime (opened first, closed last)
    ├─ queue      QueueActor: the TaskBook and every task transition
    ├─ observers  one_for_one, 5 restarts in 60 s, backoff 0.5 → 30 s
    │  ├─ metrics
    │  └─ alerts
    ├─ workers    SwarmSupervisor, an actor: worker lineages with their own backoff, intensity, breaker
    └─ services   one_for_one, 5 restarts in 60 s, backoff 0.5 → 30 s
       ├─ scaler
       ├─ http      (when enabled)
       └─ gateway   (when enabled)

Why this shape: the store, the queue and the worker supervisor own the state that tasks live in;
restarting one of them under running workers could only lose or repeat work, so their crash
escalates (and the swarm halts, saying which child crashed and why). Observers and services own
nothing a task needs: they restart with backoff while the swarm keeps serving, and only a crash
loop (more than 5 in 60 s) escalates. Observers start before the workers so that they see every
worker event; services start last and stop first, so no client or scaling step reaches a swarm
that is stopping. Children stop in reverse order, each within its `shutdown_s`.

This module composes; nothing imports it but the service layer and `shoal.runtime`: the servers
(gateway, http) depend on the `SwarmHandle`, never the reverse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ..protocols.config import BackoffConfig, SwarmConfig
from ..protocols.errors import NotFound, ShoalError
from ..runtime.actor import ActorGone, Address
from ..runtime.eventbus import EventBus
from ..runtime.supervisor import ChildSpec, ChildStartFailed, Supervisor, SupervisorEscalation
from . import queue as q
from .alerts import AlertActor
from .auth import load_or_create_token, token_path
from .metrics import MetricsActor
from .parks import ParkKeeper
from .scaler import ScalerActor
from .swarm import VERSION, SwarmHandle, load_overrides, prepare_state_dir
from .swarm_messages import SupervisorMsg
from .swarm_supervisor import SwarmSupervisor
from .taskstore import TaskStore, open_store
from .workcopy import Workspaces

log = logging.getLogger(__name__)

LEAF_MAX_RESTARTS = 5
LEAF_PERIOD_S = 60.0
LEAF_BACKOFF = BackoffConfig(min_s=0.5, max_s=30.0, factor=2.0, jitter=0.1, reset_after_s=60.0)
SERVICE_SHUTDOWN_S = 5.0


class SwarmHalted(ShoalError):
    """The tree's root gave up: a core child crashed, or a subtree crashed more than it may."""

    def __init__(self, escalation: SupervisorEscalation) -> None:
        self.escalation = escalation
        self.child_id = escalation.child_id
        cause = escalation.error
        nested = cause.child_id if isinstance(cause, SupervisorEscalation) else None
        what = f"{escalation.child_id}/{nested}" if nested else escalation.child_id
        if isinstance(cause, SupervisorEscalation):
            cause = cause.error
        why = "returned" if cause is None else repr(cause)
        self.evidence = {"child": what, "error": why}
        super().__init__(f"swarm halted: {what} crashed ({why})")


@attrs.define(eq=False)
class SwarmTree:
    """The running tree's supervisors, for status (`view`) and for operators (`kill`)."""

    root: Supervisor
    subtrees: dict[str, Supervisor] = attrs.field(factory=dict)

    async def view(self) -> list[dict[str, Any]]:
        """Every child of every supervisor, root first: state, restart type, restarts, last crash."""
        return await self._view(self.root, trio.current_time())

    async def _view(self, sup: Supervisor, now: float) -> list[dict[str, Any]]:
        out = []
        for child in await sup.which_children():
            node: dict[str, Any] = {
                "id": child.id,
                "state": child.status,
                "restart": child.restart,
                "restarts": child.restarts,
                "last_crash": child.last_error,
                "last_crash_ago_s": None if child.last_crash_at is None else now - child.last_crash_at,
            }
            sub = self.subtrees.get(child.id)
            if sub is not None and child.status == "running":
                node["strategy"] = sub.strategy
                node["intensity"] = {"max_restarts": sub.max_restarts, "period_s": sub.period_s}
                node["children"] = await self._view(sub, now)
            out.append(node)
        return out

    async def kill(self, path: str, reason: str = "killed by operator") -> None:
        """End a running child as a crash (`observers/metrics`, `queue`, ...): its policy acts."""
        parent, _, child = path.rpartition("/")
        sup = self.root if not parent else self.subtrees.get(parent)
        if sup is None:
            raise NotFound("supervisor", parent)
        await sup.kill_child(child, reason)


def _leaf_supervisor(name: str, bus: EventBus, children: list[ChildSpec]) -> Supervisor:
    return Supervisor(name, children, max_restarts=LEAF_MAX_RESTARTS, period_s=LEAF_PERIOD_S, bus=bus)


def _leaf(child_id: str, start: Any) -> ChildSpec:
    return ChildSpec(child_id, start, shutdown_s=SERVICE_SHUTDOWN_S, backoff=LEAF_BACKOFF)


@asynccontextmanager
async def open_swarm(config: SwarmConfig | None = None, *, serve: bool = False) -> AsyncIterator[SwarmHandle]:
    """Start a swarm; leaving the block stops it (every worker is stopped and reaped).

    `serve=True` (what `shoal serve` passes) turns the gateway and the dashboard on unless the
    configuration says `enabled = false`; embedded swarms start them only when configured `true`.
    A halt of the tree (a core child crashed) raises `SwarmHalted` out of the block.
    """
    base = config or SwarmConfig()
    state_dir = await trio.to_thread.run_sync(prepare_state_dir, base)
    cfg, overrides = await trio.to_thread.run_sync(load_overrides, state_dir, base)
    tok_path = token_path(state_dir, cfg.gateway.token_file)
    token = await trio.to_thread.run_sync(load_or_create_token, tok_path)
    bus = EventBus(replay_size=cfg.gateway.replay_buffer)
    handle_box: list[SwarmHandle] = []

    def current() -> SwarmConfig:
        return handle_box[0].config if handle_box else cfg

    got: dict[str, Any] = {}

    async def run_store(*, task_status: trio.TaskStatus[TaskStore]) -> None:
        store = await open_store(cfg.store, state_dir, cfg.node)
        if store.shared:  # a cluster: every node's events reach every gateway, in one order
            store.attach_bus(bus)  # type: ignore[attr-defined]
        try:
            got["store"] = store
            task_status.started(store)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    async def run_queue(*, task_status: trio.TaskStatus[Address[q.QueueMsg]]) -> None:
        queue = q.QueueActor(cfg, got["store"], bus)
        got["queue_actor"] = queue
        await queue.run(task_status=_Keep(task_status, got, "queue"))

    async def queue_depth() -> dict[str, int]:
        stats = await got["queue"].call(q.QueueStats())
        return dict(stats.counts)

    metrics = MetricsActor(bus, current, time.time, queue_depth)
    alerts = AlertActor(current, bus, lambda: metrics, leads=lambda: leads_alerts(got.get("store")))
    parks = ParkKeeper(state_dir, bus, lambda: got["queue"])  # model parks survive a restart
    observers = _leaf_supervisor(
        "observers",
        bus,
        [_leaf("metrics", metrics.run), _leaf("alerts", alerts.run), _leaf("parks", parks.run)],
    )

    worktrees = Workspaces(state_dir / "workspaces")  # slots outlive a restart of the workers child

    async def run_workers(*, task_status: trio.TaskStatus[Address[SupervisorMsg]]) -> None:
        store = got["store"]
        prefix = f"{store.node_id}:" if store.shared else ""  # a cluster: worker ids name their node
        got["supervisor"] = supervisor = SwarmSupervisor(
            current, bus, got["queue"], workspaces=worktrees, worker_prefix=prefix
        )
        await supervisor.run(task_status=_Keep(task_status, got, "workers"))

    root = Supervisor(
        "swarm",
        [
            ChildSpec("store", run_store, shutdown_s=30.0),
            ChildSpec("queue", run_queue, shutdown_s=30.0),
            ChildSpec("observers", observers.run, shutdown_s=2 * SERVICE_SHUTDOWN_S + 1),
            ChildSpec("workers", run_workers, shutdown_s=_workers_shutdown_s(cfg)),
        ],
        strategy="rest_for_one",
        max_restarts=0,
        period_s=LEAF_PERIOD_S,
        bus=bus,
    )
    tree = SwarmTree(root, {"observers": observers})
    try:
        async with trio.open_nursery() as nursery:
            await _start(nursery.start(_run_root, root, bus))
            handle = SwarmHandle(
                config=cfg,
                overrides=overrides,
                state_dir=state_dir,
                bus=bus,
                queue=got["queue"],
                workers=got["workers"],
                roster=got["supervisor"].roster,
                metrics=metrics,
                alerts=alerts,
                tree=tree,
                token=token,
                worktrees=worktrees,
                base=base,
            )
            handle.token_file = tok_path
            store = got["store"]
            if store.shared:  # the cluster's configuration: applied now, then whenever it changes
                handle.cluster_store = lambda: got.get("store")
                await handle.apply_cluster_config(await store.load_config(), quiet=True)
                nursery.start_soon(_follow_cluster_config, handle, store.config_feed)
            handle_box.append(handle)
            services = _services(handle, cfg, serve)
            tree.subtrees["services"] = services
            spec = ChildSpec("services", services.run, shutdown_s=4 * SERVICE_SHUTDOWN_S + 1)
            await _start(root.start_child(spec))
            bus.publish("swarm.started", {"state_dir": str(state_dir), "version": VERSION})
            try:
                yield handle
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(root)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        halted, rest = group.split(SwarmHalted)
        if halted is not None and (rest is None or rest.split(trio.Cancelled)[1] is None):
            raise _first_leaf(halted) from None
        raise


__all__ = ["VERSION", "SwarmHalted", "SwarmTree", "open_swarm"]


async def _follow_cluster_config(handle: SwarmHandle, feed: trio.MemoryReceiveChannel[Any]) -> None:
    """Another node's `config set` reaches this node within a heartbeat."""
    async for item in feed:
        await handle.apply_cluster_config(item)


class _Keep(trio.TaskStatus[Any]):
    """Records the started value under `key` before passing it on (the next child needs it)."""

    def __init__(self, inner: trio.TaskStatus[Any], box: dict[str, Any], key: str) -> None:
        self._inner, self._box, self._key = inner, box, key

    def started(self, value: Any = None) -> None:
        self._box[self._key] = value
        self._inner.started(value)


def leads_alerts(store: Any) -> bool:
    """Whether this node fires the cluster's alerts: the live node first by id (every node when the
    store is not shared, or while the nodes are not known yet)."""
    if store is None or not store.shared:
        return True
    alive = [n.id for n in store.nodes if n.alive]
    return not alive or min(alive) == store.node_id


def _workers_shutdown_s(config: SwarmConfig) -> float:
    """A stop reaches every worker at once; each climbs its stop ladder (3 rungs of stop_timeout_s)."""
    rungs = [p.stop_timeout_s for p in config.workers.profiles.values()]
    return 3 * max(rungs, default=3.0) + 5.0


async def _run_root(root: Supervisor, bus: EventBus, *, task_status: trio.TaskStatus[Address[Any]]) -> None:
    """The tree's root; its escalation is the swarm's halt, published and raised with the evidence."""
    try:
        await root.run(task_status=task_status)
    except SupervisorEscalation as exc:
        halted = SwarmHalted(exc)
        log.critical("%s", halted)
        bus.publish("swarm.halted", {"reason": str(halted), "evidence": halted.evidence})
        raise halted from exc


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _cause(exc: BaseException) -> BaseException:
    """The error under the start failures of nested supervisors: what a user must read."""
    while isinstance(exc, ChildStartFailed):
        exc = exc.error
    return exc


async def _start(starting: Any) -> Any:
    try:
        return await starting
    except ChildStartFailed as exc:
        raise _cause(exc) from None


async def _stop(root: Supervisor) -> None:
    try:
        await root.stop()
    except ActorGone:
        pass  # it escalated or stopped already


def _services(handle: SwarmHandle, config: SwarmConfig, serve: bool) -> Supervisor:
    """The scaler and the servers: they depend on the handle, so they start once it exists."""
    scaler = ScalerActor(
        handle.get_config, handle.bus, handle.scaler_inputs, handle._scaler_spawn, handle._scaler_retire
    )
    handle.scaler = scaler

    async def run_scaler(*, task_status: trio.TaskStatus[None]) -> None:
        # the capacity meter samples workers' memory for the scaler's inputs: one child with it
        async with trio.open_nursery() as nursery:
            await nursery.start(handle.capacity.run)
            await nursery.start(scaler.run)
            task_status.started()

    children = [_leaf("scaler", run_scaler)]
    http_on = config.http.enabled if config.http.enabled is not None else serve
    gateway_on = config.gateway.enabled if config.gateway.enabled is not None else serve
    if http_on:
        from .http import HttpActor

        async def run_http(*, task_status: trio.TaskStatus[None]) -> None:
            http = HttpActor(handle, config.http, handle.metrics, lambda: handle.gateway_url, handle.token)
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(http.run)
                handle.http_address = (host, port)
                handle.http_url = f"http://{_url_host(host)}:{port}/"
                task_status.started()

        children.append(_leaf("http", run_http))
    if gateway_on:
        from .auth import dashboard_origins
        from .gateway import GatewayActor

        async def run_gateway(*, task_status: trio.TaskStatus[None]) -> None:
            origins = dashboard_origins(handle.http_url)
            gateway = GatewayActor(handle, config.gateway, handle.token, origins)
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(gateway.run)
                scheme = "wss" if config.gateway.tls_cert else "ws"
                handle.gateway_url = f"{scheme}://{_url_host(host)}:{port}/"
                task_status.started()

        children.append(_leaf("gateway", run_gateway))
    return _leaf_supervisor("services", handle.bus, children)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
