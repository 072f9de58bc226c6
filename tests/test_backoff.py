"""Backoff delays and restart intensity: pure functions, exact numbers, seeded jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.protocols.config import BackoffConfig
from shoal.protocols.errors import ValidationError
from shoal.runtime.backoff import BackoffState, RestartIntensity, backoff_delay

NO_JITTER = BackoffConfig(min_s=0.5, max_s=30.0, factor=2.0, jitter=0.0, reset_after_s=60.0)


def test_delay_grows_by_factor_until_the_cap() -> None:
    delays = [backoff_delay(NO_JITTER, n) for n in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_jitter_scales_the_capped_delay() -> None:
    cfg = BackoffConfig(min_s=1.0, max_s=10.0, factor=3.0, jitter=0.5)
    assert backoff_delay(cfg, 1, 0.5) == pytest.approx(3.0 * 1.25)
    assert backoff_delay(cfg, 5, 0.5) == pytest.approx(10.0 * 1.25)  # cap first, then jitter
    assert backoff_delay(cfg, 5, 0.0) == 10.0


def test_huge_attempt_is_capped_not_an_overflow() -> None:
    assert backoff_delay(NO_JITTER, 100_000) == 30.0
    zero = BackoffConfig(min_s=0.0, max_s=30.0, factor=2.0, jitter=0.0)
    assert backoff_delay(zero, 100_000) == 0.0


@pytest.mark.parametrize(("attempt", "u", "field"), [(-1, 0.0, "attempt"), (0, 1.0, "u"), (0, -0.1, "u")])
def test_bad_arguments_name_the_field(attempt: int, u: float, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        backoff_delay(NO_JITTER, attempt, u)
    assert err.value.field == field


@given(
    n=st.integers(min_value=0, max_value=200),
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_stays_within_its_bounds(n: int, u: float, jitter: float) -> None:
    cfg = BackoffConfig(min_s=0.25, max_s=20.0, factor=1.5, jitter=jitter)
    base = backoff_delay(BackoffConfig(min_s=0.25, max_s=20.0, factor=1.5, jitter=0.0), n)
    delay = backoff_delay(cfg, n, u)
    assert base <= delay <= base * (1 + jitter)
    assert backoff_delay(cfg, n + 1, u) >= delay  # never shrinks as failures pile up


def test_state_gives_exact_delays_with_seeded_jitter() -> None:
    cfg = BackoffConfig(min_s=1.0, max_s=8.0, factor=2.0, jitter=0.5, reset_after_s=60.0)
    state = BackoffState(cfg, random.Random(1234))
    draws = random.Random(1234)
    got = []
    for _ in range(6):
        state.started(0.0)
        got.append(state.next_delay(1.0))  # up for 1 s each time: never stable
    expected = [min(8.0, 2.0**n) * (1 + 0.5 * draws.random()) for n in range(6)]
    assert got == expected
    assert got[0] == pytest.approx(1.0 * (1 + 0.5 * random.Random(1234).random()))


def test_state_resets_after_stable_uptime_exactly_at_the_threshold() -> None:
    state = BackoffState(NO_JITTER, random.Random(0))
    state.started(0.0)
    assert state.next_delay(1.0) == 0.5
    state.started(1.5)
    assert state.next_delay(2.0) == 1.0
    state.started(3.0)
    assert state.next_delay(3.0 + 59.999) == 2.0  # just short of reset_after_s: keeps growing
    state.started(100.0)
    assert state.next_delay(160.0) == 0.5  # up exactly reset_after_s: starts over
    assert state.attempt == 1


def test_state_without_a_start_does_not_reset() -> None:
    """Failing to start at all is not uptime: the delay keeps growing."""
    state = BackoffState(NO_JITTER, random.Random(0))
    assert [state.next_delay(t) for t in (0.0, 500.0, 1000.0)] == [0.5, 1.0, 2.0]
    state.reset()
    assert state.next_delay(1001.0) == 0.5


def test_intensity_exceeded_on_one_more_than_max_within_period() -> None:
    window = RestartIntensity(max_restarts=3, period_s=10.0)
    assert [window.record(t) for t in (0.0, 1.0, 2.0)] == [False, False, False]
    assert window.record(3.0) is True
    assert window.count(3.0) == 4


def test_intensity_forgets_restarts_older_than_the_period() -> None:
    window = RestartIntensity(max_restarts=2, period_s=10.0)
    assert not window.record(0.0)
    assert not window.record(5.0)
    assert not window.record(10.0)  # the one at 0.0 is exactly period_s old: out of the window
    assert window.count(10.0) == 2
    assert window.record(14.0)  # 5, 10, 14
    window.reset()
    assert window.count(14.0) == 0


def test_intensity_zero_means_any_restart_is_too_many() -> None:
    assert RestartIntensity(max_restarts=0, period_s=1.0).record(0.0) is True


def test_intensity_refuses_bad_input() -> None:
    with pytest.raises(ValidationError) as err:
        RestartIntensity(max_restarts=-1, period_s=1.0)
    assert err.value.field == "max_restarts"
    with pytest.raises(ValidationError) as err:
        RestartIntensity(max_restarts=1, period_s=0.0)
    assert err.value.field == "period_s"
    window = RestartIntensity(max_restarts=1, period_s=1.0)
    window.record(5.0)
    with pytest.raises(ValidationError) as err:
        window.record(4.0)
    assert err.value.field == "now"
