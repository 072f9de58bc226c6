"""Event fan-out to websocket clients: one bus subscription for the gateway, one write per client.

Why: a bus subscription and a task per client subscription cost a wake-up, a channel hop and a
socket write per event per client: 50 clients at 1,000 tasks/s are hundreds of thousands of those
a second, more than one Python process has. Here one task (`Fanout.run`) takes everything the bus
published since its last delivery, matches it once per distinct topic list (matches are cached per
topic), and appends ready-made frames to each connection's `Outbox`; each connection's writer sends
what its outbox holds in one socket write. Under load deliveries are paced `coalesce_s` apart, so
their cost is paid at most 1/coalesce_s times a second whatever the event rate; after a quiet spell
an event goes out at once. Frames are built once for all clients: an event's JSON once, its `event`
frame once per subscription id, an `events.batch` frame once per (subscription id, topics) and
delivery (a connection's first subscription is id 1, so one frame usually serves everyone).

Nothing here waits for a client. A connection's outbox holds at most `limit` undelivered events;
beyond that a subscription's events are dropped, counted, and reported to it in seq order as
`events.overflow`. Replies to requests are never dropped: the request waits for room instead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..protocols import rpc
from ..runtime.eventbus import Event, EventBus, topic_matches

EVENT_CACHE = 4096  # events whose JSON and frames are kept (covers a delivery to every client)
BATCH_BYTES = 256 * 1024  # event JSON per `events.batch` frame at most (a bigger event goes alone)
FEED_BUFFER = 100_000  # events the fan-out task may fall behind the bus before it drops


@attrs.frozen
class Frame:
    """A notification shared by every connection it goes to: its text and its websocket frame."""

    text: str
    wire: bytes


def text_frame(text: str) -> bytes:
    """A complete, unmasked websocket text frame (RFC 6455 5.2), as a server sends it.

    Server frames carry no mask and no extension is negotiated, so the bytes are the same for every
    client (tests check them against wsproto's own framing).
    """
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= EVENT_CACHE:
        del cache[next(iter(cache))]  # the oldest: dicts keep insertion order
    cache[key] = value


class Frames:
    """Encoded event notifications, shared by every connection that sends them."""

    def __init__(self) -> None:
        self._json: dict[int, str] = {}
        self._event: dict[tuple[int, int], Frame] = {}

    def body(self, event: Event) -> str:
        """The event as JSON: `{"seq":..,"ts":..,"topic":..,"data":..}`, encoded once."""
        body = self._json.get(event.seq)
        if body is None:
            body = rpc.dumps({"seq": event.seq, "ts": event.ts, "topic": event.topic, "data": event.data})
            _remember(self._json, event.seq, body)
        return body

    def event(self, event: Event, sid: int) -> Frame:
        """The `event` notification of DESIGN.md (one event to a frame)."""
        key = (event.seq, sid)
        frame = self._event.get(key)
        if frame is None:
            body = self.body(event)
            text = f'{{"jsonrpc":"2.0","method":"event","params":{{"subscription":{sid},{body[1:]}}}'
            frame = Frame(text, text_frame(text))
            _remember(self._event, key, frame)
        return frame

    def batch(self, events: Sequence[Event], sid: int) -> list[tuple[Frame, int]]:
        """`events.batch` notifications for `events`, split at BATCH_BYTES; (frame, events in it)."""
        out: list[tuple[Frame, int]] = []
        parts: list[str] = []
        size = 0
        for event in events:
            body = self.body(event)
            if parts and size + len(body) > BATCH_BYTES:
                out.append((self._batch_frame(parts, sid), len(parts)))
                parts, size = [], 0
            parts.append(body)
            size += len(body) + 1
        if parts:
            out.append((self._batch_frame(parts, sid), len(parts)))
        return out

    @staticmethod
    def _batch_frame(parts: list[str], sid: int) -> Frame:
        text = (
            f'{{"jsonrpc":"2.0","method":"events.batch","params":{{"subscription":{sid},'
            f'"events":[{",".join(parts)}]}}}}'
        )
        return Frame(text, text_frame(text))

    def for_subscription(self, events: Sequence[Event], sid: int, batch: bool) -> list[tuple[Frame, int]]:
        if batch:
            return self.batch(events, sid)
        return [(self.event(event, sid), 1) for event in events]


OutItem = str | Frame | bytes | trio.Event | Exception
"""What a connection's writer sends or acts on: a reply or notification (text), a shared frame,
bytes already on their way (the rest of a direct write), a flush marker (set once everything before
it is written), or a close (an exception carrying why)."""

WriteNow = Callable[[Sequence[str | Frame | bytes]], bool | None]
"""A connection's direct write: sends the frames at once without waiting. True: all written; False:
partly, the connection's stream holds the rest and sends it before anything else (the next write
of any kind; an empty write flushes it); None: it cannot write now (nothing was sent)."""

_REPLY = -1  # the `sid` of a queued reply: counted against the reply limit, never dropped


class Outbox:
    """One connection's outgoing frames, in order. The connection's writer is its only reader.

    Replies wait for room (so a client that sends requests and never reads stops being read);
    event frames never wait: `room()` says how many more events fit, the fan-out drops the rest.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[tuple[int, OutItem, int]] = deque()  # (sid or _REPLY, item, events in it)
        self._replies = 0
        self.queued_events = 0
        self._reader: trio.Event | None = None
        self._room = trio.Event()
        self.closed = False
        self.write_now: WriteNow | None = None  # set by the connection when its socket allows it
        self.subs: dict[int, ClientSub] = {}  # the live subscriptions writing here (by the fan-out)

    def room(self) -> int:
        return max(0, self.limit - self.queued_events)

    def put(self, item: OutItem, sid: int = 0, events: int = 0, wake: bool = True) -> None:
        """Queue a notification, marker or close now; `events` of them count against the limit.

        `wake=False` leaves the writer parked: the caller calls `kick` once it has queued a round.
        """
        if self.closed:
            return
        self._items.append((sid, item, events))
        self.queued_events += events
        if wake:
            self._wake()

    def kick(self) -> None:
        """Send what was queued: straight to the socket when the writer is idle and the socket takes
        it now (no task switch, no per-write cost of the writer: the fan-out's hot path), else by
        waking the writer."""
        items = self._items
        if not items or self._reader is None:
            return  # nothing to send, or the writer is awake and will take it
        if self.write_now is not None and all(isinstance(e[1], str | Frame | bytes) for e in items):
            done = self.write_now([e[1] for e in items])  # type: ignore[misc]  # checked just above
            if done is not None:
                self._drain(len(items))
                if done:
                    return
                self._items.appendleft((0, b"", 0))  # the writer's next write flushes the rest
        self._wake()

    def _wake(self) -> None:
        if self._reader is not None:
            self._reader.set()
            self._reader = None

    async def put_reply(self, text: str) -> None:
        """Queue a reply, waiting while `limit` replies are already waiting to be written."""
        while self._replies >= self.limit and not self.closed:
            await self._room.wait()
        self._replies += 1
        self.put(text, _REPLY, wake=False)
        self.kick()  # straight to the socket when it can: one task switch less per reply

    async def take(self, most: int) -> list[OutItem]:
        """Wait for something to send; return up to `most` items, oldest first."""
        while not self._items:
            if self.closed:
                raise trio.ClosedResourceError("outbox closed")
            self._reader = trio.Event()
            await self._reader.wait()
        return self._drain(most)

    def _drain(self, most: int) -> list[OutItem]:
        out: list[OutItem] = []
        items = self._items
        while items and len(out) < most:
            sid, item, events = items.popleft()
            if sid == _REPLY:
                self._replies -= 1
            self.queued_events -= events
            out.append(item)
        self._room.set()
        self._room = trio.Event()
        if not items:  # room for all again: tell subscriptions what they lost meanwhile (in order:
            for sub in self.subs.values():  # everything they had queued came before the drops)
                if sub.dropped and sub.held is None:
                    sub.report_overflow()
        return out

    def discard(self, sid: int) -> None:
        """Forget the queued notifications of subscription `sid` (it was just cancelled)."""
        kept = deque(entry for entry in self._items if entry[0] != sid)
        self.queued_events = sum(entry[2] for entry in kept)
        self._items = kept

    def close(self) -> None:
        self.closed = True
        self._room.set()
        self._wake()


