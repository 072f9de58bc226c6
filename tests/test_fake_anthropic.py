"""The Messages API stand-in (examples/agents/fake_anthropic.py) over real sockets, in-process and as
a subprocess: what real Claude Code will read from it must be what the real API sends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from shoal.agents.fake_anthropic import FakeAnthropic, Script, open_fake_anthropic, prompt_text

TOOLS = [{"name": "Write", "description": "write a file", "input_schema": {"type": "object"}}]


def body(prompt: str | list[Any], *, stream: bool = True, tools: bool = True, **extra: Any) -> dict[str, Any]:
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    out: dict[str, Any] = {"model": "claude-test", "max_tokens": 100, "messages": messages, "stream": stream}
    if tools:
        out["tools"] = TOOLS
    return {**out, **extra}


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a server-sent event stream."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def post(
    fake: FakeAnthropic, payload: dict[str, Any], path: str = "/v1/messages?beta=true"
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as client:
        return await client.post(path, json=payload, headers={"x-api-key": "sk-test"})


async def test_streaming_reply_has_the_real_event_sequence_and_is_recorded() -> None:
    async with open_fake_anthropic() as fake:
        r = await post(fake, body("say hi [[reply:Hello there, this is a reply longer than a chunk]]"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        events = sse(r.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"} and len(names[3:-3]) >= 2  # chunked
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["model"] == "claude-test"
    assert start["usage"]["input_tokens"] > 0
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello there, this is a reply longer than a chunk"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0
    [rec] = fake.requests
    assert (rec.method, rec.path, rec.query, rec.kind, rec.status) == (
        "POST",
        "/v1/messages",
        {"beta": "true"},
        "messages",
        200,
    )
    assert rec.stream and not rec.side and rec.headers["x-api-key"] == "sk-test"
    assert rec.prompt().startswith("say hi")


async def test_non_streaming_reply_and_count_tokens() -> None:
    async with open_fake_anthropic() as fake:
        r = await post(fake, body("plain question", stream=False), "/v1/messages")
        c = await post(fake, body("count me"), "/v1/messages/count_tokens")
    msg = r.json()
    assert msg["type"] == "message" and msg["stop_reason"] == "end_turn"
    assert msg["content"] == [{"type": "text", "text": "Done: plain question"}]
    assert c.status_code == 200 and c.json()["input_tokens"] > 0
    assert [rec.kind for rec in fake.requests] == ["messages", "count_tokens"]


async def test_tool_use_turns_then_the_reply_once_results_are_back() -> None:
    prompt = "go [[tool:Write:/tmp/x.txt:a\\nb]][[tool:Bash:ls -l]][[reply:all done]]"
    first = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    async with open_fake_anthropic() as fake:
        events = sse((await post(fake, body(first))).text)
        assert events[1][1]["content_block"]["type"] == "tool_use"
        assert events[1][1]["content_block"]["name"] == "Write"
        raw = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
        assert json.loads(raw) == {"file_path": "/tmp/x.txt", "content": "a\nb"}
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        tool_id = events[1][1]["content_block"]["id"]
        second = [
            *first,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": tool_id, "name": "Write", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}]},
        ]
        msg = (await post(fake, body(second, stream=False))).json()
        assert msg["content"][0]["name"] == "Bash" and msg["content"][0]["input"]["command"] == "ls -l"
        third = [
            *second,
            {"role": "assistant", "content": msg["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "ok"}]},
        ]
        final = (await post(fake, body(third, stream=False))).json()
    assert final["content"] == [{"type": "text", "text": "all done"}] and final["stop_reason"] == "end_turn"


async def test_rate_limit_error_carries_retry_after_and_unified_headers() -> None:
    async with open_fake_anthropic() as fake:
        before = time.time()
        r = await post(fake, body("x [[error:429]][[retry_after:7]][[reset:+600]]"))
    assert r.status_code == 429
    assert r.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": r.json()["error"]["message"]},
    }
    assert r.headers["retry-after"] == "7"
    assert r.headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert before + 599 <= int(r.headers["anthropic-ratelimit-unified-reset"]) <= time.time() + 601
    assert r.headers["anthropic-ratelimit-unified-representative-claim"] == "five_hour"
    assert fake.requests[0].status == 429


async def test_errors_for_the_first_n_requests_then_success() -> None:
    async with open_fake_anthropic() as fake:
        statuses = [(await post(fake, body("storm [[error:529:2]]"))).status_code for _ in range(3)]
        other = [(await post(fake, body(f"[[error:{s}]]"))).status_code for s in (401, 500)]
        assert (await post(fake, body("[[error:529]]"))).json()["error"]["type"] == "overloaded_error"
    assert statuses == [529, 529, 200]
    assert other == [401, 500]


async def test_success_carries_rate_limit_warning_headers() -> None:
    async with open_fake_anthropic() as fake:
        plain = await post(fake, body("a"))
        warn = await post(fake, body("b [[limit:0.92]]"))
    assert plain.headers["anthropic-ratelimit-unified-status"] == "allowed"
    assert warn.headers["anthropic-ratelimit-unified-status"] == "allowed_warning"
    assert warn.headers["anthropic-ratelimit-unified-5h-utilization"] == "0.92"
    assert "anthropic-ratelimit-unified-5h-surpassed-threshold" in warn.headers


async def test_cut_resets_the_connection_mid_stream_then_answers() -> None:
    async with open_fake_anthropic() as fake:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await post(fake, body("cut me [[cut:1]][[reply:a reply long enough for several chunks of text]]"))
        r = await post(fake, body("cut me [[cut:1]][[reply:a reply long enough for several chunks of text]]"))
    assert r.status_code == 200 and sse(r.text)[-1][0] == "message_stop"
    assert len(fake.messages()) == 2


async def test_side_requests_ignore_directives_and_are_marked() -> None:
    async with open_fake_anthropic() as fake:
        r = await post(fake, body("title for: [[error:529]]", tools=False, stream=False))
        missing = await post(fake, {}, "/api/oauth/usage")
        await fake.wait_for(1, side=True)
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "OK"
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    assert [(rec.kind, rec.side) for rec in fake.requests] == [("messages", True), ("other", False)]
    assert fake.messages() == []


def test_directives_parse_and_bad_values_are_ignored() -> None:
    script = Script.parse("[[think:2.5]][[pace:0.1]][[chunk:3]][[think:nan]][[chunk:x]][[reset:+10]]", 100)
    assert (script.think, script.pace, script.chunk, script.reset) == (2.5, 0.1, 3, 110)
    reminder = {"type": "text", "text": "<system-reminder>r"}
    assert prompt_text([{"role": "user", "content": [reminder, {"type": "text", "text": "p"}]}]) == "p"


async def test_think_delays_the_answer() -> None:
    async with open_fake_anthropic() as fake:
        started = trio.current_time()
        r = await post(fake, body("slow [[think:0.3]]"))
        assert trio.current_time() - started >= 0.3  # a lower bound: trio.sleep never wakes early
    assert r.status_code == 200


async def test_subprocess_prints_its_url_and_serves_the_request_log() -> None:
    async with trio.open_nursery() as nursery:
        argv = [sys.executable, "-m", "shoal.agents.fake_anthropic", "--port", "0"]
        proc = await nursery.start(partial(trio.run_process, argv, stdout=subprocess.PIPE, check=False))
        try:
            with trio.fail_after(20):
                line = b""
                while not line.endswith(b"\n"):
                    line += await proc.stdout.receive_some(1)
            url = line.decode().strip()
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                r = await client.post("/v1/messages", json=body("hi", stream=False))
                log = (await client.get("/_requests")).json()
                await client.delete("/_requests")
                after = (await client.get("/_requests")).json()
        finally:
            proc.terminate()
    assert r.json()["content"][0]["text"] == "Done: hi"
    assert [(e["path"], e["status"]) for e in log] == [("/v1/messages", 200)]
    assert after == []


async def test_relative_tool_paths_are_taken_under_the_clis_working_directory() -> None:
    env = "# Environment\n - Primary working directory: /srv/project\n - Is a git repository: false"
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": env}, {"type": "text", "text": "[[tool:Read:a.txt]]"}],
        }
    ]
    async with open_fake_anthropic() as fake:
        msg = (await post(fake, body(messages, stream=False))).json()
    assert msg["content"][0]["input"] == {"file_path": "/srv/project/a.txt"}


async def test_warmup_requests_of_cli_2_0_are_side_traffic() -> None:
    async with open_fake_anthropic() as fake:
        r = await post(fake, body("Warmup", stream=False))
    assert r.status_code == 200 and fake.requests[0].side and fake.messages() == []


async def test_head_probe_gets_headers_only() -> None:
    """The CLI probes `HEAD /api/hello` when its nonessential traffic is on: a response without a
    body (a body here broke the connection handler), recorded as other traffic."""
    async with open_fake_anthropic() as fake, httpx.AsyncClient() as client:
        hello = await client.head(fake.url + "/api/hello")
        missing = await client.head(fake.url + "/nowhere")
    assert hello.status_code == 200 and hello.content == b""
    assert missing.status_code == 404
    assert [(rec.method, rec.path, rec.status) for rec in fake.requests] == [
        ("HEAD", "/api/hello", 200),
        ("HEAD", "/nowhere", 404),
    ]
