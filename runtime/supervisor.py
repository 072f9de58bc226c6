"""An OTP-style supervisor for trio tasks: child specs and restart intensity as data.

    sup = Supervisor("core", [ChildSpec("queue", queue.run), ChildSpec("metrics", metrics.run)])
    address = await nursery.start(sup.run)

Children start in order through `nursery.start` (each reports readiness with `task_status.started`)
and stop in reverse order, one at a time, each given `shutdown_s` after its cancellation. A child
exit is restarted per its `restart` type (permanent: always, transient: only after an exception,
temporary: never) and the supervisor's strategy (one_for_one: that child; one_for_all: every child,
the others stopped first in reverse order; rest_for_one: that child and every child started after
it, those stopped first in reverse order: for children that depend on the ones before them).
More than `max_restarts` restarts within `period_s`
stops every child and raises `SupervisorEscalation` into the parent nursery.

Each running child sits in its own shielded cancel scope, so cancelling the parent does not hit all
children at once: the supervisor notices, then stops them in reverse start order. trio cannot kill a
task; a child that is still running `shutdown_s` after its cancellation (a shielded cleanup, a
blocking call) is recorded as abandoned and the shutdown moves on, but `run` only returns once it
has finally exited.

The supervisor is itself an actor: `start_child`, `terminate_child`, `kill_child`, `which_children`
and `stop` are calls into its mailbox, processed one at a time with child exits and restart timers.
`kill_child` is OTP's `exit(Pid, Reason)`: the child is cancelled and its exit counts as a crash
(`ChildKilled`), so an operator or a test can see the restart policy act on a running tree.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import attrs
import trio

from ..protocols.config import BackoffConfig
from ..protocols.errors import Conflict, NotFound, ShoalError, ValidationError
from .actor import ActorGone, Address, Call, Mailbox
from .backoff import BackoffState, RestartIntensity
from .eventbus import EventBus

__all__ = [
    "ChildInfo",
    "ChildKilled",
    "ChildSpec",
    "ChildStartFailed",
    "KillChild",
    "RestartRecord",
    "StartChild",
    "Stop",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorEvent",
    "TerminateChild",
    "WhichChildren",
]

log = logging.getLogger(__name__)

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")


def _check_id(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError("child_spec.id", "must be a non-empty string", value)


def _check_start(_inst: object, _attr: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise ValidationError("child_spec.start", "must be an async callable taking task_status", value)


def _check_restart(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if value not in RESTART_TYPES:
        raise ValidationError("child_spec.restart", f"must be one of {', '.join(RESTART_TYPES)}", value)


def _check_shutdown(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and value >= 0 and not math.isnan(value)):
        raise ValidationError("child_spec.shutdown_s", "must be a number >= 0 (inf: wait forever)", value)


def _check_backoff(_inst: object, _attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, BackoffConfig):
        raise ValidationError("child_spec.backoff", "must be a BackoffConfig or None", value)


@attrs.frozen
class ChildSpec:
    """How to run one child. `start` is called as `await start(task_status=...)` for every start."""

    id: str = attrs.field(validator=_check_id)
    start: Callable[..., Awaitable[object]] = attrs.field(validator=_check_start)
    restart: Restart = attrs.field(default="permanent", validator=_check_restart)
    shutdown_s: float = attrs.field(default=5.0, validator=_check_shutdown)
    backoff: BackoffConfig | None = attrs.field(default=None, validator=_check_backoff)


@attrs.frozen
class RestartRecord:
    """One restart decision: which child, when (trio time), and why (None: it returned normally)."""

    child_id: str
    at: float
    error: BaseException | None


@attrs.frozen
class SupervisorEvent:
    """What the supervisor did, for an `on_event` callback (and, flattened, for an EventBus).

    kind: started | start_failed | exited | restarting | stopped | shutdown_timeout | escalated
    """

    kind: str
    supervisor: str
    child_id: str
    at: float
    error: BaseException | None = None
    delay: float | None = None  # restarting: seconds until the restart; shutdown_timeout: shutdown_s


@attrs.frozen
class ChildInfo:
    id: str
    status: Literal["running", "waiting"]  # waiting: a restart is pending (backoff, one_for_all)
    value: Any  # what the child passed to task_status.started(), e.g. its Address
    restarts: int
    started_at: float | None
    restart: str = "permanent"  # the spec's restart type
    last_error: str | None = None  # repr of the last crash's exception
    last_crash_at: float | None = None  # trio time of the last crash


class SupervisorEscalation(ShoalError):
    """Restart intensity exceeded: the supervisor stopped its children and gives up to its parent."""

    def __init__(
        self,
        supervisor: str,
        child_id: str,
        history: tuple[RestartRecord, ...],
        max_restarts: int,
        period_s: float,
    ) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.history = history
        self.error = history[-1].error if history else None  # the last exit's exception, if any
        why = "returned" if self.error is None else repr(self.error)
        super().__init__(
            f"supervisor {supervisor!r}: more than {max_restarts} restarts within {period_s:g} s; "
            f"last was child {child_id!r} ({why})"
        )


class ChildStartFailed(ShoalError):
    """A child raised (or returned) before calling task_status.started(); the cause is chained."""

    def __init__(self, supervisor: str, child_id: str, error: BaseException) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.error = error
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} failed to start: {error!r}")


class ChildKilled(ShoalError):
    """The exit reason of a child ended by `kill_child`: a crash, with the reason given."""

    def __init__(self, child_id: str, reason: str) -> None:
        self.child_id = child_id
        self.reason = reason
        super().__init__(f"child {child_id!r} killed: {reason}")


# Public messages: send them as calls to the supervisor's address (the methods below do).
@attrs.frozen
class StartChild:
    spec: ChildSpec


@attrs.frozen
class TerminateChild:
    id: str


@attrs.frozen
class KillChild:
    id: str
    reason: str


@attrs.frozen
class WhichChildren:
    pass


@attrs.frozen
class Stop:
    pass


@attrs.define(eq=False)
class _Run:
    """One incarnation of a child: its cancel scope and the event set when its task has ended."""

    generation: int
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    stopping: bool = False  # the supervisor cancelled it: its exit is not a crash
    killed: ChildKilled | None = None  # kill_child cancelled it: its exit is this crash


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    backoff: BackoffState | None
    status: Literal["new", "running", "waiting"] = "new"
    run: _Run | None = None
    generation: int = 0
    value: Any = None
    restarts: int = 0
    started_at: float | None = None
    due_token: int = -1  # the pending restart timer that may still restart it
    last_error: BaseException | None = None
    last_crash_at: float | None = None


@attrs.frozen
class _Exited:
    child: _Child
    generation: int
    error: Exception | None


@attrs.frozen
class _RestartDue:
    child: _Child | None  # None: the one_for_all restart of every waiting child
    token: int


class _ChildStatus(trio.TaskStatus[Any]):
    """Forwards `started` and then shields the child, so only the supervisor can cancel it."""

    def __init__(self, inner: trio.TaskStatus[Any], run: _Run) -> None:
        self._inner = inner
        self._run = run
        self.called = False

    def started(self, value: Any = None) -> None:
        self._inner.started(value)
        self.called = True
        # If the starter was cancelled meanwhile, trio left the task under it (effectively
        # cancelled): shielding it then would hang that start, so only shield a moved child.
        if trio.current_effective_deadline() != -math.inf:
            self._run.scope.shield = True


class Supervisor:
    """Runs child specs under a restart strategy. Start with `await nursery.start(sup.run)`."""

    def __init__(
        self,
        name: str,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        period_s: float = 5.0,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        bus: EventBus | None = None,
        topic: str = "supervisor",
        rng: random.Random | None = None,
        mailbox_size: int = 64,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValidationError("strategy", f"must be one of {', '.join(STRATEGIES)}", strategy)
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._intensity = RestartIntensity(max_restarts, period_s)
        self._history: deque[RestartRecord] = deque(maxlen=max_restarts + 1)
        self._on_event = on_event
        self._bus = bus
        self._topic = topic
        self._rng = rng if rng is not None else random.Random()
        self._mailbox_size = mailbox_size
        self._children: dict[str, _Child] = {}
        for spec in children:
            self._add(spec, "children")
        self._pending: deque[_Exited] = deque()
        self._tokens = itertools.count()
        self._all_token = -1
        self._nursery: trio.Nursery | None = None
        self._stop_call: Call[Any] | None = None
        self._ran = False
        self.address: Address[Any] | None = None
        self.restarts = 0  # restarts performed so far
        self.abandoned: list[str] = []  # ids of children that outlived their shutdown_s

    # -- public API (calls into the running supervisor) -------------------------------------

    async def start_child(self, spec: ChildSpec, timeout: float | None = None) -> Any:
        """Start and supervise `spec`; returns its started value. Conflict if the id is taken."""
        return await self._call(StartChild(spec), timeout)

    async def terminate_child(self, child_id: str, timeout: float | None = None) -> None:
        """Stop the child (cancellation, then up to shutdown_s) and forget its spec. NotFound."""
        await self._call(TerminateChild(child_id), timeout)

    async def kill_child(self, child_id: str, reason: str = "killed", timeout: float | None = None) -> None:
        """End a running child as a crash (`ChildKilled(reason)`); its restart policy then acts."""
        await self._call(KillChild(child_id, reason), timeout)

    async def which_children(self, timeout: float | None = 10.0) -> list[ChildInfo]:
        result: list[ChildInfo] = await self._call(WhichChildren(), timeout)
        return result

    async def stop(self, timeout: float | None = None) -> None:
        """Stop every child in reverse start order; returns when that is done. `run` then returns."""
        await self._call(Stop(), timeout)

    async def _call(self, message: object, timeout: float | None) -> Any:
        if self.address is None:
            raise ActorGone(self.name)
        return await self.address.call(message, timeout)

    # -- the actor --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Address[Any]] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, report the address, supervise until stopped or escalated."""
        if self._ran:
            raise Conflict(f"supervisor {self.name!r} has already run; create a new one")
        self._ran = True
        failure: SupervisorEscalation | ChildStartFailed | None = None
        async with Mailbox[Any](self.name, self._mailbox_size) as mailbox:
            self.address = mailbox.address
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for child in list(self._children.values()):
                        await self._launch(child)
                    task_status.started(mailbox.address)
                    failure = await self._serve(mailbox)
                except ChildStartFailed as exc:
                    failure = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown()
                    nursery.cancel_scope.cancel()  # pending restart timers
                    if self._stop_call is not None:
                        self._stop_call.reply()
        if failure is not None:
            raise failure from failure.error

    async def _serve(self, mailbox: Mailbox[Any]) -> SupervisorEscalation | None:
        async for msg in mailbox:
            call = msg if isinstance(msg, Call) else None
            payload = msg.payload if isinstance(msg, Call) else msg
            try:
                if isinstance(payload, _Exited):
                    self._pending.append(payload)
                elif isinstance(payload, _RestartDue):
                    await self._restart_due(payload)
                elif isinstance(payload, StartChild):
                    self._reply(call, await self._start_new(payload.spec))
                elif isinstance(payload, TerminateChild):
                    await self._terminate(payload.id)
                    self._reply(call, None)
                elif isinstance(payload, KillChild):
                    self._kill(payload.id, payload.reason)
                    self._reply(call, None)
                elif isinstance(payload, WhichChildren):
                    self._reply(call, self._info())
                elif isinstance(payload, Stop):
                    self._stop_call = call
                    return None
                else:
                    raise ValidationError("message", "not a supervisor message", payload)
            except ShoalError as exc:  # the request was refused; the supervisor goes on
                if call is not None:
                    call.fail(exc)
                else:
                    log.warning("supervisor %r: %s", self.name, exc)
            while self._pending:
                escalation = await self._on_exit(self._pending.popleft())
                if escalation is not None:
                    return escalation
        return None

    @staticmethod
    def _reply(call: Call[Any] | None, value: Any) -> None:
        if call is not None:
            call.reply(value)

    # -- starting and stopping children -----------------------------------------------------

    def _add(self, spec: ChildSpec, where: str) -> _Child:
        if not isinstance(spec, ChildSpec):
            raise ValidationError(where, "must be a ChildSpec", spec)
        if spec.id in self._children:
            raise Conflict(f"supervisor {self.name!r} already has a child {spec.id!r}")
        backoff = BackoffState(spec.backoff, self._rng) if spec.backoff is not None else None
        child = _Child(spec, backoff)
        self._children[spec.id] = child
        return child

    async def _start_new(self, spec: ChildSpec) -> Any:
        child = self._add(spec, "spec")
        try:
            await self._launch(child)
        except ChildStartFailed:
            del self._children[spec.id]
            raise
        return child.value

    async def _launch(self, child: _Child) -> None:
        """Start one incarnation; ChildStartFailed if it fails before task_status.started()."""
        assert self._nursery is not None
        child.generation += 1
        run = _Run(child.generation)
        try:
            value = await self._nursery.start(
                self._supervise, child, run, name=f"{self.name}/{child.spec.id}"
            )
        except Exception as exc:
            child.status = "waiting"
            self._emit("start_failed", child.spec.id, error=exc)
            raise ChildStartFailed(self.name, child.spec.id, exc) from exc
        now = trio.current_time()
        if child.run is not None:
            child.restarts += 1
            self.restarts += 1
        child.run, child.value, child.status, child.started_at = run, value, "running", now
        if child.backoff is not None:
            child.backoff.started(now)
        self._emit("started", child.spec.id)

    async def _supervise(self, child: _Child, run: _Run, *, task_status: trio.TaskStatus[Any]) -> None:
        """The child's task: run it in its own cancel scope, then tell the supervisor how it ended."""
        status = _ChildStatus(task_status, run)
        error: Exception | None = None
        try:
            with run.scope:
                await child.spec.start(task_status=status)
        except Exception as exc:
            if not status.called:
                raise  # nursery.start() re-raises it in the supervisor
            error = exc
        finally:
            run.done.set()
        if run.killed is not None:
            error = run.killed
        if status.called and not run.stopping and self.address is not None:
            try:
                await self.address.send(_Exited(child, run.generation, error))
            except ActorGone:
                pass  # the supervisor is shutting down

    async def _stop(self, child: _Child) -> None:
        """Cancel a running child and wait up to its shutdown_s for it to end."""
        run = child.run
        assert run is not None
        run.stopping = True
        run.scope.cancel()
        with trio.move_on_after(child.spec.shutdown_s):
            await run.done.wait()
        child.status = "waiting"
        if run.done.is_set():
            self._emit("stopped", child.spec.id)
        else:
            self.abandoned.append(child.spec.id)
            log.error(
                "supervisor %r: child %r did not stop within %g s; abandoned (still running)",
                self.name,
                child.spec.id,
                child.spec.shutdown_s,
            )
            self._emit("shutdown_timeout", child.spec.id, delay=child.spec.shutdown_s)

    async def _shutdown(self) -> None:
        for child in reversed(list(self._children.values())):
            if child.status == "running":
                await self._stop(child)

    def _kill(self, child_id: str, reason: str) -> None:
        child = self._children.get(child_id)
        if child is None:
            raise NotFound("child", child_id)
        if child.status != "running" or child.run is None:
            raise Conflict(f"child {child_id!r} of supervisor {self.name!r} is not running")
        child.run.killed = ChildKilled(child_id, reason)
        child.run.scope.cancel()

    async def _terminate(self, child_id: str) -> None:
        child = self._children.get(child_id)
        if child is None:
            raise NotFound("child", child_id)
        if child.status == "running":
            await self._stop(child)
        del self._children[child_id]

    # -- restarts ----------------------------------------------------------------------------

    async def _on_exit(self, exited: _Exited) -> SupervisorEscalation | None:
        child = exited.child
        spec = child.spec
        if self._children.get(spec.id) is not child or child.generation != exited.generation:
            return None  # stale: already stopped, replaced or restarted
        child.status = "waiting"
        now = trio.current_time()
        if exited.error is not None:
            child.last_error, child.last_crash_at = exited.error, now
            log.warning("supervisor %r: child %r crashed: %r", self.name, spec.id, exited.error)
        self._emit("exited", spec.id, error=exited.error)
        if spec.restart == "temporary" or (spec.restart == "transient" and exited.error is None):
            del self._children[spec.id]
            return None
        self._history.append(RestartRecord(spec.id, now, exited.error))
        if self._intensity.record(now):
            history = tuple(r for r in self._history if now - r.at < self.period_s)
            log.error("supervisor %r: restart intensity exceeded by child %r", self.name, spec.id)
            self._emit("escalated", spec.id, error=exited.error)
            return SupervisorEscalation(self.name, spec.id, history, self.max_restarts, self.period_s)
        if self.strategy != "one_for_one":
            for other in reversed(self._siblings_to_restart(child)):
                if other is not child and other.status == "running":
                    await self._stop(other)
                    if other.spec.restart == "temporary":
                        del self._children[other.spec.id]
        delay = child.backoff.next_delay(now) if child.backoff is not None else 0.0
        self._emit("restarting", spec.id, delay=delay)
        token = next(self._tokens)
        if self.strategy != "one_for_one":
            self._all_token = token
            due = _RestartDue(None, token)
        else:
            child.due_token = token
            due = _RestartDue(child, token)
        if delay > 0:
            assert self._nursery is not None
            self._nursery.start_soon(self._timer, delay, due)
        else:
            await self._restart_due(due)
        return None

    def _siblings_to_restart(self, child: _Child) -> list[_Child]:
        """one_for_all: every child; rest_for_one: this child and those started after it."""
        children = list(self._children.values())
        if self.strategy == "rest_for_one":
            return children[children.index(child) :]
        return children

    async def _timer(self, delay: float, due: _RestartDue) -> None:
        await trio.sleep(delay)
        if self.address is not None:
            try:
                await self.address.send(due)
            except ActorGone:
                pass

    async def _restart_due(self, due: _RestartDue) -> None:
        if due.child is not None:
            child = due.child
            current = self._children.get(child.spec.id) is child and child.due_token == due.token
            targets = [child] if current and child.status == "waiting" else []
        elif due.token == self._all_token:
            targets = [c for c in self._children.values() if c.status == "waiting"]
        else:
            targets = []
        for child in targets:
            try:
                await self._launch(child)
            except ChildStartFailed as exc:
                # counts as a crash of that child: restart intensity, backoff, strategy all apply
                self._pending.append(_Exited(child, child.generation, exc))
                break

    # -- observation -------------------------------------------------------------------------

    def _info(self) -> list[ChildInfo]:
        return [
            ChildInfo(
                c.spec.id,
                "running" if c.status == "running" else "waiting",
                c.value,
                c.restarts,
                c.started_at,
                c.spec.restart,
                None if c.last_error is None else repr(c.last_error),
                c.last_crash_at,
            )
            for c in self._children.values()
        ]

    def _emit(
        self, kind: str, child_id: str, *, error: BaseException | None = None, delay: float | None = None
    ) -> None:
        event = SupervisorEvent(kind, self.name, child_id, trio.current_time(), error, delay)
        if self._bus is not None:
            data = {
                "supervisor": self.name,
                "child": child_id,
                "error": None if error is None else repr(error),
                "delay": delay,
                "restarts": self.restarts,
            }
            self._bus.publish(f"{self._topic}.{kind}", data)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("supervisor %r: on_event callback failed", self.name)
