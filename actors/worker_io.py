"""The WorkerActor's I/O: one incarnation of its agent (the process, its dialect, and the tasks that
read its output, wait for its exit and write its input), how an incarnation is spawned and stopped,
and the output the worker keeps and fans out to viewers.

Nothing here decides a state. The reader records each chunk and feeds it to the dialect *in the
reader task*, so the child can always write and never blocks on the worker; signals, end of file and
the exit go to the worker's main loop (actors/worker.py) as events tagged with the incarnation's
generation, where every decision is made in one place, in order.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from ..protocols.config import ProfileConfig
from ..protocols.dialects.base import Dialect, ProtocolError, Signal
from . import hooks
from .process import AgentProcess, ExitStatus, SpawnError, spawn

log = logging.getLogger("shoal.worker")

_ANSI = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_][^\x1b]*\x1b\\|\x1b[@-Z\\-_]"
)


def clean_text(data: bytes) -> str:
    """Terminal output as plain text: escape sequences removed, CRLF folded, invalid UTF-8 replaced."""
    text = _ANSI.sub(b"", data).decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


class OutputRing:
    """The last `cap` bytes of output: a deque of chunks, grown with output and trimmed, never preallocated.

    Small writes are coalesced into the last chunk (up to 4 KiB) so a stream of 1-byte echoes does not
    cost an object per byte.
    """

    __slots__ = ("_chunks", "_size", "cap", "total")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total = 0  # bytes ever appended (task-relative tails)

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if self._chunks and len(self._chunks[-1]) + len(data) <= 4096:
            self._chunks[-1] += data
        else:
            self._chunks.append(data)
        self._size += len(data)
        while self._size > self.cap:
            extra = self._size - self.cap
            first = self._chunks[0]
            if len(first) <= extra:
                self._chunks.popleft()
                self._size -= len(first)
            else:
                self._chunks[0] = first[extra:]
                self._size -= extra

    def tail(self, max_bytes: int | None = None) -> bytes:
        want = self._size if max_bytes is None else max(0, min(max_bytes, self._size))
        parts: list[bytes] = []
        got = 0
        for chunk in reversed(self._chunks):
            if got >= want:
                break
            need = want - got
            part = chunk[-need:] if len(chunk) > need else chunk
            parts.append(part)
            got += len(part)
        return b"".join(reversed(parts))


class Output:
    """What the agent wrote, kept in a ring (logs, attempt tails, a crash's last words) and sent to
    live viewers. Bounded both ways: a viewer that falls behind loses chunks (`dropped_chunks`), the
    worker never waits for it."""

    def __init__(self, cap: int) -> None:
        self.ring = OutputRing(cap)
        self._viewers: dict[trio.MemoryReceiveChannel[bytes], trio.MemorySendChannel[bytes]] = {}
        self.dropped_chunks = 0  # live-output chunks a slow viewer did not get

    def record(self, data: bytes) -> None:
        self.ring.append(data)
        if self._viewers:
            for recv, send in list(self._viewers.items()):
                try:
                    send.send_nowait(data)
                except trio.WouldBlock:
                    self.dropped_chunks += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._viewers.pop(recv, None)

    def subscribe(self, size: int) -> trio.MemoryReceiveChannel[bytes]:
        send, recv = trio.open_memory_channel[bytes](size)
        self._viewers[recv] = send
        return recv

    def unsubscribe(self, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        send = self._viewers.pop(channel, None)
        if send is not None:
            send.close()
        channel.close()

    def close(self) -> None:
        """End every viewer's channel (the worker ended)."""
        for send in self._viewers.values():
            send.close()
        self._viewers.clear()


# ---- events an incarnation posts to the worker's main loop -------------------------------------------


@attrs.frozen
class Signals:
    gen: int
    signals: list[Signal]


@attrs.frozen
class Eof:
    gen: int


@attrs.frozen
class Exited:
    gen: int
    status: ExitStatus


Write = tuple[float, bytes] | None  # (delay before writing, data); None: close the input
MAX_PENDING_INPUT = 1024 * 1024  # typed input (SendInput) queued for a child that does not read it


@attrs.define(eq=False)
class Incarnation:
    """One process of a worker with its dialect, its queue of writes and its I/O tasks."""

    gen: int
    proc: AgentProcess
    dialect: Dialect
    writes: trio.MemorySendChannel[Write]
    write_queue: trio.MemoryReceiveChannel[Write]
    worker_id: str
    dialect_name: str  # the profile's dialect, named in the log when the dialect fails
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    hook: hooks.HookChannel | None = None  # Claude Code's Stop hook reports here (actors/hooks.py)
    eof: bool = False
    status: ExitStatus | None = None
    drain_deadline: float | None = None
    nursery: trio.Nursery | None = None  # the incarnation's I/O tasks
    pending: int = 0  # bytes queued for the writer task, not yet written

    def write(self, data: bytes, delay: float = 0.0) -> None:
        """Queue `data` for the writer task, written `delay` seconds after the write before it.

        The queue never blocks the worker's loop (a child that stops reading must not wedge it);
        what bounds it is `room`: a task's prompt and a menu's keys are one at a time, and typed
        input is refused beyond MAX_PENDING_INPUT."""
        self.pending += len(data)
        self.writes.send_nowait((delay, data))

    def room(self, size: int) -> bool:
        """Whether `size` more bytes of typed input may queue behind what the child has not read."""
        return self.pending + size <= MAX_PENDING_INPUT

    def end_input(self) -> None:
        """Close the child's input once the queued writes are out."""
        self.writes.send_nowait(None)

    def guard(self, method: Callable[..., list[Signal]], *args: Any) -> list[Signal]:
        """Run a dialect method; a bug in a dialect becomes a ProtocolError, not a dead worker."""
        try:
            return method(*args)
        except Exception as exc:
            log.exception("worker %s: dialect %s failed", self.worker_id, self.dialect_name)
            return [ProtocolError(f"dialect {self.dialect_name!r} failed: {exc!r}")]

    def quit_bytes(self) -> bytes | None:
        try:
            return self.dialect.quit_bytes()
        except Exception:  # pragma: no cover - a dialect bug: skip the polite rung
            return None

    async def run(self, post: Callable[[object], None], record: Callable[[bytes], None]) -> None:
        """The incarnation's I/O tasks, all cancelled by `scope` when it ends: output is recorded and
        fed to the dialect here; signals, EOF and the exit are `post`ed to the worker."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._read_output, post, record)
                if self.proc.transport == "pipe":
                    nursery.start_soon(self._read_stderr, record)
                nursery.start_soon(self._wait_exit, post)
                nursery.start_soon(self._write_input)
                if self.hook is not None:
                    gen = self.gen
                    nursery.start_soon(hooks.listen, self.hook, self.dialect, lambda s: post(Signals(gen, s)))

    async def _read_output(self, post: Callable[[object], None], record: Callable[[bytes], None]) -> None:
        while data := await self.proc.read():
            record(data)
            signals = self.guard(self.dialect.feed, data, trio.current_time())
            if signals:
                post(Signals(self.gen, signals))
        post(Eof(self.gen))

    async def _read_stderr(self, record: Callable[[bytes], None]) -> None:
        while data := await self.proc.read_stderr():
            record(data)  # kept for logs and attach, never parsed as protocol

    async def _wait_exit(self, post: Callable[[object], None]) -> None:
        status = await self.proc.wait()
        post(Exited(self.gen, status))

    async def _write_input(self) -> None:
        async for item in self.write_queue:
            if item is None:
                self.proc.close_input()
                continue
            delay, data = item
            if delay > 0:
                await trio.sleep(delay)
            written = await self.proc.write(data)
            self.pending -= len(data)
            if not written:
                break  # input gone: the exit is reported by _wait_exit

    async def stop(self, *, ladder: bool, starting: bool, timeout_s: float) -> tuple[ExitStatus | None, str]:
        """End the process (the stop ladder, or straight kill) and close everything; the status and
        the rung that ended it."""
        status, rung = self.status, "exited"
        try:
            if ladder and status is None:
                # an agent still starting up reads no input yet: the polite rung would only wait
                quit_bytes = None if starting else self.quit_bytes()
                status, rung = await self.proc.stop(quit_bytes, timeout_s)
        finally:  # even when cancelled mid-ladder: aclose is shielded and bounded
            final = await self.proc.aclose()
            self.scope.cancel()
            self.writes.close()
            if self.hook is not None:
                self.hook.close()
        return status or final, rung

    async def aclose(self, grace: float) -> None:
        """Kill and reap at once (the worker is ending); closes the process's descriptors."""
        self.scope.cancel()
        await self.proc.aclose(grace=grace)
        if self.hook is not None:
            self.hook.close()


async def start_incarnation(
    gen: int,
    worker_id: str,
    argv: list[str],
    env: Mapping[str, str],
    cwd: str | None,
    dialect: Dialect,
    profile_name: str,
    profile: ProfileConfig,
    state_dir: Path | None,
) -> Incarnation:
    """Prepare the agent's configuration (Claude Code: CLAUDE_CONFIG_DIR and its Stop-hook FIFO) and
    spawn its process. Raises SpawnError (the caller decides the state); nothing is left open then."""
    hook: hooks.HookChannel | None = None
    try:
        try:
            extra, hook = await hooks.prepare(profile_name, profile, worker_id, dialect.transport, state_dir)
        except OSError as exc:
            detail = f"cannot prepare its configuration: {exc}"
            raise SpawnError(argv[0], exc.errno or 0, detail) from None
        proc = await spawn(
            argv,
            transport=dialect.transport,
            env={**env, **extra},
            cwd=cwd,
            rows=profile.rows,
            cols=profile.cols,
        )
    except BaseException:
        if hook is not None:
            hook.close()
        raise
    writes, write_queue = trio.open_memory_channel[Write](math.inf)
    return Incarnation(gen, proc, dialect, writes, write_queue, worker_id, profile.dialect, hook=hook)
