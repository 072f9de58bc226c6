"""What the swarm does with real Claude Code's API outcomes (issue 16), through the real CLI (the
`claude` profile: headless stream-json on pipes) and the local Messages API stand-in:

* a 529 storm: the worker shows `retrying` (attempt/max, next delay) while the CLI retries, and the
  model is backed off swarm-wide; the task still finishes when the API comes back;
* a 429 usage limit (a subscription login: `CLAUDE_CODE_OAUTH_TOKEN`, so the CLI reads the unified
  rate-limit headers): the model is parked until the reset the CLI reports, the task goes back to
  the queue without an attempt counted;
* the turn limit (`--max-turns 1`): the attempt fails with "Reached maximum number of turns (1)",
  keeping the usage and cost the CLI reported.

Every test starts from a fresh HOME and working directory; `test_real_claude.py` holds the helpers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from swarmkit import wait_for
from test_real_claude import real_profile, real_swarm

from shoal.agents.fake_anthropic import open_fake_anthropic
from shoal.protocols.tasks import Outcome, TaskState

pytestmark = [pytest.mark.real_claude, pytest.mark.usefixtures("no_leaks")]

OAUTH_TOKEN = "sk-ant-oat01-shoal-test-token-0123456789abcdef"


async def test_a_529_storm_shows_retrying_and_backs_the_model_off(tmp_path: Path, claude_bin: str) -> None:
    async with open_fake_anthropic() as fake:
        # the first 3 requests are overloaded; the CLI's 3rd retry goes through
        profile = real_profile("claude", claude_bin, fake, tmp_path, CLAUDE_CODE_MAX_RETRIES="5")
        # one real CLI is enough to see the storm: it needs one retrying worker here (3 by default)
        limits = {"retry_storm_workers": 1, "retry_storm_park_s": 30.0}
        async with real_swarm(tmp_path, profile, limits=limits) as swarm:
            with swarm.events(("worker.api_retry", "model.retry_storm", "model.parked")) as sub:
                task = await swarm.submit({"prompt": "Summarise the repo [[error:529:3]]"})
                retry = await wait_for(sub, "worker.api_retry", timeout=60)
                info = swarm.worker(retry.data["worker"])
                assert info.task_id == task.id and info.state.value == "busy"
                assert info.retrying is not None and info.retrying.status == 529
                assert (info.retrying.attempt, info.retrying.max_retries) == (1, 5)
                assert info.retrying.error == "overloaded" and info.retrying.next_at is not None
                assert info.retrying.describe(time.time()).startswith("retrying 1/5, next in ")
                storm = await wait_for(sub, "model.retry_storm", timeout=30)
                parked = await wait_for(sub, "model.parked", timeout=30)
            model = retry.data["model"]
            assert storm.data["model"] == model and storm.data["park_s"] == 30.0
            assert parked.data["model"] == model
            done = await swarm.wait(task.id, timeout=120)
            assert done.state is TaskState.DONE  # the CLI's own retries got through in the end
            assert swarm.worker(retry.data["worker"]).retrying is None
            state = next(m for m in (await swarm.status())["models"] if m["name"] == model)
            assert state["state"] == "parked" and "retry storm" in state["reason"]
        # the stand-in saw the first try, 3 overloaded retries' worth of requests and the good one
        assert len(fake.messages()) == 4


async def test_a_429_usage_limit_parks_until_the_reset_without_burning_an_attempt(
    tmp_path: Path, claude_bin: str
) -> None:
    async with open_fake_anthropic() as fake:
        profile = real_profile(
            "claude",
            claude_bin,
            fake,
            tmp_path,
            CLAUDE_CODE_OAUTH_TOKEN=OAUTH_TOKEN,
            CLAUDE_CODE_MAX_RETRIES="1",
        )
        profile["env"].pop("ANTHROPIC_API_KEY")  # a subscription login: the CLI reads the limit's headers
        async with real_swarm(tmp_path, profile) as swarm:
            with swarm.events(("model.quota", "model.parked", "task.requeued")) as sub:
                before = time.time()
                task = await swarm.submit(
                    {"prompt": "Summarise [[error:429]][[retry_after:0]][[reset:+900]]"}
                )
                quota = await wait_for(sub, "model.quota", timeout=60)
                parked = await wait_for(sub, "model.parked", timeout=30)
                requeued = await wait_for(sub, "task.requeued", timeout=30)
            assert quota.data["status"] == "rejected" and quota.data["window"] == "five_hour"
            reset = quota.data["resets_at"]
            assert before + 890 <= reset <= time.time() + 910
            assert parked.data["until"] == pytest.approx(reset, abs=60)  # "resets 2:49am": to the minute
            assert requeued.data["outcome"] == "rate_limited"
            state = await swarm.get(task.id)
            assert state.state is TaskState.READY
            assert [a.outcome for a in state.attempts] == [Outcome.RATE_LIMITED]
            assert state.attempt_counts.used == 0  # no attempt burnt
            model = next(m for m in (await swarm.status())["models"] if m["name"] == parked.data["model"])
            assert model["state"] == "parked" and model["quota"]["five_hour"]["status"] == "rejected"
        assert len(fake.messages()) == 1  # a usage limit is not retried


async def test_max_turns_fails_with_the_clis_reason_and_keeps_the_cost(
    tmp_path: Path, claude_bin: str
) -> None:
    async with open_fake_anthropic() as fake:
        profile = real_profile("claude", claude_bin, fake, tmp_path, "--max-turns", "1")
        (tmp_path / "work").mkdir(exist_ok=True)
        for name in ("a.txt", "b.txt"):
            (tmp_path / "work" / name).write_text(f"notes {name}\n")
        async with real_swarm(tmp_path, profile) as swarm:
            task = await swarm.submit(
                {
                    "prompt": "Read the notes [[tool:Read:a.txt]][[tool:Read:b.txt]][[reply:Read them]]",
                    "max_attempts": 1,
                }
            )
            dead = await swarm.wait(task.id, timeout=120)
    assert dead.state is TaskState.DEAD
    (attempt,) = dead.attempts
    assert attempt.outcome is Outcome.FAILED
    assert attempt.reason is not None and "Reached maximum number of turns" in attempt.reason
    assert attempt.usage.get("cost_usd", 0) > 0 and attempt.usage.get("output_tokens", 0) > 0
    assert dead.usage == attempt.usage
    await trio.lowlevel.checkpoint()
