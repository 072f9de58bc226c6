"""Metrics: the swarm's counters, histograms and time series, built from bus events only.

The MetricsActor subscribes to every event and keeps, in memory and in O(1) per event:

* counters per model and category (submitted, started, completed, failed, retried, recovered, dead,
  cancelled, skipped), failures per outcome, scale events per direction and reason, crashes,
  refreshes and rate limits per model, breaker trips, cost per model;
* histograms of queue wait and run time per model, in fixed log-spaced buckets (four per octave,
  ~1 ms to ~36 h), from which p50/p95/p99 are read without keeping samples;
* time series at 1 s resolution for the last hour and 1 min resolution for the last day: completed
  and failed counts, cost, wait/run histograms (sparse) and sampled gauges (queue depth by state,
  workers by state and by model, utilisation), plus annotations (scale events, breaker trips);
* the current workers by state and model (from `worker.state`), and tasks in flight (to derive
  queue wait and run time when an event does not carry them, and queue depth when no
  `queue_depth` callable is given).

`snapshot()` and `series()` return JSON-ready dicts (for `swarm.metrics` and the dashboard);
`prometheus_text()` renders the same state through prometheus-client with a registry owned by this
actor, so two swarms in one process never collide. Label values are bounded: unknown extra models,
categories or reasons beyond a cap are folded into "other"; task ids are never labels.

The families are listed in actors/metrics_prometheus.py, the histograms, series rings and bounded
labels are actors/metrics_data.py: this module is the actor that feeds them from events and reads them.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from ..protocols.config import SwarmConfig
from ..protocols.errors import ValidationError
from ..protocols.tasks import Outcome
from ..protocols.workers import WorkerState
from ..runtime.eventbus import Event, EventBus
from .metrics_data import (
    NONE,
    OTHER,
    QUANTILES,
    Bounded,
    LogHistogram,
    Ring,
    TaskTrack,
    num,
    sparse_quantiles,
)
from .metrics_prometheus import Collector, families

log = logging.getLogger("shoal.metrics")

GONE_STATES = frozenset({WorkerState.STOPPED.value, WorkerState.CRASHED.value})
TERMINAL_TOPICS = frozenset({"task.done", "task.dead", "task.cancelled", "task.skipped"})
SECOND_SLOTS = 3600  # 1 h at 1 s
MINUTE_SLOTS = 1440  # 1 day at 1 min
MAX_TRACKED_TASKS = 1_000_000
OUTCOMES = frozenset(o.value for o in Outcome)
QUESTION_KINDS = frozenset({"usage_limit", "trust", "permission", "menu", "question"})  # protocols/menus.py

QueueDepth = Callable[[], "Mapping[str, int] | Awaitable[Mapping[str, int]]"]


# ---- the actor -----------------------------------------------------------------------------------


class MetricsActor:
    """Counters, histograms, series and the Prometheus exposition of one swarm, fed by its events.

    `clock` gives the time stamps of the series (pass `time.time` for epoch charts); `queue_depth`
    (optional, sync or async) returns the queue's task counts by state and is sampled every second.
    """

    def __init__(
        self,
        bus: EventBus,
        config_getter: Callable[[], SwarmConfig],
        clock: Callable[[], float],
        queue_depth: QueueDepth | None = None,
        *,
        buffer: int = 10_000,
        max_models: int = 32,
        max_categories: int = 64,
        max_reasons: int = 32,
        max_annotations: int = 2_000,
    ) -> None:
        self._bus = bus
        self._config = config_getter
        self._clock = clock
        self._queue_depth = queue_depth
        self._buffer = buffer
        self._model = Bounded(max_models)
        self._category = Bounded(max_categories)
        self._reason = Bounded(max_reasons)
        self.started_at = clock()
        # counters
        self.tasks: dict[tuple[str, str, str], int] = {}  # (kind, model, category) -> n
        self.failures: dict[str, int] = {}  # outcome -> n
        self.scale: dict[tuple[str, str], int] = {}  # (up|down, reason) -> workers
        self.crashes: dict[str, int] = {}
        self.refreshes: dict[str, int] = {}
        self.questions: dict[tuple[str, str], int] = {}  # (kind, asked|policy|human) -> count
        self.rate_limits: dict[str, int] = {}
        self.notices: dict[str, int] = {}  # profile -> lines printed outside the agent's protocol
        self.api_retries: dict[tuple[str, str], int] = {}  # (model, error) -> retries the agents reported
        self.retry_storms: dict[str, int] = {}  # model -> swarm-wide back-offs
        self.extra_usage: dict[str, int] = {}  # model -> "now using extra usage" reports
        # (model, window) -> the latest quota report: status, utilization, resets_at
        self.quota: dict[tuple[str, str], dict[str, Any]] = {}
        self.cost: dict[str, float] = {}
        self.breaker_state = "closed"
        self.breaker_trips = 0
        self.breaker_reason: str | None = None
        self.breaker_since: float | None = None
        self.events_seen = 0
        self.bad_events = 0
        # histograms
        self.wait: dict[str, LogHistogram] = {}
        self.run_time: dict[str, LogHistogram] = {}
        self.wait_all = LogHistogram()
        self.run_all = LogHistogram()
        # current state
        self.workers: dict[str, tuple[str, str]] = {}  # worker id -> (state, model)
        self.worker_counts: dict[tuple[str, str], int] = {}  # (state, model) -> n
        self._tracked: dict[str, TaskTrack] = {}
        self._depth: dict[str, int] = {}  # from events, when no queue_depth callable
        self.queue: dict[str, int] = {}  # last sample
        # series
        self.seconds = Ring(SECOND_SLOTS, 1)
        self.minutes = Ring(MINUTE_SLOTS, 60)
        self.annotations: deque[dict[str, Any]] = deque(maxlen=max_annotations)
        self._sub_dropped = 0
        self._sub: Any = None
        # the per-swarm registry: never the process-global one
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(self))

    # -- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._bus.subscribe(("*",), size=self._buffer, outage=True) as sub:
            self._sub = sub
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sampler)
                    task_status.started()
                    async for event in sub:
                        self.handle(event)
            finally:
                self._sub_dropped += sub.dropped
                self._sub = None

    async def _sampler(self) -> None:
        while True:
            await self.sample()
            now = self._clock()
            await trio.sleep(max(0.05, 1.0 - (now - math.floor(now))))

    async def sample(self) -> None:
        """Record the gauges (queue depth, workers, utilisation) into the current series slots."""
        depth: Mapping[str, int] = self._depth
        if self._queue_depth is not None:
            try:
                result = self._queue_depth()
                if inspect.isawaitable(result):
                    result = await result
                depth = result
            except Exception as exc:  # the sample is skipped, the series shows a gap
                log.warning("queue depth sample failed: %r", exc)
                depth = self.queue
        self.queue = {str(k): int(v) for k, v in depth.items()}
        gauges: dict[str, float] = {"utilisation": self.utilisation(), "workers": float(len(self.workers))}
        for state, n in self.queue.items():
            gauges[f"q:{state}"] = float(n)
        for (state, model), n in self.worker_counts.items():
            gauges[f"ws:{state}"] = gauges.get(f"ws:{state}", 0.0) + n
            gauges[f"wm:{model}"] = gauges.get(f"wm:{model}", 0.0) + n
        now = self._clock()
        for ring in (self.seconds, self.minutes):
            slot = ring.at(now)
            for key, value in gauges.items():
                slot.gauges[key] = slot.gauges.get(key, 0.0) + value
            slot.samples += 1

    # -- events

    def handle(self, event: Event) -> None:
        """Apply one event. Never raises: a malformed event is counted in `bad_events`."""
        self.events_seen += 1
        try:
            self._apply(event.topic, event.data if isinstance(event.data, Mapping) else {})
        except Exception as exc:
            self.bad_events += 1
            log.warning("metrics could not apply %s: %r", event.topic, exc)

    def _count(self, kind: str, model: str, category: str, n: int = 1) -> None:
        key = (kind, model, category)
        self.tasks[key] = self.tasks.get(key, 0) + n

    def _labels(self, data: Mapping[str, Any], track: TaskTrack | None) -> tuple[str, str]:
        model = data.get("model")
        category = data.get("category")
        m = self._model(model) if model else (track.model if track else NONE)
        c = self._category(category) if category else (track.category if track else NONE)
        return m, c

    def _set_state(self, task_id: str, track: TaskTrack, state: str | None) -> None:
        if track.state:
            self._depth[track.state] = self._depth.get(track.state, 1) - 1
            if self._depth[track.state] <= 0:
                del self._depth[track.state]
        if state is None:
            self._tracked.pop(task_id, None)
            return
        track.state = state
        self._depth[state] = self._depth.get(state, 0) + 1

    def _apply(self, topic: str, data: Mapping[str, Any]) -> None:
        now = self._clock()
        task_id = data.get("task_id")
        track = self._tracked.get(task_id) if isinstance(task_id, str) else None
        if topic == "task.submitted":
            count = data.get("count")
            n = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1
            model, category = self._labels(data, None)
            self._count("submitted", model, category, n)
            if isinstance(task_id, str) and task_id not in self._tracked:
                state = str(data.get("state") or "ready")
                if len(self._tracked) >= MAX_TRACKED_TASKS:  # events were lost: forget the oldest
                    oldest = next(iter(self._tracked))
                    self._set_state(oldest, self._tracked[oldest], None)
                track = TaskTrack("", now if state == "ready" else None, model, category)
                self._tracked[task_id] = track
                self._set_state(task_id, track, state)
        elif topic in ("task.ready", "task.blocked", "task.recovered", "task.retrying"):
            if topic == "task.recovered":
                self._count("recovered", *self._labels(data, track))
            if track is not None and isinstance(task_id, str):
                state = "blocked" if topic == "task.blocked" else "ready"
                if state == "ready" and track.state != "ready":
                    track.ready_at = now
                self._set_state(task_id, track, state)
        elif topic == "task.running":
            model, category = self._labels(data, track)
            self._count("started", model, category)
            wait = num(data.get("wait_s"))
            if wait is None and track is not None and track.ready_at is not None:
                wait = max(0.0, now - track.ready_at)
            if wait is not None:
                self._observe(self.wait, self.wait_all, model, wait, now, "wait")
            if track is not None and isinstance(task_id, str):
                track.started, track.model, track.category = now, model, category
                self._set_state(task_id, track, "running")
        elif topic == "task.done":
            model, category = self._labels(data, track)
            self._count("completed", model, category)
            run_s = num(data.get("run_s"))
            if run_s is None:
                run_s = num(data.get("elapsed_s"))
            if run_s is None and track is not None and track.started is not None:
                run_s = max(0.0, now - track.started)
            if run_s is not None:
                self._observe(self.run_time, self.run_all, model, run_s, now, "run")
            wait = num(data.get("wait_s"))
            if wait is not None and (track is None or track.started is None):
                self._observe(self.wait, self.wait_all, model, wait, now, "wait")  # not seen running
            cost = self._cost(model, data, run_s)
            for ring in (self.seconds, self.minutes):
                slot = ring.at(now)
                slot.completed += 1
                if cost:
                    slot.cost[model] = slot.cost.get(model, 0.0) + cost
            if cost:
                self.cost[model] = self.cost.get(model, 0.0) + cost
            if track is not None and isinstance(task_id, str):
                self._set_state(task_id, track, None)
        elif topic == "task.failed":
            model, category = self._labels(data, track)
            self._count("failed", model, category)
            outcome = data.get("outcome")
            label = str(outcome) if outcome in OUTCOMES else (OTHER if outcome else NONE)
            self.failures[label] = self.failures.get(label, 0) + 1
            for ring in (self.seconds, self.minutes):
                ring.at(now).failed += 1
            retry = data.get("will_retry")
            if retry:
                self._count("retried", model, category)
            if track is not None and isinstance(task_id, str):
                self._set_state(task_id, track, "failed")  # until task.ready / task.dead
        elif topic in TERMINAL_TOPICS:  # dead, cancelled, skipped (done is above)
            kind = topic.split(".", 1)[1]
            self._count(kind, *self._labels(data, track))
            if track is not None and isinstance(task_id, str):
                self._set_state(task_id, track, None)
        elif topic == "worker.state":
            self._worker_state(data)
        elif topic == "worker.crashed":
            model = self._worker_model(data)
            self.crashes[model] = self.crashes.get(model, 0) + 1
            self._worker_state({**data, "state": WorkerState.CRASHED.value})
        elif topic == "worker.refreshed":
            model = self._worker_model(data)
            self.refreshes[model] = self.refreshes.get(model, 0) + 1
        elif topic in ("worker.needs_input", "worker.answered"):
            kind = str(data.get("kind")) if data.get("kind") in QUESTION_KINDS else OTHER
            by = "asked" if topic == "worker.needs_input" else str(data.get("by"))
            if by in ("asked", "policy", "human"):
                self.questions[(kind, by)] = self.questions.get((kind, by), 0) + 1
        elif topic in ("worker.rate_limited", "model.parked"):
            model = self._worker_model(data)
            self.rate_limits[model] = self.rate_limits.get(model, 0) + 1
        elif topic == "worker.notice":
            profile = self._reason(data.get("profile"))
            self.notices[profile] = self.notices.get(profile, 0) + 1
        elif topic == "worker.api_retry":
            key = (self._worker_model(data), self._reason(data.get("error") or "unknown"))
            self.api_retries[key] = self.api_retries.get(key, 0) + 1
        elif topic == "model.retry_storm":
            model = self._worker_model(data)
            self.retry_storms[model] = self.retry_storms.get(model, 0) + 1
            self._annotate(now, topic, f"retry storm: {model} parked {data.get('park_s')} s", model=model)
        elif topic == "model.extra_usage":
            model = self._worker_model(data)
            self.extra_usage[model] = self.extra_usage.get(model, 0) + 1
            self._annotate(now, topic, f"{model}: now using extra usage ({data.get('policy')})", model=model)
        elif topic == "model.quota":
            if data.get("model") is not None:
                window = self._reason(data.get("window") or "?")
                self.quota[(self._worker_model(data), window)] = {
                    "status": str(data.get("status") or "unknown"),
                    "utilization": num(data.get("utilization")),
                    "resets_at": num(data.get("resets_at")),
                }
        elif topic in ("scale.up", "scale.down"):
            direction = topic.split(".", 1)[1]
            count = data.get("count")
            n = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1
            reason = self._reason(data.get("reason"))
            self.scale[(direction, reason)] = self.scale.get((direction, reason), 0) + n
            scaled = data.get("model")
            text = f"{direction} {n}" + (f" {scaled}" if scaled else "") + f" ({reason})"
            self._annotate(now, topic, text, count=n, reason=reason, model=scaled)
        elif topic == "swarm.halted":
            if self.breaker_state != "open":
                self.breaker_trips += 1
            self.breaker_state, self.breaker_since = "open", now
            self.breaker_reason = str(data.get("reason")) if data.get("reason") else None
            self._annotate(
                now, topic, f"breaker open: {self.breaker_reason or 'halted'}", reason=self.breaker_reason
            )
        elif topic in ("swarm.half_open", "swarm.canary"):
            self.breaker_state, self.breaker_since = "half_open", now
            self._annotate(now, topic, "breaker half-open: canary worker")
        elif topic == "swarm.resumed":
            self.breaker_state, self.breaker_since, self.breaker_reason = "closed", now, None
            self._annotate(now, topic, "breaker closed: resumed")

    def _observe(
        self,
        per_model: dict[str, LogHistogram],
        overall: LogHistogram,
        model: str,
        value: float,
        now: float,
        kind: str,
    ) -> None:
        hist = per_model.get(model)
        if hist is None:
            hist = per_model[model] = LogHistogram()
        i = hist.observe(value)
        overall.observe(value)
        for ring in (self.seconds, self.minutes):
            slot = ring.at(now)
            sparse = slot.wait if kind == "wait" else slot.run
            sparse[i] = sparse.get(i, 0) + 1

    def _cost(self, model: str, data: Mapping[str, Any], run_s: float | None) -> float:
        """cost_usd when reported; else tokens x price; else run time x models.prices[m].per_second."""
        usage = data.get("usage")
        usage = usage if isinstance(usage, Mapping) else {}
        for value in (data.get("cost_usd"), usage.get("cost_usd"), usage.get("total_cost_usd")):
            cost = num(value)
            if cost is not None:
                return cost
        price = self._config().models.prices.get(model)
        if price is None:
            return 0.0
        tokens_in, tokens_out = num(usage.get("input_tokens")), num(usage.get("output_tokens"))
        if tokens_in is not None or tokens_out is not None:
            return (
                (tokens_in or 0.0) * price.input_per_mtok + (tokens_out or 0.0) * price.output_per_mtok
            ) / 1e6
        return (run_s or 0.0) * price.per_second

    def _worker_model(self, data: Mapping[str, Any]) -> str:
        model = data.get("model")
        if model:
            return self._model(model)
        known = self.workers.get(str(data.get("worker")))
        return known[1] if known else NONE

    def _worker_state(self, data: Mapping[str, Any]) -> None:
        worker = data.get("worker")
        state = data.get("state")
        if not isinstance(worker, str) or not state:
            raise ValueError("worker.state needs worker and state")
        state = str(state)
        model = self._worker_model(data)
        old = self.workers.pop(worker, None)
        if old is not None:
            self.worker_counts[old] -= 1
            if not self.worker_counts[old]:
                del self.worker_counts[old]
        if state in GONE_STATES:
            return
        self.workers[worker] = (state, model)
        self.worker_counts[(state, model)] = self.worker_counts.get((state, model), 0) + 1

    def _annotate(self, now: float, kind: str, text: str, **extra: Any) -> None:
        self.annotations.append(
            {"t": now, "kind": kind, "text": text, **{k: v for k, v in extra.items() if v}}
        )

    # -- reading

    def utilisation(self) -> float:
        """Busy workers / alive workers (every state but stopped and crashed); 0 with no workers."""
        alive = len(self.workers)
        busy = sum(n for (state, _), n in self.worker_counts.items() if state == WorkerState.BUSY.value)
        return busy / alive if alive else 0.0

    def completed_within(self, seconds: int) -> int:
        """Tasks completed within the last `seconds` (≤ 3600), from the 1 s series."""
        now_key = math.floor(self._clock())
        total = 0
        for key in range(now_key - min(seconds, SECOND_SLOTS) + 1, now_key + 1):
            slot = self.seconds.get(key)
            if slot is not None:
                total += slot.completed
        return total

    def _by(self, index: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (kind, model, category), n in self.tasks.items():
            group = out.setdefault((model, category)[index], {})
            group[kind] = group.get(kind, 0) + n
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything current, JSON-ready (the `swarm.metrics` reply)."""
        totals: dict[str, int] = {}
        for (kind, _, _), n in self.tasks.items():
            totals[kind] = totals.get(kind, 0) + n
        by_model = self._by(0)
        for model, group in by_model.items():
            group["cost_usd"] = self.cost.get(model, 0.0)
            if model in self.wait:
                group["queue_wait_s"] = self.wait[model].summary()
            if model in self.run_time:
                group["run_s"] = self.run_time[model].summary()
        by_state: dict[str, int] = {}
        by_model_w: dict[str, int] = {}
        for (state, model), n in self.worker_counts.items():
            by_state[state] = by_state.get(state, 0) + n
            by_model_w[model] = by_model_w.get(model, 0) + n
        return {
            "time": self._clock(),
            "uptime_s": self._clock() - self.started_at,
            "tasks": totals,
            "by_model": by_model,
            "by_category": self._by(1),
            "failures_by_outcome": dict(self.failures),
            "queue_wait_s": self.wait_all.summary(),
            "run_s": self.run_all.summary(),
            "tasks_per_hour": self.completed_within(3600),
            "throughput_per_s": self.completed_within(60) / 60.0,
            "utilisation": self.utilisation(),
            "workers": {"total": len(self.workers), "by_state": by_state, "by_model": by_model_w},
            "queue": self.queue_now(),
            "scale": {
                "up": sum(n for (d, _), n in self.scale.items() if d == "up"),
                "down": sum(n for (d, _), n in self.scale.items() if d == "down"),
                "by_reason": {f"{d}:{r}": n for (d, r), n in self.scale.items()},
            },
            "crashes": {"total": sum(self.crashes.values()), "by_model": dict(self.crashes)},
            "refreshes": {"total": sum(self.refreshes.values()), "by_model": dict(self.refreshes)},
            "rate_limits": {"total": sum(self.rate_limits.values()), "by_model": dict(self.rate_limits)},
            "questions": {
                by: sum(n for (_, b), n in self.questions.items() if b == by)
                for by in ("asked", "policy", "human")
            }
            | {"by_kind": {f"{k}:{b}": n for (k, b), n in self.questions.items()}},
            "notices": {"total": sum(self.notices.values()), "by_profile": dict(self.notices)},
            "api_retries": {
                "total": sum(self.api_retries.values()),
                "by_model_error": {f"{m}:{e}": n for (m, e), n in self.api_retries.items()},
            },
            "retry_storms": {"total": sum(self.retry_storms.values()), "by_model": dict(self.retry_storms)},
            "extra_usage": {"total": sum(self.extra_usage.values()), "by_model": dict(self.extra_usage)},
            "quota": {f"{m}:{w}": dict(q) for (m, w), q in self.quota.items()},
            "breaker": {
                "state": self.breaker_state,
                "trips": self.breaker_trips,
                "reason": self.breaker_reason,
                "since": self.breaker_since,
            },
            "cost_usd": {"total": sum(self.cost.values()), "by_model": dict(self.cost)},
            "events": {"seen": self.events_seen, "bad": self.bad_events, "dropped": self.events_dropped()},
        }

    def series(self, window_s: float, step_s: float | None = None) -> dict[str, Any]:
        """Chart data for the last `window_s` seconds (≤ 1 day), in steps of `step_s` (None: ≤ 360 points).

        Windows up to an hour with steps under a minute read the 1 s series, others the 1 min one.
        Counts are per step and per second; gauges are averaged over the samples in each step (None
        where nothing was sampled); percentiles merge the step's histograms.
        """
        if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not math.isfinite(window_s):
            raise ValidationError("window_s", "must be a number of seconds", window_s)
        if not 0 < window_s <= MINUTE_SLOTS * 60:
            raise ValidationError("window_s", f"must be > 0 and at most {MINUTE_SLOTS * 60}", window_s)
        if step_s is not None and (
            isinstance(step_s, bool)
            or not isinstance(step_s, int | float)
            or not math.isfinite(step_s)
            or step_s <= 0
        ):
            raise ValidationError("step_s", "must be a positive number of seconds or null", step_s)
        fine = window_s <= SECOND_SLOTS and (step_s is None or step_s < 60)
        ring = self.seconds if fine else self.minutes
        res = ring.resolution
        step = res * math.ceil((step_s if step_s is not None else window_s / 360) / res)
        points = math.ceil(window_s / step)  # at most 3600 (1 s ring) or 1440 (1 min ring)
        now = self._clock()
        last = math.floor(now / step) * step  # start of the current (partial) step
        first = last - (points - 1) * step
        per = step // res
        t: list[float] = []
        completed: list[int] = []
        failed: list[int] = []
        rate_done: list[float] = []
        rate_failed: list[float] = []
        gauges: list[dict[str, float]] = []
        cost: list[dict[str, float]] = []
        pct: dict[str, dict[str, list[float | None]]] = {
            name: {f"p{round(q * 100)}": [] for q in QUANTILES} for name in ("queue_wait_s", "run_s")
        }
        window_wait: dict[int, int] = {}
        window_run: dict[int, int] = {}
        for p in range(points):
            start = first + p * step
            done = bad = samples = 0
            sums: dict[str, float] = {}
            step_cost: dict[str, float] = {}
            wait: dict[int, int] = {}
            run: dict[int, int] = {}
            base = start // res
            for j in range(per):
                slot = ring.get(base + j)
                if slot is None:
                    continue
                done += slot.completed
                bad += slot.failed
                samples += slot.samples
                for key, value in slot.gauges.items():
                    sums[key] = sums.get(key, 0.0) + value
                for model, value in slot.cost.items():
                    step_cost[model] = step_cost.get(model, 0.0) + value
                for target, source in ((wait, slot.wait), (run, slot.run)):
                    for i, n in source.items():
                        target[i] = target.get(i, 0) + n
            elapsed = step if p < points - 1 else max(float(res), min(float(step), now - start))
            t.append(float(start))
            completed.append(done)
            failed.append(bad)
            rate_done.append(done / elapsed)
            rate_failed.append(bad / elapsed)
            gauges.append({k: v / samples for k, v in sums.items()} if samples else {})
            cost.append(step_cost)
            for name, sparse, acc in (("queue_wait_s", wait, window_wait), ("run_s", run, window_run)):
                for label, qv in sparse_quantiles(sparse).items():
                    pct[name][label].append(qv)
                for i, n in sparse.items():
                    acc[i] = acc.get(i, 0) + n

        def gauge_group(prefix: str) -> dict[str, list[float | None]]:
            keys = sorted({k for g in gauges for k in g if k.startswith(prefix)})
            return {k[len(prefix) :]: [g.get(k) if g else None for g in gauges] for k in keys}

        models = sorted({m for c in cost for m in c})
        return {
            "window_s": window_s,
            "step_s": step,
            "resolution_s": res,
            "now": now,
            "t": t,
            "completed": completed,
            "failed": failed,
            "completed_per_s": rate_done,
            "failed_per_s": rate_failed,
            "utilisation": [g.get("utilisation") if g else None for g in gauges],
            "workers": [g.get("workers") if g else None for g in gauges],
            "queue": gauge_group("q:"),
            "workers_by_state": gauge_group("ws:"),
            "workers_by_model": gauge_group("wm:"),
            "cost_usd_by_model": {m: [c.get(m, 0.0) for c in cost] for m in models},
            "queue_wait_s": pct["queue_wait_s"],
            "run_s": pct["run_s"],
            "annotations": [a for a in self.annotations if a["t"] >= first],
            "totals": {
                "completed": sum(completed),
                "failed": sum(failed),
                "queue_wait_s": sparse_quantiles(window_wait),
                "run_s": sparse_quantiles(window_run),
                "cost_usd_by_model": {m: sum(c.get(m, 0.0) for c in cost) for m in models},
            },
        }

    def prometheus_text(self) -> bytes:
        """The Prometheus text exposition of this swarm's metrics (its own registry)."""
        return generate_latest(self.registry)

    # -- exposition

    def families(self) -> Iterator[Metric]:
        """Metric families built from the current state at scrape time (actors/metrics_prometheus.py)."""
        return families(self)

    def queue_now(self) -> dict[str, int]:
        """Tasks by state: the last sample of `queue_depth`, else the count kept from events."""
        return dict(self.queue or self._depth)

    def events_dropped(self) -> int:
        """Events this actor missed (its subscription's buffer was full)."""
        return self._sub_dropped + (self._sub.dropped if self._sub is not None else 0)

    def bus_dropped(self) -> int:
        """Events the bus dropped for slow subscribers, swarm-wide."""
        return self._bus.dropped_total
