"""Agent processes on real PTYs and pipes: spawn, I/O, window size, stop ladder, reaping, leaks."""

from __future__ import annotations

import errno
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from shoal.actors.process import AgentProcess, ExitStatus, SpawnError, spawn
from shoal.protocols.errors import ValidationError

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


async def read_until(proc: AgentProcess, needle: bytes, *, stderr: bool = False, limit: float = 10) -> bytes:
    """Read until `needle` shows up (or EOF); fail after `limit` seconds."""
    out = b""
    with trio.fail_after(limit):
        while needle not in out:
            chunk = await (proc.read_stderr() if stderr else proc.read())
            if not chunk:
                break
            out += chunk
    return out


async def read_all(proc: AgentProcess, limit: float = 10) -> bytes:
    out = b""
    with trio.fail_after(limit):
        while chunk := await proc.read():
            out += chunk
    return out


async def test_pty_child_has_controlling_terminal_term_and_window_size(no_leaks: None) -> None:
    proc = await spawn(
        py("""
            import os, shutil
            fd = os.open("/dev/tty", os.O_RDWR)  # fails without a controlling terminal
            os.close(fd)
            print("sid", os.getsid(0) == os.getpid(), "pgrp", os.getpgrp() == os.getpid())
            print("fg", os.tcgetpgrp(0) == os.getpgrp())
            print("term", os.environ["TERM"], "size", os.get_terminal_size(0))
        """),
        transport="pty",
        rows=33,
        cols=101,
    )
    out = await read_all(proc)
    status = await proc.wait()
    await proc.aclose()
    assert status == ExitStatus(0, None), out
    assert b"sid True pgrp True" in out
    assert b"fg True" in out
    assert b"term xterm-256color" in out
    assert b"columns=101, lines=33" in out


async def test_resize_delivers_sigwinch_and_new_size(no_leaks: None) -> None:
    proc = await spawn(
        py("""
            import os, signal, sys
            def on_winch(*_):
                print("winch", os.get_terminal_size(0), flush=True)
            signal.signal(signal.SIGWINCH, on_winch)
            print("ready", flush=True)
            sys.stdin.readline()
        """),
        transport="pty",
    )
    await read_until(proc, b"ready")
    proc.resize(50, 160)
    out = await read_until(proc, b")\r\n")
    assert b"columns=160, lines=50" in out
    with pytest.raises(ValidationError, match="rows"):
        proc.resize(0, 80)
    await proc.write(b"\n")
    assert (await proc.wait()).exit_code == 0
    await proc.aclose()


async def test_argv_items_reach_the_child_verbatim_never_through_a_shell(no_leaks: None) -> None:
    tricky = ["two words", 'it\'s "quoted"', "$(touch /tmp/shoal-pwned)", "a;b|c", "new\nline", "{model}"]
    proc = await spawn(
        [PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *tricky], transport="pipe"
    )
    out = await read_all(proc)
    await proc.wait()
    await proc.aclose()
    import json

    assert json.loads(out) == tricky
    assert not await trio.Path("/tmp/shoal-pwned").exists()


async def test_pipe_transport_separates_stderr_and_close_input_is_eof(no_leaks: None) -> None:
    proc = await spawn(
        py("""
            import sys
            data = sys.stdin.read()  # until end of input
            sys.stderr.write("to stderr\\n")
            print("got", repr(data), flush=True)
        """),
        transport="pipe",
        env={"SHOAL_TEST": "1"},
    )
    assert proc.master_fd is None
    assert await proc.write(b"line one\nline two\n")
    proc.close_input()
    out = await read_all(proc)
    err = await read_until(proc, b"to stderr", stderr=True)
    assert out == b"got 'line one\\nline two\\n'\n"
    assert err == b"to stderr\n"
    assert (await proc.wait()).exit_code == 0
    assert not await proc.write(b"more")  # input closed: False, no exception
    with pytest.raises(ValidationError, match="transport"):
        proc.resize(10, 10)
    await proc.aclose()


async def test_eio_after_exit_is_end_of_file_with_all_output_first(no_leaks: None) -> None:
    proc = await spawn(py("import sys; sys.stdout.write('x' * 100000 + 'END'); sys.exit(3)"), transport="pty")
    out = await read_all(proc)
    assert out.endswith(b"END") and out.count(b"x") == 100000
    assert await proc.read() == b""  # stays at EOF
    assert await proc.wait() == ExitStatus(3, None)
    await proc.aclose()


@pytest.mark.parametrize("transport", ["pty", "pipe"])
async def test_missing_command_raises_spawn_error_naming_it(transport: str, no_leaks: None) -> None:
    with pytest.raises(SpawnError) as info:
        await spawn(["shoal-no-such-command-xyz", "--flag"], transport=transport)  # type: ignore[arg-type]
    assert info.value.errno == errno.ENOENT
    assert "shoal-no-such-command-xyz" in str(info.value) and "ENOENT" in str(info.value)


