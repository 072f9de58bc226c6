"""Socket writes for the gateway's websockets: many frames in one write, direct non-blocking writes.

Apart from the gateway (actors/gateway.py) because this is the one place that reaches into
trio-websocket's internals (its wsproto state machine, stream and stream lock); each helper falls
back to the library's own behaviour when those are missing (another trio-websocket version).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import trio
import trio_websocket
import wsproto.events
from wsproto.connection import ConnectionState

from .fanout import Frame, WriteNow


def _wire(proto: wsproto.WSConnection, frames: Sequence[str | Frame | bytes]) -> bytes:
    """The bytes for `frames`: replies framed by the connection's own wsproto state machine, shared
    frames as built, bytes (the rest of a direct write) as they are."""
    return b"".join(
        proto.send(wsproto.events.TextMessage(data=frame))
        if isinstance(frame, str)
        else frame.wire
        if isinstance(frame, Frame)
        else frame
        for frame in frames
    )


class _Spillover(trio.abc.HalfCloseableStream):
    """A connection's TCP stream that holds the unwritten rest of a direct write and sends it first.

    trio-websocket serialises its own writes (pongs, pings, close) and ours under one lock; a direct
    write happens only while that lock is free, so if the kernel takes part of it, whoever writes
    next, whichever task it is, must send the rest before anything else or frames would interleave.
    """

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.socket = getattr(inner, "socket", None)
        self.rest = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.rest:
            data, self.rest = self.rest + bytes(data), b""
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self.rest:  # e.g. the close frame for a frame that was not UTF-8: it goes out first
            data, self.rest = self.rest, b""
            with (
                trio.move_on_after(1.0),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await self.inner.send_all(data)
        await self.inner.aclose()


def close_bad_text_with_1007(ws: trio_websocket.WebSocketConnection) -> None:
    """Answer a text frame that is not valid UTF-8 with a close frame 1007 (RFC 6455 8.1).

    wsproto reports such a frame as a close event (code 1007) without sending anything, and
    trio-websocket then drops the TCP connection: the client never learns why. Here the close frame
    is framed by the connection's own wsproto (so its state moves to closing as for any close we
    send) and left for the stream to send before it closes. Needs trio-websocket's internals, like
    the direct writes; without them the old behaviour stays.
    """
    proto = getattr(ws, "_wsproto", None)
    stream = getattr(ws, "_stream", None)
    if proto is None or stream is None:
        return
    if not isinstance(stream, _Spillover):
        stream = _Spillover(stream)
        ws._stream = stream
    events = proto.events

    def checked_events() -> Iterator[wsproto.events.Event]:
        for event in events():
            if (
                isinstance(event, wsproto.events.CloseConnection)
                and event.code == 1007
                and proto.state is ConnectionState.OPEN  # a peer's own close frame arrives in REMOTE_CLOSING
            ):
                stream.rest += proto.send(
                    wsproto.events.CloseConnection(code=1007, reason="invalid UTF-8 in a text frame")
                )
            yield event

    proto.events = checked_events


def direct_writer(ws: trio_websocket.WebSocketConnection, stats: dict[str, int]) -> WriteNow | None:
    """A `WriteNow` for a plain TCP connection (None for TLS or another trio-websocket version).

    It writes only while nothing else is writing to the socket (the stream lock is free, no rest of
    an earlier direct write is pending) and never waits: a non-blocking `write(2)` takes what the
    kernel buffer has room for, and the stream keeps the rest to send before anything else.
    """
    proto = getattr(ws, "_wsproto", None)
    lock = getattr(ws, "_stream_lock", None)
    inner = getattr(ws, "_stream", None)
    if proto is None or lock is None or not isinstance(inner, trio.SocketStream):
        return None
    stream = _Spillover(inner)
    ws._stream = stream  # every write of the connection now goes through it
    fd = inner.socket.fileno()

    def write_now(frames: Sequence[str | Frame | bytes]) -> bool | None:
        if lock.locked() or stream.rest or ws.closed is not None or proto.state is not ConnectionState.OPEN:
            return None
        data = _wire(proto, frames)
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or closed: the writer's flush finds out and closes the connection
            sent = 0
        stats["direct"] += 1
        if sent == len(data):
            return True
        stats["partial"] += 1
        stream.rest = data[sent:]
        return False

    return write_now


async def send_frames(ws: trio_websocket.WebSocketConnection, frames: Sequence[str | Frame | bytes]) -> None:
    """Send text frames with one socket write.

    trio-websocket writes each message with its own `send_all`; under fan-out that per-frame cost
    dominates. Here replies are framed by the connection's own wsproto state machine, shared event
    frames are already framed (identical bytes: server frames are unmasked and no extension is
    negotiated), and everything is written at once under the connection's stream lock, so the wire
    and the library's state stay as `send_message` would leave them. Without those internals
    (another trio-websocket version) it falls back to `send_message` per frame.
    """
    proto = getattr(ws, "_wsproto", None)
    lock = getattr(ws, "_stream_lock", None)
    stream = getattr(ws, "_stream", None)
    if proto is None or lock is None or stream is None:
        for frame in frames:
            if isinstance(frame, bytes):  # pragma: no cover - direct writes need those internals too
                raise RuntimeError("raw bytes without trio-websocket's internals")
            await ws.send_message(frame if isinstance(frame, str) else frame.text)
        return
    if ws.closed is not None or proto.state is not ConnectionState.OPEN:
        raise trio_websocket.ConnectionClosed(ws.closed)
    data = _wire(proto, frames)
    async with lock:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise trio_websocket.ConnectionClosed(ws.closed) from None
