"""The event bus: fan-out of every swarm event to any number of subscribers.

Publishing never waits. Each subscriber has a bounded buffer; when it is full the event is dropped
for that subscriber only and counted (`Subscription.dropped`), so a slow reader can never slow the
swarm. Every event gets a per-bus monotonically increasing `seq`; the bus keeps the last
`replay_size` events so a reconnecting client can ask for what it missed (`since`).
"""

from __future__ import annotations

import fnmatch
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import trio

from ..protocols.errors import ValidationError


@attrs.frozen
class Event:
    seq: int
    ts: float  # wall-clock epoch seconds
    topic: str  # e.g. "task.done", "worker.state", "swarm.halted", "scale.up", "alert.fired"
    data: dict[str, Any]
    remote: bool = False  # a cluster: published by another node (its own log has it already)


def topic_matches(patterns: Iterable[str], topic: str) -> bool:
    """Shell-style patterns: "task.*", "worker.state", "*"."""
    return any(p == topic or fnmatch.fnmatchcase(topic, p) for p in _patterns(patterns))


def _patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    # a lone string is one pattern, not one pattern per character ("task.*" would match via "*")
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


class Subscription:
    """One subscriber's bounded view of the bus. Iterate it; close it (or leave the `with`) to stop."""

    def __init__(
        self, bus: EventBus, patterns: tuple[str, ...], size: int, remote: bool = True, outage: bool = False
    ) -> None:
        self._bus = bus
        self.patterns = patterns
        self.remote = remote  # also other nodes' events (a cluster), not only this node's
        self.outage = outage  # this node's events at once while its store cannot write (deliver_now)
        self._send, self._recv = trio.open_memory_channel[Event](size)
        self.dropped = 0  # events lost because this subscriber was slow
        self.first_dropped_seq: int | None = None
        self._wants: dict[str, bool] = {}  # topic -> match; topics are a small, fixed vocabulary

    def wants(self, topic: str) -> bool:
        hit = self._wants.get(topic)
        if hit is None:
            hit = self._wants[topic] = topic_matches(self.patterns, topic)
        return hit

    def _offer(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            if self.dropped == 0:
                self.first_dropped_seq = event.seq
            self.dropped += 1
            self._bus.dropped_total += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._bus._subs.discard(self)

    def take_dropped(self) -> tuple[int, int | None]:
        """Return and reset (count, first seq) of drops since the last call."""
        out = (self.dropped, self.first_dropped_seq)
        self.dropped, self.first_dropped_seq = 0, None
        return out

    async def receive(self) -> Event:
        return await self._recv.receive()

    def receive_nowait(self) -> Event:
        return self._recv.receive_nowait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        # Take what is already buffered without a trip through the scheduler (trio's receive()
        # checkpoints even when an item is waiting); park only when the buffer is empty. The
        # buffer is bounded and filled by other tasks, so this cannot starve anyone.
        recv = self._recv
        while True:
            try:
                event = recv.receive_nowait()
            except trio.WouldBlock:
                try:
                    event = await recv.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            yield event

    def close(self) -> None:
        self._bus._subs.discard(self)
        self._send.close()
        self._recv.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Owned by the swarm; `publish` is synchronous and never blocks."""

    def __init__(self, replay_size: int = 10_000, clock: Any = time.time) -> None:
        self._subs: set[Subscription] = set()
        self._replay: deque[Event] = deque(maxlen=max(replay_size, 0) or None)
        self._replay_enabled = replay_size > 0
        self._seq = 0
        self._clock = clock
        self.dropped_total = 0
        self.published_total = 0
        # a cluster (actors/pgstore.py): publish hands each event to the shared store, which gives it
        # the cluster's seq and delivers every node's events back to every bus in one order
        self.relay: Callable[[str, dict[str, Any]], None] | None = None

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, topic: str, data: dict[str, Any] | None = None) -> Event | None:
        """Deliver an event now (None instead when it goes through a cluster's relay first)."""
        self.published_total += 1
        if self.relay is not None:
            self.relay(topic, data or {})
            return None
        self._seq += 1
        return self._fan_out(Event(self._seq, self._clock(), topic, data or {}))

    def published_elsewhere(self, n: int) -> None:
        """Count `n` events this node made that went to the cluster's store another way than
        `publish` (with the write that made them happen); they come back through `deliver`."""
        self.published_total += n

    def deliver(
        self,
        seq: int,
        ts: float,
        topic: str,
        data: dict[str, Any],
        remote: bool = False,
        *,
        shown: bool = False,
    ) -> None:
        """An event of the cluster, in the shared store's order (its seq is the cluster's).
        `shown`: `deliver_now` gave it to the `outage` subscribers already; the others get it now."""
        if seq <= self._seq:
            return  # seen already (a feed read twice after a reconnect)
        self._seq = seq
        self._fan_out(Event(seq, ts, topic, data, remote), skip_outage=shown)

    def deliver_now(self, ts: float, topic: str, data: dict[str, Any]) -> Event:
        """A cluster node's own event while its store cannot write (PostgreSQL down), at once to the
        subscribers that asked for it (`outage`: the alerts, metrics and event log), so an outage
        is not also silence (`queue.store_failed` and its alert, a worker's crash). It has no cluster
        seq yet: it carries the last one and is not kept for replay, and subscribers that order or
        resume by seq (a gateway's) get it once it is written, with its seq (`deliver`, `shown`)."""
        event = Event(self._seq, ts, topic, data)
        for sub in tuple(self._subs):
            if sub.outage and sub.wants(topic):
                sub._offer(event)
        return event

    def _fan_out(self, event: Event, *, skip_outage: bool = False) -> Event:
        topic = event.topic
        if self._replay_enabled:
            self._replay.append(event)
        remote = event.remote
        for sub in tuple(self._subs):
            if sub.wants(topic) and (sub.remote or not remote) and not (skip_outage and sub.outage):
                sub._offer(event)
        return event

    def subscribe(
        self, patterns: Iterable[str] = ("*",), size: int = 1000, *, remote: bool = True, outage: bool = False
    ) -> Subscription:
        """`remote=False`: this node's events only (a cluster delivers every node's to every bus).
        `outage=True`: also this node's events at once while its store cannot write (`deliver_now`),
        for subscribers that neither order nor resume by seq."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValidationError("size", "must be an integer >= 0", size)
        sub = Subscription(self, _patterns(patterns), size, remote, outage)
        self._subs.add(sub)
        return sub

    def replay(self, since: int, patterns: Iterable[str] = ("*",)) -> tuple[list[Event], bool]:
        """Events with seq > since that match; the flag is False when some were already evicted."""
        pats = _patterns(patterns)
        since = max(since, 0)
        complete = not self._replay or self._replay[0].seq <= since + 1 or since >= self._seq
        if not self._replay_enabled:
            complete = since >= self._seq
        return [e for e in self._replay if e.seq > since and topic_matches(pats, e.topic)], complete

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
