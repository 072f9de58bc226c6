"""Menus end to end (issue 16): the fake agent's real-looking menus through real PTYs, a real swarm
and its gateway. Shoal's policy answers the usage-limit menu (and parks the model) and the trust
dialog in a directory it manages; a human answers the rest through `workers.answer`.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import trio
from swarmkit import fake_profile, swarm_config, wait_for

from shoal.actors.client import connect
from shoal.actors.swarm import SwarmHandle
from shoal.actors.tree import open_swarm
from shoal.protocols.errors import Conflict, ValidationError
from shoal.protocols.tasks import AttemptCounts, Outcome, TaskState
from shoal.runtime.eventbus import Event, Subscription

pytestmark = pytest.mark.usefixtures("no_leaks")

WAIT_S = 30.0  # generous: the machine is shared; nothing here is a timing assertion
_ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]")


async def asked_with(events: Subscription, options: int) -> Event:
    """The first worker.needs_input with all `options` (a read may end inside a menu: it is
    reported with the options so far, then again once the rest came)."""
    return await wait_for(
        events, lambda e: e.topic == "worker.needs_input" and len(e.data["options"]) >= options, WAIT_S
    )


async def screen_shows(swarm: SwarmHandle, worker: str, text: str) -> None:
    """Until the worker's output since now (ANSI stripped) shows `text`."""
    _, channel = await swarm.attach(worker)
    seen = b""
    try:
        with trio.fail_after(WAIT_S):
            async for chunk in channel:
                seen += chunk
                if text in _ANSI.sub(b"", seen).decode(errors="replace"):
                    return
    finally:
        swarm.detach(worker, channel)


async def test_limit_menu_is_answered_and_the_model_parks_until_the_reset(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 1})
    async with open_swarm(config) as swarm:
        with (
            swarm.events(["worker.answered"]) as answered,
            swarm.events(["model.parked"]) as parked,
        ):
            submitted = time.time()
            task = await swarm.submit({"id": "limit", "prompt": "[[limitmenu:+600]] go", "model": "haiku"})
            event = await wait_for(answered, "worker.answered", WAIT_S)
            park = await wait_for(parked, "model.parked", WAIT_S)
            worker = event.data["worker"]
            await screen_shows(swarm, worker, "? for shortcuts")  # the menu is gone, the prompt is back
            limited = await swarm.get(task.id)
        assert event.data == {
            "worker": worker,
            "task_id": "limit",
            "question": "What do you want to do?",
            "choice": 1,
            "label": "Stop and wait for limit to reset",
            "by": "policy",
            "kind": "usage_limit",
        }
        assert park.data["model"] == "haiku"
        assert submitted + 600 <= park.data["until"] <= submitted + 600 + 120  # the menu's reset time
        # requeued without burning an attempt, and waiting for the reset
        assert limited.state is TaskState.READY
        assert [a.outcome for a in limited.attempts] == [Outcome.RATE_LIMITED]
        assert limited.attempt_counts == AttemptCounts(used=0, rate_limited=1)
        info = swarm.worker(worker)
        assert info.needs_input is None and (await swarm.status())["needs_input"] == []


async def test_trust_in_a_managed_directory_is_answered_yes(tmp_path: Path) -> None:
    workspace = tmp_path / "state" / "workspaces" / "w1"
    workspace.mkdir(parents=True)
    profile = fake_profile("--trust-dialog", cwd=str(workspace))
    config = swarm_config(tmp_path, workers={"profile": "t", "profiles": {"t": profile}})
    async with open_swarm(config) as swarm:
        with swarm.events(["worker.answered", "worker.needs_input"]) as events:
            task = await swarm.submit({"prompt": "hello"})
            done = await swarm.wait(task.id, timeout=WAIT_S)
            event = await wait_for(events, lambda e: True, WAIT_S)
    assert done.state is TaskState.DONE and done.result == "Done: hello", done
    assert event.topic == "worker.answered"  # never a question for a human
    assert event.data["by"] == "policy" and event.data["kind"] == "trust"
    assert event.data["label"] == "Yes, I trust this folder" and event.data["task_id"] is None


