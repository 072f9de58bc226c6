"""The scaler's decision: how many workers of which model the swarm should run, as a pure function.

`decide(inputs, scaling, models, memory) -> Decision` does no I/O and reads no clock, so every rule
is tested with plain values; the ScalerActor (actors/scaler.py) feeds it on events and a tick and
carries out what it decides.

The rules (docs/scaling.md has the long form):

* Demand is counted per model in task units: running + pinned ready tasks of that model, plus its
  share of the unpinned ready tasks. Unpinned tasks first fill spare capacity any model already has
  (an idle worker takes any unpinned task), the rest is split by `models.weights` (largest remainder;
  empty weights: all to `models.default`). A parked (rate-limited) model's share goes to the first
  unparked model of `models.fallback[model]`, else the default, else it waits.
* Queue-based target: `desired = ceil(demand / tasks_per_worker)`, reached in one batch.
* Capacity-based growth: a model with waiting work whose busy/serving ratio exceeds
  `utilisation_threshold` grows to `ceil(busy / threshold)`.
* Predictive: arrival rate λ over `arrival_window_s` times the mean run time W (Little's law) is the
  expected number of tasks in flight; when it exceeds the current load, workers are pre-spawned.
* Spawns are capped by `max_workers` (every worker holding a process counts) and
  `max_spawn_per_tick`; workers still STARTING count as capacity, so nothing is spawned twice.
  Halted: no spawns. Parked model: no spawns for it. Below `min_workers`: spawn up to the floor.
* Scale-down (Kubernetes HPA style): up at once, down only to the highest desired count seen over
  the last `stabilisation_s`, and only workers idle for `idle_s`, longest-idle first, at most
  `max_retire_per_tick`, never below `min_workers`, never a busy, starting, refreshing, paused or
  stopping worker. Before the scaler has watched a full window it retires nothing.
* Rebalance: at `max_workers` with unmet demand for one model, an idle worker of a model with more
  workers than it needs now is retired to make room: at once for ready work no live worker can
  take, after `idle_s` for a predicted or utilisation gap; never more than unmet minus the workers
  already stopping.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..protocols.config import ModelsConfig, ScalingConfig
from ..protocols.workers import WorkerState
from .capacity import MemoryView, memory_fit

# Reasons: a closed vocabulary, so metrics can label by reason without unbounded values.
QUEUE = "queue"  # ready tasks need workers
UTILISATION = "utilisation"  # busy/serving above the threshold while work waits
PREDICTIVE = "predictive"  # the arrival rate says more work is coming
MIN_WORKERS = "min_workers"  # keep the floor
IDLE = "idle"  # idle for idle_s, above the stabilised desired count
REBALANCE = "rebalance"  # at max_workers: make room for a model whose work waits
CATEGORY = "category"  # ready work of a category no live worker takes: one worker that takes every category

SERVING = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.REFRESHING})
GONE = frozenset({WorkerState.STOPPED, WorkerState.CRASHED})
UNPINNED_KEY = "*"  # how unpinned demand is written in summaries (JSON keys must be strings)


@attrs.frozen
class WorkerView:
    """What the scaler needs to know of one worker. Times are on the trio clock."""

    id: str
    model: str | None
    state: WorkerState
    idle_since: float | None = None
    task_id: str | None = None
    capabilities: frozenset[str] | None = None  # categories it takes; None: every category


@attrs.frozen
class ScalerInputs:
    """A snapshot of the swarm for one decision. All times are on the trio clock (`now`).

    `ready_by_model` holds claimable tasks by effective model (None: unpinned, any model may take
    it); `running_by_model` running tasks by the model they run on; `parked` the models rate-limited
    right now (model -> reset epoch, shown in summaries only); `arrivals` recent submit times,
    ascending; `mean_run_s` the recent mean run time (the actor fills it in when None);
    `ready_by_category` the categorised claimable tasks by (category, effective model), so work of a
    category no live worker takes (capabilities) is seen.
    """

    ready_by_model: Mapping[str | None, int] = attrs.field(factory=dict)
    ready_by_category: Mapping[tuple[str, str | None], int] = attrs.field(factory=dict)
    running_by_model: Mapping[str | None, int] = attrs.field(factory=dict)
    parked: Mapping[str, float] = attrs.field(factory=dict)
    # models whose quota is nearly used (limits.prefer_fallback_at): unpinned shares go to fallbacks
    hot: frozenset[str] = frozenset()
    workers: Sequence[WorkerView] = ()
    arrivals: Sequence[float] = ()
    halted: bool = False
    now: float = 0.0
    mean_run_s: float | None = None
    node: MemoryView | None = None  # free memory and worker costs; None: memory limits nothing
    # a cluster: workers the other live nodes hold (scaling.max_workers counts the whole cluster)
    others: int = 0
    node_max_workers: int | None = None  # this node's own cap (node.max_workers)


@attrs.frozen
class Decision:
    """What to do now. `spawn`: (model, reason); `retire`: (worker id, reason); `summary` is JSON-ready."""

    spawn: list[tuple[str, str]]
    retire: list[tuple[str, str]]
    desired: dict[str, int]
    summary: dict[str, Any]
    reason: str  # one line for people: why this decision

    @property
    def changes(self) -> bool:
        return bool(self.spawn or self.retire)


class ScalerMemory:
    """What the stabilisation window needs: the highest desired count per model over time.

    Kept as buckets (start, max desired) per model, at most ~`_BUCKETS` per window, so memory and
    cost stay bounded however often the scaler decides. A bucket stays until the next one starts
    before the window, so the value that held at the window's start still counts; the estimate errs
    high by at most one bucket width (scale-down is then slightly later, never earlier).
    """

    _BUCKETS = 256

    def __init__(self) -> None:
        self.started: float | None = None
        self._peaks: dict[str, deque[list[float]]] = {}

    def record(self, now: float, desired: Mapping[str, int], window_s: float) -> None:
        if self.started is None:
            self.started = now
        width = max(window_s / self._BUCKETS, 1e-3)
        for model in set(desired) | set(self._peaks):
            value = float(desired.get(model, 0))
            buckets = self._peaks.setdefault(model, deque())
            if buckets and now < buckets[-1][0] + width:
                buckets[-1][1] = max(buckets[-1][1], value)
            else:
                buckets.append([now, value])
            cutoff = now - window_s
            while len(buckets) >= 2 and buckets[1][0] <= cutoff:
                buckets.popleft()
            if value == 0 and all(b[1] == 0 for b in buckets):
                del self._peaks[model]  # nobody wanted this model within the window: forget it

    def stabilised(self, model: str) -> int:
        """The highest desired count for `model` within the window (as of the last `record`)."""
        buckets = self._peaks.get(model)
        return int(max(b[1] for b in buckets)) if buckets else 0

    def covered(self, now: float, window_s: float) -> bool:
        """Whether the scaler has watched a whole window (before that it cannot know the peak)."""
        return self.started is not None and now - self.started >= window_s


# ---- the pure core -------------------------------------------------------------------------------


def _largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split `total` integer units by `weights`; ties go to the earlier key (deterministic)."""
    positive = {k: w for k, w in weights.items() if w > 0}
    wsum = sum(positive.values())
    if total <= 0 or wsum <= 0:
        return {}
    exact = {k: total * w / wsum for k, w in positive.items()}
    out = {k: math.floor(x) for k, x in exact.items()}
    left = total - sum(out.values())
    order = sorted(positive, key=lambda k: (-(exact[k] - out[k]), list(positive).index(k)))
    for k in order[:left]:
        out[k] += 1
    return {k: v for k, v in out.items() if v > 0}


