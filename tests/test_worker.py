"""The WorkerActor driven end to end: real processes in real PTYs and pipes, mostly the fake agent."""

from __future__ import annotations

import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs
import pytest
import trio

from shoal.actors.process import SpawnError
from shoal.actors.worker import OutputRing, WorkerActor, WorkerExit, clean_text
from shoal.protocols.config import ProfileConfig, WorkersConfig
from shoal.protocols.errors import Conflict, ValidationError
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import Assignment, Outcome
from shoal.protocols.workers import (
    Assign,
    ContextReport,
    NeedsInputReport,
    Pause,
    RateLimitReport,
    Resize,
    Restart,
    Resume,
    SendInput,
    SetCapabilities,
    SetModel,
    StateChanged,
    Stop,
    TaskFinished,
    WorkerReport,
    WorkerState,
)
from shoal.runtime.actor import Address

R = TypeVar("R")
S = WorkerState
PY = sys.executable


def py_agent(code: str, **kw: Any) -> ProfileConfig:
    """A tiny real agent in Python for behaviours the fake agent has no directive for."""
    literal = textwrap.dedent(code).replace("{", "{{").replace("}", "}}")  # argv items are templates
    return ProfileConfig(argv=(PY, "-c", literal), **kw)


class Harness:
    """Runs one WorkerActor; collects its reports; waits on them (never sleeps)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        profile: ProfileConfig | str,
        *,
        model: str | None = "sonnet",
        config: WorkersConfig | None = None,
        **kw: Any,
    ) -> None:
        if isinstance(profile, str):
            self.profile_name, profile = profile, BUILTIN_PROFILES[profile]
        else:
            self.profile_name = "test"
        self.nursery = nursery
        self.send, self.recv = trio.open_memory_channel[WorkerReport](1000)
        self.worker = WorkerActor(
            "w1",
            "lin1",
            self.profile_name,
            profile,
            model,
            None,
            self.send,
            config or WorkersConfig(),
            **kw,
        )
        self.reports: list[WorkerReport] = []
        self._cursor = 0
        self._arrived = trio.Event()
        self.result: WorkerExit | None = None
        self.done = trio.Event()
        self.address: Address[Any]

    async def start(self) -> Address[Any]:
        self.nursery.start_soon(self._pump)
        self.address = await self.nursery.start(self._run)
        return self.address

    async def _run(self, *, task_status: trio.TaskStatus[Any]) -> None:
        try:
            self.result = await self.worker.run(task_status=task_status)
        finally:
            self.done.set()
            self.send.close()  # the worker reports nothing more: the pump ends

    async def _pump(self) -> None:
        async for report in self.recv:
            self.reports.append(report)
            self._arrived.set()
            self._arrived = trio.Event()

    async def expect(
        self, cls: type[R], timeout: float = 15, where: Callable[[R], bool] = lambda r: True, **match: Any
    ) -> R:
        """The next report (after the previous expectation) of type `cls` matching `match`."""
        with trio.fail_after(timeout):
            while True:
                while self._cursor < len(self.reports):
                    report = self.reports[self._cursor]
                    self._cursor += 1
                    if (
                        isinstance(report, cls)
                        and where(report)
                        and all(getattr(report, k) == v for k, v in match.items())
                    ):
                        return report
                await self._arrived.wait()

    async def state(self, state: WorkerState, timeout: float = 15, **match: Any) -> StateChanged:
        return await self.expect(StateChanged, timeout, state=state, **match)

    async def assign(self, prompt: str, task_id: str = "t1", **kw: Any) -> None:
        await self.address.send(Assign(Assignment(task_id, 1, prompt, **kw)))

    async def run_task(
        self, prompt: str, task_id: str = "t1", *, wait: float = 15, **kw: Any
    ) -> TaskFinished:
        await self.assign(prompt, task_id, **kw)
        return await self.expect(TaskFinished, wait, task_id=task_id)

    async def finish(self, timeout: float = 15) -> WorkerExit:
        with trio.fail_after(timeout):
            await self.done.wait()
        assert self.result is not None
        return self.result

    def states(self) -> list[WorkerState]:
        return [r.state for r in self.reports if isinstance(r, StateChanged)]


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def started(nursery: trio.Nursery, profile: ProfileConfig | str, **kw: Any) -> Harness:
    h = Harness(nursery, profile, **kw)
    await h.start()
    await h.state(S.IDLE)
    return h


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


# ---- small parts -------------------------------------------------------------------------------


def test_output_ring_keeps_the_last_bytes_and_grows_with_output() -> None:
    ring = OutputRing(10_000)
    assert len(ring) == 0 and ring.tail() == b""
    for i in range(5000):
        ring.append(bytes([48 + i % 10]))  # 1-byte writes coalesce into few chunks
    assert len(ring._chunks) <= 2
    ring.append(b"x" * 20_000)
    assert len(ring) == 10_000 and ring.tail() == b"x" * 10_000
    ring.append(b"END")
    assert ring.tail(5) == b"xxEND" and ring.total == 25_003
    assert ring.tail(0) == b""


def test_clean_text_strips_escapes_and_bad_utf8() -> None:
    assert clean_text(b"\x1b[1;32mok\x1b[0m\r\nnext\x1b]0;title\x07 \xff") == "ok\nnext \ufffd"


# ---- without the fake agent: shell, cat and tiny Python agents ---------------------------------------


async def test_shell_profile_end_to_end(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "shell")
    info = h.worker.info()
    assert info.state is S.IDLE and info.pid is not None and info.profile == "shell"
    assert h.states() == [S.STARTING, S.IDLE]
    live = h.worker.subscribe_output()

    done = await h.run_task("echo hello-$((6*7))", category="build")
    assert done.outcome is Outcome.DONE and "hello-42" in (done.result or "")
    assert done.elapsed_s > 0 and done.model == "sonnet"
    await h.state(S.IDLE)
    chunks = b""
    while b"hello-42" not in chunks:
        with trio.fail_after(5):
            chunks += await live.receive()
    h.worker.unsubscribe_output(live)

    failed = await h.run_task("(exit 3)", task_id="t2", category="test")
    assert failed.outcome is Outcome.FAILED and failed.reason == "exit status 3"
    info = h.worker.info()
    assert info.tasks_done == 1 and info.history == ("build", "test")
    assert b"hello-42" in h.worker.output_tail()
    assert info.rss_bytes is not None and info.rss_bytes > 0

    await h.address.send(Stop())
    await h.state(S.STOPPING)
    stopped = await h.state(S.STOPPED)
    assert (await h.finish()) == WorkerExit(False, stopped.reason, stopped.exit_code, stopped.signal)


async def test_missing_command_raises_spawn_error_before_started(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    h = Harness(nursery, ProfileConfig(argv=("shoal-no-such-agent", "--model", "{model}")))
    with pytest.raises(SpawnError, match=r"shoal-no-such-agent.*ENOENT"):
        await h.start()
    assert h.reports == []


async def test_bad_template_raises_validation_error_before_started(nursery: trio.Nursery) -> None:
    h = Harness(nursery, ProfileConfig(argv=("cat", "{nope}")))
    with pytest.raises(ValidationError, match="argv"):
        await h.start()
    h2 = Harness(nursery, ProfileConfig(argv=("cat",), options={"no_such_option": 1}))
    with pytest.raises(ValidationError, match="no_such_option"):
        await h2.start()


async def test_child_exiting_at_once_crashes_with_code_and_last_line(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    profile = ProfileConfig(
        argv=("bash", "-c", "echo 'fatal: no config'; exit 7"), dialect="marker", options={"ready": "never"}
    )
    h = Harness(nursery, profile)
    await h.start()
    crashed = await h.state(S.CRASHED)
    assert crashed.exit_code == 7 and crashed.signal is None
    assert crashed.reason == "exited during start-up (exit code 7): fatal: no config"
    assert (await h.finish()) == WorkerExit(True, crashed.reason, 7, None)


async def test_startup_timeout_kills_and_crashes(nursery: trio.Nursery, no_leaks: None) -> None:
    profile = ProfileConfig(
        argv=("cat",), dialect="marker", options={"ready": "never"}, startup_timeout_s=0.3
    )
    h = Harness(nursery, profile)
    await h.start()
    pid = h.worker.pid
    assert pid is not None
    crashed = await h.state(S.CRASHED)
    assert crashed.reason is not None and crashed.reason.startswith(
        "start-up timeout: not ready within 0.3 s"
    )
    assert crashed.pid == pid
    result = await h.finish()
    assert result.crashed and result.reason == crashed.reason


IGNORES_SIGTERM = """
    import signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin:
        print("SHOAL_DONE", flush=True)
    while True:  # end of input is no reason to leave either
        signal.pause()
