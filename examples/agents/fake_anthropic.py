"""A local stand-in for the Anthropic Messages API, for tests, benchmarks and demos of real Claude Code.

Point the real CLI at it (`ANTHROPIC_BASE_URL=<url>`, any `ANTHROPIC_API_KEY`) and it answers as the
API does: `POST /v1/messages` (also `?beta=true`) streamed as server-sent events (message_start,
content_block_start, ping, content_block_delta, content_block_stop, message_delta with usage and
stop_reason, message_stop) or as one JSON message, and `POST /v1/messages/count_tokens`. Every request
is recorded (`FakeAnthropic.requests` in-process, `GET /_requests` from another process,
`DELETE /_requests` clears) so a test can assert how many the CLI made.

Scripting: directives `[[name]]` or `[[name:value]]` in the prompt (the newest user message that is not
a tool result), as the fake agent takes them:

* `[[reply:TEXT]]` the reply (`\\n` is a newline); default `Done: <first 40 characters of the prompt>`.
* `[[think:S]]` wait S seconds before answering; `[[chunk:N]]` characters per text delta (default 24)
  and `[[pace:S]]` seconds between deltas (default 0): the streaming speed.
* `[[tool:Write:PATH:CONTENT]]`, `[[tool:Edit:PATH:OLD:NEW]]`, `[[tool:Read:PATH]]`,
  `[[tool:Bash:COMMAND]]`, `[[tool:NAME:{json input}]]`: one tool_use turn each, in order; the reply
  text comes once every tool's result is back. A relative PATH is taken under the working directory
  the CLI names in its system prompt.
* `[[error:STATUS]]` (401, 429, 500, 529, ...) every request fails; `[[error:STATUS:N]]` only the first
  N requests of this prompt. A 429 carries `retry-after` (`[[retry_after:S]]`, default 30) and the
  `anthropic-ratelimit-unified-*` headers of an exhausted 5-hour limit (reset `[[reset:+S]]` from
  now or `[[reset:EPOCH]]`, default +3600).
* `[[usage:N]]` report N input tokens (a nearly full context window makes the CLI show
  "Context left until auto-compact: N%").
* `[[cut]]` / `[[cut:N]]` the connection is reset mid-stream (every time / the first N times).
* `[[limit:UTILIZATION]]` success with the unified headers of a limit nearly reached
  (`allowed_warning`, e.g. `[[limit:0.9]]`); without it success carries `allowed` and utilization 0.1.

Requests without `tools` (title generation, quota checks) and CLI 2.0.x's `Warmup` requests are the
CLI's side requests: they get a short plain reply, ignore directives and are recorded with
`side=True`. Unknown paths get a 404 in the API's error shape and are recorded too; `HEAD /api/hello` (the
CLI's reachability probe) gets a 200 without a body.

In-process: `async with open_fake_anthropic() as fake: fake.url ...`. As a program:
`python -m shoal.agents.fake_anthropic --port 0` prints its URL on the first line of stdout.
Built on trio and h11 (both Shoal dependencies): a real HTTP/1.1 server with keep-alive and chunked
streaming on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

DIRECTIVE = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")
MAX_BODY = 32 * 1024 * 1024
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    401: "invalid x-api-key",
    429: "This request would exceed your account's rate limit. Please try again later.",
    500: "Internal server error",
    529: "Overloaded",
}


@dataclass
class Recorded:
    """One request as the stand-in saw it."""

    seq: int
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names (a repeated header keeps its last value)
    body: Any  # parsed JSON, or None
    kind: str  # "messages", "count_tokens" or "other"
    side: bool = False  # a request without tools (the CLI's own side traffic)
    status: int = 0  # what was answered (0 until the answer starts)
    stream: bool = False
    at: float = field(default_factory=time.time)

    def prompt(self) -> str:
        """The prompt text this request was scripted by (empty when none)."""
        return prompt_text(self.body.get("messages", [])) if isinstance(self.body, dict) else ""


@dataclass
class Script:
    """What the directives in one prompt ask for."""

    reply: str | None = None
    think: float = 0.0
    chunk: int = 24
    pace: float = 0.0
    tools: list[tuple[str, str]] = field(default_factory=list)  # (name, raw value)
    error: int | None = None
    error_times: int | None = None  # None: every time
    retry_after: float = 30.0
    reset: float | None = None  # epoch seconds
    cut_times: int | None = 0  # 0: never; None: every time
    limit: float | None = None
    input_tokens: int | None = None

    @classmethod
    def parse(cls, text: str, now: float) -> Script:
        script = cls()
        for name, raw in DIRECTIVE.findall(text):
            value = raw.replace("\\n", "\n")
            try:
                script._apply(name, value, now)
            except ValueError:
                continue  # an invalid value is ignored, as the fake agent does
        return script

    def _apply(self, name: str, value: str, now: float) -> None:
        if name == "reply":
            self.reply = value
        elif name == "think":
            self.think = max(0.0, _finite(value))
        elif name == "chunk":
            self.chunk = max(1, int(value))
        elif name == "pace":
            self.pace = max(0.0, _finite(value))
        elif name == "tool":
            tool, _, rest = value.partition(":")
            if tool:
                self.tools.append((tool, rest))
        elif name == "error":
            status, _, times = value.partition(":")
            self.error = int(status)
            self.error_times = int(times) if times else None
        elif name == "retry_after":
            self.retry_after = max(0.0, _finite(value))
        elif name == "reset":
            self.reset = now + _finite(value[1:]) if value.startswith("+") else _finite(value)
        elif name == "cut":
            self.cut_times = int(value) if value else None
        elif name == "usage":
            self.input_tokens = max(1, int(value))
        elif name == "limit":
            self.limit = min(1.0, max(0.0, _finite(value)))


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return []


def _has_tool_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _prompt_index(messages: list[Any]) -> int | None:
    """Index of the prompt: the newest user message with text that is not a tool result."""
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if not _has_tool_result(content) and any(t.strip() for t in _texts(content)):
            return i
    return None


def prompt_text(messages: list[Any]) -> str:
    """The prompt's text (its text blocks joined; Claude Code adds `<system-reminder>` blocks)."""
    i = _prompt_index(messages)
    if i is None:
        return ""
    texts = [t for t in _texts(messages[i].get("content")) if not t.lstrip().startswith("<system-reminder>")]
    return "\n".join(texts) if texts else "\n".join(_texts(messages[i].get("content")))


