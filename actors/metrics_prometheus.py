"""The Prometheus exposition of a MetricsActor: metric families built from its state at scrape time.

Apart from the actor (actors/metrics.py) because it is a long, flat list of names, help texts and labels
that changes for other reasons than the event handling; it only reads the actor's public state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .metrics_data import PROM_BOUNDS

if TYPE_CHECKING:
    from .metrics import MetricsActor


class Collector:
    """Registered in the actor's own registry; yields from the actor's state at scrape time."""

    def __init__(self, metrics: MetricsActor) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return families(self._metrics)


def families(m: MetricsActor) -> Iterator[Metric]:
    """Metric families built from `m`'s current state at scrape time (no per-task labels)."""
    kinds = (
        "submitted",
        "started",
        "completed",
        "failed",
        "retried",
        "recovered",
        "dead",
        "cancelled",
        "skipped",
    )
    helps = {
        "submitted": "Tasks accepted by the queue.",
        "started": "Task attempts started on a worker.",
        "completed": "Tasks finished successfully.",
        "failed": "Task attempts that failed (retried or not).",
        "retried": "Failed attempts that will be retried.",
        "recovered": "Tasks requeued after a crash of Shoal or of their worker.",
        "dead": "Tasks whose attempts are exhausted (dead-letter list).",
        "cancelled": "Tasks cancelled.",
        "skipped": "Tasks skipped.",
    }
    fams = {k: CounterMetricFamily(f"shoal_tasks_{k}", helps[k], labels=["model", "category"]) for k in kinds}
    for (kind, model, category), n in m.tasks.items():
        if kind in fams:
            fams[kind].add_metric([model, category], n)
    yield from fams.values()
    fail = CounterMetricFamily("shoal_task_failures", "Failed attempts by outcome.", labels=["outcome"])
    for outcome, n in m.failures.items():
        fail.add_metric([outcome], n)
    yield fail
    for name, doc, per_model in (
        ("shoal_queue_wait_seconds", "Time from ready to running.", m.wait),
        ("shoal_task_run_seconds", "Time from running to done.", m.run_time),
    ):
        hist = HistogramMetricFamily(name, doc, labels=["model"])
        for model, h in per_model.items():
            hist.add_metric([model], h.cumulative(PROM_BOUNDS), h.sum)
        yield hist
    yield GaugeMetricFamily(
        "shoal_tasks_per_hour", "Tasks completed in the last hour.", m.completed_within(3600)
    )
    yield GaugeMetricFamily("shoal_utilisation_ratio", "Busy workers / alive workers.", m.utilisation())
    workers = GaugeMetricFamily("shoal_workers", "Workers by state and model.", labels=["state", "model"])
    for (state, model), n in m.worker_counts.items():
        workers.add_metric([state, model], n)
    yield workers
    depth = GaugeMetricFamily("shoal_queue_depth", "Tasks in the queue by state.", labels=["state"])
    for state, n in m.queue_now().items():
        depth.add_metric([state], n)
    yield depth
    scale = CounterMetricFamily(
        "shoal_scale_events", "Workers added/retired by the scaler.", labels=["direction", "reason"]
    )
    for (direction, reason), n in m.scale.items():
        scale.add_metric([direction, reason], n)
    yield scale
    for name, doc, values in (
        ("shoal_worker_crashes", "Worker processes that ended on their own.", m.crashes),
        (
            "shoal_worker_refreshes",
            "Workers respawned fresh (context pressure, model change).",
            m.refreshes,
        ),
        ("shoal_rate_limits", "Usage-limit reports per model.", m.rate_limits),
        ("shoal_cost_usd", "Spend per model in US dollars.", m.cost),
    ):
        fam = CounterMetricFamily(name, doc, labels=["model"])
        for model, value in values.items():
            fam.add_metric([model], value)
        yield fam
    questions = CounterMetricFamily(
        "shoal_questions",
        "Questions agents waited on: asked (a human must answer), answered by policy or by a human.",
        labels=["kind", "by"],
    )
    for (kind, by), n in m.questions.items():
        questions.add_metric([kind, by], n)
    yield questions
    notices = CounterMetricFamily(
        "shoal_agent_notices",
        "Lines agents printed outside their protocol (skipped).",
        labels=["profile"],
    )
    for profile, n in m.notices.items():
        notices.add_metric([profile], n)
    yield notices
    retries = CounterMetricFamily(
        "shoal_api_retries",
        "API retries the agents reported (system/api_retry).",
        labels=["model", "error"],
    )
    for (model, error), n in m.api_retries.items():
        retries.add_metric([model, error], n)
    yield retries
    for name, doc, counts in (
        ("shoal_retry_storms", "Swarm-wide back-offs of a model after a retry storm.", m.retry_storms),
        ("shoal_extra_usage", "Reports that a model's agent now spends extra usage.", m.extra_usage),
    ):
        fam = CounterMetricFamily(name, doc, labels=["model"])
        for label, count in counts.items():
            fam.add_metric([label], count)
        yield fam
    util = GaugeMetricFamily(
        "shoal_quota_utilization",
        "Latest reported quota use (0..1) per model and window.",
        labels=["model", "window"],
    )
    resets = GaugeMetricFamily(
        "shoal_quota_resets_at", "When the quota window resets (epoch s).", labels=["model", "window"]
    )
    status = GaugeMetricFamily(
        "shoal_quota_status",
        "Latest quota status per model and window (1 = current).",
        labels=["model", "window", "status"],
    )
    for (model, window), q in m.quota.items():
        if q["utilization"] is not None:
            util.add_metric([model, window], q["utilization"])
        if q["resets_at"] is not None:
            resets.add_metric([model, window], q["resets_at"])
        for st in sorted({"allowed", "allowed_warning", "rejected", q["status"]}):
            status.add_metric([model, window, st], 1.0 if st == q["status"] else 0.0)
    yield util
    yield resets
    yield status
    breaker = GaugeMetricFamily(
        "shoal_breaker_state", "Circuit breaker state (1 = current).", labels=["state"]
    )
    for state in ("closed", "open", "half_open"):
        breaker.add_metric([state], 1.0 if state == m.breaker_state else 0.0)
    yield breaker
    yield CounterMetricFamily("shoal_breaker_trips", "Times the swarm halted.", m.breaker_trips)
    yield CounterMetricFamily("shoal_metrics_events", "Events applied by the metrics actor.", m.events_seen)
    yield CounterMetricFamily(
        "shoal_metrics_events_dropped", "Events the metrics actor missed.", m.events_dropped()
    )
    yield CounterMetricFamily(
        "shoal_bus_events_dropped", "Events dropped for slow subscribers.", m.bus_dropped()
    )