async def test_trust_elsewhere_asks_a_human_who_answers_through_the_gateway(tmp_path: Path) -> None:
    elsewhere = tmp_path / "someones-project"
    elsewhere.mkdir()
    profile = fake_profile("--trust-dialog", cwd=str(elsewhere), startup_timeout_s=1.0)
    config = swarm_config(
        tmp_path,
        workers={"profile": "t", "profiles": {"t": profile}},
        scaling={"max_workers": 1},
        gateway={"enabled": True, "port": 0},
    )
    async with open_swarm(config) as swarm:
        assert swarm.gateway_url is not None
        with swarm.events(["worker.needs_input", "worker.answered", "worker.state"]) as events:
            task = await swarm.submit({"prompt": "hello"})
            asked = await asked_with(events, 2)
            worker = asked.data["worker"]
            assert asked.data["kind"] == "trust" and str(elsewhere) in asked.data["why"]
            assert asked.data["options"] == ["Yes, I trust this folder", "No, exit"]
            [waiting] = (await swarm.status())["needs_input"]
            assert waiting["worker"] == worker and waiting["options"] == asked.data["options"]
            info = swarm.worker(worker)
            assert info.state == "starting" and info.needs_input_options == (
                "Yes, I trust this folder",
                "No, exit",
            )
            # a human takes longer than the start-up timeout (1 s): the worker waits, it does not crash
            await trio.sleep(1.5)
            assert swarm.worker(worker).state == "starting"
            async with connect(swarm.gateway_url, swarm.token) as client:
                with pytest.raises(ValidationError) as bad:
                    await client.answer(worker, 3)
                assert bad.value.field == "params.choice" and "1 to 2" in str(bad.value)
                with pytest.raises(ValidationError, match="names no option"):
                    await client.answer(worker, "maybe")
                reply = await client.answer(worker, 1)
                assert reply == {
                    "id": worker,
                    "question": asked.data["prompt"],
                    "choice": 1,
                    "label": "Yes, I trust this folder",
                }
                with pytest.raises(Conflict, match="not waiting on a question"):
                    await client.answer(worker, 1)
            answered = await wait_for(events, "worker.answered", WAIT_S)
            done = await swarm.wait(task.id, timeout=WAIT_S)
        assert answered.data["by"] == "human" and answered.data["choice"] == 1
        assert done.state is TaskState.DONE and done.result == "Done: hello", done
        assert done.attempts[0].worker == worker  # the same worker, started once
        assert swarm.worker(worker).crashes == 0


async def test_a_model_picker_goes_to_a_human(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 1})
    async with open_swarm(config) as swarm:
        with swarm.events(["worker.needs_input", "worker.answered"]) as events:
            task = await swarm.submit({"prompt": "[[picker]] choose"})
            asked = await asked_with(events, 3)
            worker = asked.data["worker"]
            assert asked.data["prompt"] == "Select model" and asked.data["kind"] == "menu"
            assert [o.split()[0] for o in asked.data["options"]] == ["Default", "Opus", "Haiku"]
            assert swarm.worker(worker).needs_input == "Select model"
            with pytest.raises(ValidationError) as bad:
                await swarm.answer(worker, 0)
            assert bad.value.field == "choice"
            reply = await swarm.answer(worker, "opus")
            assert reply["choice"] == 2 and reply["label"].startswith("Opus")
            answered = await wait_for(events, "worker.answered", WAIT_S)
            done = await swarm.wait(task.id, timeout=WAIT_S)
        assert answered.data["by"] == "human" and answered.data["kind"] == "menu"
        assert done.state is TaskState.DONE and done.result.endswith("Done: choose"), done
        with pytest.raises(Conflict):
            await swarm.answer(worker, 1)


