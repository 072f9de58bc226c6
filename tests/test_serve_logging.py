"""`shoal serve`'s logs: readable lines on a terminal, JSON lines for programs (or `--log-format json`).

The server runs as a real subprocess whose stdout and stderr are a real pseudo-terminal, exactly what
a person sees; a fast scaler tick makes it publish many `scale.decision` events, which used to fill
the terminal with JSON.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

import trio

from shoal.actors.auth import read_endpoint, read_token, token_path
from shoal.actors.client import connect
from shoal.actors.service import describe_event, log_format
from shoal.protocols.config import LogConfig

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]


async def serve_on_a_terminal(state: Path, *extra: str) -> list[str]:
    """Run `shoal serve` on a PTY, run a task and a crashing one, stop it; return the screen's lines."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL")}
    proc = await trio.lowlevel.open_process(
        [*SHOAL, "serve", "--state-dir", str(state), "--port", "0", "--http-port", "0",
         "--min-workers", "1", "--max-workers", "1", "--set", "scaling.tick_s=0.05",
         "--set", "queue.retry_backoff.min_s=0.01", *extra],
        stdin=slave, stdout=slave, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    term = trio.lowlevel.FdStream(master)
    screen = b""

    async def read_until(needle: bytes) -> None:
        nonlocal screen
        with trio.fail_after(60):
            while needle not in screen:
                try:
                    chunk = await term.receive_some(65536)
                except OSError:  # EIO: the server exited and the terminal hung up
                    chunk = b""
                assert chunk, f"the server ended before printing {needle!r}: {screen.decode()}"
                screen += chunk

    try:
        await read_until(b"swarm running")
        url = read_endpoint(state)
        assert url is not None
        async with connect(url, read_token(token_path(state))) as c:
            with trio.fail_after(60):
                async with c.events(["task.dead", "task.done"]) as events:
                    await c.submit({"id": "ok", "prompt": "hello"})
                    await c.submit({"id": "boom", "prompt": "[[crash:3]] x", "max_attempts": 1})
                    finished = set()
                    async for event in events:
                        finished.add(event.data["task_id"])  # type: ignore[union-attr]
                        if finished == {"ok", "boom"}:
                            break
        await read_until(b"boom")
        proc.send_signal(signal.SIGTERM)
        await read_until(b"shoal: stopped")
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await term.aclose()
    return screen.decode(errors="replace").replace("\r\n", "\n").splitlines()


def json_lines(lines: list[str]) -> list[dict[str, object]]:
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


async def test_a_terminal_gets_readable_lines_not_json(tmp_path: Path) -> None:
    lines = await serve_on_a_terminal(tmp_path / "state")
    assert not json_lines(lines), "\n".join(lines)
    assert not [line for line in lines if line.lstrip().startswith("{")], "\n".join(lines)
    text = "\n".join(lines)
    assert "scale.decision" not in text  # the scaler's reasoning is debug, not a line per tick
    assert "dashboard: http://127.0.0.1:" in text and "gateway:   ws://" in text  # the banner
    assert "Running on" not in text and "gateway listening on" not in text  # said once, by the banner
    assert "warning: worker w1 crashed: agent exited (exit code 3)" in text
    assert "warning: task boom dead: attempts exhausted" in text
    assert len(lines) < 40, text  # quiet: a banner, state lines and the few events that matter


async def test_log_format_json_on_a_terminal(tmp_path: Path) -> None:
    lines = await serve_on_a_terminal(tmp_path / "state", "--log-format", "json")
    records = json_lines(lines)
    topics = {r.get("topic") for r in records}
    assert {"task.done", "task.dead", "worker.crashed", "worker.spawned"} <= topics
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_format_follows_the_output() -> None:
    assert log_format(LogConfig(), _Tty()) == "text"
    assert log_format(LogConfig(), io.StringIO()) == "json"  # a pipe, a journal, a file
    assert log_format(LogConfig(file="/var/log/shoal.log"), _Tty()) == "json"
    assert log_format(LogConfig(format="json"), _Tty()) == "json"
    assert log_format(LogConfig(format="text"), io.StringIO()) == "text"
    assert log_format(LogConfig(json=False), io.StringIO()) == "text"  # the older switch still works


def test_events_read_as_sentences() -> None:
    failed = {"task_id": "t1", "worker": "w2", "outcome": "timeout", "reason": "took 30 s"}
    failed["will_retry"] = True
    assert describe_event("task.failed", failed) == "task t1 failed on w2 (timeout): took 30 s; will retry"
    assert describe_event("scale.up", {"spawn": ["sonnet", "haiku"], "inputs": {"ready": 3}}) == (
        "scale.up spawn=sonnet,haiku"
    )
