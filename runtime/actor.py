"""Mailboxes, addresses and request/reply for trio actors.

An actor is a trio task that owns its state and reads one bounded `Mailbox`. Others hold its
`Address` and either `send` (fire-and-forget, waits only for mailbox space) or `call` (request/reply
with a timeout). When the actor's mailbox closes, every pending and future call fails with
`ActorGone` instead of hanging: the mailbox remembers the calls it handed out unanswered.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import attrs
import trio

from ..protocols.errors import ShoalError, ValidationError

M = TypeVar("M")
T = TypeVar("T")


class ActorGone(ShoalError):
    """The actor behind an address has stopped (its mailbox is closed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"actor {name!r} is gone")


class CallTimeout(ShoalError, TimeoutError):
    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(f"actor {name!r} did not answer within {timeout:g} s")


@attrs.frozen
class _Ok:
    value: Any


@attrs.frozen
class _Err:
    error: BaseException


class Call(Generic[T]):
    """A request carrying a one-shot reply channel. Answer it exactly once: `reply` or `fail`."""

    __slots__ = ("_mailbox", "_reply", "payload")

    def __init__(self, payload: T, reply: trio.MemorySendChannel[_Ok | _Err]) -> None:
        self.payload = payload
        self._reply = reply
        self._mailbox: Mailbox[Any] | None = None

    def _answer(self, item: _Ok | _Err) -> None:
        if self._mailbox is not None:
            self._mailbox._pending.discard(self)
            self._mailbox = None
        try:
            self._reply.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the caller gave up (timeout/cancel) or it was answered already
        self._reply.close()

    def reply(self, value: Any = None) -> None:
        self._answer(_Ok(value))

    def fail(self, error: BaseException) -> None:
        self._answer(_Err(error))

    def __repr__(self) -> str:
        return f"Call({self.payload!r})"


class Address(Generic[M]):
    """The send side of a mailbox. Cheap to copy around; safe to use after the actor stops."""

    __slots__ = ("_send", "name")

    def __init__(self, name: str, send: trio.MemorySendChannel[Any]) -> None:
        self.name = name
        self._send = send

    async def send(self, message: M) -> None:
        """Deliver `message`, waiting for space in the mailbox. Raises `ActorGone`."""
        await self._deliver(message)

    async def _deliver(self, message: object) -> None:
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorGone(self.name) from None

    def try_send(self, message: M) -> bool:
        """Deliver without waiting; False when the mailbox is full. Raises `ActorGone`."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorGone(self.name) from None
        return True

    async def call(self, payload: Any, timeout: float | None = 10.0) -> Any:
        """Send `payload` wrapped in a `Call` and wait for the reply (re-raising a failure)."""
        if timeout is not None and not timeout >= 0:  # also refuses NaN
            raise ValidationError("timeout", "must be a number >= 0 or None", timeout)
        reply_send, reply_recv = trio.open_memory_channel[_Ok | _Err](1)
        call: Call[Any] = Call(payload, reply_send)
        with reply_recv, trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            await self._deliver(call)
            try:
                item = await reply_recv.receive()
            except trio.EndOfChannel:
                raise ActorGone(self.name) from None
        if scope.cancelled_caught:
            raise CallTimeout(self.name, timeout if timeout is not None else math.inf)
        if isinstance(item, _Err):
            raise item.error
        return item.value

    def __repr__(self) -> str:
        return f"Address({self.name!r})"


class Mailbox(Generic[M]):
    """A bounded inbox owned by one actor. Iterate it to receive; close it when the actor ends.

    Use as `async with Mailbox(name) as mailbox:`; on exit, queued and unanswered calls fail with
    `ActorGone` and senders get `ActorGone`.
    """

    def __init__(self, name: str, size: int = 256) -> None:
        self.name = name
        self._send, self._recv = trio.open_memory_channel[Any](size)
        self._pending: set[Call[Any]] = set()
        self.address: Address[M] = Address(name, self._send)

    async def receive(self) -> M | Call[Any]:
        msg = await self._recv.receive()
        if isinstance(msg, Call):
            msg._mailbox = self
            self._pending.add(msg)
        return msg  # type: ignore[no-any-return]

    def receive_nowait(self) -> M | Call[Any]:
        msg = self._recv.receive_nowait()
        if isinstance(msg, Call):
            msg._mailbox = self
            self._pending.add(msg)
        return msg  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[M | Call[Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[M | Call[Any]]:
        # Buffered messages are taken without a scheduler round trip (receive() checkpoints even
        # when a message is waiting); the actor parks only on an empty mailbox.
        while True:
            try:
                msg = self.receive_nowait()
            except trio.WouldBlock:
                try:
                    msg = await self.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            yield msg

    def close(self) -> None:
        self._send.close()  # no new messages; the buffered ones are drained below
        # one ActorGone per call: an exception instance raised in several tasks gets its
        # traceback grown by each of them
        while True:
            try:
                msg = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(msg, Call):
                msg.fail(ActorGone(self.name))
        self._recv.close()
        for call in list(self._pending):
            call.fail(ActorGone(self.name))

    async def __aenter__(self) -> Mailbox[M]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
