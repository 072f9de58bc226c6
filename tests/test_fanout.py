"""The gateway's event fan-out without sockets: a real EventBus, real outboxes, the real Fanout.

What goes over the wire is tested end to end in test_gateway.py; here are the parts that are hard
to provoke through a socket: shared frames, the per-connection budget and its overflow notices, the
hold before a subscribe reply, queued frames of a cancelled subscription, and delivery pacing
(on the autojump clock).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from shoal.actors import fanout as fanout_mod
from shoal.actors.fanout import ClientSub, Fanout, Frame, Outbox
from shoal.runtime.eventbus import Event, EventBus


def texts(items: list[Any]) -> list[dict[str, Any]]:
    """The JSON of every frame in `items` (markers and closes are skipped)."""
    out = []
    for item in items:
        if isinstance(item, Frame):
            out.append(json.loads(item.text))
        elif isinstance(item, str):
            out.append(json.loads(item))
    return out


def events_of(frames: list[dict[str, Any]]) -> list[int]:
    seqs: list[int] = []
    for f in frames:
        if f.get("method") == "events.batch":
            seqs += [e["seq"] for e in f["params"]["events"]]
        elif f.get("method") == "event":
            seqs.append(f["params"]["seq"])
    return seqs


def live_sub(fan: Fanout, outbox: Outbox, sid: int, topics: tuple[str, ...], batch: bool) -> ClientSub:
    sub = ClientSub(outbox, sid, topics, batch, fan.bus.last_seq)
    fan.add(sub)
    fan.go_live(sub)
    return sub


def publish(bus: EventBus, n: int, topic: str = "t.x") -> list[Event]:
    return [bus.publish(topic, {"n": i}) for i in range(n)]


async def test_clients_with_the_same_subscription_share_one_frame() -> None:
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    boxes = [Outbox(100) for _ in range(3)]
    for box in boxes:
        live_sub(fan, box, 1, ("t.*",), batch=True)
    other = Outbox(100)
    live_sub(fan, other, 1, ("t.*",), batch=False)
    fan.deliver(publish(bus, 5))
    taken = [await box.take(100) for box in boxes]
    assert all(len(t) == 1 for t in taken)
    assert taken[0][0] is taken[1][0] is taken[2][0]  # built once, the same object for every client
    assert events_of(texts(taken[0])) == [1, 2, 3, 4, 5]
    singles = await other.take(100)
    assert len(singles) == 5 and events_of(texts(singles)) == [1, 2, 3, 4, 5]


async def test_topics_are_matched_per_subscription() -> None:
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(100)
    live_sub(fan, box, 1, ("task.*",), batch=True)
    live_sub(fan, box, 2, ("worker.state", "swarm.*"), batch=True)
    chunk = [bus.publish(t, {}) for t in ("task.done", "worker.state", "worker.output", "swarm.halted", "x")]
    fan.deliver(chunk)
    frames = texts(await box.take(100))
    by_sub = {f["params"]["subscription"]: [e["topic"] for e in f["params"]["events"]] for f in frames}
    assert by_sub == {1: ["task.done"], 2: ["worker.state", "swarm.halted"]}


async def test_a_full_outbox_drops_and_reports_in_seq_order() -> None:
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(3)
    sub = live_sub(fan, box, 1, ("*",), batch=True)
    first = publish(bus, 5)
    fan.deliver(first)  # room for 3: the last 2 are dropped and counted
    assert box.queued_events == 3 and sub.dropped == 2 and sub.first_dropped == first[3].seq
    assert events_of(texts(await box.take(100))) == [1, 2, 3]
    fan.deliver(publish(bus, 2))
    frames = texts(await box.take(100))
    assert frames[0]["method"] == "events.overflow"
    assert frames[0]["params"] == {"subscription": 1, "dropped": 2, "first_dropped_seq": 4}
    assert events_of(frames[1:]) == [6, 7]


async def test_overflow_is_reported_even_when_no_more_events_come() -> None:
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(1)
    sub = live_sub(fan, box, 1, ("*",), batch=False)
    fan.deliver(publish(bus, 4))
    assert events_of(texts(await box.take(100))) == [1]  # taking it makes room: the notice is queued
    (note,) = texts(await box.take(100))
    assert note["method"] == "events.overflow" and note["params"]["dropped"] == 3
    assert sub.dropped == 0


async def test_events_wait_for_the_subscribe_reply_then_follow_the_replay() -> None:
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(100)
    old = publish(bus, 3, "t.old")
    sub = ClientSub(box, 1, ("t.*",), True, bus.last_seq)
    fan.add(sub)
    fan.deliver(publish(bus, 2, "t.new"))  # before the reply is queued: held
    assert box.queued_events == 0
    await box.put_reply('{"jsonrpc":"2.0","id":1,"result":{}}')
    fan.go_live(sub, ['{"jsonrpc":"2.0","method":"events.gap","params":{}}'], replay=old[1:])
    frames = texts(await box.take(100))
    assert [f.get("method", "reply") for f in frames] == [
        "reply",
        "events.gap",
        "events.batch",
        "events.batch",
    ]
    assert events_of(frames) == [2, 3, 4, 5]


async def test_cancelled_subscription_loses_its_queued_frames_only() -> None:
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(100)
    a = live_sub(fan, box, 1, ("*",), batch=True)
    live_sub(fan, box, 2, ("*",), batch=True)
    fan.deliver(publish(bus, 3))
    assert box.queued_events == 6
    fan.remove(a)
    assert box.queued_events == 3 and fan.subscription_count == 1
    frames = texts(await box.take(100))
    assert {f["params"]["subscription"] for f in frames} == {2}


async def test_batch_frames_are_split_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout_mod, "BATCH_BYTES", 1000)
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(1000)
    live_sub(fan, box, 1, ("*",), batch=True)
    fan.deliver([bus.publish("big", {"pad": "x" * 300}) for _ in range(10)])
    items = await box.take(1000)
    sizes = [len(json.dumps(f["params"]["events"], separators=(",", ":"))) for f in texts(items)]
    body = sizes[-1] // len(texts(items)[-1]["params"]["events"])  # one event's JSON
    assert 1 < len(items) < 10 and all(size <= 1000 < size + body for size in sizes[:-1])
    assert events_of(texts(items)) == list(range(1, 11))
    assert box.queued_events == 0


async def test_replies_wait_for_room_and_events_never_do() -> None:
    box = Outbox(2)
    await box.put_reply("1")
    await box.put_reply("2")
    waited = trio.Event()

    async def third() -> None:
        await box.put_reply("3")
        waited.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.is_set()  # two replies already wait to be written
        assert await box.take(10) == ["1", "2"]
        await waited.wait()
    assert await box.take(10) == ["3"]
    box.close()
    with pytest.raises(trio.ClosedResourceError):
        await box.take(10)


async def test_deliveries_are_paced_under_load_and_immediate_after_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An event after a quiet spell goes at once; events published less than coalesce_s after a
    delivery wait until coalesce_s has passed and go out together."""
    bus = EventBus()
    fan = Fanout(bus, 0.005)
    box = Outbox(10_000)
    live_sub(fan, box, 1, ("*",), batch=True)
    taken: list[tuple[float, list[int]]] = []

    async def reader() -> None:
        while True:
            items = await box.take(1000)
            taken.append((trio.current_time(), events_of(texts(items))))

    async with trio.open_nursery() as nursery:
        await nursery.start(fan.run)
        nursery.start_soon(reader)
        start = trio.current_time()
        bus.publish("a", {})  # quiet before: at once
        await trio.sleep(0.0015)
        for _ in range(10):  # one event a millisecond, between the deliveries' instants
            bus.publish("b", {})
            await trio.sleep(0.001)
        await trio.sleep(0.1)
        bus.publish("c", {})  # quiet again: at once
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    offsets = [round((t - start) * 1000, 3) for t, _ in taken]
    assert [seqs for _, seqs in taken] == [[1], [2, 3, 4, 5], [6, 7, 8, 9, 10], [11], [12]]
    assert offsets[:4] == [0.0, 5.0, 10.0, 15.0]
    assert offsets[4] == pytest.approx(111.5)
    assert fan.deliveries == 5


