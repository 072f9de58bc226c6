"""End-to-end: how the swarm acts on what agents say about their API and quota (issue 16).

Real fake-agent workers on real pipes and PTYs, a real SQLite store; each signal comes from the fake
agent's directives in the form Claude Code prints it (stream-json events, TUI lines). Time is real,
so every wait is on the event that proves the behaviour, with a timeout.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from swarmkit import swarm_config, wait_for

from shoal.actors.tree import open_swarm
from shoal.protocols.errors import Conflict
from shoal.protocols.tasks import Outcome, TaskState

pytestmark = pytest.mark.usefixtures("no_leaks")


def samples(swarm: object, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric family in /metrics, by their sorted labels."""
    text = swarm.metrics.prometheus_text().decode()  # type: ignore[attr-defined]
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def settled() -> None:
    """The observers (metrics, alerts) have handled what was published so far."""
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked()


def model_state(status: dict, name: str) -> dict:
    return next(m for m in status["models"] if m["name"] == name)


# ---- Notice --------------------------------------------------------------------------------------


async def test_a_notice_line_is_logged_counted_and_the_task_still_succeeds(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 1}, workers={"profile": "fake-stream"})
    warning = "Warning: no stdin data received in 3s, proceeding without it."
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.notice",)) as sub:
            task = await swarm.submit({"prompt": f"hello [[notice:{warning}]]"})
            event = await wait_for(sub, "worker.notice")
        assert event.data["text"] == warning and event.data["profile"] == "fake-stream"
        done = await swarm.wait(task.id, timeout=30)
        assert done.state is TaskState.DONE and done.result == "Done: hello"
        assert swarm.worker(event.data["worker"]).notices == 1
        await settled()
        assert samples(swarm, "shoal_agent_notices_total") == {(("profile", "fake-stream"),): 1.0}


async def test_a_stream_that_never_becomes_json_still_fails_the_task(tmp_path: Path) -> None:
    # an "agent" that answers every prompt with plain text only: the dialect gives up after
    # max_preamble_lines lines, as before notices were skipped
    junk = {
        "argv": ["sh", "-c", "while read line; do for i in 1 2 3 4 5; do echo not json; done; done"],
        "dialect": "stream-json",
        "options": {"max_preamble_lines": 3},
        "startup_timeout_s": 10.0,
        "stop_timeout_s": 1.0,
    }
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 1},
        workers={"profile": "junk", "profiles": {"junk": junk}},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.notice",)) as sub:
            task = await swarm.submit({"prompt": "hello", "max_attempts": 1})
            dead = await swarm.wait(task.id, timeout=30)
            assert dead.state is TaskState.DEAD
            assert "no JSON in the first 3 lines" in (dead.attempts[0].reason or "")
            for _ in range(3):  # each line is a notice (logged, counted), then the stream gives up
                assert (await wait_for(sub, "worker.notice")).data["text"] == "not json"
        await settled()
        assert samples(swarm, "shoal_agent_notices_total")[(("profile", "junk"),)] >= 3


# ---- ApiRetry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["fake-stream", "fake"])
async def test_api_retries_show_on_the_worker_and_are_counted(tmp_path: Path, profile: str) -> None:
    """stream-json's system/api_retry and the TUI's "Retrying in N seconds… (attempt i/10)" line."""
    config = swarm_config(tmp_path, scaling={"max_workers": 1}, workers={"profile": profile})
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.api_retry",)) as sub:
            task = await swarm.submit({"prompt": "busy API [[retry:2,529,1.5]]"})
            first = await wait_for(sub, "worker.api_retry")
            info = swarm.worker(first.data["worker"])
            assert info.task_id == task.id and info.state.value == "busy"
            assert info.retrying is not None
            assert (info.retrying.attempt, info.retrying.max_retries, info.retrying.status) == (1, 10, 529)
            assert info.retrying.error == "overloaded"
            assert info.retrying.describe(info.retrying.since).startswith("retrying 1/10, next in ")
            status = await swarm.status()
            assert model_state(status, "sonnet")["retrying"] == 1
            (shown,) = status["retrying"]
            assert (shown["worker"], shown["task_id"], shown["attempt"]) == (info.id, task.id, 1)
            await wait_for(sub, "worker.api_retry")
        done = await swarm.wait(task.id, timeout=30)
        assert done.state is TaskState.DONE
        assert swarm.worker(first.data["worker"]).retrying is None  # the API answered in the end
        await settled()
        retries = samples(swarm, "shoal_api_retries_total")
        assert retries == {(("error", "overloaded"), ("model", "sonnet")): 2.0}