def _route(model: str, models: ModelsConfig, parked: Mapping[str, float]) -> str | None:
    """Where work meant for `model` goes: itself, its fallback chain, the default, the default's chain."""
    chain = [model, *models.fallback.get(model, ()), models.default, *models.fallback.get(models.default, ())]
    return next((m for m in chain if m not in parked), None)


def _routed_weights(models: ModelsConfig, parked: Mapping[str, float]) -> dict[str, float]:
    """The unpinned split after redirecting parked models' shares to their fallbacks."""
    base = {m: w for m, w in models.weights.items() if w > 0} or {models.default: 1.0}
    out: dict[str, float] = {}
    for model, weight in base.items():
        target = _route(model, models, parked)
        if target is not None:
            out[target] = out.get(target, 0.0) + weight
    return out


def _place_unpinned(
    amount: int, spare: dict[str, int], weights: Mapping[str, float], order: Iterable[str]
) -> tuple[dict[str, int], dict[str, int], int]:
    """Place `amount` unpinned tasks: fill spare capacity first (mutating `spare`), split the rest.

    Returns (absorbed by model, new share by model, unplaceable count).
    """
    absorbed: dict[str, int] = {}
    for model in order:
        if amount <= 0:
            break
        take = min(amount, spare.get(model, 0))
        if take > 0:
            absorbed[model] = take
            spare[model] -= take
            amount -= take
    share = _largest_remainder(amount, weights)
    return absorbed, share, amount - sum(share.values())


