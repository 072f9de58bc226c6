"""JSON-RPC 2.0 framing for the gateway, sans-IO: text in, requests or error responses out.

Nothing here touches a socket. The gateway feeds each websocket text frame to `parse`, runs the
requests it gets back, and encodes replies with `result`, `error` and `notification`; the client uses
`parse_reply` on what the gateway sends. Errors raised while serving a request become JSON-RPC error
objects through `error_from_exception`, so a `ValidationError` names its field on the wire. The codes
are the standard ones plus Shoal's application range (-32001..-32010), listed in docs/protocol.md.
"""

from __future__ import annotations

import base64
import enum
import json
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .errors import Conflict, NotFound, ShoalError, ValidationError
from .text import bad_char, wire_safe

PROTOCOL_VERSION: Final = 1
SUBPROTOCOL: Final = f"shoal.v{PROTOCOL_VERSION}"  # offered by the server during the handshake

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
UNAUTHORIZED: Final = -32001  # no token yet, or a wrong one
UNAVAILABLE: Final = -32003  # the swarm is stopping or an actor did not answer in time
NOT_FOUND: Final = -32004  # unknown task / worker id; data {kind, id}
RATE_LIMITED: Final = -32005  # too many requests per second on this connection; data {retry_after_s}
CONFLICT: Final = -32009  # well-formed but not allowed now (stale attempt, cancel a done task)
LIMIT_EXCEEDED: Final = -32010  # subscriptions per connection and similar hard limits

DEFAULT_MAX_BATCH: Final = 256  # requests in one batch frame

ERROR_NAMES: Final = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    UNAUTHORIZED: "unauthorized",
    UNAVAILABLE: "unavailable",
    NOT_FOUND: "not found",
    RATE_LIMITED: "rate limited",
    CONFLICT: "conflict",
    LIMIT_EXCEEDED: "limit exceeded",
}

JsonId = str | int | None


