"""`open_swarm`: the whole swarm in one `async with`, and the `SwarmHandle` every operator uses.

    async with open_swarm(SwarmConfig()) as swarm:
        task = await swarm.submit({"prompt": "hello"})
        print((await swarm.wait(task.id)).result)

The handle is a thin façade: each call goes to the actor that owns the state (tasks → QueueActor,
workers → SwarmSupervisor, numbers → MetricsActor); worker listings read the roster the
supervisor publishes (actors/swarm_supervisor.py says why they stay synchronous). The handle owns
only the current configuration: patches are validated whole, persisted to
`<state_dir>/config-overrides.json` (so a restart keeps them) and announced as `config.changed`;
every actor reads the config through a getter, so a change takes effect at its next decision. The
gateway, the dashboard and the CLI all go through this handle. In a cluster the handle also sends
`config set` to the cluster's configuration and applies other nodes' changes (docs/operations.md).

It stays one module (about 850 lines) on purpose: it is the embedding API, one method per gateway
method of the method table (tests/test_method_table.py reads it), and a reader finds the whole API of
an embedded swarm in one class; what it composes lives in the actors it calls.
"""

from __future__ import annotations

import base64
import builtins
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from ..protocols.config import SwarmConfig, config_to_dict, patch_config, structure, unstructure
from ..protocols.errors import Conflict, Elsewhere, NotFound, StoreError, ValidationError
from ..protocols.tasks import TERMINAL_STATES, Task, TaskSpec, TaskState
from ..protocols.text import check_text
from ..protocols.workers import AnswerQuestion, Resize, SendInput, WorkerCommand, WorkerInfo, WorkerState
from ..runtime.actor import ActorGone, Address
from ..runtime.eventbus import EventBus, Subscription
from . import queue as q
from . import swarm_messages as sm
from .alerts import AlertActor
from .auth import resolve_state_dir
from .capacity import CapacityMeter, memory_fit
from .cluster import ClusterConfig, node_of
from .clusterview import cluster_status, local_node, node_entry, shown_config, shown_partial
from .metrics import MetricsActor
from .scaler import ScalerActor, ScalerInputs
from .swarm_messages import Roster
from .workrepos import check_repos, workspace_repos
from .workspace import WorkspaceError
from .worktree import Worktrees, read_artifact
from .worktree import diff as worktree_diff
from .worktree import merge as worktree_merge

VERSION = "0.1.0"
FAILING_MIN_ATTEMPTS = 3  # a model is `failing` once over half of at least this many recent attempts failed
OVERRIDES_FILE = "config-overrides.json"
CALL_TIMEOUT_S = 30.0  # a call to the worker supervisor (its mailbox also carries every worker's reports)


# sections that describe one machine: in a cluster `config set` keeps them on the node it reached
NODE_LOCAL = frozenset({"state_dir", "store", "node", "gateway", "http", "log"})


