"""The Python client of the gateway: `async with connect(url, token) as client:` in a trio program.

One websocket carries every call; a background task reads replies and notifications and hands each
to whoever waits for it, so calls from several tasks may run at once. Typed helpers return the
runtime's own attrs classes (`Task`, `WorkerInfo`, `SwarmConfig`); errors come back as the same typed
errors the embedded API raises (`ValidationError` naming the field, `NotFound`, `Conflict`), other
JSON-RPC errors as `RpcError`. Connection problems raise `GatewayError` subclasses whose message
says what to do (server not running, wrong token).

    async with connect("ws://127.0.0.1:8765/", token) as client:
        task = await client.submit({"prompt": "hello"})
        async with client.events(["task.*"]) as stream:
            async for item in stream:
                ...

It stays one module (over 700 lines) because most of it is the `Client` class mirroring
protocols/api.py's method table one typed method per gateway method (tests/test_method_table.py
reads this file to check none is missing); the connection plumbing around it is small.
"""

from __future__ import annotations

import base64
import itertools
import math
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio
import trio_websocket

from ..protocols import rpc
from ..protocols.config import SwarmConfig, config_from_dict, structure, unstructure
from ..protocols.errors import ShoalError
from ..protocols.tasks import Task, TaskSpec, TaskState
from ..protocols.workers import WorkerInfo
from ..runtime.eventbus import Event

DEFAULT_URL = "ws://127.0.0.1:8765/"
RECEIVE_BYTES = 1 << 16  # read from the socket at a time (the library's 4 KiB splits event batches)
STREAM_BUFFER = 10_000  # notifications buffered per event stream / attachment before dropping


class GatewayError(ShoalError):
    """The gateway could not be reached or the connection ended."""


class ConnectError(GatewayError):
    """Nothing answered at the URL, or the handshake failed."""


class AuthError(GatewayError):
    """The gateway refused the token (or the Origin)."""


