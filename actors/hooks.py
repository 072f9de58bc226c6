"""Claude Code as a worker: its prepared configuration directory and the Stop-hook channel.

Measured with the real CLI (docs/workers.md, "Real Claude Code"): an interactive Claude Code started
in a fresh HOME checks connectivity to api.anthropic.com and exits 1, asks whether to use a custom
API key ("No" preselected) and shows the trust dialog for a new directory ("No, exit" preselected).
So each worker of a Claude profile (argv[0] named `claude`) gets `CLAUDE_CONFIG_DIR=<state
dir>/claude/<profile>`, seeded here with onboarding done, the API key approved (the CLI keeps the
key's last 20 characters in `customApiKeyResponses.approved`) and trust for the worker's directory
only, with the user's `claude login` credentials linked in. A profile whose `env` sets
`CLAUDE_CONFIG_DIR` itself is left alone.

Hooks run without a controlling terminal, and a failing Stop hook makes Claude Code send the model
back to work (up to 9 times). The claude-tui profile's Stop hook therefore only hands its JSON input
to Shoal through a per-process FIFO (`SHOAL_HOOK_FIFO`) and exits 0 at once; `listen` reads it
without blocking the loop and ends the task with the hook's `last_assistant_message` (else the
transcript's last reply) and the turn's token usage from the transcript.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import trio

from ..protocols.config import ProfileConfig
from ..protocols.dialects.base import ContextUsage, Signal
from ..protocols.profiles import HOOK_FIFO_ENV, STOP_FAILURE_HOOKS
from .auth import resolve_state_dir

log = logging.getLogger("shoal.hooks")

CLAUDE_COMMANDS = frozenset({"claude", "claude.exe"})
TRANSCRIPT_WAIT_S = 2.0  # how long the turn's usage may lag behind the Stop hook in the transcript
TRANSCRIPT_STEP_S = 0.02
# Context use of a claude-tui worker: the turn's last prompt size over the model's window. The TUI's
# own footer ("N% until auto-compact") is drawn only from a session's second turn on, too late to
# refresh before a task is written into a nearly full context.
CONTEXT_WINDOW_TOKENS = 200_000
CONTEXT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
MAX_EVENT = 1 << 20  # a hook input larger than this is dropped (Claude's are a few hundred bytes)


def is_claude(profile: ProfileConfig) -> bool:
    """Whether the profile runs Claude Code (its command is named `claude`)."""
    return bool(profile.argv) and Path(profile.argv[0]).name in CLAUDE_COMMANDS


# ---- the configuration directory -----------------------------------------------------------------


def user_config_dir(environ: Mapping[str, str]) -> Path:
    """Where the user's own Claude Code keeps its state (`claude login` credentials)."""
    configured = environ.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(environ.get("HOME") or Path.home()) / ".claude"