class ClientSub:
    """One `events.subscribe` of one connection: what it wants, where it goes, what it lost."""

    def __init__(self, outbox: Outbox, sid: int, patterns: tuple[str, ...], batch: bool, after: int) -> None:
        self.outbox = outbox
        self.sid = sid
        self.patterns = patterns
        self.batch = batch
        self.after = after  # events up to this seq came (or would have come) from the replay buffer
        # events matched before the subscribe reply was queued; None once live
        self.held: list[Event] | None = []
        self.dropped = 0
        self.first_dropped: int | None = None
        self._wants: dict[str, bool] = {}

    def wants(self, topic: str) -> bool:
        hit = self._wants.get(topic)
        if hit is None:
            hit = self._wants[topic] = topic_matches(self.patterns, topic)
        return hit

    def match(self, events: Sequence[Event]) -> list[Event]:
        wants, after = self.wants, self.after
        if events and events[0].seq > after:
            return [e for e in events if wants(e.topic)]
        return [e for e in events if e.seq > after and wants(e.topic)]

    def lose(self, count: int, first_seq: int | None) -> None:
        if count <= 0:
            return
        if self.dropped == 0:
            self.first_dropped = first_seq
        self.dropped += count

    def report_overflow(self) -> None:
        """Queue the `events.overflow` notice for what was dropped since the last one."""
        if self.dropped:
            params = {
                "subscription": self.sid,
                "dropped": self.dropped,
                "first_dropped_seq": self.first_dropped,
            }
            self.dropped, self.first_dropped = 0, None
            self.outbox.put(rpc.dumps(rpc.notification("events.overflow", params)), self.sid)


