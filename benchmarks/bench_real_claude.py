"""The real Claude Code CLI as Shoal's worker, against the local API stand-in (instant replies).

    python benchmarks/bench_real_claude.py                 # everything below, both profiles
    python benchmarks/bench_real_claude.py cold rss        # some of: cold rss throughput overhead requests
    python benchmarks/bench_real_claude.py --starts 20 --tasks 200 --workers 8

The CLI is $SHOAL_CLAUDE_BIN, else the newest one scripts/test installed into .cache/claude-code/.
Every worker starts from a fresh HOME and working directory; Shoal prepares its CLAUDE_CONFIG_DIR.
The stand-in answers at once, so what is timed is the CLI and Shoal, not a model.

cold: a WorkerActor's spawn until the agent is ready (StateChanged idle), one at a time, p50/p99,
  for `claude` (headless stream-json on pipes: ready at once, the CLI reads its stdin when it is up)
  and `claude-tui` (the TUI in a PTY, ready once its prompt box is drawn); and spawn until a first
  task written at ready is done (what a cold worker really costs before it is useful).
rss: each process's peak resident set (VmHWM in /proc/PID/status) after one task, and its RSS then.
throughput: tasks/s through N real workers of one profile (the swarm: queue, scaler, SQLite), the
  workers started first; every task a one-turn reply.
overhead: one task at a time, submit → done through a 1-worker swarm (`claude` profile), against
  (a) the same CLI driven directly, one stream-json line in and its result line out, no Shoal, and
  (b) a plain shell-style loop of `claude -p PROMPT` runs (a process per task).
requests: API requests per task as the stand-in counted them (goal: exactly 1 for a one-turn reply),
  with the CLI's side traffic (titles, quota checks) shown apart, with and without
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without install

from shoal.actors.tree import open_swarm  # noqa: E402
from shoal.actors.worker import WorkerActor  # noqa: E402
from shoal.agents.fake_anthropic import FakeAnthropic, open_fake_anthropic  # noqa: E402
from shoal.protocols.config import ProfileConfig, WorkersConfig, config_from_dict  # noqa: E402
from shoal.protocols.profiles import BUILTIN_PROFILES  # noqa: E402
from shoal.protocols.tasks import Assignment, Outcome, TaskState  # noqa: E402
from shoal.protocols.workers import Assign, StateChanged, Stop, TaskFinished, WorkerState  # noqa: E402

API_KEY = "sk-ant-api03-shoal-bench-key-0123456789abcdef"
PROFILES = ("claude", "claude-tui")


def claude_bin() -> str:
    configured = os.environ.get("SHOAL_CLAUDE_BIN")
    if configured:
        return configured
    found = sorted((ROOT / ".cache" / "claude-code").glob("*/node_modules/.bin/claude"), reverse=True)
    if not found:
        sys.exit("no Claude Code CLI: run scripts/test once (it installs it), or set SHOAL_CLAUDE_BIN")
    return str(found[0])


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def agent_env(fake: FakeAnthropic, home: Path, quiet: bool = True) -> dict[str, str]:
    env = {
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": API_KEY,
        "DISABLE_AUTOUPDATER": "1",
    }
    if quiet:
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    return env


def profile_dict(name: str, cli: str, fake: FakeAnthropic, base: Path, quiet: bool = True) -> dict[str, Any]:
    """The built-in profile `name` run with `cli`, a fresh HOME and working directory under `base`."""
    builtin = BUILTIN_PROFILES[name]
    (base / "home").mkdir(parents=True, exist_ok=True)
    (base / "work").mkdir(parents=True, exist_ok=True)
    return {
        "argv": [cli, *builtin.argv[1:]],
        "dialect": builtin.dialect,
        "transport": builtin.transport,
        "cwd": str(base / "work"),
        "startup_timeout_s": 60.0,
        "stop_timeout_s": 5.0,
        "options": dict(builtin.options),
        "env": {**builtin.env, **agent_env(fake, base / "home", quiet)},
    }


def profile_config(data: dict[str, Any]) -> ProfileConfig:
    config = config_from_dict({"workers": {"profiles": {"p": data}}})
    return config.workers.profiles["p"]


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of `pid`, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


# ---- one WorkerActor at a time: cold start, RSS ------------------------------------------------------


@asynccontextmanager
async def one_worker(profile: ProfileConfig, state_dir: Path) -> AsyncIterator[tuple[Any, Any, WorkerActor]]:
    """A started WorkerActor, its reports channel and the worker, stopped on exit."""
    send, recv = trio.open_memory_channel[Any](1000)
    worker = WorkerActor(
        "w1", "L1", "bench", profile, "sonnet", None, send, WorkersConfig(), state_dir=state_dir
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(worker.run)
        try:
            yield address, recv, worker
        finally:
            with trio.move_on_after(15):
                await address.send(Stop(reason="bench done"))
                async for report in recv:
                    if isinstance(report, StateChanged) and report.state in (
                        WorkerState.STOPPED,
                        WorkerState.CRASHED,
                    ):
                        break
            nursery.cancel_scope.cancel()


async def until_state(recv: Any, state: WorkerState) -> None:
    with trio.fail_after(60):
        async for report in recv:
            if isinstance(report, StateChanged):
                if report.state is state:
                    return
                if report.state is WorkerState.CRASHED:
                    raise RuntimeError(f"worker crashed: {report.reason}")


async def until_finished(recv: Any) -> TaskFinished:
    with trio.fail_after(60):
        async for report in recv:
            if isinstance(report, TaskFinished):
                return report
            if isinstance(report, StateChanged) and report.state is WorkerState.CRASHED:
                raise RuntimeError(f"worker crashed: {report.reason}")
    raise RuntimeError("reports ended")


async def bench_cold(cli: str, starts: int) -> None:
    async with open_fake_anthropic() as fake:
        for name in PROFILES:
            times: list[float] = []
            with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
                for i in range(starts + 1):  # the first start seeds the config directory: not counted
                    profile = profile_config(profile_dict(name, cli, fake, Path(tmp) / f"run{i}"))
                    t0 = time.perf_counter()
                    async with one_worker(profile, Path(tmp) / "state") as (_, recv, _):
                        await until_state(recv, WorkerState.IDLE)
                        dt = time.perf_counter() - t0
                    if i:
                        times.append(dt)
            print(
                f"cold   {name:10s} spawn → ready, {starts} starts: p50 {_ms(statistics.median(times))}, "
                f"p99 {_ms(_pct(times, 99))}, min {_ms(min(times))}"
            )
            firsts: list[float] = []
            with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
                for i in range(starts + 1):
                    profile = profile_config(profile_dict(name, cli, fake, Path(tmp) / f"run{i}"))
                    t0 = time.perf_counter()
                    async with one_worker(profile, Path(tmp) / "state") as (address, recv, _):
                        await until_state(recv, WorkerState.IDLE)
                        await address.send(Assign(Assignment("t1", 1, "first [[reply:hi]]")))
                        finished = await until_finished(recv)
                        dt = time.perf_counter() - t0
                    assert finished.outcome is Outcome.DONE, finished
                    if i:
                        firsts.append(dt)
            print(
                f"cold   {name:10s} spawn → first task done, {starts} starts: p50 "
                f"{_ms(statistics.median(firsts))}, p99 {_ms(_pct(firsts, 99))}, min {_ms(min(firsts))}"
            )


async def bench_rss(cli: str) -> None:
    async with open_fake_anthropic() as fake:
        for name in PROFILES:
            with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
                profile = profile_config(profile_dict(name, cli, fake, Path(tmp)))
                async with one_worker(profile, Path(tmp) / "state") as (address, recv, worker):
                    await until_state(recv, WorkerState.IDLE)
                    ready = proc_status(worker.pid or 0)
                    await address.send(Assign(Assignment("t1", 1, "Say hi [[reply:hi]]")))
                    finished = await until_finished(recv)
                    assert finished.outcome is Outcome.DONE, finished
                    after = proc_status(worker.pid or 0)
            mib = 1024 * 1024
            print(
                f"rss    {name:10s} one real worker: peak (VmHWM) {after['VmHWM'] / mib:.0f} MiB after one "
                f"task ({ready['VmHWM'] / mib:.0f} MiB at ready); RSS now {after['VmRSS'] / mib:.0f} MiB"
            )


# ---- through the swarm: throughput, requests per task, Shoal's latency -------------------------------


@asynccontextmanager
async def real_swarm(base: Path, profile: dict[str, Any], workers: int) -> AsyncIterator[Any]:
    config = config_from_dict(
        {
            "state_dir": str(base / "state"),
            "log": {"json": True, "level": "warning"},
            "workers": {"profile": "real", "profiles": {"real": profile}},
            "scaling": {"min_workers": workers, "max_workers": workers, "tick_s": 0.05, "idle_s": 600},
        }
    )
    async with open_swarm(config) as swarm:
        with swarm.events(("worker.state",)) as sub, trio.fail_after(120):
            while sum(1 for w in swarm.workers() if w.state is WorkerState.IDLE) < workers:
                await sub.receive()
        yield swarm


async def run_tasks(swarm: Any, n: int, tag: str) -> float:
    """Submit n one-turn tasks at once, wait for all; seconds elapsed."""
    t0 = time.perf_counter()
    tasks = await swarm.submit_many([{"prompt": f"{tag} {i} [[reply:ok {i}]]"} for i in range(n)])
    for task in tasks:
        done = await swarm.wait(task.id, timeout=120)
        if done.state is not TaskState.DONE:
            raise RuntimeError(f"{done.id} ended {done.state}: {done.reason}")
    return time.perf_counter() - t0


async def bench_throughput(cli: str, tasks: int, workers: int) -> None:
    for name in PROFILES:
        async with open_fake_anthropic() as fake:
            with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
                profile = profile_dict(name, cli, fake, Path(tmp))
                async with real_swarm(Path(tmp), profile, workers) as swarm:
                    await run_tasks(swarm, workers, "warm-up")
                    elapsed = await run_tasks(swarm, tasks, "task")
                    crashes = sum(w.crashes for w in swarm.workers(include_ended=True))
        print(
            f"tput   {name:10s} {tasks} one-turn tasks through {workers} real workers: {elapsed:.2f} s, "
            f"{tasks / elapsed:.1f} tasks/s (crashes {crashes})"
        )


async def bench_requests(cli: str, tasks: int) -> None:
    runs = [(quiet, name, True) for quiet in (True, False) for name in PROFILES]
    runs.append((False, "claude-tui", False))  # without the profile's CLAUDE_CODE_DISABLE_TERMINAL_TITLE
    for quiet, name, as_shipped in runs:
        async with open_fake_anthropic() as fake:
            with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
                profile = profile_dict(name, cli, fake, Path(tmp), quiet=quiet)
                if not as_shipped:
                    profile["env"].pop("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", None)
                async with real_swarm(Path(tmp), profile, 1) as swarm:
                    fake.clear()
                    await run_tasks(swarm, tasks, "count")
                    await trio.sleep(1.0)  # side requests the CLI sends after a turn (titles)
                    main, side = len(fake.messages()), len(fake.messages(side=True))
                    other = len(fake.requests) - main - side
        flag = "DISABLE_NONESSENTIAL_TRAFFIC=1" if quiet else "default env"
        if not as_shipped:
            flag += ", title on"
        print(
            f"reqs   {name:10s} {flag:30s} {tasks} tasks, 1 worker: {main / tasks:.2f} API requests "
            f"per task; side requests {side}, other {other}"
        )


async def raw_stream_json(cli: str, fake: FakeAnthropic, base: Path, n: int) -> list[float]:
    """The CLI driven directly: one stream-json user line in, wait for its result line."""
    (base / "home").mkdir(parents=True, exist_ok=True)
    (base / "work").mkdir(parents=True, exist_ok=True)
    argv = [cli, *BUILTIN_PROFILES["claude"].argv[1:]]
    argv = [a.replace("{model}", "sonnet") for a in argv]
    env = {**os.environ, **agent_env(fake, base / "home")}
    times: list[float] = []
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=str(base / "work"),
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        buffer = b""
        for i in range(n + 3):
            line = {
                "type": "user",
                "message": {"role": "user", "content": [{"type": "text", "text": f"raw {i}"}]},
            }
            t0 = time.perf_counter()
            await process.stdin.send_all(json.dumps(line).encode() + b"\n")
            while True:
                while b"\n" not in buffer:
                    chunk = await process.stdout.receive_some(65536)
                    if not chunk:
                        raise RuntimeError("the CLI exited")
                    buffer += chunk
                raw, _, buffer = buffer.partition(b"\n")
                if raw.startswith(b"{") and json.loads(raw).get("type") == "result":
                    break
            if i >= 3:
                times.append(time.perf_counter() - t0)
        await process.stdin.aclose()
        with trio.move_on_after(10):
            await process.wait()
    finally:
        process.kill()
        await process.wait()
    return times


async def plain_p_loop(cli: str, fake: FakeAnthropic, base: Path, n: int) -> list[float]:
    """A plain loop of `claude -p PROMPT` runs, one process per task."""
    (base / "home").mkdir(parents=True, exist_ok=True)
    (base / "work").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **agent_env(fake, base / "home")}
    times: list[float] = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        result = await trio.run_process(
            [cli, "-p", f"plain {i}", "--model", "sonnet"],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            cwd=str(base / "work"),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"claude -p exited {result.returncode}: {result.stderr[-500:]!r}")
        if i:
            times.append(time.perf_counter() - t0)
    return times


async def bench_overhead(cli: str, n: int) -> None:
    async with open_fake_anthropic() as fake:
        with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
            raw = await raw_stream_json(cli, fake, Path(tmp) / "raw", n)
            plain = await plain_p_loop(cli, fake, Path(tmp) / "plain", max(5, n // 4))
            shoal: list[float] = []
            profile = profile_dict("claude", cli, fake, Path(tmp) / "shoal")
            async with real_swarm(Path(tmp) / "shoal", profile, 1) as swarm:
                for i in range(n + 3):
                    t0 = time.perf_counter()
                    task = await swarm.submit({"prompt": f"one {i} [[reply:ok]]"})
                    done = await swarm.wait(task.id, timeout=60)
                    assert done.state is TaskState.DONE, done
                    if i >= 3:
                        shoal.append(time.perf_counter() - t0)
            tui: list[tuple[float, float]] = []  # (submit → API request, API request → done)
            profile = profile_dict("claude-tui", cli, fake, Path(tmp) / "tui")
            async with real_swarm(Path(tmp) / "tui", profile, 1) as swarm:
                for i in range(n + 3):
                    fake.clear()
                    t0 = time.time()
                    task = await swarm.submit({"prompt": f"tui {i} [[reply:ok]]"})
                    done = await swarm.wait(task.id, timeout=60)
                    assert done.state is TaskState.DONE, done
                    t1 = time.time()
                    if i >= 3:
                        at = fake.messages()[0].at
                        tui.append((at - t0, t1 - at))
    med = statistics.median
    print(
        f"ovhd   claude     one task at a time, {n} tasks: Shoal submit → done p50 {_ms(med(shoal))} "
        f"(p99 {_ms(_pct(shoal, 99))}); the CLI driven directly (stream-json, no Shoal) p50 "
        f"{_ms(med(raw))} (p99 {_ms(_pct(raw, 99))}): Shoal adds {_ms(med(shoal) - med(raw))} per task; "
        f"a plain loop of `claude -p` ({len(plain)} runs) p50 {_ms(med(plain))} per task"
    )
    to_request, to_done = [t for t, _ in tui], [d for _, d in tui]
    print(
        f"ovhd   claude-tui one task at a time, {n} tasks: submit → done p50 "
        f"{_ms(med([a + b for a, b in tui]))}: submit → its API request p50 {_ms(med(to_request))} "
        f"(the paste, the pause before Enter, the TUI), API request → done p50 {_ms(med(to_done))} "
        f"(the CLI's turn end, the Stop hook, the transcript)"
    )


async def main(args: argparse.Namespace) -> None:
    cli = claude_bin()
    version = (await trio.run_process([cli, "--version"], capture_stdout=True)).stdout.decode().strip()
    print(
        f"# bench_real_claude: Claude Code {version} · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · load {os.getloadavg()[0]:.1f}"
    )
    every = ["cold", "rss", "throughput", "overhead", "requests"]
    which = args.which or every
    if unknown := sorted(set(which) - set(every)):
        sys.exit(f"unknown benchmark {unknown[0]!r}; known: {', '.join(every)}")
    if "cold" in which:
        await bench_cold(cli, args.starts)
    if "rss" in which:
        await bench_rss(cli)
    if "throughput" in which:
        await bench_throughput(cli, args.tasks, args.workers)
    if "overhead" in which:
        await bench_overhead(cli, args.sequential)
    if "requests" in which:
        await bench_requests(cli, args.count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", nargs="*", help="cold rss throughput overhead requests (default: all)")
    parser.add_argument("--starts", type=int, default=10, help="cold starts per profile (default 10)")
    parser.add_argument("--tasks", type=int, default=100, help="tasks for the throughput run (default 100)")
    parser.add_argument("--workers", type=int, default=8, help="workers for the throughput run (default 8)")
    parser.add_argument("--sequential", type=int, default=30, help="tasks for the overhead run (default 30)")
    parser.add_argument("--count", type=int, default=10, help="tasks for the requests count (default 10)")
    trio.run(main, parser.parse_args())