"""


async def test_stop_ladder_against_a_child_ignoring_sigterm(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(
        nursery, py_agent(IGNORES_SIGTERM, dialect="marker", transport="pipe", stop_timeout_s=0.3)
    )
    await h.address.send(Stop(reason="scale down"))
    with trio.fail_after(5):  # bounded: two rungs of 0.3 s, then SIGKILL
        stopped = await h.state(S.STOPPED)
    assert stopped.signal == signal.SIGKILL and stopped.reason == "scale down (after SIGKILL)"
    result = await h.finish()
    assert result == WorkerExit(False, "scale down (after SIGKILL)", None, signal.SIGKILL)


async def test_cancelling_run_kills_and_reaps(no_leaks: None) -> None:
    async with trio.open_nursery() as n:
        h = await started(n, py_agent(IGNORES_SIGTERM, dialect="marker", transport="pipe"))
        pid = h.worker.pid
        assert pid is not None and await trio.Path(f"/proc/{pid}").exists()
        n.cancel_scope.cancel()
    assert h.result is None  # cancelled, not returned
    assert not await trio.Path(f"/proc/{pid}").exists()  # killed and reaped (no zombie either)


async def test_assign_when_not_idle_is_interrupted_at_once(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "shell")
    await h.assign("sleep 30", task_id="long")
    await h.state(S.BUSY)
    await h.assign("echo no", task_id="second")
    refused = await h.expect(TaskFinished, task_id="second")
    assert refused.outcome is Outcome.INTERRUPTED and refused.reason == "worker not idle"
    assert h.worker.info().task_id == "long"
    await h.address.send(Stop(reason="test over"))
    interrupted = await h.expect(TaskFinished, task_id="long")
    assert interrupted.outcome is Outcome.INTERRUPTED and interrupted.reason == "interrupted: test over"
    await h.finish()


async def test_resize_and_send_input_reach_the_pty(nursery: trio.Nursery, no_leaks: None) -> None:
    agent = py_agent(
        """
        import os, signal, sys
        # os.write, not print: a print in a handler that interrupts another print raises
        def winch(*_):
            os.write(1, b"size %d %d\\n" % tuple(os.get_terminal_size(0)))
        signal.signal(signal.SIGWINCH, winch)
        print("listening", flush=True)
        for line in sys.stdin:
            print("typed", line.strip(), flush=True)
        """,
        dialect="marker",
        options={"ready": "^listening$"},
        rows=20,
        cols=70,
    )
    h = await started(nursery, agent)
    live = h.worker.subscribe_output()
    await h.address.call(Resize(rows=31, cols=97))
    await h.address.call(SendInput(b"hello\r"))
    seen = b""
    with trio.fail_after(15):  # a bound, not a measure: a loaded machine took more than 5 s once
        while b"size 97 31" not in seen or b"typed hello" not in seen:
            seen += await live.receive()
    with pytest.raises(ValidationError, match="rows"):
        await h.address.call(Resize(rows=0, cols=80))
    assert h.worker.state is S.IDLE


async def test_calls_reply_and_fail_with_the_reason(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "shell")
    assert await h.address.call(SetCapabilities(frozenset({"code", "docs"}))) is None
    assert h.worker.info().capabilities == ("code", "docs")
    await h.address.call(SetCapabilities(None))
    assert h.worker.info().capabilities is None
    with pytest.raises(ValidationError, match="model"):
        await h.address.call(SetModel(""))
    stopped = await h.address.call(Stop(reason="bye"))
    assert isinstance(stopped, WorkerExit) and not stopped.crashed


async def test_pipe_worker_keeps_stderr_out_of_the_protocol(nursery: trio.Nursery, no_leaks: None) -> None:
    agent = py_agent(
        """
        import sys
        for line in sys.stdin:
            sys.stderr.write("SHOAL_DONE status=failed reason=from stderr\\n"); sys.stderr.flush()
            print("answer", line.strip(), flush=True)
            print("SHOAL_DONE", flush=True)
        """,
        dialect="marker",
        transport="pipe",
        options={"strip_chrome": False},
    )
    h = await started(nursery, agent)
    done = await h.run_task("q1")
    assert done.outcome is Outcome.DONE and done.result is not None and "answer q1" in done.result
    assert b"from stderr" in h.worker.output_tail()  # kept for logs and attach


async def test_invalid_json_and_utf8_on_stream_json_fail_the_attempt(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    agent = py_agent(
        """
        import json, sys
        for line in sys.stdin.buffer:
            bad = b'{"type": "assistant", oops\\n' if b"json" in line else b'\\xff\\xfe{}\\n'
            sys.stdout.buffer.write(bad)
            sys.stdout.flush()
        """,
        dialect="stream-json",
        transport="pipe",
    )
    h = await started(nursery, agent)
    pid = h.worker.pid
    bad = await h.run_task("bad json please")
    assert bad.outcome is Outcome.FAILED and bad.reason is not None
    assert bad.reason.startswith("protocol error: invalid JSON")
    await h.state(S.REFRESHING, reason=bad.reason)
    await h.state(S.IDLE)
    assert h.worker.pid != pid  # a fresh process: the stream's state is unknown
    bad2 = await h.run_task("bad bytes", task_id="t2")
    assert bad2.outcome is Outcome.FAILED and "invalid UTF-8" in (bad2.reason or "")


async def test_flooding_child_stays_bounded_and_controllable(nursery: trio.Nursery, no_leaks: None) -> None:
    agent = py_agent(
        """
        import sys
        for line in sys.stdin:
            chunk = b"y" * 65536 + b"\\n"
            for _ in range(16 * 40):  # 40 MiB as fast as the pipe takes it
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            print("SHOAL_DONE", flush=True)
        """,
        dialect="marker",
        transport="pipe",
    )
    h = await started(nursery, agent, config=WorkersConfig(ring_buffer_kib=64))
    slow = h.worker.subscribe_output(size=4)  # never read: must not slow the worker
    done = await h.run_task("flood", wait=60)
    assert done.outcome is Outcome.DONE
    assert len(h.worker.output_tail()) == 64 * 1024
    assert h.worker.dropped_chunks > 0
    h.worker.unsubscribe_output(slow)


async def test_two_hundred_workers_start_and_stop_without_leaks(no_leaks: None) -> None:
    profile = ProfileConfig(argv=("cat",), dialect="marker", stop_timeout_s=1.0)
    async with trio.open_nursery() as n:
        harnesses = [Harness(n, profile, spawn_limiter=trio.CapacityLimiter(8)) for _ in range(200)]
        for i, h in enumerate(harnesses):
            h.worker.id = f"w{i}"
        async with trio.open_nursery() as starters:
            for h in harnesses:
                starters.start_soon(h.start)
        for h in harnesses:
            await h.state(S.IDLE)
        pids = {h.worker.pid for h in harnesses}
        assert len(pids) == 200
        for h in harnesses:
            await h.address.send(Stop(reason="done"))
        for h in harnesses:
            result = await h.finish(timeout=30)
            assert not result.crashed
    for pid in pids:
        assert not await trio.Path(f"/proc/{pid}").exists()


# ---- the fake agent: every dialect, and every behaviour by directive -----------------------------------


@pytest.mark.parametrize("profile", ["fake", "fake-marker", "fake-stream", "fake-oneshot"])
async def test_every_dialect_end_to_end(profile: str, nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, profile)
    first = await h.run_task("say [[echo]] hello world")
    assert first.outcome is Outcome.DONE, first
    assert "hello world" in (first.result or "")
    await h.state(S.IDLE)
    second = await h.run_task("second task [[output:2000]]", task_id="t2")
    assert second.outcome is Outcome.DONE
    assert h.worker.info().tasks_done == 2
    await h.address.send(Stop())
    stopped = await h.state(S.STOPPED)
    assert not (await h.finish()).crashed
    if profile != "fake-oneshot":
        assert stopped.reason == "stop requested"  # the polite quit was enough


@pytest.mark.parametrize("profile", ["fake", "fake-marker"])
async def test_a_reply_repeating_the_prompt_text_end_to_end(
    profile: str, nursery: trio.Nursery, no_leaks: None
) -> None:
    """The reply repeats the prompt's text (its echo was typed into the box just before): it is kept."""
    h = await started(nursery, profile)
    done = await h.run_task("[[echo]] some text")
    assert done.outcome is Outcome.DONE and done.result == "some text"