def prepare_config_dir(
    config_dir: Path,
    *,
    api_key: str | None,
    trusted: Iterable[str],
    user_dir: Path | None = None,
) -> None:
    """Seed `config_dir/.claude.json` so the CLI starts without a first-run screen (idempotent).

    Onboarding is marked done, `api_key` (if any) approved, each `trusted` directory's trust dialog
    accepted. The user's `claude login` credentials (`user_dir/.credentials.json`) are linked in, so a
    subscription keeps working and its token refreshes are shared; their `oauthAccount` entry (from
    `.claude.json` beside the credentials, or `~/.claude.json`) is copied.
    """
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = config_dir / ".claude.json"
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            state = {}
    except (OSError, ValueError):
        state = {}
    changed = not path.exists()
    if state.get("hasCompletedOnboarding") is not True:
        state["hasCompletedOnboarding"] = True
        changed = True
    if api_key:
        responses = state.setdefault("customApiKeyResponses", {"approved": [], "rejected": []})
        approved = responses.setdefault("approved", [])
        tail = api_key[-20:]
        if tail not in approved:
            approved.append(tail)
            rejected = responses.setdefault("rejected", [])
            if tail in rejected:
                rejected.remove(tail)
            changed = True
    projects = state.setdefault("projects", {})
    for directory in trusted:
        entry = projects.setdefault(str(directory), {})
        if entry.get("hasTrustDialogAccepted") is not True:
            entry["hasTrustDialogAccepted"] = True
            changed = True
    if user_dir is not None:
        changed |= _link_login(config_dir, user_dir, state)
    if changed:
        tmp = path.with_name(f".claude.json.shoal-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, path)


def _link_login(config_dir: Path, user_dir: Path, state: dict[str, Any]) -> bool:
    credentials = user_dir / ".credentials.json"
    target = config_dir / ".credentials.json"
    if user_dir.resolve() == config_dir.resolve() or not credentials.is_file():
        return False
    if not target.exists() and not target.is_symlink():
        target.symlink_to(credentials)
    if "oauthAccount" in state:
        return False
    for candidate in (user_dir / ".claude.json", user_dir.parent / ".claude.json"):
        try:
            account = json.loads(candidate.read_text()).get("oauthAccount")
        except (OSError, ValueError, AttributeError):
            continue
        if account:
            state["oauthAccount"] = account
            return True
    return False


def claude_config_dir(state_dir: Path | None, profile_name: str) -> Path:
    """`<state dir>/claude/<profile>`: one prepared configuration per Claude profile."""
    base = state_dir if state_dir is not None else resolve_state_dir(None)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in profile_name) or "claude"
    return base / "claude" / safe


# ---- the Stop-hook channel -----------------------------------------------------------------------


