"""The gateway end to end against an embedded swarm, over real websockets on 127.0.0.1.

Each test starts `open_swarm` (with its own gateway, as `shoal serve` does) or a `GatewayActor` of its
own on the swarm when it needs short timings, then talks JSON-RPC through `shoal.runtime.connect` or
through a raw websocket when the point is what goes over the wire.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from swarmkit import fake_profile, swarm_config, wait_for

from shoal.actors.client import AuthError, Client, ConnectError, Gap, GatewayClosed, Overflow, connect
from shoal.actors.gateway import GatewayActor
from shoal.actors.swarm import SwarmHandle
from shoal.actors.tree import open_swarm
from shoal.protocols import rpc
from shoal.protocols.config import GatewayConfig
from shoal.protocols.errors import Conflict, NotFound, ValidationError
from shoal.protocols.tasks import TaskState
from shoal.runtime.eventbus import Event


@attrs.frozen
class Live:
    swarm: SwarmHandle
    gateway: GatewayActor
    url: str
    token: str


@asynccontextmanager
async def serving(
    tmp_path: Path,
    gateway: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[Live]:
    """An embedded swarm (no workers unless asked) and a gateway of the test's own on port 0."""
    sections.setdefault("scaling", {"max_workers": 0})
    if gateway and "replay_buffer" in gateway:  # the swarm's event bus keeps the replay buffer
        sections["gateway"] = {"replay_buffer": gateway["replay_buffer"]}
    config = swarm_config(tmp_path, **sections)
    async with open_swarm(config) as swarm, trio.open_nursery() as nursery:
        gw_config = GatewayConfig(**{"port": 0, **(gateway or {})})
        gw = GatewayActor(swarm, gw_config, swarm.token)
        gw.auth_fail_delay_s = 0.05
        for name, value in (timings or {}).items():
            assert hasattr(gw, name)
            setattr(gw, name, value)
        await nursery.start(gw.run)
        assert gw.url is not None
        yield Live(swarm, gw, gw.url, swarm.token)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw(url: str, token: str | None, **kw: Any) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
    async with trio_websocket.open_websocket_url(url, extra_headers=headers, **kw) as ws:
        yield ws


async def exchange(ws: trio_websocket.WebSocketConnection, message: Any) -> Any:
    """Send one frame and return the next frame that is a reply (notifications are skipped)."""
    await ws.send_message(message if isinstance(message, str | bytes) else json.dumps(message))
    return (await next_reply(ws))[0]


async def next_reply(ws: trio_websocket.WebSocketConnection) -> tuple[Any, list[dict[str, Any]]]:
    """The next reply frame, and the notifications that came before it."""
    notes: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while True:
            frame = json.loads(await ws.get_message())
            if isinstance(frame, dict) and "id" not in frame:
                notes.append(frame)
                continue
            return frame, notes


