"""Every directive the README lists, through the default demo profile, end to end.

The README promises what `[[think:2]]`, `[[crash:3]]`, `[[hang]]`, `[[ratelimit:+60]]`, `[[ask]]`,
`[[context:95]]` and `[[fail:reason]]` do when submitted to `scripts/serve`'s swarm. This runs them
through a swarm with the default configuration's profile (`fake`: the fake agent's TUI in a real
PTY, read by the prompt dialect) and checks each documented outcome on the tasks, the workers and
`swarm.status`.
"""

from __future__ import annotations

import time
from pathlib import Path

from swarmkit import swarm_config, wait_for

from shoal.actors.tree import open_swarm
from shoal.protocols.config import SwarmConfig
from shoal.protocols.tasks import AttemptCounts

WAIT_S = 30.0  # generous: the machine is shared; nothing here is a timing assertion


def test_the_default_profile_is_the_fake_tui_on_the_prompt_dialect() -> None:
    from shoal.protocols.profiles import BUILTIN_PROFILES

    profile = SwarmConfig().workers.profile
    assert profile == "fake"
    assert BUILTIN_PROFILES[profile].dialect == "prompt"


async def test_every_readme_directive_behaves_as_documented(tmp_path: Path, no_leaks: None) -> None:
    cfg = swarm_config(tmp_path, scaling={"max_workers": 8})
    assert cfg.workers.profile == "fake"
    async with open_swarm(cfg) as swarm:
        with (
            swarm.events(["worker.needs_input"]) as asked,
            swarm.events(["model.parked"]) as parked,
            swarm.events(["worker.state"]) as states,
        ):
            submitted_at = time.time()
            # the rate limit is pinned to haiku, so only haiku is parked; the rest is pinned to sonnet,
            # so no haiku worker started for it takes one before the limit parks it
            on_sonnet = [
                {"id": "think", "prompt": "[[think:2]] take your time"},
                {"id": "crash", "prompt": "[[crash:3]] die", "max_attempts": 2},
                {"id": "hang", "prompt": "[[hang]] never end", "timeout_s": 1, "max_attempts": 1},
                {"id": "ask", "prompt": "[[ask]] may I?"},
                {"id": "context", "prompt": "[[context:95]] fill it up"},
                {"id": "fail", "prompt": "[[fail:reason]] no luck", "max_attempts": 1},
            ]
            limit_spec = {"id": "limit", "prompt": "[[ratelimit:+60]] over quota", "model": "haiku"}
            await swarm.submit_many([limit_spec, *({**t, "model": "sonnet"} for t in on_sonnet)])

            # [[think:2]]: done, after 2 s of thinking
            think = await swarm.wait("think", timeout=WAIT_S)
            assert think.state == "done" and think.result == "Done: take your time"
            first = think.attempts[0]
            assert first.ended is not None and first.ended - first.started >= 2.0

            # [[crash:3]]: the agent dies with exit code 3 on every attempt; the task is dead-lettered
            crash = await swarm.wait("crash", timeout=WAIT_S)
            assert crash.state == "dead"
            assert [(a.outcome, a.exit_code) for a in crash.attempts] == [("crashed", 3), ("crashed", 3)]
            assert crash.attempt_counts == AttemptCounts(used=2)

            # [[hang]]: never answers; the task's timeout ends the attempt
            hang = await swarm.wait("hang", timeout=WAIT_S)
            assert hang.state == "dead"
            assert hang.attempts[0].outcome == "timeout" and hang.attempts[0].reason == "timeout after 1s"

            # [[fail:reason]]: the attempt fails with the agent's error line as the reason
            fail = await swarm.wait("fail", timeout=WAIT_S)
            assert fail.state == "dead"
            assert fail.attempts[0].outcome == "failed" and fail.attempts[0].reason == "API Error: reason"
            assert fail.reason is not None and "API Error: reason" in fail.reason

            # [[ask]]: the worker needs input (a permission prompt) until an operator answers
            event = await wait_for(asked, lambda e: e.data.get("task_id") == "ask", WAIT_S)
            worker = event.data["worker"]
            info = swarm.worker(worker)
            assert info.state == "busy" and info.needs_input == "Do you want to proceed?"
            assert info.needs_input_since is not None and info.needs_input_since >= submitted_at
            waiting = (await swarm.status())["needs_input"]
            assert [(w["worker"], w["task_id"], w["prompt"]) for w in waiting] == [
                (worker, "ask", "Do you want to proceed?")
            ]
            await swarm.send_input(worker, b"1\r")  # no force needed: it waits for an answer
            ask = await swarm.wait("ask", timeout=WAIT_S)
            assert ask.state == "done" and ask.result == "Done: may I?"
            assert swarm.worker(worker).needs_input is None
            assert (await swarm.status())["needs_input"] == []

            # [[context:95]]: done; the worker's context passed the refresh threshold (80 %), so it
            # respawns fresh before its next task
            context = await swarm.wait("context", timeout=WAIT_S)
            assert context.state == "done" and context.result == "Done: fill it up"
            refreshed = context.attempts[0].worker
            await wait_for(
                states,
                lambda e: e.data.get("worker") == refreshed and e.data.get("state") == "refreshing",
                WAIT_S,
            )

            # [[ratelimit:+60]]: a usage limit, not a failure: the model is parked for a minute, the
            # attempt does not count, and the task waits for the reset
            park = await wait_for(parked, lambda e: e.data.get("model") == "haiku", WAIT_S)
            assert 30 <= park.data["until"] - time.time() <= 61
            limit = await swarm.get("limit")
            assert limit.state == "ready"
            assert [a.outcome for a in limit.attempts] == ["rate_limited"]
            assert limit.attempt_counts == AttemptCounts(used=0, rate_limited=1)
            models = {m["name"]: m for m in (await swarm.status())["models"]}
            assert models["haiku"]["state"] == "parked"
            assert models["haiku"]["until"] == park.data["until"]
            assert "usage limit reached" in models["haiku"]["reason"]
            # sonnet ran the rest: 3 done, 4 failed (2 crashes, a timeout, a failure) of its last 7
            assert models["sonnet"]["state"] == "failing", models["sonnet"]
            assert (models["sonnet"]["recent_failed"], models["sonnet"]["recent_finished"]) == (4, 7)
            assert models["opus"]["state"] == "available" and models["opus"]["reason"] is None
            await swarm.cancel("limit")


