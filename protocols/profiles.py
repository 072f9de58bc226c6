"""Built-in agent profiles and argv template rendering.

A profile's argv is a template: each item may hold `{model}`, `{prompt}`, `{worker}` or `{cwd}`, and
each placeholder is substituted *inside its own argv item* (never through a shell), so a prompt full
of quotes, `$(...)` or newlines reaches the agent verbatim as one argument. `{{` and `}}` are literal
braces. A `{model}` with no model drops its item, and an option right before it (`--model {model}`
with no model runs the CLI's default model).

The `fake*` profiles run the fake agent with this interpreter: `examples/agents/fake_agent.py` in a
checkout or editable install, the `shoal.agents` package in a regular install; `SHOAL_FAKE_AGENT`
overrides both.
"""

from __future__ import annotations

import json
import os
import string
import sys
from collections.abc import Mapping
from pathlib import Path

from .config import ProfileConfig
from .errors import NotFound, ValidationError

PLACEHOLDERS = ("model", "prompt", "worker", "cwd")

DONE_MARKER = "SHOAL_DONE"  # what the claude-tui Stop hook and the shell profile print at a task's end


def _fake_agent_path() -> str:
    override = os.environ.get("SHOAL_FAKE_AGENT")
    if override:
        return override
    here = Path(__file__).resolve().parent.parent
    checkout = here / "examples" / "agents" / "fake_agent.py"  # a checkout / editable install
    installed = here / "agents" / "fake_agent.py"  # a regular install: the shoal.agents package
    return str(checkout if checkout.exists() or not installed.exists() else installed)


FAKE_AGENT = _fake_agent_path()
# `-S`: the fake agent uses only the standard library; skipping `site` halves its start-up (≈27 ms
# instead of ≈55 ms here), which matters when dozens start at once.
_FAKE = (sys.executable, "-S", FAKE_AGENT)

# Environment variable naming the worker's Stop-hook FIFO (actors/hooks.py creates it per process).
HOOK_FIFO_ENV = "SHOAL_HOOK_FIFO"

# The claude-tui Stop hook hands its JSON input (session_id, transcript_path, last_assistant_message)
# to Shoal and exits 0 at once. Hooks have no controlling terminal (/dev/tty cannot be opened), and a
# failing Stop hook makes Claude Code send the model back to work: it must never fail nor block. The
# FIFO is held open by Shoal; `timeout` bounds the write should the worker be gone mid-write.
STOP_HOOK_COMMAND = (
    f'[ -p "${HOOK_FIFO_ENV}" ] && timeout 5 sh -c \'{{ cat; echo; }} > "${HOOK_FIFO_ENV}"\'; exit 0'
)
CLAUDE_TUI_SETTINGS: dict[str, object] = {
    "hooks": {"Stop": [{"hooks": [{"type": "command", "command": STOP_HOOK_COMMAND}]}]}
}
# StopFailure (2.1.x): the turn ended on an API error (rate limit, overloaded, auth, ...) after the
# CLI's own retries; Stop does not run then. The same command hands its input to Shoal. Not in the
# argv: a CLI that does not know the event (2.0.x) refuses the whole settings file with a dialog, so
# actors/hooks.py adds it to the prepared configuration only for a CLI that has it.
STOP_FAILURE_HOOKS: list[dict[str, object]] = [{"hooks": [{"type": "command", "command": STOP_HOOK_COMMAND}]}]


