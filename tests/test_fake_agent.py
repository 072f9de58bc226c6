"""The fake agent through real PTYs and pipes, read by the real dialects, in each of its modes."""

from __future__ import annotations

import fcntl
import math
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from conftest import FAKE_AGENT

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import (
    ContextUsage,
    Dialect,
    NeedsInput,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
)
from shoal.protocols.tasks import Assignment

WAIT_S = 20.0  # generous: the machine is shared; nothing here is a timing assertion
STREAM_JSON = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
TERMINAL = (TaskDone, TaskFailed, RateLimited)


class Agent:
    """A fake agent process whose output feeds a dialect; its signals queue up for the test."""

    def __init__(self, proc: trio.Process, dialect: Dialect, master: trio.lowlevel.FdStream | None) -> None:
        self.proc = proc
        self.dialect = dialect
        self.master = master
        self.seen: list[Signal] = []
        self.received = 0
        self.raw = bytearray()
        self.eof = trio.Event()
        self._data = trio.Event()
        self._send, self._signals = trio.open_memory_channel[Signal](math.inf)
        self._changed = trio.Event()
        self._n = 0

    def _emit(self, signals: list[Signal]) -> None:
        for signal_ in signals:
            self._send.send_nowait(signal_)
        self._changed.set()

    async def pump(self) -> None:
        source: Any = self.master if self.master is not None else self.proc.stdout
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                self.received += len(data)
                if len(self.raw) < 1 << 20:
                    self.raw += data
                self._data.set()
                self._emit(self.dialect.feed(data, trio.current_time()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # EIO on the PTY master once the child is gone: end of output
        await self.proc.wait()
        code = self.proc.returncode
        assert code is not None
        self._emit(self.dialect.on_exit(code if code >= 0 else None, -code if code < 0 else None))
        self.eof.set()

    async def ticker(self) -> None:
        while True:
            deadline = self.dialect.next_deadline()
            self._changed = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._changed.wait()
            if deadline is not None and trio.current_time() >= deadline:
                self._emit(self.dialect.tick(trio.current_time()))

    async def expect(self, *kinds: type) -> Signal:
        """The next signal of one of `kinds`; the ones before it go to `seen` as well."""
        with trio.fail_after(WAIT_S):
            async for signal_ in self._signals:
                self.seen.append(signal_)
                if isinstance(signal_, kinds):
                    return signal_
        raise AssertionError("signal stream ended")

    async def wait_output(self, text: str) -> None:
        """Until the screen (ANSI stripped) shows `text`."""
        with trio.fail_after(WAIT_S):
            while True:
                self._data = trio.Event()
                if text in strip(self.raw):
                    return
                await self._data.wait()

    def drain(self) -> list[Signal]:
        """Every signal still queued (after the process ended)."""
        while True:
            try:
                self.seen.append(self._signals.receive_nowait())
            except trio.WouldBlock:
                return self.seen

    async def write(self, data: bytes) -> None:
        if self.master is not None:
            await self.master.send_all(data)
        else:
            assert self.proc.stdin is not None
            await self.proc.stdin.send_all(data)

    async def submit(self, prompt: str, timeout_s: float | None = None) -> Assignment:
        self._n += 1
        task = Assignment(f"t{self._n}", 1, prompt, timeout_s=timeout_s)
        self.dialect.start_task(task, trio.current_time())
        self._changed.set()  # a new deadline
        await self.write(self.dialect.encode(task))
        return task

    async def task(self, prompt: str, timeout_s: float | None = None) -> Signal:
        """Run one task to its end: TaskDone, TaskFailed or RateLimited."""
        await self.submit(prompt, timeout_s)
        return await self.expect(*TERMINAL)


def _winsize(fd: int, rows: int = 40, cols: int = 120) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@asynccontextmanager
async def run_agent(
    args: list[str], dialect: str, options: dict[str, object] | None = None, *, pty: bool = True
) -> AsyncIterator[Agent]:
    argv = [sys.executable, str(FAKE_AGENT), *args]
    master_stream = None
    if pty:
        master, slave = os.openpty()
        _winsize(slave)
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
            )
        finally:
            os.close(slave)
        master_stream = trio.lowlevel.FdStream(master)
    else:
        proc = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent = Agent(proc, make_dialect(dialect, options or {}), master_stream)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.pump)
            nursery.start_soon(agent.ticker)
            yield agent
            if proc.returncode is None:
                proc.kill()
            with trio.fail_after(WAIT_S):
                await agent.eof.wait()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        for stream in (master_stream, proc.stdin, proc.stdout):
            if stream is not None:
                await stream.aclose()