def req(method: str, params: Any = None, ident: Any = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": ident}
    if params is not None:
        out["params"] = params
    return out


# ---- the public contract, method by method ------------------------------------------------------------


async def test_swarm_and_task_methods_end_to_end(tmp_path: Path) -> None:
    async with serving(tmp_path) as live, connect(live.url, live.token) as c:
        version = await c.version()
        assert version["protocol"] == rpc.PROTOCOL_VERSION and "tasks.submit" in version["methods"]
        assert c.subprotocol == rpc.SUBPROTOCOL

        status = await c.status()
        assert status["state"] == "running"

        a = await c.submit({"id": "a", "prompt": "first", "priority": 1})
        assert a.id == "a" and a.state == TaskState.READY
        b, _d = await c.submit_many(
            [{"id": "b", "prompt": "second", "deps": ["a"]}, {"id": "d", "prompt": "x"}]
        )
        assert b.state == TaskState.BLOCKED and b.deps == ("a",)
        assert (await c.get("b")).prompt == "second"
        # idempotent resubmit
        assert (await c.submit({"id": "a", "prompt": "first", "priority": 1})).id == "a"

        ready, cursor = await c.list_tasks(state="ready", limit=100)
        assert {t.id for t in ready} == {"a", "d"} and cursor is None
        page1, cursor = await c.list_tasks(limit=2)
        assert len(page1) == 2 and cursor is not None
        page2, cursor2 = await c.list_tasks(limit=2, cursor=cursor)
        assert {t.id for t in page1 + page2} == {"a", "b", "d"} and cursor2 is None

        assert (await c.boost("d", 50)).priority == 50
        assert (await c.skip("d")).state == TaskState.SKIPPED
        with live.swarm.events(["task.dead", "task.cancelled", "task.skipped"]) as sub:
            assert (await c.cancel("a")).state == TaskState.CANCELLED
            # a cancelled dependency makes its dependant fail with that reason
            await wait_for(sub, lambda e: e.data.get("task_id") == "b")
        assert (await c.get("b")).state in (TaskState.DEAD, TaskState.CANCELLED, TaskState.SKIPPED)
        retried = await c.retry("a")
        assert retried.state in (TaskState.READY, TaskState.BLOCKED)

        with pytest.raises(NotFound) as nf:
            await c.get("nope")
        assert nf.value.kind == "task" and nf.value.ident == "nope"
        with pytest.raises(NotFound):
            await c.assign("a", "no-such-worker")
        with pytest.raises(Conflict):
            await c.complete("a", attempt=7, status="done", result="late")  # no such open attempt
        with pytest.raises(ValidationError) as bad:
            await c.submit({"prompt": "x", "priority": "high"})
        assert bad.value.field == "params.task.priority"

        metrics = await c.metrics()
        assert isinstance(metrics, dict)
        report = await c.alerts_test()  # no webhooks configured: nothing to deliver
        assert report["webhooks"] == [] and report["delivered"] == report["failed"] == 0
        series = await c.series(60)
        assert isinstance(series, dict)

        halted = await c.halt("maintenance")
        assert halted["state"] == "halted" and halted["reason"] == "maintenance"
        assert (await c.resume())["state"] == "running"
        assert (await c.stop())["state"] in ("stopping", "stopped")
        assert (await c.start())["state"] == "running"

        assert await c.workers() == []
        with pytest.raises(NotFound):
            await c.worker("w-none")
        for method in (
            "workers.pause",
            "workers.resume",
            "workers.restart",
            "workers.kill",
            "workers.attach",
        ):
            with pytest.raises(NotFound):
                await c.call(method, {"id": "w-none"})


async def test_config_get_and_two_clients_patching_at_once(tmp_path: Path) -> None:
    async with (
        serving(tmp_path) as live,
        connect(live.url, live.token) as c1,
        connect(live.url, live.token) as c2,
    ):
        before = await c1.config_get()

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(c1.config_patch, {"scaling": {"idle_s": 10.0 + n}})
                nursery.start_soon(c2.config_patch, {"scaling": {"tick_s": 0.5 + n}})
            nursery.start_soon(c2.config_patch, {"queue": {"affinity_bonus": 7}})
        after = await c2.config_get()
        assert after.scaling.idle_s in {10.0 + n for n in range(5)}
        assert after.scaling.tick_s in {0.5 + n for n in range(5)}
        assert after.queue.affinity_bonus == 7  # no patch lost another's change
        assert after.scaling.max_workers == before.scaling.max_workers
        assert live.swarm.config == after

        with pytest.raises(ValidationError) as bad:
            await c1.config_patch({"scaling": {"max_workers": -1}})
        assert bad.value.field.startswith("scaling") and "max_workers" in str(bad.value)
        assert (await c1.config_get()) == after  # the old config stays


async def test_gateway_started_by_open_swarm(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, gateway={"enabled": True, "port": 0}, scaling={"max_workers": 0})
    async with open_swarm(config) as swarm:
        assert swarm.gateway_url is not None and swarm.gateway_url.startswith("ws://127.0.0.1:")
        assert json.loads((swarm.state_dir / "gateway.json").read_text())["url"] == swarm.gateway_url
        async with connect(swarm.gateway_url, swarm.token) as c:
            assert (await c.status())["gateway_url"] == swarm.gateway_url
    assert not (swarm.state_dir / "gateway.json").exists()


# ---- authentication and Origin ---------------------------------------------------------------------------


async def test_auth_header_login_and_wrong_tokens(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        # right token in the header
        async with connect(live.url, live.token) as c:
            assert (await c.status())["state"] == "running"
        # wrong token in the header: refused at the handshake
        with pytest.raises(AuthError) as info:
            async with connect(live.url, "wrong"):
                pass
        assert "401" in str(info.value)
        # right token by auth.login
        async with connect(live.url, live.token, auth="login") as c:
            assert (await c.status())["state"] == "running"
        # no token: nothing but auth.login is served
        async with raw(live.url, None) as ws:
            reply = await exchange(ws, req("swarm.status"))
            assert reply["error"]["code"] == rpc.UNAUTHORIZED
            reply = await exchange(ws, req("tasks.explode"))
            assert reply["error"]["code"] == rpc.UNAUTHORIZED  # not even which methods exist
            ok = await exchange(ws, req("auth.login", {"token": live.token}, 2))
            assert ok["result"]["ok"] is True
            assert (await exchange(ws, req("swarm.status", None, 3)))["result"]["state"] == "running"
        # wrong token by auth.login: an error, then the connection is closed
        async with raw(live.url, None) as ws:
            reply = await exchange(ws, req("auth.login", {"token": "guess"}))
            assert reply["error"]["code"] == rpc.UNAUTHORIZED
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                with trio.fail_after(5):
                    await ws.get_message()
            assert closed.value.reason.code == 1008
            assert "authentication failed" in (closed.value.reason.reason or "")
        with pytest.raises(AuthError):
            async with connect(live.url, "guess", auth="login"):
                pass
        assert (await live.swarm.status())["state"] == "running"


async def test_unauthenticated_connection_times_out(tmp_path: Path) -> None:
    async with serving(tmp_path, timings={"auth_timeout_s": 0.2}) as live, raw(live.url, None) as ws:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()
        assert closed.value.reason.code == 1008
        assert "authentication timeout" in (closed.value.reason.reason or "")


async def test_origin_check(tmp_path: Path) -> None:
    async with serving(tmp_path, gateway={"allowed_origins": ("https://ops.example",)}) as live:
        with pytest.raises(AuthError) as info:
            async with connect(live.url, live.token, origin="https://evil.example"):
                pass
        assert "403" in str(info.value) and "origin" in str(info.value)
        async with connect(live.url, live.token, origin="https://ops.example") as c:
            assert (await c.status())["state"] == "running"
        async with connect(live.url, live.token) as c:  # no Origin: not a browser
            assert (await c.status())["state"] == "running"


async def test_dashboard_origin_is_allowed_by_default(tmp_path: Path) -> None:
    config = swarm_config(
        tmp_path,
        gateway={"enabled": True, "port": 0},
        http={"enabled": True, "port": 0},
        scaling={"max_workers": 0},
    )
    async with open_swarm(config) as swarm:
        assert swarm.gateway_url and swarm.http_url
        origin = swarm.http_url.rstrip("/")
        async with connect(swarm.gateway_url, swarm.token, auth="login", origin=origin) as c:
            assert (await c.status())["state"] == "running"
        with pytest.raises(AuthError):
            async with connect(swarm.gateway_url, swarm.token, origin="http://127.0.0.1:1"):
                pass


# ---- bad input on the wire ---------------------------------------------------------------------------------


async def test_malformed_messages_get_the_right_errors(tmp_path: Path) -> None:
    async with serving(tmp_path) as live, raw(live.url, live.token) as ws:
        cases: list[tuple[Any, int]] = [
            ("{not json", rpc.PARSE_ERROR),
            ("[1, 2", rpc.PARSE_ERROR),
            ("[]", rpc.INVALID_REQUEST),
            ('"text"', rpc.INVALID_REQUEST),
            ({"jsonrpc": "1.0", "method": "swarm.status", "id": 1}, rpc.INVALID_REQUEST),
            (req("tasks.explode"), rpc.METHOD_NOT_FOUND),
            (req("tasks.get"), rpc.INVALID_PARAMS),
            (req("tasks.get", {"id": 5}), rpc.INVALID_PARAMS),
            (req("tasks.get", {"id": "missing"}), rpc.NOT_FOUND),
            (req("workers.get", {"id": "missing"}), rpc.NOT_FOUND),
            (
                req("tasks.submit", {"task": {"prompt": "p", "deps": ["p-self"], "id": "p-self"}}),
                rpc.INVALID_PARAMS,
            ),
            (req("workers.input", {"id": "w", "data": "%%%"}), rpc.INVALID_PARAMS),
            (b"\x00\x01binary", rpc.INVALID_REQUEST),
        ]
        for message, code in cases:
            reply = await exchange(ws, message)
            assert reply["error"]["code"] == code, (message, reply)
            assert reply["jsonrpc"] == "2.0"
        field = (await exchange(ws, req("tasks.get", {"id": 5}, 9)))["error"]
        assert field["data"]["field"] == "params.id" and "params.id" in field["message"]
        # batch: answered in one frame, in order, notifications left out
        batch = [
            req("shoal.version", None, 1),
            {"jsonrpc": "2.0", "method": "swarm.status"},
            7,
            req("nope", None, 3),
        ]
        replies = await exchange(ws, batch)
        assert [r.get("id") for r in replies] == [1, None, 3]
        assert "result" in replies[0] and replies[1]["error"]["code"] == rpc.INVALID_REQUEST
        assert replies[2]["error"]["code"] == rpc.METHOD_NOT_FOUND
        # a batch of notifications only: no reply at all (the next reply is the next request's)
        await ws.send_message(json.dumps([{"jsonrpc": "2.0", "method": "swarm.status"}]))
        assert (await exchange(ws, req("shoal.version", None, "after")))["id"] == "after"
        # still serving, and the swarm is unaffected
        assert (await exchange(ws, req("swarm.status", None, 2)))["result"]["state"] == "running"


async def test_huge_frame_closes_with_1009_and_others_go_on(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, gateway={"max_message_bytes": 4096}) as live,
        connect(live.url, live.token) as other,
    ):
        task = await other.submit({"id": "keep", "prompt": "stay"})
        async with raw(live.url, live.token) as ws:
            await ws.send_message(json.dumps(req("tasks.submit", {"task": {"prompt": "x" * 10_000}})))
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                with trio.fail_after(5):
                    await ws.get_message()
            assert closed.value.reason.code == 1009
        assert (await other.get("keep")) == task
        # multi-byte characters: within the frame limit in characters, over it in bytes
        async with raw(live.url, live.token) as ws:
            frame = json.dumps(req("tasks.submit", {"task": {"prompt": "é" * 3000}}), ensure_ascii=False)
            reply = await exchange(ws, frame)
            assert reply["error"]["code"] == rpc.INVALID_REQUEST and "too large" in reply["error"]["message"]


async def test_a_text_frame_that_is_not_utf8_is_closed_with_1007(tmp_path: Path) -> None:
    """RFC 6455 8.1: the gateway answers invalid UTF-8 in a text frame with a close frame 1007 (it
    used to drop the TCP connection without one); other clients go on."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request

    async with serving(tmp_path) as live, connect(live.url, live.token) as other:
        assert live.gateway.address is not None
        host, port = live.gateway.address
        stream = await trio.open_tcp_stream(host, port)
        client = WSConnection(ConnectionType.CLIENT)
        auth = [(b"Authorization", f"Bearer {live.token}".encode())]
        await stream.send_all(client.send(Request(host=f"{host}:{port}", target="/", extra_headers=auth)))
        seen: list[Any] = []
        with trio.fail_after(5):
            while not any(isinstance(e, CloseConnection) for e in seen):
                data = await stream.receive_some()
                client.receive_data(data or None)
                for event in client.events():
                    seen.append(event)
                    if isinstance(event, AcceptConnection):
                        # a masked text frame (mask 0) whose payload is not UTF-8
                        await stream.send_all(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
                if not data:
                    break
        closes = [e for e in seen if isinstance(e, CloseConnection)]
        assert closes and closes[0].code == 1007, seen
        await stream.aclose()
        assert (await other.status())["state"] == "running"


async def test_rate_limit_and_subscription_limit(tmp_path: Path) -> None:
    async with serving(tmp_path, gateway={"max_requests_per_s": 5, "max_subscriptions": 2}) as live:
        async with raw(live.url, live.token) as ws:
            replies = await exchange(ws, [req("shoal.version", None, i) for i in range(20)])
            limited = [r for r in replies if "error" in r]
            assert limited and all(r["error"]["code"] == rpc.RATE_LIMITED for r in limited)
            assert limited[0]["error"]["data"]["retry_after_s"] > 0
            assert len(replies) - len(limited) <= 6
        async with connect(live.url, live.token) as c:
            await c.events(["task.*"]).start()
            await c.events(["worker.*"]).start()
            with pytest.raises(rpc.RpcError) as info:
                await c.events(["*"]).start()
            assert info.value.code == rpc.LIMIT_EXCEEDED


async def test_connection_limit(tmp_path: Path) -> None:
    async with serving(tmp_path, gateway={"max_connections": 1}) as live, connect(live.url, live.token) as c:
        with pytest.raises(ConnectError) as info:
            async with connect(live.url, live.token):
                pass
        assert "503" in str(info.value)
        assert (await c.status())["state"] == "running"


async def test_half_open_connection_is_dropped(tmp_path: Path) -> None:
    async with serving(tmp_path, timings={"handshake_timeout_s": 0.2}) as live:
        assert live.gateway.address is not None
        host, port = live.gateway.address
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ...and never finishes
            with trio.fail_after(live.gateway.handshake_timeout_s + 5):
                assert await stream.receive_some() == b""  # the server hung up


async def test_client_that_never_reads_is_closed_without_slowing_anyone(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, gateway={"client_buffer": 8}, timings={"send_timeout_s": 0.3}) as live,
        connect(live.url, live.token) as good,
    ):
        bus = live.swarm.bus
        # a client that subscribes, reads the reply, and then never reads again
        async with raw(live.url, live.token, message_queue_size=1, receive_buffer_size=1024) as lazy:
            assert "result" in await exchange(lazy, req("events.subscribe", {"topics": ["load.*"]}))
            async with good.events(["load.*"]) as stream:
                blob = "x" * 65536
                seqs: list[int] = []
                with trio.fail_after(60):
                    # publish until the gateway gives up on the lazy client; the good one reads every
                    # event, which also gives the lazy one's pump time to fill its socket
                    while not live.gateway.closed:
                        published = bus.publish("load.tick", {"blob": blob})
                        async for item in stream:
                            if isinstance(item, Event):
                                seqs.append(item.seq)
                                if item.seq == published.seq:
                                    break
                (_, code, reason), *_ = live.gateway.closed
                assert code == 1008 and "not reading" in (reason or "")
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the good one missed nothing
                assert (await good.status())["state"] == "running"


# ---- events ------------------------------------------------------------------------------------------------


async def test_events_subscribe_replay_since_and_gap(tmp_path: Path) -> None:
    async with serving(tmp_path, gateway={"replay_buffer": 50}) as live, connect(live.url, live.token) as c:
        bus = live.swarm.bus
        async with c.events(["demo.*"]) as stream:
            first = bus.publish("demo.one", {"n": 1})
            bus.publish("other.topic", {})
            second = bus.publish("demo.two", {"n": 2})
            got = [await stream.__anext__(), await stream.__anext__()]
        assert got == [first, second]  # same seq, ts, topic and data as on the bus
        assert second.seq == first.seq + 2  # seq counts every event of the swarm

        # missed while disconnected: replayed first, then live, nothing twice
        missed = [bus.publish("demo.missed", {"n": n}) for n in range(3)]
        async with c.events(["demo.*"], since=second.seq) as stream:
            assert stream.seq == missed[-1].seq
            live_one = bus.publish("demo.live", {})
            got = [await stream.__anext__() for _ in range(4)]
        assert got == [*missed, live_one]

        # some are gone from the replay buffer: an explicit gap notice, then what is left
        for n in range(80):
            bus.publish("demo.flood", {"n": n})
        async with c.events(["demo.*"], since=second.seq) as stream:
            gap = await stream.__anext__()
            assert isinstance(gap, Gap) and gap.since == second.seq
            assert gap.first_seq is not None and gap.first_seq > second.seq + 1
            after_gap = await stream.__anext__()
            assert isinstance(after_gap, Event) and after_gap.seq == gap.first_seq

        # since from another run (beyond the last seq): a gap with reason reset
        async with raw(live.url, live.token) as ws:
            reply = await exchange(ws, req("events.subscribe", {"topics": ["*"], "since": 10**9}))
            assert reply["result"]["gap"] is True
            note = json.loads(await ws.get_message())
            assert note["method"] == "events.gap" and note["params"]["reason"] == "reset"


async def test_event_notification_shape_and_unsubscribe(tmp_path: Path) -> None:
    async with serving(tmp_path) as live, raw(live.url, live.token) as ws:
        sub = await exchange(ws, req("events.subscribe", {"topics": ["task.*"]}))
        sid = sub["result"]["subscription"]
        assert sub["result"]["seq"] == live.swarm.bus.last_seq
        await live.swarm.submit({"id": "t1", "prompt": "hi"})
        note = json.loads(await ws.get_message())
        assert note["jsonrpc"] == "2.0" and note["method"] == "event" and "id" not in note
        assert set(note["params"]) == {"subscription", "seq", "ts", "topic", "data"}
        assert note["params"]["topic"] == "task.submitted" and note["params"]["data"]["task_id"] == "t1"
        assert note["params"]["subscription"] == sid
        bye = await exchange(ws, req("events.unsubscribe", {"subscription": sid}, 2))
        assert bye["result"]["unsubscribed"] == [sid]
        await live.swarm.submit({"id": "t2", "prompt": "hi"})
        await ws.send_message(json.dumps(req("shoal.version", None, 3)))
        reply, notes = await next_reply(ws)
        assert reply["id"] == 3 and notes == []  # nothing after the unsubscribe reply


async def test_batch_subscription_gets_events_many_to_a_frame(tmp_path: Path) -> None:
    """`batch: true`: `events.batch` frames in seq order; a plain subscription beside it still gets
    one `event` frame each; a burst published at once goes out in far fewer frames than events."""
    async with serving(tmp_path) as live, raw(live.url, live.token) as ws:
        batch = await exchange(ws, req("events.subscribe", {"topics": ["burst.*"], "batch": True}))
        assert batch["result"]["batch"] is True
        plain = await exchange(ws, req("events.subscribe", {"topics": ["burst.even"]}, 2))
        bsid, psid = batch["result"]["subscription"], plain["result"]["subscription"]
        published = [
            live.swarm.bus.publish("burst.even" if n % 2 == 0 else "burst.odd", {"n": n}) for n in range(100)
        ]
        live.swarm.bus.publish("other.topic", {})
        batched: list[dict[str, Any]] = []
        singles: list[dict[str, Any]] = []
        frames = 0
        with trio.fail_after(10):
            while len(batched) < 100 or len(singles) < 50:
                note = json.loads(await ws.get_message())
                if note["method"] == "events.batch":
                    frames += 1
                    assert note["params"]["subscription"] == bsid
                    batched += note["params"]["events"]
                else:
                    assert note["method"] == "event" and note["params"]["subscription"] == psid
                    singles.append(note["params"])
        assert [e["seq"] for e in batched] == [e.seq for e in published]
        assert {e["topic"] for e in batched} == {"burst.even", "burst.odd"}
        assert batched[7] == {
            "seq": published[7].seq,
            "ts": published[7].ts,
            "topic": "burst.odd",
            "data": {"n": 7},
        }
        assert frames < 10  # published with no await in between: one delivery, one frame
        assert [e["seq"] for e in singles] == [e.seq for e in published[::2]]


async def test_unsubscribe_drops_what_is_still_queued(tmp_path: Path) -> None:
    """Events queued for a subscription but not yet written are not sent after it is cancelled."""
    async with serving(tmp_path, gateway={"coalesce_ms": 60_000}) as live, raw(live.url, live.token) as ws:
        sub = await exchange(ws, req("events.subscribe", {"topics": ["q.*"], "batch": True}))
        sid = sub["result"]["subscription"]
        live.swarm.bus.publish("q.first", {})  # the first delivery goes at once ...
        note = json.loads(await ws.get_message())
        assert [e["topic"] for e in note["params"]["events"]] == ["q.first"]
        live.swarm.bus.publish("q.held", {})  # ... the next waits out coalesce_ms (a minute here)
        bye = await exchange(ws, req("events.unsubscribe", {"subscription": sid}, 2))
        assert bye["result"]["unsubscribed"] == [sid]
        assert live.gateway.fanout.subscription_count == 0
        reply, notes = await next_reply(await _send(ws, req("shoal.version", None, 3)))
        assert reply["id"] == 3 and notes == []


async def _send(ws: trio_websocket.WebSocketConnection, message: Any) -> trio_websocket.WebSocketConnection:
    await ws.send_message(json.dumps(message))
    return ws


async def test_bursts_to_a_reader_that_lags_arrive_whole_and_in_order(tmp_path: Path) -> None:
    """Writes the kernel takes only in part (the client lags) must never interleave with other
    frames, the server's pongs included: every event arrives once, intact, in seq order."""
    gateway = {"coalesce_ms": 0, "client_buffer": 10_000}
    async with serving(tmp_path, gateway=gateway) as live, raw(live.url, live.token) as ws:
        await exchange(ws, req("events.subscribe", {"topics": ["big.*"], "batch": True}))
        pad = "é" * 50_000
        published = []
        for _ in range(40):
            published += [live.swarm.bus.publish("big.x", {"pad": pad, "n": n}).seq for n in range(5)]
            await trio.testing.wait_all_tasks_blocked()  # delivered, written as far as the socket takes
        assert live.gateway.write_stats["partial"] > 0  # the case under test happened
        got: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.ping)  # the pong goes out between frames, never inside one
            with trio.fail_after(30):
                while len(got) < len(published):
                    note = json.loads(await ws.get_message())
                    assert note["method"] == "events.batch"
                    for event in note["params"]["events"]:
                        assert event["data"]["pad"] == pad
                        got.append(event["seq"])
        assert got == published