def _literal(text: str) -> str:
    """`text` as an argv template item with no placeholders (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


_STREAM_JSON = ("-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose")

_SHELL_ENV = {
    "PS1": "$ ",
    "PS2": "",
    "HISTFILE": "/dev/null",
    # bash runs PROMPT_COMMAND before each prompt: the marker line carries the last command's status
    "PROMPT_COMMAND": f"printf '\\n{DONE_MARKER} status=%d reason=exit status %d\\n' $? $?",
}

# The fake TUI takes a bracketed paste and its Enter in one read; Claude Code can swallow that Enter,
# so the claude-tui profile keeps the dialect's default pause (submit_delay_ms, 80 ms) between them.
_FAKE_TUI_OPTIONS = {"submit_delay_ms": 0}

CLAUDE_RESUME_ARGS = ("--resume", "{session}")  # Claude Code's, -p and interactive alike; the fake's

BUILTIN_PROFILES: dict[str, ProfileConfig] = {
    # The fake agent's interactive TUI in a PTY, done when its prompt returns: the most faithful
    # stand-in for interactive Claude Code, and the default.
    "fake": ProfileConfig(
        argv=(*_FAKE, "--model", "{model}"),
        resume_args=CLAUDE_RESUME_ARGS,
        dialect="prompt",
        transport="pty",
        startup_timeout_s=10.0,
        stop_timeout_s=2.0,
        options=dict(_FAKE_TUI_OPTIONS),
    ),
    # The fake TUI printing a marker line after each reply (as the claude-tui Stop hook does).
    "fake-marker": ProfileConfig(
        argv=(*_FAKE, "--marker", "--model", "{model}"),
        resume_args=CLAUDE_RESUME_ARGS,
        dialect="marker",
        transport="pty",
        startup_timeout_s=10.0,
        stop_timeout_s=2.0,
        # type once the prompt is drawn, as claude-tui does
        options={**_FAKE_TUI_OPTIONS, "ready": "prompt", "quit": "/exit\r"},
    ),
    # The fake agent speaking Claude Code's stream-json on pipes.
    "fake-stream": ProfileConfig(
        argv=(*_FAKE, *_STREAM_JSON, "--model", "{model}"),
        resume_args=CLAUDE_RESUME_ARGS,
        dialect="stream-json",
        transport="pipe",
        startup_timeout_s=10.0,
        stop_timeout_s=2.0,
    ),
    # One fake-agent process per task, the prompt in argv; the exit status decides.
    "fake-oneshot": ProfileConfig(
        argv=(*_FAKE, "--model", "{model}", "-p", "{prompt}"),
        resume_args=CLAUDE_RESUME_ARGS,
        dialect="oneshot",
        transport="pipe",
        startup_timeout_s=10.0,
        stop_timeout_s=2.0,
    ),
    # Claude Code, headless, JSON lines both ways.
    "claude": ProfileConfig(
        argv=("claude", *_STREAM_JSON, "--model", "{model}"),
        dialect="stream-json",
        resume_args=CLAUDE_RESUME_ARGS,
        transport="pipe",
        startup_timeout_s=60.0,
        stop_timeout_s=5.0,
    ),
    # Interactive Claude Code in a PTY; its Stop hook (inline --settings JSON) hands the turn's end to
    # Shoal through SHOAL_HOOK_FIFO (actors/hooks.py); a SHOAL_DONE marker line still ends a task too.
    "claude-tui": ProfileConfig(
        argv=(
            "claude",
            "--model",
            "{model}",
            "--settings",
            _literal(json.dumps(CLAUDE_TUI_SETTINGS, separators=(",", ":"))),
        ),
        dialect="marker",
        transport="pty",
        resume_args=CLAUDE_RESUME_ARGS,
        # The TUI names each session with an extra API request per prompt (a haiku "title" request,
        # measured with 2.1.332: two requests per one-turn task); a worker's session needs no name.
        env={"CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1"},
        startup_timeout_s=60.0,
        stop_timeout_s=5.0,
        # type only once the prompt box is drawn; done when the Stop hook reports (or on a marker line);
        # CLI 2.1.x shows context pressure as "1% until auto-compact" (older: "Context left until
        # auto-compact: 1%", a built-in pattern)
        options={
            "marker": DONE_MARKER,
            "ready": "prompt",
            "quit": "/exit\r",
            "context_patterns": [r"(?P<left>\d{1,3})%\s+until auto-compact"],
        },
    ),
    # bash in a PTY: each task is one command line; PROMPT_COMMAND prints the marker and `$?`.
    "shell": ProfileConfig(
        argv=("bash", "--norc", "--noprofile", "-i"),
        dialect="marker",
        transport="pty",
        env=dict(_SHELL_ENV),
        startup_timeout_s=10.0,
        stop_timeout_s=2.0,
        context_refresh_percent=0.0,
        # ready at the first marker (bash printed its first prompt); status=0 is done, others failed
        options={"marker": DONE_MARKER, "ready": f"^{DONE_MARKER} status=", "quit": "exit\r"},
    ),
}


# What a worker of a built-in profile is assumed to cost (MiB) until one has been measured: the fake
# agent is a small Python process (≈12 MiB), Claude Code ≈258 MiB (measured, CLI 2.1.x), bash ≈4 MiB.
MEMORY_ESTIMATE_MB: dict[str, int] = {
    "fake": 16,
    "fake-marker": 16,
    "fake-stream": 16,
    "fake-oneshot": 16,
    "claude": 300,
    "claude-tui": 300,
    "shell": 8,
}


def resume_argv(profile: ProfileConfig, session: str) -> list[str] | None:
    """The arguments added to the profile's argv to resume the conversation `session`; None when the
    profile cannot resume one (`resume_args = []`, or not set for a command other than `claude`)."""
    args = profile.resume_args
    if args is None:
        command = Path(profile.argv[0]).name if profile.argv else ""
        args = CLAUDE_RESUME_ARGS if command in ("claude", "claude.exe") else ()
    if not args:
        return None
    return [item.format_map({"session": session}) for item in args]


def resolve_profile(name: str, user_profiles: Mapping[str, ProfileConfig] | None = None) -> ProfileConfig:
    """The user's profile called `name`, else the built-in one; NotFound naming it otherwise."""
    if user_profiles and name in user_profiles:
        return user_profiles[name]
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        raise NotFound("profile", name) from None