def done(signal_: Signal) -> str:
    assert isinstance(signal_, TaskDone), signal_
    return signal_.result


# ------------------------------------------------------------------------------------------------
# the interactive TUI, read by the prompt dialect


async def test_tui_answers_deterministically_and_context_grows(no_leaks: None) -> None:
    async with run_agent(["--context-step", "30"], "prompt") as agent:
        await agent.expect(Ready)
        assert done(await agent.task("hello world")) == "Done: hello world"
        await agent.expect(Ready)
        long = "please summarise the following very long request about many things"
        assert done(await agent.task(long)) == "Done: " + long[:40]
        await agent.expect(Ready)
        assert done(await agent.task("[[context:85]] third")) == "Done: third"
        await agent.expect(Ready)
        used = [s.used_percent for s in agent.seen if isinstance(s, ContextUsage)]
        assert used == [60.0, 85.0]  # shown once 40 % or less is left


async def test_tui_output_think_and_echo_directives(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        result = done(await agent.task("[[think:0.3]] [[output:1500]] write a lot"))
        assert len(result.encode()) == 1500 and result.startswith("lorem ipsum dolor")
        await agent.expect(Ready)
        assert done(await agent.task("line one\nline two [[echo]]")) == "line one line two"


async def test_tui_permission_prompt_yes_and_no(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        await agent.submit("[[ask]] run it")
        assert await agent.expect(NeedsInput, *TERMINAL) == NeedsInput(
            prompt="Do you want to proceed?", options=("Yes", "No")
        )
        await agent.write(b"1\r")
        assert done(await agent.expect(*TERMINAL)) == "Done: run it"
        await agent.expect(Ready)
        await agent.submit("[[ask]] again")
        assert await agent.expect(NeedsInput, *TERMINAL) == NeedsInput(
            prompt="Do you want to proceed?", options=("Yes", "No")
        )
        await agent.write(b"2\r")
        assert "you declined" in done(await agent.expect(*TERMINAL))


async def test_tui_usage_limit_gives_the_reset_time(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        limited = await agent.task("[[ratelimit:1800000000]] x")
        assert limited == RateLimited(
            reset_at=1800000000.0, message="⎿ Claude AI usage limit reached|1800000000"
        )
        await agent.expect(Ready)
        relative = await agent.task("[[ratelimit:+3600]] y")
        assert isinstance(relative, RateLimited) and relative.reset_at is not None
        assert abs(relative.reset_at - (time.time() + 3600)) < 60
        await agent.expect(Ready)
        assert done(await agent.task("and now?")) == "Done: and now?"


async def test_tui_context_exhausted_fails_this_and_later_tasks(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        failed = await agent.task("[[context:100]] big")
        assert isinstance(failed, TaskFailed) and failed.reason.startswith("context exhausted: ")
        assert ContextUsage(used_percent=100.0) in agent.seen
        await agent.expect(Ready)
        again = await agent.task("small")
        assert isinstance(again, TaskFailed) and "Context limit reached" in again.reason


async def test_tui_fail_prints_an_api_error_line_and_the_prompt_dialect_fails_the_task(
    no_leaks: None,
) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        assert await agent.task("[[fail:tests are red]] fix") == TaskFailed(reason="API Error: tests are red")
        assert "⎿  API Error: tests are red" in agent.raw.decode(errors="replace")
        await agent.expect(Ready)
        assert done(await agent.task("and now?")) == "Done: and now?"  # the next task is unaffected


async def test_tui_crash_exits_with_the_code(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        await agent.submit("[[crash:3]] go")
        with trio.fail_after(WAIT_S):
            await agent.eof.wait()
        assert agent.proc.returncode == 3
        assert not [s for s in agent.seen if isinstance(s, TaskDone)]


async def test_tui_hang_until_timeout_then_escape_interrupts(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        assert await agent.task("[[hang]]", timeout_s=0.5) == TaskFailed(reason="timeout after 0.5s")
        await agent.write(b"\x1b")  # Esc interrupts the turn: the prompt comes back
        await agent.expect(Ready)
        assert done(await agent.task("still here?")) == "Done: still here?"


async def test_tui_flood_is_parsed_and_answered(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        assert done(await agent.task("[[flood:3]] flood")) == "Done: flood"
        assert agent.received > 3_000_000


async def test_tui_typed_input_and_box_style_and_claude_flags(no_leaks: None) -> None:
    args = [
        "--model", "opus", "--dangerously-skip-permissions", "--resume", "abc123", "--verbose",
        "--permission-mode", "acceptEdits", "--settings", '{"hooks":{}}', "--tui-style", "box",
        "--startup-delay", "0.2",
    ]  # fmt: skip
    async with run_agent(args, "prompt", {"bracketed_paste": False}) as agent:
        await agent.expect(Ready)
        assert "│" in strip(agent.raw) and "model: opus" in strip(agent.raw)
        assert done(await agent.task("typed by hand")) == "Done: typed by hand"


async def test_tui_quits_on_the_dialect_quit_bytes(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        quit_bytes = agent.dialect.quit_bytes()
        assert quit_bytes is not None
        await agent.write(quit_bytes)
        with trio.fail_after(WAIT_S):
            await agent.eof.wait()
        assert agent.proc.returncode == 0


async def test_no_ready_never_shows_the_prompt(no_leaks: None) -> None:
    async with run_agent(["--no-ready"], "prompt") as agent:
        await agent.wait_output("Use Claude to help")  # the last line it draws at start-up
        agent.proc.terminate()
        with trio.fail_after(WAIT_S):
            await agent.eof.wait()
    assert "Welcome to Claude Code" in strip(agent.raw)
    assert not any(isinstance(s, Ready) for s in agent.drain())


async def test_ignore_sigterm_keeps_working(no_leaks: None) -> None:
    async with run_agent(["--ignore-sigterm"], "prompt") as agent:
        await agent.expect(Ready)
        agent.proc.send_signal(signal.SIGTERM)
        assert done(await agent.task("survived")) == "Done: survived"
        assert agent.proc.returncode is None


async def test_sigterm_ends_it_by_default(no_leaks: None) -> None:
    async with run_agent([], "prompt") as agent:
        await agent.expect(Ready)
        agent.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT_S):
            await agent.eof.wait()
        assert agent.proc.returncode == 143


def strip(raw: bytes | bytearray) -> str:
    from shoal.protocols.dialects.ansi import strip_ansi

    return strip_ansi(bytes(raw))


# ------------------------------------------------------------------------------------------------
# --marker: the TUI plus the Stop hook's marker line


async def test_marker_mode(no_leaks: None) -> None:
    async with run_agent(["--marker"], "marker", {"ready": "prompt"}) as agent:
        await agent.expect(Ready)
        assert done(await agent.task("hi there")) == "Done: hi there"
        await agent.expect(Ready)
        assert await agent.task("[[fail:tests are red]] fix") == TaskFailed(reason="tests are red")
        await agent.expect(Ready)
        await agent.submit("[[ask]] rm it")
        assert isinstance(await agent.expect(NeedsInput, *TERMINAL), NeedsInput)
        await agent.write(b"2\r")
        assert await agent.expect(*TERMINAL) == TaskFailed(reason="permission denied")


# ------------------------------------------------------------------------------------------------
# the TUI read by the idle dialect (the last resort)


async def test_idle_dialect_on_the_tui(no_leaks: None) -> None:
    async with run_agent([], "idle", {"idle_ms": 300}) as agent:
        await agent.expect(Ready)
        assert done(await agent.task("[[think:0.5]] slow one")) == "Done: slow one"  # the spinner is output


# ------------------------------------------------------------------------------------------------
# headless: stream-json on pipes, and -p one process per task


async def test_stream_json_mode(no_leaks: None) -> None:
    async with run_agent([*STREAM_JSON, "--context-step", "10"], "stream-json", pty=False) as agent:
        await agent.expect(Ready)
        first = await agent.task("hello")
        assert isinstance(first, TaskDone) and first.result == "Done: hello"
        assert first.usage["cost_usd"] > 0 and first.usage["input_tokens"] > 0
        assert ContextUsage(used_percent=10.0) in agent.seen
        failed = await agent.task("[[fail:no luck]]")
        assert isinstance(failed, TaskFailed) and failed.reason == "no luck"
        assert failed.usage["cost_usd"] > 0, "a failed attempt's cost is recorded too"
        limited = await agent.task("[[ratelimit:1800000000]]")
        assert limited == RateLimited(reset_at=1800000000.0, message="rate limit rejected (five_hour)")
        exhausted = await agent.task("[[context:100]]")
        assert isinstance(exhausted, TaskFailed) and exhausted.reason.startswith("context exhausted")


async def test_stream_json_output_size_and_flood(no_leaks: None) -> None:
    async with run_agent(STREAM_JSON, "stream-json", pty=False) as agent:
        await agent.expect(Ready)
        assert len(done(await agent.task("[[output:5000]]"))) == 5000
        assert done(await agent.task("[[flood:1]] lots")) == "Done: lots"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("count to three", TaskDone(result="Done: count to three")),
        ("[[fail:bad input]] x", TaskFailed(reason="exit code 1: Error: bad input", exit_code=1)),
        ("[[crash:5]] x", TaskFailed(reason="exit code 5: Working on it…", exit_code=5)),
        (
            "[[ratelimit:1800000000]] x",
            RateLimited(reset_at=1800000000.0, message="Claude AI usage limit reached|1800000000"),
        ),
    ],
)
async def test_oneshot_mode(prompt: str, expected: Signal, no_leaks: None) -> None:
    async with run_agent(["--model", "haiku", "-p", prompt], "oneshot", pty=False) as agent:
        agent.dialect.start_task(Assignment("t1", 1, prompt), trio.current_time())
        assert agent.proc.stdin is not None
        await agent.proc.stdin.aclose()
        assert await agent.expect(*TERMINAL) == expected


async def test_oneshot_json_output(no_leaks: None) -> None:
    async with run_agent(["-p", "--output-format", "json", "sum it"], "oneshot", pty=False) as agent:
        agent.dialect.start_task(Assignment("t1", 1, "sum it"), trio.current_time())
        signal_ = await agent.expect(*TERMINAL)
        assert isinstance(signal_, TaskDone) and signal_.result == "Done: sum it"
        assert signal_.usage["cost_usd"] > 0


async def test_starts_without_heavy_imports() -> None:
    """Start-up stays fast because only a few small stdlib modules are imported (not timed here:
    benchmarks/bench_parsers.py reports the start-up time)."""
    probe = (
        "import pkgutil, runpy, sys\n"  # run_path imports pkgutil (and so typing) on its own
        "before = set(sys.modules)\n"
        "sys.argv = ['fake_agent', '-p', 'hi']\n"
        "try:\n"
        f"    runpy.run_path({str(FAKE_AGENT)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(set(sys.modules) - before)), file=sys.stderr)\n"
    )
    # -S as the fake profiles run it: no site hooks (an editable install's finder imports typing)
    result = await trio.run_process(
        [sys.executable, "-S", "-c", probe], capture_stdout=True, capture_stderr=True
    )
    assert result.stdout == b"Done: hi\n"
    loaded = set(result.stderr.decode().split())
    heavy = {"json", "asyncio", "subprocess", "argparse", "typing", "trio", "shoal", "threading", "logging"}
    assert not loaded & heavy, loaded & heavy