async def test_slow_subscriber_gets_an_overflow_notice(tmp_path: Path) -> None:
    async with serving(tmp_path, gateway={"client_buffer": 4}) as live, connect(live.url, live.token) as c:
        async with c.events(["burst.*"]) as stream:
            # nothing runs between these publishes: the connection's queue fills and the bus drops
            for n in range(200):
                live.swarm.bus.publish("burst.x", {"n": n})
            items: list[Any] = []
            accounted = 0
            with trio.fail_after(10):
                async for item in stream:  # each event either arrives or is counted as dropped
                    items.append(item)
                    accounted += item.dropped if isinstance(item, Overflow) else 1
                    if accounted == 200:
                        break
        overflow = [i for i in items if isinstance(i, Overflow)]
        events = [i for i in items if isinstance(i, Event)]
        assert overflow and sum(o.dropped for o in overflow) + len(events) == 200
        assert [e.seq for e in events] == sorted(e.seq for e in events)


# ---- workers: logs, attach, input, controls (real fake-agent processes in PTYs) -------------------------


@asynccontextmanager
async def with_worker(tmp_path: Path) -> AsyncIterator[tuple[Live, Client, str]]:
    """A gateway, a connected client, and one idle fake-agent worker (its id)."""
    async with (
        serving(tmp_path, workers={"profiles": {"fake": fake_profile()}, "profile": "fake"}) as live,
        connect(live.url, live.token) as c,
    ):
        with live.swarm.events(["worker.state"]) as sub:
            await c.config_patch({"scaling": {"min_workers": 1, "max_workers": 1}})
            event = await wait_for(sub, lambda e: e.data.get("state") == "idle", timeout=30)
        yield live, c, str(event.data["worker"])


