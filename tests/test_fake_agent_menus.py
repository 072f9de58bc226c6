"""The fake agent's menus (issue 16) through real PTYs, read by the prompt dialect: what they show,
and how they take keys (a digit at once, arrows and Enter, Esc), as Claude Code's do."""

from __future__ import annotations

import time

import trio
from test_fake_agent import STREAM_JSON, TERMINAL, Agent, run_agent

from shoal.protocols.dialects.base import NeedsInput, RateLimited, Ready, Signal, TaskDone

LIMIT = ("Stop and wait for limit to reset", "Switch to usage credits", "Upgrade your plan")
TRUST = "Quick safety check: Is this a project you created or one you trust?"


async def press_until(agent: Agent, key: bytes, kind: type) -> Signal:
    """Type `key` until the agent gives a `kind` signal: a menu ignores keys for 0.2 s after it is
    drawn, as Claude Code does (the worker types after 0.5 s for the same reason)."""
    with trio.fail_after(20):
        while True:
            await agent.write(key)
            with trio.move_on_after(0.3):
                return await agent.expect(kind)


async def test_limit_menu_shows_the_reset_and_its_three_options(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        now = time.time()
        limited = await agent.task("[[limitmenu:+600]] go")
        assert isinstance(limited, RateLimited) and limited.reset_at is not None
        assert now + 600 <= limited.reset_at <= now + 600 + 120
        assert "You've hit your session limit · resets" in limited.message
        asked = await agent.expect(NeedsInput)
        assert asked == NeedsInput(prompt="What do you want to do?", options=LIMIT)
        await press_until(agent, b"1", Ready)  # stop and wait: the prompt comes back
        await agent.wait_output("? for shortcuts")


async def test_limit_menu_usage_credits_goes_on_paid(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        await agent.task("[[limitmenu]] go")
        await agent.expect(NeedsInput)
        await press_until(agent, b"2", Ready)
        await agent.wait_output("Now using extra usage")
        await agent.wait_output("Done: go")


async def test_trust_mid_turn_yes_goes_on_and_no_declines(no_leaks: None) -> None:
    async with run_agent(["--marker"], "marker", {"ready": "prompt"}) as agent:
        await agent.expect(Ready)
        await agent.submit("[[trust]] read it")
        asked = await agent.expect(NeedsInput, *TERMINAL)
        assert asked == NeedsInput(prompt=TRUST, options=("Yes, I trust this folder", "No, exit"))
        done = await press_until(agent, b"1", TaskDone)
        assert isinstance(done, TaskDone) and "Done: read it" in done.result
        await agent.submit("[[trust]] again")
        await agent.expect(NeedsInput, *TERMINAL)
        with trio.fail_after(20):
            while True:  # Down, then Enter: "No, exit"
                await agent.write(b"\x1b[B")
                await agent.write(b"\r")
                with trio.move_on_after(0.3):
                    failed = await agent.expect(*TERMINAL)
                    break
        assert "folder not trusted" in getattr(failed, "reason", ""), failed


async def test_trust_dialog_at_start_no_exits_1(no_leaks: None) -> None:
    async with run_agent(["--trust-dialog"], "prompt") as agent:
        asked = await agent.expect(NeedsInput)
        assert asked.options == ("Yes, I trust this folder", "No, exit")
        with trio.fail_after(20):
            while not agent.eof.is_set():
                await agent.write(b"2")
                with trio.move_on_after(0.3):
                    await agent.eof.wait()
        assert agent.proc.returncode == 1


async def test_plain_trust_dialog_takes_no_digits_and_arrows_wrap(no_leaks: None) -> None:
    """2.1.332's dialog: no numbers, `No, exit` first; Up from the top wraps to Yes, Enter trusts."""
    async with run_agent(["--trust-dialog=plain"], "prompt") as agent:
        asked = await agent.expect(NeedsInput)
        assert asked == NeedsInput(
            prompt=TRUST, options=("No, exit", "Yes, I trust this folder"), numbered=False, cursor=0
        )
        with trio.fail_after(20):
            while True:
                await agent.write(b"\x1b[A")
                with trio.move_on_after(0.3):
                    await agent.wait_output("❯ Yes, I trust this folder")
                    break
        await agent.write(b"\r")
        await agent.expect(Ready)
        assert done_of(await agent.task("hello")) == "Done: hello"


def done_of(signal: object) -> str:
    assert isinstance(signal, TaskDone), signal
    return signal.result


async def test_picker_esc_keeps_the_model(no_leaks: None) -> None:
    async with run_agent(["--model", "opus"], "prompt") as agent:
        await agent.expect(Ready)
        await agent.submit("[[picker]] choose")
        asked = await agent.expect(NeedsInput, *TERMINAL)
        assert asked.prompt == "Select model" and [o.split()[0] for o in asked.options] == [
            "Default",
            "Opus",
            "Haiku",
        ]
        assert "✔" in asked.options[1]  # the current model is ticked
        done = await press_until(agent, b"\x1b", TaskDone)
        await agent.wait_output("Kept model as opus")
        assert done_of(done).endswith("Done: choose")


async def test_headless_limitmenu_is_a_usage_limit(no_leaks: None) -> None:
    async with run_agent(STREAM_JSON, "stream-json", pty=False) as agent:
        limited = await agent.task("[[limitmenu:+600]] go")
        assert isinstance(limited, RateLimited) and limited.reset_at is not None
