"""What the machine can still hold: free memory and what a worker of each profile costs.

The scaler never spawns a worker that would take free memory below `node.min_free_memory_mb`. For
that it needs two numbers, both gathered here and handed to the pure `decide` as a `MemoryView`:

* free memory: `MemAvailable` of `node.meminfo_path` (default /proc/meminfo), read fresh for each
  decision, off the trio loop;
* what one more worker costs, by profile: `workers.profiles.X.memory_mb` when configured (it wins),
  else the highest peak RSS (`VmHWM`) measured on that profile's workers, else a built-in estimate
  (`protocols.profiles.MEMORY_ESTIMATE_MB`), else `node.worker_memory_mb`.

`CapacityMeter.run` samples every live worker's process tree every `workers.sample_interval_s`, in
a worker thread: the agent's own `VmRSS` and `VmHWM` (its peak) from /proc/PID/status, plus the
private memory of each descendant (found through /proc/PID/task/*/children) at that moment; a
worker's cost is the highest such peak seen. A worker counts as measured only once it has been
ready (its start-up RSS is not its cost); the peaks of the last workers that ended are kept, so the
cost survives scale-down to zero.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import trio

from ..protocols.config import ProfileConfig, SwarmConfig
from ..protocols.profiles import MEMORY_ESTIMATE_MB, resolve_profile
from ..protocols.workers import WorkerState

log = logging.getLogger("shoal.capacity")

MIB = 1 << 20
_ENDED_KEPT = 16  # peaks of ended workers remembered per profile
_MEASURED_STATES = frozenset({WorkerState.IDLE, WorkerState.BUSY, WorkerState.REFRESHING, WorkerState.PAUSED})
# An idle or paused worker's tree is read every this many samples, a busy or new one every sample: the
# peak is the kernel's high-water mark (VmHWM), kept between reads, and an idle agent barely moves, so
# 1,000 idle workers cost a tenth of the reads (Shoal's CPU at rest)
IDLE_EVERY = 10
_RESTING = frozenset({WorkerState.IDLE, WorkerState.PAUSED})


@attrs.frozen
class MemoryView:
    """The memory side of one scaling decision (MiB throughout).

    `free_mb` None: free memory is unknown (the file cannot be read) and memory limits nothing.
    `cost_mb` is what a new worker (of `profile`, the one new workers start with) is expected to
    reach; `rss_mb` the resident size of each live worker's process tree now, and `cost_by_worker`
    a worker's own profile's cost when it differs from `cost_mb`: a live worker still has
    `cost - rss` to grow into, which free memory does not show yet, so that much is reserved.
    """

    free_mb: float | None
    floor_mb: float
    cost_mb: float
    source: str  # config | measured | estimate | default
    profile: str
    rss_mb: Mapping[str, float] = attrs.field(factory=dict)
    cost_by_worker: Mapping[str, float] = attrs.field(factory=dict)
    error: str | None = None


def memory_fit(view: MemoryView, workers: Iterable[Any]) -> tuple[int | None, float]:
    """(how many more workers fit above the floor, MiB reserved for live workers still growing).

    `workers` are the scaler's `WorkerView`s: a starting worker reserves its whole cost, a serving or
    paused one `cost - rss`, a stopping one nothing (it is on its way out; its memory is still used
    until it is gone). None when free memory is unknown.
    """
    reserved = 0.0
    for w in workers:
        if w.state in (WorkerState.STOPPED, WorkerState.CRASHED, WorkerState.STOPPING):
            continue
        cost = view.cost_by_worker.get(w.id, view.cost_mb)
        rss = 0.0 if w.state is WorkerState.STARTING else view.rss_mb.get(w.id, 0.0)
        reserved += max(0.0, cost - rss)
    if view.free_mb is None:
        return None, reserved
    headroom = view.free_mb - view.floor_mb - reserved
    if view.cost_mb <= 0:
        return (None if headroom >= 0 else 0), reserved
    return max(0, math.floor(headroom / view.cost_mb)), reserved


def read_available_mb(path: str) -> float:
    """MemAvailable of a /proc/meminfo-style file, in MiB (blocking: run it in a thread)."""
    with open(path, "rb") as f:
        text = f.read(65536).decode("ascii", "replace")
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "MemAvailable":
            parts = rest.split()
            if not parts:
                break
            return int(parts[0]) / 1024  # kB
    raise ValueError(f"{path}: no MemAvailable line")


def _status_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of one process in KiB, None when it is gone or a kernel thread."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            raw = f.read(8192)
    except OSError:
        return None
    rss = hwm = None
    for line in raw.split(b"\n"):
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith(b"VmHWM:"):
            hwm = int(line.split()[1])
    if rss is None or hwm is None:
        return None
    return rss, hwm


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _private_kib(pid: int) -> int | None:
    """Memory only this process holds (Private_Clean + Private_Dirty of smaps_rollup), in KiB.

    Why not its RSS: agents fork (Claude Code's TUI now and then forks a copy of itself, ≈265 MiB of
    RSS, nearly all of it pages shared copy-on-write with its parent); summing RSS would count those
    pages twice and make a worker look twice as costly as it is."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            raw = f.read(8192)
    except OSError:
        got = _status_kib(pid)
        return None if got is None else got[0]
    private = 0
    for line in raw.split(b"\n"):
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            private += int(line.split()[1])
    return private


