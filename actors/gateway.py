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
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio_websocket
import wsproto.events
from wsproto.connection import ConnectionState

from ..protocols import api, rpc
from ..protocols.config import GatewayConfig, unstructure
from ..protocols.errors import Conflict, ShoalError, ValidationError
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
from .fanout import ClientSub, Fanout, Frame, Outbox, WriteNow

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
        self.outbox.write_now = _direct_writer(ws, gateway.write_stats)
        _close_bad_text_with_1007(ws)
        self._bucket = _Bucket(self.cfg.max_requests_per_s)
        self._inflight = trio.Semaphore(MAX_INFLIGHT)
        self._sub_ids = itertools.count(1)
        self._subs: dict[int, ClientSub] = {}
        self._attached: dict[str, tuple[trio.MemoryReceiveChannel[bytes], trio.CancelScope]] = {}
        self._close: _Closing | None = None
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "auth.login": self._login,
            "shoal.version": self._version,
            "swarm.status": self._status,
            "swarm.start": self._start,
            "swarm.stop": self._stop,
            "swarm.halt": self._halt,
            "swarm.resume": self._resume,
            "swarm.metrics": self._metrics,
            "swarm.series": self._series,
            "swarm.config.get": self._config_get,
            "swarm.config.patch": self._config_patch,
            "workers.list": self._workers,
            "workers.get": self._worker,
            "workers.logs": self._logs,
            "workers.pause": self._pause,
            "workers.resume": self._resume_worker,
            "workers.restart": self._restart,
            "workers.kill": self._kill,
            "workers.set_model": self._set_model,
            "workers.set_capabilities": self._set_capabilities,
            "workers.attach": self._attach,
            "workers.detach": self._detach,
            "workers.input": self._input,
            "workers.resize": self._resize,
            "workers.answer": self._answer,
            "tasks.submit": self._submit,
            "tasks.get": self._get,
            "tasks.list": self._list,
            "tasks.diff": self._diff,
            "tasks.merge": self._merge,
            "tasks.artifacts": self._artifacts,
            "workspaces.list": self._workspaces,
            "workspaces.prune": self._prune,
            "tasks.cancel": self._task_op("cancel"),
            "tasks.retry": self._task_op("retry"),
            "tasks.skip": self._task_op("skip"),
            "tasks.boost": self._boost,
            "tasks.assign": self._assign,
            "tasks.complete": self._complete,
            "events.subscribe": self._subscribe,
            "events.unsubscribe": self._unsubscribe,
            "alerts.test": self._alerts_test,
            "models.pause": self._pause_model,
            "models.resume": self._resume_model,
            "nodes.list": self._nodes,
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
                await _send_frames(self.ws, frames)
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

    # ---- swarm -------------------------------------------------------------------------------

    async def _status(self, _p: api.NoParams) -> Any:
        return await self.swarm.status()

    async def _start(self, p: api.StartParams) -> Any:
        if p.config is not None:
            await self.swarm.config_patch(p.config)
        await self.swarm.start()
        return await self.swarm.status()

    async def _stop(self, p: api.StopParams) -> Any:
        await self.swarm.stop(drain=p.drain)
        return await self.swarm.status()

    async def _halt(self, p: api.HaltParams) -> Any:
        await self.swarm.halt(p.reason)
        return await self.swarm.status()

    async def _resume(self, _p: api.NoParams) -> Any:
        await self.swarm.resume()
        return await self.swarm.status()

    async def _metrics(self, _p: api.NoParams) -> Any:
        return await self.swarm.metrics_snapshot()

    async def _series(self, p: api.SeriesParams) -> Any:
        return self.swarm.metrics.series(p.window_s, p.step_s)

    async def _config_get(self, _p: api.NoParams) -> Any:
        return self.swarm.shown_config()

    async def _config_patch(self, p: api.ConfigPatchParams) -> Any:
        await self.swarm.config_patch(p.partial)
        return self.swarm.shown_config()

    async def _nodes(self, _p: api.NoParams) -> Any:
        return self.swarm.nodes()

    async def _alerts_test(self, _p: api.NoParams) -> Any:
        return await self.swarm.send_test_alert()

    async def _pause_model(self, p: api.PauseModelParams) -> Any:
        return await self.swarm.pause_model(p.model, p.reason)

    async def _resume_model(self, p: api.ModelParams) -> Any:
        return await self.swarm.resume_model(p.model)

    # ---- workers -----------------------------------------------------------------------------

    async def _workers(self, _p: api.NoParams) -> Any:
        return {"workers": [unstructure(w) for w in self.swarm.workers()]}

    async def _worker(self, p: api.IdParams) -> Any:
        return unstructure(self.swarm.worker(p.id))

    async def _logs(self, p: api.LogsParams) -> Any:
        data = self.swarm.logs(p.id, p.tail)
        return {"id": p.id, "encoding": "base64", "data": base64.b64encode(data).decode("ascii")}

    async def _pause(self, p: api.IdParams) -> Any:
        await self.swarm.pause(p.id)
        return {"ok": True, "id": p.id}

    async def _resume_worker(self, p: api.IdParams) -> Any:
        await self.swarm.resume_worker(p.id)
        return {"ok": True, "id": p.id}

    async def _restart(self, p: api.IdParams) -> Any:
        await self.swarm.restart(p.id)
        return {"ok": True, "id": p.id}

    async def _kill(self, p: api.IdParams) -> Any:
        await self.swarm.kill(p.id)
        return {"ok": True, "id": p.id}

    async def _set_model(self, p: api.SetModelParams) -> Any:
        await self.swarm.set_model(p.id, p.model)
        return {"ok": True, "id": p.id, "model": p.model}

    async def _set_capabilities(self, p: api.SetCapabilitiesParams) -> Any:
        await self.swarm.set_capabilities(p.id, p.capabilities)
        return {"ok": True, "id": p.id, "capabilities": p.capabilities}

    async def _input(self, p: api.InputParams) -> Any:
        data = p.decoded()
        await self.swarm.send_input(p.id, data, force=p.force)
        return {"ok": True, "id": p.id, "bytes": len(data)}

    async def _answer(self, p: api.AnswerParams) -> Any:
        try:
            return await self.swarm.answer(p.id, p.checked_choice())
        except ValidationError as exc:
            if exc.field == "choice":  # name it as the client sent it
                raise ValidationError("params.choice", exc.message, exc.value) from None
            raise

    async def _resize(self, p: api.ResizeParams) -> Any:
        await self.swarm.resize(p.id, p.rows, p.cols)
        return {"ok": True, "id": p.id, "rows": p.rows, "cols": p.cols}

    async def _attach(self, p: api.IdParams) -> Any:
        if p.id in self._attached:
            raise Conflict(f"already attached to {p.id} on this connection")
        snapshot, channel = self.swarm.attach(p.id)
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

    # ---- tasks -------------------------------------------------------------------------------

    async def _submit(self, p: api.SubmitParams) -> Any:
        specs = p.specs()
        if p.task is not None:
            return unstructure(await self.swarm.submit(specs[0]))
        return {"tasks": [unstructure(t) for t in await self.swarm.submit_many(specs)]}

    async def _get(self, p: api.IdParams) -> Any:
        return unstructure(await self.swarm.get(p.id))

    async def _diff(self, p: api.DiffParams) -> Any:
        return await self.swarm.diff(p.id, p.attempt, p.stat)

    async def _merge(self, p: api.MergeParams) -> Any:
        return await self.swarm.merge(p.id, p.attempt, p.into, p.squash)

    async def _artifacts(self, p: api.ArtifactsParams) -> Any:
        return await self.swarm.artifacts(p.id, p.attempt, p.name)

    async def _workspaces(self, _p: api.NoParams) -> Any:
        return await self.swarm.workspaces()

    async def _prune(self, p: api.PruneParams) -> Any:
        return await self.swarm.prune_workspaces(p.older_than_s, p.base)

    async def _list(self, p: api.ListTasksParams) -> Any:
        tasks, cursor = await self.swarm.list(p.state, p.limit, p.cursor)
        return {"tasks": [unstructure(t) for t in tasks], "cursor": cursor}

    def _task_op(self, name: str) -> Callable[[api.IdParams], Awaitable[Any]]:
        async def op(p: api.IdParams) -> Any:
            return unstructure(await getattr(self.swarm, name)(p.id))

        return op

    async def _boost(self, p: api.BoostParams) -> Any:
        return unstructure(await self.swarm.boost(p.id, p.priority))

    async def _assign(self, p: api.AssignParams) -> Any:
        return unstructure(await self.swarm.assign(p.id, p.worker))

    async def _complete(self, p: api.CompleteParams) -> Any:
        task = await self.swarm.complete(p.id, p.attempt, p.status, result=p.result, reason=p.reason)
        return unstructure(task)

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


def _close_bad_text_with_1007(ws: trio_websocket.WebSocketConnection) -> None:
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


def _direct_writer(ws: trio_websocket.WebSocketConnection, stats: dict[str, int]) -> WriteNow | None:
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


async def _send_frames(ws: trio_websocket.WebSocketConnection, frames: Sequence[str | Frame | bytes]) -> None:
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
