"""The scaler: how many workers of which model the swarm should run, decided on events and a tick.

The core is the pure function `decide(inputs, scaling, models, memory) -> Decision` (actors/scaling.py,
with the rules; its names are re-exported here); it does no I/O and reads no clock, so every rule is
tested with plain values. `ScalerActor` feeds it: it wakes on bus events (coalesced) and on a tick of
`scaling.tick_s`, re-reads the configuration each time (hot changes apply on the next wake), carries
out the decision through the `spawn` / `retire` callables and publishes every decision with its
reason and inputs (`scale.decision`, `scale.up`, `scale.down`). docs/scaling.md has the rules.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from ..protocols.config import SwarmConfig
from ..runtime.eventbus import EventBus, Subscription
from .scaling import CATEGORY as CATEGORY
from .scaling import IDLE as IDLE
from .scaling import MIN_WORKERS as MIN_WORKERS
from .scaling import PREDICTIVE as PREDICTIVE
from .scaling import QUEUE as QUEUE
from .scaling import REBALANCE as REBALANCE
from .scaling import UTILISATION as UTILISATION
from .scaling import Decision as Decision
from .scaling import ScalerInputs as ScalerInputs
from .scaling import ScalerMemory as ScalerMemory
from .scaling import WorkerView as WorkerView
from .scaling import decide as decide

log = logging.getLogger("shoal.scaler")


# ---- the actor -----------------------------------------------------------------------------------

WAKE_TOPICS = (
    "task.submitted",
    "task.ready",
    "task.done",
    "task.failed",
    "worker.*",
    "swarm.*",
    "config.changed",
)
_NOISY = frozenset({"worker.output", "worker.context", "worker.log"})  # never a reason to rescale


class ScalerActor:
    """Runs `decide` on every relevant event (coalesced) and on every tick, and carries it out.

    `spawn(model, reason)` must return once the new worker is registered (STARTING), so the next
    `get_inputs()` already counts it. `retire(worker_id, reason)` returns False when the worker
    cannot be retired any more (it just took a task); that is not an error.
    """

    def __init__(
        self,
        config_getter: Callable[[], SwarmConfig],
        bus: EventBus,
        get_inputs: Callable[[], Awaitable[ScalerInputs]],
        spawn: Callable[[str, str], Awaitable[None]],
        retire: Callable[[str, str], Awaitable[bool]],
        *,
        min_interval_s: float = 0.1,
        max_arrivals: int = 200_000,
    ) -> None:
        self._config = config_getter
        self._bus = bus
        self._get_inputs = get_inputs
        self._spawn = spawn
        self._retire = retire
        self._min_interval_s = min_interval_s
        self.memory = ScalerMemory()
        self.arrivals: deque[float] = deque(maxlen=max_arrivals)  # submit times, trio clock
        self.mean_run_s: float | None = None  # EWMA of run_s from task.done
        self.last_decision: Decision | None = None
        self.decisions = 0
        self._decided = trio.Event()
        self._wake = trio.Event()
        self._last_published: Any = None

    async def next_decision(self) -> Decision:
        """The next decision made from now on (tests and tools wait on it instead of polling)."""
        await self._decided.wait()
        assert self.last_decision is not None
        return self.last_decision

    def wake(self) -> None:
        """Ask for a decision now (also done by any subscribed event)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._bus.subscribe(WAKE_TOPICS, size=4096) as sub:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen, sub)
                task_status.started()
                last = -math.inf
                while True:
                    await self._step()
                    last = trio.current_time()
                    with trio.move_on_after(self._config().scaling.tick_s):
                        await self._wake.wait()
                    # coalesce a burst of events into one decision
                    await trio.sleep_until(last + self._min_interval_s)
                    self._wake = trio.Event()

    async def _listen(self, sub: Subscription) -> None:
        async for event in sub:
            if event.topic in _NOISY:
                continue
            if event.topic == "task.submitted":
                count = event.data.get("count", 1)
                n = count if isinstance(count, int) and count > 0 else 1
                now = trio.current_time()
                self.arrivals.extend(now for _ in range(n))
            elif event.topic == "task.done":
                run_s = event.data.get("run_s")
                if isinstance(run_s, int | float) and run_s >= 0:
                    prev = self.mean_run_s
                    self.mean_run_s = float(run_s) if prev is None else prev + 0.2 * (run_s - prev)
            self._wake.set()

    async def _step(self) -> None:
        config = self._config()
        scaling, models = config.scaling, config.models
        cutoff = trio.current_time() - scaling.arrival_window_s
        while self.arrivals and self.arrivals[0] < cutoff:
            self.arrivals.popleft()
        try:
            inputs = await self._get_inputs()
        except Exception as exc:
            log.warning("scaler inputs unavailable: %r", exc)
            self._bus.publish("scale.error", {"stage": "inputs", "error": repr(exc)})
            return
        if not inputs.arrivals and self.arrivals:
            inputs = attrs.evolve(inputs, arrivals=self.arrivals)
        if inputs.mean_run_s is None and self.mean_run_s is not None:
            inputs = attrs.evolve(inputs, mean_run_s=self.mean_run_s)
        decision = decide(inputs, scaling, models, self.memory)
        self.last_decision = decision
        self.decisions += 1
        self._decided.set()
        self._decided = trio.Event()
        key = (decision.desired, tuple(decision.summary["limited_by"]), decision.summary["unmet"])
        if decision.changes or key != self._last_published:
            self._last_published = key
            self._bus.publish(
                "scale.decision",
                {
                    "reason": decision.reason,
                    "spawn": [{"model": m, "reason": r} for m, r in decision.spawn],
                    "retire": [{"worker": w, "reason": r} for w, r in decision.retire],
                    "inputs": decision.summary,
                },
            )
        if decision.changes:
            await self._execute(decision, {w.id: w for w in inputs.workers})

    async def _execute(self, decision: Decision, workers: Mapping[str, WorkerView]) -> None:
        spawned: dict[tuple[str, str], int] = {}
        retired: list[tuple[str, str]] = []

        async def spawn_one(model: str, reason: str) -> None:
            try:
                await self._spawn(model, reason)
            except Exception as exc:
                log.warning("spawn of a %s worker failed: %r", model, exc)
                self._bus.publish("scale.error", {"stage": "spawn", "model": model, "error": repr(exc)})
                return
            spawned[(model, reason)] = spawned.get((model, reason), 0) + 1

        async def retire_one(worker_id: str, reason: str) -> None:
            try:
                ok = await self._retire(worker_id, reason)
            except Exception as exc:
                log.warning("retiring %s failed: %r", worker_id, exc)
                self._bus.publish("scale.error", {"stage": "retire", "worker": worker_id, "error": repr(exc)})
                return
            if ok:
                retired.append((worker_id, reason))

        async with trio.open_nursery() as nursery:
            for model, reason in decision.spawn:
                nursery.start_soon(spawn_one, model, reason)
            for worker_id, reason in decision.retire:
                nursery.start_soon(retire_one, worker_id, reason)
        summary = decision.summary
        for (model, reason), count in spawned.items():
            self._bus.publish(
                "scale.up",
                {
                    "count": count,
                    "model": model,
                    "reason": reason,
                    "desired": summary["desired"].get(model, 0),
                    "serving": summary["workers"]["serving"].get(model, 0),
                    "detail": decision.reason,
                    "inputs": summary,
                },
            )
        now, default = summary["now"], self._config().models.default
        for worker_id, reason in retired:
            view = workers.get(worker_id)
            wmodel = view.model if view is not None else None
            idle_since = view.idle_since if view is not None else None
            self._bus.publish(
                "scale.down",
                {
                    "count": 1,
                    "worker": worker_id,
                    "model": wmodel,
                    "reason": reason,
                    "idle_s": None if idle_since is None else round(now - idle_since, 3),
                    "stabilised": summary["stabilised"].get(wmodel or default),
                    "detail": decision.reason,
                    "inputs": summary,
                },
            )
