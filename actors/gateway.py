"""GatewayActor: JSON-RPC 2.0 over websocket (trio-websocket) for the CLI, the dashboard and scripts.

Each connection is a trio task with helpers: a reader that parses frames (protocols/rpc.py) and runs
requests, and a writer that sends what the connection's outbox holds (replies, and the event
notifications the gateway's one fan-out task puts there, actors/fanout.py) in one socket write; an
attached worker's output has a pump of its own (after a flush barrier, so the attach reply comes
first). Nothing here can slow the swarm: the fan-out never waits for a client (beyond a client's
buffer events are dropped, counted and reported as `events.overflow`), and a client that stops
reading is closed once one write has waited `send_timeout_s`. Every limit answers with a JSON-RPC
error or a clean close with a reason.
Settings are read when the gateway starts; changing `gateway.*` live takes effect at the next start.

Authentication happens before anything is served: `Authorization: Bearer <token>` in the handshake,
or `auth.login {token}` as the first call. A wrong token is refused after a delay (and the
connection closed). Browsers (which send `Origin`) must come from an allowed origin: the dashboard's
own, `gateway.allowed_origins`, or `extra_origins`.

The methods that only call the swarm are in actors/gateway_methods.py, the socket writes that reach
into trio-websocket in actors/wswrite.py; this module is the connections and their sessions.
"""

from __future__ import annotations

import base64
import importlib.metadata
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio_websocket

from ..protocols import api, rpc
from ..protocols.config import GatewayConfig
from ..protocols.errors import Conflict, ShoalError
from ..runtime.eventbus import Event
from .auth import (
    bearer_token,
    bind_error,
    check_bind,
    dashboard_origins,
    origin_allowed,
    remove_endpoint,
    ssl_context,
    token_matches,
    write_endpoint,
)
from .fanout import ClientSub, Fanout, Frame, Outbox
from .gateway_methods import SwarmMethods
from .wswrite import close_bad_text_with_1007, direct_writer, send_frames

if TYPE_CHECKING:
    from .swarm import SwarmHandle

log = logging.getLogger("shoal.gateway")

try:
    SHOAL_VERSION = importlib.metadata.version("shoal")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    SHOAL_VERSION = "0+unknown"

MAX_INFLIGHT = 32  # concurrent requests per authenticated connection (the reader waits beyond it)
WRITE_BATCH = 256  # frames written to a socket at once at most


@attrs.frozen
class _Then:
    """A result whose reply must be queued before `after` starts (so notifications follow it)."""

    result: Any
    after: Callable[[], Awaitable[None]]