class RpcError(ShoalError):
    """A JSON-RPC error, raised by method handlers and by the client for error replies."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"{message} ({code})")


@attrs.frozen
class Request:
    """One call. `id` is absent for a notification (no reply is sent for it)."""

    method: str
    params: dict[str, Any]
    id: JsonId = None
    notification: bool = False


@attrs.frozen
class Incoming:
    """A parsed frame: requests and ready-made error replies, in frame order.

    `batch` tells the server to reply with an array (possibly of one element) or, when every item
    was a notification, with nothing at all.
    """

    items: tuple[Request | dict[str, Any], ...]
    batch: bool = False

    @property
    def requests(self) -> list[Request]:
        return [item for item in self.items if isinstance(item, Request)]


@attrs.frozen
class Response:
    id: JsonId
    result: Any = None
    error: RpcError | None = None


@attrs.frozen
class Notification:
    method: str
    params: Any


# ---- encoding --------------------------------------------------------------------------------


def error(ident: JsonId, code: int, message: str, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "error": body, "id": ident}


def result(ident: JsonId, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": value, "id": ident}


def notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def request(method: str, params: Mapping[str, Any] | None, ident: JsonId) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": ident}
    if params is not None:
        body["params"] = dict(params)
    return body


def _finite(value: Any) -> Any:
    """Replace NaN/Infinity (invalid JSON, refused by browsers) with null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _default(obj: Any) -> Any:
    """JSON for the odd value in an event payload: enums, sets, bytes, attrs instances."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(obj).decode("ascii")
    if attrs.has(type(obj)):
        return attrs.asdict(obj, recurse=True)
    return str(obj)


def dumps(message: Any) -> str:
    """Compact, strictly valid JSON (non-finite floats become null) that always encodes as UTF-8:
    a lone surrogate that got into a value goes out as its `\\uXXXX` escape instead of making the
    websocket framing fail (which would drop the connection or stop the event fan-out)."""
    try:
        text = json.dumps(
            message, separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_default
        )
    except ValueError:
        text = json.dumps(
            _finite(message), separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_default
        )
    return wire_safe(text)


def error_from_exception(ident: JsonId, exc: BaseException) -> dict[str, Any]:
    """The error reply for an exception raised while serving request `ident`."""
    if isinstance(exc, RpcError):
        return error(ident, exc.code, exc.message, exc.data)
    if isinstance(exc, ValidationError):
        data: dict[str, Any] = {"field": exc.field}
        if exc.value is not None and _is_json_scalar(exc.value):
            data["value"] = exc.value
        return error(ident, INVALID_PARAMS, str(exc), data)
    if isinstance(exc, NotFound):
        return error(ident, NOT_FOUND, str(exc), {"kind": exc.kind, "id": exc.ident})
    if isinstance(exc, Conflict):
        return error(ident, CONFLICT, str(exc))
    if isinstance(exc, ShoalError):
        return error(ident, UNAVAILABLE, str(exc) or type(exc).__name__)
    return error(ident, INTERNAL_ERROR, f"internal error: {type(exc).__name__}")


def _is_json_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 200
    return value is None or isinstance(value, bool | int | float)


# ---- parsing (server side) -------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _parse_one(obj: Any) -> Request | dict[str, Any]:
    if not isinstance(obj, dict):
        return error(None, INVALID_REQUEST, "a request must be a JSON object")
    raw_id = obj.get("id")
    has_id = "id" in obj
    ident_ok = (
        raw_id is None
        or isinstance(raw_id, str)
        or (isinstance(raw_id, int) and not isinstance(raw_id, bool))
    )
    if isinstance(raw_id, str) and bad_char(raw_id) is not None:
        return error(
            None, INVALID_REQUEST, "id is not valid Unicode text (a lone surrogate)", {"field": "id"}
        )
    ident: JsonId = raw_id if ident_ok else None
    if obj.get("jsonrpc") != "2.0":
        return error(ident, INVALID_REQUEST, 'jsonrpc must be "2.0"', {"field": "jsonrpc"})
    if not ident_ok:
        return error(None, INVALID_REQUEST, "id must be a string, an integer or null", {"field": "id"})
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return error(ident, INVALID_REQUEST, "method must be a non-empty string", {"field": "method"})
    if bad_char(method) is not None:
        return error(ident, INVALID_REQUEST, "method is not valid Unicode text", {"field": "method"})
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return error(ident, INVALID_REQUEST, f"unknown member(s) {sorted(extra)}", {"field": "request"})
    params = obj.get("params", {})
    if isinstance(params, list):
        if params:
            return error(ident, INVALID_PARAMS, "params must be an object (by name)", {"field": "params"})
        params = {}
    elif not isinstance(params, dict):
        return error(ident, INVALID_PARAMS, "params must be an object", {"field": "params"})
    return Request(method, params, ident, notification=not has_id)


def parse(frame: str | bytes, max_bytes: int | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> Incoming:
    """Parse one text frame. Never raises: bad input yields error replies naming the problem."""
    if isinstance(frame, bytes | bytearray):
        return Incoming((error(None, INVALID_REQUEST, "binary frames are not accepted; send text"),))
    if max_bytes is not None:
        size = len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return Incoming(
                (
                    error(
                        None,
                        INVALID_REQUEST,
                        f"message too large: {size} bytes, the limit is {max_bytes}",
                        {"field": "message", "limit": max_bytes},
                    ),
                )
            )
    try:
        obj = _loads(frame)
    except RecursionError:
        return Incoming((error(None, PARSE_ERROR, "parse error: JSON nested too deeply"),))
    except ValueError as exc:  # JSONDecodeError, bad constants, bad unicode
        return Incoming((error(None, PARSE_ERROR, f"parse error: {exc}"),))
    if isinstance(obj, list):
        if not obj:
            return Incoming((error(None, INVALID_REQUEST, "empty batch"),))
        if len(obj) > max_batch:
            return Incoming(
                (
                    error(
                        None,
                        INVALID_REQUEST,
                        f"batch too large: {len(obj)} requests, the limit is {max_batch}",
                        {"field": "batch", "limit": max_batch},
                    ),
                )
            )
        return Incoming(tuple(_parse_one(item) for item in obj), batch=True)
    return Incoming((_parse_one(obj),))


def reply_frame(replies: list[dict[str, Any]], batch: bool) -> str | None:
    """The text frame answering a parsed frame, or None when nothing is to be sent."""
    if not replies:
        return None
    return dumps(replies if batch else replies[0])


# ---- parsing (client side) -------------------------------------------------------------------


def _reply_of(obj: Any) -> Response | Notification:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise RpcError(PARSE_ERROR, f"not a JSON-RPC 2.0 message: {str(obj)[:200]}")
    if "method" in obj and "id" not in obj:
        return Notification(str(obj["method"]), obj.get("params"))
    ident = obj.get("id")
    if "error" in obj:
        err = obj["error"] if isinstance(obj["error"], dict) else {}
        code = err.get("code", INTERNAL_ERROR)
        return Response(
            ident,
            error=RpcError(
                code if isinstance(code, int) else INTERNAL_ERROR,
                str(err.get("message", "error")),
                err.get("data"),
            ),
        )
    if "result" in obj:
        return Response(ident, result=obj["result"])
    raise RpcError(PARSE_ERROR, f"a reply without result or error: {str(obj)[:200]}")


def parse_reply(frame: str | bytes) -> list[Response | Notification]:
    """Parse a frame sent by the gateway (client side): responses and notifications."""
    try:
        obj = _loads(frame)
    except (ValueError, RecursionError) as exc:
        raise RpcError(PARSE_ERROR, f"the gateway sent invalid JSON: {exc}") from None
    if isinstance(obj, list):
        return [_reply_of(item) for item in obj]
    return [_reply_of(obj)]


def exception_from_error(err: RpcError) -> ShoalError:
    """The typed Shoal error a client should raise for an error reply (the inverse of the above)."""
    data = err.data if isinstance(err.data, dict) else {}
    if err.code == INVALID_PARAMS and isinstance(data.get("field"), str):
        field = data["field"]
        message = err.message.removeprefix(f"{field}: ")
        value = data.get("value")
        shown = f" (got {value!r})"
        if value is not None and message.endswith(shown):
            message = message[: -len(shown)]
        return ValidationError(field, message, value)
    if err.code == NOT_FOUND and isinstance(data.get("kind"), str):
        return NotFound(data["kind"], str(data.get("id")))
    if err.code == CONFLICT:
        return Conflict(err.message)
    return err
