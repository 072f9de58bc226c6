"""End-to-end capacity: real fake-agent workers in real PTYs, the scaler deciding on real events.

Category stranding (issue 13 item 3): at max_workers with idle workers that take other categories,
work of a category none of them takes gets a slot at once. Memory (issue 14 item 4): the scaler
never spawns past the free-memory floor, read here from a file the test writes (`node.meminfo_path`),
and `swarm.status` says what holds the swarm back.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from rich.console import Console
from swarmkit import fake_profile, swarm_config, wait_for

from shoal.actors import cli
from shoal.actors.capacity import (
    IDLE_EVERY,
    CapacityMeter,
    ProcessView,
    _children,
    memory_fit,
    read_available_mb,
    tree_memory,
)
from shoal.actors.tree import open_swarm
from shoal.protocols.config import SwarmConfig, config_from_dict
from shoal.protocols.profiles import resolve_profile
from shoal.protocols.tasks import TaskState
from shoal.protocols.workers import WorkerState

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_category_no_worker_takes_gets_a_worker_at_once_at_the_cap(tmp_path: Path) -> None:
    # idle_s and the window are long: only the at-once rebalance can free a slot within the test
    config = swarm_config(tmp_path, scaling={"max_workers": 2, "idle_s": 600.0, "stabilisation_s": 600.0})
    async with open_swarm(config) as swarm:
        for i in range(2):
            await swarm.submit({"id": f"warm{i}", "prompt": "[[think:0.3]] warm up"})
        for i in range(2):
            assert (await swarm.wait(f"warm{i}", timeout=30)).state is TaskState.DONE
        workers = swarm.workers()
        assert len(workers) == 2
        for info in workers:
            await swarm.set_capabilities(info.id, ["docs"])
        with swarm.events(("scale.down", "scale.up")) as sub:
            await swarm.submit({"id": "b", "prompt": "build it", "category": "build"})
            down = await wait_for(sub, "scale.down", timeout=30)
            assert down.data["reason"] == "rebalance"
            assert down.data["inputs"]["categories"]["stranded"] == {"sonnet": ["build"]}

            up = await wait_for(sub, "scale.up", timeout=30)
            assert up.data["reason"] == "category"
            done = await swarm.wait("b", timeout=30)
            assert done.state is TaskState.DONE
            # one retirement for one task: the other limited worker stays, beside the new unlimited one
            live = [i for i in swarm.workers() if i.state in (WorkerState.IDLE, WorkerState.BUSY)]
            assert sorted(i.capabilities is None for i in live) == [False, True]
            later = []
            while True:
                try:
                    later.append(sub.receive_nowait())
                except trio.WouldBlock:
                    break
            assert [e.data["worker"] for e in later if e.topic == "scale.down"] == []


# ---- the meter: what a worker costs ------------------------------------------------------------------


def _meter(config: SwarmConfig, procs: list[ProcessView]) -> CapacityMeter:
    return CapacityMeter(lambda: config, lambda: list(procs))


async def test_measured_peak_replaces_the_default_after_the_first_worker(tmp_path: Path) -> None:
    """A profile nobody has measured costs node.worker_memory_mb; once a worker of it has been ready
    and sampled, its measured peak RSS (VmHWM of its process tree) is the cost."""
    profile = {"argv": [sys.executable, "-c", "pass"], "dialect": "oneshot"}
    config = config_from_dict({"node": {"worker_memory_mb": 777}, "workers": {"profiles": {"mine": profile}}})
    procs: list[ProcessView] = []
    meter = _meter(config, procs)
    assert meter.cost("mine", resolve_profile("mine", config.workers.profiles)) == (777.0, "default")
    assert meter.cost("fake", None) == (16.0, "estimate")  # built-in profiles carry an estimate
    async with trio.open_nursery() as nursery:
        child = await nursery.start(_sleeper)
        # still starting: its start-up RSS is not its cost
        procs.append(ProcessView("w1", "mine", child.pid, WorkerState.STARTING))
        await meter.sample()
        assert meter.cost("mine", None) == (777.0, "default")
        procs[0] = ProcessView("w1", "mine", child.pid, WorkerState.IDLE)
        await meter.sample()
        cost, source = meter.cost("mine", None)
        peak = tree_memory(child.pid)
        assert source == "measured" and peak is not None
        assert 1 < cost <= peak[1] / 2**20 + 1
        # the worker ends: its peak is remembered, so the cost survives scale-down to zero
        procs.clear()
        child.kill()
        await child.wait()
        await meter.sample()
        assert meter.cost("mine", None) == (cost, "measured")
        assert meter.snapshot()["mine"]["measured_workers"] == 1
        nursery.cancel_scope.cancel()


async def test_configured_memory_mb_wins_over_the_measured_peak() -> None:
    profile = {"argv": [sys.executable, "-c", "pass"], "dialect": "oneshot", "memory_mb": 64}
    config = config_from_dict({"workers": {"profile": "mine", "profiles": {"mine": profile}}})
    meter = _meter(config, [ProcessView("w1", "mine", os.getpid(), WorkerState.BUSY)])
    await meter.sample()
    assert meter.measured_mb("mine") is not None  # measured (this test's own process), yet:
    assert meter.cost("mine", config.workers.profiles["mine"]) == (64.0, "config")
    view = await meter.view()
    assert view.cost_mb == 64.0 and view.source == "config" and view.profile == "mine"
    assert view.rss_mb["w1"] > 1


async def test_free_memory_is_read_from_the_configured_file(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemFree:  100 kB\nMemAvailable:    2097152 kB\n")
    assert read_available_mb(str(meminfo)) == 2048.0
    assert read_available_mb("/proc/meminfo") > 0
    config = config_from_dict({"node": {"meminfo_path": str(meminfo), "min_free_memory_mb": 1024}})
    view = await _meter(config, []).view()
    assert view.free_mb == 2048.0 and view.floor_mb == 1024.0 and view.error is None
    assert memory_fit(view, []) == (64, 0.0)  # (2048 - 1024) / 16, the fake profile's estimate
    missing = config_from_dict({"node": {"meminfo_path": str(tmp_path / "nope")}})
    view = await _meter(missing, []).view()
    assert view.free_mb is None and "nope" in (view.error or "")
    assert memory_fit(view, [])[0] is None  # unknown: no limit


async def _sleeper(*, task_status: trio.TaskStatus[trio.Process]) -> None:
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):  # up: the interpreter has started (before that its RSS is a fork's)
            await proc.stdout.receive_some(16)
        task_status.started(proc)
        await proc.wait()
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


# ---- end to end: the floor holds the swarm back, and status says so ---------------------------------


def _meminfo(path: Path, available_mib: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_mib * 1024} kB\n")
    os.replace(tmp, path)  # the scaler's thread never reads half a file


async def test_free_memory_floor_holds_the_swarm_back_and_status_says_so(tmp_path: Path) -> None:
    """Fake-agent workers costing 200 MiB (memory_mb), 512 MiB floor, 450 MiB above it: 2 workers run
    although 8 tasks wait and max_workers is 4; more memory (the file rewritten) lets 2 more start,
    and then max_workers holds it back."""
    meminfo = tmp_path / "meminfo"
    _meminfo(meminfo, 512 + 450)
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 4, "predictive": False},
        node={"min_free_memory_mb": 512, "meminfo_path": str(meminfo)},
        workers={"profile": "big", "profiles": {"big": fake_profile(memory_mb=200)}},
    )
    async with open_swarm(config) as swarm:
        assert swarm.scaler is not None
        with swarm.events(("scale.up",)) as sub:
            await swarm.submit_many([{"id": f"t{i}", "prompt": "[[hang]]"} for i in range(8)])
            up = await wait_for(sub, "scale.up", timeout=30)
            assert up.data["count"] == 2 and up.data["inputs"]["limited_by"] == ["memory"]
            with trio.fail_after(30):  # both started and took a task; the decisions still say memory
                while True:
                    decision = await swarm.scaler.next_decision()
                    busy = [i for i in swarm.workers() if i.state is WorkerState.BUSY]
                    if len(busy) == 2 and decision.summary["held_back_by"] == "memory":
                        break
            assert decision.spawn == []
            status = await swarm.status()
            cap = status["capacity"]
            assert cap["held_back_by"] == "memory" and cap["limited_by"] == ["memory"]
            assert cap["free_memory_mb"] == 962 and cap["min_free_memory_mb"] == 512
            assert cap["worker_memory_mb"] == 200 and cap["worker_memory_source"] == "config"
            assert cap["memory_fit"] == 0 and cap["can_start"] == 0 and cap["room"] == 2
            assert cap["workers"] == 2 and cap["unmet"] == 6  # 6 tasks ready, one worker each
            text = _render(cli.status_table(status))
            assert "held back by memory (node.min_free_memory_mb would be crossed)" in text
            assert "962.0MiB free (floor 512.0MiB) · 200.0MiB a worker (big, config) · 0 more fit" in text
            # memory is freed on the machine: the next decision starts 2 more, max_workers holds the rest
            _meminfo(meminfo, 512 + 2000)
            up = await wait_for(sub, "scale.up", timeout=30)
            assert up.data["count"] == 2 and up.data["inputs"]["limited_by"] == ["max_workers"]
        cap = (await swarm.status())["capacity"]
        assert cap["held_back_by"] == "max_workers" and cap["workers"] == 4
        assert "held back by max_workers (scaling.max_workers): 4 more workers wanted" in _render(
            cli.status_table(await swarm.status())
        )


def _render(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=250, highlight=False, soft_wrap=False).print(renderable)
    return " ".join(out.getvalue().split())


def test_memory_keys_are_validated_naming_the_field_and_hot() -> None:
    from shoal.protocols.config import patch_config
    from shoal.protocols.errors import ValidationError

    config = patch_config(SwarmConfig(), {"node": {"min_free_memory_mb": 2048}})
    assert config.node.min_free_memory_mb == 2048 and config.node.worker_memory_mb == 256
    assert SwarmConfig().node.min_free_memory_mb == 512 and SwarmConfig().node.meminfo_path == "/proc/meminfo"
    with pytest.raises(ValidationError) as bad:
        patch_config(SwarmConfig(), {"node": {"min_free_memory_mb": -1}})
    assert bad.value.field == "node.min_free_memory_mb"
    profile = {"argv": ["x"], "memory_mb": 0}
    with pytest.raises(ValidationError) as bad:
        config_from_dict({"workers": {"profiles": {"p": profile}}})
    assert bad.value.field.endswith("memory_mb") and "must be > 0" in str(bad.value)
    with pytest.raises(ValidationError) as bad:
        config_from_dict({"node": {"worker_memory_mb": "lots"}})
    assert bad.value.field == "node.worker_memory_mb"


FORKER = """
import os, sys, time
shared = bytearray(96 * 2**20)  # touched: resident in the parent, shared copy-on-write after fork
for i in range(0, len(shared), 4096):
    shared[i] = 1
