"""End-to-end: the whole swarm with real fake-agent workers in real PTYs and a real SQLite store.

Time here is real (processes can't run on an autojump clock), so windows are small and every wait
is on the event that proves the behaviour, with a timeout; the pure timing logic (backoff, scaling
windows) is tested on autojump_clock in test_backoff.py, test_scaler.py and test_supervisor.py.
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing
from swarmkit import collect_until, fake_profile, swarm_config, wait_for

from shoal.actors.tree import open_swarm
from shoal.protocols.errors import NotFound, ValidationError
from shoal.protocols.tasks import Outcome, TaskState
from shoal.protocols.workers import WorkerState
from shoal.runtime.eventbus import Event

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_tasks_with_dependencies_run_in_order_and_finish(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 3})
    async with open_swarm(config) as swarm:
        a = await swarm.submit({"id": "a", "prompt": "first"})
        b = await swarm.submit({"id": "b", "prompt": "second", "deps": ["a"]})
        assert b.state is TaskState.BLOCKED
        done_b = await swarm.wait("b", timeout=30)
        done_a = await swarm.get("a")
        assert done_a.state is TaskState.DONE and done_b.state is TaskState.DONE
        assert "first" in (done_a.result or "")
        assert (
            done_a.attempts[-1].ended is not None and done_b.attempts[-1].started >= done_a.attempts[-1].ended
        )
        assert a.id == "a"


async def test_scale_up_is_one_batch_on_a_deep_queue_and_respects_max(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 5, "max_spawn_per_tick": 8})
    async with open_swarm(config) as swarm:
        with swarm.events(("scale.up", "worker.spawning")) as sub:
            await swarm.submit_many([{"prompt": f"t{i} [[think:0.5]]"} for i in range(20)])
            up = await wait_for(sub, "scale.up")
            assert up.data["count"] == 5  # one decision spawns the whole batch, capped by max_workers
        ids = [t.id for t in (await swarm.list(limit=100))[0]]
        for tid in ids:
            assert (await swarm.wait(tid, timeout=60)).state is TaskState.DONE
        assert len(swarm.workers()) <= 5


async def test_per_model_demand_spawns_workers_of_that_model(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 4})
    async with open_swarm(config) as swarm:
        task = await swarm.submit({"prompt": "review this", "model": "opus"})
        done = await swarm.wait(task.id, timeout=30)
        assert done.state is TaskState.DONE
        assert done.attempts[-1].model == "opus"
        assert {w.model for w in swarm.workers()} >= {"opus"}


async def test_unknown_model_is_refused_naming_the_field(tmp_path: Path) -> None:
    async with open_swarm(swarm_config(tmp_path)) as swarm:
        with pytest.raises(ValidationError) as err:
            await swarm.submit({"prompt": "x", "model": "gpt-9"})
        assert "model" in str(err.value)
        with pytest.raises(ValidationError) as err2:
            await swarm.submit({"prompt": "x", "priority": "high"})
        assert "priority" in str(err2.value)


async def test_scale_down_after_idle_and_stabilisation_only(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2, "idle_s": 0.3, "stabilisation_s": 0.6, "max_retire_per_tick": 1},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("scale.*", "task.done", "worker.exited")) as sub:
            t0 = trio.current_time()
            tasks = await swarm.submit_many([{"prompt": "x [[think:0.2]]"} for _ in range(2)])
            for t in tasks:
                await swarm.wait(t.id, timeout=30)
            finished = trio.current_time()
            down = await wait_for(sub, "scale.down", timeout=30)
            assert trio.current_time() - finished >= 0.3  # never before idle_s
            assert trio.current_time() - t0 >= 0.6  # nor inside the stabilisation window
            assert down.data["count"] == 1  # at most max_retire_per_tick at once
            with trio.fail_after(30):
                while swarm.workers():
                    await sub.receive()  # each exit is an event; stop when the fleet is empty


async def test_crash_returns_the_task_and_it_runs_on_another_worker(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 2})
    async with open_swarm(config) as swarm:
        with swarm.events(("task.running", "worker.crashed")) as sub:
            task = await swarm.submit({"prompt": "long [[think:3]]"})
            running = await wait_for(sub, "task.running")
            victim = running.data["worker"]
            pid = swarm.worker(victim).pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            crashed = await wait_for(sub, "worker.crashed")
            assert crashed.data["worker"] == victim
            again = await wait_for(sub, lambda e: e.topic == "task.running" and e.data["task_id"] == task.id)
            assert again.data["worker"] != victim
            assert again.data["attempt"] == 2
        done = await swarm.wait(task.id, timeout=30)
        assert done.state is TaskState.DONE
        first = done.attempts[0]
        assert first.outcome is Outcome.CRASHED and first.signal == signal.SIGKILL


async def test_poison_task_is_dead_lettered_while_others_finish(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2},
        supervision={"breaker": {"crash_rate_max": 50}},
    )
    async with open_swarm(config) as swarm:
        poison = await swarm.submit({"prompt": "boom [[crash:3]]", "max_attempts": 2})
        good = await swarm.submit_many([{"prompt": f"ok {i}"} for i in range(4)])
        dead = await swarm.wait(poison.id, timeout=60)
        assert dead.state is TaskState.DEAD
        assert [a.outcome for a in dead.attempts] == [Outcome.CRASHED, Outcome.CRASHED]
        assert dead.attempts[0].exit_code == 3
        for t in good:
            assert (await swarm.wait(t.id, timeout=60)).state is TaskState.DONE
        assert (await swarm.status())["state"] == "running"


async def test_crash_storm_trips_the_breaker_keeps_tasks_and_resume_works(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 3},
        workers={"profile": "doomed", "profiles": {"doomed": {"argv": ["/bin/sh", "-c", "exit 7"]}}},
        supervision={"breaker": {"crash_rate_max": 4, "crash_window_s": 60}},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("swarm.halted", "worker.spawned")) as sub:
            tasks = await swarm.submit_many([{"prompt": f"t{i}"} for i in range(5)])
            events = await collect_until(sub, lambda e: e.topic == "swarm.halted", timeout=30)
            halted = events[-1]
            # every worker died the same way at start: the halt says so (issue 14)
            assert halted.data["reason"] == "every worker exits 7 at start"
            assert halted.data["evidence"]["count"] >= 4
            spawned_before_halt = sum(1 for e in events if e.topic == "worker.spawned")
        status = await swarm.status()
        assert status["state"] == "halted"
        for t in tasks:  # nothing lost, nothing run
            assert (await swarm.get(t.id)).state is TaskState.READY
        # bounded: nothing more is spawned while halted
        assert spawned_before_halt <= 4 + 3
        await swarm.config_patch({"workers": {"profile": "fake"}})
        await swarm.resume()
        for t in tasks:
            assert (await swarm.wait(t.id, timeout=60)).state is TaskState.DONE


async def test_usage_limit_parks_the_model_and_falls_back_without_tripping(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2},
        models={"fallback": {"sonnet": ["haiku"]}},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.rate_limited", "swarm.halted")) as sub:
            # pinned: it must wait for sonnet's reset, never fall back
            limited = await swarm.submit({"prompt": "hit the limit [[ratelimit:+3600]]", "model": "sonnet"})
            event = await wait_for(sub, "worker.rate_limited")
            assert event.data["reset_at"] is not None
            follow = await swarm.submit({"prompt": "after the limit"})
            done = await swarm.wait(follow.id, timeout=30)
            assert done.state is TaskState.DONE
            assert done.attempts[-1].model == "haiku"  # the fallback
            waiting = await swarm.get(limited.id)
            assert waiting.state is TaskState.READY  # waits for the reset; the attempt did not count
            assert [a.outcome for a in waiting.attempts] == [Outcome.RATE_LIMITED]
        status = await swarm.status()
        assert status["state"] == "running" and status["breaker"]["crashes_in_window"] == 0


async def test_hot_config_change_applies_while_busy_and_persists(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 1})
    async with open_swarm(config) as swarm:
        with swarm.events(("scale.up",)) as sub:
            tasks = await swarm.submit_many([{"prompt": f"t{i} [[think:0.5]]"} for i in range(4)])
            await wait_for(sub, "scale.up")
            with pytest.raises(ValidationError) as err:
                await swarm.config_patch({"scaling": {"max_workers": -3}})
            assert "max_workers" in str(err.value)
            assert swarm.config.scaling.max_workers == 1  # the old config stays
            await swarm.config_patch({"scaling": {"max_workers": 3}})
            up = await wait_for(sub, "scale.up")
            assert up.data["count"] >= 1
        for t in tasks:
            await swarm.wait(t.id, timeout=60)
    async with open_swarm(config) as again:
        assert again.config.scaling.max_workers == 3  # persisted across a restart


async def test_context_refresh_happens_between_tasks_not_during(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 1},
        workers={
            "profile": "hungry",
            "profiles": {"hungry": fake_profile("--context-step", "45", context_refresh_percent=80)},
        },
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.state", "task.done")) as sub:
            tasks = await swarm.submit_many([{"prompt": f"t{i} [[think:0.2]]"} for i in range(3)])
            seen = await collect_until(
                sub, lambda e: e.topic == "worker.state" and e.data["state"] == "refreshing", timeout=30
            )
            # the refresh comes only after a task finished, never while one runs
            assert any(e.topic == "task.done" for e in seen)
        for t in tasks:
            done = await swarm.wait(t.id, timeout=60)
            assert done.state is TaskState.DONE
            assert all(a.outcome is Outcome.DONE for a in done.attempts)


async def test_scale_down_racing_an_assignment_loses_nothing(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 2, "idle_s": 0.0, "stabilisation_s": 0.0})
    async with open_swarm(config) as swarm:
        # a steady trickle keeps workers flipping idle <-> busy while scale-down keeps trying
        for round_ in range(5):
            batch = await swarm.submit_many([{"prompt": f"r{round_} t{i}"} for i in range(3)])
            for t in batch:
                done = await swarm.wait(t.id, timeout=30)
                assert done.state is TaskState.DONE
                assert len([a for a in done.attempts if a.outcome is Outcome.DONE]) == 1


async def test_worker_controls_pause_resume_kill(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"min_workers": 1, "max_workers": 1})
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.state",)) as sub:
            idle = await wait_for(sub, lambda e: e.data["state"] == "idle")
            wid = idle.data["worker"]
            await swarm.pause(wid)
            await wait_for(sub, lambda e: e.data["worker"] == wid and e.data["state"] == "paused")
            task = await swarm.submit({"prompt": "waits for a worker"})
            assert (await swarm.get(task.id)).state is TaskState.READY  # paused workers take nothing
            await swarm.resume_worker(wid)
            assert (await swarm.wait(task.id, timeout=30)).state is TaskState.DONE
        assert swarm.worker(wid).state in (WorkerState.IDLE, WorkerState.BUSY)


async def test_kill_frees_a_hung_agents_task_for_a_replacement(tmp_path: Path) -> None:
    """`kill` is the way out for an agent that hangs: the attempt ends interrupted at once, the task
    goes back to the queue, and the replacement worker (min_workers) runs it."""
    config = swarm_config(tmp_path, scaling={"min_workers": 1, "max_workers": 1})
    async with open_swarm(config) as swarm:
        with swarm.events(("task.running",)) as sub:
            task = await swarm.submit({"prompt": "[[hang]] never answers"})
            first = await wait_for(sub, lambda e: e.data["task_id"] == task.id, timeout=30)
            await swarm.kill(first.data["worker"])
            second = await wait_for(sub, lambda e: e.data["task_id"] == task.id, timeout=30)
        assert second.data["worker"] != first.data["worker"] and second.data["attempt"] == 2
        attempts = (await swarm.get(task.id)).attempts
        assert attempts[0].outcome is Outcome.INTERRUPTED and attempts[0].worker == first.data["worker"]
        await swarm.cancel(task.id)


async def test_respawn_backoff_is_exponential_and_the_lineage_budget_retires_it(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"min_workers": 1, "max_workers": 1},
        workers={"profile": "dies", "profiles": {"dies": {"argv": ["/bin/sh", "-c", "exit 4"]}}},
        supervision={
            "backoff": {"min_s": 0.05, "max_s": 10.0, "factor": 2.0, "jitter": 0.0},
            "lineage_max_restarts": 3,
            "lineage_period_s": 60.0,
            "breaker": {"crash_rate_max": 100},
        },
    )
    async with open_swarm(config) as swarm:
        with swarm.events(
            ("worker.restarting", "worker.lineage_retired", "worker.exited", "worker.spawned")
        ) as sub:
            events = await collect_until(sub, lambda e: e.topic == "worker.lineage_retired", timeout=30)
        first_lineage = events[-1].data["lineage"]
        mine = [e for e in events if e.data.get("lineage") == first_lineage]
        delays = [e.data["delay_s"] for e in mine if e.topic == "worker.restarting"]
        assert delays == [0.05, 0.1, 0.2]  # min·factor^n, exact with jitter 0
        # each respawn waited at least its delay after the exit before it
        exits = [e.ts for e in mine if e.topic == "worker.exited"]
        spawns = [e.ts for e in mine if e.topic == "worker.spawned"][1:]
        for exited, spawned, delay in zip(exits, spawns, delays, strict=False):
            assert spawned - exited >= delay * 0.9
        assert all(e.data["crashed"] and e.data["exit_code"] == 4 for e in mine if e.topic == "worker.exited")
        assert events[-1].data["reason"] == "restart budget exhausted"


async def test_every_worker_failing_at_start_halts_with_the_agents_own_words(tmp_path: Path) -> None:
    """Issue 14: not only "crash rate", and no escape bytes or TUI footer in the reason."""
    screen = (
        r"\x1b[31mUnable to connect to Anthropic services\x1b[0m\r\n\r\n"
        r"\x1b[2m  ? for shortcuts\x1b(B\x0f\x1b7\x1b8"
    )
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2},
        workers={
            "profile": "offline",
            "profiles": {"offline": {"argv": ["bash", "-c", f"printf '{screen}'; exit 1"]}},
        },
        supervision={"breaker": {"crash_rate_max": 3, "crash_window_s": 60}},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("swarm.halted",)) as sub:
            task = await swarm.submit({"prompt": "never runs"})
            halted = await wait_for(sub, "swarm.halted", timeout=30)
        reason = "every worker exits 1 at start: Unable to connect to Anthropic services"
        assert halted.data["reason"] == reason
        assert halted.data["evidence"]["count"] >= 3
        assert (await swarm.status())["reason"] == reason
        assert (await swarm.get(task.id)).state is TaskState.READY


async def test_consecutive_spawn_failures_halt_the_swarm_with_evidence(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-agent")
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2},
        workers={"profile": "missing", "profiles": {"missing": {"argv": [missing]}}},
        supervision={"breaker": {"consecutive_spawn_failures": 3}},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("swarm.halted",)) as sub:
            task = await swarm.submit({"prompt": "never runs"})
            halted = await wait_for(sub, "swarm.halted", timeout=30)
        assert halted.data["reason"].startswith(f"consecutive spawn failures: cannot start '{missing}'")
        assert halted.data["evidence"]["consecutive_spawn_failures"] >= 3
        assert missing in halted.data["evidence"]["last_error"]
        assert (await swarm.get(task.id)).state is TaskState.READY
        assert (await swarm.status())["breaker"]["state"] == "open"


async def test_cost_is_accounted_per_model_from_the_agents_usage(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 2}, workers={"profile": "fake-stream"})
    async with open_swarm(config) as swarm:
        with swarm.events(("task.done",)) as sub:
            task = await swarm.submit({"prompt": "price me", "model": "opus"})
            done_event = await wait_for(sub, "task.done")
        assert done_event.data["model"] == "opus" and done_event.data["cost_usd"] > 0
        done = await swarm.get(task.id)
        assert done.usage["output_tokens"] > 0
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()  # the metrics actor has handled its events
        assert swarm.metrics.snapshot()["cost_usd"]["by_model"]["opus"] == done_event.data["cost_usd"]


async def test_worker_events_never_precede_the_task_events_that_caused_them(tmp_path: Path) -> None:
    """Issue 13 item 12: the queue publishes task.running/task.done after their commit while the
    worker reacts at once, so worker.context and worker.state refreshing came with lower seqs."""
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 1},
        workers={"profile": "ctx", "profiles": {"ctx": fake_profile(context_refresh_percent=50.0)}},
    )
    refreshed: list[Event] = []

    def third_refresh_over(event: Event) -> bool:
        if event.topic == "worker.state" and event.data["state"] == "refreshing":
            refreshed.append(event)
        return len(refreshed) == 3 and event.topic == "worker.state" and event.data["state"] == "idle"

    async with open_swarm(config) as swarm:
        with swarm.events(("task.*", "worker.*")) as sub:
            await swarm.submit_many(
                [{"id": f"c{i}", "prompt": f"fill [[context:{60 + i}]]"} for i in range(3)]
            )
            seen = await collect_until(sub, third_refresh_over, timeout=60)
    running = {e.data["task_id"]: e.seq for e in seen if e.topic == "task.running"}
    done = {e.data["task_id"]: e.seq for e in seen if e.topic == "task.done"}
    context = {e.data["used_percent"]: e.seq for e in seen if e.topic == "worker.context"}
    for i in range(3):
        task = f"c{i}"
        assert running[task] < context[60 + i], (task, running, context)  # cause, then effect
        assert done[task] < refreshed[i].seq, (task, done, [e.seq for e in refreshed])


async def test_halts_and_resumes_racing_are_serialised_and_every_worker_works_after(tmp_path: Path) -> None:
    """The worker supervisor is an actor: a halt's pauses and a resume's resumes never interleave, so
    whatever order the racing calls land in, the last resume leaves no worker paused by a halt."""
    config = swarm_config(tmp_path, scaling={"min_workers": 2, "max_workers": 2})
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.state",)) as sub:
            await collect_until(
                sub, lambda e: sum(1 for w in swarm.workers() if w.state is WorkerState.IDLE) == 2
            )
        with swarm.events(("swarm.halted", "swarm.resumed")) as sub:
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(swarm.halt, "race")
                    nursery.start_soon(swarm.resume)
            await swarm.resume()
            topics = []
            while True:
                try:
                    topics.append(sub.receive_nowait().topic)
                except trio.WouldBlock:
                    break
        assert topics and all(a != b for a, b in itertools.pairwise(topics))  # they alternate
        assert topics[-1] == "swarm.resumed" and (await swarm.status())["state"] == "running"
        with swarm.events(("worker.state",)) as sub:
            tasks = await swarm.submit_many([{"prompt": f"after the race {i}"} for i in range(4)])
            for t in tasks:
                assert (await swarm.wait(t.id, timeout=30)).state is TaskState.DONE

            def none_paused(_e: Event | None = None) -> bool:
                return not any(w.state is WorkerState.PAUSED for w in swarm.workers())

            if not none_paused():  # a Resume still on its way: it arrives, nothing stays paused
                await collect_until(sub, none_paused, timeout=10)


async def test_attach_is_a_message_answered_with_the_tail_and_a_bounded_channel(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"min_workers": 1, "max_workers": 1})
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.state",)) as sub:
            wid = (await wait_for(sub, lambda e: e.data["state"] == "idle")).data["worker"]
        tail, channel = await swarm.attach(wid)
        assert tail == swarm.logs(wid)
        await swarm.submit({"prompt": "seen by the viewer"})
        seen = b""
        with trio.fail_after(30):
            while b"seen by the viewer" not in seen:
                seen += await channel.receive()
        swarm.detach(wid, channel)
        with pytest.raises(trio.ClosedResourceError):
            await channel.receive()
        with pytest.raises(NotFound):
            await swarm.attach("w999")
