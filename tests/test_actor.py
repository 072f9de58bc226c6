"""Mailboxes and request/reply: replies, failures, timeouts, and ActorGone instead of hanging."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from shoal.protocols.errors import ValidationError
from shoal.runtime.actor import ActorGone, Address, Call, CallTimeout, Mailbox


@attrs.frozen
class Add:
    a: int
    b: int


@attrs.frozen
class Fail:
    message: str


@attrs.frozen
class Hold:
    """Received but not answered (yet)."""


@attrs.frozen
class Note:
    text: str


@attrs.frozen
class Quit:
    pass


class Calc:
    """A small actor: answers Add, fails Fail, holds Hold, records Note, stops on Quit."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.held: list[Call[Any]] = []
        self.holding = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Address[Any]] = trio.TASK_STATUS_IGNORED) -> None:
        async with Mailbox[Any]("calc", size=4) as mailbox:
            task_status.started(mailbox.address)
            async for msg in mailbox:
                if isinstance(msg, Note):
                    self.notes.append(msg.text)
                    continue
                assert isinstance(msg, Call)
                payload = msg.payload
                if isinstance(payload, Add):
                    msg.reply(payload.a + payload.b)
                elif isinstance(payload, Fail):
                    msg.fail(ValueError(payload.message))
                elif isinstance(payload, Hold):
                    self.held.append(msg)
                    self.holding.set()
                elif isinstance(payload, Quit):
                    msg.reply()
                    return


async def test_call_returns_the_reply_and_sends_arrive_in_order() -> None:
    calc = Calc()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(calc.run)
            await address.send(Note("one"))
            assert address.try_send(Note("two"))
            assert await address.call(Add(2, 3)) == 5  # processed after both notes
            assert calc.notes == ["one", "two"]
            await address.call(Quit())


async def test_call_reraises_the_actors_failure_and_the_actor_goes_on() -> None:
    calc = Calc()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(calc.run)
            with pytest.raises(ValueError, match="no such thing"):
                await address.call(Fail("no such thing"))
            assert await address.call(Add(1, 1)) == 2
            await address.call(Quit())


async def test_call_times_out_and_a_late_reply_is_harmless(autojump_clock: object) -> None:
    calc = Calc()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(calc.run)
        t0 = trio.current_time()
        with pytest.raises(CallTimeout) as err:
            await address.call(Hold(), timeout=5.0)
        assert trio.current_time() - t0 == pytest.approx(5.0)
        assert isinstance(err.value, TimeoutError)
        assert (err.value.name, err.value.timeout) == ("calc", 5.0)
        calc.held[0].reply("too late")  # the caller is gone: ignored, no exception
        assert await address.call(Add(4, 4)) == 8
        await address.call(Quit())


async def test_in_flight_unanswered_call_fails_with_actor_gone_when_the_actor_stops() -> None:
    calc = Calc()
    outcome: list[BaseException] = []
    done = trio.Event()

    async def caller(address: Address[Any]) -> None:
        try:
            await address.call(Hold(), timeout=None)
        except ActorGone as exc:
            outcome.append(exc)
        done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(calc.run)
            nursery.start_soon(caller, address)
            await calc.holding.wait()
            await address.call(Quit())
            await done.wait()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ActorGone)
    assert outcome[0].name == "calc"


async def test_queued_calls_fail_with_actor_gone_when_the_mailbox_closes() -> None:
    mailbox = Mailbox[Any]("idle", size=8)  # an actor that never reads
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await mailbox.address.call(Add(1, 2), timeout=None)
        except ActorGone as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()  # both calls sit in the mailbox
            mailbox.close()
    assert len(errors) == 2
    assert all(isinstance(e, ActorGone) for e in errors)
    assert errors[0] is not errors[1]  # one exception per caller, not a shared instance


async def test_send_call_and_try_send_after_the_actor_is_gone() -> None:
    calc = Calc()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(calc.run)
            await address.call(Quit())
    with pytest.raises(ActorGone):
        await address.send(Note("late"))
    with pytest.raises(ActorGone):
        address.try_send(Note("late"))
    with pytest.raises(ActorGone):
        await address.call(Add(1, 1))


async def test_a_sender_blocked_on_a_full_mailbox_gets_actor_gone() -> None:
    mailbox = Mailbox[Any]("full", size=1)
    assert mailbox.address.try_send(Note("fills it"))
    assert not mailbox.address.try_send(Note("no room"))
    errors: list[BaseException] = []

    async def sender() -> None:
        try:
            await mailbox.address.send(Note("waits"))
        except ActorGone as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
    assert [type(e) for e in errors] == [ActorGone]


async def test_iterating_a_mailbox_ends_when_it_closes() -> None:
    mailbox = Mailbox[Any]("reader")
    got: list[Any] = []

    async def reader() -> None:
        async for msg in mailbox:
            got.append(msg)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await mailbox.address.send(Note("x"))
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
    assert got == [Note("x")]


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_a_bad_timeout_is_refused(timeout: float) -> None:
    mailbox = Mailbox[Any]("m")
    with pytest.raises(ValidationError) as err:
        await mailbox.address.call(Add(1, 1), timeout=timeout)
    assert err.value.field == "timeout"
    with pytest.raises(trio.WouldBlock):  # nothing was sent
        mailbox.receive_nowait()
    mailbox.close()
