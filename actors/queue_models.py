"""The QueueActor's models: parks for a usage limit or an operator, API retry storms, quota reports
and extra usage (issue 16): what agents say about the API and the quota."""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

from ..protocols.errors import Conflict, ValidationError
from ..runtime.actor import Call
from .queue_messages import (
    ModelExtraUsage,
    ModelQuota,
    ModelRateLimited,
    ModelRetrying,
    PauseModel,
    ResumeModel,
)
from .queue_state import QueueParts
from .taskbook import check_name

log = logging.getLogger("shoal.queue")

DEFAULT_PARK_S = 60.0  # a rate limit without a reset time parks its model this long


class ModelQueue(QueueParts):
    """A part of the QueueActor (see the module docstring); QueueActor composes it."""

    def _hot_ends(self) -> float | None:
        """When the earliest quota window of a hot model resets (epoch s): it may cool down then."""
        now = self._now()
        ends = [
            r["resets_at"]
            for m in self.book.hot
            for r in self._quota.get(m, {}).values()
            if r["resets_at"] is not None and r["resets_at"] > now
        ]
        return min(ends) if ends else None

    def _park(self, model: str, reset_at: Any, now: float, reason: str | None = None) -> None:
        if reason:
            self._park_reasons[model] = reason
        if isinstance(reset_at, bool) or not isinstance(reset_at, int | float):
            reset_at = None  # a report from a dialect that could not parse the reset time
        if reset_at == math.inf:
            until = math.inf  # until an operator resumes it (models.resume)
        else:
            until = reset_at if reset_at is not None and math.isfinite(reset_at) else now + DEFAULT_PARK_S
        self.book.park(model, until)
        if self.shared:  # every node parks it: the limit is the account's, not this machine's
            self.store.park(model, self.book.parked[model], self._park_reasons.get(model))  # type: ignore[attr-defined]
            self._remote_parks.discard(model)
        self._rematch_idle(now)  # unpinned and fallback work moves to the other models' workers

    def _on_rate_limited(self, msg: ModelRateLimited, now: float) -> None:
        if msg.model is None:
            return  # an agent without a model name: nothing to park
        check_name("model", msg.model, "model")
        if msg.reset_at is not None and (
            isinstance(msg.reset_at, bool) or not isinstance(msg.reset_at, int | float)
        ):
            raise ValidationError("reset_at", "must be an epoch time in seconds or null", msg.reset_at)
        self._park(msg.model, msg.reset_at, now)

    # ---- what agents say about the API and the quota (issue 16) -----------------------------------

    def _on_retrying(self, msg: ModelRetrying, now: float) -> None:
        """Count retries per model over limits.retry_storm_window_s; once enough distinct workers
        retry, park the model swarm-wide (30 s, doubling per storm up to the max) so its workers
        take no new task while the API recovers. The level resets after a calm spell as long as
        the longest park."""
        check_name("model", msg.model, "model")
        lim = self.config.limits
        level, last_end = self._storms.get(msg.model, (0, -math.inf))
        if now < last_end and msg.model in self.book.parked:
            return  # backing off already: the running tasks' own retries are the storm's tail
        if msg.task_id is not None and msg.task_id in self.book and last_end > -math.inf:
            att = self.book.open_attempt(msg.task_id)
            if att is not None and att.started <= last_end:
                return  # a request sent before the back-off ended (or was resumed): the old storm's tail
        seen = self._retries.get(msg.model)
        if seen is None:
            seen = self._retries[msg.model] = collections.deque()
        seen.append((now, msg.worker))
        while seen and seen[0][0] < now - lim.retry_storm_window_s:
            seen.popleft()
        workers = sorted({w for _t, w in seen})
        if len(workers) < lim.retry_storm_workers:
            return
        seen.clear()
        if now >= last_end + lim.retry_storm_park_max_s:
            level = 0  # calm since the last park ended: start again from the shortest
        park_s = min(lim.retry_storm_park_max_s, lim.retry_storm_park_s * 2.0**level)
        until = now + park_s
        self._storms[msg.model] = (level + 1, until)
        window = lim.retry_storm_window_s
        reason = f"retry storm: {len(workers)} workers retrying ({msg.error}) within {window:g} s"
        self.book.announce(
            "model.retry_storm",
            {
                "model": msg.model,
                "workers": workers,
                "error": msg.error,
                "park_s": park_s,
                "until": until,
                "level": level + 1,
            },
        )
        if until > self.book.parked.get(msg.model, -math.inf):
            self._park(msg.model, until, now, reason)

    def _on_quota(self, msg: ModelQuota, now: float) -> None:
        """Keep the latest report per model and window; a model at or over limits.prefer_fallback_at
        of any window becomes *hot*: its soft-routed tasks may go to its fallback models' workers."""
        util = msg.utilization
        if isinstance(util, bool) or not isinstance(util, int | float) or not math.isfinite(util):
            util = None
        reset = msg.resets_at
        if isinstance(reset, bool) or not isinstance(reset, int | float) or not math.isfinite(reset):
            reset = None
        report = {
            "status": str(msg.status),
            "utilization": util,
            "resets_at": reset,
            "overage": msg.overage if isinstance(msg.overage, str) else None,
            "at": now,
        }
        window = msg.window if isinstance(msg.window, str) and msg.window else "?"
        self.book.announce(
            "model.quota", {"model": msg.model, "window": window, "worker": msg.worker, **report}
        )
        if msg.model is None:
            return
        check_name("model", msg.model, "model")
        self._quota.setdefault(msg.model, {})[window] = report
        self._update_hot(now)

    def _update_hot(self, now: float) -> None:
        threshold = self.config.limits.prefer_fallback_at
        hot = set()
        for model, windows in self._quota.items():
            for report in windows.values():
                reset, util = report["resets_at"], report["utilization"]
                if reset is not None and reset <= now:
                    continue  # that window has reset since: its figure is stale
                if util is not None and util >= threshold:
                    hot.add(model)
        if hot != self.book.hot:
            self.book.set_hot(hot)
            self._rematch_idle(now)

    def _on_extra_usage(self, msg: ModelExtraUsage, now: float) -> None:
        """limits.on_extra_usage: continue (an event only), pause (park the model until an operator
        resumes it), stop (pause, and interrupt its running attempts: requeued, not counted)."""
        policy = self.config.limits.on_extra_usage
        self.book.announce(
            "model.extra_usage",
            {
                "model": msg.model,
                "message": msg.message,
                "worker": msg.worker,
                "task_id": msg.task_id,
                "policy": policy,
            },
        )
        if msg.model is None or policy == "continue":
            return
        check_name("model", msg.model, "model")
        if self.book.parked.get(msg.model) != math.inf:
            self._park(
                msg.model,
                math.inf,
                now,
                f"extra usage ({policy}): {msg.message} · shoal models resume {msg.model}",
            )
        if policy == "stop":
            for worker in list(self._workers.values()):
                if worker.view.model == msg.model:
                    for task_id in self.book.running_on(worker.id):
                        self._interrupt(worker.id, task_id, f"stopped: {msg.model} is using extra usage")

    def _model_state(self, model: str) -> dict[str, Any]:
        until = self.book.parked.get(model)
        return {
            "model": model,
            "parked": until is not None,
            "until": until if until is not None and math.isfinite(until) else None,
            "reason": self._park_reasons.get(model) if until is not None else None,
        }

    def _on_pause_model(self, call: Call[Any], msg: PauseModel, now: float) -> None:
        check_name("model", msg.model, "model")
        if not isinstance(msg.reason, str) or not msg.reason.strip() or len(msg.reason) > 500:
            raise ValidationError(
                "reason", "must be a non-empty string of at most 500 characters", msg.reason
            )
        if self.book.parked.get(msg.model) != math.inf:
            self._park(msg.model, math.inf, now, msg.reason)
        self._acks.append((call, self._model_state(msg.model)))

    def _on_resume_model(self, call: Call[Any], msg: ResumeModel, now: float) -> None:
        check_name("model", msg.model, "model")
        if msg.model not in self.book.parked:
            raise Conflict(f"model {msg.model} is not parked")
        self.book.unpark(msg.model, "resumed by operator")
        if self.shared:
            self.store.unpark(msg.model)  # type: ignore[attr-defined]
            self._remote_parks.discard(msg.model)
        self._park_reasons.pop(msg.model, None)
        self._retries.pop(msg.model, None)
        if msg.model in self._storms:  # the back-off ends now: what runs already is its tail
            self._storms[msg.model] = (self._storms[msg.model][0], now)
        self._rematch_idle(now)
        self._acks.append((call, self._model_state(msg.model)))