async def test_a_retry_storm_parks_the_model_swarm_wide_until_it_backs_off(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 3},
        workers={"profile": "fake-stream"},
        limits={"retry_storm_workers": 3, "retry_storm_window_s": 60.0, "retry_storm_park_s": 30.0},
        alerts={"rules": [{"kind": "retry_storm"}]},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("model.retry_storm", "model.parked", "alert.fired")) as sub:
            stormy = [
                await swarm.submit({"prompt": f"storm {i} [[retry:3,529,1]]", "model": "sonnet"})
                for i in range(3)
            ]
            storm = await wait_for(sub, "model.retry_storm", timeout=40)
            assert storm.data["model"] == "sonnet" and len(storm.data["workers"]) == 3
            assert storm.data["park_s"] == 30.0 and storm.data["level"] == 1
            assert storm.data["error"] == "overloaded"
            parked = await wait_for(sub, "model.parked")
            assert parked.data["until"] == pytest.approx(storm.data["until"])
            alert = await wait_for(
                sub, lambda e: e.topic == "alert.fired" and e.data["kind"] == "retry_storm"
            )
            assert alert.data["key"] == "sonnet"
        # the storm's tasks finish (the CLI's own retries go on); new work for sonnet waits
        for task in stormy:
            assert (await swarm.wait(task.id, timeout=30)).state is TaskState.DONE
        later = await swarm.submit({"prompt": "after the storm", "model": "sonnet"})
        state = model_state(await swarm.status(), "sonnet")
        assert state["state"] == "parked" and "retry storm" in state["reason"]
        assert state["retry_storms"] == 1
        assert (await swarm.get(later.id)).state is TaskState.READY
        await settled()
        assert samples(swarm, "shoal_retry_storms_total") == {(("model", "sonnet"),): 1.0}
        # an operator may end the back-off early
        resumed = await swarm.resume_model("sonnet")
        assert resumed["parked"] is False
        assert (await swarm.wait(later.id, timeout=30)).state is TaskState.DONE
        with pytest.raises(Conflict, match="not parked"):
            await swarm.resume_model("sonnet")


# ---- QuotaReport ---------------------------------------------------------------------------------


async def test_quota_is_kept_per_model_alerts_on_a_warning_and_prefers_the_fallback(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2},
        workers={"profile": "fake-stream"},
        models={"fallback": {"sonnet": ["haiku"]}, "category_models": {"review": "sonnet"}},
        limits={"prefer_fallback_at": 0.9},
        alerts={"rules": [{"kind": "quota_warning"}]},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("model.quota", "alert.fired")) as sub:
            first = await swarm.submit(
                {"prompt": "near the limit [[quota:allowed_warning,0.95,seven_day]]", "model": "sonnet"}
            )
            quota = await wait_for(sub, "model.quota")
            assert quota.data["model"] == "sonnet" and quota.data["window"] == "seven_day"
            assert quota.data["status"] == "allowed_warning" and quota.data["utilization"] == 0.95
            alert = await wait_for(
                sub, lambda e: e.topic == "alert.fired" and e.data["kind"] == "quota_warning"
            )
            assert alert.data["key"] == "sonnet:seven_day" and "95%" in alert.data["summary"]
        assert (await swarm.wait(first.id, timeout=30)).state is TaskState.DONE
        state = model_state(await swarm.status(), "sonnet")
        assert state["prefer_fallback"] is True
        assert state["quota"]["seven_day"]["utilization"] == 0.95
        # work softly routed to sonnet (its category's model) goes to the fallback instead
        review = await swarm.submit({"prompt": "review this", "category": "review"})
        done = await swarm.wait(review.id, timeout=30)
        assert done.state is TaskState.DONE and done.attempts[-1].model == "haiku"
        # a task pinned to sonnet still runs there: prefer, never refuse
        pinned = await swarm.submit({"prompt": "pinned", "model": "sonnet"})
        assert (await swarm.wait(pinned.id, timeout=30)).attempts[-1].model == "sonnet"
        await settled()
        key = (("model", "sonnet"), ("window", "seven_day"))
        assert samples(swarm, "shoal_quota_utilization") == {key: 0.95}
        status_key = (("model", "sonnet"), ("status", "allowed_warning"), ("window", "seven_day"))
        assert samples(swarm, "shoal_quota_status")[status_key] == 1.0
        assert samples(swarm, "shoal_quota_resets_at")[key] > 0