class HookChannel:
    """A FIFO the Stop hook writes its JSON input to; Shoal holds both ends open, so a hook's write
    never blocks (nobody-reading) and Shoal's read never sees end-of-file between hooks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "stop-hook.fifo"
        os.mkfifo(self.path, 0o600)
        read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self._stream = trio.lowlevel.FdStream(read_fd)
        self._closed = False

    @classmethod
    async def create(cls, worker_id: str) -> HookChannel:
        def make() -> HookChannel:
            directory = Path(tempfile.mkdtemp(prefix=f"shoal-hook-{worker_id}-"))
            try:
                return cls(directory)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise

        return await trio.to_thread.run_sync(make)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object the hook wrote, one per line; ends when the channel is closed."""
        buffer = b""
        while True:
            try:
                data = await self._stream.receive_some(65536)
            except (trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_EVENT:
                log.warning("stop hook input over %d bytes dropped", MAX_EVENT)
                buffer = b""
            for line in lines:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    log.warning("stop hook wrote invalid JSON: %r", line[:200])
                    continue
                if isinstance(obj, dict):
                    yield obj

    def close(self) -> None:
        """Close both ends and remove the FIFO (a late hook then finds no FIFO and exits 0)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.close(self._keep_fd)
        except OSError:  # pragma: no cover
            pass
        try:
            self._stream.close()
        except OSError:  # pragma: no cover
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


def transcript_turn(
    path: str | os.PathLike[str], prompt_id: str | None = None
) -> tuple[str | None, dict[str, Any], bool]:
    """(last reply text, usage, found) of one turn in a Claude Code transcript (JSON lines).

    The turn starts at the user prompt (a user entry that is not a tool result) whose `promptId` is
    `prompt_id`, or at the newest prompt when `prompt_id` is None; it ends at the next prompt. Usage
    is summed over its assistant messages (each message id once, its last line counting);
    `context_tokens` is the prompt size of the last one (what the context holds now). `found`:
    the turn and its last assistant message are in the file: at least one, and the newest does not
    ask for a tool (the CLI may write them a moment after the Stop hook started; a turn that used a
    tool seen up to its tool_use would lose its reply and the later requests' usage).
    """
    per_message: dict[str, dict[str, Any]] = {}
    text: str | None = None
    asked_tool = False  # the turn's newest assistant line asks for a tool: its reply is yet to come
    in_turn = prompt_id is None
    started = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or entry.get("isSidechain"):
                continue
            message = entry.get("message")
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if entry.get("type") == "user" and not _is_tool_result(content):
                if prompt_id is None:
                    per_message, text, started = {}, None, True  # a new prompt: a new turn
                else:
                    in_turn = entry.get("promptId") == prompt_id
                    started = started or in_turn
            elif entry.get("type") == "assistant" and in_turn:
                if isinstance(message.get("usage"), dict):
                    per_message[str(message.get("id"))] = message["usage"]
                said = _text_of(content)
                if said:
                    text = said
                asked_tool = _has_tool_use(content)
    usage: dict[str, Any] = {}
    for item in per_message.values():
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = item.get(key)
            if isinstance(value, int):
                usage[key] = usage.get(key, 0) + value
    if per_message:
        usage["api_requests"] = len(per_message)
        last = list(per_message.values())[-1]
        usage["context_tokens"] = sum(
            value for key in CONTEXT_KEYS if isinstance(value := last.get(key), int)
        )
    return text, usage, started and bool(per_message) and not asked_tool


def _has_tool_use(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_use" for b in content
    )


def _is_tool_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


async def stop_result(event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The result text and usage one Stop hook input stands for (the transcript read in a thread).

    Claude Code may append the turn's last lines to the transcript just after the hook started: the
    transcript is read again, every TRANSCRIPT_STEP_S for at most TRANSCRIPT_WAIT_S, until the turn
    is there (there is no event for a file being written to; the reply text never waits for it).
    """
    text = event.get("last_assistant_message")
    usage: dict[str, Any] = {}
    path = event.get("transcript_path")
    prompt_id = event.get("prompt_id") if isinstance(event.get("prompt_id"), str) else None
    if isinstance(path, str) and path:
        said = None
        deadline = trio.current_time() + TRANSCRIPT_WAIT_S
        while True:
            try:
                said, usage, found = await trio.to_thread.run_sync(transcript_turn, path, prompt_id)
            except OSError as exc:
                log.warning("cannot read the transcript %s: %s", path, exc)
                break
            if found or trio.current_time() >= deadline:
                break
            await trio.sleep(TRANSCRIPT_STEP_S)
        if not isinstance(text, str) or not text:
            text = said
    if isinstance(event.get("session_id"), str):
        usage["session_id"] = event["session_id"]
    return (text if isinstance(text, str) else ""), usage


# ---- what the worker calls -----------------------------------------------------------------------


# (real path, size, mtime) of a CLI → whether it knows the StopFailure hook event
_STOP_FAILURE_KNOWN: dict[tuple[str, int, int], bool] = {}


def knows_stop_failure(command: str, search_path: str | None) -> bool:
    """Whether the Claude Code CLI `command` (found on `search_path`) knows the StopFailure hook
    event: its program (the native binary, or 2.0.x's cli.js) holds the event's name. Read once per
    program file; False when it cannot be found or read (a wrapper script: then no StopFailure hook,
    and an API error ends the task at its timeout)."""
    found = shutil.which(command, path=search_path)
    if found is None:
        return False
    real = os.path.realpath(found)
    try:
        st = os.stat(real)
        key = (real, st.st_size, st.st_mtime_ns)
        if key not in _STOP_FAILURE_KNOWN:
            with open(real, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _STOP_FAILURE_KNOWN[key] = data.find(b'"StopFailure"') >= 0
        return _STOP_FAILURE_KNOWN[key]
    except (OSError, ValueError):  # unreadable, or empty (mmap refuses)
        return False


def set_stop_failure_hook(config_dir: Path, enabled: bool) -> None:
    """Add (or, for a CLI without the event, remove) the StopFailure hook in the prepared
    configuration's `settings.json` (the user settings of that CLAUDE_CONFIG_DIR), keeping the rest."""
    path = config_dir / "settings.json"
    try:
        settings = json.loads(path.read_text())
        if not isinstance(settings, dict):
            settings = {}
    except (OSError, ValueError):
        settings = {}
    hooks = settings.get("hooks")
    hooks = dict(hooks) if isinstance(hooks, dict) else {}
    if enabled:
        if hooks.get("StopFailure") == STOP_FAILURE_HOOKS:
            return
        hooks["StopFailure"] = STOP_FAILURE_HOOKS
    elif "StopFailure" in hooks:
        del hooks["StopFailure"]
    else:
        return
    settings["hooks"] = hooks
    if not hooks:
        del settings["hooks"]
    tmp = path.with_name(f"settings.json.shoal-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(settings, f, indent=2)
    os.replace(tmp, path)


def _prepare_for(
    config_dir: Path,
    api_key: str | None,
    cwd: str | None,
    environ: Mapping[str, str],
    command: str | None = None,
) -> None:
    here = os.path.abspath(cwd or os.getcwd())
    trusted = sorted({here, os.path.realpath(here)})  # the CLI keys its projects by its cwd
    prepare_config_dir(config_dir, api_key=api_key, trusted=trusted, user_dir=user_config_dir(environ))
    if command is not None:  # a TUI: its turn's end on an API error comes through StopFailure
        set_stop_failure_hook(config_dir, knows_stop_failure(command, environ.get("PATH")))


async def prepare(
    profile_name: str,
    profile: ProfileConfig,
    worker_id: str,
    transport: str,
    state_dir: Path | None,
) -> tuple[dict[str, str], HookChannel | None]:
    """Extra environment for one process of `profile` and its hook channel (None: not Claude, or not
    a TUI). Raises OSError when the configuration directory cannot be prepared."""
    if not is_claude(profile):
        return {}, None
    env: dict[str, str] = {}
    if "CLAUDE_CONFIG_DIR" not in profile.env:
        config_dir = claude_config_dir(state_dir, profile_name)
        api_key = profile.env.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_API_KEY")
        environ = {**os.environ, **profile.env}  # the agent's HOME: where its `claude login` lives
        command = profile.argv[0] if transport == "pty" else None
        await trio.to_thread.run_sync(_prepare_for, config_dir, api_key, profile.cwd, environ, command)
        env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    channel = None
    if transport == "pty":
        channel = await HookChannel.create(worker_id)
        env[HOOK_FIFO_ENV] = str(channel.path)
    return env, channel


async def listen(channel: HookChannel, dialect: object, post: Callable[[list[Signal]], None]) -> None:
    """Turn each Stop hook input into the dialect's end of the running task (`hook_done`), with the
    context use the turn left (the worker judges the task's end against it: a refresh between tasks);
    a StopFailure (an API error ended the turn) into `hook_failed`."""
    done = getattr(dialect, "hook_done", None)
    failed = getattr(dialect, "hook_failed", None)
    async for event in channel.events():
        kind = event.get("hook_event_name", "Stop")
        if kind == "StopFailure" and failed is not None:
            error, message = event.get("error"), event.get("last_assistant_message")
            details = event.get("error_details")
            if not isinstance(message, str) or not message:
                message = details if isinstance(details, str) else ""
            ended = failed(error if isinstance(error, str) else "", message, trio.current_time())
            if ended:
                post(ended)
            continue
        if kind != "Stop" or done is None:
            continue
        text, usage = await stop_result(event)
        signals: list[Signal] = []
        context = usage.get("context_tokens")
        if isinstance(context, int) and context > 0:
            used = round(min(100.0, 100.0 * context / CONTEXT_WINDOW_TOKENS), 1)
            signals.append(ContextUsage(used_percent=used))
        signals.extend(done(text, usage, trio.current_time()))
        if signals:
            post(signals)
