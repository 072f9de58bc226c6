"""Built-in profiles and argv template rendering; the shell marker on a real PTY (the claude-tui Stop
hook is tested in test_hooks.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from shoal.actors.process import AgentProcess, spawn
from shoal.protocols.config import ProfileConfig, config_from_dict
from shoal.protocols.errors import NotFound, ValidationError
from shoal.protocols.profiles import (
    BUILTIN_PROFILES,
    CLAUDE_TUI_SETTINGS,
    DONE_MARKER,
    FAKE_AGENT,
    placeholders,
    render_argv,
    resolve_profile,
)

ROOT = Path(__file__).resolve().parent.parent


def test_placeholders_are_substituted_inside_their_own_item() -> None:
    profile = ProfileConfig(
        argv=("agent", "--model={model}", "-p", "{prompt}", "--name", "w-{worker}", "{cwd}")
    )
    prompt = "fix 'this' \"now\"; rm -rf / $(id) {model} {{x}}\nsecond line"
    argv = render_argv(profile, model="opus", prompt=prompt, worker="7", cwd="/srv/x")
    assert argv == ["agent", "--model=opus", "-p", prompt, "--name", "w-7", "/srv/x"]
    assert placeholders(profile) == {"model", "prompt", "worker", "cwd"}


def test_cwd_defaults_to_the_profiles_then_the_current_directory() -> None:
    profile = ProfileConfig(argv=("agent", "{cwd}"), cwd="/opt/work")
    assert render_argv(profile) == ["agent", "/opt/work"]
    assert render_argv(ProfileConfig(argv=("agent", "{cwd}"))) == ["agent", str(Path.cwd())]


def test_missing_model_drops_the_item_and_its_option() -> None:
    profile = ProfileConfig(argv=("claude", "-p", "--model", "{model}", "--model-x={model}", "--verbose"))
    assert render_argv(profile, model=None) == ["claude", "-p", "--verbose"]
    assert render_argv(profile, model="") == ["claude", "-p", "--verbose"]
    assert render_argv(profile, model="haiku") == [
        "claude",
        "-p",
        "--model",
        "haiku",
        "--model-x=haiku",
        "--verbose",
    ]
    # a positional {model} (no option before it) just disappears
    assert render_argv(ProfileConfig(argv=("agent", "{model}", "x")), model=None) == ["agent", "x"]


def test_literal_braces_are_doubled() -> None:
    profile = ProfileConfig(argv=("agent", "--settings", '{{"a": {{"b": 1}}}}', "{model}"))
    assert render_argv(profile, model="m") == ["agent", "--settings", '{"a": {"b": 1}}', "m"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("{modle}", "unknown placeholder {modle}"),
        ("{model.upper}", "unknown placeholder"),
        ("{model!r}", "takes no format"),
        ("{model:>10}", "takes no format"),
        ("{model", "bad placeholder syntax"),
        ("model}", "bad placeholder syntax"),
    ],
)
def test_bad_placeholders_are_validation_errors_naming_the_item(item: str, message: str) -> None:
    profile = ProfileConfig(argv=("agent", item))
    with pytest.raises(ValidationError) as info:
        render_argv(profile, model="m")
    assert info.value.field == "argv[1]"
    assert message in str(info.value)


def test_missing_prompt_or_worker_value_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match=r"\{prompt\}") as info:
        render_argv(ProfileConfig(argv=("agent", "-p", "{prompt}")))
    assert info.value.field == "prompt"
    with pytest.raises(ValidationError, match=r"\{worker\}"):
        render_argv(ProfileConfig(argv=("agent", "{worker}")))
    with pytest.raises(ValidationError, match="argv"):
        render_argv(ProfileConfig(argv=()))


def test_resolve_profile_prefers_user_profiles_and_names_unknown_ones() -> None:
    mine = ProfileConfig(argv=("my-agent",))
    assert resolve_profile("fake") is BUILTIN_PROFILES["fake"]
    assert resolve_profile("fake", {"fake": mine}) is mine
    assert resolve_profile("mine", {"mine": mine}) is mine
    with pytest.raises(NotFound) as info:
        resolve_profile("nope", {"mine": mine})
    assert "profile" in str(info.value) and "'nope'" in str(info.value)


def test_user_profile_from_config_renders() -> None:
    cfg = config_from_dict(
        {
            "workers": {
                "profiles": {
                    "aider": {"argv": ["aider", "--model", "{model}", "--yes"], "dialect": "idle"},
                }
            }
        }
    )
    profile = resolve_profile("aider", cfg.workers.profiles)
    assert render_argv(profile, model="sonnet") == ["aider", "--model", "sonnet", "--yes"]


def test_builtin_command_lines_are_the_documented_ones() -> None:
    def argv(name: str, **kw: str) -> list[str]:
        return render_argv(BUILTIN_PROFILES[name], worker="w1", **kw)

    assert argv("claude", model="sonnet") == [
        "claude",
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        "sonnet",
    ]
    assert BUILTIN_PROFILES["claude"].dialect == "stream-json"
    assert BUILTIN_PROFILES["claude"].transport == "pipe"
    tui = argv("claude-tui", model="opus")
    assert tui[:4] == ["claude", "--model", "opus", "--settings"]
    assert json.loads(tui[4]) == CLAUDE_TUI_SETTINGS
    assert BUILTIN_PROFILES["claude-tui"].transport == "pty"
    assert argv("shell") == ["bash", "--norc", "--noprofile", "-i"]
    assert argv("fake", model="haiku") == [sys.executable, "-S", FAKE_AGENT, "--model", "haiku"]
    assert argv("fake-oneshot", prompt="hi there")[-2:] == ["-p", "hi there"]
    assert "--marker" in argv("fake-marker")
    assert BUILTIN_PROFILES["fake"].dialect == "prompt"
    for name, profile in BUILTIN_PROFILES.items():
        placeholders(profile)  # every built-in template is valid
        assert profile.startup_timeout_s > 0, name


def test_fake_agent_is_found_in_the_checkout() -> None:
    assert Path(FAKE_AGENT) == ROOT / "examples" / "agents" / "fake_agent.py"
    assert Path(FAKE_AGENT).is_file()


def test_shipped_settings_snippet_matches_the_profile() -> None:
    shipped = json.loads((ROOT / "examples" / "claude-tui" / "settings.json").read_text())
    assert shipped == CLAUDE_TUI_SETTINGS


async def _read_until(proc: AgentProcess, needle: bytes) -> bytes:
    out = b""
    with trio.fail_after(10):
        while needle not in out:
            chunk = await proc.read()
            assert chunk, f"EOF before {needle!r}: {out!r}"
            out += chunk
    return out


async def test_shell_profile_prints_the_marker_with_the_exit_status(no_leaks: None) -> None:
    profile = BUILTIN_PROFILES["shell"]
    proc = await spawn(render_argv(profile), transport="pty", env=profile.env)
    await _read_until(proc, b"status=0")  # the first prompt
    await proc.write(b"(exit 3)\r")
    out = await _read_until(proc, b"status=3")
    assert f"{DONE_MARKER} status=3 reason=exit status 3".encode() in out
    await proc.write(b"exit\r")
    assert (await proc.wait()).exit_code == 3  # bash exits with the last status
    await proc.aclose()