if os.fork() == 0:
    own = bytearray(48 * 2**20)  # the child's private pages
    for i in range(0, len(own), 4096):
        own[i] = 1
    print("child", flush=True)
    time.sleep(60)
    os._exit(0)
print("parent", flush=True)
time.sleep(60)
"""


async def test_a_forked_childs_shared_pages_are_not_counted_twice() -> None:
    """A worker that forks (Claude Code's TUI does, now and then) shares its pages with the child:
    the tree counts the child by its private memory, not its RSS (summing RSS read 2x the cost)."""
    proc = await trio.lowlevel.open_process([sys.executable, "-c", FORKER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(30):
            while seen.count(b"\n") < 2:  # both allocated and touched their pages
                seen += await proc.stdout.receive_some(64)
        got = tree_memory(proc.pid)
        assert got is not None
        rss, peak = got[0] / 2**20, got[1] / 2**20
        # parent ≈ 96 MiB + interpreter; the child adds its 48 MiB private, not its ≈ 150 MiB of RSS
        assert 140 < rss < 200 and peak >= rss - 1, (rss, peak)
    finally:
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        await proc.wait()


def test_status_lines_for_people() -> None:
    cap: dict[str, object] = {
        "workers": 2,
        "max_workers": 2,
        "free_memory_mb": None,
        "memory_error": "/nope: No such file or directory",
        "profile": "claude",
        "worker_memory_mb": 300.0,
        "worker_memory_source": "estimate",
        "can_start": 0,
        "held_back_by": None,
        "limited_by": [],
        "unmet": 0,
    }
    assert cli.capacity_text(cap) == (
        "2/2 workers · free memory unknown (/nope: No such file or directory)"
        " · 300.0MiB a worker (claude, estimate) · 0 more fit"
    )
    assert cli.held_back_text(cap) == "nothing"
    cap.update(held_back_by="max_workers", limited_by=["max_workers", "memory"], unmet=1)
    cap["stranded_categories"] = {"sonnet": ["build"]}
    assert cli.held_back_text(cap) == (
        "max_workers (scaling.max_workers): 1 more worker wanted; also memory;"
        " waiting for a worker that takes them: build (sonnet)"
    )


async def test_resting_workers_are_read_a_tenth_as_often() -> None:
    """A busy worker's tree is read every sample, an idle one every IDLE_EVERY samples (its peak is the
    kernel's high-water mark, kept between reads): 1,000 idle workers cost Shoal little at rest."""
    me = os.getpid()
    procs = [
        ProcessView("idle-1", "fake", me, WorkerState.IDLE),
        ProcessView("busy-1", "fake", me, WorkerState.BUSY),
    ]
    meter = _meter(config_from_dict({}), procs)
    reads: dict[str, list[int]] = {"idle-1": [], "busy-1": []}
    for n in range(2 * IDLE_EVERY + 1):
        await meter.sample()
        for worker in reads:
            if meter._read_at.get(worker) == n:
                reads[worker].append(n)
    assert reads["busy-1"] == list(range(2 * IDLE_EVERY + 1))
    assert reads["idle-1"] == [0, IDLE_EVERY, 2 * IDLE_EVERY]
    assert meter.measured_mb("fake") is not None  # both still counted between reads
    procs.pop(0)  # the idle worker ends: its peak goes to the profile's ended ones
    await meter.sample()
    assert "idle-1" not in meter._read_at
