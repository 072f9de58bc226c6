"""The WorkerActor's state and the transitions its handlers share: spawn, respawn and stop its
process, report each state, end an attempt (the workspace keeps its work, its check decides done).

actors/worker.py holds the handlers (the main loop, the dialect's signals, commands, questions) and
subclasses this; actors/worker_io.py the process's I/O, actors/worker_input.py what is typed into it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from ..protocols import menus
from ..protocols.config import ProfileConfig, WorkersConfig
from ..protocols.dialects import make_dialect
from ..protocols.dialects.base import Dialect, NeedsInput
from ..protocols.dialects.common import last_words
from ..protocols.errors import ShoalError, ValidationError
from ..protocols.profiles import render_argv
from ..protocols.tasks import Assignment, Outcome
from ..protocols.workers import (
    RetryInfo,
    StateChanged,
    TaskFinished,
    WorkerInfo,
    WorkerReport,
    WorkerState,
)
from ..runtime.actor import ActorGone
from .process import ExitStatus, SpawnError, resolve_command
from .worker_input import Keystrokes
from .worker_io import Incarnation, Output, OutputRing, Signals, clean_text, start_incarnation
from .workspace import SharedDirectory, Workspace

log = logging.getLogger("shoal.worker")
WORKSPACE_TIMEOUT_S = 60.0  # a workspace's finish/aclose (a git commit, a reset) is given this long

TAIL_BYTES = 4096  # output tail attached to a crashed/interrupted attempt (the transcript handoff)
LAST_WORDS_BYTES = 8192  # output searched for a crash reason's last words (a TUI frame is mostly escapes)
SLOT_HOLD_S = 1.0  # a start-up slot is held until Ready, or this long at most
COMMANDS_IN_FLIGHT = 1  # mailbox commands moved into the loop's channel ahead of being handled


def start_up_slots() -> int:
    """Recommended size of the shared `spawn_limiter`: one agent initialising per core, keeping one
    core for the event loop (measured in docs/workers.md: more slots start faster but let the
    starting agents delay the loop's own spawns)."""
    return max(1, (os.cpu_count() or 2) - 1)


class ReportSink(Protocol):
    """Where a worker's reports go, in order, with backpressure: the worker supervisor's mailbox
    (an `Address`), or a memory channel in tests."""

    async def send(self, value: WorkerReport, /) -> None: ...


@attrs.frozen
class WorkerExit:
    """What `WorkerActor.run` returns: why the worker ended and how its last process exited."""

    crashed: bool
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None


class Finished(Exception):
    """Raised inside the main loop when the worker has ended (stopped or crashed)."""

    def __init__(self, result: WorkerExit) -> None:
        super().__init__(result.reason)
        self.result = result


class WorkerCore:
    """What a worker is (its state, its process, its running attempt) and the transitions between
    states; `WorkerActor` (actors/worker.py) decides when to take them."""

    def __init__(
        self,
        worker_id: str,
        lineage: str,
        profile_name: str,
        profile: ProfileConfig,
        model: str | None,
        capabilities: frozenset[str] | None,
        reports: ReportSink,
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
        self._keys = Keystrokes(worker_id)  # a menu's answer being typed, the task's Enter watched
        self._last_limit: tuple[float, float | None] | None = None  # (wall s, reset_at) of the last limit
        self._limited_task: str | None = None  # the task the last usage limit ended
        self._refused_while_asked = False  # an idle worker turned a task down while a question was open
        self._retrying: RetryInfo | None = None  # the agent's client retries an API request
        self._notices = 0
        self._extra_usage_reported = False  # once per process: a TUI footer repeats on every frame
        self._started_wall = clock()
        self._inc: Incarnation | None = None
        self._gen = 0
        self._nursery: trio.Nursery | None = None
        # the process's signals, EOF and exit (never held back: the reader must not block on us),
        # and mailbox commands, at most COMMANDS_IN_FLIGHT of them (see WorkerActor._forward)
        self._events_send, self._events = trio.open_memory_channel[object](math.inf)
        self._command_room = trio.Semaphore(COMMANDS_IN_FLIGHT)
        self._one_process_per_task = profile.dialect == "oneshot"

        self._task: Assignment | None = None
        self._task_waits_ready = False  # the agent moved to the task's workspace: write it on Ready
        self._continued: dict[str, Any] | None = None  # the task continues a dependency's conversation
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
        self._output = Output(config.ring_buffer_kib * 1024)
        self._ring: OutputRing = self._output.ring

    # ---- read-only accessors (sync: listings of many workers) -------------------------------------

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
        return self._output.subscribe(size)

    def unsubscribe_output(self, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        self._output.unsubscribe(channel)

    @property
    def dropped_chunks(self) -> int:
        """Live-output chunks a slow subscriber did not get."""
        return self._output.dropped_chunks

    # ---- the process ------------------------------------------------------------------------------

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
                await inc.aclose(grace=min(self.profile.stop_timeout_s, 1.0))
            self._release_slot()
            self._output.close()
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

    def _argv(self, prompt: str | None = None) -> list[str]:
        return render_argv(self.profile, model=self._model, prompt=prompt, worker=self.id, cwd=self._cwd)

    async def _start_process(
        self,
        *,
        dialect: Dialect | None = None,
        prompt: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Spawn a new incarnation (`extra_args` after the profile's argv: a conversation to resume).
        Raises SpawnError/ValidationError (the caller decides the state)."""
        self._extra_usage_reported = False
        if dialect is None:
            dialect = self._make_dialect()
        self._cwd = await self._workspace.directory()
        self._menu_context = None  # worked out again for this directory when a question comes
        argv = [*self._argv(prompt), *extra_args]
        env = {**self.profile.env, "SHOAL_WORKER": self.id, "SHOAL_LINEAGE": self.lineage}
        persistent = not self._one_process_per_task
        if persistent and self._limiter is not None:
            token = object()
            await self._limiter.acquire_on_behalf_of(token)
            self._slot = token
        try:
            inc = await start_incarnation(
                self._gen + 1,
                self.id,
                argv,
                env,
                self._cwd,
                dialect,
                self.profile_name,
                self.profile,
                self._state_dir,
            )
        except BaseException:
            self._release_slot()
            raise
        self._gen = inc.gen
        self._inc = inc
        now = trio.current_time()
        if self._slot is not None:
            self._slot_release_at = now + SLOT_HOLD_S
        if persistent:
            self._awaiting_ready_until = now + self.profile.startup_timeout_s
        self._sampled_at = -math.inf
        if self._nursery is not None:  # else `run` starts it once its nursery is open
            self._nursery.start_soon(inc.run, self._post, self._output.record)
        # a dialect may be ready without any output (e.g. JSON lines): give it a first tick
        signals = inc.guard(dialect.tick, now)
        if signals:
            self._post(Signals(inc.gen, signals))

    async def _stop_process(self, *, ladder: bool) -> tuple[ExitStatus | None, str]:
        """End the current incarnation (stop ladder, or straight kill) and close everything."""
        inc, self._inc = self._inc, None
        starting = self._awaiting_ready_until is not None
        self._awaiting_ready_until = None
        self._release_slot()
        if inc is None:
            return None, "none"
        return await inc.stop(ladder=ladder, starting=starting, timeout_s=self.profile.stop_timeout_s)

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

    # ---- reports and states -----------------------------------------------------------------------

    async def _report(self, report: WorkerReport) -> None:
        try:
            await self._reports.send(report)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ActorGone):
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
        raise Finished(
            WorkerExit(True, reason, status.exit_code if status else None, status.signal if status else None)
        )

    async def _stop(self, reason: str) -> None:
        await self._set_state(WorkerState.STOPPING, reason)
        status, rung = await self._stop_process(ladder=True)
        if rung in ("sigterm", "sigkill"):
            reason = f"{reason} (after {rung.upper()})"
        await self._set_state(WorkerState.STOPPED, reason, status=status)
        raise Finished(
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

    # ---- the end of an attempt --------------------------------------------------------------------

    async def _end_attempt(self, outcome: Outcome, **fields: Any) -> None:
        task, self._task = self._task, None
        self._task_waits_ready = False
        self._keys.submit = None
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
        continued, self._continued = self._continued, None
        if continued is not None:  # resumed the dependency's conversation, or why it could not
            record = {**(record or {}), **continued}
        usage = fields.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("session_id"), str):
            # a dependant may resume this conversation: only where the agent ran (actors/worker_resume.py)
            fields["usage"] = {**usage, "session_cwd": self._cwd or os.getcwd()}
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
