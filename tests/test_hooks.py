"""actors/hooks.py without the real CLI: the Stop hook command through a real shell and FIFO, the
prepared Claude configuration, the transcript reading, and the marker dialect's hook_done."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import attrs
import trio
import trio.testing

from shoal.actors.hooks import (
    HookChannel,
    knows_stop_failure,
    prepare,
    prepare_config_dir,
    set_stop_failure_hook,
    stop_result,
    transcript_turn,
)
from shoal.protocols.config import ProfileConfig
from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import ContextUsage, RateLimited, TaskDone, TaskFailed
from shoal.protocols.profiles import BUILTIN_PROFILES, HOOK_FIFO_ENV, STOP_FAILURE_HOOKS, STOP_HOOK_COMMAND
from shoal.protocols.tasks import Assignment

HOOK_INPUT = {
    "session_id": "s1",
    "transcript_path": "/nonexistent/t.jsonl",
    "hook_event_name": "Stop",
    "stop_hook_active": False,
    "last_assistant_message": "the reply",
}


async def run_hook(env: dict[str, str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    """The hook as Claude Code runs it: a shell in a new session (no controlling terminal), its
    JSON input on stdin, its output captured."""
    return await trio.run_process(
        ["setsid", "sh", "-c", STOP_HOOK_COMMAND],
        stdin=data,
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, **env},
        check=False,
    )


async def test_stop_hook_hands_its_input_to_the_channel_and_exits_0(no_leaks: None) -> None:
    channel = await HookChannel.create("w1")
    try:
        events = channel.events()
        for n in range(2):  # the FIFO stays usable: Shoal keeps a writer open between hooks
            proc = await run_hook(
                {HOOK_FIFO_ENV: str(channel.path)}, json.dumps({**HOOK_INPUT, "n": n}).encode()
            )
            assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""
            with trio.fail_after(5):
                event = await events.__anext__()
            assert event["n"] == n and event["last_assistant_message"] == "the reply"
    finally:
        channel.close()
    assert not channel.directory.exists()


async def test_stop_hook_without_a_channel_exits_0_at_once(tmp_path: Path) -> None:
    for env in ({}, {HOOK_FIFO_ENV: str(tmp_path / "gone.fifo")}):
        proc = await run_hook(env, b"{}")
        assert proc.returncode == 0, proc


async def test_closing_the_channel_ends_its_reader() -> None:
    channel = await HookChannel.create("w2")
    got: list[object] = []

    async def read() -> None:
        async for event in channel.events():
            got.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        channel.close()
    assert got == []


def test_prepare_config_dir_seeds_first_start_and_keeps_what_is_there(tmp_path: Path) -> None:
    config, user = tmp_path / "cfg", tmp_path / "home" / ".claude"
    user.mkdir(parents=True)
    (user / ".credentials.json").write_text('{"claudeAiOauth": {}}')
    (tmp_path / "home" / ".claude.json").write_text(json.dumps({"oauthAccount": {"emailAddress": "a@b"}}))
    key = "sk-ant-api03-" + "x" * 20 + "0123456789abcdefghij"
    prepare_config_dir(config, api_key=key, trusted=["/w/one"], user_dir=user)
    state = json.loads((config / ".claude.json").read_text())
    assert state["hasCompletedOnboarding"] is True
    assert state["customApiKeyResponses"]["approved"] == ["0123456789abcdefghij"]
    assert state["projects"] == {"/w/one": {"hasTrustDialogAccepted": True}}
    assert state["oauthAccount"] == {"emailAddress": "a@b"}
    assert (config / ".credentials.json").resolve() == (user / ".credentials.json").resolve()
    assert (config / ".claude.json").stat().st_mode & 0o777 == 0o600
    # what the CLI wrote since is kept; a second directory is added, nothing doubled
    state["numStartups"] = 7
    (config / ".claude.json").write_text(json.dumps(state))
    prepare_config_dir(config, api_key=key, trusted=["/w/one", "/w/two"], user_dir=user)
    again = json.loads((config / ".claude.json").read_text())
    assert again["numStartups"] == 7
    assert again["customApiKeyResponses"]["approved"] == ["0123456789abcdefghij"]
    assert set(again["projects"]) == {"/w/one", "/w/two"}


def test_transcript_turn_reads_the_newest_turn(tmp_path: Path) -> None:
    def assistant(mid: str, text: str | None, tokens: int) -> dict[str, object]:
        content = (
            [{"type": "text", "text": text}] if text else [{"type": "tool_use", "id": "t", "name": "Bash"}]
        )
        usage = {"input_tokens": tokens, "output_tokens": 1}
        return {"type": "assistant", "message": {"id": mid, "content": content, "usage": usage}}

    lines = [
        {"type": "user", "message": {"role": "user", "content": "old prompt"}},
        assistant("m0", "old reply", 1000),
        {"type": "user", "message": {"role": "user", "content": "new prompt"}},
        assistant("m1", None, 10),
        {"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}},
        assistant("m2", "partial", 20),
        assistant("m2", "final reply", 20),  # the same message, a later line
        {"type": "system", "subtype": "stop_hook_summary"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    text, usage, found = transcript_turn(path)
    assert found and text == "final reply"
    assert usage == {"input_tokens": 30, "output_tokens": 2, "api_requests": 2, "context_tokens": 20}


async def test_stop_result_prefers_the_hooks_message_and_survives_a_missing_transcript() -> None:
    text, usage = await stop_result(HOOK_INPUT)
    assert text == "the reply" and usage == {"session_id": "s1"}


def test_marker_dialect_hook_done_ends_the_running_task_once() -> None:
    dialect = make_dialect("marker", {"ready": "prompt"})
    assert dialect.hook_done("early", {}, 0.0) == []  # type: ignore[attr-defined]  # no task: stale
    dialect.start_task(Assignment(task_id="t1", attempt=1, prompt="hi"), 1.0)
    signals = dialect.hook_done("the reply", {"input_tokens": 3}, 2.0)  # type: ignore[attr-defined]
    assert signals == [TaskDone(result="the reply", usage={"input_tokens": 3})]
    assert dialect.hook_done("again", {}, 3.0) == []  # type: ignore[attr-defined]


def test_marker_dialect_hook_failed_backs_off_api_errors_and_fails_the_rest() -> None:
    """Claude Code's StopFailure hook: an API error ended the turn after the CLI's retries. The API's
    fault (overloaded, rate limit, auth) is a RateLimited (task requeued, model parked), as on the
    headless profile; an error of the request itself fails the attempt."""

    def dialect_with_task() -> object:
        dialect = make_dialect("marker", {"ready": "prompt", "auth_park_s": 120}, wall_clock=lambda: 1000.0)
        assert dialect.hook_failed("overloaded", "x", 0.0) == []  # type: ignore[attr-defined]  # no task
        dialect.start_task(Assignment(task_id="t1", attempt=1, prompt="hi"), 1.0)
        return dialect

    message = "API Error: 529 Overloaded. This is a server-side issue, usually temporary"
    assert dialect_with_task().hook_failed("overloaded", message, 2.0) == [  # type: ignore[attr-defined]
        RateLimited(reset_at=1060.0, message=f"API overloaded: {message}")
    ]
    assert dialect_with_task().hook_failed("authentication_failed", "bad key", 2.0) == [  # type: ignore[attr-defined]
        RateLimited(reset_at=1120.0, message="API authentication failed: bad key")
    ]
    [limited] = dialect_with_task().hook_failed("rate_limit", "Request rejected (429)", 2.0)  # type: ignore[attr-defined]
    assert limited == RateLimited(reset_at=None, message="API rate limit: Request rejected (429)")
    [failed] = dialect_with_task().hook_failed("invalid_request", "prompt is malformed", 2.0)  # type: ignore[attr-defined]
    assert failed == TaskFailed(reason="API error (invalid_request): prompt is malformed")


def test_claude_tui_reads_the_new_context_footer() -> None:
    """CLI 2.1.x prints "1% until auto-compact" at the right of its footer (seen on the real CLI)."""
    options = dict(BUILTIN_PROFILES["claude-tui"].options)
    dialect = make_dialect("marker", options)
    signals = dialect.feed(("  " * 40 + "1% until auto-compact\r\n").encode(), 0.0)
    assert ContextUsage(used_percent=99.0) in signals


async def test_prepare_gives_claude_profiles_their_config_dir_and_a_tui_its_fifo(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text("{}")
    work.mkdir()
    profile = ProfileConfig(argv=("/opt/bin/claude", "-p"), env={"HOME": str(home)}, cwd=str(work))
    env, channel = await prepare("my tui", profile, "w1", "pipe", tmp_path / "state")
    assert channel is None and env == {"CLAUDE_CONFIG_DIR": str(tmp_path / "state" / "claude" / "my_tui")}
    config = Path(env["CLAUDE_CONFIG_DIR"])
    assert (config / ".credentials.json").resolve() == (home / ".claude" / ".credentials.json").resolve()
    assert json.loads((config / ".claude.json").read_text())["projects"][str(work)]["hasTrustDialogAccepted"]
    env, channel = await prepare("my tui", profile, "w1", "pty", tmp_path / "state")
    assert channel is not None and env[HOOK_FIFO_ENV] == str(channel.path)
    channel.close()
    # the user's own CLAUDE_CONFIG_DIR is left alone; other agents get nothing
    own = attrs.evolve(profile, env={"CLAUDE_CONFIG_DIR": str(tmp_path / "mine")})
    assert await prepare("x", own, "w1", "pipe", tmp_path / "state") == ({}, None)
    assert await prepare("x", ProfileConfig(argv=("bash",)), "w1", "pty", tmp_path / "state") == ({}, None)


def _line(entry: dict[str, object]) -> str:
    return json.dumps(entry) + "\n"


def _prompt(pid: str) -> dict[str, object]:
    return {"type": "user", "promptId": pid, "message": {"role": "user", "content": f"prompt {pid}"}}


def _reply(mid: str, text: str, tokens: int) -> dict[str, object]:
    usage = {"input_tokens": tokens, "output_tokens": 1}
    return {
        "type": "assistant",
        "message": {"id": mid, "content": [{"type": "text", "text": text}], "usage": usage},
    }


def test_transcript_turn_by_prompt_id_is_not_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_line(_prompt("p1")) + _line(_reply("m1", "one", 10)) + _line(_prompt("p2")))
    assert transcript_turn(path, "p2") == (None, {}, False)  # its reply is not written yet
    assert transcript_turn(path, "p1") == (
        "one",
        {"input_tokens": 10, "output_tokens": 1, "api_requests": 1, "context_tokens": 10},
        True,
    )
    assert transcript_turn(path, "p3")[2] is False


def test_transcript_turn_is_not_found_while_its_newest_message_asks_for_a_tool(tmp_path: Path) -> None:
    """Claude Code 2.0.x gives its Stop hook no `last_assistant_message`, and may write the turn's
    last lines after the hook started: a turn seen up to its tool_use is not complete (its reply and
    the later requests' usage would be lost)."""
    tool = {"type": "tool_use", "id": "t", "name": "Write", "input": {}}
    first = {
        "type": "assistant",
        "promptId": "p1",
        "message": {"id": "m1", "content": [tool], "usage": {"input_tokens": 10, "output_tokens": 1}},
    }
    result = {"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok"}]}}
    path = tmp_path / "t.jsonl"
    path.write_text(_line(_prompt("p1")) + _line(first) + _line(result))
    assert transcript_turn(path, "p1") == (
        None,
        {"input_tokens": 10, "output_tokens": 1, "api_requests": 1, "context_tokens": 10},
        False,
    )
    with path.open("a") as f:
        f.write(_line(_reply("m2", "Made it", 20)))
    text, usage, found = transcript_turn(path, "p1")
    assert found and text == "Made it" and usage["api_requests"] == 2 and usage["input_tokens"] == 30