async def test_attach_round_trip_with_the_fake_agent(tmp_path: Path) -> None:
    async with with_worker(tmp_path) as (live, c, wid):
        info = await c.worker(wid)
        assert info.state == "idle" and info.pid
        async with c.attach(wid) as att:
            assert isinstance(att.snapshot, bytes) and att.snapshot  # the screen so far
            await att.resize(30, 100)
            await att.send(b"hello from attach\r")
            seen = b""
            with trio.fail_after(20):
                async for chunk in att:  # the agent echoes the line, then answers it
                    seen += chunk
                    if b"Done: hello from attach" in seen:
                        break
        logs = await c.logs(wid)
        assert b"hello from attach" in logs
        assert len(await c.logs(wid, tail=10)) == 10
        # detached: the worker is still there
        assert (await c.worker(wid)).pid == info.pid

        # controls
        await c.set_capabilities(wid, ["docs"])
        assert (await c.worker(wid)).capabilities == ("docs",)
        await c.set_capabilities(wid, None)
        with live.swarm.events(["worker.state"]) as sub:
            await c.pause(wid)
            await wait_for(sub, lambda e: e.data.get("state") == "paused")
            await c.resume_worker(wid)
            await wait_for(sub, lambda e: e.data.get("state") == "idle")
        assert (await c.call("workers.detach", {"id": wid}))["attached"] is False


