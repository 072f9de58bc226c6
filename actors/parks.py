"""Model parks survive a restart: `<state_dir>/model-parks.json`.

A model parked until its usage limit resets, after a retry storm, or paused for extra usage or by an
operator must stay parked when Shoal restarts: without this every worker would hit the limit again at
once, and a model paused because it had started to spend extra usage would spend again. The keeper
is a leaf of the observers' supervisor: at start it re-applies the parks the file holds (a timed park
whose time is still ahead, a pause until resumed), then follows `model.parked` / `model.unparked` and
rewrites the file (atomically, off the loop) on each change, then publishes `model.parks_saved`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import trio

from ..runtime.actor import Address
from ..runtime.eventbus import EventBus
from . import queue as q

log = logging.getLogger("shoal.parks")
PARKS_FILE = "model-parks.json"


def load_parks(path: Path) -> dict[str, float | None]:
    """model -> until (epoch s; None: until an operator resumes it). A missing or unreadable file is no
    parks (logged): it must never keep Shoal from starting. Blocking: run it in a thread."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    out: dict[str, float | None] = {}
    if isinstance(raw, dict):
        for model, until in raw.items():
            if isinstance(model, str) and (
                until is None or (isinstance(until, int | float) and not isinstance(until, bool))
            ):
                out[model] = None if until is None else float(until)
    return out


def save_parks(path: Path, parks: dict[str, float | None]) -> None:
    """Write the parks atomically, mode 0600 (blocking: run it in a thread)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(parks, f, sort_keys=True)
    os.replace(tmp, path)


class ParkKeeper:
    """Re-applies the parks of the last run, then keeps the file up to date (see the module docstring)."""

    def __init__(self, state_dir: Path, bus: EventBus, queue: Any) -> None:
        self._path = state_dir / PARKS_FILE
        self._bus = bus
        self._queue = queue  # () -> the queue's address (it may restart under the tree)
        self.parks: dict[str, float | None] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._bus.subscribe(("model.parked", "model.unparked")) as sub:
            saved = await trio.to_thread.run_sync(load_parks, self._path)
            queue: Address[q.QueueMsg] = self._queue()
            now = time.time()
            for model, until in saved.items():
                if until is None:
                    await queue.call(q.PauseModel(model, "paused before Shoal restarted"))
                elif until > now:
                    await queue.send(q.ModelRateLimited(model, until))
            task_status.started()
            async for event in sub:
                name: object = event.data.get("model")
                if not isinstance(name, str):
                    continue
                if event.topic == "model.parked":
                    ends: object = event.data.get("until")
                    finite = isinstance(ends, int | float) and math.isfinite(ends)
                    self.parks[name] = float(ends) if finite and isinstance(ends, int | float) else None
                else:
                    self.parks.pop(name, None)
                await trio.to_thread.run_sync(save_parks, self._path, dict(self.parks))
                self._bus.publish("model.parks_saved", {"models": sorted(self.parks)})
