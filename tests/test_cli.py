"""The `shoal` command: argument handling in-process, then every command against a live `shoal serve`.

The server is a real `shoal serve` subprocess (fake-agent workers in PTYs, SQLite state in a temporary
directory); each command runs as its own subprocess, exactly as a user or a script runs it, and the
tests check exit codes, `--json` output and the messages on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from shoal.actors import cli
from shoal.actors.auth import read_endpoint, read_token, token_path
from shoal.actors.client import connect
from shoal.protocols.errors import Conflict, ValidationError

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]


# ---- a live `shoal serve` ------------------------------------------------------------------------------


@attrs.frozen
class Served:
    proc: subprocess.Popen[str]
    state_dir: Path
    url: str
    token: str
    output: list[str]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL")}
        env.update({"SHOAL_STATE_DIR": str(self.state_dir), "COLUMNS": "200", **extra})
        return env


@contextmanager
def shoal_serve(state_dir: Path, *extra: str, timeout: float = 60.0) -> Iterator[Served]:
    """Start `shoal serve` on free ports; stop it with SIGTERM and check it exits cleanly."""
    log = open(state_dir.parent / f"{state_dir.name}-serve.log", "w")  # noqa: SIM115 - closed below
    state_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [*SHOAL, "serve", "--state-dir", str(state_dir), "--port", "0", "--http-port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHOAL")},
    )
    output: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # keep reading stdout so the server never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "gateway:" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(timeout) and proc.poll() is None, f"shoal serve did not start: {''.join(output)}"
        url = read_endpoint(state_dir)
        assert url is not None and url in "".join(output)
        yield Served(proc, state_dir, url, read_token(token_path(state_dir)), output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        reader.join(5)
        log.close()
    log_text = (state_dir.parent / f"{state_dir.name}-serve.log").read_text()
    assert code == 0, f"shoal serve exited with {code}: {log_text[-3000:]}"
    assert "shoal: stopped" in "".join(output)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("cli") / "state"
    with shoal_serve(
        state,
        "--min-workers", "1",
        "--max-workers", "2",
        "--no-dashboard",
        "--set", "scaling.tick_s=0.05",
        "--set", "queue.retry_backoff.min_s=0.01",
    ) as s:  # fmt: skip
        yield s


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def shoal(served: Served | None, *args: str, stdin: str | None = None, **env: str) -> Result:
    """Run one `shoal` command as a subprocess (without blocking the loop)."""
    environ = served.env(**env) if served else {**os.environ, **env}
    done = await trio.run_process(
        [*SHOAL, *args],
        stdin=(stdin or "").encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environ,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


# ---- in-process: parsing and building ----------------------------------------------------------------


def test_parse_assignment_and_nest() -> None:
    assert cli.parse_assignment("scaling.max_workers=4") == ("scaling.max_workers", 4)
    assert cli.parse_assignment("models.default=opus") == ("models.default", "opus")
    assert cli.parse_assignment('x.y=["a", "b"]') == ("x.y", ["a", "b"])
    assert cli.parse_assignment("x=true") == ("x", True)
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(cli.CliError) as info:
            cli.parse_assignment(bad)
        assert info.value.code == cli.EXIT_USAGE
    assert cli.nest([("a.b", 1), ("a.c", 2), ("d", 3)]) == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(cli.CliError) as info:
        cli.parse_assignment("novalue", "--set")
    assert info.value.message.startswith("--set wants KEY=VALUE with a dotted config key")
    with pytest.raises(cli.CliError):
        cli.nest([("a", 1), ("a.b", 2)])


def test_detach_key() -> None:
    assert cli.parse_key("^]") == 0x1D
    assert cli.parse_key("ctrl-q") == 0x11
    assert cli.parse_key("q") == ord("q")
    with pytest.raises(cli.CliError):
        cli.parse_key("ctrl-")


def test_serve_config_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "shoal.toml"
    toml.write_text('[scaling]\nmax_workers = 3\nidle_s = 5.0\n[workers]\nprofile = "fake-marker"\n')
    args = cli.build_parser().parse_args(
        ["serve", "--config", str(toml), "--max-workers", "6", "--set", "scaling.tick_s=0.5"]
    )
    env = {"SHOAL__scaling__idle_s": "9", "SHOAL__models__default": "opus"}
    config = cli.build_serve_config(args, env)
    assert config.scaling.max_workers == 6  # flag over file
    assert config.scaling.idle_s == 9.0  # environment over file
    assert config.scaling.tick_s == 0.5
    assert config.workers.profile == "fake-marker"  # file over defaults
    assert config.models.default == "opus"
    bad = cli.build_parser().parse_args(["serve", "--set", "scaling.max_workers=-2"])
    with pytest.raises(ValidationError) as info:
        cli.build_serve_config(bad, {})
    assert "max_workers" in str(info.value)


def test_remote_bind_needs_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["serve", "--host", "0.0.0.0", "--no-dashboard"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "allow_remote" in err and "--allow-remote" in err


def test_task_files(tmp_path: Path) -> None:
    as_list = tmp_path / "tasks.json"
    as_list.write_text(json.dumps([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "deps": ["a"]}]))
    assert [t["id"] for t in cli.read_task_file(str(as_list))] == ["a", "b"]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"tasks": [{"prompt": "x"}]}))
    assert cli.read_task_file(str(wrapped)) == [{"prompt": "x"}]
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"id": "a", "prompt": "x"}\n\n{"id": "b", "prompt": "y", "deps": ["a"]}\n')
    assert [t["id"] for t in cli.read_task_file(str(lines))] == ["a", "b"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(cli.CliError) as info:
        cli.read_task_file(str(broken))
    assert ":2:" in info.value.message and info.value.code == cli.EXIT_USAGE
    with pytest.raises(cli.CliError):
        cli.read_task_file(str(tmp_path / "missing.json"))


def test_submit_flags_build_a_task() -> None:
    args = cli.build_parser().parse_args(
        [
            "submit",
            "fix it",
            "--id",
            "t1",
            "--priority",
            "5",
            "--dep",
            "a",
            "--dep",
            "b",
            "--meta",
            "n=42",
        ]
    )
    assert cli.build_tasks(args) == [
        {"prompt": "fix it", "id": "t1", "priority": 5, "deps": ["a", "b"], "metadata": {"n": 42}}
    ]


def test_meta_without_a_value_says_what_meta_wants() -> None:
    """--meta takes metadata, not a config key: its error must not suggest `scaling.max_workers=4`."""
    args = cli.build_parser().parse_args(["submit", "x", "--meta", "novalue"])
    with pytest.raises(cli.CliError) as info:
        cli.build_tasks(args)
    assert info.value.code == cli.EXIT_USAGE
    assert info.value.message == "--meta wants KEY=VALUE (e.g. --meta ticket=1234), got 'novalue'"
    ok = cli.build_parser().parse_args(["submit", "x", "--meta", "team.name=core"])
    assert cli.build_tasks(ok)[0]["metadata"] == {"team.name": "core"}


def test_task_file_lines(tmp_path: Path) -> None:
    listed = tmp_path / "tasks.json"
    listed.write_text('[\n  {"id": "a", "prompt": "x"},\n\n  {"id": "b",\n   "prompt": "y"}\n]\n')
    assert cli.read_task_file(str(listed)).lines == [2, 4]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"tasks": [\n {"prompt": "x"},\n {"prompt": "y"}]}')
    assert cli.read_task_file(str(wrapped)).lines == [2, 3]
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"prompt": "x"}\n\n{"prompt": "y"}\n')
    found = cli.read_task_file(str(lines))
    assert found.lines == [1, 3]
    located = found.locate(ValidationError("params.tasks[1].priority", "must be an integer", "high"))
    assert str(located) == f"{lines}:3: priority: must be an integer (got 'high')"


def test_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["token", "--state-dir", str(tmp_path)]) == cli.EXIT_USAGE
    assert "shoal serve" in capsys.readouterr().err
    (tmp_path / "token").write_text("tok-123\n")
    assert cli.run(["token", "--state-dir", str(tmp_path)]) == cli.EXIT_OK
    assert capsys.readouterr().out == "tok-123\n"


def test_connection_errors_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["status", "--url", "ws://127.0.0.1:9/", "--state-dir", str(tmp_path)])
    assert code == cli.EXIT_UNREACHABLE
    assert "shoal serve" in capsys.readouterr().err


# ---- against a live server ------------------------------------------------------------------------------


async def test_status_workers_and_version(served: Served) -> None:
    status = await shoal(served, "status", "--json")
    assert status.code == 0 and status.json()["state"] == "running"
    table = await shoal(served, "status")
    assert table.code == 0 and "running" in table.out and "workers" in table.out
    version = await shoal(served, "version", "--json")
    assert version.code == 0 and version.json()["server"]["protocol"] == 1
    workers = await shoal(served, "workers", "--json")
    assert workers.code == 0 and isinstance(workers.json(), list)


async def test_submit_wait_success_failure_and_stdin(served: Served) -> None:
    ok = await shoal(served, "submit", "say hello", "--id", "cli-ok", "--wait", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["state"] == "done" and "Done: say hello" in ok.json()["result"]
    bad = await shoal(served, "submit", "[[crash:3]] x", "--id", "cli-bad", "--max-attempts", "1", "--wait")
    assert bad.code == cli.EXIT_FAILED
    assert bad.out.startswith("cli-bad dead")
    piped = await shoal(served, "submit", "--id", "cli-stdin", stdin="from stdin\n")
    assert piped.code == 0 and piped.out.strip() == "cli-stdin"
    task = await shoal(served, "task", "cli-stdin", "--json")
    assert task.code == 0 and task.json()["prompt"] == "from stdin\n"
    shown = await shoal(served, "task", "cli-ok")
    assert shown.code == 0 and "cli-ok" in shown.out and "attempts" in shown.out


async def test_submit_file_with_deps(served: Served, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "f-a", "prompt": "first"}\n{"id": "f-b", "prompt": "second", "deps": ["f-a"]}\n')
    result = await shoal(served, "submit", "-f", str(tasks), "--wait", "--json")
    assert result.code == 0, result.err
    by_id = {t["id"]: t for t in result.json()}
    assert by_id["f-a"]["state"] == by_id["f-b"]["state"] == "done"
    assert by_id["f-b"]["attempts"][0]["started"] >= by_id["f-a"]["attempts"][0]["ended"]
    cycle = tmp_path / "cycle.json"
    cycle.write_text(
        json.dumps([{"id": "c1", "prompt": "x", "deps": ["c2"]}, {"id": "c2", "prompt": "y", "deps": ["c1"]}])
    )
    refused = await shoal(served, "submit", "-f", str(cycle))
    assert refused.code == cli.EXIT_USAGE and "cycle" in refused.err.lower()


async def test_task_listing_and_task_controls(served: Served) -> None:
    # a task behind a dependency that never finishes stays put while we poke it
    assert (await shoal(served, "submit", "[[hang]] hold", "--id", "ctl-blocker")).code == 0
    assert (await shoal(served, "submit", "controlled", "--id", "ctl", "--dep", "ctl-blocker")).code == 0
    unknown_dep = await shoal(served, "submit", "x", "--id", "ctl-2", "--dep", "ctl-nobody")
    assert unknown_dep.code == cli.EXIT_USAGE and "ctl-nobody" in unknown_dep.err

    boosted = await shoal(served, "boost", "ctl", "7", "--json")
    assert boosted.code == 0 and boosted.json()["priority"] == 7
    listed = await shoal(served, "tasks", "--state", "blocked", "--json")
    assert listed.code == 0 and "ctl" in {t["id"] for t in listed.json()["tasks"]}
    table = await shoal(served, "tasks", "--limit", "500")
    assert table.code == 0 and "ID" in table.out and "ctl" in table.out
    assert (await shoal(served, "skip", "ctl")).out.strip() == "task ctl: skipped"
    retried = await shoal(served, "retry", "ctl", "--json")
    assert retried.code == 0 and retried.json()["state"] == "blocked"
    assert (await shoal(served, "cancel", "ctl")).out.strip() == "task ctl: cancelled"
    again = await shoal(served, "cancel", "ctl")
    assert again.code == cli.EXIT_CONFLICT and "not allowed now" in again.err
    missing = await shoal(served, "task", "no-such-task")
    assert missing.code == cli.EXIT_NOT_FOUND and "no-such-task" in missing.err
    assert (await shoal(served, "assign", "no-such-task", "w-1")).code == cli.EXIT_NOT_FOUND
    assert (await shoal(served, "cancel", "ctl-blocker")).code == 0


async def test_config_get_and_set(served: Served) -> None:
    changed = await shoal(served, "config", "set", "scaling.idle_s=45", "alerts.rules=[]")
    assert changed.code == 0 and "scaling.idle_s = 45.0" in changed.out
    got = await shoal(served, "config", "get", "scaling.idle_s")
    assert got.code == 0 and got.out.strip() == "45.0"
    whole = await shoal(served, "config", "get", "--json")
    assert whole.code == 0 and whole.json()["scaling"]["idle_s"] == 45.0
    bad = await shoal(served, "config", "set", "scaling.max_workers=-1")
    assert bad.code == cli.EXIT_USAGE and "max_workers" in bad.err
    unknown = await shoal(served, "config", "get", "scaling.nope")
    assert unknown.code == cli.EXIT_NOT_FOUND
    # setting a key that does not exist is bad input (docs/cli.md: exit 2), with the close match
    typo = await shoal(served, "config", "set", "scaling.max_workrs=3")
    assert typo.code == cli.EXIT_USAGE
    assert "scaling.max_workrs: unknown key (did you mean 'max_workers'?)" in typo.err


async def test_task_file_errors_name_the_file_and_line(served: Served, tmp_path: Path) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"id": "fl-a", "prompt": "x"}\n\n{"id": "fl-b", "prompt": "y", "priority": "high"}\n')
    result = await shoal(served, "submit", "-f", str(lines))
    assert result.code == cli.EXIT_USAGE
    assert f"{lines}:3: priority:" in result.err and "params.tasks" not in result.err
    listed = tmp_path / "bad.json"
    listed.write_text('[\n  {"id": "fl-c", "prompt": "x"},\n  {"id": "fl-d",\n   "promt": "y"}\n]\n')
    result = await shoal(served, "submit", "-f", str(listed))
    assert result.code == cli.EXIT_USAGE
    assert f"{listed}:3:" in result.err and "promt" in result.err and "params.tasks" not in result.err
    deps = tmp_path / "deps.jsonl"
    deps.write_text('{"id": "fl-e", "prompt": "x"}\n{"id": "fl-f", "prompt": "y", "deps": ["fl-nobody"]}\n')
    result = await shoal(served, "submit", "-f", str(deps))
    assert result.code == cli.EXIT_USAGE and f"{deps}:2:" in result.err and "fl-nobody" in result.err


async def test_halt_and_resume(served: Served) -> None:
    halted = await shoal(served, "halt", "maintenance window")
    assert halted.code == 0 and "halted" in halted.out
    status = (await shoal(served, "status", "--json")).json()
    assert status["state"] == "halted" and status["reason"] == "maintenance window"
    assert "HALTED" in (await shoal(served, "status")).out
    resumed = await shoal(served, "resume")
    assert resumed.code == 0 and "running" in resumed.out


async def test_workers_logs_and_worker_controls(served: Served) -> None:
    assert (await shoal(served, "submit", "warm up", "--id", "w-warm", "--wait")).code == 0
    workers = (await shoal(served, "workers", "--json")).json()
    wid = next(w["id"] for w in workers if w["state"] in ("idle", "busy"))
    logs = await shoal(served, "logs", wid)
    assert logs.code == 0 and logs.out  # the worker's screen so far
    tail = await shoal(served, "logs", wid, "--tail", "5")
    assert tail.code == 0 and len(tail.out.encode()) <= 5
    assert (await shoal(served, "pause", wid)).out.strip() == f"paused worker {wid}"
    assert (await shoal(served, "resume", wid)).out.strip() == f"resumed worker {wid}"
    table = await shoal(served, "workers")
    assert table.code == 0 and wid in table.out and "STATE" in table.out
    assert (await shoal(served, "logs", "no-such-worker")).code == cli.EXIT_NOT_FOUND
    assert (await shoal(served, "restart", wid)).code == 0


async def test_events_command(served: Served) -> None:
    result = await shoal(served, "events", "--topic", "task.*", "--since", "0", "--count", "2", "--json")
    assert result.code == 0
    events = [json.loads(line) for line in result.out.splitlines()]
    assert len(events) == 2 and all(e["topic"].startswith("task.") for e in events)
    assert events[0]["seq"] < events[1]["seq"]


async def test_auth_errors(served: Served) -> None:
    wrong = await shoal(served, "status", "--token", "not-the-token")
    assert wrong.code == cli.EXIT_AUTH and "token" in wrong.err
    unreachable = await shoal(served, "status", "--url", "ws://127.0.0.1:9/")
    assert unreachable.code == cli.EXIT_UNREACHABLE and "shoal serve" in unreachable.err
    token = await shoal(served, "token")
    assert token.code == 0 and token.out.strip() == served.token


async def test_every_method_against_the_served_gateway(served: Served) -> None:
    """The Python client against `shoal serve`: each method of the public list answers."""
    async with connect(served.url, served.token) as c:
        assert (await c.version())["protocol"] == 1
        assert (await c.status())["state"] in ("running", "halted")
        task = await c.submit({"id": "py-1", "prompt": "[[hang]] from python"})  # holds py-2 back
        assert (await c.get("py-1")).id == task.id
        assert (await c.submit_many([{"id": "py-2", "prompt": "x", "deps": ["py-1"]}]))[0].id == "py-2"
        tasks, _ = await c.list_tasks(limit=5)
        assert tasks
        assert (await c.boost("py-2", 3)).priority == 3
        await c.metrics()
        await c.series(60)
        assert (await c.config_get()).scaling.max_workers == 2
        assert (await c.config_patch({"scaling": {"idle_s": 50.0}})).scaling.idle_s == 50.0
        workers = await c.workers()
        assert workers and (await c.worker(workers[0].id)).id == workers[0].id
        await c.logs(workers[0].id, tail=100)
        async with c.events(["task.*"], since=0) as stream:
            first = await stream.__anext__()
            assert first.seq >= 1
        with pytest.raises(Conflict):  # no open attempt 99: refused, nothing recorded
            await c.complete("py-2", attempt=99, status="done")
        assert (await c.cancel("py-1")).state == "cancelled"


async def test_attach_in_a_real_terminal(served: Served) -> None:
    """`shoal attach` in a PTY: type a line, see the agent answer it, detach with ^]."""
    await shoal(served, "submit", "warm", "--id", "attach-warm", "--wait")
    workers = (await shoal(served, "workers", "--json")).json()
    wid = next(w["id"] for w in workers if w["state"] == "idle")
    master, slave = os.openpty()
    os.set_blocking(master, False)
    proc = await trio.lowlevel.open_process(
        [*SHOAL, "attach", wid], stdin=slave, stdout=slave, stderr=slave, env=served.env()
    )
    os.close(slave)
    term = trio.lowlevel.FdStream(master)
    seen = b""

    async def read_until(needle: bytes) -> None:
        nonlocal seen
        with trio.fail_after(30):
            while needle not in seen:
                try:
                    seen += await term.receive_some(65536)
                except OSError:  # EIO: the other side closed
                    break

    try:
        await read_until(b"\x1b")  # the snapshot of the worker's screen arrived
        await term.send_all(b"typed in attach\r")
        await read_until(b"Done: typed in attach")
        assert b"Done: typed in attach" in seen
        await term.send_all(b"\x1d")  # ^]
        with trio.fail_after(15):
            code = await proc.wait()
        await read_until(b"detached")
        assert code == 0 and b"detached from" in seen
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await term.aclose()
    status = (await shoal(served, "workers", "--json")).json()
    assert wid in {w["id"] for w in status}  # detaching left the worker running


async def test_attach_without_a_terminal_says_so(served: Served) -> None:
    result = await shoal(served, "attach", "w-1")
    assert result.code == cli.EXIT_USAGE and "terminal" in result.err


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", ["default", "inherited-ignored"])
async def test_logs_follow_streams_until_interrupted(served: Served, sigint: str) -> None:
    """SIGINT stops `logs --follow`, also when it starts with SIGINT ignored, as a script's `cmd &`
    (and a test suite started that way) starts it: it used to ignore the signal and never exit."""
    await shoal(served, "submit", "warm", "--id", f"follow-warm-{sigint}", "--wait")
    workers = (await shoal(served, "workers", "--json")).json()
    wid = next(w["id"] for w in workers if w["state"] == "idle")
    proc = await trio.lowlevel.open_process(
        [*SHOAL, "logs", wid, "--follow"],
        stdout=subprocess.PIPE,
        env=served.env(),
        preexec_fn=_ignore_sigint if sigint == "inherited-ignored" else None,
    )
    assert proc.stdout is not None
    seen = b""
    try:
        with trio.fail_after(30):
            seen += await proc.stdout.receive_some(65536)  # the screen so far: it is attached now
        async with connect(served.url, served.token) as c:
            await c.send_input(wid, f"follow me {sigint}\r".encode())
            with trio.fail_after(30):
                while f"Done: follow me {sigint}".encode() not in seen:
                    seen += await proc.stdout.receive_some(65536)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            code = await proc.wait()
        assert code == cli.EXIT_INTERRUPTED
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()


def test_tables_show_prompts_verbatim_not_as_rich_markup() -> None:
    from rich.console import Console

    from shoal.actors.cli import tasks_table

    console = Console(width=160, record=True)
    task = {"id": "a", "state": "ready", "prompt": "go [[think:1]] then [bold]x[/bold]", "max_attempts": 3}
    console.print(tasks_table([task]))
    assert "go [[think:1]] then [bold]x[/bold]" in console.export_text()