def _deep_merge(base: dict[str, Any], partial: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in partial.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def prepare_state_dir(config: SwarmConfig) -> Path:
    """Create the state directory and check it is writable (a clear StoreError otherwise)."""
    state_dir = resolve_state_dir(config.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"state directory {state_dir} cannot be created: {exc.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StoreError(f"state directory {state_dir} is not writable")
    return state_dir


def load_overrides(state_dir: Path, config: SwarmConfig) -> tuple[SwarmConfig, dict[str, Any]]:
    """Apply the hot patches persisted by an earlier run (a bad file is reported, not ignored)."""
    path = state_dir / OVERRIDES_FILE
    if not path.exists():
        return config, {}
    try:
        overrides = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValidationError(str(path), f"cannot read persisted configuration: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValidationError(str(path), "persisted configuration must be an object")
    return patch_config(config, overrides), overrides


class SwarmTreeView(Protocol):
    """What the handle needs of the supervision tree (actors/tree.py builds it)."""

    async def view(self) -> builtins.list[dict[str, Any]]: ...

    async def kill(self, path: str, reason: str) -> None: ...


MAX_ARTIFACT_REPLY = 16 * 1024 * 1024  # an artifact read over the gateway carries at most this much


class SwarmHandle:
    """What a program, the gateway, the dashboard and the CLI use to drive a running swarm."""

    def __init__(
        self,
        *,
        config: SwarmConfig,
        overrides: dict[str, Any],
        state_dir: Path,
        bus: EventBus,
        queue: Address[q.QueueMsg],
        workers: Address[sm.SupervisorMsg],
        roster: Callable[[], Roster],
        metrics: MetricsActor,
        alerts: AlertActor,
        tree: SwarmTreeView,
        token: str,
        worktrees: Worktrees | None = None,
        base: SwarmConfig | None = None,
    ) -> None:
        self._config = config
        self._overrides = overrides
        # a cluster: the configuration before any override (file, flags), and the cluster's overrides
        # (what `config set` at any node changed); this node's config is base <- local <- cluster
        self._base = base
        self._cluster_config = ClusterConfig(0, {})
        self.state_dir = state_dir
        self.bus = bus
        self._queue = queue
        self._workers = workers  # the worker supervisor: every change to a worker goes through it
        self._roster = roster  # what it published last: synchronous reads
        self.metrics = metrics
        self.token = token
        self.token_file: Path | None = None
        self.alerts = alerts
        self._tree = tree
        self._worktrees = worktrees or Worktrees(state_dir / "workspaces")  # their per-repo locks
        # a cluster's store (PgStore): its nodes, this node's id; None on SQLite. The tree may set a
        # getter; without one the store is found as the bus's relay (a cluster store attaches itself)
        self.cluster_store: Callable[[], Any] | None = None
        # the servers report where they listen each time they (re)start: a restart may get a new port
        self._gateway_url: str | None = None
        self.http_url: str | None = None
        self.http_address: tuple[str, int] | None = None
        self.started_at = time.time()
        self._config_lock = trio.Lock()
        self._stopped = False
        self.capacity = CapacityMeter(self.get_config, lambda: self._roster().processes())
        self.scaler: ScalerActor | None = None  # set by the tree once the services start

    @property
    def gateway_url(self) -> str | None:
        return self._gateway_url

    @gateway_url.setter
    def gateway_url(self, url: str | None) -> None:
        """Where the gateway listens; in a cluster also written to this node's row (`nodes.list`'s url),
        so an operator looking at one node finds the others' gateways."""
        self._gateway_url = url
        store = self._store()
        if store is not None and hasattr(store, "set_url"):
            store.set_url(url)

    # ---- the cluster ------------------------------------------------------------------------------

    def _store(self) -> Any | None:
        """The cluster's shared store, None on a one-node (SQLite) swarm."""
        store = self.cluster_store() if self.cluster_store is not None else None
        if store is None:
            store = getattr(getattr(self.bus, "relay", None), "__self__", None)
        return store if getattr(store, "shared", False) else None

    def nodes(self) -> dict[str, Any]:
        """Every node of the cluster as this node's last heartbeat saw it (`nodes.list`); a one-node
        swarm answers with itself, so a client needs no special case."""
        store = self._store()
        if store is None:
            workers = self._roster().views
            present = sum(1 for w in workers if w.state not in (WorkerState.STOPPED, WorkerState.CRASHED))
            node = local_node(
                self._config, url=self.gateway_url, workers=present, started=self.started_at, version=VERSION
            )
            return {"node_id": node["id"], "cluster": False, "nodes": [node]}
        rows = tuple(store.nodes)
        return {
            "node_id": store.node_id,
            "cluster": True,
            "nodes": [node_entry(row, store.node_id) for row in rows],
        }

    # ---- configuration ----------------------------------------------------------------------------

    def shown_config(self) -> dict[str, Any]:
        """The configuration as clients see it (`swarm.config.get`): store.url's password reads ***."""
        return shown_config(self._config)

    @property
    def config(self) -> SwarmConfig:
        return self._config

    def get_config(self) -> SwarmConfig:
        return self._config

    async def config_patch(self, partial: Mapping[str, Any]) -> SwarmConfig:
        """Validate and apply a partial config live; persisted so a restart keeps it. In a cluster
        every section but this machine's own (NODE_LOCAL) goes to the cluster's configuration in
        PostgreSQL, which every node applies within a heartbeat."""
        if not isinstance(partial, Mapping):
            raise ValidationError("partial", "must be an object", partial)
        check_text(partial, "partial")
        async with self._config_lock:  # two clients patching at once: one after the other
            new = patch_config(self._config, partial)  # the whole result is checked first
            store = self._store()
            shared = {k: v for k, v in partial.items() if k not in NODE_LOCAL} if store is not None else {}
            local = {k: v for k, v in partial.items() if k not in shared}
            if shared:
                assert store is not None
                while True:  # another node's patch in between: merge onto it and try again
                    current = await store.load_config()
                    stored = await store.put_config(_deep_merge(current.overrides, shared), current.version)
                    if stored is not None:
                        break
                self._cluster_config = stored
            if local or store is None:
                overrides = _deep_merge(self._overrides, local)
                await trio.to_thread.run_sync(_write_json_atomic, self.state_dir / OVERRIDES_FILE, overrides)
                self._overrides = overrides
            if store is not None and self._base is not None:
                new = self._composed()
            self._config = new
            await self._queue.send(q.UpdateConfig(new))
            self.bus.publish("config.changed", {"partial": shown_partial(partial)})
            return new

    def _composed(self) -> SwarmConfig:
        """base <- this node's overrides <- the cluster's (raises ValidationError)."""
        assert self._base is not None
        return patch_config(patch_config(self._base, self._overrides), self._cluster_config.overrides)

    async def apply_cluster_config(self, item: ClusterConfig, *, quiet: bool = False) -> None:
        """Another node changed the cluster's configuration: apply it here (`config.applied` names
        this node and the version; a patch this node cannot take is reported, not applied)."""
        async with self._config_lock:
            if item.version <= self._cluster_config.version or self._base is None:
                return
            previous = self._cluster_config
            self._cluster_config = item
            try:
                new = self._composed()
            except ValidationError as exc:
                self._cluster_config = previous
                self.bus.publish(
                    "config.rejected", {"node": self._node_id(), "version": item.version, "error": str(exc)}
                )
                return
            self._config = new
            await self._queue.send(q.UpdateConfig(new))
            if not quiet:
                self.bus.publish("config.applied", {"node": self._node_id(), "version": item.version})

    def _here(self, worker_id: Any) -> None:
        """A worker of another node of the cluster is not found here: say which node runs it and
        where its gateway is (attach, input and answers go there)."""
        store = self._store()
        if store is None or not isinstance(worker_id, str):
            return
        node = node_of(worker_id)
        if node is None or node == store.node_id:
            return
        row = next((n for n in store.nodes if n.id == node), None)  # None: joined since the last beat
        raise Elsewhere(worker_id, node, row.url if row is not None else None)

    def _node_id(self) -> str | None:
        store = self._store()
        return store.node_id if store is not None else None

    # ---- tasks ------------------------------------------------------------------------------------

    @staticmethod
    def _spec(task: TaskSpec | Mapping[str, Any], where: str = "task") -> TaskSpec:
        check_text(task, where)  # text the store, the wire and a terminal can all encode
        if isinstance(task, TaskSpec):
            spec = task
        elif not isinstance(task, Mapping):
            raise ValidationError(where, "must be an object", task)
        else:
            spec = structure(dict(task), TaskSpec, where)
        if isinstance(spec.prompt, str):  # argv (oneshot) and terminals take no NUL
            check_text(spec.prompt, f"{where}.prompt", nul=True)
        return spec

    async def submit(self, task: TaskSpec | Mapping[str, Any]) -> Task:
        # a task's own repository: allowed, a git repository, kept resolved
        specs = await check_repos((self._spec(task),), self._config)
        tasks: list[Task] = await self._queue.call(q.Submit(specs))
        return tasks[0]

    async def submit_many(self, tasks: Sequence[TaskSpec | Mapping[str, Any]]) -> builtins.list[Task]:
        if isinstance(tasks, str | bytes | Mapping) or not isinstance(tasks, Sequence):
            raise ValidationError("tasks", "must be a list of tasks", tasks)
        specs = tuple(self._spec(t, f"tasks[{i}]") for i, t in enumerate(tasks))
        specs = await check_repos(specs, self._config)
        result: builtins.list[Task] = await self._queue.call(q.Submit(specs))
        return result

    async def get(self, task_id: str) -> Task:
        check_text(task_id, "id")
        task: Task = await self._queue.call(q.GetTask(task_id))
        return task

    async def diff(self, task_id: str, attempt: int | None = None, stat: bool = False) -> dict[str, Any]:
        """The change a task's attempt left in its worktree (the latest attempt that left one, or
        `attempt`): its record (branch, base, head, files, insertions, deletions) and the patch text
        (`stat`: git's --stat instead). Conflict when there is none (e.g. not a worktree profile)."""
        task = await self.get(task_id)
        kept = [a for a in task.attempts if a.workspace and a.workspace.get("head")]
        if attempt is not None:
            kept = [a for a in kept if a.n == attempt]
            if not any(a.n == attempt for a in task.attempts):
                raise NotFound("attempt", f"{task_id}#{attempt}")
        if not kept:
            which = f"attempt {attempt}" if attempt is not None else "no attempt"
            raise Conflict(
                f"task {task_id}: {which} left a change in a worktree (its profile's workspace.mode is not "
                '"worktree", or the attempt has not ended)'
            )
        chosen = kept[-1]
        assert chosen.workspace is not None
        try:
            patch = await worktree_diff(chosen.workspace, stat=stat)
        except WorkspaceError as exc:
            raise Conflict(f"task {task_id}, attempt {chosen.n}: {exc}") from None
        return {"id": task_id, "attempt": chosen.n, **chosen.workspace, **patch}

    async def merge(
        self, task_id: str, attempt: int | None = None, into: str | None = None, squash: bool = False
    ) -> dict[str, Any]:
        """Merge the change a task's attempt left (as `diff` picks it) into branch `into` (default: the
        repository's checked-out branch). Conflict naming the files when it does not merge cleanly;
        then nothing was changed."""
        if into is not None:
            check_text(into, "into")
        change = await self.diff(task_id, attempt, stat=True)
        task = await self.get(task_id)
        title = next((line.strip() for line in task.prompt.splitlines() if line.strip()), task_id)[:72]
        message = f"{title}\n\nShoal task {task_id}, attempt {change['attempt']} ({change['branch']})\n"
        try:
            done = await worktree_merge(self._worktrees, change, into=into, squash=squash, message=message)
        except WorkspaceError as exc:
            raise Conflict(f"task {task_id}: {exc}") from None
        out = {"id": task_id, "attempt": change["attempt"], "branch": change["branch"], **done}
        if done["merged"]:
            self.bus.publish("task.merged", {"task_id": task_id, **out})
        return out

    async def artifacts(
        self, task_id: str, attempt: int | None = None, name: str | None = None
    ) -> dict[str, Any]:
        """The files a task's attempt kept (workspace.artifacts): the list, or with `name` that file's
        bytes (base64, at most MAX_ARTIFACT_REPLY bytes). The latest attempt that kept any by default."""
        if name is not None:
            check_text(name, "name")
        task = await self.get(task_id)
        if attempt is not None and not any(a.n == attempt for a in task.attempts):
            raise NotFound("attempt", f"{task_id}#{attempt}")
        kept = [
            a
            for a in task.attempts
            if a.workspace and "artifacts" in a.workspace and (attempt is None or a.n == attempt)
        ]
        if not kept:
            raise Conflict(f"task {task_id}: no attempt kept artifacts (the profile's workspace.artifacts)")
        chosen = kept[-1]
        ws = chosen.workspace or {}
        listed = {
            "id": task_id,
            "attempt": chosen.n,
            "artifacts": ws.get("artifacts", []),
            "missing": ws.get("artifacts_missing", []),
            "skipped": ws.get("artifacts_skipped", []),
        }
        if name is None:
            return listed
        try:
            data = await trio.to_thread.run_sync(
                read_artifact, self.state_dir, task_id, chosen.n, name, MAX_ARTIFACT_REPLY
            )
        except WorkspaceError as exc:
            raise Conflict(str(exc)) from None
        except OSError as exc:
            raise Conflict(f"cannot read {name}: {exc.strerror}") from None
        return {"id": task_id, "attempt": chosen.n, "name": name, "size": len(data),
                "encoding": "base64", "data": base64.b64encode(data).decode("ascii")}  # fmt: skip

    async def _worktree_repos(self) -> builtins.list[str]:
        """The profiles' repositories: each `workspace.repo`, and the worktree profiles' allowed ones."""
        return await trio.to_thread.run_sync(workspace_repos, self._config)

    async def workspaces(self) -> dict[str, Any]:
        """Shoal's worktrees (path, head, branch, the worker using it) and its task branches."""
        return await self._worktrees.list(await self._worktree_repos())

    async def prune_workspaces(
        self, older_than_s: float | None = None, base: str | None = None
    ) -> dict[str, Any]:
        """Remove worktrees no worker uses and task branches merged into `base` (default: each
        repository's HEAD) or older than `older_than_s`; a branch a live worker has out is kept."""
        if base is not None:
            check_text(base, "base")
        pruned = await self._worktrees.prune(
            await self._worktree_repos(), base=base, older_than_s=older_than_s, now=time.time()
        )
        gone: builtins.list[str] = []  # artifacts of tasks the store no longer keeps (retention)
        folder = self.state_dir / "artifacts"
        names = await trio.to_thread.run_sync(lambda: sorted(os.listdir(folder)) if folder.is_dir() else [])
        for hexed in names:
            try:
                task_id = bytes.fromhex(hexed).decode("utf-8", "surrogatepass")
            except ValueError:
                continue  # not one of ours
            try:
                await self.get(task_id)
            except (NotFound, ValidationError):
                await trio.to_thread.run_sync(shutil.rmtree, folder / hexed, True)
                gone.append(task_id)
        return {**pruned, "removed_artifacts": gone}

    async def list(
        self, state: TaskState | str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[builtins.list[Task], str | None]:
        if isinstance(state, str) and not isinstance(state, TaskState):
            try:
                state = TaskState(state)
            except ValueError:
                raise ValidationError(
                    "state", f"must be one of {[s.value for s in TaskState]}", state
                ) from None
        result: tuple[builtins.list[Task], str | None] = await self._queue.call(
            q.ListTasks(state, limit, cursor)
        )
        return result

    async def cancel(self, task_id: str) -> Task:
        check_text(task_id, "id")
        task: Task = await self._queue.call(q.CancelTask(task_id))
        return task

    async def retry(self, task_id: str) -> Task:
        check_text(task_id, "id")
        task: Task = await self._queue.call(q.RetryTask(task_id))
        return task

    async def skip(self, task_id: str) -> Task:
        check_text(task_id, "id")
        task: Task = await self._queue.call(q.SkipTask(task_id))
        return task

    async def boost(self, task_id: str, priority: int) -> Task:
        check_text(task_id, "id")
        task: Task = await self._queue.call(q.BoostTask(task_id, priority))
        return task

    async def assign(self, task_id: str, worker_id: str) -> Task:
        check_text({"id": task_id, "worker": worker_id})
        try:
            self._here(worker_id)
            self._roster().info(worker_id)  # NotFound for an unknown worker
        except Elsewhere:
            pass  # a worker of another live node: the queue checks it against the cluster's nodes
        task: Task = await self._queue.call(q.AssignTask(task_id, worker_id))
        return task

    async def complete(
        self, task_id: str, attempt: int, status: str, result: str | None = None, reason: str | None = None
    ) -> Task:
        check_text({"id": task_id, "result": result, "reason": reason})
        if status == "done":
            msg = q.CompleteTask(task_id, attempt, "done", result, reason)
        elif status == "failed":
            msg = q.CompleteTask(task_id, attempt, "failed", result, reason)
        else:
            raise ValidationError("status", 'must be "done" or "failed"', status)
        task: Task = await self._queue.call(msg)
        return task

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task's snapshot once it is terminal (TimeoutError after `timeout` seconds)."""
        task: Task = await self._queue.call(
            q.WaitTask(task_id), timeout=math.inf if timeout is None else timeout
        )
        if task.state not in TERMINAL_STATES:  # the queue's contract; never silently hand back less
            raise Conflict(f"task {task_id!r} answered wait in state {task.state}")
        return task

    async def queue_stats(self) -> Any:
        return await self._queue.call(q.QueueStats())

    # ---- events -----------------------------------------------------------------------------------

    def events(
        self, patterns: Sequence[str] = ("*",), size: int = 1000, *, remote: bool = True, outage: bool = False
    ) -> Subscription:
        """`remote=False`: this node's events only (in a cluster every node's reach every bus).
        `outage=True`: this node's events at once while the cluster's store cannot write them, with
        the last seq (EventBus.deliver_now), then not again."""
        return self.bus.subscribe(patterns, size, remote=remote, outage=outage)

    # ---- the swarm --------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        sup: sm.SupervisorStatus = await self._workers.call(sm.BreakerStatus(), CALL_TIMEOUT_S)
        stats = await self.queue_stats()
        state = "stopped" if self._stopped else sup.state
        return {
            "state": state,
            "reason": sup.halt_reason,
            "evidence": sup.halt_evidence,
            "halted_at": sup.halted_at,
            "workers": dict(self._roster().counts),
            "queue": {str(k): v for k, v in stats.counts.items()},
            "breaker": sup.breaker,
            "models": self._model_states(stats),
            "needs_input": self._needs_input(),
            "retrying": self._retrying_workers(),
            "capacity": await self._capacity(),
            "since": self.started_at,
            "version": VERSION,
            "gateway_url": self.gateway_url,
            "http_url": self.http_url,
            "state_dir": str(self.state_dir),
            "cluster": self.cluster(),
            "tree": await self._tree.view(),
        }

    def cluster(self) -> dict[str, Any] | None:
        """`status()["cluster"]`: this node's id, the cluster's node and alive counts, the store
        (redacted); None on a one-node swarm."""
        store = self._store()
        return None if store is None else cluster_status(store)

    async def _capacity(self) -> dict[str, Any]:
        """How many more workers the swarm may start and what holds it back: max_workers, free memory
        above node.min_free_memory_mb (each worker costing its profile's memory_mb, measured peak or
        estimate), a parked model, the breaker. `held_back_by` is the scaler's latest decision's."""
        config = self._config
        view = await self.capacity.view()
        workers = self._roster().views
        fit, reserved = memory_fit(view, workers)
        present = sum(1 for w in workers if w.state not in (WorkerState.STOPPED, WorkerState.CRASHED))
        room = max(0, config.scaling.max_workers - present)
        decision = self.scaler.last_decision if self.scaler is not None else None
        summary = decision.summary if decision is not None else {}
        return {
            "free_memory_mb": view.free_mb,
            "min_free_memory_mb": view.floor_mb,
            "memory_error": view.error,
            "profile": view.profile,
            "worker_memory_mb": view.cost_mb,
            "worker_memory_source": view.source,
            "reserved_mb": round(reserved, 1),
            "profiles": self.capacity.snapshot(),
            "workers": present,
            "max_workers": config.scaling.max_workers,
            "room": room,
            "memory_fit": fit,
            "can_start": room if fit is None else min(room, fit),
            "held_back_by": summary.get("held_back_by"),
            "limited_by": summary.get("limited_by", []),
            "unmet": summary.get("unmet", 0),
            # ready work of a category no serving worker takes, by the model a worker is wanted for
            "stranded_categories": (summary.get("categories") or {}).get("stranded", {}),
        }

    async def kill_child(self, path: str, reason: str = "killed by operator") -> None:
        """End a child of the supervision tree as a crash (`observers/metrics`, `services/gateway`,
        `queue`, ...): its restart policy acts, as on a real crash. NotFound for an unknown path."""
        check_text({"path": path, "reason": reason})
        await self._tree.kill(path, reason)

    def _model_states(self, stats: Any) -> builtins.list[dict[str, Any]]:
        """Each model's state for status: `parked` (rate-limited until `until`, with the limit's
        message), `failing` (most of its recent attempts failed), else `available`; known models
        first, then any other a worker runs or the queue parked."""
        views = self._roster().views
        names = list(self._config.models.known)
        for name in [*(v.model for v in views), *stats.parked_models, *stats.model_recent]:
            if name is not None and name not in names:
                names.append(name)
        for name in stats.quota:
            if name not in names:
                names.append(name)
        out = []
        for name in names:
            until = stats.parked_models.get(name)
            failed, finished = stats.model_recent.get(name, (0, 0))
            if until is not None:
                state, reason = "parked", stats.parked_reasons.get(name) or "rate limited"
                if not math.isfinite(until):
                    until = None  # until an operator resumes it (models.resume)
            elif finished >= FAILING_MIN_ATTEMPTS and failed * 2 > finished:
                state, reason = "failing", f"{failed} of its last {finished} attempts failed"
            else:
                state, reason = "available", None
            out.append(
                {
                    "name": name,
                    "state": state,
                    "until": until,
                    "reason": reason,
                    "workers": sum(1 for v in views if v.model == name),
                    "busy": sum(1 for v in views if v.model == name and v.state is WorkerState.BUSY),
                    "recent_failed": failed,
                    "recent_finished": finished,
                    # the latest quota report per window (status, utilization 0..1, resets_at, overage)
                    "quota": stats.quota.get(name, {}),
                    "prefer_fallback": name in stats.hot_models,
                    "retry_storms": stats.retry_storms.get(name, 0),
                    "retrying": sum(
                        1
                        for v in views
                        if v.model == name and v.state is WorkerState.BUSY and self._retrying(v.id)
                    ),
                }
            )
        return out

    def _retrying_workers(self) -> builtins.list[dict[str, Any]]:
        """Busy workers whose agent retries a failed API request, longest retrying first."""
        out = []
        roster = self._roster()
        for view in roster.views:
            entry = roster.live.get(view.id)
            if view.state is not WorkerState.BUSY or entry is None:
                continue
            retry = entry.retrying
            if retry is not None:
                out.append(
                    {"worker": view.id, "task_id": view.task_id, "model": view.model, **unstructure(retry)}
                )
        return sorted(out, key=lambda w: w["since"])

    def _retrying(self, worker_id: str) -> bool:
        entry = self._roster().live.get(worker_id)
        return entry is not None and entry.retrying is not None

    async def models(self) -> builtins.list[dict[str, Any]]:
        """Each model's state (as in `status()["models"]`)."""
        return self._model_states(await self.queue_stats())

    async def pause_model(self, model: str, reason: str = "paused by operator") -> dict[str, Any]:
        """Park `model` until `resume_model`: its workers take no new task (running ones finish)."""
        check_text({"model": model, "reason": reason})
        state: dict[str, Any] = await self._queue.call(q.PauseModel(model, reason))
        return state

    async def resume_model(self, model: str) -> dict[str, Any]:
        """End a model's park, whatever parked it (a usage limit, a retry storm, extra usage, an
        operator). Conflict when it is not parked."""
        check_text(model, "model")
        state: dict[str, Any] = await self._queue.call(q.ResumeModel(model))
        return state

    def _needs_input(self) -> builtins.list[dict[str, Any]]:
        """Workers whose agent waits on a question for a human (a permission prompt, a menu, the trust
        dialog at start-up), longest waiting first."""
        out = []
        roster = self._roster()
        for view in roster.views:
            entry = roster.live.get(view.id)
            asked = entry.needs_input if entry is not None else None
            if entry is not None and asked is not None:
                prompt, since = asked
                options = list(entry.info().needs_input_options)
                out.append(
                    {
                        "worker": view.id,
                        "task_id": view.task_id,
                        "prompt": prompt,
                        "options": options,
                        "since": since,
                    }
                )
        return sorted(out, key=lambda w: w["since"])

    async def send_test_alert(self) -> dict[str, Any]:
        """Deliver a test alert to every configured webhook; the per-webhook outcome."""
        return await self.alerts.send_test()

    async def metrics_snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.metrics.snapshot()
        return snap

    async def halt(self, reason: str = "halted by operator") -> None:
        check_text(reason, "reason")
        await self._workers.call(sm.Halt(reason, {"by": "operator"}), CALL_TIMEOUT_S)

    async def resume(self) -> None:
        await self._workers.call(sm.Resume(), CALL_TIMEOUT_S)

    async def stop(self, drain: bool = False) -> None:
        """Stop taking tasks; workers stop (after their current task when `drain`)."""
        self._stopped = True
        self.bus.publish("swarm.stopping", {"drain": drain})
        await self._workers.call(sm.StopAll(drain), CALL_TIMEOUT_S)

    async def start(self) -> None:
        """Undo `stop`: the scaler spawns workers again."""
        self._stopped = False
        await self._workers.call(sm.StartAgain(), CALL_TIMEOUT_S)
        self.bus.publish("swarm.started", {})

    # ---- workers ----------------------------------------------------------------------------------

    def workers(self, include_ended: bool = False) -> builtins.list[WorkerInfo]:
        return self._roster().infos(include_ended)

    def worker(self, worker_id: str) -> WorkerInfo:
        self._here(worker_id)
        return self._roster().info(worker_id)

    def logs(self, worker_id: str, tail: int | None = None) -> bytes:
        self._here(worker_id)
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            raise ValidationError("tail", "must be a non-negative integer", tail)
        return self._roster().entry(worker_id).output_tail(tail)

    async def pause(self, worker_id: str) -> None:
        self._here(worker_id)
        await self._workers.call(sm.PauseWorker(worker_id), CALL_TIMEOUT_S)

    async def resume_worker(self, worker_id: str) -> None:
        self._here(worker_id)
        await self._workers.call(sm.ResumeWorker(worker_id), CALL_TIMEOUT_S)

    async def restart(self, worker_id: str) -> None:
        self._here(worker_id)
        await self._workers.call(sm.RestartWorker(worker_id), CALL_TIMEOUT_S)

    async def kill(self, worker_id: str) -> None:
        self._here(worker_id)
        await self._workers.call(sm.KillWorker(worker_id), CALL_TIMEOUT_S)

    async def set_model(self, worker_id: str, model: str) -> None:
        self._here(worker_id)
        check_text({"id": worker_id, "model": model}, nul=True)
        await self._workers.call(sm.SetWorkerModel(worker_id, model), CALL_TIMEOUT_S)

    async def set_capabilities(self, worker_id: str, capabilities: Sequence[str] | None) -> None:
        self._here(worker_id)
        check_text({"id": worker_id, "capabilities": capabilities})
        caps = None if capabilities is None else tuple(capabilities)
        await self._workers.call(sm.SetWorkerCapabilities(worker_id, caps), CALL_TIMEOUT_S)

    async def attach(self, worker_id: str) -> tuple[bytes, trio.MemoryReceiveChannel[bytes]]:
        """The worker's output so far and a bounded channel of what it writes from now on (a viewer
        that falls behind loses chunks; the channel ends with the worker). `detach` when done."""
        self._here(worker_id)
        attached: tuple[bytes, trio.MemoryReceiveChannel[bytes]] = await self._workers.call(
            sm.Attach(worker_id), CALL_TIMEOUT_S
        )
        return attached

    def detach(self, worker_id: str, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        """Stop a viewer's output: its channel closes now; the worker forgets it at once, or on its
        next output when the supervisor's mailbox is full."""
        channel.close()
        try:
            self._workers.try_send(sm.Detach(worker_id, channel))
        except ActorGone:
            pass

    async def send_input(self, worker_id: str, data: bytes, force: bool = False) -> None:
        self._here(worker_id)
        info = self._roster().info(worker_id)
        if info.state is WorkerState.BUSY and not force and info.needs_input is None:
            raise Conflict(f"worker {worker_id} is busy with task {info.task_id}; pass force to type anyway")
        await self._address_of(worker_id).send(SendInput(data))

    async def answer(self, worker_id: str, choice: int | str) -> dict[str, Any]:
        """Answer the question worker `worker_id` waits on: an option number (1-based) or text (an
        option's label, or free text for a question without options). Returns `{id, question,
        choice, label}`; Conflict when the worker waits on nothing, ValidationError naming `choice`
        when it is out of range or names no option."""
        self._here(worker_id)
        check_text({"id": worker_id, "choice": choice}, nul=True)
        if isinstance(choice, bool) or not isinstance(choice, int | str):
            raise ValidationError("choice", "must be an option number or text", choice)
        address = self._address_of(worker_id)
        try:
            result: dict[str, Any] = await address.call(AnswerQuestion(choice))
        except ActorGone:
            raise Conflict(f"worker {worker_id} is not waiting on a question (it ended)") from None
        return result

    async def resize(self, worker_id: str, rows: int, cols: int) -> None:
        self._here(worker_id)
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ValidationError(name, "must be an integer from 1 to 1000", value)
        await self._address_of(worker_id).send(Resize(rows, cols))

    def _address_of(self, worker_id: str) -> Address[WorkerCommand]:
        """A live worker's address, for what goes to the worker itself (input, answers, resizes)."""
        address = self._roster().entry(worker_id).address
        if address is None:
            raise Conflict(f"worker {worker_id} is still starting")
        return address

    # ---- for the scaler ------------------------------------------------------------------------------

    async def scaler_inputs(self) -> ScalerInputs:
        stats = await self.queue_stats()
        views = self._roster().views
        running: dict[str | None, int] = {}
        for view in views:
            if view.state is WorkerState.BUSY:
                running[view.model] = running.get(view.model, 0) + 1
        store = self._store()
        others = 0
        if store is not None:  # a cluster: scaling.max_workers holds for every node together
            store.workers = len(views)
            others = sum(n.workers for n in store.nodes if n.alive and n.id != store.node_id)
        return ScalerInputs(
            others=others,
            node_max_workers=self._config.node.max_workers,
            ready_by_model=stats.ready_by_model,
            ready_by_category=stats.ready_by_category,
            running_by_model=running,
            parked=stats.parked_models,
            hot=frozenset(stats.hot_models),
            workers=views,
            halted=self._roster().halted or self._stopped,
            now=trio.current_time(),
            node=await self.capacity.view(),
        )

    async def _scaler_spawn(self, model: str, reason: str) -> None:
        if self._stopped:
            return
        store = self._store()
        if store is not None and not await store.reserve(self._config.scaling.max_workers):
            return  # another node took the cluster's last slot since the decision
        await self._workers.call(sm.Spawn(model, reason), CALL_TIMEOUT_S)

    async def _scaler_retire(self, worker_id: str, reason: str) -> bool:
        retired: bool = await self._workers.call(sm.Retire(worker_id, reason), CALL_TIMEOUT_S)
        return retired


__all__ = ["VERSION", "SwarmHandle", "config_to_dict"]