def _model_of(model: str | None, models: ModelsConfig) -> str:
    return model if model is not None else models.default


def decide(
    inputs: ScalerInputs, scaling: ScalingConfig, models: ModelsConfig, memory: ScalerMemory
) -> Decision:
    """One scaling decision. Pure apart from recording this decision's desired counts in `memory`."""
    now = inputs.now
    tpw = scaling.tasks_per_worker
    parked = dict(inputs.parked)

    # -- workers, by what they can do
    present = [w for w in inputs.workers if w.state not in GONE]  # hold (or will hold) a process
    live = [w for w in present if w.state is not WorkerState.STOPPING]  # counted for min_workers
    serving: dict[str, int] = {}  # capacity: starting, idle, busy, refreshing
    busy: dict[str, int] = {}
    by_state: dict[str, int] = {}
    for w in present:
        m = _model_of(w.model, models)
        by_state[w.state.value] = by_state.get(w.state.value, 0) + 1
        if w.state in SERVING:
            serving[m] = serving.get(m, 0) + 1
        if w.state is WorkerState.BUSY:
            busy[m] = busy.get(m, 0) + 1

    # -- demand in task units, per model
    ready_pinned: dict[str, int] = {}
    for key, n in inputs.ready_by_model.items():
        if key is not None and n > 0:
            ready_pinned[key] = ready_pinned.get(key, 0) + n
    unpinned = max(0, int(inputs.ready_by_model.get(None, 0)))
    running: dict[str, int] = {}
    for key, n in inputs.running_by_model.items():
        if n > 0:
            m = _model_of(key, models)
            running[m] = running.get(m, 0) + n
    load = {m: running.get(m, 0) + ready_pinned.get(m, 0) for m in set(running) | set(ready_pinned)}

    weights = _routed_weights(models, {**parked, **dict.fromkeys(inputs.hot, 0.0)})
    spare = {m: max(0, n * tpw - load.get(m, 0)) for m, n in serving.items() if m not in parked}
    known_order = [*weights, *models.known, *sorted(serving)]
    absorb_order = list(dict.fromkeys(m for m in known_order if m not in parked))
    absorbed, share, unplaced = _place_unpinned(unpinned, spare, weights, absorb_order)
    for part in (absorbed, share):
        for m, n in part.items():
            load[m] = load.get(m, 0) + n
    queue_desired = {m: math.ceil(n / tpw) for m, n in load.items() if n > 0}

    # -- predictive: Little's law, expected tasks in flight = arrival rate x mean run time
    window = scaling.arrival_window_s
    arrivals = inputs.arrivals
    cutoff = now - window
    if arrivals and arrivals[0] >= cutoff:
        recent = len(arrivals)
    else:
        recent = len(arrivals) - bisect.bisect_left(arrivals, cutoff)
    rate = recent / window
    predicted: float | None = None
    pred_load = dict(load)
    if scaling.predictive and inputs.mean_run_s and rate > 0:
        predicted = rate * inputs.mean_run_s
        # nearest whole worker: expected work of half a worker or more keeps/pre-spawns one; a
        # trickle (2 tasks a minute of 0.2 s) does not pin a warm worker for the whole window
        extra = math.floor(predicted + 0.5) - sum(load.values()) - unplaced
        if extra > 0:
            p_abs, p_share, _ = _place_unpinned(extra, spare, weights, absorb_order)
            for part in (p_abs, p_share):
                for m, n in part.items():
                    pred_load[m] = pred_load.get(m, 0) + n
    pred_desired = {m: math.ceil(n / tpw) for m, n in pred_load.items() if n > 0}

    # -- capacity-based growth: work waits for a model whose workers are nearly all busy
    util_desired: dict[str, int] = {}
    total_serving = sum(serving.values())
    utilisation = sum(busy.values()) / total_serving if total_serving else 0.0
    for m, n in serving.items():
        waiting = ready_pinned.get(m, 0) + absorbed.get(m, 0) + share.get(m, 0)
        threshold = scaling.utilisation_threshold
        if waiting > 0 and n > 0 and busy.get(m, 0) / n > threshold:
            util_desired[m] = math.ceil(busy[m] / threshold) if threshold > 0 else n + 1

    desired: dict[str, int] = {}
    for part in (queue_desired, util_desired, pred_desired):
        for m, n in part.items():
            desired[m] = max(desired.get(m, 0), n)
    desired = {m: n for m, n in desired.items() if n > 0}

    # -- scale up: deficits, capped; parked models wait
    deficit = {m: n - serving.get(m, 0) for m, n in desired.items() if n > serving.get(m, 0)}
    parked_waiting = {m: n for m, n in deficit.items() if m in parked}
    spawnable = {m: n for m, n in deficit.items() if m not in parked}
    cap = scaling.max_workers - inputs.others
    if inputs.node_max_workers is not None:
        cap = min(cap, inputs.node_max_workers)
    room = max(0, cap - len(present))
    # memory: how many more workers fit above node.min_free_memory_mb (None: unknown, no limit)
    fit, reserved = memory_fit(inputs.node, present) if inputs.node is not None else (None, 0.0)
    cap_room = room if fit is None else min(room, fit)
    slots = 0 if inputs.halted else min(scaling.max_spawn_per_tick, cap_room)
    wanted = sum(spawnable.values())
    if wanted <= slots:
        grant = dict(spawnable)
    else:
        order = {m: float(n) for m, n in sorted(spawnable.items(), key=lambda kv: (-kv[1], kv[0]))}
        grant = _largest_remainder(slots, order)
    spawn: list[tuple[str, str]] = []
    for m in sorted(grant, key=lambda k: (-grant[k], k)):
        have = serving.get(m, 0)
        levels = [
            (QUEUE, queue_desired.get(m, 0)),
            (UTILISATION, util_desired.get(m, 0)),
            (PREDICTIVE, pred_desired.get(m, 0)),
        ]
        for k in range(1, grant[m] + 1):
            target = have + k
            spawn.append((m, next((name for name, n in levels if n >= target), QUEUE)))
    unmet_model = wanted - len(spawn)

    # -- categories no serving worker takes (capabilities): a new worker takes every category, so one
    # per model is enough to get such work going; none when this decision already spawns that model
    serving_views = [w for w in present if w.state in SERVING]
    stranded_cats: dict[str, list[str]] = {}
    for (cat, key), n in sorted(inputs.ready_by_category.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if n <= 0 or (key is not None and key in parked):
            continue
        takers = [
            w
            for w in serving_views
            if (wm := _model_of(w.model, models)) == key or (key is None and wm not in parked)
        ]
        if not takers or any(w.capabilities is None or cat in w.capabilities for w in takers):
            continue  # no worker of its model at all (the model demand spawns one), or one takes it
        to = key if key is not None else max(weights, key=lambda k: weights[k], default=None)
        if to is None or (grant.get(to, 0) if key is not None else len(spawn)) > 0:
            continue
        stranded_cats.setdefault(to, []).append(cat)
    cat_unmet = 0
    for m in sorted(stranded_cats):
        if len(spawn) < slots:
            spawn.append((m, CATEGORY))
        else:
            cat_unmet += 1
    unmet = unmet_model + cat_unmet

    # -- the floor
    floor_need = scaling.min_workers - (len(live) + len(spawn))
    if floor_need > 0 and not inputs.halted:
        floor_need = min(floor_need, slots - len(spawn))
        for m, n in _largest_remainder(floor_need, weights).items():
            spawn.extend((m, MIN_WORKERS) for _ in range(n))

    # -- scale down
    memory.record(now, desired, scaling.stabilisation_s)
    covered = memory.covered(now, scaling.stabilisation_s)
    stabilised = {m: max(desired.get(m, 0), memory.stabilised(m)) for m in set(serving) | set(desired)}
    candidates = sorted(
        (
            w
            for w in present
            if w.state is WorkerState.IDLE
            and w.task_id is None
            and w.idle_since is not None
            and now - w.idle_since >= scaling.idle_s
        ),
        key=lambda w: (w.idle_since, w.id),
    )
    retire: list[tuple[str, str]] = []
    taken: dict[str, int] = {}
    taken_ids: set[str] = set()
    budget = scaling.max_retire_per_tick

    def room_above_floor() -> bool:
        return len(live) - len(retire) > scaling.min_workers

    # slots already on their way out (a retired worker runs its stop ladder): a later decision must
    # not free the same slot twice while the first retiree is still stopping
    freeing = by_state.get(WorkerState.STOPPING.value, 0)
    if unmet_model > 0 and not inputs.halted and cap_room - len(spawn) <= 0:
        # At max_workers with work waiting for another model: free the slots held by idle surplus,
        # i.e. idle workers of a model with nothing waiting for it. Ready work that no live worker
        # can take (pinned or escalated to a model with no worker) frees a slot at once; a gap that
        # is only predicted or utilisation-driven waits for `idle_s`. Two models cannot thrash: a
        # worker is taken only from a model whose desired count its serving workers exceed, so no
        # retirement removes capacity that waiting work needs, and never more than are unmet.
        stranded = sum(
            max(0, n - serving.get(m, 0))
            for m, n in queue_desired.items()
            if m not in parked and ready_pinned.get(m, 0) + absorbed.get(m, 0) + share.get(m, 0) > 0
        )
        idle_now = sorted(
            (w for w in present if w.state is WorkerState.IDLE and w.task_id is None),
            key=lambda w: (w.idle_since if w.idle_since is not None else now, w.id),
        )
        for pool, need in ((idle_now, min(stranded, unmet_model)), (candidates, unmet_model)):
            for w in pool:
                m = _model_of(w.model, models)
                if len(retire) >= min(budget, need - freeing) or not room_above_floor():
                    break
                if w.id not in taken_ids and serving.get(m, 0) - taken.get(m, 0) > desired.get(m, 0):
                    retire.append((w.id, REBALANCE))
                    taken_ids.add(w.id)
                    taken[m] = taken.get(m, 0) + 1
    if cat_unmet > 0 and not inputs.halted and cap_room - len(spawn) <= 0:
        # At the cap with work of a category no serving worker takes: retire at once an idle worker
        # that can take none of the ready work (it holds a slot it does not use), its slot going to
        # a new worker that takes every category. Workers of the stranded work's own model first
        # (the model mix stays); another model's only while it has more serving than it needs. This
        # cannot thrash: a new worker has no capability limit, so every such retirement replaces a
        # limited worker by an unlimited one, and never more than are unmet minus those stopping.
        ready_uncat: dict[str | None, int] = {}
        for key, n in inputs.ready_by_model.items():
            ready_uncat[key] = ready_uncat.get(key, 0) + n
        for (_cat, key), n in inputs.ready_by_category.items():
            ready_uncat[key] = ready_uncat.get(key, 0) - n

        def takes_any(w: WorkerView) -> bool:
            wm = _model_of(w.model, models)
            if wm in parked:
                return False
            if any(n > 0 and (k is None or k == wm) for k, n in ready_uncat.items()):
                return True
            return any(
                n > 0 and (k is None or k == wm) and (w.capabilities is None or c in w.capabilities)
                for (c, k), n in inputs.ready_by_category.items()
            )

        chosen = {wid for wid, _ in retire}
        idle_useless = sorted(
            (
                w
                for w in present
                if w.state is WorkerState.IDLE
                and w.task_id is None
                and w.id not in chosen
                and not takes_any(w)
            ),
            key=lambda w: (
                _model_of(w.model, models) not in stranded_cats,
                w.idle_since if w.idle_since is not None else now,
                w.id,
            ),
        )
        cat_retired = 0
        for w in idle_useless:
            limit = min(budget, unmet - freeing)
            if cat_retired >= cat_unmet or len(retire) >= limit or not room_above_floor():
                break
            m = _model_of(w.model, models)
            if m in stranded_cats or serving.get(m, 0) - taken.get(m, 0) > desired.get(m, 0):
                retire.append((w.id, REBALANCE))
                taken_ids.add(w.id)
                taken[m] = taken.get(m, 0) + 1
                cat_retired += 1
    if covered:
        chosen = {wid for wid, _ in retire}
        for w in candidates:
            if len(retire) >= budget or not room_above_floor():
                break
            m = _model_of(w.model, models)
            if w.id not in chosen and serving.get(m, 0) - taken.get(m, 0) > stabilised.get(m, 0):
                retire.append((w.id, IDLE))
                taken[m] = taken.get(m, 0) + 1

    limited_by: list[str] = []
    if inputs.halted and wanted:
        limited_by.append("halted")
    elif unmet > 0:
        caps = [
            name for name, cap in (("max_workers", room), ("memory", fit)) if cap is not None and cap <= slots
        ]
        limited_by.extend(caps or ["max_spawn_per_tick"])
    if parked_waiting:
        limited_by.append("parked")
    node = inputs.node
    summary: dict[str, Any] = {
        "now": now,
        "ready": {(UNPINNED_KEY if k is None else k): n for k, n in inputs.ready_by_model.items() if n},
        "running": {(UNPINNED_KEY if k is None else k): n for k, n in inputs.running_by_model.items() if n},
        "parked": dict(parked),
        "halted": inputs.halted,
        "workers": {
            "present": len(present),
            "live": len(live),
            "serving": dict(sorted(serving.items())),
            "busy": dict(sorted(busy.items())),
            "by_state": dict(sorted(by_state.items())),
        },
        "utilisation": round(utilisation, 4),
        "arrival_rate_per_s": round(rate, 4),
        "mean_run_s": inputs.mean_run_s,
        "predicted_in_flight": None if predicted is None else round(predicted, 3),
        "unpinned": {"absorbed": absorbed, "split": share, "unplaced": unplaced},
        "desired": dict(sorted(desired.items())),
        "desired_by": {"queue": queue_desired, "utilisation": util_desired, "predictive": pred_desired},
        "stabilised": dict(sorted(stabilised.items())),
        "window_covered": covered,
        "deficit": dict(sorted(deficit.items())),
        "slots": slots,
        "unmet": unmet,
        "categories": {"stranded": stranded_cats, "unmet": cat_unmet},
        "memory": None
        if node is None
        else {
            "free_mb": node.free_mb,
            "floor_mb": node.floor_mb,
            "worker_mb": node.cost_mb,
            "source": node.source,
            "profile": node.profile,
            "reserved_mb": round(reserved, 1),
            "fit": fit,
        },
        "limited_by": limited_by,
        "held_back_by": limited_by[0] if limited_by else None,
        "limits": {
            "min_workers": scaling.min_workers,
            "max_workers": scaling.max_workers,
            "max_spawn_per_tick": scaling.max_spawn_per_tick,
            "max_retire_per_tick": scaling.max_retire_per_tick,
            "tasks_per_worker": tpw,
        },
    }
    return Decision(spawn, retire, desired, summary, _explain(spawn, retire, summary))


def _explain(spawn: list[tuple[str, str]], retire: list[tuple[str, str]], s: dict[str, Any]) -> str:
    """One line for the event log: what and why."""
    parts: list[str] = []
    if spawn:
        groups: dict[tuple[str, str], int] = {}
        for key in spawn:
            groups[key] = groups.get(key, 0) + 1
        ups = ", ".join(f"{n} {m} ({r})" for (m, r), n in groups.items())
        parts.append(f"spawn {ups}; desired {s['desired']}, serving {s['workers']['serving']}")
    if retire:
        downs = ", ".join(f"{wid} ({r})" for wid, r in retire)
        parts.append(f"retire {downs}; stabilised {s['stabilised']}")
    if s["limited_by"]:
        parts.append(f"limited by {', '.join(s['limited_by'])} (unmet {s['unmet']})")
    return "; ".join(parts) or f"steady: desired {s['desired']}, serving {s['workers']['serving']}"
