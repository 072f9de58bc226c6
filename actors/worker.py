"""The WorkerActor: one agent process, driven through its dialect, reporting to its owner.

The actor owns one process at a time (an *incarnation*: process, dialect, and three small tasks that
read its output, wait for its exit and write its input). Output is recorded in a ring buffer, fanned
out to attach subscribers and fed to the dialect *by the reader task*, so the child can always write
and never blocks on us; the dialect's signals, process exits and mailbox commands all reach one main
loop through an internal channel, which makes every state decision in one place, in order.

States: starting → idle ⇄ busy → (refreshing → idle) → stopping → stopped | crashed, plus paused.
An idle worker has no timers: CPU and memory are sampled only while busy, or when `info()` asks.

This module holds the state machine's handlers: the main loop and its timers, the dialect's signals,
the mailbox's commands and the agent's questions. The state and the transitions they share (spawn,
respawn, stop, the end of an attempt) are in worker_core.py; the process's I/O (spawn, the reader,
writer and exit tasks, the output ring) in worker_io.py; what is typed into the agent (a task's
prompt and its Enter, a menu's answer) in worker_input.py.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ..protocols import menus
from ..protocols.dialects.base import (
    ApiRetry,
    ContextUsage,
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
from ..protocols.errors import Conflict, ShoalError, ValidationError
from ..protocols.profiles import placeholders
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
    Stop,
    TaskFinished,
    WorkerCommand,
    WorkerState,
)
from ..runtime.actor import Address, Call, Mailbox
from . import hooks
from .auth import resolve_state_dir
from .process import SpawnError
from .worker_core import Finished, WorkerCore, WorkerExit, start_up_slots
from .worker_io import Eof, Exited, Incarnation, OutputRing, Signals, clean_text
from .worker_resume import plan_resume
from .workspace import SharedDirectory, WorkspaceError

__all__ = ["OutputRing", "WorkerActor", "WorkerExit", "clean_text", "start_up_slots"]

log = logging.getLogger("shoal.worker")

DRAIN_S = 0.5  # after the child exits, how long to wait for the rest of its output
LIMIT_RECENT_S = 60.0  # a usage-limit menu this soon after a usage-limit message: already parked

_NOT_PROGRESS = (ApiRetry, Notice, QuotaReport, ExtraUsage)  # signals that do not end a retry


class WorkerActor(WorkerCore):
    """One agent process per its profile, driven through its dialect; reports go to `reports`.

    `run()` spawns the process (raising `SpawnError` before `task_status.started` if the command
    cannot run), reports STARTING, then IDLE once the dialect says Ready, and serves its mailbox of
    `WorkerCommand`s until it is stopped (returns `WorkerExit(crashed=False)`), its process dies or
    fails to start (CRASHED, `WorkerExit(crashed=True)`), or it is cancelled (the process is still
    killed and reaped). `spawn_limiter` paces start-ups across workers (a slot is held from spawn
    until Ready, at most SLOT_HOLD_S) so a burst of spawns does not starve the event loop of CPU.
    """

    # ---- run and the main loop --------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Address[WorkerCommand]] = trio.TASK_STATUS_IGNORED
    ) -> WorkerExit:
        async with Mailbox[WorkerCommand](f"worker:{self.id}") as mailbox:
            try:
                await self._first_start()  # SpawnError / ValidationError: raised before started
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self._inc is not None:
                        nursery.start_soon(self._inc.run, self._post, self._output.record)
                    nursery.start_soon(self._forward, mailbox)
                    task_status.started(mailbox.address)
                    result = await self._serve()
                    nursery.cancel_scope.cancel()
                return result
            finally:
                await self._teardown()

    async def _forward(self, mailbox: Mailbox[WorkerCommand]) -> None:
        """Commands join the process's events in the loop's one channel, COMMANDS_IN_FLIGHT at a
        time: the rest wait in the bounded mailbox, so a sender feels a busy worker (its mailbox
        fills) instead of an unbounded channel growing behind it."""
        while True:
            await self._command_room.acquire()  # released when the loop takes a command
            try:
                msg = await mailbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._post(msg)

    async def _serve(self) -> WorkerExit:
        try:
            await self._set_state(WorkerState.STARTING)
            if self._one_process_per_task:
                await self._become_available()
            await self._loop()
        except Finished as finished:
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
        candidates += self._keys.deadlines()
        if self._state is WorkerState.BUSY:
            candidates.append(self._sample_at)
        inc = self._inc
        if inc is not None:
            candidates.append(inc.drain_deadline)
            candidates.append(inc.dialect.next_deadline())
        return min((c for c in candidates if c is not None), default=math.inf)

    async def _handle(self, event: object) -> None:
        inc = self._inc
        if isinstance(event, Signals):
            if inc is not None and event.gen == inc.gen:
                await self._on_signals(event.signals)
        elif isinstance(event, Eof):
            if inc is not None and event.gen == inc.gen:
                inc.eof = True
                if inc.status is not None:
                    await self._on_death(inc)
        elif isinstance(event, Exited):
            if inc is not None and event.gen == inc.gen:
                inc.status = event.status
                if inc.eof:
                    await self._on_death(inc)
                else:
                    inc.drain_deadline = trio.current_time() + DRAIN_S
        elif isinstance(event, Call):
            self._command_room.release()
            try:
                value = await self._command(event.payload)
            except Finished as finished:
                event.reply(finished.result)
                raise
            except (ShoalError, TypeError, ValueError) as exc:
                event.fail(exc)
            else:
                event.reply(value)
        else:
            self._command_room.release()
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
        task_id = self._task.task_id if self._task is not None else None
        self._keys.on_time(now, self._inc, self._ring.total, task_id)
        inc = self._inc
        if inc is not None:
            deadline = inc.dialect.next_deadline()
            if deadline is not None and now >= deadline:
                signals = inc.guard(inc.dialect.tick, now)
                if signals:
                    await self._on_signals(signals)
        if self._state is WorkerState.BUSY and self._sample_at is not None and now >= self._sample_at:
            self._sample(time.monotonic())
            self._sample_at = now + self._config.sample_interval_s

    # ---- tasks ------------------------------------------------------------------------------------

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
            where = await self._workspace.prepare(assignment)
        except WorkspaceError as exc:  # the task cannot run here; the worker can run the next one
            await self._finish_task(Outcome.FAILED, reason=f"workspace: {exc}")
            return
        resume = await self._plan_continuation(assignment, where)
        if self._one_process_per_task:
            try:
                await self._start_process(prompt=assignment.prompt, extra_args=resume or ())
            except (SpawnError, ValidationError) as exc:
                await self._crash(f"cannot start the task's process: {exc}")
        elif resume is not None:
            await self._move_agent(resume)  # the dependency's conversation, resumed in its directory
            return
        elif where is not None and where != self._cwd:
            await self._move_agent()  # a task in another repository: the agent starts there first
            return
        self._write_task(assignment)
        await self._set_state(WorkerState.BUSY)

    async def _plan_continuation(self, assignment: Assignment, where: str | None) -> list[str] | None:
        """A task continuing a dependency's conversation: the arguments that resume it here, or None
        (it runs fresh; `_continued` records why, for the attempt's record)."""
        self._continued = None
        if assignment.continuation is None:
            return None
        here = where if where is not None else await self._workspace.directory()
        args, self._continued = plan_resume(
            assignment.continuation, self.profile, self.profile_name, here or os.getcwd()
        )
        if args is not None and not self._one_process_per_task:
            # the resumed conversation is the dependency's: the next task gets a fresh process whatever
            # workspace.fresh_context says
            self._respawn_reason = "a fresh conversation after a resumed one"
        return args

    def _write_task(self, assignment: Assignment) -> None:
        """Hand the task to the dialect and type its prompt into the agent."""
        inc = self._inc
        assert inc is not None
        now = trio.current_time()
        inc.dialect.start_task(assignment, now)
        self._keys.write_task(inc, assignment, now)
        if self._one_process_per_task and inc.proc.transport == "pipe":
            inc.end_input()  # end of input: a oneshot agent must not wait on stdin

    async def _move_agent(self, extra_args: Sequence[str] = ()) -> None:
        """The task's workspace is another directory than the one the agent runs in (a task in another
        repository than the last one's, actors/workrepos.py), or the task resumes a conversation
        (`extra_args`, the profile's resume_args): a new process, the task written once it is ready
        (`_on_signal`, Ready). It stays busy meanwhile; a start that fails or times out crashes the
        attempt as any start-up does."""
        self._task_waits_ready = True
        await self._stop_process(ladder=True)
        try:
            await self._start_process(extra_args=extra_args)
        except (SpawnError, ValidationError) as exc:
            await self._crash(f"cannot start the agent in the task's workspace: {exc}")
        await self._set_state(WorkerState.BUSY)

    # ---- dialect signals --------------------------------------------------------------------------

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
                if self._task_waits_ready and self._task is not None:
                    self._task_waits_ready = False
                    self._task_out_start = self._ring.total  # the task's output, not the start-up's
                    self._write_task(self._task)
                else:
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

    async def _on_death(self, inc: Incarnation) -> None:
        """The process exited on its own (all its output has been read, or DRAIN_S passed)."""
        status = inc.status
        assert status is not None
        inc.drain_deadline = None
        signals = inc.guard(inc.dialect.on_exit, status.exit_code, status.signal)
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

    # ---- commands ---------------------------------------------------------------------------------

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
            if not self._inc.room(len(cmd.data)):
                raise Conflict(
                    f"worker {self.id}: its agent is not reading its input ({self._inc.pending} bytes wait)"
                )
            self._inc.write(bytes(cmd.data))
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

    # ---- questions (protocols/menus.py) -----------------------------------------------------------

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
            keys = menus.keys_for(decision.choice, decision.label, asked)
            if not self._keys.type_answer(self._inc, keys, menus.ANSWER_DELAY_S, trio.current_time()):
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
        self._keys.type_answer(
            self._inc, menus.keys_for(number, label, asked), delay, trio.current_time(), again=True
        )
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
