"""The scaler: the pure `decide` with explicit times, and the actor on a real EventBus (autojump clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from shoal.actors.capacity import MemoryView
from shoal.actors.scaler import (
    CATEGORY,
    IDLE,
    MIN_WORKERS,
    PREDICTIVE,
    QUEUE,
    REBALANCE,
    UTILISATION,
    Decision,
    ScalerActor,
    ScalerInputs,
    ScalerMemory,
    WorkerView,
    decide,
)
from shoal.protocols.config import ModelsConfig, ScalingConfig, SwarmConfig, patch_config
from shoal.protocols.workers import WorkerState as S
from shoal.runtime.eventbus import Event, EventBus

MODELS = ModelsConfig()
MIXED = ModelsConfig(weights={"haiku": 0.3, "sonnet": 0.5, "opus": 0.2})


def w(
    wid: str,
    state: S = S.IDLE,
    model: str | None = "sonnet",
    idle_since: float | None = None,
    caps: frozenset[str] | None = None,
) -> WorkerView:
    if state is S.IDLE and idle_since is None:
        idle_since = 0.0
    return WorkerView(wid, model, state, idle_since, capabilities=caps)


def run(
    scaling: ScalingConfig | None = None,
    models: ModelsConfig = MODELS,
    memory: ScalerMemory | None = None,
    **kw: Any,
) -> Decision:
    return decide(ScalerInputs(**kw), scaling or ScalingConfig(), models, memory or ScalerMemory())


def spawned(d: Decision) -> dict[str, int]:
    out: dict[str, int] = {}
    for model, _ in d.spawn:
        out[model] = out.get(model, 0) + 1
    return out


# ---- scale-up --------------------------------------------------------------------------------------


def test_deep_queue_scales_up_in_one_batch() -> None:
    d = run(ScalingConfig(max_workers=32, max_spawn_per_tick=32), ready_by_model={None: 200})
    assert len(d.spawn) == 32
    assert {r for _, r in d.spawn} == {QUEUE}
    assert d.summary["desired"] == {"sonnet": 200}
    assert d.summary["unmet"] == 168
    assert d.summary["ready"] == {"*": 200}


def test_max_workers_counts_every_worker_holding_a_process() -> None:
    scaling = ScalingConfig(max_workers=32, max_spawn_per_tick=32)
    busy = [w(f"b{i}", S.BUSY) for i in range(30)]
    d = run(scaling, ready_by_model={None: 100}, running_by_model={"sonnet": 30}, workers=busy)
    assert len(d.spawn) == 2
    leaving = [*busy, w("s1", S.STOPPING), w("p1", S.PAUSED)]
    d = run(scaling, ready_by_model={None: 100}, running_by_model={"sonnet": 30}, workers=leaving)
    assert d.spawn == []
    assert d.summary["limited_by"] == ["max_workers"]
    gone = [*busy, w("x1", S.CRASHED), w("x2", S.STOPPED)]  # no process: not counted
    d = run(scaling, ready_by_model={None: 100}, running_by_model={"sonnet": 30}, workers=gone)
    assert len(d.spawn) == 2


def test_max_spawn_per_tick_and_pending_spawns_count_as_capacity() -> None:
    scaling = ScalingConfig(max_workers=100, max_spawn_per_tick=8)
    d = run(scaling, ready_by_model={None: 20})
    assert len(d.spawn) == 8
    starting = [w(f"s{i}", S.STARTING) for i in range(8)]
    d = run(scaling, ready_by_model={None: 20}, workers=starting)
    assert len(d.spawn) == 8  # 8 more, not 8 again on top of a double count
    d = run(scaling, ready_by_model={None: 8}, workers=starting)
    assert d.spawn == []  # the 8 starting workers will take the 8 tasks


def test_tasks_per_worker_divides_demand() -> None:
    d = run(ScalingConfig(tasks_per_worker=4, max_workers=50), ready_by_model={None: 10})
    assert len(d.spawn) == 3


def test_demand_is_counted_per_model() -> None:
    idle_sonnet = [w("a"), w("b")]
    d = run(ready_by_model={"opus": 3, "haiku": 1}, workers=idle_sonnet)
    assert spawned(d) == {"opus": 3, "haiku": 1}  # idle sonnet workers cannot take pinned work
    busy_opus = [w("o1", S.BUSY, "opus")]
    d = run(ready_by_model={"opus": 2}, running_by_model={"opus": 1}, workers=busy_opus)
    assert spawned(d) == {"opus": 2}
    assert d.desired == {"opus": 3}


def test_unpinned_work_fills_idle_workers_of_any_model_first() -> None:
    idle_haiku = [w("h1", model="haiku"), w("h2", model="haiku")]
    d = run(models=ModelsConfig(weights={"opus": 1.0}), ready_by_model={None: 3}, workers=idle_haiku)
    assert spawned(d) == {"opus": 1}
    assert d.summary["unpinned"]["absorbed"] == {"haiku": 2}
    assert d.desired == {"haiku": 2, "opus": 1}  # the absorbing workers are wanted, not retired


def test_unpinned_work_is_split_by_weights() -> None:
    d = run(ScalingConfig(max_workers=20, max_spawn_per_tick=20), models=MIXED, ready_by_model={None: 10})
    assert spawned(d) == {"haiku": 3, "sonnet": 5, "opus": 2}
    d = run(models=MIXED, ready_by_model={None: 1})
    assert spawned(d) == {"sonnet": 1}  # largest share gets the odd task, nothing rounds up to 3 workers
    d = run(models=ModelsConfig(default="haiku"), ready_by_model={None: 4})
    assert spawned(d) == {"haiku": 4}  # no weights: the default model


def test_spawn_cap_is_shared_between_models_in_proportion() -> None:
    scaling = ScalingConfig(max_workers=10, max_spawn_per_tick=10)
    d = run(scaling, ready_by_model={"opus": 30, "haiku": 10})
    assert spawned(d) == {"opus": 8, "haiku": 2}  # 10 slots, 3:1 demand (largest remainder)


def test_parked_model_gets_no_spawns_and_its_share_falls_back() -> None:
    models = ModelsConfig(weights={"sonnet": 1.0}, fallback={"sonnet": ("opus", "haiku")})
    d = run(models=models, ready_by_model={None: 4, "sonnet": 2}, parked={"sonnet": 1.9e9, "opus": 1.9e9})
    assert spawned(d) == {"haiku": 4}  # first unparked model of the chain; pinned sonnet waits
    assert "parked" in d.summary["limited_by"]
    assert d.summary["deficit"]["sonnet"] == 2
    assert d.summary["parked"] == {"sonnet": 1.9e9, "opus": 1.9e9}
    d = run(models=ModelsConfig(weights={"opus": 1.0}), ready_by_model={None: 3}, parked={"opus": 1.0})
    assert spawned(d) == {"sonnet": 3}  # no chain: the default
    d = run(ready_by_model={None: 3}, parked={"sonnet": 1.0})
    assert d.spawn == []  # default parked, no chain: unpinned work waits
    assert d.summary["unpinned"]["unplaced"] == 3


def test_halted_swarm_spawns_nothing_but_may_retire() -> None:
    scaling = ScalingConfig(idle_s=10, stabilisation_s=0, min_workers=0)
    d = run(scaling, ready_by_model={None: 5}, halted=True, workers=[w("i1", idle_since=0.0)], now=100.0)
    assert d.spawn == []
    assert "halted" in d.summary["limited_by"]
    d = run(scaling, halted=True, workers=[w("i1", idle_since=0.0)], now=100.0)
    assert d.retire == [("i1", IDLE)]


def test_utilisation_above_threshold_adds_capacity() -> None:
    scaling = ScalingConfig(tasks_per_worker=4, utilisation_threshold=0.8, max_workers=20)
    two_busy = [w("a", S.BUSY), w("b", S.BUSY)]
    d = run(scaling, ready_by_model={None: 1}, running_by_model={"sonnet": 2}, workers=two_busy)
    assert d.summary["desired_by"]["queue"] == {"sonnet": 1}  # ceil(3 / 4): no queue growth
    assert d.spawn == [("sonnet", UTILISATION)]  # ceil(2 busy / 0.8) = 3 workers
    calm = [*two_busy, w("c"), w("d")]  # 50 % busy: under the threshold
    d = run(scaling, ready_by_model={None: 1}, running_by_model={"sonnet": 2}, workers=calm)
    assert d.spawn == []
    d = run(scaling, running_by_model={"sonnet": 2}, workers=two_busy)
    assert d.spawn == []  # all busy but nothing waits: no growth
    eager = ScalingConfig(tasks_per_worker=4, utilisation_threshold=0.0, max_workers=20)
    d = run(eager, ready_by_model={None: 1}, running_by_model={"sonnet": 2}, workers=calm)
    assert d.spawn == [("sonnet", UTILISATION)]  # threshold 0: one more whenever any is busy


def test_predictive_prespawn_from_arrival_rate() -> None:
    scaling = ScalingConfig(arrival_window_s=60, max_workers=50, max_spawn_per_tick=50)
    arrivals = [40.0 + i for i in range(60)]  # 1 task/s over the last minute
    d = run(scaling, arrivals=arrivals, mean_run_s=10.0, now=100.0)
    assert d.spawn == [("sonnet", PREDICTIVE)] * 10  # Little: 1/s x 10 s = 10 in flight
    assert d.summary["arrival_rate_per_s"] == 1.0
    d = run(scaling, arrivals=arrivals, mean_run_s=10.0, now=100.0, running_by_model={"sonnet": 7})
    assert spawned(d) == {"sonnet": 10}  # 7 for the running work, 3 ahead of demand
    assert [r for _, r in d.spawn].count(PREDICTIVE) == 3
    d = run(scaling, arrivals=arrivals, mean_run_s=10.0, now=1000.0)
    assert d.spawn == []  # arrivals outside the window do not count
    d = run(scaling, arrivals=arrivals, mean_run_s=None, now=100.0)
    assert d.spawn == []  # no run-time estimate yet
    off = ScalingConfig(predictive=False, arrival_window_s=60, max_workers=50, max_spawn_per_tick=50)
    assert run(off, arrivals=arrivals, mean_run_s=10.0, now=100.0).spawn == []


def test_min_workers_floor_spawns_by_weights_unless_halted() -> None:
    d = run(ScalingConfig(min_workers=4), models=MIXED)
    assert sorted(d.spawn) == sorted(
        [("sonnet", MIN_WORKERS)] * 2 + [("haiku", MIN_WORKERS), ("opus", MIN_WORKERS)]
    )
    assert run(ScalingConfig(min_workers=4), halted=True).spawn == []
    assert run(ScalingConfig(min_workers=2), workers=[w("a"), w("b", S.PAUSED)]).spawn == []


# ---- scale-down ------------------------------------------------------------------------------------


def simulate(
    scaling: ScalingConfig, times: range, world: Callable[[float], dict[str, Any]], memory: ScalerMemory
) -> dict[float, Decision]:
    """Run one decision per tick, as the actor would."""
    return {
        float(t): decide(ScalerInputs(now=float(t), **world(float(t))), scaling, MODELS, memory)
        for t in times
    }


def test_scale_down_only_after_idle_and_the_stabilisation_window() -> None:
    scaling = ScalingConfig(idle_s=60, stabilisation_s=300, max_retire_per_tick=1, max_workers=8)

    def world(t: float) -> dict[str, Any]:
        if t < 10:  # four busy workers, then nothing to do from t=10
            return {"workers": [w(f"w{i}", S.BUSY) for i in range(4)], "running_by_model": {"sonnet": 4}}
        return {"workers": [w(f"w{i}", idle_since=10.0 + i) for i in range(4)]}

    memory = ScalerMemory()
    ticks = simulate(scaling, range(0, 400, 5), world, memory)
    first = min(t for t, d in ticks.items() if d.retire)
    assert first == 310  # idle since 10-13 (idle_s passed at 73) but 4 were wanted until t=10
    assert ticks[305.0].summary["stabilised"] == {"sonnet": 4}
    assert ticks[310.0].retire == [("w0", IDLE)]  # the longest idle first
    assert all(not d.retire for t, d in ticks.items() if t < 310)
    assert all(not d.spawn for d in ticks.values())


def test_a_fresh_scaler_retires_nothing_until_it_has_watched_a_whole_window() -> None:
    scaling = ScalingConfig(idle_s=60, stabilisation_s=300)
    memory = ScalerMemory()
    idle = [w("a", idle_since=0.0), w("b", idle_since=0.0)]  # idle long before the scaler started
    assert run(scaling, memory=memory, workers=idle, now=1000.0).retire == []
    assert run(scaling, memory=memory, workers=idle, now=1299.0).retire == []
    assert run(scaling, memory=memory, workers=idle, now=1300.0).retire == [("a", IDLE)]


def test_no_retirement_before_idle_s_even_without_a_window() -> None:
    scaling = ScalingConfig(idle_s=60, stabilisation_s=0)
    workers = [w("a", idle_since=100.0)]
    assert run(scaling, workers=workers, now=159.0).retire == []
    assert run(scaling, workers=workers, now=160.0).retire == [("a", IDLE)]


def test_retires_at_most_n_per_tick_longest_idle_first_never_below_min() -> None:
    idle = [w(f"w{i}", idle_since=float(10 - i)) for i in range(6)]  # w5 idle longest
    d = run(ScalingConfig(idle_s=0, stabilisation_s=0, max_retire_per_tick=2), workers=idle, now=100.0)
    assert d.retire == [("w5", IDLE), ("w4", IDLE)]
    d = run(
        ScalingConfig(idle_s=0, stabilisation_s=0, max_retire_per_tick=6, min_workers=4),
        workers=idle,
        now=100.0,
    )
    assert [wid for wid, _ in d.retire] == ["w5", "w4"]


def test_never_retires_busy_refreshing_paused_starting_or_stopping_workers() -> None:
    scaling = ScalingConfig(idle_s=0, stabilisation_s=0, max_retire_per_tick=10)
    others = [
        WorkerView(f"x-{state.value}", "sonnet", state, idle_since=0.0)
        for state in (S.BUSY, S.REFRESHING, S.PAUSED, S.STARTING, S.STOPPING)
    ]
    claimed = WorkerView("claimed", "sonnet", S.IDLE, idle_since=0.0, task_id="t1")  # just got a task
    d = run(scaling, workers=[*others, claimed, w("free", idle_since=0.0)], now=50.0)
    assert d.retire == [("free", IDLE)]


def test_scale_down_keeps_workers_a_parked_model_will_need() -> None:
    scaling = ScalingConfig(idle_s=0, stabilisation_s=0)
    d = run(
        scaling, ready_by_model={"opus": 1}, parked={"opus": 2e9}, workers=[w("o", model="opus")], now=9.0
    )
    assert d.retire == [] and d.spawn == []


def test_rebalance_at_max_workers_makes_room_for_waiting_model() -> None:
    scaling = ScalingConfig(max_workers=4, idle_s=30, stabilisation_s=300, max_retire_per_tick=2)
    haiku = [w(f"h{i}", model="haiku", idle_since=float(i)) for i in range(4)]
    d = run(scaling, ready_by_model={"opus": 3}, workers=haiku, now=40.0)
    assert d.spawn == []
    assert d.retire == [("h0", REBALANCE), ("h1", REBALANCE)]  # window not covered: only rebalance
    d = run(scaling, ready_by_model={"opus": 3}, workers=haiku, now=20.0)
    assert d.retire == [("h0", REBALANCE), ("h1", REBALANCE)]  # ready work waits: at once, not after idle_s


def test_work_no_live_worker_can_take_frees_a_slot_at_once_and_only_one() -> None:
    """Issue 13 item 3: a task escalated to opus waited idle_s (60 s) behind 4 idle sonnet workers."""
    scaling = ScalingConfig(max_workers=4, idle_s=60, stabilisation_s=300, max_retire_per_tick=4)
    sonnet = [w(f"s{i}", idle_since=10.0) for i in range(4)]  # idle for no time at all
    d = run(scaling, ready_by_model={"opus": 1}, workers=sonnet, now=10.0)
    assert d.retire == [("s0", REBALANCE)] and d.spawn == []
    assert d.summary["limited_by"] == ["max_workers"]
    # the next decisions, while s0 runs its stop ladder: its slot is already on the way, no second one
    leaving = [w("s0", S.STOPPING), *sonnet[1:]]
    d = run(scaling, ready_by_model={"opus": 1}, workers=leaving, now=10.5)
    assert d.retire == [] and d.spawn == []
    # s0 gone: the opus worker is spawned into its slot, and nothing else is retired
    d = run(scaling, ready_by_model={"opus": 1}, workers=sonnet[1:], now=11.0)
    assert d.spawn == [("opus", QUEUE)] and d.retire == []


def test_rebalance_never_takes_a_worker_whose_model_has_work_waiting() -> None:
    """No thrash: each side keeps the workers its own waiting work needs."""
    scaling = ScalingConfig(max_workers=2, idle_s=60, max_retire_per_tick=2)
    # a sonnet task waits too (its idle worker is about to take it): sonnet is not surplus
    workers = [w("s0", idle_since=5.0), w("s1", S.BUSY)]
    ready = {"opus": 1, "sonnet": 1}
    d = run(scaling, ready_by_model=ready, running_by_model={"sonnet": 1}, workers=workers, now=5.0)
    assert d.retire == []
    # one worker of each model, work for both: nothing moves
    workers = [w("s0", idle_since=5.0), w("o0", model="opus", idle_since=5.0)]
    d = run(scaling, ready_by_model=ready, workers=workers, now=5.0)
    assert d.retire == [] and d.spawn == []
    # only opus work waits: the idle sonnet goes, the idle opus worker stays
    d = run(scaling, ready_by_model={"opus": 2}, workers=workers, now=5.0)
    assert d.retire == [("s0", REBALANCE)]


A, B = frozenset({"a"}), frozenset({"b"})


def test_work_of_a_category_no_worker_takes_frees_a_slot_at_once_and_only_one() -> None:
    """Issue 13 item 3, capabilities: 4 idle workers that take only `a` hold every slot; a `b` task
    gets one slot at once (not after idle_s), and a worker that takes every category."""
    scaling = ScalingConfig(max_workers=4, idle_s=60, stabilisation_s=300, max_retire_per_tick=4)
    limited = [w(f"a{i}", idle_since=10.0, caps=A) for i in range(4)]
    ready = {"ready_by_model": {None: 1}, "ready_by_category": {("b", None): 1}}
    d = run(scaling, workers=limited, now=10.0, **ready)
    assert d.retire == [("a0", REBALANCE)] and d.spawn == []
    assert d.summary["categories"] == {"stranded": {"sonnet": ["b"]}, "unmet": 1}
    assert d.summary["limited_by"] == ["max_workers"]
    # while a0 runs its stop ladder: no second slot
    leaving = [w("a0", S.STOPPING, caps=A), *limited[1:]]
    d = run(scaling, workers=leaving, now=10.5, **ready)
    assert d.retire == [] and d.spawn == []
    # a0 gone: one worker that takes every category, nothing else retired
    d = run(scaling, workers=limited[1:], now=11.0, **ready)
    assert d.spawn == [("sonnet", CATEGORY)] and d.retire == []
    # it is starting: it will take `b`, so nothing more happens
    fresh = [*limited[1:], w("w9", S.STARTING)]
    d = run(scaling, workers=fresh, now=11.5, **ready)
    assert d.spawn == [] and d.retire == []


def test_category_rebalance_cannot_thrash_between_two_categories() -> None:
    """Two categories taking turns: each retirement replaces a limited worker by an unlimited one,
    so the second category finds a taker and nothing is retired again."""
    scaling = ScalingConfig(max_workers=2, idle_s=60, max_retire_per_tick=2)
    workers = [w("a0", idle_since=5.0, caps=A), w("b0", idle_since=5.0, caps=B)]
    # a `c` task: one of them goes (the longest idle, then by id), not both
    d = run(scaling, workers=workers, now=5.0, ready_by_model={None: 1}, ready_by_category={("c", None): 1})
    assert d.retire == [("a0", REBALANCE)]
    # the new worker took `c`; now `a` work waits: the new, unlimited worker takes it; nothing moves
    workers = [w("w1", S.BUSY), w("b0", idle_since=5.0, caps=B)]
    d = run(
        scaling,
        workers=workers,
        now=6.0,
        ready_by_model={None: 1},
        running_by_model={"sonnet": 1},
        ready_by_category={("a", None): 1},
    )
    assert d.retire == [] and d.spawn == []
    # a worker that can take ready work is never retired for another category's work
    workers = [w("a0", idle_since=5.0, caps=A), w("b0", idle_since=5.0, caps=B)]
    ready_cat = {("a", None): 1, ("c", None): 1}
    d = run(scaling, workers=workers, now=7.0, ready_by_model={None: 2}, ready_by_category=ready_cat)
    assert d.retire == [("b0", REBALANCE)]


def test_category_work_below_the_cap_spawns_at_once_and_covered_work_spawns_nothing() -> None:
    scaling = ScalingConfig(max_workers=4)
    limited = [w("a0", caps=A)]
    d = run(scaling, workers=limited, ready_by_model={None: 1}, ready_by_category={("b", None): 1})
    assert d.spawn == [("sonnet", CATEGORY)] and d.retire == []
    # a busy worker that takes `b` will take it when done: that is the queue's job, not a stranding
    busy_b = [w("a0", caps=A), w("b0", S.BUSY, caps=B)]
    d = run(
        scaling,
        workers=busy_b,
        ready_by_model={None: 1},
        running_by_model={"sonnet": 1},
        ready_by_category={("b", None): 1},
    )
    assert d.spawn == []
    # pinned to opus, no opus worker at all: the model demand spawns it (once, reason queue)
    d = run(scaling, workers=limited, ready_by_model={"opus": 1}, ready_by_category={("b", "opus"): 1})
    assert d.spawn == [("opus", QUEUE)]
    # pinned to sonnet, the only sonnet worker takes `a` only: a sonnet worker for it
    d = run(scaling, workers=limited, ready_by_model={"sonnet": 1}, ready_by_category={("b", "sonnet"): 1})
    assert d.spawn == [("sonnet", CATEGORY)]


def mem(free: float | None, cost: float = 300.0, floor: float = 512.0, **kw: Any) -> MemoryView:
    return MemoryView(free_mb=free, floor_mb=floor, cost_mb=cost, source="measured", profile="fake", **kw)


def test_spawns_stop_at_the_free_memory_floor() -> None:
    """Issue 14 item 4: 1512 MiB free, a 512 MiB floor, 300 MiB a worker: 3 fit, not the 10 wanted."""
    scaling = ScalingConfig(max_workers=32, max_spawn_per_tick=32)
    d = run(scaling, ready_by_model={None: 10}, node=mem(1512))
    assert len(d.spawn) == 3
    assert d.summary["limited_by"] == ["memory"] and d.summary["held_back_by"] == "memory"
    assert d.summary["memory"]["fit"] == 3 and d.summary["unmet"] == 7
    # the 3 are starting: they will grow to 300 each, which free memory does not show yet
    starting = [w(f"n{i}", S.STARTING) for i in range(3)]
    d = run(scaling, ready_by_model={None: 10}, workers=starting, node=mem(1512))
    assert d.spawn == [] and d.summary["memory"]["reserved_mb"] == 900
    # started, at 280 of their 300 MiB, and free memory fell by what they use: still nothing
    up = [w(f"n{i}", S.BUSY) for i in range(3)]
    rss = {f"n{i}": 280.0 for i in range(3)}
    d = run(
        scaling,
        ready_by_model={None: 7},
        running_by_model={"sonnet": 3},
        workers=up,
        node=mem(1512 - 840, rss_mb=rss),
    )
    assert d.spawn == [] and d.summary["memory"]["fit"] == 0 and d.summary["held_back_by"] == "memory"
    # memory freed elsewhere on the machine: the next decision spawns into it
    d = run(
        scaling,
        ready_by_model={None: 7},
        running_by_model={"sonnet": 3},
        workers=up,
        node=mem(1512 - 840 + 700, rss_mb=rss),
    )
    assert len(d.spawn) == 2


def test_memory_bounds_the_floor_too_and_unknown_memory_limits_nothing() -> None:
    scaling = ScalingConfig(min_workers=4, max_workers=8)
    d = run(scaling, node=mem(1200))  # 688 above the floor: 2 workers of 300
    assert [r for _, r in d.spawn] == [MIN_WORKERS, MIN_WORKERS]
    d = run(scaling, node=mem(None))  # /proc/meminfo unreadable: memory is not a limit
    assert len(d.spawn) == 4
    # both caps bind: both are named, max_workers first
    d = run(ScalingConfig(max_workers=2), ready_by_model={None: 5}, node=mem(512 + 600))
    assert d.summary["limited_by"] == ["max_workers", "memory"] and len(d.spawn) == 2


def test_at_the_memory_cap_ready_work_for_another_model_frees_an_idle_workers_memory() -> None:
    scaling = ScalingConfig(max_workers=8, idle_s=60)
    sonnet = [w("s0", idle_since=10.0), w("s1", idle_since=10.0)]
    rss = {"s0": 300.0, "s1": 300.0}
    d = run(scaling, ready_by_model={"opus": 1}, workers=sonnet, now=10.0, node=mem(700, rss_mb=rss))
    assert d.spawn == [] and d.retire == [("s0", REBALANCE)]
    assert d.summary["limited_by"] == ["memory"]


def test_scale_up_is_immediate_whatever_the_window_remembers() -> None:
    memory = ScalerMemory()
    scaling = ScalingConfig(max_workers=10, max_spawn_per_tick=10, stabilisation_s=300)
    run(scaling, memory=memory, ready_by_model={None: 2}, now=0.0)
    busy = [w("a", S.BUSY), w("b", S.BUSY)]
    d = run(
        scaling,
        memory=memory,
        ready_by_model={None: 6},
        running_by_model={"sonnet": 2},
        workers=busy,
        now=1.0,
    )
    assert len(d.spawn) == 6


def test_stabilisation_memory_stays_bounded() -> None:
    memory = ScalerMemory()
    for i in range(20_000):
        memory.record(i * 0.05, {"sonnet": i % 7, "opus": 1}, 300.0)
    assert memory.stabilised("sonnet") == 6
    assert all(len(b) <= ScalerMemory._BUCKETS + 2 for b in memory._peaks.values())
    memory.record(2000.0, {}, 300.0)
    memory.record(2400.0, {}, 300.0)
    assert memory.stabilised("sonnet") == 0 and memory._peaks == {}


# ---- the actor -------------------------------------------------------------------------------------


class World:
    """The swarm as the scaler sees it: plain state plus the recording spawn/retire callables."""

    def __init__(self) -> None:
        self.ready: dict[str | None, int] = {}
        self.ready_cat: dict[tuple[str, str | None], int] = {}
        self.node: MemoryView | None = None
        self.running: dict[str | None, int] = {}
        self.workers: dict[str, WorkerView] = {}
        self.spawned: list[tuple[str, str]] = []
        self.retired: list[tuple[str, str]] = []
        self.refuse: set[str] = set()
        self.fail_inputs = False
        self.fail_spawn = False
        self.calls = 0  # get_inputs calls: one per decision attempt
        self._n = 0
        self._waiters: list[trio.Event] = []

    def _changed(self) -> None:
        for ev in self._waiters:
            ev.set()
        self._waiters.clear()

    async def until(self, pred: Callable[[], bool]) -> None:
        while not pred():
            ev = trio.Event()
            self._waiters.append(ev)
            await ev.wait()

    async def get_inputs(self) -> ScalerInputs:
        self.calls += 1
        self._changed()
        if self.fail_inputs:
            self.fail_inputs = False
            raise RuntimeError("queue busy")
        return ScalerInputs(
            ready_by_model=dict(self.ready),
            ready_by_category=dict(self.ready_cat),
            running_by_model=dict(self.running),
            workers=list(self.workers.values()),
            now=trio.current_time(),
            node=self.node,
        )

    async def spawn(self, model: str, reason: str) -> None:
        if self.fail_spawn:
            raise OSError("no such file: claude")
        self._n += 1
        wid = f"w{self._n}"
        self.workers[wid] = WorkerView(wid, model, S.STARTING)
        self.spawned.append((model, reason))
        self._changed()

    async def retire(self, wid: str, reason: str) -> bool:
        if wid in self.refuse:
            return False
        del self.workers[wid]
        self.retired.append((wid, reason))
        self._changed()
        return True


class Config:
    def __init__(self, **scaling: Any) -> None:
        self.value = SwarmConfig(scaling=ScalingConfig(**scaling))

    def __call__(self) -> SwarmConfig:
        return self.value


async def start(nursery: trio.Nursery, config: Config, bus: EventBus, world: World) -> ScalerActor:
    """Start the actor and let its first decision (made at once on start) pass."""
    actor = ScalerActor(config, bus, world.get_inputs, world.spawn, world.retire)
    await nursery.start(actor.run)
    with trio.fail_after(1):
        await world.until(lambda: world.calls >= 1)
    return actor


async def test_actor_scales_up_on_submit_event_not_on_the_tick(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=3600, max_workers=32, max_spawn_per_tick=32)
    async with trio.open_nursery() as nursery:
        await start(nursery, config, bus, world)
        t0 = trio.current_time()
        world.ready = {None: 200}
        bus.publish("task.submitted", {"count": 200})
        with trio.fail_after(60):
            await world.until(lambda: len(world.spawned) == 32)
        assert trio.current_time() - t0 < 1  # the event woke it, not the hour-long tick
        nursery.cancel_scope.cancel()


async def test_actor_decides_on_the_tick_without_events(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=5)
    async with trio.open_nursery() as nursery:
        await start(nursery, config, bus, world)
        t0 = trio.current_time()
        world.ready = {"opus": 2}  # changed behind the scaler's back: no event
        with trio.fail_after(60):
            await world.until(lambda: len(world.spawned) == 2)
        assert 4.9 < trio.current_time() - t0 < 5.5
        assert world.spawned == [("opus", QUEUE)] * 2
        nursery.cancel_scope.cancel()


async def test_hot_config_change_applies_at_the_next_wake_while_busy(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=3600, max_workers=2, max_spawn_per_tick=8)
    async with trio.open_nursery() as nursery:
        actor = await start(nursery, config, bus, world)
        world.ready = {None: 10}
        bus.publish("task.submitted", {"count": 10})
        with trio.fail_after(60):
            await world.until(lambda: len(world.spawned) == 2)
        for wid, view in list(world.workers.items()):  # both now run a task
            world.workers[wid] = WorkerView(wid, view.model, S.BUSY)
        world.ready, world.running = {None: 8}, {"sonnet": 2}
        decisions = actor.decisions
        config.value = patch_config(config.value, {"scaling": {"max_workers": 6}})
        bus.publish("config.changed", {"keys": ["scaling.max_workers"]})
        with trio.fail_after(60):
            await world.until(lambda: len(world.spawned) == 6)
        assert actor.decisions == decisions + 1  # exactly the one wake
        assert actor.last_decision is not None
        assert actor.last_decision.summary["limits"]["max_workers"] == 6
        nursery.cancel_scope.cancel()


async def test_every_decision_is_published_with_reason_and_inputs(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=3600, max_workers=4, max_spawn_per_tick=4)
    with bus.subscribe(["scale.*"]) as sub:
        async with trio.open_nursery() as nursery:
            await start(nursery, config, bus, world)
            world.ready = {"opus": 5}
            bus.publish("task.submitted", {"task_id": "t1", "model": "opus"})
            with trio.fail_after(60):
                await world.until(lambda: len(world.spawned) == 4)
            nursery.cancel_scope.cancel()
        events: list[Event] = []
        while True:
            try:
                events.append(sub.receive_nowait())
            except trio.WouldBlock:
                break
    decision = next(e for e in events if e.topic == "scale.decision" and e.data["spawn"])
    assert decision.data["spawn"] == [{"model": "opus", "reason": QUEUE}] * 4
    assert decision.data["inputs"]["ready"] == {"opus": 5}
    assert decision.data["inputs"]["limited_by"] == ["max_workers"]
    assert "spawn 4 opus (queue)" in decision.data["reason"]
    up = [e for e in events if e.topic == "scale.up"]
    assert [(e.data["count"], e.data["model"], e.data["reason"]) for e in up] == [(4, "opus", QUEUE)]
    assert up[0].data["inputs"]["desired"] == {"opus": 5}


async def test_refused_retire_is_not_an_error_and_not_announced(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = (
        EventBus(),
        World(),
        Config(tick_s=1, idle_s=5, stabilisation_s=0, max_retire_per_tick=2),
    )
    world.workers = {wid: WorkerView(wid, "sonnet", S.IDLE, idle_since=0.0) for wid in ("a", "b")}
    world.refuse = {"a"}
    with bus.subscribe(["scale.down"]) as sub:
        async with trio.open_nursery() as nursery:
            await start(nursery, config, bus, world)
            with trio.fail_after(60):
                await world.until(lambda: len(world.retired) == 1)
            down = await sub.receive()
            nursery.cancel_scope.cancel()
    assert world.retired == [("b", IDLE)]
    assert down.data["worker"] == "b" and down.data["reason"] == IDLE and down.data["idle_s"] >= 5


async def test_actor_records_arrivals_and_run_time_for_prediction(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=3600, max_workers=20, arrival_window_s=60)
    async with trio.open_nursery() as nursery:
        actor = await start(nursery, config, bus, world)
        bus.publish("task.done", {"task_id": "t0", "model": "sonnet", "run_s": 10.0})
        bus.publish("task.submitted", {"count": 30})  # a batch, already done by the time we look
        with trio.fail_after(60):
            await world.until(lambda: len(world.spawned) == 5)
        assert len(actor.arrivals) == 30
        assert actor.mean_run_s == 10.0
        assert world.spawned == [("sonnet", PREDICTIVE)] * 5  # 30/60 per s x 10 s
        nursery.cancel_scope.cancel()


async def test_actor_survives_failing_inputs_and_spawns(autojump_clock: trio.abc.Clock) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=2)
    with bus.subscribe(["scale.error"]) as sub:
        world.fail_inputs = True
        async with trio.open_nursery() as nursery:
            await start(nursery, config, bus, world)
            first = await sub.receive()
            assert first.data["stage"] == "inputs" and "queue busy" in first.data["error"]
            world.fail_spawn = True
            world.ready = {None: 1}
            bus.publish("task.submitted", {})
            second = await sub.receive()
            assert second.data["stage"] == "spawn" and second.data["model"] == "sonnet"
            world.fail_spawn = False
            with trio.fail_after(60):
                await world.until(lambda: len(world.spawned) == 1)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("noisy", ["worker.output", "worker.context"])
async def test_worker_output_does_not_wake_the_scaler(autojump_clock: trio.abc.Clock, noisy: str) -> None:
    bus, world, config = EventBus(), World(), Config(tick_s=100)
    async with trio.open_nursery() as nursery:
        await start(nursery, config, bus, world)
        t0 = trio.current_time()
        world.ready = {None: 1}
        bus.publish(noisy, {"worker": "w1"})
        with trio.fail_after(200):
            await world.until(lambda: len(world.spawned) == 1)
        assert trio.current_time() - t0 >= 100  # only the tick found the work
        nursery.cancel_scope.cancel()


async def test_escalated_task_gets_its_worker_at_once_at_the_cap(autojump_clock: trio.abc.Clock) -> None:
    """Issue 13 item 3 end to end: 4 idle sonnet workers hold every slot; a task escalated to opus
    gets an opus worker after one sonnet worker's stop ladder (2 s here), not after `idle_s`."""
    bus, world = EventBus(), World()
    config = Config(tick_s=1, max_workers=4, idle_s=60, stabilisation_s=300, max_retire_per_tick=4)
    world.workers = {f"s{i}": WorkerView(f"s{i}", "sonnet", S.IDLE, idle_since=0.0) for i in range(4)}

    async def retire(wid: str, reason: str) -> bool:  # the worker stops for 2 s, then it is gone
        world.workers[wid] = WorkerView(wid, "sonnet", S.STOPPING)
        world.retired.append((wid, reason))

        async def gone() -> None:
            await trio.sleep(2)
            del world.workers[wid]
            bus.publish("worker.exited", {"worker": wid})

        nursery.start_soon(gone)
        return True

    world.retire = retire  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await start(nursery, config, bus, world)
        t0 = trio.current_time()
        world.ready = {"opus": 1}  # failed twice on sonnet: the queue routes it to opus now
        bus.publish("task.ready", {"task_id": "poison", "model": "opus"})
        with trio.fail_after(120):
            await world.until(lambda: ("opus", QUEUE) in world.spawned)
        assert trio.current_time() - t0 < 3  # the stop ladder, not idle_s (60 s)
        assert world.retired == [("s0", REBALANCE)]  # one slot for one task, however many decisions
        for _ in range(5):  # later decisions (ticks) take nothing more
            await trio.sleep(1)
        assert world.retired == [("s0", REBALANCE)] and world.spawned == [("opus", QUEUE)]
        nursery.cancel_scope.cancel()