def placeholders(profile: ProfileConfig) -> set[str]:
    """The placeholder names `profile.argv` uses (validated: unknown ones raise ValidationError)."""
    found: set[str] = set()
    for i, item in enumerate(profile.argv):
        found.update(name for name, _ in _fields(item, f"argv[{i}]"))
    return found


def _fields(item: str, where: str) -> list[tuple[str, str]]:
    """(name, literal text before it) for each placeholder in `item`."""
    try:
        parsed = list(string.Formatter().parse(item))
    except ValueError as exc:
        raise ValidationError(where, f"bad placeholder syntax: {exc}", item) from None
    out: list[tuple[str, str]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ValidationError(where, f"unknown placeholder {{{name}}} (known: {known})", item)
        if spec or conversion:
            raise ValidationError(where, f"placeholder {{{name}}} takes no format or conversion", item)
        out.append((name, literal))
    return out


def render_argv(
    profile: ProfileConfig,
    *,
    model: str | None = None,
    prompt: str | None = None,
    worker: str | None = None,
    cwd: str | None = None,
) -> list[str]:
    """The argv to run: each placeholder substituted within its own item (no shell, no splitting).

    `cwd` defaults to the profile's cwd, then the current directory. A missing `{prompt}` or
    `{worker}` value is a ValidationError; a missing `{model}` drops its item (and a preceding option
    such as `--model`). An unknown placeholder is a ValidationError naming the argv item.
    """
    if not profile.argv:
        raise ValidationError("argv", "must not be empty", list(profile.argv))
    values: dict[str, str | None] = {
        "model": model or None,
        "prompt": prompt,
        "worker": worker,
        "cwd": cwd or profile.cwd or os.getcwd(),
    }
    out: list[str] = []
    drop_option = False
    for i, item in enumerate(profile.argv):
        where = f"argv[{i}]"
        fields = _fields(item, where)
        names = {name for name, _ in fields}
        missing = [name for name in names if values[name] is None]
        for name in missing:
            if name != "model":
                raise ValidationError(name, f"the profile's {where} needs a value for {{{name}}}", item)
        if missing:
            # `--model {model}` with no model: drop both, so the CLI uses its own default
            if item == "{model}" and out and drop_option:
                out.pop()
            drop_option = False
            continue
        out.append(item.format_map(values) if fields or "{" in item or "}" in item else item)
        drop_option = not fields and item.startswith("-")
    return out
