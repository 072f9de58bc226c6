"""Thousands of generated malformed messages against a live `shoal serve`, then a well-formed client.

Hypothesis generates frames of every kind of wrong (random text, truncated JSON, JSON that is not a
request, requests with wrong versions, ids, methods and params, batches mixing all of these, binary
frames). After each frame a sentinel request checks the connection still answers; every frame that
comes back must be well-formed JSON-RPC with a known error code. At the end the server must still
be running, a task submitted before the storm must be untouched, and a fresh client must be served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import Served, shoal_serve

from shoal.protocols import api, rpc
from shoal.runtime.client import connect

KNOWN_CODES = set(rpc.ERROR_NAMES)
NOTIFICATIONS = {"event", "events.gap", "events.overflow", "attach.output", "attach.closed"}
# well-formed calls to these would legitimately stop or reconfigure the swarm (or wait a second
# for a wrong token): they are not "malformed input", so the generator leaves them out
UNSAFE = {"swarm.stop", "swarm.halt", "swarm.start", "swarm.config.patch", "auth.login", "workers.kill"}
METHODS = sorted(set(api.METHODS) - UNSAFE)
PARAM_NAMES = sorted(
    {f.name for m in api.METHODS.values() for f in attrs.fields(m.params)} | {"prompt", "deps"}
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
scalars = scalars | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
params = json_values | st.dictionaries(st.sampled_from(PARAM_NAMES), json_values, max_size=4)
requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | json_values,
        "method": st.sampled_from(METHODS) | json_values,
        "params": params,
        "id": st.integers() | st.text(max_size=8) | json_values,
        "extra": json_values,
    },
)
frames = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    requests.map(json.dumps),
    st.lists(requests | json_values, min_size=1, max_size=6).map(json.dumps),
    requests.map(json.dumps).flatmap(lambda s: st.integers(0, max(len(s) - 1, 0)).map(lambda i: s[:i])),
    st.binary(max_size=64),
)


def check_reply(obj: Any) -> None:
    """A frame from the gateway: a JSON-RPC response, a known notification, or a batch of responses."""
    if isinstance(obj, list):
        assert obj, "an empty batch reply"
        for item in obj:
            check_reply(item)
        return
    assert isinstance(obj, dict) and obj.get("jsonrpc") == "2.0", obj
    if "method" in obj and "id" not in obj:
        assert obj["method"] in NOTIFICATIONS, obj
        return
    assert "id" in obj and (obj["id"] is None or isinstance(obj["id"], str | int)), obj
    assert ("result" in obj) != ("error" in obj), obj
    if "error" in obj:
        err = obj["error"]
        assert isinstance(err["code"], int) and err["code"] in KNOWN_CODES, obj
        assert isinstance(err["message"], str) and err["message"], obj
        assert err["code"] != rpc.INTERNAL_ERROR, obj  # bad input is never a server bug


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    with shoal_serve(state, "--max-workers", "0", "--no-dashboard") as s:
        yield s


@pytest.fixture(scope="module")
def before(served: Served) -> dict[str, Any]:
    """A task submitted before the storm (module-scoped, so it exists before the fuzz test runs)."""

    async def submit() -> dict[str, Any]:
        async with connect(served.url, served.token) as c:
            task = {"id": "precious", "prompt": "keep me"}
            result: dict[str, Any] = await c.call("tasks.submit", {"task": task})
            return result

    return trio.run(submit)


counter = iter(range(10**9))


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=20))
async def test_malformed_messages_never_break_the_gateway(
    served: Served, before: dict[str, Any], batch: list[str | bytes]
) -> None:
    headers = [(b"Authorization", f"Bearer {served.token}".encode())]
    async with trio_websocket.open_websocket_url(served.url, extra_headers=headers) as ws:
        for frame in batch:
            await ws.send_message(frame)
            sentinel = f"sentinel-{next(counter)}"
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "shoal.version", "id": sentinel}))
            with trio.fail_after(10):
                while True:
                    reply = json.loads(await ws.get_message())
                    check_reply(reply)
                    if isinstance(reply, dict) and reply.get("id") == sentinel:
                        assert "result" in reply
                        break


async def test_swarm_still_serves_after_the_storm(served: Served, before: dict[str, Any]) -> None:
    assert served.proc.poll() is None  # the server is alive
    async with connect(served.url, served.token) as c:
        assert (await c.status())["state"] == "running"
        kept = await c.call("tasks.get", {"id": "precious"})
        assert {k: kept[k] for k in ("prompt", "state", "attempts")} == {
            k: before[k] for k in ("prompt", "state", "attempts")
        }
        fresh = await c.submit({"id": "after-storm", "prompt": "still here"})
        assert (await c.get("after-storm")).prompt == fresh.prompt
        async with c.events(["task.*"], since=0) as stream:
            assert (await stream.__anext__()).seq >= 1