async def test_category_work_gets_its_worker_at_once_at_the_cap(autojump_clock: trio.abc.Clock) -> None:
    """Issue 13 item 3, capabilities, on the actor: 2 idle workers that take only `a` hold both slots;
    a `b` task gets a worker after one stop ladder (2 s), and ticks after that retire nothing."""
    bus, world = EventBus(), World()
    config = Config(tick_s=1, max_workers=2, idle_s=60, stabilisation_s=300, max_retire_per_tick=2)
    world.workers = {f"a{i}": w(f"a{i}", idle_since=0.0, caps=A) for i in range(2)}

    async def retire(wid: str, reason: str) -> bool:
        world.workers[wid] = w(wid, S.STOPPING, caps=A)
        world.retired.append((wid, reason))

        async def gone() -> None:
            await trio.sleep(2)
            del world.workers[wid]
            bus.publish("worker.exited", {"worker": wid})

        nursery.start_soon(gone)
        return True

    world.retire = retire  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await start(nursery, config, bus, world)
        t0 = trio.current_time()
        world.ready, world.ready_cat = {None: 1}, {("b", None): 1}
        bus.publish("task.ready", {"task_id": "t-b", "category": "b"})
        with trio.fail_after(120):
            await world.until(lambda: ("sonnet", CATEGORY) in world.spawned)
        assert trio.current_time() - t0 < 3
        assert world.retired == [("a0", REBALANCE)]
        for _ in range(5):
            await trio.sleep(1)
        assert world.retired == [("a0", REBALANCE)] and world.spawned == [("sonnet", CATEGORY)]
        nursery.cancel_scope.cancel()