class GatewayClosed(GatewayError):
    """The connection closed; `code` and `reason` are the websocket close code and reason."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"the gateway closed the connection ({code}: {reason or 'no reason given'})")


class GatewayTimeout(GatewayError, TimeoutError):
    pass


@attrs.frozen
class Gap:
    """Events after `since` are gone from the replay buffer; the first still kept is `first_seq`."""

    subscription: int
    since: int
    first_seq: int | None


@attrs.frozen
class Overflow:
    """`dropped` events were lost because this client read too slowly."""

    subscription: int
    dropped: int
    first_dropped_seq: int | None


StreamItem = Event | Gap | Overflow


class _Inbox:
    """A bounded queue the reader task fills without ever waiting (drops are counted)."""

    def __init__(self, size: int) -> None:
        self.send, self.recv = trio.open_memory_channel[Any](size)
        self.dropped = 0
        self.first_dropped_seq: int | None = None

    def offer(self, item: Any, seq: int | None = None) -> None:
        try:
            self.send.send_nowait(item)
        except trio.WouldBlock:
            if self.dropped == 0:
                self.first_dropped_seq = seq
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _offer_event(inbox: _Inbox, params: dict[str, Any]) -> None:
    seq = int(params.get("seq", 0))
    data = params.get("data") or {}
    inbox.offer(Event(seq, float(params.get("ts", 0.0)), str(params.get("topic")), data), seq)


class EventStream:
    """Events matching the subscription's topics, in `seq` order, plus `Gap` / `Overflow` notices.

    Use `async with client.events(...) as stream` (unsubscribes on exit) or iterate the value of
    `client.events(...)` directly (subscribes on first use, unsubscribes when the client closes).
    """

    def __init__(self, client: Client, topics: Sequence[str], since: int | None) -> None:
        self._client = client
        self.topics = list(topics)
        self.since = since
        self.subscription: int | None = None
        self.seq: int | None = None  # the swarm's last seq when the subscription started
        self._inbox = _Inbox(STREAM_BUFFER)

    async def start(self) -> EventStream:
        if self.subscription is None:
            # many events to a frame: far less to parse when events come fast
            params: dict[str, Any] = {"topics": self.topics, "batch": True}
            if self.since is not None:
                params["since"] = self.since
            # register the inbox before the reply can be followed by its first notification
            reply = await self._client.call("events.subscribe", params, _on_reply=self._register)
            self.seq = reply.get("seq")
        return self

    def _register(self, reply: Any) -> None:
        if isinstance(reply, dict) and isinstance(reply.get("subscription"), int):
            self.subscription = reply["subscription"]
            self._client._streams[self.subscription] = self._inbox

    async def aclose(self) -> None:
        if self.subscription is not None:
            self._client._streams.pop(self.subscription, None)
            if not self._client.closed:
                try:
                    await self._client.call("events.unsubscribe", {"subscription": self.subscription})
                except GatewayError:
                    pass
            self.subscription = None
        self._inbox.send.close()

    async def __aenter__(self) -> EventStream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> StreamItem:
        await self.start()
        if self._inbox.dropped:
            item = Overflow(self.subscription or 0, self._inbox.dropped, self._inbox.first_dropped_seq)
            self._inbox.dropped, self._inbox.first_dropped_seq = 0, None
            return item
        try:
            got: StreamItem | GatewayClosed = await self._inbox.recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(got, GatewayClosed):
            raise got
        return got


class Attachment:
    """A live view of one worker: `snapshot` rebuilds the screen, iterate for further output bytes."""

    def __init__(self, client: Client, worker: str, snapshot: bytes, inbox: _Inbox) -> None:
        self._client = client
        self.worker = worker
        self.snapshot = snapshot
        self._inbox = inbox
        self.closed_reason: str | None = None

    async def send(self, data: bytes, force: bool = False) -> None:
        """Type `data` into the worker; a busy worker refuses it (Conflict) unless `force`."""
        await self._client.send_input(self.worker, data, force=force)

    async def resize(self, rows: int, cols: int) -> None:
        await self._client.resize(self.worker, rows, cols)

    def __aiter__(self) -> Attachment:
        return self

    async def __anext__(self) -> bytes:
        if self._inbox.dropped:
            raise GatewayError(f"attach to {self.worker}: output lost ({self._inbox.dropped} chunks dropped)")
        try:
            got: bytes | str | GatewayClosed = await self._inbox.recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(got, GatewayClosed):
            raise got
        if isinstance(got, str):  # attach.closed: the worker ended or the server detached us
            self.closed_reason = got
            raise StopAsyncIteration
        return got


class Client:
    """A connection to the gateway. Create it with `connect`."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, url: str, call_timeout: float | None) -> None:
        self._ws = ws
        self.url = url
        self.call_timeout = call_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[rpc.Response]] = {}
        self._on_reply: dict[int, Any] = {}
        self._streams: dict[int, _Inbox] = {}
        self._attachments: dict[str, _Inbox] = {}
        self._closed: GatewayClosed | None = None
        self.subprotocol: str | None = ws.subprotocol

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # ---- plumbing --------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | Literal["default"] | None = "default",
        _on_reply: Any = None,
    ) -> Any:
        """Call `method` and return its result; an error reply raises the matching typed error."""
        if self._closed is not None:
            raise self._closed
        ident = next(self._ids)
        send, recv = trio.open_memory_channel[rpc.Response](1)
        self._pending[ident] = send
        if _on_reply is not None:
            self._on_reply[ident] = _on_reply
        limit = self.call_timeout if timeout == "default" else timeout
        try:
            with trio.move_on_after(math.inf if limit is None else limit) as scope:
                try:
                    await self._ws.send_message(rpc.dumps(rpc.request(method, params, ident)))
                except trio_websocket.ConnectionClosed as exc:
                    raise self._closed_error(exc) from None
                try:
                    response = await recv.receive()
                except trio.EndOfChannel:
                    raise self._closed or GatewayClosed(None, None) from None
        finally:
            self._pending.pop(ident, None)
            self._on_reply.pop(ident, None)
        if scope.cancelled_caught:
            raise GatewayTimeout(f"{method}: no reply from {self.url} within {limit:g} s")
        if response.error is not None:
            raise rpc.exception_from_error(response.error)
        return response.result

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a JSON-RPC notification (no reply)."""
        body = rpc.request(method, params, None)
        del body["id"]
        try:
            await self._ws.send_message(rpc.dumps(body))
        except trio_websocket.ConnectionClosed as exc:
            raise self._closed_error(exc) from None

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (tests and tools that speak the protocol by hand)."""
        try:
            await self._ws.send_message(frame)
        except trio_websocket.ConnectionClosed as exc:
            raise self._closed_error(exc) from None

    def _closed_error(self, exc: trio_websocket.ConnectionClosed | None) -> GatewayClosed:
        if self._closed is None:
            reason = exc.reason if exc is not None else self._ws.closed
            self._closed = GatewayClosed(reason.code if reason else None, reason.reason if reason else None)
        return self._closed

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self._ws.get_message()
                try:
                    messages = rpc.parse_reply(frame)
                except rpc.RpcError:
                    continue  # nothing sane to route it to
                for msg in messages:
                    if isinstance(msg, rpc.Response):
                        self._deliver(msg)
                    else:
                        self._route(msg)
        except trio_websocket.ConnectionClosed as exc:
            self._closed_error(exc)
        finally:
            closed = self._closed_error(None)
            for send in self._pending.values():
                send.close()
            for inbox in [*self._streams.values(), *self._attachments.values()]:
                inbox.offer(closed)
                inbox.send.close()

    def _deliver(self, response: rpc.Response) -> None:
        ident = response.id
        if not isinstance(ident, int):
            return
        hook = self._on_reply.pop(ident, None)
        if hook is not None and response.error is None:
            hook(response.result)
        send = self._pending.get(ident)
        if send is not None:
            try:
                send.send_nowait(response)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _route(self, note: rpc.Notification) -> None:
        params = note.params if isinstance(note.params, dict) else {}
        if note.method == "attach.output":
            inbox = self._attachments.get(str(params.get("id")))
            if inbox is not None:
                inbox.offer(base64.b64decode(params.get("data", "")))
            return
        if note.method == "attach.closed":
            inbox = self._attachments.get(str(params.get("id")))
            if inbox is not None:
                inbox.offer(str(params.get("reason") or "closed"))
            return
        sub = params.get("subscription")
        inbox = self._streams.get(sub) if isinstance(sub, int) else None
        if inbox is None:
            return
        if note.method == "events.batch":
            for item in params.get("events") or ():
                if isinstance(item, dict):
                    _offer_event(inbox, item)
        elif note.method == "event":
            _offer_event(inbox, params)
        elif note.method == "events.gap":
            inbox.offer(Gap(sub, int(params.get("since", 0)), params.get("first_seq")))  # type: ignore[arg-type]
        elif note.method == "events.overflow":
            inbox.offer(
                Overflow(sub, int(params.get("dropped", 0)), params.get("first_dropped_seq"))  # type: ignore[arg-type]
            )

    # ---- session -----------------------------------------------------------------------------

    async def login(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("auth.login", {"token": token})
        return result

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("shoal.version")
        return result

    # ---- swarm -------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("swarm.status")
        return result

    async def start(self, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("swarm.start", {} if config is None else {"config": config})
        return result

    async def stop(self, drain: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("swarm.stop", {"drain": drain}, timeout=None)
        return result

    async def halt(self, reason: str = "halted by an operator") -> dict[str, Any]:
        result: dict[str, Any] = await self.call("swarm.halt", {"reason": reason})
        return result

    async def resume(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("swarm.resume")
        return result

    async def pause_model(self, model: str, reason: str = "paused by operator") -> dict[str, Any]:
        """Park `model` until `resume_model` (models.pause): its workers take no new task."""
        result: dict[str, Any] = await self.call("models.pause", {"model": model, "reason": reason})
        return result

    async def resume_model(self, model: str) -> dict[str, Any]:
        """End a model's park, whatever parked it (models.resume); Conflict when it is not parked."""
        result: dict[str, Any] = await self.call("models.resume", {"model": model})
        return result

    async def nodes(self) -> dict[str, Any]:
        """Every node of the cluster (`nodes.list`): `{node_id, cluster, nodes: [...]}`; a one-node
        swarm lists itself."""
        result: dict[str, Any] = await self.call("nodes.list")
        return result

    async def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("swarm.metrics")
        return result

    async def series(self, window_s: float, step_s: float | None = None) -> Any:
        params: dict[str, Any] = {"window_s": window_s}
        if step_s is not None:
            params["step_s"] = step_s
        return await self.call("swarm.series", params)

    async def alerts_test(self) -> dict[str, Any]:
        """Deliver a test alert to every configured webhook; the outcome per webhook."""
        result: dict[str, Any] = await self.call("alerts.test", timeout=None)
        return result

    async def config_get(self) -> SwarmConfig:
        return config_from_dict(await self.call("swarm.config.get"))

    async def config_patch(self, partial: Mapping[str, Any]) -> SwarmConfig:
        return config_from_dict(await self.call("swarm.config.patch", {"partial": dict(partial)}))

    # ---- workers -----------------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        reply = await self.call("workers.list")
        return [structure(w, WorkerInfo, "workers") for w in reply["workers"]]

    async def worker(self, worker_id: str) -> WorkerInfo:
        result: WorkerInfo = structure(
            await self.call("workers.get", {"id": worker_id}), WorkerInfo, "worker"
        )
        return result

    async def logs(self, worker_id: str, tail: int | None = None) -> bytes:
        params: dict[str, Any] = {"id": worker_id}
        if tail is not None:
            params["tail"] = tail
        reply = await self.call("workers.logs", params)
        return base64.b64decode(reply["data"])

    async def _worker_op(self, method: str, worker_id: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(method, {"id": worker_id, **extra})
        return result

    async def pause(self, worker_id: str) -> dict[str, Any]:
        return await self._worker_op("workers.pause", worker_id)

    async def resume_worker(self, worker_id: str) -> dict[str, Any]:
        return await self._worker_op("workers.resume", worker_id)

    async def restart(self, worker_id: str) -> dict[str, Any]:
        return await self._worker_op("workers.restart", worker_id)

    async def kill(self, worker_id: str) -> dict[str, Any]:
        return await self._worker_op("workers.kill", worker_id)

    async def set_model(self, worker_id: str, model: str) -> dict[str, Any]:
        return await self._worker_op("workers.set_model", worker_id, model=model)

    async def set_capabilities(self, worker_id: str, capabilities: Sequence[str] | None) -> dict[str, Any]:
        caps = None if capabilities is None else list(capabilities)
        return await self._worker_op("workers.set_capabilities", worker_id, capabilities=caps)

    async def send_input(self, worker_id: str, data: bytes, force: bool = False) -> dict[str, Any]:
        encoded = base64.b64encode(data).decode("ascii")
        return await self._worker_op("workers.input", worker_id, data=encoded, force=force)

    async def resize(self, worker_id: str, rows: int, cols: int) -> dict[str, Any]:
        return await self._worker_op("workers.resize", worker_id, rows=rows, cols=cols)

    async def answer(self, worker_id: str, choice: int | str) -> dict[str, Any]:
        """Answer the question the worker's agent waits on: an option number (1-based) or text.
        Returns `{id, question, choice, label}`; GatewayError when it waits on nothing (-32009) or the
        choice is out of range (-32602, `params.choice`)."""
        return await self._worker_op("workers.answer", worker_id, choice=choice)

    @asynccontextmanager
    async def attach(self, worker_id: str) -> AsyncIterator[Attachment]:
        """Stream a worker's output; leaving the block detaches (the worker keeps running)."""
        if worker_id in self._attachments:
            raise GatewayError(f"already attached to {worker_id} on this connection")
        inbox = _Inbox(STREAM_BUFFER)
        self._attachments[worker_id] = inbox
        attached = False
        try:
            reply = await self.call("workers.attach", {"id": worker_id})
            attached = True
            yield Attachment(self, worker_id, base64.b64decode(reply["snapshot"]), inbox)
        finally:
            self._attachments.pop(worker_id, None)
            inbox.send.close()
            if attached and not self.closed:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.call("workers.detach", {"id": worker_id})
                    except ShoalError:
                        pass

    # ---- tasks -------------------------------------------------------------------------------

    @staticmethod
    def _spec(task: TaskSpec | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(task, TaskSpec):
            data: dict[str, Any] = unstructure(task)
            return data
        return dict(task)

    async def submit(self, task: TaskSpec | Mapping[str, Any]) -> Task:
        return _task(await self.call("tasks.submit", {"task": self._spec(task)}))

    async def submit_many(self, tasks: Sequence[TaskSpec | Mapping[str, Any]]) -> list[Task]:
        reply = await self.call("tasks.submit", {"tasks": [self._spec(t) for t in tasks]})
        return [_task(t) for t in reply["tasks"]]

    async def get(self, task_id: str) -> Task:
        return _task(await self.call("tasks.get", {"id": task_id}))

    async def diff(self, task_id: str, attempt: int | None = None, stat: bool = False) -> dict[str, Any]:
        """The change the task's attempt left in its worktree: record and patch text (tasks.diff)."""
        params = _given(id=task_id, stat=stat, attempt=attempt)
        result: dict[str, Any] = await self.call("tasks.diff", params)
        return result

    async def merge(
        self, task_id: str, attempt: int | None = None, into: str | None = None, squash: bool = False
    ) -> dict[str, Any]:
        """Merge the task's change into a branch of its repository (tasks.merge)."""
        params = _given(id=task_id, squash=squash, attempt=attempt, into=into)
        result: dict[str, Any] = await self.call("tasks.merge", params)
        return result

    async def artifacts(
        self, task_id: str, attempt: int | None = None, name: str | None = None
    ) -> dict[str, Any]:
        """The files a task's attempt kept, or one of them (base64 in `data`) (tasks.artifacts)."""
        params = _given(id=task_id, attempt=attempt, name=name)
        result: dict[str, Any] = await self.call("tasks.artifacts", params)
        return result

    async def workspaces(self) -> dict[str, Any]:
        """Shoal's worktrees and task branches (workspaces.list)."""
        result: dict[str, Any] = await self.call("workspaces.list")
        return result

    async def prune_workspaces(
        self, older_than_s: float | None = None, base: str | None = None
    ) -> dict[str, Any]:
        """Remove unused worktrees and merged or old task branches (workspaces.prune)."""
        params = _given(older_than_s=older_than_s, base=base)
        result: dict[str, Any] = await self.call("workspaces.prune", params)
        return result

    async def list_tasks(
        self, state: TaskState | str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Task], str | None]:
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = str(state)
        if cursor is not None:
            params["cursor"] = cursor
        reply = await self.call("tasks.list", params)
        return [_task(t) for t in reply["tasks"]], reply.get("cursor")

    async def cancel(self, task_id: str) -> Task:
        return _task(await self.call("tasks.cancel", {"id": task_id}))

    async def retry(self, task_id: str) -> Task:
        return _task(await self.call("tasks.retry", {"id": task_id}))

    async def skip(self, task_id: str) -> Task:
        return _task(await self.call("tasks.skip", {"id": task_id}))

    async def boost(self, task_id: str, priority: int) -> Task:
        return _task(await self.call("tasks.boost", {"id": task_id, "priority": priority}))

    async def assign(self, task_id: str, worker_id: str) -> Task:
        return _task(await self.call("tasks.assign", {"id": task_id, "worker": worker_id}))

    async def complete(
        self,
        task_id: str,
        attempt: int,
        status: Literal["done", "failed"],
        result: str | None = None,
        reason: str | None = None,
    ) -> Task:
        params: dict[str, Any] = {"id": task_id, "attempt": attempt, "status": status}
        if result is not None:
            params["result"] = result
        if reason is not None:
            params["reason"] = reason
        return _task(await self.call("tasks.complete", params))

    # ---- events ------------------------------------------------------------------------------

    def events(self, topics: Sequence[str] = ("*",), since: int | None = None) -> EventStream:
        """Events matching `topics` (shell patterns); with `since`, first the missed ones (or a Gap)."""
        return EventStream(self, topics, since)

    async def aclose(self) -> None:
        await self._ws.aclose()


def _task(data: Any) -> Task:
    result: Task = structure(data, Task, "task")
    return result


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single real exception inside nested groups (trio's strict groups), or the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        real = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)] or list(exc.exceptions[:1])
        if len(real) != 1:
            return exc
        exc = real[0]
    return exc


def _rejected(url: str, exc: trio_websocket.ConnectionRejected) -> GatewayError:
    body = (exc.body or b"").decode("utf-8", "replace").strip()
    if exc.status_code in (401, 403):
        return AuthError(
            f"the gateway at {url} refused the connection ({exc.status_code}: {body or 'unauthorized'}): "
            "check the token (`shoal token` on the server's host, --token / --token-file / SHOAL_TOKEN)"
        )
    return ConnectError(f"the gateway at {url} refused the connection ({exc.status_code}: {body})")


@asynccontextmanager
async def connect(
    url: str = DEFAULT_URL,
    token: str | None = None,
    *,
    auth: Literal["header", "login"] = "header",
    origin: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    call_timeout: float | None = 60.0,
    max_message_bytes: int = 64 << 20,
) -> AsyncIterator[Client]:
    """Connect to the gateway at `url` with `token` (sent as `Authorization: Bearer`, or with
    `auth="login"` as the first call `auth.login`). `origin` sets the `Origin` header (browsers do).
    """
    headers: list[tuple[bytes, bytes]] = []
    if token is not None and auth == "header":
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    entered = False
    try:
        async with trio_websocket.open_websocket_url(
            url,
            ssl_context=ssl_context,
            subprotocols=[rpc.SUBPROTOCOL],
            extra_headers=headers,
            connect_timeout=connect_timeout,
            disconnect_timeout=5.0,
            max_message_size=max_message_bytes,
            message_queue_size=64,
            receive_buffer_size=RECEIVE_BYTES,
        ) as ws:
            entered = True
            async with trio.open_nursery() as nursery:
                client = Client(ws, url, call_timeout)
                nursery.start_soon(client._reader)
                try:
                    if token is not None and auth == "login":
                        try:
                            await client.login(token)
                        except rpc.RpcError as exc:
                            raise AuthError(
                                f"the gateway at {url} refused the token ({exc.message}): check `shoal token`"
                            ) from None
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        real = unwrap_group(group)
        if real is group:
            raise
        raise real from None
    except trio_websocket.ConnectionRejected as exc:
        if entered:
            raise
        raise _rejected(url, exc) from None
    except trio_websocket.ConnectionTimeout:
        if entered:
            raise
        hint = (
            " (wss: is the server's certificate trusted? see ssl_context)" if url.startswith("wss:") else ""
        )
        raise ConnectError(
            f"no answer from {url} within {connect_timeout:g} s: is the URL right?{hint}"
        ) from None
    except (trio_websocket.HandshakeError, OSError) as exc:
        if entered:
            raise
        cause = exc.__cause__ or exc
        raise ConnectError(
            f"cannot connect to the gateway at {url} ({cause}): is `shoal serve` running? "
            "Start it, or point --url / SHOAL_URL at it"
        ) from None
    except ValueError as exc:
        if entered:
            raise
        raise ConnectError(f"bad gateway URL {url!r}: {exc}") from None


def _given(**params: Any) -> dict[str, Any]:
    """A method's params without the optional ones left out (None): the server's defaults apply."""
    return {key: value for key, value in params.items() if value is not None}
