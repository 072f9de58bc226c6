"""Metrics: histograms, counters, cost, series windows, Prometheus exposition, registry isolation."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from shoal.actors.metrics import NONE, OTHER, LogHistogram, MetricsActor
from shoal.protocols.config import ModelPrice, ModelsConfig, SwarmConfig, patch_config
from shoal.protocols.errors import ValidationError
from shoal.runtime.eventbus import Event, EventBus


class Clock:
    """A hand-driven clock for the series: tests move time explicitly."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Config:
    def __init__(self, value: SwarmConfig | None = None) -> None:
        self.value = value or SwarmConfig()

    def __call__(self) -> SwarmConfig:
        return self.value


def make(clock: Clock | None = None, config: Config | None = None, **kw: Any) -> tuple[MetricsActor, Clock]:
    clock = clock or Clock()
    return MetricsActor(EventBus(), config or Config(), clock, **kw), clock


def feed(m: MetricsActor, topic: str, **data: Any) -> None:
    m.handle(Event(0, 0.0, topic, data))


def families(m: MetricsActor) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(m.prometheus_text().decode())}


# ---- histograms ------------------------------------------------------------------------------------


def test_percentiles_from_known_samples() -> None:
    h = LogHistogram()
    for i in range(1, 1001):  # 0.01 .. 10.00 s, uniform
        h.observe(i / 100)
    s = h.summary()
    assert s["count"] == 1000 and s["min"] == 0.01 and s["max"] == 10.0
    assert s["mean"] == pytest.approx(5.005)
    for key, true in (("p50", 5.0), ("p95", 9.5), ("p99", 9.9)):
        assert abs(s[key] - true) / true < 0.10, (key, s[key])  # within one bucket (19 %), here < 10 %
    single = LogHistogram()
    single.observe(3.7)
    assert single.quantile(0.5) == 3.7 and single.quantile(0.99) == 3.7  # clamped to min/max: exact
    assert LogHistogram().quantile(0.5) is None
    skewed = LogHistogram()
    for _ in range(90):
        skewed.observe(0.5)
    for _ in range(10):
        skewed.observe(120.0)
    assert skewed.quantile(0.5) == pytest.approx(0.5, rel=0.2)
    assert skewed.quantile(0.99) == pytest.approx(120.0, rel=0.2)


def test_histogram_buckets_are_log_spaced_and_fixed() -> None:
    assert LogHistogram.upper(LogHistogram.index(1.0)) == 1.0
    assert LogHistogram.upper(LogHistogram.index(1.01)) == pytest.approx(2**0.25)
    assert LogHistogram.index(0.0) == 0 and LogHistogram.index(-5) == 0
    assert LogHistogram.index(1e9) == LogHistogram.N  # overflow bucket
    h = LogHistogram()
    h.observe(-1.0)  # a clock step backwards is clamped, not an error
    assert h.min == 0.0


# ---- counters --------------------------------------------------------------------------------------


def lifecycle(
    m: MetricsActor, clock: Clock, task_id: str, model: str, category: str | None, run_s: float
) -> None:
    feed(m, "task.submitted", task_id=task_id, model=None, category=category)
    clock.t += 1.0
    feed(m, "task.running", task_id=task_id, worker="w1", attempt=1, model=model, wait_s=1.0)
    clock.t += run_s
    feed(m, "task.done", task_id=task_id, model=model, category=category, run_s=run_s)


def test_counters_per_model_and_category() -> None:
    m, clock = make()
    lifecycle(m, clock, "a", "haiku", "lint", 2.0)
    lifecycle(m, clock, "b", "opus", "review", 30.0)
    lifecycle(m, clock, "c", "opus", "review", 40.0)
    feed(m, "task.failed", task_id="d", model="opus", category="review", reason="exit 1", will_retry=True)
    feed(m, "task.failed", task_id="d", model="opus", category="review", reason="exit 1", outcome="crashed")
    feed(m, "task.dead", task_id="d", model="opus", category="review")
    feed(m, "task.recovered", task_id="e", model="haiku", category="lint")
    snap = m.snapshot()
    assert snap["tasks"] == {
        "submitted": 3, "started": 3, "completed": 3, "failed": 2, "retried": 1, "dead": 1, "recovered": 1
    }  # fmt: skip
    assert snap["by_model"]["opus"]["completed"] == 2 and snap["by_model"]["opus"]["dead"] == 1
    assert snap["by_model"]["haiku"]["recovered"] == 1
    assert snap["by_model"][NONE]["submitted"] == 3  # submitted unpinned
    assert snap["by_category"]["review"] == {
        "submitted": 2,
        "started": 2,
        "completed": 2,
        "failed": 2,
        "retried": 1,
        "dead": 1,
    }
    assert snap["failures_by_outcome"] == {NONE: 1, "crashed": 1}
    assert snap["by_model"]["opus"]["run_s"]["count"] == 2
    assert snap["by_model"]["opus"]["run_s"]["max"] == 40.0
    assert snap["queue_wait_s"]["p50"] == 1.0
    assert snap["tasks_per_hour"] == 3
    json.dumps(snap)  # JSON-ready


