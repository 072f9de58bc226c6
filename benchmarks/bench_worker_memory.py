"""What a worker costs in memory, per profile, measured as the scaler measures it (issue 14 item 4).

    python benchmarks/bench_worker_memory.py                    # claude, claude-tui, fake; 4 workers each
    python benchmarks/bench_worker_memory.py --workers 8 --tasks 3 --profiles claude-tui

For each profile a swarm runs `--workers` workers through `--tasks` one-turn tasks each; the real
Claude Code CLI (SHOAL_CLAUDE_BIN, else the one scripts/test installed into .cache/claude-code/)
talks to the local Messages API stand-in (shoal.agents.fake_anthropic), offline. Then every live
worker's process tree is read (VmRSS now, VmHWM peak, summed over the tree, as the capacity meter
does) and the capacity block of swarm.status tells the cost the scaler uses and how many more such
workers fit above node.min_free_memory_mb on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from shoal.actors.capacity import tree_memory
from shoal.actors.tree import open_swarm
from shoal.agents.fake_anthropic import open_fake_anthropic
from shoal.protocols.config import config_from_dict
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import TaskState
from shoal.protocols.workers import WorkerState

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def claude_bin() -> str | None:
    configured = os.environ.get("SHOAL_CLAUDE_BIN")
    if configured:
        return configured
    found = sorted((ROOT / ".cache" / "claude-code").glob("*/node_modules/.bin/claude"), reverse=True)
    return str(found[0]) if found else None


def profile_for(name: str, binary: str | None, base_url: str, tmp: Path) -> dict[str, Any]:
    base = BUILTIN_PROFILES[name]
    argv = list(base.argv)
    env: dict[str, str] = {}
    if name.startswith("claude"):
        if binary is None:
            raise SystemExit("no Claude Code CLI: run scripts/test once, or set SHOAL_CLAUDE_BIN")
        argv[0] = binary
        home = tmp / "home"
        home.mkdir(exist_ok=True)
        env = {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-ant-api03-shoal-bench-key-0123456789abcdef",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    return {
        "argv": argv,
        "dialect": base.dialect,
        "transport": base.transport,
        "cwd": str(work),
        "options": dict(base.options),
        "env": {**base.env, **env},
        "startup_timeout_s": 60.0,
        "stop_timeout_s": 3.0,
    }


async def measure(name: str, workers: int, tasks: int, binary: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="shoal-mem-") as tmp_name:
        tmp = Path(tmp_name)
        async with open_fake_anthropic() as fake:
            config = config_from_dict(
                {
                    "state_dir": str(tmp / "state"),
                    "log": {"format": "json", "level": "warning"},
                    "workers": {
                        "profile": "bench",
                        "profiles": {"bench": profile_for(name, binary, fake.url, tmp)},
                    },
                    "scaling": {"max_workers": workers, "min_workers": workers, "predictive": False},
                }
            )
            async with open_swarm(config) as swarm:
                specs = [{"prompt": f"Reply [[reply:done {i}]]"} for i in range(workers * tasks)]
                with swarm.events(["worker.state"]) as sub:
                    submitted = await swarm.submit_many(specs)
                    for task in submitted:
                        done = await swarm.wait(task.id, timeout=300)
                        if done.state is not TaskState.DONE:
                            raise SystemExit(f"{name}: task {task.id} ended {done.state}: {done.reason}")
                    # a worker refreshed for its context is starting again: read them all idle
                    with trio.fail_after(120):
                        while not all(i.state is WorkerState.IDLE for i in swarm.workers()):
                            await sub.receive()
                await swarm.capacity.sample()
                readings = []
                for info in swarm.workers():
                    got = tree_memory(info.pid) if info.pid is not None else None
                    if got is not None:
                        readings.append(got)
                cap = (await swarm.status())["capacity"]
    rss = [r / MIB for r, _ in readings]
    peak = [p / MIB for _, p in readings]
    return {
        "profile": name,
        "workers": len(readings),
        "tasks": workers * tasks,
        "rss_p50": statistics.median(rss),
        "rss_max": max(rss),
        "peak_p50": statistics.median(peak),
        "peak_max": max(peak),
        "cost": cap["worker_memory_mb"],
        "source": cap["worker_memory_source"],
        "free": cap["free_memory_mb"],
        "floor": cap["min_free_memory_mb"],
        "fit": cap["memory_fit"],
    }


async def main_async(args: argparse.Namespace) -> None:
    binary = claude_bin()
    version = Path(binary).parents[2].name if binary and ".cache" in binary else (binary or "-")
    print(
        f"# worker memory · {platform.machine()} · {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d')} · Claude Code {version}"
    )
    print(f"# {args.workers} workers per profile, {args.tasks} one-turn tasks each; every process tree read")
    columns = ["profile", "workers", "RSS now p50 / max", "peak p50 / max", "scaler's cost (source)"]
    print("| " + " | ".join([*columns, "free / floor", "more fit"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for name in args.profiles:
        r = await measure(name, args.workers, args.tasks, binary)
        print(
            f"| {r['profile']} | {r['workers']} | {r['rss_p50']:.1f} / {r['rss_max']:.1f} MiB "
            f"| {r['peak_p50']:.1f} / {r['peak_max']:.1f} MiB | {r['cost']:.1f} MiB ({r['source']}) "
            f"| {r['free']:.0f} / {r['floor']:.0f} MiB | {r['fit']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2, help="one-turn tasks per worker")
    parser.add_argument("--profiles", nargs="+", default=["claude", "claude-tui", "fake"])
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
