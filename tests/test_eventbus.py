"""The event bus: fan-out by pattern, bounded subscribers that drop and count, replay since a seq."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from shoal.protocols.errors import ValidationError
from shoal.runtime.eventbus import Event, EventBus, Subscription


def drain(sub: Subscription) -> list[Event]:
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except trio.WouldBlock:
            return out


def test_fan_out_by_pattern() -> None:
    bus = EventBus(clock=lambda: 1234.5)
    tasks = bus.subscribe(["task.*"])
    state = bus.subscribe(["worker.state"])
    both = bus.subscribe(["task.done", "swarm.*"])
    everything = bus.subscribe()
    for topic in ("task.submitted", "worker.state", "task.done", "swarm.halted", "worker.output"):
        bus.publish(topic, {"topic": topic})
    assert [e.topic for e in drain(tasks)] == ["task.submitted", "task.done"]
    assert [e.topic for e in drain(state)] == ["worker.state"]
    assert [e.topic for e in drain(both)] == ["task.done", "swarm.halted"]
    got = drain(everything)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert got[2] == Event(3, 1234.5, "task.done", {"topic": "task.done"})
    assert bus.subscriber_count == 4


def test_a_single_string_is_one_pattern_not_one_per_character() -> None:
    bus = EventBus()
    sub = bus.subscribe("task.*")
    bus.publish("worker.state")  # would match the "*" character if the string were iterated
    bus.publish("task.done")
    assert [e.topic for e in drain(sub)] == ["task.done"]
    events, complete = bus.replay(0, "worker.*")
    assert ([e.topic for e in events], complete) == (["worker.state"], True)


def test_a_slow_subscriber_loses_events_counted_and_never_blocks_publish() -> None:
    bus = EventBus()
    slow = bus.subscribe(size=2)
    fast = bus.subscribe(size=100)
    for i in range(5):
        bus.publish("task.done", {"i": i})  # synchronous: returns although nobody reads `slow`
    assert [e.data["i"] for e in drain(slow)] == [0, 1]
    assert (slow.dropped, slow.first_dropped_seq) == (3, 3)
    assert [e.data["i"] for e in drain(fast)] == [0, 1, 2, 3, 4]
    assert fast.dropped == 0
    assert bus.dropped_total == 3
    assert slow.take_dropped() == (3, 3)
    assert slow.take_dropped() == (0, None)
    bus.publish("task.done", {"i": 5})  # room again after draining
    assert [e.data["i"] for e in drain(slow)] == [5]


async def test_a_live_reader_gets_everything_while_a_stalled_one_drops() -> None:
    bus = EventBus()
    reader_sub = bus.subscribe(["task.*"], size=1)
    stalled = bus.subscribe(["task.*"], size=1)
    got: list[int] = []

    async def reader() -> None:
        async for event in reader_sub:
            got.append(event.seq)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for _ in range(20):
                bus.publish("task.done")
                await trio.testing.wait_all_tasks_blocked()  # let the reader catch up
            reader_sub.close()  # ends the reader's loop
    assert got == list(range(1, 21))
    assert stalled.dropped == 19
    assert bus.subscriber_count == 1


def test_replay_since_a_seq_says_whether_it_is_complete() -> None:
    bus = EventBus(replay_size=3)
    for topic in ("task.a", "worker.b", "task.c", "worker.d", "task.e"):
        bus.publish(topic)
    assert bus.last_seq == 5

    def seqs(since: int, patterns: tuple[str, ...] = ("*",)) -> tuple[list[int], bool]:
        events, complete = bus.replay(since, patterns)
        return [e.seq for e in events], complete

    assert seqs(0) == ([3, 4, 5], False)  # 1 and 2 were evicted
    assert seqs(1) == ([3, 4, 5], False)  # 2 was evicted
    assert seqs(2) == ([3, 4, 5], True)
    assert seqs(4) == ([5], True)
    assert seqs(5) == ([], True)
    assert seqs(2, ("task.*",)) == ([3, 5], True)


def test_replay_from_before_the_first_event_is_complete_while_nothing_was_evicted() -> None:
    bus = EventBus(replay_size=10)
    bus.publish("task.a")
    bus.publish("task.b")
    assert [e.seq for e in bus.replay(-1)[0]] == [1, 2]
    assert bus.replay(-1)[1] is True
    assert bus.replay(0) == (bus.replay(-1)[0], True)


def test_replay_disabled_is_complete_only_when_nothing_was_missed() -> None:
    bus = EventBus(replay_size=0)
    bus.publish("task.a")
    assert bus.replay(0) == ([], False)
    assert bus.replay(1) == ([], True)


def test_closing_a_subscription_detaches_it() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        bus.publish("task.a")
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    bus.publish("task.b")  # no error, nobody to deliver to
    with pytest.raises(trio.ClosedResourceError):
        sub.receive_nowait()


def test_bad_buffer_size_is_refused() -> None:
    bus = EventBus()
    for size in (-1, 1.5, True):
        with pytest.raises(ValidationError) as err:
            bus.subscribe(size=size)  # type: ignore[arg-type]
        assert err.value.field == "size"
    assert bus.subscriber_count == 0


def test_two_buses_in_one_program_do_not_see_each_other() -> None:
    one, two = EventBus(), EventBus()
    sub_one, sub_two = one.subscribe(), two.subscribe()
    one.publish("task.a")
    one.publish("task.b")
    two.publish("worker.x")
    assert [(e.seq, e.topic) for e in drain(sub_one)] == [(1, "task.a"), (2, "task.b")]
    assert [(e.seq, e.topic) for e in drain(sub_two)] == [(1, "worker.x")]
    assert (one.last_seq, two.last_seq) == (2, 1)
    assert [e.topic for e in two.replay(0)[0]] == ["worker.x"]


def test_a_local_subscription_gets_this_nodes_events_only() -> None:
    # a cluster delivers every node's events to every bus; the JSON event log wants this node's
    # alone (the other nodes' logs have theirs) and is spared the others' traffic
    bus = EventBus()
    with bus.subscribe(("*",), 10, remote=False) as local, bus.subscribe(("*",), 10) as everything:
        bus.deliver(1, 1.0, "task.done", {"task_id": "t1"}, remote=True)
        bus.deliver(2, 2.0, "task.done", {"task_id": "t2"})
        assert [local.receive_nowait().seq] == [2]
        with pytest.raises(trio.WouldBlock):
            local.receive_nowait()
        assert [everything.receive_nowait().seq, everything.receive_nowait().seq] == [1, 2]


def test_an_event_delivered_at_once_reaches_outage_subscribers_then_the_others_with_its_seq() -> None:
    # a cluster node whose store cannot write delivers its own events at once (deliver_now) to the
    # subscribers that asked (outage: alerts, metrics, the event log): they carry the last seq and
    # are not kept for replay; written later, the event comes back with its seq (shown) and goes to
    # the others (a gateway's, which order and resume by seq), and to the replay, only then
    bus = EventBus()
    with bus.subscribe(("*",), 10, outage=True) as early, bus.subscribe(("*",), 10) as ordered:
        bus.deliver(5, 1.0, "task.done", {"task_id": "t1"})
        now = bus.deliver_now(2.0, "queue.store_failed", {"error": "down"})
        assert now.seq == 5 and early.receive_nowait().seq == 5 and early.receive_nowait() == now
        assert ordered.receive_nowait().seq == 5
        with pytest.raises(trio.WouldBlock):
            ordered.receive_nowait()
        bus.deliver(6, 2.0, "queue.store_failed", {"error": "down"}, shown=True)
        bus.deliver(7, 3.0, "task.done", {"task_id": "t2"})
        assert [early.receive_nowait().seq] == [7] and bus.last_seq == 7
        assert [ordered.receive_nowait().seq, ordered.receive_nowait().seq] == [6, 7]
    events, complete = bus.replay(4)
    assert [e.seq for e in events] == [5, 6, 7] and complete
