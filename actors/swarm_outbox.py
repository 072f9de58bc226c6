"""The worker supervisor's I/O: the outbox its handlers fill and the loop flushes after each message,
the publisher that releases worker events behind the queue's, and the child tasks (a worker's run,
timers) whose outcomes come back to the actor as messages. actors/swarm_supervisor.py holds the
state and the handlers, and subclasses this (as the WorkerActor does its core).
"""

from __future__ import annotations

from typing import Any

import trio

from ..protocols.errors import ShoalError
from ..protocols.workers import WorkerCommand
from ..runtime.actor import ActorGone, Address, CallTimeout
from ..runtime.eventbus import EventBus
from .queue import Barrier, QueueMsg, QueueSend
from .swarm_messages import CanaryTick, Ordered, SupervisorMsg, WorkerGone, WorkerStarted
from .worker import WorkerActor, WorkerExit

ORDERED_SIZE = 4096  # events waiting for the queue's barrier before they are published

# outbox entries: (kind, target, message)
_TO_QUEUE, _TO_WORKER, _ORDERED = 0, 1, 2


class SupervisorIO:
    """What the worker supervisor sends and the children it runs; never its state."""

    def __init__(self, bus: EventBus, queue: Address[QueueMsg]) -> None:
        self._bus = bus
        self._queue = queue
        self._address: Address[SupervisorMsg] | None = None
        self._nursery: trio.Nursery | None = None
        self._out: list[tuple[int, Any, Any]] = []
        # events derived from worker reports, published once the queue has committed (and published)
        # what it received before them: see _publisher
        self._ordered_send, self._ordered_recv = trio.open_memory_channel[Ordered](ORDERED_SIZE)

    # ---- the outbox, flushed after each message --------------------------------------------------

    def _to_queue(self, message: QueueSend) -> None:
        self._out.append((_TO_QUEUE, None, message))

    def _send_worker(self, address: Address[WorkerCommand] | None, command: WorkerCommand) -> None:
        if address is not None:  # none yet: the worker is still spawning (see WorkerStarted)
            self._out.append((_TO_WORKER, address, command))

    def _publish_ordered(self, topic: str, data: dict[str, Any], then: QueueSend | None = None) -> None:
        """Publish a worker event after the queue's events that came before it.

        Why: the queue publishes `task.running`/`task.done` only after their group commit, while a
        worker reacts at once (it gets its Assign before the claim is committed), so a directly
        published `worker.context` or `worker.state refreshing` could carry an earlier sequence
        number than the task event that caused it. Every event derived from a worker report goes
        through one FIFO; `_publisher` releases it behind a queue `Barrier`. `then` goes to the queue
        right after the event is out, so what the queue concludes from it (`model.retry_storm`) is
        published after its cause.
        """
        self._out.append((_ORDERED, None, (topic, data, then)))

    def _flush_nowait(self) -> bool:
        """Send what the last message produced, in order, as far as it goes without waiting (the
        usual case, with no task switch); False when the rest needs `_flush`."""
        out = self._out
        for i, (kind, target, message) in enumerate(out):
            if kind == _TO_QUEUE:
                try:
                    if not self._queue.try_send(message):
                        del out[:i]
                        return False
                except ActorGone:
                    pass  # the queue is gone: the swarm is shutting down
            elif kind == _TO_WORKER:
                try:
                    if not target.try_send(message):
                        # its mailbox is full (it may be waiting for room in ours): a helper waits
                        assert self._nursery is not None
                        self._nursery.start_soon(self._deliver, target, message)
                except ActorGone:
                    pass  # it just ended; its WorkerGone is on the way
            else:
                try:
                    self._ordered_send.send_nowait(message)
                except trio.WouldBlock:
                    del out[:i]
                    return False
        out.clear()
        return True

    async def _flush(self) -> None:
        """Send what the last message produced, in order; wait only for room in the queue's mailbox
        or the ordered FIFO (never for a worker)."""
        while self._out and not self._flush_nowait():
            kind, _target, message = self._out.pop(0)
            try:
                if kind == _TO_QUEUE:
                    await self._queue.send(message)
                else:
                    await self._ordered_send.send(message)
            except ActorGone:
                pass

    @staticmethod
    async def _deliver(address: Address[WorkerCommand], command: WorkerCommand) -> None:
        try:
            await address.send(command)
        except ActorGone:
            pass

    async def _publisher(self) -> None:
        """Release ordered events in batches, each after one Barrier round trip to the queue."""
        recv = self._ordered_recv
        async for first in recv:
            batch = [first]
            while True:
                try:
                    batch.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:  # the queue's events for everything sent to it before now are published first
                await self._queue.call(Barrier())
            except (ActorGone, ShoalError, CallTimeout):
                pass  # the queue is gone or its store is broken: publish anyway, late beats lost
            for topic, data, then in batch:
                self._bus.publish(topic, data)
                if then is not None:  # what the queue makes of it (a retry storm) follows the event
                    try:
                        if not self._queue.try_send(then):
                            await self._queue.send(then)
                    except ActorGone:
                        pass

    async def _tell(self, message: SupervisorMsg) -> None:
        """From a child task to the actor (it may wait for room in the mailbox)."""
        assert self._address is not None
        try:
            await self._address.send(message)
        except ActorGone:
            pass  # the supervisor is ending: nobody to tell

    # ---- children: their outcomes come back as messages ------------------------------------------

    async def _run_worker(self, worker_id: str, actor: WorkerActor, scope: trio.CancelScope) -> None:
        """A child: run one worker to its end; its start and its end come back as messages."""
        result: list[WorkerExit] = []

        async def main(task_status: trio.TaskStatus[Address[WorkerCommand]]) -> None:
            result.append(await actor.run(task_status=task_status))

        spawn_error: ShoalError | None = None
        async with trio.open_nursery() as nursery:
            address: Address[WorkerCommand] | None = None
            try:
                # StopAll cancels a spawn still in progress (e.g. one waiting for a start-up slot):
                # the worker holds no task yet, so nothing is lost, and its process is reaped
                with scope:
                    address = await nursery.start(main)
            except ShoalError as exc:  # SpawnError, or a bad argv template/dialect option
                spawn_error = exc
            if address is not None:
                await self._tell(WorkerStarted(worker_id, address))
            elif spawn_error is None:
                result.append(WorkerExit(crashed=False, reason="swarm stopping (while starting)"))
        if spawn_error is not None:
            result.append(WorkerExit(crashed=True, reason=str(spawn_error), exit_code=None, signal=None))
        exit_ = result[0] if result else WorkerExit(crashed=True, reason="worker ended without a result")
        await self._tell(WorkerGone(worker_id, exit_, None if spawn_error is None else str(spawn_error)))

    async def _after(self, delay: float, message: SupervisorMsg) -> None:
        await trio.sleep(delay)
        await self._tell(message)

    async def _canary_timer(self, scope: trio.CancelScope, cool_down: float) -> None:
        """Half-open: after each cool-down while halted, the actor tries one canary worker."""
        with scope:
            while True:
                await trio.sleep(cool_down)
                await self._tell(CanaryTick(cool_down))