async def test_a_kick_writes_at_once_when_the_writer_is_idle_and_wakes_it_for_the_rest() -> None:
    """The fan-out's hot path: the frames go straight to the socket; when the socket took only
    part, the writer is woken to flush the rest (held by the connection's stream) before anything
    queued later."""
    bus = EventBus()
    fan = Fanout(bus, 0.0)
    box = Outbox(100)
    written: list[bytes] = []
    all_taken = [True]

    def write_now(frames: Any) -> bool:
        written.append(b"".join(f.wire if isinstance(f, Frame) else f for f in frames))
        return all_taken[0]

    box.write_now = write_now
    live_sub(fan, box, 1, ("*",), batch=True)
    parked = trio.Event()
    taken: list[Any] = []

    async def writer() -> None:
        parked.set()
        taken.extend(await box.take(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await parked.wait()
        await trio.testing.wait_all_tasks_blocked()
        fan.deliver(publish(bus, 3))  # all taken by the socket: the writer stays parked
        assert len(written) == 1 and box.queued_events == 0 and not taken
        all_taken[0] = False
        fan.deliver(publish(bus, 2))  # partly taken: the writer is woken to flush
        fan.deliver(publish(bus, 1))  # the writer is awake: queued behind the flush, not written
        await trio.testing.wait_all_tasks_blocked()
    assert len(written) == 2
    assert taken[0] == b"" and events_of(texts(taken[1:])) == [6]