class Fanout:
    """Delivers the bus's events to every `ClientSub`; owned by the gateway, run as one task."""

    def __init__(
        self, bus: EventBus, coalesce_s: float, frames: Frames | None = None, feed_buffer: int = FEED_BUFFER
    ) -> None:
        self.bus = bus
        self.coalesce_s = coalesce_s
        self.frames = frames or Frames()
        self.feed_buffer = feed_buffer
        self._subs: dict[ClientSub, None] = {}  # insertion-ordered set
        self.deliveries = 0  # rounds delivered (for tests and benchmarks)

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    def add(self, sub: ClientSub) -> None:
        """Start collecting for `sub` (held until `go_live`, so its subscribe reply comes first)."""
        self._subs[sub] = None
        sub.outbox.subs[sub.sid] = sub

    def remove(self, sub: ClientSub) -> None:
        self._subs.pop(sub, None)
        sub.outbox.subs.pop(sub.sid, None)
        sub.outbox.discard(sub.sid)

    def go_live(
        self, sub: ClientSub, preamble: Sequence[str | Frame] = (), replay: Sequence[Event] = ()
    ) -> None:
        """After the subscribe reply is queued: the gap notice, the replay, then what was held."""
        if sub not in self._subs:
            return
        for item in preamble:
            sub.outbox.put(item, sub.sid, wake=False)
        for frame, _count in self.frames.for_subscription(replay, sub.sid, sub.batch):
            sub.outbox.put(frame, sub.sid, wake=False)  # asked for: never counted as overflow
        held, sub.held = sub.held or [], None
        if held:
            self._push(sub, held, None)
        sub.outbox.kick()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(("*",), size=self.feed_buffer) as feed:
            task_status.started()
            last = -math.inf
            while True:
                try:
                    first = await feed.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                due = last + self.coalesce_s
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                chunk = [first]
                while True:
                    try:
                        chunk.append(feed.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                lost, first_lost = feed.take_dropped()
                self.deliver(chunk, lost, first_lost)
                last = trio.current_time()

    def deliver(self, chunk: Sequence[Event], lost: int = 0, first_lost: int | None = None) -> None:
        """Hand `chunk` (in seq order) to every subscription; `lost` events never reached the fan-out."""
        if not chunk:
            return
        self.deliveries += 1
        first_seq = chunk[0].seq
        matched: dict[tuple[str, ...], list[Event]] = {}
        shared: dict[tuple[int, tuple[str, ...], bool], list[tuple[Frame, int]]] = {}
        touched: dict[Outbox, None] = {}
        for sub in self._subs:
            if lost:
                sub.lose(lost, first_lost)  # an upper bound: the lost events' topics are unknown
            if sub.after < first_seq:  # the usual case: the same events for the same topics
                events = matched.get(sub.patterns)
                if events is None:
                    events = matched[sub.patterns] = sub.match(chunk)
            else:
                events = sub.match(chunk)
            if sub.held is not None:
                room = max(0, sub.outbox.limit - len(sub.held))
                sub.held += events[:room]
                if len(events) > room:
                    sub.lose(len(events) - room, events[room].seq)
                continue
            if events:
                key = (sub.sid, sub.patterns, sub.batch)
                self._push(sub, events, shared if sub.after < first_seq else None, key)
                touched[sub.outbox] = None
        for outbox in touched:
            outbox.kick()

    def _push(
        self,
        sub: ClientSub,
        events: list[Event],
        shared: dict[tuple[int, tuple[str, ...], bool], list[tuple[Frame, int]]] | None,
        key: tuple[int, tuple[str, ...], bool] | None = None,
    ) -> None:
        room = sub.outbox.room()
        if room and sub.dropped:
            sub.report_overflow()  # what was lost before these, in seq order
        if room < len(events):
            sub.lose(len(events) - room, events[room].seq)
            events, shared = events[:room], None
            if not events:
                return
        if shared is not None and key is not None:
            frames = shared.get(key)
            if frames is None:
                frames = shared[key] = self.frames.for_subscription(events, sub.sid, sub.batch)
        else:
            frames = self.frames.for_subscription(events, sub.sid, sub.batch)
        for frame, count in frames:
            sub.outbox.put(frame, sub.sid, count, wake=False)