def test_wait_and_run_times_are_derived_when_events_lack_them() -> None:
    m, clock = make()
    feed(m, "task.submitted", task_id="a", category="x")
    clock.t += 4.0
    feed(m, "task.running", task_id="a", worker="w1", attempt=1, model="sonnet")
    assert m.snapshot()["queue"] == {"running": 1}  # depth from events (no queue_depth callable)
    clock.t += 9.0
    feed(m, "task.done", task_id="a", model="sonnet")  # no category: remembered from submit
    snap = m.snapshot()
    assert snap["queue_wait_s"]["max"] == 4.0 and snap["run_s"]["max"] == 9.0
    assert snap["by_category"]["x"]["completed"] == 1
    assert snap["queue"] == {}
    feed(m, "task.submitted", task_id="b", state="blocked")
    clock.t += 100.0
    feed(m, "task.ready", task_id="b")  # the wait starts when it becomes ready
    clock.t += 2.0
    feed(m, "task.running", task_id="b", worker="w1", attempt=1, model="sonnet")
    assert m.wait["sonnet"].max == 4.0 and m.wait["sonnet"].min == 2.0


def test_cost_per_model_from_cost_tokens_or_time_with_hot_prices() -> None:
    prices = {
        "opus": ModelPrice(input_per_mtok=15, output_per_mtok=75),
        "haiku": ModelPrice(per_second=0.001),
    }
    config = Config(SwarmConfig(models=ModelsConfig(prices=prices)))
    m, _ = make(config=config)
    feed(m, "task.done", task_id="a", model="sonnet", cost_usd=0.25)
    feed(m, "task.done", task_id="b", model="sonnet", usage={"total_cost_usd": 0.5})
    feed(
        m, "task.done", task_id="c", model="opus", usage={"input_tokens": 1_000_000, "output_tokens": 100_000}
    )
    feed(m, "task.done", task_id="d", model="haiku", run_s=100.0)
    feed(m, "task.done", task_id="e", model="unpriced", run_s=100.0)
    config.value = patch_config(config.value, {"models": {"prices": {"haiku": {"per_second": 0.01}}}})
    feed(m, "task.done", task_id="f", model="haiku", run_s=100.0)
    cost = m.snapshot()["cost_usd"]
    assert cost["by_model"] == pytest.approx({"sonnet": 0.75, "opus": 22.5, "haiku": 1.1})
    assert cost["total"] == pytest.approx(24.35)


def test_workers_utilisation_crashes_refreshes_and_breaker() -> None:
    m, clock = make()
    for wid, state in (("w1", "busy"), ("w2", "busy"), ("w3", "idle"), ("w4", "starting")):
        feed(m, "worker.state", worker=wid, state=state, model="sonnet")
    assert m.utilisation() == 0.5
    feed(m, "worker.crashed", worker="w4", exit_code=1)  # model remembered from its state
    feed(m, "worker.refreshed", worker="w1", model="sonnet")
    feed(m, "worker.state", worker="w3", state="stopped", model="sonnet")
    snap = m.snapshot()
    assert snap["workers"] == {"total": 2, "by_state": {"busy": 2}, "by_model": {"sonnet": 2}}
    assert snap["utilisation"] == 1.0
    assert snap["crashes"] == {"total": 1, "by_model": {"sonnet": 1}}
    assert snap["refreshes"]["total"] == 1
    feed(m, "swarm.halted", reason="10 crashes in 60 s")
    feed(m, "swarm.halted", reason="still")  # already open: not a second trip
    assert m.snapshot()["breaker"]["state"] == "open" and m.breaker_trips == 1
    clock.t += 30
    feed(m, "swarm.resumed")
    assert m.snapshot()["breaker"] == {"state": "closed", "trips": 1, "reason": None, "since": clock.t}
    assert [a["kind"] for a in m.annotations] == ["swarm.halted", "swarm.halted", "swarm.resumed"]