async def test_input_to_a_busy_worker_needs_force(tmp_path: Path) -> None:
    async with with_worker(tmp_path) as (live, c, wid):
        with live.swarm.events(["task.running"]) as sub:
            await c.submit({"id": "slow", "prompt": "[[hang]] think forever"})
            with trio.fail_after(20):
                await sub.receive()
        assert (await c.worker(wid)).state == "busy"
        with pytest.raises(Conflict):
            await c.send_input(wid, b"interrupt\r")
        assert (await c.send_input(wid, b" ", force=True))["bytes"] == 1
        await c.cancel("slow")


async def test_binary_attach_output_is_base64(tmp_path: Path) -> None:
    async with serving(tmp_path) as live, raw(live.url, live.token) as ws:
        reply = await exchange(
            ws, req("workers.input", {"id": "w-x", "data": base64.b64encode(b"\x00\xff").decode()})
        )
        assert reply["error"]["code"] == rpc.NOT_FOUND  # well-formed base64, unknown worker
        assert reply["error"]["data"] == {"kind": "worker", "id": "w-x"}


async def test_connection_drop_leaves_no_subscription_behind(tmp_path: Path) -> None:
    async with serving(tmp_path) as live:
        before = live.swarm.bus.subscriber_count
        async with connect(live.url, live.token) as c:
            await c.events(["*"]).start()
            await c.events(["task.*"]).start()
            assert live.gateway.fanout.subscription_count == 2
            assert live.swarm.bus.subscriber_count == before  # one bus subscription serves them all
        await live.gateway.wait_closed(1)
        assert live.gateway.fanout.subscription_count == 0
        assert live.swarm.bus.subscriber_count == before
        assert live.gateway.connections == 0


