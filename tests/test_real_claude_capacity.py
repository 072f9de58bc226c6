"""What a real Claude Code worker costs in memory, measured as the scaler measures it (issue 14 item 4).

The real CLI (headless and TUI) runs one task offline against the Messages API stand-in; the capacity
meter then reads its process tree's peak RSS (VmHWM), and `swarm.status`' capacity block reports that
figure as the cost of the profile, replacing the default it started with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_real_claude import real_profile, real_swarm

from shoal.actors.capacity import tree_memory
from shoal.agents.fake_anthropic import open_fake_anthropic
from shoal.protocols.tasks import TaskState
from shoal.protocols.workers import WorkerState

pytestmark = [pytest.mark.real_claude, pytest.mark.usefixtures("no_leaks")]


@pytest.mark.parametrize("name", ["claude", "claude-tui"])
async def test_real_workers_peak_rss_is_its_cost(tmp_path: Path, claude_bin: str, name: str) -> None:
    async with open_fake_anthropic() as fake:
        profile = real_profile(name, claude_bin, fake, tmp_path)
        async with real_swarm(tmp_path, profile) as swarm:
            before = (await swarm.status())["capacity"]
            assert before["profile"] == "real" and before["worker_memory_source"] == "default"
            assert before["worker_memory_mb"] == 256  # node.worker_memory_mb: nothing measured yet
            task = await swarm.submit({"prompt": f"Say hello [[reply:Hello from {name}]]"})
            done = await swarm.wait(task.id, timeout=60)
            assert done.state is TaskState.DONE, done
            [worker] = [w for w in swarm.workers() if w.state is WorkerState.IDLE]
            assert worker.pid is not None
            await swarm.capacity.sample()  # what the meter does every workers.sample_interval_s
            now = tree_memory(worker.pid)
            assert now is not None
            cap = (await swarm.status())["capacity"]
            cost = cap["worker_memory_mb"]
            print(f"{name}: peak RSS {cost} MiB (process tree now {now[0] / 2**20:.1f} MiB)")
            assert cap["worker_memory_source"] == "measured"
            assert cap["profiles"]["real"] == {
                "memory_mb": cost,
                "source": "measured",
                "peak_mb": cost,
                "measured_workers": 1,
            }
            # a real CLI: tens to hundreds of MiB (≈258 MiB measured for 2.1.x), its peak at least now
            assert 50 < cost < 2048 and cost >= now[0] / 2**20 - 1
            assert cap["free_memory_mb"] > 0 and cap["memory_fit"] is not None