def tree_memory(pid: int, max_procs: int = 256) -> tuple[int, int] | None:
    """(resident bytes now, peak resident bytes) of `pid` and its descendants; None when `pid` is
    gone. The process itself counts with its RSS now and its peak (VmHWM); each descendant with the
    memory it alone holds now (private pages), so a forked child's pages shared with its parent are
    not counted twice. Blocking (/proc reads): run it in a thread."""
    top = _status_kib(pid)
    if top is None:
        return None
    rss, hwm = top
    extra = 0
    seen = {pid}
    todo = _children(pid)
    while todo and len(seen) < max_procs:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        private = _private_kib(child)
        if private is not None:
            extra += private
            todo.extend(_children(child))
    return (rss + extra) * 1024, (hwm + extra) * 1024


@attrs.frozen
class ProcessView:
    """A live worker's process, as the meter needs it."""

    worker: str
    profile: str
    pid: int | None
    state: WorkerState


class CapacityMeter:
    """Measures workers' peak memory per profile and reads free memory; owned by the swarm handle.

    `processes()` lists the live workers as (id, profile, pid, state): the supervisor's view.
    """

    def __init__(
        self, config_getter: Callable[[], SwarmConfig], processes: Callable[[], Iterable[ProcessView]]
    ) -> None:
        self._config = config_getter
        self._processes = processes
        self._live: dict[str, tuple[str, float, float, bool]] = {}  # id -> (profile, rss, peak, measured)
        self._ended: dict[str, deque[float]] = {}  # profile -> peaks (MiB) of ended, measured workers
        self.samples = 0
        self.last_error: str | None = None
        self._read_at: dict[str, int] = {}  # worker -> the sample that last read its tree

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.sample()
            await trio.sleep(self._config().workers.sample_interval_s)

    async def sample(self) -> None:
        """Read every live worker's process tree (in a thread) and fold the peaks per profile."""
        live = [p for p in self._processes() if p.pid is not None]
        n = self.samples
        procs = [
            p
            for p in live
            if p.state not in _RESTING
            or p.worker not in self._live
            or not self._live[p.worker][3]  # not measured yet
            or n - self._read_at.get(p.worker, -IDLE_EVERY) >= IDLE_EVERY
        ]
        pids = [p.pid for p in procs if p.pid is not None]
        try:
            readings = await trio.to_thread.run_sync(_read_all, pids)
        except Exception as exc:  # a /proc surprise must not stop the scaler: skip this sample
            log.warning("memory sample failed: %r", exc)
            return
        seen: set[str] = {p.worker for p in live if p.worker in self._live}  # resting, not read now
        for proc, got in zip(procs, readings, strict=True):
            if got is None:
                seen.discard(proc.worker)
                continue
            seen.add(proc.worker)
            self._read_at[proc.worker] = n
            rss, peak = got[0] / MIB, got[1] / MIB
            _, _, old_peak, measured = self._live.get(proc.worker, (proc.profile, 0.0, 0.0, False))
            measured = measured or proc.state in _MEASURED_STATES
            self._live[proc.worker] = (proc.profile, rss, max(peak, old_peak), measured)
        for wid in [w for w in self._live if w not in seen]:
            self._read_at.pop(wid, None)
            profile, _, peak, measured = self._live.pop(wid)
            if measured:
                self._ended.setdefault(profile, deque(maxlen=_ENDED_KEPT)).append(peak)
        self.samples += 1

    def measured_mb(self, profile: str) -> tuple[float, int] | None:
        """(highest peak, workers it is over) of `profile`'s measured workers, live and recent."""
        peaks = [peak for prof, _, peak, ok in self._live.values() if ok and prof == profile]
        peaks.extend(self._ended.get(profile, ()))
        return (max(peaks), len(peaks)) if peaks else None

    def cost(self, name: str, profile: ProfileConfig | None) -> tuple[float, str]:
        """What one worker of profile `name` costs (MiB) and where the figure comes from."""
        if profile is not None and profile.memory_mb is not None:
            return float(profile.memory_mb), "config"
        measured = self.measured_mb(name)
        if measured is not None:
            return round(measured[0], 1), "measured"
        if name in MEMORY_ESTIMATE_MB:
            return float(MEMORY_ESTIMATE_MB[name]), "estimate"
        return float(self._config().node.worker_memory_mb), "default"

    def profiles(self) -> list[str]:
        """Profiles worth showing: the one new workers start with, configured ones, measured ones."""
        config = self._config()
        names = [config.workers.profile, *config.workers.profiles]
        names.extend(p for p, *_ in self._live.values())
        names.extend(self._ended)
        return list(dict.fromkeys(names))

    async def view(self) -> MemoryView:
        """The inputs for one decision: free memory read now (in a thread) and the costs."""
        config = self._config()
        node, workers = config.node, config.workers
        free: float | None
        error = None
        try:
            free = await trio.to_thread.run_sync(read_available_mb, node.meminfo_path)
        except (OSError, ValueError) as exc:
            free, error = None, f"{node.meminfo_path}: {exc.strerror if isinstance(exc, OSError) else exc}"
        if error != self.last_error:
            if error is not None:
                log.warning("free memory unknown, memory does not limit spawns: %s", error)
            self.last_error = error
        costs: dict[str, float] = {}

        def cost_of(name: str) -> float:
            if name not in costs:
                try:
                    profile: ProfileConfig | None = resolve_profile(name, workers.profiles)
                except Exception:
                    profile = None
                costs[name] = self.cost(name, profile)[0]
            return costs[name]

        try:
            spawn_profile: ProfileConfig | None = resolve_profile(workers.profile, workers.profiles)
        except Exception:
            spawn_profile = None
        cost, source = self.cost(workers.profile, spawn_profile)
        rss = {wid: round(r, 1) for wid, (_, r, _, _) in self._live.items()}
        by_worker = {wid: cost_of(prof) for wid, (prof, *_) in self._live.items() if prof != workers.profile}
        return MemoryView(
            free_mb=None if free is None else round(free, 1),
            floor_mb=float(node.min_free_memory_mb),
            cost_mb=cost,
            source=source,
            profile=workers.profile,
            rss_mb=rss,
            cost_by_worker={w: c for w, c in by_worker.items() if c != cost},
            error=error,
        )

    def snapshot(self) -> dict[str, Any]:
        """Per profile: its cost, where it comes from, and what was measured (for status)."""
        config = self._config()
        out: dict[str, Any] = {}
        for name in self.profiles():
            try:
                profile: ProfileConfig | None = resolve_profile(name, config.workers.profiles)
            except Exception:
                profile = None
            cost, source = self.cost(name, profile)
            measured = self.measured_mb(name)
            out[name] = {
                "memory_mb": cost,
                "source": source,
                "peak_mb": None if measured is None else round(measured[0], 1),
                "measured_workers": 0 if measured is None else measured[1],
            }
        return out


def _read_all(pids: list[int]) -> list[tuple[int, int] | None]:
    return [tree_memory(pid) for pid in pids]


__all__ = ["CapacityMeter", "MemoryView", "ProcessView", "memory_fit", "read_available_mb", "tree_memory"]
