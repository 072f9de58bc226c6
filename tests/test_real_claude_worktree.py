"""Real Claude Code in worktrees (docs/workspaces.md): the real CLI 2.1.332, offline against the local API
stand-in, whose tool_use turns make the CLI write real files; each task's change lands on its own branch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_real_claude import PROFILES, cli_for, real_profile, real_swarm
from test_worktree import make_repo, sh_git

from shoal.agents.fake_anthropic import open_fake_anthropic
from shoal.protocols.tasks import TaskState

pytestmark = [pytest.mark.real_claude, pytest.mark.usefixtures("no_leaks")]


@pytest.mark.parametrize("name", ["claude", "claude-tui"])
async def test_each_real_claude_task_leaves_its_change_on_its_own_branch(
    tmp_path: Path, claude_bin: str, name: str
) -> None:
    repo = make_repo(tmp_path / "repo", {"notes.txt": "base\n"})
    async with open_fake_anthropic() as fake:
        profile = real_profile(name, claude_bin, fake, tmp_path, "--permission-mode", "acceptEdits")
        profile["workspace"] = {"mode": "worktree", "repo": str(repo)}
        async with real_swarm(tmp_path, profile) as swarm:
            for tid in ("first", "second"):
                prompt = f"Note it [[tool:Write:notes.txt:{tid} was here]][[reply:Wrote it]]"
                await swarm.submit({"id": tid, "prompt": prompt})
            for tid in ("first", "second"):
                done = await swarm.wait(tid, timeout=90)
                assert done.state is TaskState.DONE and done.result == "Wrote it", done
                ws = done.attempts[-1].workspace
                assert ws is not None and ws["branch"] == f"shoal/{tid}" and ws["files"] == ["notes.txt"]
            change = await swarm.diff("second")
            assert "-base\n+second was here" in change["diff"]
    for tid in ("first", "second"):
        assert sh_git(repo, "show", f"shoal/{tid}:notes.txt") == f"{tid} was here"
    assert (repo / "notes.txt").read_text() == "base\n" and sh_git(repo, "status", "--porcelain") == ""
    assert len(fake.messages()) == 4  # two requests a task: the tool_use turn, then the reply


@PROFILES
async def test_a_real_claude_task_continues_its_dependencys_conversation(
    tmp_path: Path, request: pytest.FixtureRequest, name: str, cli: str
) -> None:
    """`metadata.workspace.continue`: the dependant's agent is started with `--resume <session>` in the
    worktree the dependency ran in, and the API sees the dependency's conversation in its request (the
    proof the context went on); the task after it is fresh again."""
    claude_bin = cli_for(request, cli)
    repo = make_repo(tmp_path / "repo", {"notes.txt": "base\n"})
    async with open_fake_anthropic() as fake:
        profile = real_profile(name, claude_bin, fake, tmp_path)
        profile["workspace"] = {"mode": "worktree", "repo": str(repo)}
        async with real_swarm(tmp_path, profile) as swarm:
            await swarm.submit({"id": "plan", "prompt": "Remember the word PELICAN [[reply:Noted]]"})
            await swarm.submit(
                {
                    "id": "build",
                    "prompt": "Which word? [[reply:PELICAN it was]]",
                    "deps": ["plan"],
                    "metadata": {"workspace": {"continue": "plan"}},
                }
            )
            build = await swarm.wait("build", timeout=90)
            plan = await swarm.get("plan")
            await swarm.submit({"id": "after", "prompt": "Anything else? [[reply:Fresh]]"})
            after = await swarm.wait("after", timeout=90)
        assert build.state is TaskState.DONE and build.result == "PELICAN it was", build.attempts
        session = plan.attempts[-1].usage["session_id"]
        ws = build.attempts[-1].workspace
        assert ws is not None and ws["continued"] is True and ws["session"] == session, ws
        assert after.state is TaskState.DONE and after.result == "Fresh"
        requests = [m for m in fake.messages() if m.prompt()]
        asked = {m.prompt().strip(): json.dumps(m.body["messages"]) for m in requests}
        resumed = asked["Which word? [[reply:PELICAN it was]]"]
        assert "Remember the word PELICAN" in resumed and "Noted" in resumed  # the earlier turn, both sides
        fresh = asked["Anything else? [[reply:Fresh]]"]
        assert "PELICAN" not in fresh