async def test_shell_output_repeating_the_command_is_kept(nursery: trio.Nursery, no_leaks: None) -> None:
    """bash echoes the pasted line and readline redraws it; the output, the same text again, is kept."""
    h = await started(nursery, "shell")
    done = await h.run_task('echo "$BASH_COMMAND"')
    assert done.outcome is Outcome.DONE and done.result == 'echo "$BASH_COMMAND"'
    await h.state(S.IDLE)
    said = await h.run_task("echo said: hello world", task_id="t2")
    assert said.outcome is Outcome.DONE and said.result == "said: hello world"


@pytest.mark.parametrize("profile", ["fake", "fake-stream"])
async def test_crash_mid_task_reports_exit_code(profile: str, nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, profile)
    crashed_task = await h.run_task("work then [[crash:3]]")
    assert crashed_task.outcome is Outcome.CRASHED and crashed_task.exit_code == 3
    assert crashed_task.output_tail is not None
    state = await h.state(S.CRASHED)
    assert state.exit_code == 3 and "exit code 3" in (state.reason or "")
    result = await h.finish()
    assert result.crashed and result.exit_code == 3
    assert h.worker.info().crashes == 1


async def test_oneshot_crash_fails_the_attempt_and_keeps_the_worker(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    h = await started(nursery, "fake-oneshot")
    failed = await h.run_task("[[crash:5]]")
    assert failed.outcome is Outcome.FAILED and failed.exit_code == 5
    await h.state(S.IDLE)
    assert (await h.run_task("fine", task_id="t2")).outcome is Outcome.DONE


@pytest.mark.parametrize("profile", ["fake", "fake-stream", "fake-oneshot"])
async def test_hang_times_out_and_the_worker_recovers(
    profile: str, nursery: trio.Nursery, no_leaks: None
) -> None:
    h = await started(nursery, profile)
    hung = await h.run_task("[[hang]]", timeout_s=0.5)
    assert hung.outcome is Outcome.TIMEOUT and (hung.reason or "").startswith("timeout")
    await h.state(S.IDLE)
    assert (await h.run_task("after the hang", task_id="t2")).outcome is Outcome.DONE


@pytest.mark.parametrize("profile", ["fake", "fake-stream"])
async def test_rate_limit_with_reset_time(profile: str, nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, profile)
    reset = 2_000_000_000
    limited = await h.run_task(f"[[ratelimit:{reset}]]")
    assert limited.outcome is Outcome.RATE_LIMITED and limited.reset_at == reset
    reports = [r for r in h.reports if isinstance(r, RateLimitReport)]
    assert reports and reports[0].reset_at == reset and reports[0].model == "sonnet"
    await h.state(S.IDLE)  # a rate limit is not a crash
    assert h.worker.info().crashes == 0


async def test_needs_input_is_reported_and_the_task_continues(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake")
    await h.assign("[[ask]]", timeout_s=2.0)
    asked = await h.expect(NeedsInputReport)
    assert asked.task_id == "t1" and asked.prompt
    assert h.worker.state is S.BUSY
    ended = await h.expect(TaskFinished)
    assert ended.outcome is Outcome.TIMEOUT


async def test_context_refresh_between_tasks(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake")  # refreshes at 80 % used
    pid = h.worker.pid
    low = await h.run_task("[[context:65]]")  # the footer shows "Context left until auto-compact: 35%"
    assert low.outcome is Outcome.DONE
    await h.state(S.IDLE)
    assert h.worker.pid == pid and h.worker.info().context_used_percent == 65
    high = await h.run_task("[[context:85]]", task_id="t2")
    assert high.outcome is Outcome.DONE
    ctx = [r.used_percent for r in h.reports if isinstance(r, ContextReport)]
    assert ctx == [65, 85]
    refreshing = await h.state(S.REFRESHING)
    assert refreshing.reason == "context refresh: 85% used (threshold 80%)"
    await h.state(S.IDLE)
    assert h.worker.pid != pid and h.worker.info().context_used_percent is None
    assert (await h.run_task("fresh", task_id="t3")).outcome is Outcome.DONE


async def test_context_exhausted_mid_task_interrupts_with_tail(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake")
    pid = h.worker.pid
    ended = await h.run_task("long job [[output:300]] [[context:100]]")
    assert ended.outcome is Outcome.INTERRUPTED and ended.reason == "interrupted: context"
    assert ended.output_tail
    await h.state(S.REFRESHING)
    await h.state(S.IDLE)
    assert h.worker.pid != pid
    assert (await h.run_task("fresh", task_id="t2")).outcome is Outcome.DONE


async def test_pause_and_resume(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake")
    await h.address.send(Pause())
    await h.state(S.PAUSED)
    await h.assign("while paused", task_id="p")
    refused = await h.expect(TaskFinished, task_id="p")
    assert refused.outcome is Outcome.INTERRUPTED
    await h.address.send(Resume())
    await h.state(S.IDLE)
    # pause while busy applies after the task
    await h.assign("[[think:0.3]] slow", task_id="t2")
    await h.state(S.BUSY)
    await h.address.send(Pause())
    assert (await h.expect(TaskFinished, task_id="t2")).outcome is Outcome.DONE
    await h.state(S.PAUSED)
    await h.address.send(Resume())
    await h.state(S.IDLE)


async def test_restart_and_set_model_respawn_with_the_new_command_line(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    h = await started(nursery, "fake")
    pid = h.worker.pid
    assert pid is not None and cmdline(pid)[-2:] == ["--model", "sonnet"]
    await h.address.send(SetModel("opus"))
    refreshing = await h.state(S.REFRESHING)
    assert refreshing.reason == "model changed to opus"
    idle = await h.state(S.IDLE)
    assert idle.model == "opus" and idle.pid != pid
    assert idle.pid is not None and cmdline(idle.pid)[-2:] == ["--model", "opus"]
    # while busy: after the task
    await h.assign("[[think:0.3]]", task_id="t2")
    await h.state(S.BUSY)
    await h.address.send(SetModel("haiku"))
    await h.address.send(Restart(reason="operator", wait=True))
    assert (await h.expect(TaskFinished, task_id="t2")).outcome is Outcome.DONE
    await h.state(S.REFRESHING)
    idle = await h.state(S.IDLE)
    assert idle.model == "haiku" and idle.pid is not None and cmdline(idle.pid)[-1] == "haiku"
    # restart without waiting interrupts the attempt
    await h.assign("[[think:30]]", task_id="t3")
    await h.state(S.BUSY)
    await h.address.send(Restart(reason="operator", wait=False))
    cut = await h.expect(TaskFinished, task_id="t3")
    assert cut.outcome is Outcome.INTERRUPTED and cut.reason == "interrupted: operator"
    await h.state(S.IDLE)


async def test_stop_drain_finishes_the_task_first(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake")
    await h.assign("[[think:0.3]] last one")
    await h.state(S.BUSY)
    await h.address.send(Stop(reason="drain", drain=True))
    assert (await h.expect(TaskFinished)).outcome is Outcome.DONE
    await h.state(S.STOPPING)
    await h.state(S.STOPPED)
    assert not (await h.finish()).crashed


async def test_fake_agent_ignoring_sigterm_is_killed(nursery: trio.Nursery, no_leaks: None) -> None:
    fake = BUILTIN_PROFILES["fake"]
    profile = attrs.evolve(
        fake, argv=(*fake.argv, "--ignore-sigterm"), options={"quit": "not-a-command\r"}, stop_timeout_s=0.3
    )
    h = await started(nursery, profile)
    await h.address.send(Stop(reason="bye"))
    stopped = await h.state(S.STOPPED)
    assert stopped.signal == signal.SIGKILL
    await h.finish()


async def test_send_input_without_a_process_is_a_conflict(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake-oneshot")
    with pytest.raises(Conflict, match="no running process"):
        await h.address.call(SendInput(b"x"))


async def test_stop_during_a_flood_is_prompt_and_bounded(nursery: trio.Nursery, no_leaks: None) -> None:
    h = await started(nursery, "fake", config=WorkersConfig(ring_buffer_kib=32))
    live = h.worker.subscribe_output(size=2)
    await h.assign("[[flood:2000]]")  # 2 GB of ANSI-heavy output: still flooding when Stop comes
    await h.state(S.BUSY)
    with trio.fail_after(10):
        await live.receive()  # the flood is on
    before = h.worker._ring.total
    await h.address.send(Stop(reason="enough"))
    interrupted = await h.expect(TaskFinished)
    assert interrupted.outcome is Outcome.INTERRUPTED and interrupted.reason == "interrupted: enough"
    with trio.fail_after(10):
        stopped = await h.state(S.STOPPED)
    assert stopped.reason is not None and stopped.reason.startswith("enough")
    assert h.worker._ring.total > before  # it kept reading while stopping
    assert len(h.worker.output_tail()) <= 32 * 1024
    assert h.worker.dropped_chunks > 0
    assert not (await h.finish()).crashed


async def test_idle_dialect_end_to_end_with_the_fake_tui(nursery: trio.Nursery, no_leaks: None) -> None:
    fake = BUILTIN_PROFILES["fake"]
    profile = attrs.evolve(fake, dialect="idle", options={"idle_ms": 300, "submit_delay_ms": 0})
    h = await started(nursery, profile)
    done = await h.run_task("quiet after [[think:0.2]] [[output:100]]")
    assert done.outcome is Outcome.DONE and done.elapsed_s >= 0.3  # done only after the silence
    await h.state(S.IDLE)
    assert (await h.run_task("again", task_id="t2")).outcome is Outcome.DONE


async def test_fake_agent_that_never_gets_ready_times_out(nursery: trio.Nursery, no_leaks: None) -> None:
    fake = BUILTIN_PROFILES["fake"]
    profile = attrs.evolve(fake, argv=(*fake.argv, "--no-ready"), startup_timeout_s=0.5)
    h = Harness(nursery, profile)
    await h.start()
    crashed = await h.state(S.CRASHED)
    assert (crashed.reason or "").startswith("start-up timeout: not ready within 0.5 s")
    assert (await h.finish()).crashed


async def test_crash_reason_is_the_last_words_without_escapes_or_tui_chrome(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    """Issue 14: a start-up exit read `exited during start-up (exit code 1): \\x1b(B\\x0f\\x1b7\\x1b8`."""
    screen = (
        r"\x1b[?25l\x1b[31mUnable to connect to Anthropic services\x1b[39m\r\n\r\n"
        r"Failed to connect to api.anthropic.com: ERR_BAD_REQUEST\r\n"
        r"\x1b[2m\xe2\x95\xad\xe2\x94\x80\xe2\x94\x80\xe2\x94\x80\xe2\x95\xae\r\n"  # a box border
        r"  ? for shortcuts\r\n\x1b(B\x0f\x1b7\x1b8"
    )
    profile = ProfileConfig(
        argv=("bash", "-c", f"printf '{screen}'; exit 1"), dialect="prompt", startup_timeout_s=10
    )
    h = Harness(nursery, profile)
    await h.start()
    crashed = await h.state(S.CRASHED)
    assert crashed.reason == (
        "exited during start-up (exit code 1): Unable to connect to Anthropic services"
        " · Failed to connect to api.anthropic.com: ERR_BAD_REQUEST"
    )
    await h.finish()


async def test_crash_mid_task_reason_is_not_the_footer(nursery: trio.Nursery, no_leaks: None) -> None:
    """Issue 13 item 10: `agent exited (exit code 3): ? for shortcuts` named the screen's footer."""
    h = await started(nursery, "fake")
    await h.run_task("work then [[crash:3]]")
    state = await h.state(S.CRASHED)
    reason = state.reason or ""
    assert reason.startswith("agent exited (exit code 3)")
    assert "for shortcuts" not in reason and "\x1b" not in reason and "│" not in reason
    await h.finish()


@pytest.mark.parametrize("name", ["fake", "fake-marker"])
async def test_a_lost_enter_is_pressed_again(nursery: trio.Nursery, no_leaks: None, name: str) -> None:
    """Claude Code 2.0.x takes an Enter within ~100 ms of a paste as pasted text (and one typed
    before its input is raw is lost too): the task sits in the prompt box. The fake agent's
    `--paste-window` does the same; the worker sees the prompt still holding the text and no work,
    and presses Enter again, once."""
    base = BUILTIN_PROFILES[name]
    profile = attrs.evolve(base, argv=(*base.argv, "--paste-window", "0.3"))
    h = await started(nursery, profile)
    pid = h.worker.pid
    ended = await h.run_task("first task")
    assert ended.outcome is Outcome.DONE and ended.result == "Done: first task", ended
    again = await h.run_task("second task", task_id="t2")
    assert again.outcome is Outcome.DONE and again.result == "Done: second task", again
    assert h.worker.pid == pid  # no respawn, no timeout: the Enter was all that was missing


class GatedWorkspace:
    """A workspace whose `prepare` waits for the test: the worker's loop is busy meanwhile."""

    fresh_context = False

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.gate = trio.Event()

    async def directory(self) -> str | None:
        return None

    async def prepare(self, task: Assignment) -> None:
        self.entered.set()
        await self.gate.wait()

    async def verify(self, task: Assignment) -> dict[str, Any] | None:
        return None

    async def finish(self, task: Assignment, outcome: Outcome) -> dict[str, Any] | None:
        return None

    async def aclose(self) -> None:
        pass


async def test_a_busy_workers_mailbox_fills_no_unbounded_channel_behind_it(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    workspace = GatedWorkspace()
    h = await started(nursery, "shell", workspace=workspace)
    await h.assign("echo gated")
    with trio.fail_after(15):
        await workspace.entered.wait()
    sent = 0
    while h.address.try_send(SetCapabilities(frozenset({"x"}))):
        sent += 1
        assert sent <= 256 + 2, "commands kept flowing into an unbounded channel"
    assert sent >= 256  # the mailbox itself, and at most one command ahead in the loop's channel
    workspace.gate.set()
    done = await h.expect(TaskFinished, task_id="t1")
    assert done.outcome is Outcome.DONE
    assert await h.address.call(SetCapabilities(None)) is None  # every queued command was handled
    assert h.worker.info().capabilities is None


async def test_typed_input_an_agent_does_not_read_is_refused_past_a_bound(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    agent = py_agent(
        """
        import signal
        print("listening", flush=True)
        signal.pause()  # never reads its input
        """,
        dialect="marker",
        transport="pipe",
        options={"ready": "^listening$"},
    )
    h = await started(nursery, agent)
    chunk = b"x" * (256 * 1024)
    with pytest.raises(Conflict, match="not reading its input"):
        for _ in range(8):  # 2 MiB: past the 1 MiB bound, whatever the pipe took
            await h.address.call(SendInput(chunk))
    assert h.worker.state is S.IDLE