def _turn(messages: list[Any]) -> int:
    """How many assistant turns answered the prompt so far (tool_use turns of this prompt)."""
    i = _prompt_index(messages)
    if i is None:
        return 0
    return sum(1 for m in messages[i + 1 :] if isinstance(m, dict) and m.get("role") == "assistant")


def _context_text(body: dict[str, Any]) -> str:
    """The system prompt and the user messages' text, where Claude Code names its working directory
    ("Primary working directory: /path", in a `# Environment` block of 2.1.x)."""
    system = body.get("system")
    parts = [system] if isinstance(system, str) else _texts(system)
    for msg in body.get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            parts.extend(_texts(msg.get("content")))
    return "\n".join(parts)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeAnthropic:
    """The stand-in server; `serve` runs it, `requests` lists what it was asked."""

    def __init__(self, *, model: str = "claude-sonnet-4-5", default_reply: str | None = None) -> None:
        self.model = model
        self.default_reply = default_reply
        self.requests: list[Recorded] = []
        self.url = ""
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._attempts: dict[str, int] = {}  # prompt -> requests seen (for error:S:N and cut:N)
        self.changed = trio.Event()  # set on each request (then replaced): wait for the next one

    # -- what tests read ----------------------------------------------------------------------------------

    def messages(self, *, side: bool | None = False) -> list[Recorded]:
        """Recorded `/v1/messages` requests (only the main ones by default; `side=None` for all)."""
        return [r for r in self.requests if r.kind == "messages" and (side is None or r.side == side)]

    async def wait_for(self, count: int, *, side: bool | None = False) -> list[Recorded]:
        """Wait until at least `count` messages requests (as `messages()` counts them) came in."""
        while len(found := self.messages(side=side)) < count:
            await self.changed.wait()
        return found

    def clear(self) -> None:
        self.requests.clear()
        self._attempts.clear()

    # -- serving ------------------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        sock = listeners[0].socket
        bound_host, bound_port = sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        task_status.started(self.url)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request = await self._next(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                body = bytearray()
                while True:
                    event = await self._next(conn, stream)
                    if isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            await self._send_json(conn, stream, 413, _error_body(413, "body too large"))
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                keep = await self._dispatch(conn, stream, request, bytes(body))
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _next(conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            return event

    async def _dispatch(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, raw: bytes
    ) -> bool:
        """Answer one request; False when the connection must end (a cut)."""
        target = urlsplit(request.target.decode("latin-1"))
        method = request.method.decode("ascii")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        path = target.path
        if path == "/_requests":
            return await self._requests_endpoint(conn, stream, method)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        kind = {"/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens"}.get(path, "other")
        rec = Recorded(next(self._seq), method, path, query, headers, body, kind)
        self.requests.append(rec)
        self.changed.set()
        self.changed = trio.Event()
        if method == "HEAD":  # the CLI's reachability probe: headers only (h11 refuses a body here)
            rec.status = 200 if path in ("", "/", "/api/hello") else 404
            await self._send(conn, stream, h11.Response(status_code=rec.status, headers=self._headers([])))
            await self._send(conn, stream, h11.EndOfMessage())
            return True
        if method != "POST" or kind == "other":
            rec.status = 404
            await self._send_json(conn, stream, 404, _error_body(404, f"Not found: {method} {path}"))
            return True
        if not isinstance(body, dict):
            rec.status = 400
            await self._send_json(conn, stream, 400, _error_body(400, "body must be a JSON object"))
            return True
        if kind == "count_tokens":
            rec.status = 200
            await self._send_json(
                conn, stream, 200, {"input_tokens": _tokens(raw.decode("utf-8", "replace"))}
            )
            return True
        return await self._messages(conn, stream, rec, body, len(raw))

    async def _requests_endpoint(self, conn: h11.Connection, stream: trio.SocketStream, method: str) -> bool:
        if method == "DELETE":
            self.clear()
            await self._send_json(conn, stream, 200, {"cleared": True})
        else:
            await self._send_json(conn, stream, 200, [asdict(r) for r in self.requests])
        return True

    async def _messages(
        self, conn: h11.Connection, stream: trio.SocketStream, rec: Recorded, body: dict[str, Any], size: int
    ) -> bool:
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        assert isinstance(messages, list)
        rec.stream = body.get("stream") is True
        # side traffic: no tools (titles, quota checks), or 2.0.x's subagent "Warmup" requests
        rec.side = not body.get("tools") or prompt_text(messages).strip() == "Warmup"
        model = str(body.get("model") or self.model)
        now = time.time()
        prompt = prompt_text(messages)
        cut = False
        if rec.side:
            script = Script(reply="OK")
        else:
            script = Script.parse(prompt, now)
            attempt = self._attempts.get(prompt, 0)
            self._attempts[prompt] = attempt + 1
            if script.error is not None and (script.error_times is None or attempt < script.error_times):
                await trio.sleep(script.think)
                rec.status = script.error
                return await self._error(conn, stream, script, now)
            cut = script.cut_times is None or attempt < script.cut_times
        await trio.sleep(script.think)
        blocks = self._blocks(script, messages, body, prompt)
        usage = {
            "input_tokens": script.input_tokens or max(1, size // 4),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": sum(_tokens(json.dumps(b)) for b in blocks),
        }
        stop = "tool_use" if blocks and blocks[-1]["type"] == "tool_use" else "end_turn"
        message = {
            "id": f"msg_fake{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        headers = self._limit_headers(script, now)
        rec.status = 200
        if not rec.stream:
            await self._send_json(conn, stream, 200, message, headers)
            return True
        return await self._stream(conn, stream, message, script, headers, cut)

    def _blocks(
        self, script: Script, messages: list[Any], body: dict[str, Any], prompt: str
    ) -> list[dict[str, Any]]:
        turn = _turn(messages)
        if turn < len(script.tools):
            name, raw = script.tools[turn]
            tool_input = _tool_input(name, raw, _context_text(body))
            return [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{next(self._ids):06d}",
                    "name": name,
                    "input": tool_input,
                }
            ]
        reply = script.reply
        if reply is None:
            reply = self.default_reply if self.default_reply is not None else _default_reply(prompt)
        return [{"type": "text", "text": reply}]

    def _limit_headers(self, script: Script, now: float) -> list[tuple[str, str]]:
        reset = int(script.reset if script.reset is not None else now + 3600)
        util = script.limit if script.limit is not None else 0.1
        status = "allowed_warning" if script.limit is not None else "allowed"
        headers = [
            ("anthropic-ratelimit-unified-status", status),
            ("anthropic-ratelimit-unified-reset", str(reset)),
            ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
            ("anthropic-ratelimit-unified-5h-status", status),
            ("anthropic-ratelimit-unified-5h-utilization", f"{util:g}"),
            ("anthropic-ratelimit-unified-5h-reset", str(reset)),
            ("anthropic-ratelimit-unified-7d-status", "allowed"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.05"),
            ("anthropic-ratelimit-unified-7d-reset", str(reset + 6 * 86400)),
        ]
        if script.limit is not None:
            headers.append(("anthropic-ratelimit-unified-5h-surpassed-threshold", "0.75"))
        return headers

    async def _error(
        self, conn: h11.Connection, stream: trio.SocketStream, script: Script, now: float
    ) -> bool:
        status = script.error or 500
        headers: list[tuple[str, str]] = []
        if status == 429:
            reset = int(script.reset if script.reset is not None else now + 3600)
            headers = [
                ("retry-after", f"{script.retry_after:g}"),
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", str(reset)),
                ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-utilization", "1"),
                ("anthropic-ratelimit-unified-5h-reset", str(reset)),
                ("anthropic-ratelimit-unified-overage-status", "rejected"),
                ("anthropic-ratelimit-unified-overage-disabled-reason", "org_level_disabled"),
            ]
        elif status == 529 or status >= 500:
            headers = [("x-should-retry", "true")]
        await self._send_json(conn, stream, status, _error_body(status), headers)
        return True

    async def _stream(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        message: dict[str, Any],
        script: Script,
        headers: list[tuple[str, str]],
        cut: bool,
    ) -> bool:
        await self._send(
            conn,
            stream,
            h11.Response(
                status_code=200,
                headers=self._headers([("content-type", "text/event-stream"), ("cache-control", "no-cache")])
                + headers,
            ),
        )
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        await self._event(conn, stream, "message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                empty: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": block["text"][i : i + script.chunk]}
                    for i in range(0, len(block["text"]), script.chunk)
                ]
            else:
                empty = {**block, "input": {}}
                raw = json.dumps(block["input"])
                deltas = [
                    {"type": "input_json_delta", "partial_json": raw[i : i + script.chunk]}
                    for i in range(0, len(raw), script.chunk)
                ]
            await self._event(
                conn,
                stream,
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
            if index == 0:
                await self._event(conn, stream, "ping", {"type": "ping"})
            for n, delta in enumerate(deltas):
                if cut and n == len(deltas) // 2:
                    _reset(stream)  # the client sees the connection reset mid-stream
                    return False
                if script.pace and n:
                    await trio.sleep(script.pace)
                await self._event(
                    conn,
                    stream,
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            await self._event(
                conn, stream, "content_block_stop", {"type": "content_block_stop", "index": index}
            )
        if cut:
            _reset(stream)
            return False
        await self._event(
            conn,
            stream,
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
        await self._event(conn, stream, "message_stop", {"type": "message_stop"})
        await self._send(conn, stream, h11.EndOfMessage())
        return True

    # -- writing --------------------------------------------------------------------------------------------

    def _headers(self, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [("request-id", f"req_fake{next(self._ids):06d}"), ("server", "shoal-fake-anthropic"), *extra]

    async def _event(
        self, conn: h11.Connection, stream: trio.SocketStream, name: str, data: dict[str, Any]
    ) -> None:
        payload = f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        await self._send(conn, stream, h11.Data(data=payload))

    async def _send_json(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        payload: Any,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        headers = self._headers([("content-type", "application/json"), ("content-length", str(len(data)))])
        await self._send(conn, stream, h11.Response(status_code=status, headers=headers + (extra or [])))
        await self._send(conn, stream, h11.Data(data=data))
        await self._send(conn, stream, h11.EndOfMessage())

    @staticmethod
    async def _send(conn: h11.Connection, stream: trio.SocketStream, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)


def _reset(stream: trio.SocketStream) -> None:
    """Make the coming close a TCP reset (SO_LINGER 0), as a dropped upstream connection looks."""
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # pragma: no cover - the socket is already gone
        pass


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "type": _ERROR_TYPES.get(status, "api_error"),
            "message": message or _ERROR_MESSAGES.get(status, f"Error {status}"),
        },
    }


def _default_reply(prompt: str) -> str:
    text = " ".join(DIRECTIVE.sub("", prompt).split())
    return f"Done: {text[:40]}" if text else "Done."


def _tool_input(name: str, raw: str, system: str) -> dict[str, Any]:
    m = re.search(r"[Ww]orking directory: (\S[^\n]*)", system)
    cwd = m.group(1).strip() if m else ""

    def path(p: str) -> str:
        return p if p.startswith("/") or not cwd else f"{cwd.rstrip('/')}/{p}"

    if name == "Write":
        file_path, _, content = raw.partition(":")
        return {"file_path": path(file_path), "content": content}
    if name == "Edit":
        file_path, _, rest = raw.partition(":")
        old, _, new = rest.partition(":")
        return {"file_path": path(file_path), "old_string": old, "new_string": new}
    if name == "Read":
        return {"file_path": path(raw)}
    if name == "Bash":
        return {"command": raw, "description": "Run a command"}
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = {"input": raw}
    return value if isinstance(value, dict) else {"input": value}


@asynccontextmanager
async def open_fake_anthropic(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> AsyncIterator[FakeAnthropic]:
    """Run a stand-in for the block: `fake.url` is its base URL (for ANTHROPIC_BASE_URL)."""
    fake = FakeAnthropic(**kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve, host, port)
        yield fake
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fake_anthropic", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (the default)")
    parser.add_argument("--reply", default=None, help="the reply when a prompt has no [[reply:...]]")
    args = parser.parse_args(argv)
    fake = FakeAnthropic(default_reply=args.reply)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(fake.serve, args.host, args.port)
            print(url, flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