async def test_the_readme_api_directives_retry_and_extra_usage(tmp_path: Path, no_leaks: None) -> None:
    """`[[retry:5,529,2]]`: the worker reads `retrying 1/10, next in 2 s`, and three workers of a
    model retrying at once back the model off; `[[extra_usage]]`: the model is paused until resumed."""
    cfg = swarm_config(tmp_path, scaling={"max_workers": 3})
    assert cfg.workers.profile == "fake"
    async with open_swarm(cfg) as swarm:
        with swarm.events(["worker.api_retry", "model.retry_storm"]) as sub:
            tasks = [await swarm.submit({"prompt": f"slow API {i} [[retry:5,529,2]]"}) for i in range(3)]
            retry = await wait_for(sub, "worker.api_retry", timeout=WAIT_S)
            shown = swarm.worker(retry.data["worker"]).retrying
            assert shown is not None and shown.describe(time.time()).startswith("retrying 1/10, next in")
            storm = await wait_for(sub, "model.retry_storm", timeout=WAIT_S)
            assert storm.data["model"] == "sonnet" and storm.data["park_s"] == 30
        await swarm.resume_model("sonnet")  # end the back-off early
        for task in tasks:
            assert (await swarm.wait(task.id, timeout=60)).state.value == "done"
        with swarm.events(["model.extra_usage"]) as sub:
            await swarm.submit({"prompt": "spend [[extra_usage]]"})
            assert (await wait_for(sub, "model.extra_usage", timeout=WAIT_S)).data["policy"] == "pause"
        sonnet = next(m for m in (await swarm.status())["models"] if m["name"] == "sonnet")
        assert sonnet["state"] == "parked" and sonnet["until"] is None
        assert "shoal models resume sonnet" in sonnet["reason"]