def test_questions_are_counted_by_kind_and_who_answered() -> None:
    m, _ = make()
    feed(m, "worker.answered", worker="w1", kind="usage_limit", by="policy", choice=1)
    feed(m, "worker.needs_input", worker="w2", kind="trust", options=["Yes", "No"])
    feed(m, "worker.answered", worker="w2", kind="trust", by="human", choice=1)
    feed(m, "worker.needs_input", worker="w3", kind="made-up")  # an unknown kind is "other"
    feed(m, "worker.answered", worker="w3", kind="menu", by="nobody")  # not counted
    snap = m.snapshot()["questions"]
    assert snap == {
        "asked": 2,
        "policy": 1,
        "human": 1,
        "by_kind": {"usage_limit:policy": 1, "trust:asked": 1, "trust:human": 1, "other:asked": 1},
    }
    samples = {(s.labels["kind"], s.labels["by"]): s.value for s in families(m)["shoal_questions"].samples}
    assert samples[("usage_limit", "policy")] == 1.0 and samples[("trust", "asked")] == 1.0


def test_scale_events_are_counted_by_reason_and_annotated() -> None:
    m, _ = make()
    feed(m, "scale.up", count=8, reason="queue", model="sonnet")
    feed(m, "scale.up", count=2, reason="predictive", model="haiku")
    feed(m, "scale.down", count=1, reason="idle", worker="w3")
    snap = m.snapshot()["scale"]
    assert snap == {"up": 10, "down": 1, "by_reason": {"up:queue": 8, "up:predictive": 2, "down:idle": 1}}
    assert m.annotations[0]["text"] == "up 8 sonnet (queue)"


def test_bad_events_are_counted_never_raised() -> None:
    m, _ = make()
    feed(m, "worker.state", state="busy")  # no worker id
    m.handle(Event(1, 0.0, "task.done", "not a dict"))  # type: ignore[arg-type]
    feed(m, "task.done", task_id="x", model="sonnet", run_s="fast", cost_usd=float("nan"))
    snap = m.snapshot()
    assert snap["events"]["bad"] == 1 and snap["events"]["seen"] == 3
    assert snap["tasks"]["completed"] == 2  # tolerant: the done events still count
    assert snap["cost_usd"]["total"] == 0


def test_label_values_are_bounded() -> None:
    m, _ = make(max_categories=5, max_models=3)
    for i in range(50):
        feed(m, "task.done", task_id=f"t{i}", model=f"m{i}", category=f"c{i}")
    snap = m.snapshot()
    assert set(snap["by_category"]) == {"c0", "c1", "c2", "c3", "c4", OTHER}
    assert set(snap["by_model"]) == {"m0", "m1", "m2", OTHER}
    text = m.prometheus_text().decode()
    assert "t49" not in text and "task_id" not in text


# ---- series ----------------------------------------------------------------------------------------


async def test_series_windows_at_one_second_and_one_minute() -> None:
    depth = {"ready": 5, "running": 2}
    m, clock = make(queue_depth=lambda: dict(depth))
    start = clock.t
    feed(m, "worker.state", worker="w1", state="busy", model="opus")
    feed(m, "worker.state", worker="w2", state="idle", model="haiku")
    for s in range(120):  # two minutes, one sample per second; a completion every 2 s
        clock.t = start + s
        await m.sample()
        if s % 2 == 0:
            feed(m, "task.done", task_id=f"t{s}", model="opus", run_s=float(s + 1), cost_usd=0.01)
        if s == 100:
            feed(m, "task.failed", task_id="x", model="opus", will_retry=True)
            feed(m, "scale.up", count=3, reason="queue", model="opus")
    clock.t = start + 119.5
    recent = m.series(60)
    assert recent["resolution_s"] == 1 and recent["step_s"] == 1 and len(recent["t"]) == 60
    assert recent["t"][-1] == start + 119
    assert sum(recent["completed"]) == 30 and sum(recent["failed"]) == 1
    assert recent["completed"][-2:] == [1, 0]  # t=118 had one, t=119 none
    assert recent["utilisation"][0] == 0.5
    assert recent["queue"] == {"ready": [5.0] * 60, "running": [2.0] * 60}
    assert recent["workers_by_model"] == {"haiku": [1.0] * 60, "opus": [1.0] * 60}
    assert recent["workers_by_state"]["busy"] == [1.0] * 60
    assert recent["totals"]["cost_usd_by_model"]["opus"] == pytest.approx(0.30)
    assert [a["text"] for a in recent["annotations"]] == ["up 3 opus (queue)"]
    assert recent["totals"]["run_s"]["p50"] == pytest.approx(90, rel=0.2)  # runs 61..119 s
    coarse = m.series(60, step_s=10)
    assert coarse["step_s"] == 10 and len(coarse["t"]) == 6
    assert coarse["completed_per_s"][0] == pytest.approx(0.5)
    day = m.series(86_400)
    assert day["resolution_s"] == 60 and day["step_s"] == 240 and len(day["t"]) == 360
    assert sum(day["completed"]) == 60
    assert m.series(86_400, step_s=1)["step_s"] == 60  # a step is never finer than the ring
    assert day["queue"]["ready"][-1] == 5.0 and day["queue"]["ready"][0] is None
    json.dumps(day)