async def test_stop_result_waits_for_a_transcript_written_after_the_hook(tmp_path: Path) -> None:
    """The CLI may append the turn's reply a moment after the Stop hook started (seen with 2.1.332:
    one task in five had no usage): the usage must still be the turn's own."""
    path = tmp_path / "t.jsonl"
    path.write_text(_line(_prompt("p1")) + _line(_reply("m1", "one", 10)) + _line(_prompt("p2")))
    event = {**HOOK_INPUT, "transcript_path": str(path), "prompt_id": "p2", "last_assistant_message": "two"}
    got: list[tuple[str, dict[str, object]]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(got, event))
        await trio.sleep(0.1)  # the CLI writing late (what is tested is the result, not the time)
        with path.open("a") as f:
            f.write(_line(_reply("m2", "two", 20)))
    usage = {"input_tokens": 20, "output_tokens": 1, "api_requests": 1, "context_tokens": 20}
    assert got == [("two", {**usage, "session_id": "s1"})]


async def _collect(got: list[tuple[str, dict[str, object]]], event: dict[str, object]) -> None:
    got.append(await stop_result(event))


def test_stop_failure_hook_only_for_a_cli_that_knows_the_event(tmp_path: Path) -> None:
    """2.0.x refuses a settings file naming a hook event it does not know (a "Settings Error" dialog
    at start), so the StopFailure hook goes into the prepared settings.json only when the CLI's
    program holds the event's name, and comes out again for one that does not (a downgrade)."""
    new, old = tmp_path / "new" / "claude", tmp_path / "old" / "claude"
    for path, body in (
        (new, b'#!/bin/sh\n# ..."Stop","StopFailure","SubagentStart"...\n'),
        (old, b"#!/bin/sh\n"),
    ):
        path.parent.mkdir()
        path.write_bytes(body)
        path.chmod(0o755)
    assert knows_stop_failure("claude", str(new.parent)) is True
    assert knows_stop_failure("claude", str(old.parent)) is False
    assert knows_stop_failure("claude", str(tmp_path / "nowhere")) is False
    assert knows_stop_failure(str(new), None) is True  # a path, as a profile's argv[0] may be

    config = tmp_path / "config"
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({"model": "opus", "hooks": {"Stop": []}}))
    set_stop_failure_hook(config, True)
    settings = json.loads((config / "settings.json").read_text())
    assert settings == {"model": "opus", "hooks": {"Stop": [], "StopFailure": STOP_FAILURE_HOOKS}}
    set_stop_failure_hook(config, False)
    assert json.loads((config / "settings.json").read_text()) == {"model": "opus", "hooks": {"Stop": []}}
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    set_stop_failure_hook(fresh, False)
    assert not (fresh / "settings.json").exists()  # nothing to take out: nothing written
