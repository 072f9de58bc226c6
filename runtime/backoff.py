"""Restart pacing as pure data: exponential backoff and a sliding-window restart intensity.

Nothing here reads a clock or sleeps: callers pass `now` in (trio's clock in the supervisor, so
`autojump_clock` drives it in tests) and inject a seedable `random.Random`, which makes every delay
reproducible. The same pieces serve the generic supervisor and the swarm's circuit breaker.

    delay(n) = min(max_s, min_s * factor**n) * (1 + jitter * U),  U in [0, 1)

The jitter is applied after the cap, so a delay can exceed `max_s` by at most `jitter * max_s`: that
keeps many restarts that hit the cap at the same moment spread apart (Akka's backoff does the same).
"""

from __future__ import annotations

import math
import random
from collections import deque

import attrs

from ..protocols.config import BackoffConfig
from ..protocols.errors import ValidationError

__all__ = ["BackoffState", "RestartIntensity", "backoff_delay"]


def backoff_delay(config: BackoffConfig, attempt: int, u: float = 0.0) -> float:
    """The delay before restart number `attempt` (0 = the first), for a uniform draw `u` in [0, 1)."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValidationError("attempt", "must be an integer >= 0", attempt)
    if not 0.0 <= u < 1.0:  # also refuses NaN
        raise ValidationError("u", "must be in [0, 1)", u)
    if config.min_s == 0.0:
        base = 0.0
    else:
        try:
            base = min(config.max_s, config.min_s * config.factor**attempt)
        except OverflowError:  # factor**attempt beyond float range: the cap applies
            base = config.max_s
    return base * (1.0 + config.jitter * u)


@attrs.define
class BackoffState:
    """Consecutive-restart counter of one restartable thing (a child, a worker lineage).

    Call `started(now)` when it comes up and `next_delay(now)` when it went down and is about to be
    restarted. If it stayed up for `reset_after_s` or longer, the count starts over: a thing that
    crashes once a day should not wait as long as one that crashes every second.
    """

    config: BackoffConfig
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0  # n of the next delay
    up_since: float | None = None  # when it last started; None while down

    def started(self, now: float) -> None:
        self.up_since = now

    def next_delay(self, now: float) -> float:
        if self.up_since is not None and now - self.up_since >= self.config.reset_after_s:
            self.attempt = 0
        self.up_since = None
        delay = backoff_delay(self.config, self.attempt, self.rng.random())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def _max_restarts(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("max_restarts", "must be an integer >= 0", value)


def _period(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and value > 0 and not math.isnan(value)):
        raise ValidationError("period_s", "must be a number > 0", value)


@attrs.define
class RestartIntensity:
    """Erlang's restart intensity: more than `max_restarts` within `period_s` seconds is too many.

    `record(now)` notes one restart and says whether the limit is now exceeded. A restart counts
    while `now - at < period_s`. Only the last `max_restarts + 1` times matter, so memory is bounded.
    """

    max_restarts: int = attrs.field(validator=_max_restarts)
    period_s: float = attrs.field(validator=_period)
    _times: deque[float] = attrs.field(init=False)

    @_times.default
    def _times_default(self) -> deque[float]:
        return deque(maxlen=self.max_restarts + 1)

    def record(self, now: float) -> bool:
        if self._times and now < self._times[-1]:
            raise ValidationError("now", f"went backwards (last restart at {self._times[-1]!r})", now)
        self._times.append(now)
        return self.count(now) > self.max_restarts

    def count(self, now: float) -> int:
        """Restarts within the window ending at `now` (capped at max_restarts + 1)."""
        while self._times and now - self._times[0] >= self.period_s:
            self._times.popleft()
        return len(self._times)

    def reset(self) -> None:
        self._times.clear()