async def test_series_forgets_what_is_older_than_its_ring() -> None:
    m, clock = make()
    feed(m, "task.done", task_id="old", model="sonnet")
    await m.sample()
    clock.t += 3600 + 5
    feed(m, "task.done", task_id="new", model="sonnet")
    assert sum(m.series(3600)["completed"]) == 1
    assert m.snapshot()["tasks_per_hour"] == 1  # sliding window
    assert sum(m.series(7200)["completed"]) == 2  # the minute ring still has it


@pytest.mark.parametrize(
    ("window", "step", "field"),
    [(0, None, "window_s"), (-5, None, "window_s"), (90_000, None, "window_s"),
     (float("nan"), None, "window_s"), ("1h", None, "window_s"), (60, 0, "step_s"), (60, -1, "step_s"),
     (60, float("inf"), "step_s"), (60, True, "step_s")],
)  # fmt: skip
def test_series_rejects_bad_windows_naming_the_field(window: Any, step: Any, field: str) -> None:
    m, _ = make()
    with pytest.raises(ValidationError) as info:
        m.series(window, step)
    assert info.value.field == field


# ---- Prometheus --------------------------------------------------------------------------------


def test_prometheus_exposition_parses_with_sensible_histograms() -> None:
    m, clock = make()
    lifecycle(m, clock, "a", "opus", "review", 3.0)
    lifecycle(m, clock, "b", "opus", "review", 300.0)
    feed(m, "worker.state", worker="w1", state="idle", model="opus")
    feed(m, "scale.up", count=2, reason="queue")
    feed(m, "swarm.halted", reason="crash loop")
    fams = families(m)
    done = fams["shoal_tasks_completed"]
    assert done.type == "counter"
    assert [(s.name, s.labels, s.value) for s in done.samples] == [
        ("shoal_tasks_completed_total", {"model": "opus", "category": "review"}, 2.0)
    ]
    run = fams["shoal_task_run_seconds"]
    assert run.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in run.samples if s.name.endswith("_bucket")]
    assert len(buckets) == 21 and buckets[-1] == (math.inf, 2.0)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert dict(buckets)[4.0] == 1.0 and dict(buckets)[512.0] == 2.0
    count = next(s for s in run.samples if s.name == "shoal_task_run_seconds_count")
    assert count.value == 2.0
    assert fams["shoal_workers"].samples[0].labels == {"state": "idle", "model": "opus"}
    breaker = {s.labels["state"]: s.value for s in fams["shoal_breaker_state"].samples}
    assert breaker == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    scale = fams["shoal_scale_events"].samples[0]
    assert scale.labels == {"direction": "up", "reason": "queue"} and scale.value == 2.0


def test_each_swarm_has_its_own_registry() -> None:
    a, _ = make()
    b, _ = make()
    feed(a, "task.done", task_id="x", model="opus")
    assert a.registry is not b.registry
    done_a = families(a)["shoal_tasks_completed"].samples
    done_b = families(b)["shoal_tasks_completed"].samples
    assert len(done_a) == 1 and done_b == []
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "shoal_" not in global_text
    c, _ = make()  # a third one registers without a duplicate-name error
    assert families(c)["shoal_tasks_completed"].samples == []


# ---- through the bus ---------------------------------------------------------------------------


async def test_actor_applies_bus_events_and_samples_every_second(autojump_clock: trio.abc.Clock) -> None:
    bus = EventBus()
    samples: list[float] = []
    enough = trio.Event()

    async def queue_depth() -> Mapping[str, int]:
        samples.append(trio.current_time())
        if len(samples) == 5:
            enough.set()
        return {"ready": len(samples)}

    m = MetricsActor(bus, SwarmConfig, trio.current_time, queue_depth)
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        bus.publish("task.submitted", {"task_id": "a", "model": None, "category": "x"})
        bus.publish(
            "task.running", {"task_id": "a", "worker": "w1", "attempt": 1, "model": "haiku", "wait_s": 0.2}
        )
        bus.publish("task.done", {"task_id": "a", "model": "haiku", "category": "x", "run_s": 1.5})
        with trio.fail_after(30):
            await enough.wait()
        await trio.testing.wait_all_tasks_blocked()
        snap = m.snapshot()
        nursery.cancel_scope.cancel()
    assert snap["tasks"] == {"submitted": 1, "started": 1, "completed": 1}
    assert snap["events"]["seen"] == 3
    assert snap["queue"] == {"ready": 5}
    gaps = [b - a for a, b in itertools.pairwise(samples)]
    assert all(0.9 <= g <= 1.1 for g in gaps), gaps