class _Closing(Exception):
    """Raised inside a connection to close it with a websocket code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)


class _Bucket:
    """Token bucket for requests per second: `rate` per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = trio.current_time()

    def take(self) -> float:
        """0.0 when allowed, else the seconds to wait before the next request would be."""
        now = trio.current_time()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class GatewayActor:
    """Serve the swarm's JSON-RPC API on a websocket. `run` reports `(host, port)` once bound."""

    def __init__(
        self,
        swarm: SwarmHandle,
        config: GatewayConfig,
        token: str,
        extra_origins: Sequence[str] = (),
    ) -> None:
        self.swarm = swarm
        self.config = config
        self._token = token
        self.extra_origins = tuple(extra_origins)
        self.url: str | None = None
        self.address: tuple[str, int] | None = None
        self.connections = 0  # open connections, authenticated or not
        self._closed_total = 0
        # timings (attributes so tests and embedders can shorten them)
        self.auth_fail_delay_s = 1.0
        self.auth_timeout_s = 10.0
        self.send_timeout_s = 10.0
        self.ping_interval_s = 30.0
        self.handshake_timeout_s = 10.0
        self._conn_ids = itertools.count(1)
        self.fanout = Fanout(swarm.bus, config.coalesce_ms / 1000)
        self.write_stats = {"direct": 0, "partial": 0}  # fan-out writes straight to sockets
        self.closed: list[tuple[int, int | None, str | None]] = []  # (connection, code, reason), recent
        self._closed_changed = trio.Event()
        self.methods = SwarmMethods(swarm)

    async def wait_closed(self, count: int) -> list[tuple[int, int | None, str | None]]:
        """Wait until `count` connections have ended since start (lets callers wait without polling)."""
        while self._closed_total < count:
            await self._closed_changed.wait()
        return list(self.closed)

    def _record_close(self, ident: int, code: int | None, reason: str | None) -> None:
        self._closed_total += 1
        self.closed.append((ident, code, reason))
        del self.closed[:-100]
        self._closed_changed.set()
        self._closed_changed = trio.Event()

    def allowed_origins(self) -> list[str]:
        return [*dashboard_origins(self.swarm.http_url), *self.config.allowed_origins, *self.extra_origins]

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        warning = check_bind(cfg.host, cfg.allow_remote)
        if warning:
            log.warning(warning)
        ctx = await trio.to_thread.run_sync(ssl_context, cfg.tls_cert, cfg.tls_key)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fanout.run)
            try:
                server: trio_websocket.WebSocketServer = await nursery.start(
                    partial(
                        trio_websocket.serve_websocket,
                        self._handle,
                        cfg.host,
                        cfg.port,
                        ctx,
                        max_message_size=cfg.max_message_bytes,
                        message_queue_size=4,
                        connect_timeout=self.handshake_timeout_s,
                        disconnect_timeout=5.0,
                    )
                )
            except OSError as exc:  # port taken, no permission, no such address: say so in one line
                raise bind_error(exc, "gateway", cfg.host, cfg.port, "--port") from None
            endpoint = server.listeners[0]
            assert isinstance(endpoint, trio_websocket.Endpoint)
            host, port = str(endpoint.address), endpoint.port
            self.address = (host, port)
            shown = f"[{host}]" if ":" in host else host
            self.url = f"{'wss' if ctx else 'ws'}://{shown}:{port}/"
            log.info("gateway listening on %s", self.url)
            state_dir = getattr(self.swarm, "state_dir", None)
            if state_dir is not None:
                await trio.to_thread.run_sync(write_endpoint, state_dir, self.url)
            try:
                task_status.started((host, port))
                await trio.sleep_forever()
            finally:
                if state_dir is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(remove_endpoint, state_dir, self.url)

    # ---- handshake ---------------------------------------------------------------------------

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        """Per-connection entry point; never lets an exception out (it would stop the server)."""
        try:
            await self._handshake(request)
        except Exception:
            log.exception("gateway connection failed")

    async def _handshake(self, request: trio_websocket.WebSocketRequest) -> None:
        headers = {name.lower(): value.decode("latin-1") for name, value in request.headers}
        origin = headers.get(b"origin")
        if not origin_allowed(origin, self.allowed_origins()):
            log.warning("gateway: refused Origin %r", origin)
            await request.reject(403, body=b"origin not allowed")
            return
        if self.connections >= self.config.max_connections:
            await request.reject(503, body=b"too many connections")
            return
        self.connections += 1
        try:
            authed = False
            if b"authorization" in headers:
                if not token_matches(bearer_token(headers[b"authorization"]), self._token):
                    await trio.sleep(self.auth_fail_delay_s)
                    await request.reject(401, body=b"wrong token")
                    return
                authed = True
            subprotocol = rpc.SUBPROTOCOL if rpc.SUBPROTOCOL in request.proposed_subprotocols else None
            ws = await request.accept(
                subprotocol=subprotocol,
                extra_headers=[(b"Shoal-Protocol", str(rpc.PROTOCOL_VERSION).encode())],
            )
            conn = _Connection(self, ws, next(self._conn_ids), authed)
            try:
                await conn.run()
            finally:
                reason = conn.close_reason or ws.closed
                self._record_close(
                    conn.ident,
                    reason.code if reason else None,
                    reason.reason if reason else None,
                )
        finally:
            self.connections -= 1