async def test_closed_connection_fails_pending_calls(tmp_path: Path) -> None:
    async with serving(tmp_path) as live, connect(live.url, live.token) as c:
        await c.aclose()
        with pytest.raises(GatewayClosed):
            await c.status()


async def test_tls(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await trio.run_process(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_stdout=True,
        capture_stderr=True,
    )  # fmt: skip
    async with serving(tmp_path, gateway={"tls_cert": str(cert), "tls_key": str(key)}) as live:
        assert live.url.startswith("wss://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        async with connect(live.url, live.token, ssl_context=trusted) as c:
            assert (await c.status())["state"] == "running"
        with pytest.raises(ConnectError) as info:  # a client that does not trust the certificate
            async with connect(live.url, live.token, connect_timeout=0.5):
                pass
        assert "certificate" in str(info.value)


async def test_explicit_completion_by_the_agent(tmp_path: Path) -> None:
    """tasks.complete: the open attempt records the result once; a stale attempt is refused."""
    async with with_worker(tmp_path) as (live, c, _wid):
        with live.swarm.events(["task.running"]) as sub:
            await c.submit({"id": "self-report", "prompt": "[[hang]] I will report myself"})
            running = await wait_for(sub, lambda e: e.data.get("task_id") == "self-report")
        attempt = running.data["attempt"]
        with pytest.raises(Conflict):
            await c.complete("self-report", attempt=attempt + 1, status="done", result="too new")
        done = await c.complete("self-report", attempt=attempt, status="done", result="reported by the agent")
        assert done.state == TaskState.DONE and done.result == "reported by the agent"
        with pytest.raises(Conflict):  # the same completion again: recorded once
            await c.complete("self-report", attempt=attempt, status="done", result="again")
        assert (await c.get("self-report")).result == "reported by the agent"
        with pytest.raises(NotFound):
            await c.complete("nobody", attempt=1, status="failed", reason="x")


def test_shared_event_frames_are_what_wsproto_would_send() -> None:
    """Event notifications are framed once for every client: the bytes must match wsproto's own."""
    from wsproto.frame_protocol import FrameProtocol

    from shoal.actors.fanout import text_frame

    for text in ("", "x" * 125, "é" * 63, "y" * 126, "z" * 65535, "w" * 65536, '{"a":"ü€😀"}' * 9000):
        assert text_frame(text) == FrameProtocol(client=False, extensions=[]).send_data(text, fin=True)