@pytest.mark.parametrize("managed", [True, False], ids=["managed", "elsewhere"])
async def test_a_trust_dialog_without_numbers_is_answered_with_arrows(tmp_path: Path, managed: bool) -> None:
    """2.1.332's dialog (`❯ No, exit` / `Yes, I trust this folder`, no digits): Down, then Enter."""
    where = tmp_path / "state" / "workspaces" / "w1" if managed else tmp_path / "project"
    where.mkdir(parents=True)
    profile = fake_profile("--trust-dialog=plain", cwd=str(where))
    config = swarm_config(
        tmp_path, workers={"profile": "t", "profiles": {"t": profile}}, scaling={"max_workers": 1}
    )
    async with open_swarm(config) as swarm:
        with swarm.events(["worker.answered", "worker.needs_input"]) as events:
            task = await swarm.submit({"prompt": "hello"})
            first = await wait_for(events, lambda e: True, WAIT_S)
            if not managed:
                assert first.topic == "worker.needs_input"
                if len(first.data["options"]) < 2:
                    first = await asked_with(events, 2)
                assert first.data["options"] == ["No, exit", "Yes, I trust this folder"]
                await swarm.answer(first.data["worker"], "yes")
                first = await wait_for(events, "worker.answered", WAIT_S)
            done = await swarm.wait(task.id, timeout=WAIT_S)
    assert first.topic == "worker.answered" and first.data["by"] == ("policy" if managed else "human")
    assert first.data["choice"] == 2 and first.data["label"] == "Yes, I trust this folder"
    assert done.state is TaskState.DONE and done.result == "Done: hello", done


async def test_an_answer_the_menu_swallowed_is_typed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A menu deaf for 0.8 s (Claude Code's is ~0.2 s) loses the answer typed at 0.5 s; the agent
    writes nothing, so after 1.5 s of silence the worker types it again, and the turn goes on."""
    profile = fake_profile("--menu-deaf", "0.8")
    config = swarm_config(
        tmp_path, workers={"profile": "d", "profiles": {"d": profile}}, scaling={"max_workers": 1}
    )
    caplog.set_level(logging.INFO, logger="shoal.worker")
    async with open_swarm(config) as swarm:
        with swarm.events(["worker.needs_input", "worker.answered"]) as events:
            task = await swarm.submit({"prompt": "[[picker]] choose"})
            asked = await asked_with(events, 3)
            reply = await swarm.answer(asked.data["worker"], 3)
            done = await swarm.wait(task.id, timeout=WAIT_S)
            output = swarm.logs(asked.data["worker"]).decode(errors="replace")
        assert reply["label"].startswith("Haiku")
        assert done.state is TaskState.DONE and done.result.endswith("Done: choose"), done
        assert "Set model to \x1b[1mHaiku" in output
        again = [r for r in caplog.records if "typing it again" in r.getMessage()]
        assert len(again) == 1, [r.getMessage() for r in caplog.records]


async def test_an_idle_worker_asked_a_question_takes_work_again_once_answered(tmp_path: Path) -> None:
    """A menu drawn while the worker is idle (bash prints one after its task ended): a task given to
    it meanwhile is turned down (requeued, not counted), and once a person answers, the worker is
    announced idle again and takes it."""
    config = swarm_config(tmp_path, workers={"profile": "shell"}, scaling={"max_workers": 1})
    menu = "(sleep 0.3; printf 'Pick one?\\n\\xe2\\x9d\\xaf 1. Apples\\n  2. Pears\\n\\n') &"
    async with open_swarm(config) as swarm:
        with swarm.events(["worker.needs_input", "worker.answered", "task.*"]) as events:
            first = await swarm.submit({"prompt": menu})
            assert (await swarm.wait(first.id, timeout=WAIT_S)).state is TaskState.DONE
            # a read may end inside the menu: it is reported again once the rest of its options came
            asked = await wait_for(
                events, lambda e: e.topic == "worker.needs_input" and len(e.data["options"]) == 2, WAIT_S
            )
            worker = asked.data["worker"]
            assert asked.data["task_id"] is None and asked.data["options"] == ["Apples", "Pears"]
            assert swarm.worker(worker).state == "idle"
            later = await swarm.submit({"prompt": "echo later"})
            mine = lambda e: e.topic.startswith("task.") and e.data.get("task_id") == later.id  # noqa: E731
            await wait_for(events, lambda e: mine(e) and e.topic == "task.running", WAIT_S)
            requeued = await wait_for(events, mine, WAIT_S)  # turned down: back to the queue
            await swarm.answer(worker, 2)
            done = await swarm.wait(later.id, timeout=WAIT_S)
        assert requeued.topic != "task.done", requeued
        assert done.state is TaskState.DONE, done
        assert [(a.outcome, a.reason) for a in done.attempts] == [
            (Outcome.INTERRUPTED, "worker waiting on a question"),
            (Outcome.DONE, None),
        ]
        assert done.attempt_counts.used == 1  # the turned-down attempt does not count
