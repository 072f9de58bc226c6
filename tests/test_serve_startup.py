"""`shoal serve` start-up failures: one clear line on stderr, a non-zero exit code, no traceback.

A service manager (systemd, a container runtime) shows the last lines a failed start printed; each
case here runs a real `shoal serve` subprocess against a real port, directory, database or file.
Apart from that line, stderr may hold only JSON log records (stderr is not a terminal here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from shoal.actors import cli

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]


@attrs.frozen
class Failed:
    code: int
    line: str  # the one line that is not a JSON log record


async def serve_fails(*args: str, timeout: float = 60.0) -> Failed:
    """Run `shoal serve ARGS` (free ports unless ARGS say otherwise) and check it fails as it should."""
    argv = [*SHOAL, "serve", *args]
    if "--port" not in args:
        argv += ["--port", "0"]
    if "--http-port" not in args:
        argv += ["--http-port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL")}
    with trio.fail_after(timeout):
        done = await trio.run_process(
            argv, stdin=b"", capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    err = done.stderr.decode()
    assert "Traceback" not in err, err
    plain = []
    for line in err.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            plain.append(line)
        else:
            assert isinstance(record, dict) and record["level"] in ("info", "warning"), line
    assert len(plain) == 1, err
    assert plain[0].startswith("shoal: "), err
    assert done.returncode != 0
    return Failed(done.returncode, plain[0])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_gateway_port_taken(tmp_path: Path, taken_port: int) -> None:
    failed = await serve_fails("--state-dir", str(tmp_path / "s"), "--port", str(taken_port))
    assert failed.code == cli.EXIT_FAILED
    assert f"gateway port {taken_port} is already in use" in failed.line
    assert "--port 0" in failed.line


async def test_dashboard_port_taken(tmp_path: Path, taken_port: int) -> None:
    failed = await serve_fails("--state-dir", str(tmp_path / "s"), "--http-port", str(taken_port))
    assert failed.code == cli.EXIT_FAILED
    assert f"dashboard port {taken_port} is already in use" in failed.line
    assert "--http-port 0" in failed.line


async def test_state_dir_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    failed = await serve_fails("--state-dir", str(tmp_path / "plain-file" / "state"))
    assert failed.code == cli.EXIT_FAILED
    assert "state directory" in failed.line and "plain-file" in failed.line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
async def test_state_dir_not_writable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    try:
        failed = await serve_fails("--state-dir", str(state))
    finally:
        state.chmod(0o700)
    assert failed.code == cli.EXIT_FAILED and "not writable" in failed.line


async def test_corrupt_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "shoal.db").write_bytes(b"this is not a database, " * 400)
    failed = await serve_fails("--state-dir", str(state))
    assert failed.code == cli.EXIT_FAILED
    assert str(state / "shoal.db") in failed.line and "corrupt" in failed.line


async def test_bad_config_files(tmp_path: Path) -> None:
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[scaling\nmax_workers = 2\n")
    failed = await serve_fails("--state-dir", str(tmp_path / "s"), "--config", str(syntax))
    assert failed.code == cli.EXIT_USAGE and str(syntax) in failed.line and "line 1" in failed.line
    typo = tmp_path / "typo.toml"
    typo.write_text("[scalling]\nmax_workers = 2\n")
    failed = await serve_fails("--state-dir", str(tmp_path / "s"), "--config", str(typo))
    assert failed.code == cli.EXIT_USAGE and str(typo) in failed.line and "scaling" in failed.line
    failed = await serve_fails("--state-dir", str(tmp_path / "s"), "--config", str(tmp_path / "none.toml"))
    assert failed.code == cli.EXIT_USAGE and "none.toml" in failed.line


async def test_bad_token_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "token").mkdir(parents=True)  # a directory where the token file should be
    failed = await serve_fails("--state-dir", str(state))
    assert failed.code == cli.EXIT_USAGE and str(state / "token") in failed.line
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    failed = await serve_fails("--state-dir", str(tmp_path / "s2"), "--token-file", str(empty))
    assert failed.code == cli.EXIT_USAGE and "empty" in failed.line
    (tmp_path / "plain-file").write_text("")
    nowhere = tmp_path / "plain-file" / "token"
    failed = await serve_fails("--state-dir", str(tmp_path / "s3"), "--token-file", str(nowhere))
    assert failed.code == cli.EXIT_USAGE and "not a directory" in failed.line


async def test_log_file_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    failed = await serve_fails(
        "--state-dir", str(tmp_path / "s"), "--set", f"log.file={tmp_path / 'plain-file' / 'shoal.log'}"
    )
    assert failed.code == cli.EXIT_USAGE and "log.file" in failed.line


async def test_unknown_profile(tmp_path: Path) -> None:
    failed = await serve_fails("--state-dir", str(tmp_path / "s"), "--profile", "no-such-agent")
    assert failed.code == cli.EXIT_USAGE
    assert "no-such-agent" in failed.line and "fake" in failed.line  # the known ones are listed


async def test_second_server_on_the_same_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = await trio.lowlevel.open_process(
        [*SHOAL, "serve", "--state-dir", str(state), "--port", "0", "--http-port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert first.stdout is not None
    try:
        seen = b""
        with trio.fail_after(60):
            while b"gateway:" not in seen:
                chunk = await first.stdout.receive_some()
                assert chunk, "the first server did not start"
                seen += chunk
        failed = await serve_fails("--state-dir", str(state))
        assert failed.code == cli.EXIT_FAILED and "in use by another Shoal" in failed.line
    finally:
        first.terminate()
        with trio.fail_after(30):
            await first.wait()
        await first.stdout.aclose()