async def test_not_executable_and_directory_and_bad_cwd(tmp_path: Path, no_leaks: None) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(SpawnError) as info:
        await spawn([str(script)], transport="pty")
    assert info.value.errno == errno.EACCES and str(script) in str(info.value)
    with pytest.raises(SpawnError) as info:
        await spawn([str(tmp_path)], transport="pipe")
    assert info.value.errno == errno.EACCES
    with pytest.raises(SpawnError, match="working directory"):
        await spawn(["cat"], transport="pty", cwd=str(tmp_path / "nope"))
    with pytest.raises(SpawnError):
        await spawn([], transport="pty")
    with pytest.raises(ValidationError, match="transport"):
        await spawn(["cat"], transport="socket")  # type: ignore[arg-type]
    # a relative command with a slash resolves against cwd, and runs there
    script.chmod(0o755)
    proc = await spawn(["./agent.sh"], transport="pipe", cwd=str(tmp_path))
    assert await read_all(proc) == b"hi\n"
    await proc.wait()
    await proc.aclose()


async def test_child_exiting_at_once_is_reaped_with_code_and_signal(no_leaks: None) -> None:
    proc = await spawn(["false"], transport="pty")
    assert await proc.wait() == ExitStatus(1, None)
    assert proc.exit_status == ExitStatus(1, None)
    await proc.aclose()
    proc = await spawn(py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), transport="pipe")
    status = await proc.wait()
    assert status == ExitStatus(None, signal.SIGSEGV)
    assert status.describe() == "killed by SIGSEGV"
    await proc.aclose()


async def test_stop_ladder_rungs(no_leaks: None) -> None:
    # rung 1: the polite quit is enough
    polite = await spawn(
        py("""
            import sys
            print("ready", flush=True)
            for line in sys.stdin:
                if line.strip() == "/exit":
                    sys.exit(0)
        """),
        transport="pty",
    )
    await read_until(polite, b"ready")
    assert await polite.stop(b"/exit\r", 5.0) == (ExitStatus(0, None), "quit")
    await polite.aclose()

    # rung 2: ignores the quit, dies on SIGTERM
    deaf = await spawn(py("import time; print('ready', flush=True); time.sleep(60)"), transport="pty")
    await read_until(deaf, b"ready")
    with trio.fail_after(5):
        status, rung = await deaf.stop(b"/exit\r", 0.3)
    assert (status, rung) == (ExitStatus(None, signal.SIGTERM), "sigterm")
    await deaf.aclose()

    # rung 3: ignores SIGTERM too, SIGKILL ends it; bounded
    stubborn = await spawn(
        py("""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ready", flush=True)
            time.sleep(60)
        """),
        transport="pipe",
    )
    await read_until(stubborn, b"ready")
    with trio.fail_after(5):
        status, rung = await stubborn.stop(None, 0.3)
    assert (status, rung) == (ExitStatus(None, signal.SIGKILL), "sigkill")
    await stubborn.aclose()


async def _gone(pid: int) -> None:
    """Wait until `pid` (not our child) has died: a pidfd becomes readable when its process ends."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone and reaped
    try:
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_helpers_left_behind_by_an_exiting_agent_are_killed(no_leaks: None) -> None:
    # on pipes: no controlling terminal, so no SIGHUP from the kernel when the leader exits either
    proc = await spawn(["bash", "-c", "sleep 60 & echo helper $!; exit 0"], transport="pipe")
    out = await read_until(proc, b"\n")
    helper = int(out.split()[1])
    assert await proc.wait() == ExitStatus(0, None)
    await proc.aclose()
    await _gone(helper)


async def test_stop_signals_the_whole_process_group(no_leaks: None) -> None:
    proc = await spawn(["bash", "-c", "sleep 60 & echo helper $!; wait"], transport="pipe")
    out = await read_until(proc, b"\n")
    helper = int(out.split()[1])
    status, rung = await proc.stop(None, 2.0)
    assert rung == "quit" or rung == "sigterm"
    assert status is not None
    await proc.aclose()
    await _gone(helper)


async def test_aclose_when_cancelled_still_kills_and_reaps(no_leaks: None) -> None:
    proc = await spawn(py("import time; print('ready', flush=True); time.sleep(60)"), transport="pty")
    await read_until(proc, b"ready")
    with trio.move_on_after(0.05):
        try:
            await proc.wait()
        finally:
            await proc.aclose()  # shielded inside: runs to completion although the scope is cancelled
    assert proc.exit_status == ExitStatus(None, signal.SIGKILL)
    assert proc.master_fd is None
    await proc.aclose()  # idempotent


async def test_sample_reads_cpu_and_rss_from_proc(no_leaks: None) -> None:
    proc = await spawn(
        py("""
            import sys, time
            print("ready", flush=True)
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass
            print("spun", flush=True)
            sys.stdin.readline()
        """),
        transport="pty",
    )
    await read_until(proc, b"ready")
    cpu, rss = proc.sample(trio.current_time())
    assert cpu is None  # no previous sample yet
    assert rss is not None and rss > 1_000_000
    await read_until(proc, b"spun")
    cpu, rss = proc.sample(trio.current_time())
    assert cpu is not None and cpu > 10.0
    await proc.write(b"\n")
    await proc.wait()
    assert proc.sample(trio.current_time()) == (None, None)
    await proc.aclose()