# ---- ExtraUsage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["fake-stream", "fake"])
async def test_extra_usage_pauses_the_model_until_an_operator_resumes_it(
    tmp_path: Path, profile: str
) -> None:
    """stream-json's rate_limit_event with isUsingOverage, the TUI's "Now using extra usage" footer."""
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 1},
        workers={"profile": profile},
        alerts={"rules": [{"kind": "extra_usage"}]},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("model.extra_usage", "model.parked", "alert.fired")) as sub:
            first = await swarm.submit({"prompt": "spend [[extra_usage]]", "model": "sonnet"})
            event = await wait_for(sub, "model.extra_usage")
            assert event.data["model"] == "sonnet" and event.data["policy"] == "pause"
            parked = await wait_for(sub, "model.parked")
            assert parked.data["until"] is None  # until resumed
            alert = await wait_for(
                sub, lambda e: e.topic == "alert.fired" and e.data["kind"] == "extra_usage"
            )
            assert "paused until resumed" in alert.data["summary"]
        assert (await swarm.wait(first.id, timeout=30)).state is TaskState.DONE  # running work finishes
        second = await swarm.submit({"prompt": "more", "model": "sonnet"})
        state = model_state(await swarm.status(), "sonnet")
        assert state["state"] == "parked" and state["until"] is None
        assert "shoal models resume sonnet" in state["reason"]
        assert (await swarm.get(second.id)).state is TaskState.READY
        with swarm.events(("alert.resolved",)) as sub:
            await swarm.resume_model("sonnet")
            assert (await swarm.wait(second.id, timeout=30)).state is TaskState.DONE
            resolved = await wait_for(sub, lambda e: e.data["kind"] == "extra_usage")
            assert resolved.data["key"] == "sonnet"


async def test_extra_usage_stop_interrupts_the_models_running_tasks_without_counting(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        scaling={"max_workers": 2},
        workers={"profile": "fake-stream"},
        limits={"on_extra_usage": "stop"},
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("task.*", "model.extra_usage")) as sub:
            long = await swarm.submit({"prompt": "long [[think:60]]", "model": "sonnet"})
            await wait_for(sub, lambda e: e.topic == "task.running" and e.data["task_id"] == long.id)
            await swarm.submit({"prompt": "spend [[extra_usage]] [[think:0.5]]", "model": "sonnet"})
            await wait_for(sub, "model.extra_usage", timeout=30)
            await wait_for(sub, lambda e: e.data.get("task_id") == long.id and e.topic != "task.running")
        task = await swarm.get(long.id)
        assert task.state is TaskState.READY  # back in the queue, waiting for the model
        assert [a.outcome for a in task.attempts] == [Outcome.INTERRUPTED]
        assert task.attempt_counts.used == 0 and task.attempt_counts.interrupted == 1


async def test_models_pause_and_resume(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 1}, workers={"profile": "fake-stream"})
    async with open_swarm(config) as swarm:
        paused = await swarm.pause_model("haiku", "cost review")
        assert paused == {"model": "haiku", "parked": True, "until": None, "reason": "cost review"}
        task = await swarm.submit({"prompt": "cheap", "model": "haiku"})
        state = model_state(await swarm.status(), "haiku")
        assert state["state"] == "parked" and state["reason"] == "cost review"
        assert (await swarm.get(task.id)).state is TaskState.READY
        assert (await swarm.resume_model("haiku"))["parked"] is False
        assert (await swarm.wait(task.id, timeout=30)).state is TaskState.DONE


# ---- usage of failed attempts ------------------------------------------------------------------


async def test_a_failed_attempt_keeps_its_usage_cost_and_the_agents_reason(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 1}, workers={"profile": "fake-stream"})
    async with open_swarm(config) as swarm:
        task = await swarm.submit({"prompt": "too long [[maxturns:40]]", "max_attempts": 1})
        dead = await swarm.wait(task.id, timeout=30)
    assert dead.state is TaskState.DEAD
    (attempt,) = dead.attempts
    assert attempt.outcome is Outcome.FAILED
    assert attempt.reason == "Reached maximum number of turns (40)"
    assert attempt.usage["cost_usd"] == 0.492 and attempt.usage["output_tokens"] > 0
    assert dead.usage["cost_usd"] == 0.492
    # and the store kept it: a restart reads the same attempt back
    async with open_swarm(config) as swarm:
        again = await swarm.get(task.id)
    assert again.attempts[0].usage == attempt.usage
    assert not math.isnan(again.attempts[0].usage["cost_usd"])