class _Connection:
    """One websocket client: reader, writer, keep-alive, and the pumps it has started."""

    def __init__(
        self, gateway: GatewayActor, ws: trio_websocket.WebSocketConnection, ident: int, authed: bool
    ):
        self.gw = gateway
        self.swarm = gateway.swarm
        self.cfg = gateway.config
        self.ws = ws
        self.ident = ident
        self.authed = authed
        self.outbox = Outbox(self.cfg.client_buffer)
        self.outbox.write_now = direct_writer(ws, gateway.write_stats)
        close_bad_text_with_1007(ws)
        self._bucket = _Bucket(self.cfg.max_requests_per_s)
        self._inflight = trio.Semaphore(MAX_INFLIGHT)
        self._sub_ids = itertools.count(1)
        self._subs: dict[int, ClientSub] = {}
        self._attached: dict[str, tuple[trio.MemoryReceiveChannel[bytes], trio.CancelScope]] = {}
        self._close: _Closing | None = None
        self._nursery: trio.Nursery | None = None
        m = gateway.methods
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "auth.login": self._login,
            "shoal.version": self._version,
            "swarm.status": m.status,
            "swarm.start": m.start,
            "swarm.stop": m.stop,
            "swarm.halt": m.halt,
            "swarm.resume": m.resume,
            "swarm.metrics": m.metrics,
            "swarm.series": m.series,
            "swarm.config.get": m.config_get,
            "swarm.config.patch": m.config_patch,
            "workers.list": m.workers,
            "workers.get": m.worker,
            "workers.logs": m.logs,
            "workers.pause": m.pause,
            "workers.resume": m.resume_worker,
            "workers.restart": m.restart,
            "workers.kill": m.kill,
            "workers.set_model": m.set_model,
            "workers.set_capabilities": m.set_capabilities,
            "workers.attach": self._attach,
            "workers.detach": self._detach,
            "workers.input": m.send_input,
            "workers.resize": m.resize,
            "workers.answer": m.answer,
            "tasks.submit": m.submit,
            "tasks.get": m.get,
            "tasks.list": m.list_tasks,
            "tasks.diff": m.diff,
            "tasks.merge": m.merge,
            "tasks.artifacts": m.artifacts,
            "workspaces.list": m.workspaces,
            "workspaces.prune": m.prune,
            "tasks.cancel": m.task_op("cancel"),
            "tasks.retry": m.task_op("retry"),
            "tasks.skip": m.task_op("skip"),
            "tasks.boost": m.boost,
            "tasks.assign": m.assign,
            "tasks.complete": m.complete,
            "events.subscribe": self._subscribe,
            "events.unsubscribe": self._unsubscribe,
            "alerts.test": m.alerts_test,
            "models.pause": m.pause_model,
            "models.resume": m.resume_model,
            "nodes.list": m.nodes,
        }
        assert set(self._handlers) == set(api.METHODS), "every method in the table has a handler"

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._keepalive)
                if not self.authed:
                    nursery.start_soon(self._auth_deadline)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            for sub in self._subs.values():
                self.gw.fanout.remove(sub)
            self._subs.clear()
            self.outbox.close()
            for worker, (channel, _scope) in list(self._attached.items()):
                self._release(worker, channel)
            self._attached.clear()
        if self._close is not None:
            with trio.move_on_after(1.0):
                await self.ws.aclose(self._close.code, self._close.reason)

    @property
    def close_reason(self) -> trio_websocket.CloseReason | None:
        """Why this server closed the connection (None: the client closed it)."""
        if self._close is None:
            return None
        return trio_websocket.CloseReason(self._close.code, self._close.reason)

    def close(self, code: int, reason: str) -> None:
        """Close this connection with a websocket close code and reason (first reason wins)."""
        if self._close is None:
            self._close = _Closing(code, reason)
            log.info("gateway: closing connection %d: %s", self.ident, reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _auth_deadline(self) -> None:
        await trio.sleep(self.gw.auth_timeout_s)
        if not self.authed:
            self.close(1008, "authentication timeout: send the token first")

    async def _keepalive(self) -> None:
        """Ping now and then; a peer that does not answer (half-open TCP) is closed."""
        while True:
            await trio.sleep(self.gw.ping_interval_s)
            with trio.move_on_after(self.gw.ping_interval_s) as scope:
                try:
                    await self.ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                self.close(1001, "keep-alive: no pong")
                return

    async def _close_after(self, closing: _Closing) -> None:
        """Close once every frame queued so far is sent."""
        self.outbox.put(closing)

    async def _writer(self) -> None:
        """Send what the outbox holds (replies and notifications, in order) in one write at a time."""
        while True:
            try:
                items = await self.outbox.take(WRITE_BATCH)
            except trio.ClosedResourceError:
                return
            frames: list[str | Frame | bytes] = []
            for item in items:
                if isinstance(item, str | Frame | bytes):
                    frames.append(item)
                    continue
                if frames and not await self._write(frames):
                    return
                frames = []
                if isinstance(item, trio.Event):  # a flush marker: everything before it is written
                    item.set()
                elif isinstance(item, _Closing):
                    self.close(item.code, item.reason)
                    return
            if frames and not await self._write(frames):
                return

    async def _write(self, frames: Sequence[str | Frame | bytes]) -> bool:
        """Write frames now (replies, and the pumps' notifications); False once the connection ends.

        A client that does not take a write within `send_timeout_s` is not reading: it is closed.
        """
        with trio.move_on_after(self.gw.send_timeout_s) as scope:
            try:
                await send_frames(self.ws, frames)
            except trio_websocket.ConnectionClosed:
                self.close(1000, "closed")
                return False
        if scope.cancelled_caught:
            self.close(1008, "overflow: the client is not reading")
            return False
        return True

    async def _flushed(self) -> None:
        """Wait until every reply queued so far is written (so notifications cannot overtake it)."""
        marker = trio.Event()
        self.outbox.put(marker)
        await marker.wait()

    async def _enqueue(self, message: dict[str, Any] | list[dict[str, Any]] | str) -> None:
        """Queue a reply for the writer, waiting for room (only this connection waits)."""
        await self.outbox.put_reply(message if isinstance(message, str) else rpc.dumps(message))

    # ---- requests ----------------------------------------------------------------------------

    async def _reader(self) -> None:
        while True:
            try:
                frame = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            incoming = rpc.parse(frame, self.cfg.max_message_bytes)
            if not self.authed or incoming.batch:
                # before authentication everything is serial (no parallel token guessing); a batch
                # is one reply frame, so its requests run in order in one task
                await self._serve_frame(incoming)
            else:
                await self._inflight.acquire()
                assert self._nursery is not None
                self._nursery.start_soon(self._serve_frame_released, incoming)

    async def _serve_frame_released(self, incoming: rpc.Incoming) -> None:
        try:
            await self._serve_frame(incoming)
        finally:
            self._inflight.release()

    async def _serve_frame(self, incoming: rpc.Incoming) -> None:
        replies: list[dict[str, Any]] = []
        followups: list[Callable[[], Awaitable[None]]] = []
        for item in incoming.items:
            if not isinstance(item, rpc.Request):
                replies.append(item)
                continue
            reply, after = await self._serve(item)
            if reply is not None and not item.notification:
                replies.append(reply)
            if after is not None:
                followups.append(after)
        frame = rpc.reply_frame(replies, incoming.batch)
        if frame is not None:
            await self._enqueue(frame)
        for after in followups:
            await after()

    async def _serve(
        self, req: rpc.Request
    ) -> tuple[dict[str, Any] | None, Callable[[], Awaitable[None]] | None]:
        wait = self._bucket.take()
        if wait:
            return (
                rpc.error(
                    req.id,
                    rpc.RATE_LIMITED,
                    f"rate limit: at most {self.cfg.max_requests_per_s:g} requests per second",
                    {"retry_after_s": round(wait, 3)},
                ),
                None,
            )
        spec = api.METHODS.get(req.method)
        if not self.authed and (spec is None or spec.auth):
            return (
                rpc.error(
                    req.id,
                    rpc.UNAUTHORIZED,
                    "authentication required: send `Authorization: Bearer <token>` or call auth.login first",
                ),
                None,
            )
        try:
            params = api.parse_params(req.method, req.params)
            value = await self._handlers[req.method](params)
        except _Closing as closing:
            # answer first, then close once the writer has flushed the answer
            return rpc.error(req.id, rpc.UNAUTHORIZED, closing.reason), partial(self._close_after, closing)
        except Exception as exc:
            if not isinstance(exc, ShoalError):  # ShoalErrors are answers; anything else is a bug
                log.exception("gateway: %s failed", req.method)
            return rpc.error_from_exception(req.id, exc), None
        if isinstance(value, _Then):
            return rpc.result(req.id, value.result), value.after
        return rpc.result(req.id, value), None

    # ---- session -----------------------------------------------------------------------------

    async def _login(self, p: api.LoginParams) -> Any:
        if not token_matches(p.token, self.gw._token):
            await trio.sleep(self.gw.auth_fail_delay_s)
            if not self.authed:
                raise _Closing(1008, "authentication failed: wrong token")
            raise rpc.RpcError(rpc.UNAUTHORIZED, "wrong token")
        self.authed = True
        return {"ok": True, "protocol": rpc.PROTOCOL_VERSION, "version": SHOAL_VERSION}

    async def _version(self, _p: api.NoParams) -> Any:
        return {"version": SHOAL_VERSION, "protocol": rpc.PROTOCOL_VERSION, "methods": sorted(api.METHODS)}

    # ---- attach (the other methods: actors/gateway_methods.py) ---------------------------------

    async def _attach(self, p: api.IdParams) -> Any:
        if p.id in self._attached:
            raise Conflict(f"already attached to {p.id} on this connection")
        snapshot, channel = await self.swarm.attach(p.id)
        scope = trio.CancelScope()
        self._attached[p.id] = (channel, scope)
        result = {"id": p.id, "encoding": "base64", "snapshot": base64.b64encode(snapshot).decode("ascii")}

        async def start_pump() -> None:
            assert self._nursery is not None
            self._nursery.start_soon(self._attach_pump, p.id, channel, scope)

        return _Then(result, start_pump)

    async def _attach_pump(
        self, worker: str, channel: trio.MemoryReceiveChannel[bytes], scope: trio.CancelScope
    ) -> None:
        """Forward output after the attach reply; chunks that queued up go out as one notification."""
        with scope:
            await self._flushed()
            try:
                async for chunk in channel:
                    parts = [chunk]
                    while True:
                        try:
                            parts.append(channel.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                            break
                    data = base64.b64encode(b"".join(parts)).decode("ascii")
                    note = rpc.notification("attach.output", {"id": worker, "data": data})
                    if not await self._write([rpc.dumps(note)]):
                        return
            except trio.ClosedResourceError:
                pass
            note = rpc.notification("attach.closed", {"id": worker, "reason": "worker ended"})
            await self._write([rpc.dumps(note)])
            if self._attached.get(worker, (None,))[0] is channel:
                del self._attached[worker]
                self._release(worker, channel)

    def _release(self, worker: str, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        try:
            self.swarm.detach(worker, channel)
        except Exception:  # the worker may be gone already: nothing to release then
            log.debug("gateway: detach %s after it ended", worker, exc_info=True)
        channel.close()

    async def _detach(self, p: api.IdParams) -> Any:
        entry = self._attached.pop(p.id, None)
        if entry is None:
            return {"ok": True, "id": p.id, "attached": False}
        channel, scope = entry
        scope.cancel()
        self._release(p.id, channel)
        return {"ok": True, "id": p.id, "attached": False}

    # ---- events ------------------------------------------------------------------------------

    async def _subscribe(self, p: api.SubscribeParams) -> Any:
        if len(self._subs) >= self.cfg.max_subscriptions:
            raise rpc.RpcError(
                rpc.LIMIT_EXCEEDED,
                f"at most {self.cfg.max_subscriptions} subscriptions per connection",
                {"limit": self.cfg.max_subscriptions},
            )
        bus = self.swarm.bus
        topics = tuple(p.topics)
        # register and read the replay buffer with no await in between: nothing falls in a crack
        last = bus.last_seq
        sid = next(self._sub_ids)
        sub = ClientSub(self.outbox, sid, topics, p.batch, last)
        self.gw.fanout.add(sub)
        self._subs[sid] = sub
        replay: list[Event] = []
        preamble: list[str | Frame] = []
        if p.since is not None:
            replay, complete = bus.replay(p.since, topics)
            gap: dict[str, Any] | None = None
            if p.since > last:
                gap = {"since": p.since, "first_seq": None, "last_seq": last, "reason": "reset"}
            elif not complete:
                first = replay[0].seq if replay else None
                gap = {"since": p.since, "first_seq": first, "last_seq": last, "reason": "evicted"}
            if gap is not None:
                preamble.append(rpc.dumps(rpc.notification("events.gap", {"subscription": sid, **gap})))
        result = {
            "subscription": sid,
            "seq": last,
            "replayed": len(replay),
            "gap": bool(preamble),
            "batch": p.batch,
        }

        async def go_live() -> None:
            self.gw.fanout.go_live(sub, preamble, replay)

        return _Then(result, go_live)

    async def _unsubscribe(self, p: api.UnsubscribeParams) -> Any:
        ids = list(self._subs) if p.subscription is None else [p.subscription]
        removed = []
        for sid in ids:
            sub = self._subs.pop(sid, None)
            if sub is not None:
                self.gw.fanout.remove(sub)
                removed.append(sid)
        return {"ok": True, "unsubscribed": removed}
