"""Helpers for end-to-end swarm tests: configs with small windows, and waiting on events."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from shoal.protocols.config import SwarmConfig, config_from_dict
from shoal.runtime.eventbus import Event, Subscription

ROOT = Path(__file__).resolve().parent.parent
FAKE_AGENT = str(ROOT / "examples" / "agents" / "fake_agent.py")


def swarm_config(tmp_path: Path, **sections: dict[str, Any]) -> SwarmConfig:
    """A config for tests: state in tmp_path, fast ticks, quick backoff; sections override."""
    base: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "log": {"json": True},
        "scaling": {"max_workers": 4, "tick_s": 0.05, "idle_s": 30.0, "stabilisation_s": 30.0},
        "supervision": {"backoff": {"min_s": 0.05, "max_s": 0.5, "jitter": 0.0}},
        "queue": {"retry_backoff": {"min_s": 0.01, "max_s": 0.05, "jitter": 0.0}},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_dict(base)


def fake_profile(*extra: str, dialect: str = "prompt", **fields: Any) -> dict[str, Any]:
    """A user profile running the fake agent with extra flags."""
    return {
        "argv": [sys.executable, FAKE_AGENT, "--model", "{model}", *extra],
        "dialect": dialect,
        "transport": "pty",
        "startup_timeout_s": 10.0,
        "stop_timeout_s": 1.0,
        **fields,
    }


async def wait_for(sub: Subscription, pred: Callable[[Event], bool] | str, timeout: float = 20.0) -> Event:
    """The first event on `sub` matching `pred` (a topic, or a predicate), within `timeout`."""
    match = (lambda e: e.topic == pred) if isinstance(pred, str) else pred
    with trio.fail_after(timeout):
        while True:
            event = await sub.receive()
            if match(event):
                return event


async def collect_until(
    sub: Subscription, pred: Callable[[Event], bool], timeout: float = 20.0
) -> list[Event]:
    """Every event up to and including the first one matching `pred`."""
    seen: list[Event] = []
    with trio.fail_after(timeout):
        while True:
            event = await sub.receive()
            seen.append(event)
            if pred(event):
                return seen
