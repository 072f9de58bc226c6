"""The gateway's sans-IO layers with plain strings: JSON-RPC framing, the method table, auth helpers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from shoal.actors import auth
from shoal.protocols import api, rpc
from shoal.protocols.errors import Conflict, NotFound, ValidationError
from shoal.protocols.tasks import TaskSpec, TaskState


def only_error(frame: str | bytes, **kw: Any) -> dict[str, Any]:
    incoming = rpc.parse(frame, **kw)
    assert len(incoming.items) == 1
    item = incoming.items[0]
    assert isinstance(item, dict), item
    return item


# ---- parse -----------------------------------------------------------------------------------------


def test_single_request_with_params() -> None:
    incoming = rpc.parse('{"jsonrpc":"2.0","method":"tasks.get","params":{"id":"t1"},"id":7}')
    assert not incoming.batch
    assert incoming.requests == [rpc.Request("tasks.get", {"id": "t1"}, 7)]


def test_notification_has_no_id_and_string_ids_are_kept() -> None:
    (note,) = rpc.parse('{"jsonrpc":"2.0","method":"swarm.status"}').requests
    assert note.notification and note.params == {}
    (req,) = rpc.parse('{"jsonrpc":"2.0","method":"swarm.status","id":"abc"}').requests
    assert req.id == "abc" and not req.notification
    (null_id,) = rpc.parse('{"jsonrpc":"2.0","method":"swarm.status","id":null}').requests
    assert null_id.id is None and not null_id.notification  # an explicit null id still gets a reply


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", rpc.PARSE_ERROR),
        ("", rpc.PARSE_ERROR),
        ('{"jsonrpc":"2.0","method":"x","id":1,"params":NaN}', rpc.PARSE_ERROR),
        ('"a string"', rpc.INVALID_REQUEST),
        ("42", rpc.INVALID_REQUEST),
        ("null", rpc.INVALID_REQUEST),
        ("[]", rpc.INVALID_REQUEST),
        ('{"jsonrpc":"1.0","method":"swarm.status","id":1}', rpc.INVALID_REQUEST),
        ('{"method":"swarm.status","id":1}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","id":1}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","method":5,"id":1}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","method":"","id":1}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","method":"x","id":{"a":1}}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","method":"x","id":true}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","method":"x","id":1,"extra":1}', rpc.INVALID_REQUEST),
        ('{"jsonrpc":"2.0","method":"x","id":1,"params":"p"}', rpc.INVALID_PARAMS),
        ('{"jsonrpc":"2.0","method":"x","id":1,"params":[1,2]}', rpc.INVALID_PARAMS),
    ],
)
def test_bad_frames_give_the_right_error(frame: str, code: int) -> None:
    err = only_error(frame)
    assert err["jsonrpc"] == "2.0"
    assert err["error"]["code"] == code
    assert err["error"]["message"]


def test_error_keeps_a_valid_id_so_the_client_can_match_it() -> None:
    err = only_error('{"jsonrpc":"1.0","method":"x","id":9}')
    assert err["id"] == 9
    assert err["error"]["data"] == {"field": "jsonrpc"}


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    err = only_error("[" * 100_000 + "]" * 100_000)
    assert err["error"]["code"] == rpc.PARSE_ERROR


def test_binary_frames_are_refused() -> None:
    err = only_error(b'{"jsonrpc":"2.0","method":"swarm.status","id":1}')
    assert err["error"]["code"] == rpc.INVALID_REQUEST
    assert "binary" in err["error"]["message"]


def test_size_limit_counts_utf8_bytes() -> None:
    ok = json.dumps({"jsonrpc": "2.0", "method": "m", "id": 1, "params": {"p": "x" * 50}})
    assert rpc.parse(ok, max_bytes=len(ok)).requests
    wide = json.dumps(
        {"jsonrpc": "2.0", "method": "m", "id": 1, "params": {"p": "é" * 50}}, ensure_ascii=False
    )
    assert len(wide) <= 120 < len(wide.encode())
    err = only_error(wide, max_bytes=120)
    assert err["error"]["code"] == rpc.INVALID_REQUEST
    assert err["error"]["data"]["limit"] == 120
    assert "too large" in err["error"]["message"]


def test_batch_keeps_order_and_mixes_requests_and_errors() -> None:
    frame = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "a", "id": 1},
            5,
            {"jsonrpc": "2.0", "method": "b"},
            {"jsonrpc": "2.0", "method": "c", "id": "x"},
        ]
    )
    incoming = rpc.parse(frame)
    assert incoming.batch
    kinds = [type(item).__name__ for item in incoming.items]
    assert kinds == ["Request", "dict", "Request", "Request"]
    assert [r.method for r in incoming.requests] == ["a", "b", "c"]


def test_batch_size_limit() -> None:
    frame = json.dumps([{"jsonrpc": "2.0", "method": "a", "id": i} for i in range(11)])
    err = only_error(frame, max_batch=10)
    assert err["error"]["code"] == rpc.INVALID_REQUEST
    assert "batch too large" in err["error"]["message"]


def test_reply_frame_single_batch_and_all_notifications() -> None:
    one = rpc.result(1, {"ok": True})
    assert json.loads(rpc.reply_frame([one], batch=False) or "") == one
    assert json.loads(rpc.reply_frame([one], batch=True) or "") == [one]
    assert rpc.reply_frame([], batch=True) is None  # a batch of notifications gets no reply


# ---- encode ----------------------------------------------------------------------------------------


def test_dumps_is_strict_json() -> None:
    text = rpc.dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": TaskState.DONE, "d": {1, 2}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": "done", "d": [1, 2]}
    assert "NaN" not in text and "Infinity" not in text


def test_error_mapping_names_the_field_and_the_id() -> None:
    v = rpc.error_from_exception(3, ValidationError("params.id", "is required"))
    assert v["error"]["code"] == rpc.INVALID_PARAMS
    assert v["error"]["data"] == {"field": "params.id"}
    assert v["id"] == 3
    nf = rpc.error_from_exception(4, NotFound("task", "t-9"))
    assert nf["error"]["code"] == rpc.NOT_FOUND
    assert nf["error"]["data"] == {"kind": "task", "id": "t-9"}
    assert "t-9" in nf["error"]["message"]
    c = rpc.error_from_exception(5, Conflict("stale attempt 1, the open attempt is 2"))
    assert c["error"]["code"] == rpc.CONFLICT
    internal = rpc.error_from_exception(6, ZeroDivisionError("secret detail"))
    assert internal["error"]["code"] == rpc.INTERNAL_ERROR
    assert "secret detail" not in internal["error"]["message"]


def test_client_side_round_trip_of_errors_to_typed_exceptions() -> None:
    for exc in (
        ValidationError("params.task.priority", "must be an integer", "high"),
        NotFound("worker", "w9"),
    ):
        frame = rpc.dumps(rpc.error_from_exception(1, exc))
        (resp,) = rpc.parse_reply(frame)
        assert isinstance(resp, rpc.Response) and resp.error is not None
        back = rpc.exception_from_error(resp.error)
        assert type(back) is type(exc)
        assert str(back) == str(exc)
    (resp,) = rpc.parse_reply(rpc.dumps(rpc.error(2, rpc.RATE_LIMITED, "slow down", {"retry_after_s": 0.5})))
    assert isinstance(resp, rpc.Response) and resp.error is not None
    assert isinstance(rpc.exception_from_error(resp.error), rpc.RpcError)


def test_parse_reply_sees_notifications_and_batches() -> None:
    frame = rpc.dumps([rpc.result(1, 5), rpc.notification("event", {"seq": 1})])
    items = rpc.parse_reply(frame)
    assert items == [rpc.Response(1, result=5), rpc.Notification("event", {"seq": 1})]
    with pytest.raises(rpc.RpcError):
        rpc.parse_reply("{")


# ---- the method table ---------------------------------------------------------------------------------

PUBLIC_METHODS = {
    "swarm.status", "swarm.start", "swarm.stop", "swarm.resume", "swarm.metrics", "swarm.config.get",
    "swarm.config.patch", "workers.list", "workers.get", "workers.logs", "workers.pause", "workers.resume",
    "workers.restart", "workers.kill", "workers.set_model", "workers.set_capabilities", "workers.attach",
    "tasks.submit", "tasks.get", "tasks.list", "tasks.cancel", "tasks.retry", "tasks.skip", "tasks.boost",
    "tasks.assign", "tasks.complete", "events.subscribe", "events.unsubscribe", "auth.login",
    "shoal.version", "swarm.halt", "workers.input", "workers.resize", "workers.detach", "swarm.series",
}  # fmt: skip


def test_every_public_method_is_in_the_table() -> None:
    assert set(api.METHODS) >= PUBLIC_METHODS
    assert [m for m, spec in api.METHODS.items() if not spec.auth] == ["auth.login"]


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("tasks.get", {}, "params.id"),
        ("tasks.get", {"id": 5}, "params.id"),
        ("tasks.get", {"id": ""}, "params.id"),
        ("tasks.get", {"id": "a", "bogus": 1}, "params"),
        ("tasks.submit", {"task": {"prompt": "hi", "priority": "high"}}, "params.task.priority"),
        ("tasks.submit", {"task": {"priority": 1}}, "params.task.prompt"),
        ("tasks.submit", {"tasks": [{"prompt": "a"}, {"prompt": 3}]}, "params.tasks[1].prompt"),
        ("tasks.submit", {"task": {"prompt": "a", "deps": "b"}}, "params.task.deps"),
        ("tasks.list", {"state": "bogus"}, "params.state"),
        ("tasks.list", {"limit": 0}, "params.limit"),
        ("tasks.list", {"limit": 10_000}, "params.limit"),
        ("tasks.boost", {"id": "a", "priority": 1.5}, "params.priority"),
        ("tasks.complete", {"id": "a", "attempt": 1, "status": "ok"}, "params.status"),
        ("tasks.complete", {"id": "a", "attempt": 0, "status": "done"}, "params.attempt"),
        ("swarm.stop", {"drain": "false"}, "params.drain"),
        ("swarm.series", {"window_s": -1}, "params.window_s"),
        ("workers.set_capabilities", {"id": "w", "capabilities": "ab"}, "params.capabilities"),
        ("workers.set_capabilities", {"id": "w"}, "params.capabilities"),
        ("workers.resize", {"id": "w", "rows": True, "cols": 80}, "params.rows"),
        ("workers.resize", {"id": "w", "rows": 24, "cols": 0}, "params.cols"),
        ("events.subscribe", {"topics": []}, "params.topics"),
        ("events.subscribe", {"topics": ["task.*", ""]}, "params.topics[1]"),
        ("events.subscribe", {"topics": ["*"], "since": -1}, "params.since"),
        ("events.subscribe", {"topics": ["*"], "batch": "yes"}, "params.batch"),
        ("swarm.config.patch", {"partial": [1]}, "params.partial"),
    ],
)
def test_wrong_params_name_the_field(method: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        api.parse_params(method, params)
    assert info.value.field == field


def test_params_are_structured_into_the_runtime_classes() -> None:
    p = api.parse_params("tasks.submit", {"task": {"prompt": "hi", "deps": ["a"], "priority": 3}})
    assert p.specs() == [TaskSpec(prompt="hi", deps=("a",), priority=3)]
    lst = api.parse_params("tasks.list", {"state": "ready"})
    assert lst.state == TaskState.READY and lst.limit == 100
    caps = api.parse_params("workers.set_capabilities", {"id": "w", "capabilities": None})
    assert caps.capabilities is None


def test_submit_needs_exactly_one_of_task_or_tasks() -> None:
    for params in ({}, {"task": {"prompt": "a"}, "tasks": [{"prompt": "b"}]}):
        with pytest.raises(ValidationError) as info:
            api.parse_params("tasks.submit", params).specs()
        assert info.value.field == "params"
    with pytest.raises(ValidationError) as info:
        api.parse_params("tasks.submit", {"tasks": []}).specs()
    assert info.value.field == "params.tasks"


def test_input_data_must_be_base64() -> None:
    good = api.parse_params("workers.input", {"id": "w", "data": "aGkK"})
    assert good.decoded() == b"hi\n" and good.force is False
    with pytest.raises(ValidationError) as info:
        api.parse_params("workers.input", {"id": "w", "data": "not base64!"}).decoded()
    assert info.value.field == "params.data"


def test_unknown_method_is_method_not_found() -> None:
    with pytest.raises(rpc.RpcError) as info:
        api.parse_params("tasks.explode", {})
    assert info.value.code == rpc.METHOD_NOT_FOUND


# ---- auth helpers ----------------------------------------------------------------------------------


def test_token_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token"
    token = auth.load_or_create_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert auth.load_or_create_token(path) == token  # stable across restarts


def test_new_tokens_never_start_with_a_dash() -> None:
    """`shoal status --token -x…` would take such a token for an option (one in 64 did)."""
    tokens = [auth.new_token() for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and min(map(len, tokens)) >= 43


def test_token_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    os.chmod(path, 0o644)
    assert auth.load_or_create_token(path) == "s3cret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_read_token_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        auth.read_token(tmp_path / "missing")
    assert "shoal serve" in str(info.value)


def test_token_comparison_and_bearer_header() -> None:
    assert auth.token_matches("abc", "abc")
    assert not auth.token_matches("abd", "abc")
    assert not auth.token_matches(None, "abc")
    assert not auth.token_matches("", "abc")
    assert auth.bearer_token("Bearer  tok ") == "tok"
    assert auth.bearer_token("bearer tok") == "tok"
    assert auth.bearer_token("Basic dXNlcg==") is None
    assert auth.bearer_token("Bearer") is None


def test_origin_check() -> None:
    allowed = auth.dashboard_origins("http://127.0.0.1:8766/")
    assert auth.origin_allowed(None, allowed)  # not a browser
    assert auth.origin_allowed("http://127.0.0.1:8766", allowed)
    assert auth.origin_allowed("http://localhost:8766", allowed)
    assert auth.origin_allowed("HTTP://LOCALHOST:8766/", allowed)
    assert not auth.origin_allowed("http://127.0.0.1:9999", allowed)
    assert not auth.origin_allowed("https://evil.example", allowed)
    assert not auth.origin_allowed("null", allowed)
    assert auth.origin_allowed("https://ops.example.com", ["https://ops.example.com:443"])
    assert auth.origin_allowed("https://anything.example", ["*"])


def test_bind_check() -> None:
    assert auth.check_bind("127.0.0.1", False) is None
    assert auth.check_bind("::1", False) is None
    assert auth.check_bind("localhost", False) is None
    with pytest.raises(ValidationError) as info:
        auth.check_bind("0.0.0.0", False)
    assert info.value.field == "gateway.host"
    assert "allow_remote" in str(info.value)
    warning = auth.check_bind("0.0.0.0", True)
    assert warning is not None and "WARNING" in warning


def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_STATE_DIR", str(tmp_path / "env"))
    assert auth.resolve_state_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert auth.resolve_state_dir(None) == tmp_path / "env"
    monkeypatch.delenv("SHOAL_STATE_DIR")
    assert auth.resolve_state_dir(None).name == "shoal"


def test_endpoint_record(tmp_path: Path) -> None:
    assert auth.read_endpoint(tmp_path) is None
    auth.write_endpoint(tmp_path, "ws://127.0.0.1:4242/")
    assert auth.read_endpoint(tmp_path) == "ws://127.0.0.1:4242/"
    auth.remove_endpoint(tmp_path, "ws://127.0.0.1:1/")  # someone else's: kept
    assert auth.read_endpoint(tmp_path) == "ws://127.0.0.1:4242/"
    auth.remove_endpoint(tmp_path, "ws://127.0.0.1:4242/")
    assert auth.read_endpoint(tmp_path) is None


def test_tls_needs_cert_and_key(tmp_path: Path) -> None:
    assert auth.ssl_context(None, None) is None
    with pytest.raises(ValidationError):
        auth.ssl_context(str(tmp_path / "cert.pem"), None)
    with pytest.raises(ValidationError) as info:
        auth.ssl_context(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert "cannot load" in str(info.value)
