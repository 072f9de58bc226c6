"""The WorkerActor: one agent process, driven through its dialect, reporting to its owner.

The actor owns one process at a time (an *incarnation*: process, dialect, and three small tasks that
read its output, wait for its exit and write its input). Output is recorded in a ring buffer, fanned
out to attach subscribers and fed to the dialect *by the reader task*, so the child can always write
and never blocks on us; the dialect's signals, process exits and mailbox commands all reach one main
loop through an internal channel, which makes every state decision in one place, in order.

States: starting → idle ⇄ busy → (refreshing → idle) → stopping → stopped | crashed, plus paused.
An idle worker has no timers: CPU and memory are sampled only while busy, or when `info()` asks.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from ..protocols import menus
from ..protocols.config import ProfileConfig, WorkersConfig
from ..protocols.dialects import make_dialect
from ..protocols.dialects.base import (
    ApiRetry,
    ContextUsage,
    Dialect,
    ExtraUsage,
    NeedsInput,
    Notice,
    ProtocolError,
    QuotaReport,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
)
from ..protocols.dialects.common import last_words
from ..protocols.errors import Conflict, ShoalError, ValidationError
from ..protocols.profiles import placeholders, render_argv
from ..protocols.tasks import Assignment, Outcome
from ..protocols.workers import (
    AnsweredReport,
    AnswerQuestion,
    ApiRetryReport,
    Assign,
    ContextReport,
    ExtraUsageReport,
    NeedsInputReport,
    NoticeReport,
    Pause,
    QuotaUpdate,
    RateLimitReport,
    Resize,
    Restart,
    Resume,
    RetryInfo,
    SendInput,
    SetCapabilities,
    SetModel,
    StateChanged,
    Stop,
    TaskFinished,
    WorkerCommand,
    WorkerInfo,
    WorkerReport,
    WorkerState,
)
from ..runtime.actor import Address, Call, Mailbox
from . import hooks
from .auth import resolve_state_dir
from .process import AgentProcess, ExitStatus, SpawnError, resolve_command, spawn
from .workspace import SharedDirectory, Workspace, WorkspaceError

log = logging.getLogger("shoal.worker")
WORKSPACE_TIMEOUT_S = 60.0  # a workspace's finish/aclose (a git commit, a reset) is given this long

TAIL_BYTES = 4096  # output tail attached to a crashed/interrupted attempt (the transcript handoff)
DRAIN_S = 0.5  # after the child exits, how long to wait for the rest of its output
LAST_WORDS_BYTES = 8192  # output searched for a crash reason's last words (a TUI frame is mostly escapes)
SLOT_HOLD_S = 1.0  # a start-up slot is held until Ready, or this long at most
# A task's Enter counts as lost when, this long after it went out, the agent's prompt still holds the
# task's text and it shows no sign of work; it is pressed again (at most RESUBMITS times, looked at
# for RESUBMIT_WINDOW_S). Claude Code 2.0.x takes an Enter within ~100 ms of a paste as pasted text,
# and a task written the moment its prompt appears as typed in cooked mode (its input is not raw yet).
RESUBMIT_AFTER_S = 0.4
RESUBMITS = 3
RESUBMIT_WINDOW_S = 5.0
KEY_GAP_S = 0.1  # between the arrow keys and the Enter of an answer to a menu without numbers
_KEYS = re.compile(rb"(\x1b\[[AB])")
LIMIT_RECENT_S = 60.0  # a usage-limit menu this soon after a usage-limit message: already parked

_ANSI = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_][^\x1b]*\x1b\\|\x1b[@-Z\\-_]"
)


def clean_text(data: bytes) -> str:
    """Terminal output as plain text: escape sequences removed, CRLF folded, invalid UTF-8 replaced."""
    text = _ANSI.sub(b"", data).decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def start_up_slots() -> int:
    """Recommended size of the shared `spawn_limiter`: one agent initialising per core, keeping one
    core for the event loop (measured in docs/workers.md: more slots start faster but let the
    starting agents delay the loop's own spawns)."""
    return max(1, (os.cpu_count() or 2) - 1)


@attrs.frozen
class WorkerExit:
    """What `WorkerActor.run` returns: why the worker ended and how its last process exited."""

    crashed: bool
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None


class OutputRing:
    """The last `cap` bytes of output: a deque of chunks, grown with output and trimmed, never preallocated.

    Small writes are coalesced into the last chunk (up to 4 KiB) so a stream of 1-byte echoes does not
    cost an object per byte.
    """

    __slots__ = ("_chunks", "_size", "cap", "total")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total = 0  # bytes ever appended (task-relative tails)

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if self._chunks and len(self._chunks[-1]) + len(data) <= 4096:
            self._chunks[-1] += data
        else:
            self._chunks.append(data)
        self._size += len(data)
        while self._size > self.cap:
            extra = self._size - self.cap
            first = self._chunks[0]
            if len(first) <= extra:
                self._chunks.popleft()
                self._size -= len(first)
            else:
                self._chunks[0] = first[extra:]
                self._size -= extra

    def tail(self, max_bytes: int | None = None) -> bytes:
        want = self._size if max_bytes is None else max(0, min(max_bytes, self._size))
        parts: list[bytes] = []
        got = 0
        for chunk in reversed(self._chunks):
            if got >= want:
                break
            need = want - got
            part = chunk[-need:] if len(chunk) > need else chunk
            parts.append(part)
            got += len(part)
        return b"".join(reversed(parts))


# ---- internal events --------------------------------------------------------------------------


@attrs.frozen
class _Signals:
    gen: int
    signals: list[Signal]


@attrs.frozen
class _Eof:
    gen: int


@attrs.frozen
class _Exited:
    gen: int
    status: ExitStatus


class _Finished(Exception):
    """Raised inside the main loop when the worker has ended (stopped or crashed)."""

    def __init__(self, result: WorkerExit) -> None:
        super().__init__(result.reason)
        self.result = result


_Write = tuple[float, bytes] | None  # (delay before writing, data); None: close the input


@attrs.define(eq=False)
class _Typing:
    """An answer to a menu being typed: written at `at`, typed again if nothing moved on screen.

    Claude Code ignores keys for ~0.2 s after it draws a menu, so the keys go out ANSWER_DELAY_S
    after the menu appeared; if the agent writes nothing within RETYPE_AFTER_S of a write, the keys
    were swallowed and are written again (at most RETYPES times)."""

    gen: int
    keys: bytes
    at: float
    check_at: float | None = None
    mark: int = 0  # output bytes seen when the keys were written
    tries: int = 0


@attrs.define(eq=False)
class _Submit:
    """A task's Enter, pressed again while the agent shows it never arrived (`unsent_input_since`)."""

    task_id: str
    enter: bytes
    due: float  # when the Enter was due to be written (after the writer's pauses)
    presses: int = 0
    check_at: float | None = None  # the next look at the prompt (the worker's timer)


@attrs.define(eq=False)
class _Incarnation:
    gen: int
    proc: AgentProcess
    dialect: Dialect
    writes: trio.MemorySendChannel[_Write]
    write_queue: trio.MemoryReceiveChannel[_Write]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    hook: hooks.HookChannel | None = None  # Claude Code's Stop hook reports here (actors/hooks.py)
    eof: bool = False
    status: ExitStatus | None = None
    drain_deadline: float | None = None
    nursery: trio.Nursery | None = None  # the incarnation's I/O tasks


_NOT_PROGRESS = (ApiRetry, Notice, QuotaReport, ExtraUsage)  # signals that do not end a retry


class WorkerActor:
    """One agent process per its profile, driven through its dialect; reports go to `reports`.

    `run()` spawns the process (raising `SpawnError` before `task_status.started` if the command
    cannot run), reports STARTING, then IDLE once the dialect says Ready, and serves its mailbox of
    `WorkerCommand`s until it is stopped (returns `WorkerExit(crashed=False)`), its process dies or
    fails to start (CRASHED, `WorkerExit(crashed=True)`), or it is cancelled (the process is still
    killed and reaped). `spawn_limiter` paces start-ups across workers (a slot is held from spawn
    until Ready, at most SLOT_HOLD_S) so a burst of spawns does not starve the event loop of CPU.
    """

    def __init__(
        self,
        worker_id: str,
        lineage: str,
        profile_name: str,
        profile: ProfileConfig,
        model: str | None,
        capabilities: frozenset[str] | None,
        reports: trio.MemorySendChannel[WorkerReport],
        config: WorkersConfig,
        clock: Callable[[], float] = time.time,
        *,
        history_size: int = 10,
        spawn_limiter: trio.CapacityLimiter | None = None,
        state_dir: Path | None = None,
        workspace: Workspace | None = None,
    ) -> None:
        self.id = worker_id
        self.lineage = lineage
        self.profile_name = profile_name
        self.profile = profile
        self._model = model or None
        self._capabilities = capabilities
        self._reports = reports
        self._config = config
        self._clock = clock
        self._limiter = spawn_limiter
        self._state_dir = state_dir  # Claude profiles keep their prepared configuration there
        # where the agent works: asked before each spawn, told of each task (actors/workspace.py)
        self._workspace: Workspace = workspace if workspace is not None else SharedDirectory(profile.cwd)
        # the shared directory does nothing per task: skip its calls (and their cancel scopes) per attempt
        self._per_task_workspace = not isinstance(self._workspace, SharedDirectory)
        self._cwd = profile.cwd

        self._state = WorkerState.STARTING
        self._reason: str | None = None
        self._question: tuple[str, float] | None = None  # (what the agent asks, since when: wall s)
        self._asked: NeedsInput | None = None  # the question a human must answer (its options)
        self._asked_at = 0.0  # when it appeared (trio time)
        self._menu_context: menus.MenuContext | None = None  # where the agent runs (computed once)
        self._typing: _Typing | None = None
        self._submit: _Submit | None = None  # the running task's Enter, watched until it arrives
        self._last_limit: tuple[float, float | None] | None = None  # (wall s, reset_at) of the last limit
        self._limited_task: str | None = None  # the task the last usage limit ended
        self._refused_while_asked = False  # an idle worker turned a task down while a question was open
        self._retrying: RetryInfo | None = None  # the agent's client retries an API request
        self._notices = 0
        self._extra_usage_reported = False  # once per process: a TUI footer repeats on every frame
        self._started_wall = clock()
        self._inc: _Incarnation | None = None
        self._gen = 0
        self._nursery: trio.Nursery | None = None
        self._events_send, self._events = trio.open_memory_channel[object](math.inf)
        self._one_process_per_task = profile.dialect == "oneshot"

        self._task: Assignment | None = None
        self._task_started = 0.0
        self._task_out_start = 0
        self._paused = False
        self._stop_after: str | None = None  # Stop(drain) while busy
        self._restart_after: str | None = None  # Restart(wait) while busy
        self._respawn_reason: str | None = None  # forced fresh process after this task (timeout, ...)
        self._model_changed = False

        self._awaiting_ready_until: float | None = None
        self._slot: object | None = None
        self._slot_release_at: float | None = None
        self._sample_at: float | None = None

        self._context: float | None = None
        self._cpu: float | None = None
        self._rss: int | None = None
        self._sampled_at = -math.inf
        self._tasks_done = 0
        self._crashes = 0
        self._history: deque[str] = deque(maxlen=max(1, history_size))
        self._ring = OutputRing(config.ring_buffer_kib * 1024)
        self._subscribers: dict[trio.MemoryReceiveChannel[bytes], trio.MemorySendChannel[bytes]] = {}
        self.dropped_chunks = 0  # live-output chunks a slow subscriber did not get

    # ---- read-only accessors (sync: listings of many workers) -----------------------------------

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def needs_input(self) -> tuple[str, float] | None:
        """(question, since: epoch s) while the agent waits on a question; None otherwise."""
        return self._question

    @property
    def retrying(self) -> RetryInfo | None:
        """The agent's client is retrying an API request (attempt, max, next try); None otherwise."""
        return self._retrying

    @property
    def pid(self) -> int | None:
        return self._inc.proc.pid if self._inc is not None else None

    def info(self) -> WorkerInfo:
        """A snapshot; CPU/RSS are re-sampled from /proc when older than `sample_interval_s`."""
        if self._inc is not None:
            now = time.monotonic()
            if now - self._sampled_at >= self._config.sample_interval_s:
                self._sample(now)
        caps = None if self._capabilities is None else tuple(sorted(self._capabilities))
        return WorkerInfo(
            id=self.id,
            lineage=self.lineage,
            state=self._state,
            profile=self.profile_name,
            model=self._model,
            capabilities=caps,
            task_id=self._task.task_id if self._task is not None else None,
            pid=self.pid,
            started=self._started_wall,
            context_used_percent=self._context,
            cpu_percent=self._cpu,
            rss_bytes=self._rss,
            tasks_done=self._tasks_done,
            crashes=self._crashes,
            history=tuple(self._history),
            reason=self._reason,
            needs_input=self._question[0] if self._question is not None else None,
            needs_input_since=self._question[1] if self._question is not None else None,
            needs_input_options=self._asked.options if self._asked is not None else (),
            retrying=self._retrying,
            notices=self._notices,
        )

    def output_tail(self, max_bytes: int | None = None) -> bytes:
        """The last `max_bytes` of raw output (default: the whole ring, `ring_buffer_kib`)."""
        return self._ring.tail(max_bytes)

    def subscribe_output(self, size: int = 256) -> trio.MemoryReceiveChannel[bytes]:
        """Live output chunks from now on (take `output_tail()` first for the screen so far).

        Bounded: a subscriber that falls `size` chunks behind loses chunks (counted in
        `dropped_chunks`); the worker never waits for it. The channel ends when the worker ends.
        """
        send, recv = trio.open_memory_channel[bytes](size)
        self._subscribers[recv] = send
        return recv

    def unsubscribe_output(self, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        send = self._subscribers.pop(channel, None)
        if send is not None:
            send.close()
        channel.close()

    # ---- run ----------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Address[WorkerCommand]] = trio.TASK_STATUS_IGNORED
    ) -> WorkerExit:
        async with Mailbox[WorkerCommand](f"worker:{self.id}") as mailbox:
            try:
                await self._first_start()  # SpawnError / ValidationError: raised before started
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self._inc is not None:
                        nursery.start_soon(self._run_incarnation, self._inc)
                    nursery.start_soon(self._forward, mailbox)
                    task_status.started(mailbox.address)
                    result = await self._serve()
                    nursery.cancel_scope.cancel()
                return result
            finally:
                await self._teardown()

    async def _forward(self, mailbox: Mailbox[WorkerCommand]) -> None:
        async for msg in mailbox:
            self._post(msg)

    def _post(self, event: object) -> None:
        try:
            self._events_send.send_nowait(event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):  # pragma: no cover - ending
            pass

    async def _teardown(self) -> None:
        """Always: kill and reap the process, close its descriptors and the subscribers. Bounded."""
        with trio.CancelScope(shield=True):
            inc, self._inc = self._inc, None
            if inc is not None:
                inc.scope.cancel()
                await inc.proc.aclose(grace=min(self.profile.stop_timeout_s, 1.0))
                if inc.hook is not None:
                    inc.hook.close()
            self._release_slot()
            for send in self._subscribers.values():
                send.close()
            self._subscribers.clear()
            self._events_send.close()
            with trio.move_on_after(WORKSPACE_TIMEOUT_S):
                try:
                    await self._workspace.aclose()
                except Exception:
                    log.exception("worker %s: closing its workspace failed", self.id)

    def _make_dialect(self) -> Dialect:
        """A fresh dialect for the next process; the profile's `transport` is passed on to it."""
        options = dict(self.profile.options)
        if self.profile.transport is not None:
            options["transport"] = self.profile.transport
        return make_dialect(self.profile.dialect, options, wall_clock=self._clock)

    async def _first_start(self) -> None:
        dialect = self._make_dialect()
        self._one_process_per_task = dialect.one_process_per_task
        if self._one_process_per_task:
            # no process until a task comes; check now that the command can run at all
            self._cwd = await self._workspace.directory()
            argv = self._argv(prompt="")
            env = {**os.environ, **self.profile.env}
            await trio.to_thread.run_sync(resolve_command, argv[0], env, self._cwd)
            return
        await self._start_process(dialect=dialect)

    # ---- the main loop ------------------------------------------------------------------------

    async def _serve(self) -> WorkerExit:
        try:
            await self._set_state(WorkerState.STARTING)
            if self._one_process_per_task:
                await self._become_available()
            await self._loop()
        except _Finished as finished:
            return finished.result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _loop(self) -> None:
        while True:
            event: object = None
            with trio.move_on_at(self._next_deadline()):
                event = await self._events.receive()
            if event is not None:
                await self._handle(event)
            await self._on_time(trio.current_time())

    def _next_deadline(self) -> float:
        candidates = [self._awaiting_ready_until, self._slot_release_at]
        if self._typing is not None:
            candidates.append(self._typing.at if self._typing.check_at is None else self._typing.check_at)
        if self._submit is not None:
            candidates.append(self._submit.check_at)
        if self._state is WorkerState.BUSY:
            candidates.append(self._sample_at)
        inc = self._inc
        if inc is not None:
            candidates.append(inc.drain_deadline)
            candidates.append(inc.dialect.next_deadline())
        return min((c for c in candidates if c is not None), default=math.inf)

    async def _handle(self, event: object) -> None:
        inc = self._inc
        if isinstance(event, _Signals):
            if inc is not None and event.gen == inc.gen:
                await self._on_signals(event.signals)
        elif isinstance(event, _Eof):
            if inc is not None and event.gen == inc.gen:
                inc.eof = True
                if inc.status is not None:
                    await self._on_death(inc)
        elif isinstance(event, _Exited):
            if inc is not None and event.gen == inc.gen:
                inc.status = event.status
                if inc.eof:
                    await self._on_death(inc)
                else:
                    inc.drain_deadline = trio.current_time() + DRAIN_S
        elif isinstance(event, Call):
            try:
                value = await self._command(event.payload)
            except _Finished as finished:
                event.reply(finished.result)
                raise
            except (ShoalError, TypeError, ValueError) as exc:
                event.fail(exc)
            else:
                event.reply(value)
        else:
            try:
                await self._command(event)
            except (ShoalError, TypeError) as exc:
                log.warning("worker %s: %s refused: %s", self.id, type(event).__name__, exc)

    async def _on_time(self, now: float) -> None:
        inc = self._inc
        if inc is not None and inc.drain_deadline is not None and now >= inc.drain_deadline:
            await self._on_death(inc)
            return
        if self._awaiting_ready_until is not None and now >= self._awaiting_ready_until:
            await self._crash(
                f"start-up timeout: not ready within {self.profile.startup_timeout_s:g} s"
                + self._last_line_suffix()
            )
        if self._slot_release_at is not None and now >= self._slot_release_at:
            self._release_slot()
        if self._typing is not None:
            self._type_due(now)
        if self._submit is not None:
            self._check_submit(now)
        inc = self._inc
        if inc is not None:
            deadline = inc.dialect.next_deadline()
            if deadline is not None and now >= deadline:
                signals = self._guard(inc.dialect.tick, now)
                if signals:
                    await self._on_signals(signals)
        if self._state is WorkerState.BUSY and self._sample_at is not None and now >= self._sample_at:
            self._sample(time.monotonic())
            self._sample_at = now + self._config.sample_interval_s

    # ---- the process --------------------------------------------------------------------------

    def _argv(self, prompt: str | None = None) -> list[str]:
        return render_argv(self.profile, model=self._model, prompt=prompt, worker=self.id, cwd=self._cwd)

    async def _start_process(self, *, dialect: Dialect | None = None, prompt: str | None = None) -> None:
        """Spawn a new incarnation. Raises SpawnError/ValidationError (the caller decides the state)."""
        self._extra_usage_reported = False
        if dialect is None:
            dialect = self._make_dialect()
        self._cwd = await self._workspace.directory()
        self._menu_context = None  # worked out again for this directory when a question comes
        argv = self._argv(prompt)
        env = {**self.profile.env, "SHOAL_WORKER": self.id, "SHOAL_LINEAGE": self.lineage}
        persistent = not self._one_process_per_task
        if persistent and self._limiter is not None:
            token = object()
            await self._limiter.acquire_on_behalf_of(token)
            self._slot = token
        hook: hooks.HookChannel | None = None
        try:
            try:  # Claude Code: its prepared CLAUDE_CONFIG_DIR and Stop-hook FIFO
                extra, hook = await hooks.prepare(
                    self.profile_name, self.profile, self.id, dialect.transport, self._state_dir
                )
            except OSError as exc:
                detail = f"cannot prepare its configuration: {exc}"
                raise SpawnError(argv[0], exc.errno or 0, detail) from None
            env.update(extra)
            proc = await spawn(
                argv,
                transport=dialect.transport,
                env=env,
                cwd=self._cwd,
                rows=self.profile.rows,
                cols=self.profile.cols,
            )
        except BaseException:
            self._release_slot()
            if hook is not None:
                hook.close()
            raise
        self._gen += 1
        writes, write_queue = trio.open_memory_channel[_Write](math.inf)
        inc = _Incarnation(self._gen, proc, dialect, writes, write_queue, hook=hook)
        self._inc = inc
        now = trio.current_time()
        if self._slot is not None:
            self._slot_release_at = now + SLOT_HOLD_S
        if persistent:
            self._awaiting_ready_until = now + self.profile.startup_timeout_s
        self._sampled_at = -math.inf
        if self._nursery is not None:  # else `run` starts it once its nursery is open
            self._nursery.start_soon(self._run_incarnation, inc)
        # a dialect may be ready without any output (e.g. JSON lines): give it a first tick
        signals = self._guard(dialect.tick, now)
        if signals:
            self._post(_Signals(inc.gen, signals))

    def _guard(self, method: Callable[..., list[Signal]], *args: Any) -> list[Signal]:
        """Run a dialect method; a bug in a dialect becomes a ProtocolError, not a dead worker."""
        try:
            return method(*args)
        except Exception as exc:
            log.exception("worker %s: dialect %s failed", self.id, self.profile.dialect)
            return [ProtocolError(f"dialect {self.profile.dialect!r} failed: {exc!r}")]

    async def _run_incarnation(self, inc: _Incarnation) -> None:
        """The incarnation's I/O tasks, all cancelled by `inc.scope` when it ends."""
        with inc.scope:
            async with trio.open_nursery() as nursery:
                inc.nursery = nursery
                nursery.start_soon(self._read_output, inc)
                if inc.proc.transport == "pipe":
                    nursery.start_soon(self._read_stderr, inc)
                nursery.start_soon(self._wait_exit, inc)
                nursery.start_soon(self._write_input, inc, inc.write_queue)
                if inc.hook is not None:
                    gen = inc.gen
                    nursery.start_soon(
                        hooks.listen, inc.hook, inc.dialect, lambda s: self._post(_Signals(gen, s))
                    )

    async def _read_output(self, inc: _Incarnation) -> None:
        while data := await inc.proc.read():
            self._record(data)
            signals = self._guard(inc.dialect.feed, data, trio.current_time())
            if signals:
                self._post(_Signals(inc.gen, signals))
        self._post(_Eof(inc.gen))

    def _check_submit(self, now: float) -> None:
        """Press a task's Enter again while, RESUBMIT_AFTER_S after each press, the agent's prompt
        still holds the task's text and it shows no sign of work (the Enter was lost). The agent need
        not redraw after a lost Enter, so this looks on the worker's timer, not on output."""
        submit, inc = self._submit, self._inc
        if submit is None or submit.check_at is None or now < submit.check_at:
            return
        unsent = getattr(inc.dialect, "unsent_input_since", None) if inc is not None else None
        if inc is None or unsent is None or self._task is None or self._task.task_id != submit.task_id:
            self._submit = None
            return
        if unsent() is not None:
            submit.presses += 1
            log.info("worker %s: task %s: its Enter was lost, pressed again", self.id, submit.task_id)
            inc.writes.send_nowait((0.0, submit.enter))
        nxt = submit.check_at + RESUBMIT_AFTER_S
        done = submit.presses >= RESUBMITS or nxt >= submit.due + RESUBMIT_WINDOW_S
        submit.check_at = None if done else nxt
        if done:
            self._submit = None

    async def _read_stderr(self, inc: _Incarnation) -> None:
        while data := await inc.proc.read_stderr():
            self._record(data)  # kept for logs and attach, never parsed as protocol

    async def _wait_exit(self, inc: _Incarnation) -> None:
        status = await inc.proc.wait()
        self._post(_Exited(inc.gen, status))

    async def _write_input(self, inc: _Incarnation, queue: trio.MemoryReceiveChannel[_Write]) -> None:
        async for item in queue:
            if item is None:
                inc.proc.close_input()
                continue
            delay, data = item
            if delay > 0:
                await trio.sleep(delay)
            if not await inc.proc.write(data):
                break  # input gone: the exit is reported by _wait_exit

    def _record(self, data: bytes) -> None:
        self._ring.append(data)
        if self._subscribers:
            for recv, send in list(self._subscribers.items()):
                try:
                    send.send_nowait(data)
                except trio.WouldBlock:
                    self.dropped_chunks += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.pop(recv, None)

    async def _stop_process(self, *, ladder: bool) -> tuple[ExitStatus | None, str]:
        """End the current incarnation (stop ladder, or straight kill) and close everything."""
        inc, self._inc = self._inc, None
        starting = self._awaiting_ready_until is not None
        self._awaiting_ready_until = None
        self._release_slot()
        if inc is None:
            return None, "none"
        status, rung = inc.status, "exited"
        try:
            if ladder and status is None:
                # an agent still starting up reads no input yet: the polite rung would only wait
                quit_bytes = None if starting else self._guard_bytes(inc)
                status, rung = await inc.proc.stop(quit_bytes, self.profile.stop_timeout_s)
        finally:  # even when cancelled mid-ladder: aclose is shielded and bounded
            final = await inc.proc.aclose()
            inc.scope.cancel()
            inc.writes.close()
            if inc.hook is not None:
                inc.hook.close()
        return status or final, rung

    def _guard_bytes(self, inc: _Incarnation) -> bytes | None:
        try:
            return inc.dialect.quit_bytes()
        except Exception:  # pragma: no cover - a dialect bug: skip the polite rung
            return None

    def _release_slot(self) -> None:
        token, self._slot = self._slot, None
        self._slot_release_at = None
        if token is not None and self._limiter is not None:
            self._limiter.release_on_behalf_of(token)

    def _sample(self, now: float) -> None:
        if self._inc is None:
            return
        cpu, rss = self._inc.proc.sample(now)
        self._sampled_at = now
        if cpu is not None:
            self._cpu = cpu
        if rss is not None:
            self._rss = rss

    def _task_tail(self) -> str:
        since = self._ring.total - self._task_out_start if self._task is not None else TAIL_BYTES
        return clean_text(self._ring.tail(min(TAIL_BYTES, since)))

    def _last_line_suffix(self) -> str:
        """A crash reason's end: ": " and the agent's last meaningful lines, without escape bytes or
        the TUI's chrome (footer, prompt, boxes); empty when it said nothing readable."""
        size = LAST_WORDS_BYTES
        if self._task is not None:  # mid-task: what the agent said for this task, not its welcome
            size = min(size, self._ring.total - self._task_out_start)
        words = last_words(self._ring.tail(size))
        return f": {words}" if words else ""

    # ---- reports and states -------------------------------------------------------------------

    async def _report(self, report: WorkerReport) -> None:
        try:
            await self._reports.send(report)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # nobody listens any more; the owner cancels us when it ends

    async def _set_state(
        self,
        state: WorkerState,
        reason: str | None = None,
        *,
        status: ExitStatus | None = None,
        pid: int | None = None,
    ) -> None:
        self._state = state
        self._reason = reason
        self._question = self._asked = None  # the screen moved on
        await self._report(
            StateChanged(
                worker=self.id,
                state=state,
                reason=reason,
                model=self._model,
                pid=pid if pid is not None else self.pid,
                exit_code=status.exit_code if status else None,
                signal=status.signal if status else None,
            )
        )

    async def _crash(self, reason: str, status: ExitStatus | None = None) -> None:
        """The worker ends on its own: kill what is left, report CRASHED, end `run`."""
        pid = self.pid
        await self._stop_process(ladder=False)  # `status`: how it died by itself (None: we killed it)
        if self._task is not None:
            await self._end_attempt(
                Outcome.CRASHED,
                reason=reason,
                exit_code=status.exit_code if status else None,
                signal=status.signal if status else None,
                output_tail=self._task_tail(),
            )
        self._crashes += 1
        await self._set_state(WorkerState.CRASHED, reason, status=status, pid=pid)
        raise _Finished(
            WorkerExit(True, reason, status.exit_code if status else None, status.signal if status else None)
        )

    async def _stop(self, reason: str) -> None:
        await self._set_state(WorkerState.STOPPING, reason)
        status, rung = await self._stop_process(ladder=True)
        if rung in ("sigterm", "sigkill"):
            reason = f"{reason} (after {rung.upper()})"
        await self._set_state(WorkerState.STOPPED, reason, status=status)
        raise _Finished(
            WorkerExit(False, reason, status.exit_code if status else None, status.signal if status else None)
        )

    async def _respawn(self, reason: str) -> None:
        """A fresh process between tasks: REFRESHING now, IDLE (or PAUSED) on its Ready."""
        self._restart_after = None
        self._respawn_reason = None
        self._model_changed = False
        self._context = None
        if self._one_process_per_task:
            await self._become_available()
            return
        await self._set_state(WorkerState.REFRESHING, reason)
        await self._stop_process(ladder=True)
        try:
            await self._start_process()
        except (SpawnError, ValidationError) as exc:
            await self._crash(f"respawn failed: {exc}")

    async def _become_available(self) -> None:
        """Between tasks: stop, respawn, pause or go idle, whichever is pending."""
        if self._stop_after is not None:
            await self._stop(self._stop_after)
        reason = self._respawn_reason or self._restart_after
        if reason is None and self._model_changed:
            reason = f"model changed to {self._model}"
        if reason is None:
            reason = self._refresh_reason()
        if reason is not None:
            await self._respawn(reason)
            return
        self._respawn_reason = self._restart_after = None
        self._model_changed = False
        await self._set_state(WorkerState.PAUSED if self._paused else WorkerState.IDLE)

    def _refresh_reason(self) -> str | None:
        threshold = self.profile.context_refresh_percent
        if self._one_process_per_task or threshold <= 0 or self._context is None:
            return None
        if self._context >= threshold:
            return f"context refresh: {self._context:g}% used (threshold {threshold:g}%)"
        return None

    # ---- tasks --------------------------------------------------------------------------------

    async def _assign(self, assignment: Assignment) -> None:
        if self._state is not WorkerState.IDLE or self._asked is not None:
            self._refused_while_asked = self._asked is not None
            await self._report(
                TaskFinished(
                    worker=self.id,
                    task_id=assignment.task_id,
                    attempt=assignment.attempt,
                    outcome=Outcome.INTERRUPTED,
                    reason="worker not idle" if self._asked is None else "worker waiting on a question",
                    model=self._model,
                )
            )
            return
        now = trio.current_time()
        self._task = assignment
        self._task_started = now
        self._task_out_start = self._ring.total
        self._state = WorkerState.BUSY
        self._sample_at = now + self._config.sample_interval_s
        if assignment.category:
            self._history.append(assignment.category)
        try:
            await self._workspace.prepare(assignment)
        except WorkspaceError as exc:  # the task cannot run here; the worker can run the next one
            await self._finish_task(Outcome.FAILED, reason=f"workspace: {exc}")
            return
        if self._one_process_per_task:
            try:
                await self._start_process(prompt=assignment.prompt)
            except (SpawnError, ValidationError) as exc:
                await self._crash(f"cannot start the task's process: {exc}")
        inc = self._inc
        assert inc is not None
        inc.dialect.start_task(assignment, now)
        steps = self._encode(inc.dialect, assignment)
        for step in steps:
            inc.writes.send_nowait(step)
        # the Enter: its own write after a paste, or the last byte of the prompt typed as is (a TUI
        # that has not turned bracketed paste on yet)
        enter = steps[-1][1] if len(steps) == 2 else steps[-1][1][-1:] if steps else b""
        if enter in (b"\r", b"\n") and hasattr(inc.dialect, "unsent_input_since"):
            due = now + sum(delay for delay, _ in steps)
            self._submit = _Submit(assignment.task_id, enter, due, check_at=due + RESUBMIT_AFTER_S)
        if self._one_process_per_task and inc.proc.transport == "pipe":
            inc.writes.send_nowait(None)  # end of input: a oneshot agent must not wait on stdin
        await self._set_state(WorkerState.BUSY)

    @staticmethod
    def _encode(dialect: Dialect, assignment: Assignment) -> list[tuple[float, bytes]]:
        """The writes that submit a task, with the dialect's pauses (paste, then Enter)."""
        return [(delay, data) for delay, data in dialect.encode_steps(assignment) if data]

    async def _end_attempt(self, outcome: Outcome, **fields: Any) -> None:
        task, self._task = self._task, None
        self._submit = None
        self._retrying = None
        if task is None:
            return
        self._limited_task = task.task_id if outcome is Outcome.RATE_LIMITED else None
        if outcome is Outcome.DONE:
            self._tasks_done += 1
        self._sample_at = None
        elapsed = round(trio.current_time() - self._task_started, 6)
        check: dict[str, Any] | None = None
        if outcome is Outcome.DONE and self._per_task_workspace:
            try:  # the workspace's check (workspace.verify): done only when it passes
                check = await self._workspace.verify(task)
            except (OSError, ShoalError) as exc:
                check = {"passed": False, "exit_code": None, "output_tail": str(exc)}
            if check is not None and not check.get("passed"):
                self._tasks_done -= 1
                outcome = Outcome.FAILED
                code = "timed out" if check.get("timed_out") else f"exit {check.get('exit_code')}"
                reason = check.get("reason") or f"verify failed ({code})"
                fields = {**fields, "reason": reason, "result": None}
                fields["output_tail"] = check.get("output_tail")
        record: dict[str, Any] | None = None
        if self._per_task_workspace:
            record = await self._finish_workspace(task, outcome)
        if check is not None:
            record = {**(record or {}), "verify": check}
        if self._workspace.fresh_context and not self._one_process_per_task:
            self._respawn_reason = self._respawn_reason or "a fresh conversation for the next task"
        await self._report(
            TaskFinished(
                worker=self.id,
                task_id=task.task_id,
                attempt=task.attempt,
                outcome=outcome,
                model=self._model,
                elapsed_s=elapsed,
                workspace=record,
                **fields,
            )
        )

    async def _finish_workspace(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        """The workspace keeps the attempt's work (before the report, which carries its record):
        shielded, so a cancelled worker still leaves its tree clean, and bounded."""
        record: dict[str, Any] | None = None
        with trio.CancelScope(shield=True, deadline=trio.current_time() + WORKSPACE_TIMEOUT_S) as scope:
            try:
                record = await self._workspace.finish(task, outcome)
            except Exception as exc:  # its next task would start in an unknown tree: start afresh
                log.warning("worker %s: finishing task %s's workspace failed: %s", self.id, task.task_id, exc)
                self._respawn_reason = f"its workspace could not be finished: {exc}"
                record = {"error": str(exc)}
        if scope.cancelled_caught:
            self._respawn_reason = "its workspace did not finish in time"
        return record

    async def _finish_task(self, outcome: Outcome, *, respawn: str | None = None, **fields: Any) -> None:
        """End the running attempt, then do what is pending (stop, respawn, pause) or go idle."""
        await self._end_attempt(outcome, **fields)
        if respawn is not None:
            self._respawn_reason = respawn
        if self._one_process_per_task and self._inc is not None:
            await self._stop_process(ladder=False)
        await self._become_available()

    # ---- dialect signals ----------------------------------------------------------------------

    async def _on_signals(self, signals: list[Signal]) -> None:
        # A batch belongs to one process: once a signal made us respawn (e.g. TaskDone, then a
        # refresh), the rest of the batch (its Ready) must not be taken for the new process's.
        inc = self._inc
        # context first: a TaskDone in the same batch is judged against the newest usage. A full
        # context alone does not end the task: Claude Code reads "0% until auto-compact" as soon as a
        # turn crosses its compaction point (2.0.x draws it before that turn's Stop hook) and compacts
        # by itself; only the agent saying the context ran out (TaskFailed "context exhausted") does.
        for signal in signals:
            if isinstance(signal, ContextUsage):
                await self._on_context(signal.used_percent)
        for signal in signals:
            if self._inc is not inc:
                return
            if not isinstance(signal, ContextUsage):
                await self._on_signal(signal)
        if self._inc is not inc:
            return
        if self._state in (WorkerState.IDLE, WorkerState.PAUSED) and self._refresh_reason():
            await self._become_available()

    async def _interrupt_for_context(self) -> None:
        """Context ran out mid-task: the attempt ends `interrupted: context` with the transcript tail
        (the queue requeues it, never silently moved), and the worker respawns fresh (seed P5)."""
        await self._finish_task(
            Outcome.INTERRUPTED,
            respawn="context exhausted mid-task",
            reason="interrupted: context",
            output_tail=self._task_tail(),
        )

    async def _on_context(self, used: float) -> None:
        self._retrying = None  # context is reported from the API's answer: the retry succeeded
        if used != self._context:
            self._context = used
            await self._report(ContextReport(self.id, used))

    async def _on_signal(self, signal: Signal) -> None:
        busy = self._state is WorkerState.BUSY
        if self._retrying is not None and not isinstance(signal, _NOT_PROGRESS):
            self._retrying = None  # the API answered (or the attempt ended)
        if isinstance(signal, Ready):
            if self._awaiting_ready_until is not None:
                self._awaiting_ready_until = None
                self._release_slot()
                await self._become_available()
        elif isinstance(signal, TaskDone):
            if busy:
                await self._finish_task(Outcome.DONE, result=signal.result, usage=dict(signal.usage))
        elif isinstance(signal, TaskFailed):
            if busy and signal.reason.startswith("context exhausted"):
                await self._interrupt_for_context()
            elif busy:
                timeout = signal.reason.startswith("timeout")
                await self._finish_task(
                    Outcome.TIMEOUT if timeout else Outcome.FAILED,
                    respawn="task timed out" if timeout else None,
                    reason=signal.reason,
                    exit_code=signal.exit_code,
                    output_tail=self._task_tail(),
                    usage=dict(signal.usage),  # a failed run still cost tokens and money
                )
        elif isinstance(signal, RateLimited):
            self._last_limit = (self._clock(), signal.reset_at)
            await self._report(RateLimitReport(self.id, self._model, signal.reset_at, signal.message))
            if busy:
                await self._finish_task(Outcome.RATE_LIMITED, reason=signal.message, reset_at=signal.reset_at)
        elif isinstance(signal, NeedsInput):
            await self._on_question(signal)
        elif isinstance(signal, Notice):
            self._notices += 1
            log.info("worker %s: agent notice: %s", self.id, signal.text)
            await self._report(NoticeReport(self.id, self.profile_name, self._model, signal.text))
        elif isinstance(signal, ApiRetry):
            await self._on_api_retry(signal)
        elif isinstance(signal, QuotaReport):
            await self._report(
                QuotaUpdate(
                    self.id,
                    self._model,
                    signal.status,
                    signal.window,
                    signal.resets_at,
                    signal.utilization,
                    signal.overage,
                )
            )
        elif isinstance(signal, ExtraUsage):
            if not self._extra_usage_reported:
                self._extra_usage_reported = True
                task_id = self._task.task_id if self._task is not None else None
                await self._report(ExtraUsageReport(self.id, self._model, task_id, signal.message))
        elif isinstance(signal, ProtocolError):
            reason = f"protocol error: {signal.message}"
            if self._awaiting_ready_until is not None:
                await self._crash(f"{reason} (during start-up)")
            elif busy:
                await self._finish_task(
                    Outcome.FAILED, respawn=reason, reason=reason, output_tail=self._task_tail()
                )
            else:  # between tasks: nothing is lost; keep the reason visible, do not churn the process
                self._reason = reason
                log.warning("worker %s: %s", self.id, reason)

    async def _on_api_retry(self, signal: ApiRetry) -> None:
        """Show the retry on the worker (state stays busy) and report it: the queue watches for a
        storm across workers of one model."""
        wall = self._clock()
        since = self._retrying.since if self._retrying is not None else wall
        self._retrying = RetryInfo(
            attempt=signal.attempt,
            max_retries=signal.max_retries,
            delay_s=signal.delay_s,
            next_at=wall + signal.delay_s if signal.delay_s is not None else None,
            status=signal.status,
            error=signal.error,
            since=since,
        )
        await self._report(
            ApiRetryReport(
                self.id,
                self._model,
                self._task.task_id if self._task is not None else None,
                signal.attempt,
                signal.max_retries,
                signal.delay_s,
                signal.status,
                signal.error,
            )
        )

    async def _on_death(self, inc: _Incarnation) -> None:
        """The process exited on its own (all its output has been read, or DRAIN_S passed)."""
        status = inc.status
        assert status is not None
        inc.drain_deadline = None
        signals = self._guard(inc.dialect.on_exit, status.exit_code, status.signal)
        if self._one_process_per_task:
            if self._state is not WorkerState.BUSY:
                await self._stop_process(ladder=False)
                return
            await self._on_signals(signals)
            if self._state is WorkerState.BUSY and self._inc is inc:
                await self._finish_task(
                    Outcome.FAILED,
                    reason=f"exited without a result ({status.describe()})",
                    exit_code=status.exit_code,
                    signal=status.signal,
                    output_tail=self._task_tail(),
                )
            return
        if self._awaiting_ready_until is not None:
            reason = f"exited during start-up ({status.describe()}){self._last_line_suffix()}"
        else:
            reason = f"agent exited ({status.describe()}){self._last_line_suffix()}"
        await self._crash(reason, status)

    # ---- commands -----------------------------------------------------------------------------

    async def _command(self, cmd: object) -> object:
        if isinstance(cmd, Assign):
            await self._assign(cmd.assignment)
        elif isinstance(cmd, Pause):
            self._paused = True
            if self._state is WorkerState.IDLE:
                await self._set_state(WorkerState.PAUSED, "paused")
        elif isinstance(cmd, Resume):
            self._paused = False
            if self._state is WorkerState.PAUSED:
                await self._become_available()
        elif isinstance(cmd, Restart):
            await self._restart(cmd)
        elif isinstance(cmd, Stop):
            await self._stop_command(cmd)
        elif isinstance(cmd, SetModel):
            await self._set_model(cmd.model)
        elif isinstance(cmd, SetCapabilities):
            caps = cmd.capabilities
            self._capabilities = None if caps is None else frozenset(caps)
        elif isinstance(cmd, SendInput):
            if not isinstance(cmd.data, bytes | bytearray):
                raise ValidationError("data", "must be bytes", type(cmd.data).__name__)
            if self._inc is None:
                raise Conflict(f"worker {self.id} has no running process to send input to")
            self._inc.writes.send_nowait((0.0, bytes(cmd.data)))
            if self._asked is not None:  # taken as the answer: Shoal cannot see whether it was one
                self._question_answered()
                await self._available_again()
        elif isinstance(cmd, AnswerQuestion):
            return await self._answer(cmd.choice)
        elif isinstance(cmd, Resize):
            await self._resize(cmd.rows, cmd.cols)
        else:
            raise ValidationError("command", "unknown worker command", type(cmd).__name__)
        return None

    # ---- questions (protocols/menus.py) -------------------------------------------------------

    def _context_now(self) -> menus.MenuContext:
        """Where the agent runs and which directories Shoal manages (resolved: runs in a thread)."""
        cwd = os.path.realpath(self._cwd or self.profile.cwd or os.getcwd())
        state_dir = self._state_dir if self._state_dir is not None else resolve_state_dir(None)
        managed = [os.path.realpath(state_dir / "workspaces")]
        if not isinstance(self._workspace, SharedDirectory):
            managed.append(cwd)  # a workspace Shoal made for this worker
        if hooks.is_claude(self.profile) and "CLAUDE_CONFIG_DIR" not in self.profile.env:
            managed.append(cwd)  # Shoal prepared the agent's configuration and trusted this directory
        return menus.MenuContext(cwd=cwd, managed=tuple(managed))

    async def _on_question(self, asked: NeedsInput) -> None:
        """The agent asks: the policy answers what it knows; anything else waits for a human."""
        if self._menu_context is None:
            self._menu_context = await trio.to_thread.run_sync(self._context_now)
        decision = menus.decide(asked, self._menu_context)
        task_id = self._task.task_id if self._task is not None else None
        if task_id is None and isinstance(decision, menus.Answer) and decision.park:
            task_id = self._limited_task  # the limit's message ended it a moment ago
        if isinstance(decision, menus.Answer):
            if self._asked is not None:
                self._question_answered()
            if not self._type_answer(
                menus.keys_for(decision.choice, decision.label, asked), menus.ANSWER_DELAY_S
            ):
                return  # the same menu drawn again while its answer is on the way: answered once
            log.info("worker %s: %r answered %d. %s (%s)", self.id, asked.prompt, decision.choice,
                     decision.label, decision.why)  # fmt: skip
            await self._report(
                AnsweredReport(
                    self.id, task_id, asked.prompt, decision.choice, decision.label, "policy", decision.kind
                )
            )
            if decision.park:
                await self._park_for_menu(asked)
            return
        self._question = (asked.prompt, self._clock())
        self._asked, self._asked_at = asked, trio.current_time()
        if self._awaiting_ready_until is not None:
            self._awaiting_ready_until = math.inf  # a start-up question: no timeout while a human decides
        await self._report(
            NeedsInputReport(self.id, task_id, asked.prompt, asked.options, decision.kind, decision.why)
        )

    async def _park_for_menu(self, asked: NeedsInput) -> None:
        """The usage-limit menu: park the model (unless the limit's message just did) and requeue the
        task without counting an attempt."""
        last = self._last_limit
        recent = last is not None and self._clock() - last[0] < LIMIT_RECENT_S
        reset_at = last[1] if last is not None and recent else None
        if not recent:
            self._last_limit = (self._clock(), None)
            await self._report(
                RateLimitReport(self.id, self._model, None, f"usage-limit menu: {asked.prompt}")
            )
        if self._state is WorkerState.BUSY:
            await self._finish_task(Outcome.RATE_LIMITED, reason="usage limit (menu)", reset_at=reset_at)

    async def _answer(self, choice: int | str) -> dict[str, Any]:
        """A human's answer to the pending question; Conflict when nothing is asked."""
        asked = self._asked
        if asked is None or self._inc is None:
            raise Conflict(f"worker {self.id} is not waiting on a question")
        number, label = menus.parse_choice(choice, asked)
        delay = max(0.0, self._asked_at + menus.ANSWER_DELAY_S - trio.current_time())
        self._type_answer(menus.keys_for(number, label, asked), delay, again=True)
        self._question_answered()
        task_id = self._task.task_id if self._task is not None else None
        await self._report(
            AnsweredReport(self.id, task_id, asked.prompt, number, label, "human", menus.kind_of(asked))
        )
        await self._available_again()
        return {"id": self.id, "question": asked.prompt, "choice": number, "label": label}

    async def _available_again(self) -> None:
        """An idle worker that turned a task down while it waited on a question takes work again."""
        if self._refused_while_asked and self._state is WorkerState.IDLE:
            self._refused_while_asked = False
            await self._set_state(WorkerState.IDLE)

    def _question_answered(self) -> None:
        self._question = self._asked = None
        if self._awaiting_ready_until == math.inf:  # start-up goes on: its timeout runs again
            self._awaiting_ready_until = trio.current_time() + self.profile.startup_timeout_s

    def _type_answer(self, keys: bytes, delay: float, *, again: bool = False) -> bool:
        """Type `keys` after `delay`; False when these very keys are already on their way (unless
        `again`: a person answered a new question)."""
        inc = self._inc
        if inc is None:
            return False
        typing = self._typing
        if not again and typing is not None and typing.gen == inc.gen and typing.keys == keys:
            return False
        self._typing = _Typing(inc.gen, keys, trio.current_time() + delay)
        return True

    def _type_due(self, now: float) -> None:
        typing, inc = self._typing, self._inc
        if typing is None:
            return
        if inc is None or inc.gen != typing.gen:
            self._typing = None
            return
        if typing.check_at is None:
            if now < typing.at:
                return
        elif now < typing.check_at:
            return
        elif self._ring.total != typing.mark or typing.tries > menus.RETYPES:
            self._typing = None  # the agent reacted (or never will): done
            return
        if typing.tries:
            log.info(
                "worker %s: the agent did not react to the answer %r: typing it again", self.id, typing.keys
            )
        for i, key in enumerate(k for k in _KEYS.split(typing.keys) if k):
            inc.writes.send_nowait((KEY_GAP_S if i else 0.0, key))  # one key per read, as typed
        typing.mark = self._ring.total
        typing.check_at = now + menus.RETYPE_AFTER_S
        typing.tries += 1

    async def _restart(self, cmd: Restart) -> None:
        if self._state is WorkerState.BUSY:
            if cmd.wait:
                self._restart_after = cmd.reason
            else:
                await self._finish_task(
                    Outcome.INTERRUPTED,
                    respawn=cmd.reason,
                    reason=f"interrupted: {cmd.reason}",
                    output_tail=self._task_tail(),
                )
        else:
            await self._respawn(cmd.reason)

    async def _stop_command(self, cmd: Stop) -> None:
        if self._state is WorkerState.BUSY:
            self._stop_after = cmd.reason
            if not cmd.drain:
                await self._finish_task(
                    Outcome.INTERRUPTED, reason=f"interrupted: {cmd.reason}", output_tail=self._task_tail()
                )
            return
        await self._stop(cmd.reason)

    async def _set_model(self, model: str) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValidationError("model", "must be a non-empty string", model)
        if self.profile.models and model not in self.profile.models:
            raise ValidationError(
                "model", f"profile {self.profile_name!r} runs only {list(self.profile.models)}", model
            )
        if model == self._model:
            return
        self._model = model
        if self._one_process_per_task or "model" not in placeholders(self.profile):
            return  # the next process picks it up (oneshot), or the command line has no {model}
        if self._state in (WorkerState.IDLE, WorkerState.PAUSED):
            await self._respawn(f"model changed to {model}")
        else:
            self._model_changed = True  # after the task, or once the starting process is ready

    async def _resize(self, rows: int, cols: int) -> None:
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFF:
                raise ValidationError(name, "must be an integer between 1 and 65535", value)
        self.profile = attrs.evolve(self.profile, rows=rows, cols=cols)  # kept for respawns
        if self._inc is not None and self._inc.proc.transport == "pty":
            self._inc.proc.resize(rows, cols)