async def test_actor_stops_at_the_memory_floor_and_spawns_when_memory_frees(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Issue 14 item 4 on the actor: starting workers reserve their cost, so repeated decisions never
    spawn past the floor; memory freed on the machine is used at the next tick, no event needed."""
    bus, world = EventBus(), World()
    config = Config(tick_s=1, max_workers=32, max_spawn_per_tick=32)
    world.node = mem(512 + 650)  # 2 workers of 300 fit
    async with trio.open_nursery() as nursery:
        actor = await start(nursery, config, bus, world)
        world.ready = {None: 10}
        bus.publish("task.submitted", {"count": 10})
        with trio.fail_after(5):
            await world.until(lambda: len(world.spawned) == 2)
        for _ in range(3):  # ticks: the two are still starting and reserve 600 MiB
            d = await actor.next_decision()
            assert d.spawn == [] and d.summary["held_back_by"] == "memory"
        assert len(world.spawned) == 2
        world.node = mem(512 + 650 + 900)  # memory freed elsewhere: 3 more fit
        d = await actor.next_decision()  # the tick finds it
        assert len(d.spawn) == 3 and d.summary["held_back_by"] == "memory"
        with trio.fail_after(1):
            await world.until(lambda: len(world.spawned) == 5)
        nursery.cancel_scope.cancel()
