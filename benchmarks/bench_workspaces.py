"""Workspaces: git worktrees per worker, a branch per task (docs/workspaces.md, issue 17's figures).

    python benchmarks/bench_workspaces.py [--files 10000] [--quick] [--only start,sixteen,end,verify]

On a generated repository of 10,000 files:
- task start with a warm worktree (reset, clean, fresh branch from the base): p50/p99 (goal ≤ 50 / 150 ms)
- first worktree creation per worker, and 16 workers starting at once: all ready (goal ≤ 10 s)
- isolation: 16 workers × 64 tasks each writing the same path with different content; every branch must
  hold exactly its own task's content and the base stay untouched (0 leaks)
- end of attempt (commit + stat) for a 100-file change: p50 (goal ≤ 100 ms)
- a verify loop end to end: 16 fake-agent tasks whose first attempt fails the check and whose retry
  fixes it → all done with 2 attempts each; the makespan against the ideal
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from shoal.actors.tree import open_swarm
from shoal.actors.worktree import GitWorktree, Worktrees
from shoal.protocols.config import ProfileConfig, WorkspaceConfig, config_from_dict, unstructure
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import Assignment, Outcome, TaskState

GIT_ID = ["-c", "user.name=Bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]


def sh_git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *GIT_ID, *args], check=True, capture_output=True, text=True
    ).stdout


def make_repo(path: Path, files: int) -> Path:
    path.mkdir(parents=True)
    sh_git(path, "init", "-q", "-b", "main")
    per_dir = 100
    for i in range(files):
        d = path / f"pkg{i // per_dir:03d}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i % per_dir:03d}.py").write_text(f"# module {i}\nVALUE = {i}\n")
    (path / "shared.txt").write_text("base\n")
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "generated")
    return path


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def profile(repo: Path, **ws: object) -> ProfileConfig:
    return ProfileConfig(argv=("sh",), workspace=WorkspaceConfig("worktree", str(repo), **ws))  # type: ignore[arg-type]


async def bench_start(repo: Path, state: Path, n: int) -> str:
    pool = Worktrees(state / "workspaces")
    ws = pool("coder", profile(repo), "w-1")
    assert isinstance(ws, GitWorktree)
    t0 = time.perf_counter()
    await ws.directory()
    first = time.perf_counter() - t0
    starts: list[float] = []
    for i in range(n):
        task = Assignment(f"start-{i}", 1, "x")
        t0 = time.perf_counter()
        await ws.prepare(task)
        starts.append(time.perf_counter() - t0)
        await ws.finish(task, Outcome.DONE)
    return (
        f"first worktree of a worker: {ms(first)}\n"
        f"task start, warm worktree (reset + clean + fresh branch), n={n}: p50 {ms(pct(starts, 50))}, "
        f"p99 {ms(pct(starts, 99))}  (goal ≤ 50 / 150 ms)"
    )


async def bench_sixteen_and_isolation(repo: Path, state: Path, tasks_each: int) -> str:
    pool = Worktrees(state / "workspaces")
    spaces = [pool("iso", profile(repo), f"w-{i}") for i in range(16)]
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for ws in spaces:
            nursery.start_soon(ws.directory)
    ready = time.perf_counter() - t0

    heads: dict[str, str] = {}

    async def run(ws: GitWorktree) -> None:
        path = Path(await ws.directory() or "")
        for j in range(tasks_each):
            tid = f"{ws.worker}-{j}"
            task = Assignment(tid, 1, f"task {tid}")
            await ws.prepare(task)
            await trio.to_thread.run_sync((path / "shared.txt").write_text, f"{tid}\n")
            record = await ws.finish(task, Outcome.DONE)
            assert record is not None
            heads[tid] = record["head"]

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for ws in spaces:
            assert isinstance(ws, GitWorktree)
            nursery.start_soon(run, ws)
    took = time.perf_counter() - t0
    leaks = 0
    for tid in heads:
        if sh_git(repo, "show", f"shoal/{tid}:shared.txt") != f"{tid}\n":
            leaks += 1
    base_ok = sh_git(repo, "show", "main:shared.txt") == "base\n" and not sh_git(
        repo, "status", "--porcelain"
    )
    return (
        f"16 workers' first worktrees at once: all ready in {ready:.2f} s  (goal ≤ 10 s)\n"
        f"isolation: 16 workers × {tasks_each} tasks writing shared.txt: {len(heads)} branches, "
        f"{leaks} leaks, "
        f"base untouched: {base_ok}  ({len(heads) / took:.1f} tasks/s through prepare + finish)"
    )


WARM = 3  # tasks through a new worktree before measuring: its first checkout wrote 10,000 files in the
# second its index was written, so git re-reads them ("racily clean" entries) until later index writes


async def bench_end_of_attempt(repo: Path, state: Path, n: int, think: float) -> str:
    """finish() after a 100-file change in a worker's worktree that has run a few tasks. `think`: how
    long the "agent" works first (a real turn takes seconds)."""
    pool = Worktrees(state / "workspaces")
    ws = pool("end", profile(repo), "w-1")
    assert isinstance(ws, GitWorktree)
    path = Path(await ws.directory() or "")
    hundred = [f for f in sh_git(repo, "ls-files").split() if f.endswith(".py")][:100]
    ends: list[float] = []
    for i in range(n + WARM):
        task = Assignment(f"end-{think}-{i}", 1, "x")
        await ws.prepare(task)
        await trio.sleep(think)  # the agent's turn

        def edit(i: int = i) -> None:
            for k, name in enumerate(hundred):
                (path / name).write_text(f"# changed by {i}\nVALUE = {k}\n")

        await trio.to_thread.run_sync(edit)
        t0 = time.perf_counter()
        record = await ws.finish(task, Outcome.DONE)
        if i >= WARM:
            ends.append(time.perf_counter() - t0)
        assert record is not None and record["files_changed"] == 100
    return (
        f"end of attempt (commit + stat + back to the base) for a 100-file change after a {think:g} s turn, "
        f"n={n}: p50 {ms(pct(ends, 50))}, p99 {ms(pct(ends, 99))}  (goal p50 ≤ 100 ms)"
    )


async def bench_verify_loop(repo: Path, state: Path, think: float) -> str:
    check = 'test "$(wc -l < log.txt)" -ge 2'
    coder = {
        **unstructure(BUILTIN_PROFILES["fake"]),
        "workspace": {"mode": "worktree", "repo": str(repo), "verify": check},
    }
    cfg = config_from_dict(
        {
            "state_dir": str(state / "verify"),
            "log": {"json": True},
            "workers": {"profile": "coder", "profiles": {"coder": coder}},
            "scaling": {"min_workers": 16, "max_workers": 16},
            "queue": {"retry_backoff": {"min_s": 0.01, "max_s": 0.02}},
        }
    )
    async with open_swarm(cfg) as swarm:
        with swarm.events(("worker.state",)) as sub, trio.fail_after(120):
            while sum(1 for w in swarm.workers() if w.state.value == "idle") < 16:
                await sub.receive()
        ids = [f"v-{i}" for i in range(16)]
        t0 = time.perf_counter()
        await swarm.submit_many(
            [
                {"id": tid, "prompt": f"[[think:{think}]] [[append:log.txt:{tid}\\n]]", "max_attempts": 3}
                for tid in ids
            ]
        )
        with trio.fail_after(300):
            tasks = [await swarm.wait(tid) for tid in ids]
        makespan = time.perf_counter() - t0
    done = sum(1 for t in tasks if t.state is TaskState.DONE)
    two = sum(1 for t in tasks if len(t.attempts) == 2)
    ideal = 2 * think
    return (
        f"verify loop: 16 tasks, first check fails, retry fixes it: {done}/16 done, "
        f"{two}/16 with 2 attempts; "
        f"makespan {makespan:.2f} s (ideal {ideal:.1f} s: two {think:g} s turns; {makespan / ideal:.2f}×)"
    )


SECTIONS = ("start", "sixteen", "end", "verify")


async def main(args: argparse.Namespace) -> None:
    if args.only and not set(args.only.split(",")) <= set(SECTIONS):
        raise SystemExit(f"--only: choose among {', '.join(SECTIONS)}")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        repo = await trio.to_thread.run_sync(make_repo, root / "repo", args.files)
        made = time.perf_counter() - t0
        print(f"repository: {args.files} files, made in {made:.1f} s; {sh_git(repo, 'version').strip()}")
        quick, only = args.quick, set(args.only.split(",")) if args.only else set(SECTIONS)
        if "start" in only:
            print(await bench_start(repo, root / "s1", 20 if quick else 100))
        if "sixteen" in only:
            print(await bench_sixteen_and_isolation(repo, root / "s2", 8 if quick else 64))
        if "end" in only:
            print(await bench_end_of_attempt(repo, root / "s3", 5 if quick else 20, 0.0))
        if "verify" in only:
            print(await bench_verify_loop(repo, root / "s4", 1.0))
        sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="fewer tasks (a smoke run)")
    parser.add_argument(
        "--only", help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)"
    )
    trio.run(main, parser.parse_args())
