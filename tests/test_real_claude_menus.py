"""The real Claude Code CLI's trust dialog (issue 16, menus), offline against the API stand-in.

On first start in a directory it has not trusted, CLI 2.1.332 draws "Accessing workspace: … Is this
a project you created or one you trust?" without numbers, `❯ No, exit` first. Shoal's prepared
configuration trusts the worker's directory, so these workers bring their own `CLAUDE_CONFIG_DIR`
(onboarding done, the API key approved, no directory trusted), as a user's own Claude setup would:
in a directory Shoal did not create a human is asked and answers through `workers.answer`; in a
workspace under `<state_dir>/workspaces` Shoal answers Yes itself (Down, then Enter).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from swarmkit import wait_for
from test_real_claude import API_KEY, real_profile, real_swarm

from shoal.actors.hooks import prepare_config_dir
from shoal.agents.fake_anthropic import open_fake_anthropic
from shoal.protocols.tasks import TaskState

pytestmark = [pytest.mark.real_claude, pytest.mark.usefixtures("no_leaks")]

WAIT_S = 60.0
TRUST_OPTIONS = ["No, exit", "Yes, I trust this folder"]


def own_config(tmp_path: Path) -> Path:
    """A user's own Claude configuration: onboarded, API key approved, no directory trusted yet."""
    config = tmp_path / "own-claude-config"
    prepare_config_dir(config, api_key=API_KEY, trusted=[])
    return config


def trusted(config: Path, directory: Path) -> bool:
    projects = json.loads((config / ".claude.json").read_text()).get("projects", {})
    return bool(projects.get(str(directory), {}).get("hasTrustDialogAccepted"))


async def test_trust_dialog_in_an_unmanaged_directory_asks_a_human(tmp_path: Path, claude_bin: str) -> None:
    config = own_config(tmp_path)
    async with open_fake_anthropic() as fake:
        profile = real_profile("claude-tui", claude_bin, fake, tmp_path, CLAUDE_CONFIG_DIR=str(config))
        work = Path(profile["cwd"])
        async with real_swarm(tmp_path, profile) as swarm:
            with swarm.events(["worker.needs_input", "worker.answered"]) as events:
                task = await swarm.submit({"prompt": "Say hello [[reply:Hello after trust]]"})
                asked = await wait_for(
                    events, lambda e: e.topic == "worker.needs_input" and len(e.data["options"]) == 2, WAIT_S
                )
                worker = asked.data["worker"]
                assert asked.data["kind"] == "trust" and asked.data["options"] == TRUST_OPTIONS
                assert "Is this a project you created or one you trust?" in asked.data["prompt"]
                assert swarm.worker(worker).state == "starting"  # waiting for a human, not timing out
                assert not trusted(config, work)
                reply = await swarm.answer(worker, "Yes")
                answered = await wait_for(events, "worker.answered", WAIT_S)
                done = await swarm.wait(task.id, timeout=WAIT_S)
        assert reply["choice"] == 2 and reply["label"] == "Yes, I trust this folder"
        assert answered.data["by"] == "human" and answered.data["kind"] == "trust"
        assert done.state is TaskState.DONE and done.result == "Hello after trust", done
        assert trusted(config, work)  # the CLI recorded the human's Yes
        assert len(fake.messages()) == 1


async def test_trust_dialog_in_a_shoal_workspace_is_answered_by_policy(
    tmp_path: Path, claude_bin: str
) -> None:
    config = own_config(tmp_path)
    async with open_fake_anthropic() as fake:
        profile = real_profile("claude-tui", claude_bin, fake, tmp_path, CLAUDE_CONFIG_DIR=str(config))
        workspace = tmp_path / "state" / "workspaces" / "w1"
        workspace.mkdir(parents=True)
        profile["cwd"] = str(workspace)
        async with real_swarm(tmp_path, profile) as swarm:
            with swarm.events(["worker.needs_input", "worker.answered"]) as events:
                task = await swarm.submit({"prompt": "Say hello [[reply:Hello in the workspace]]"})
                answered = await wait_for(events, lambda e: True, WAIT_S)
                done = await swarm.wait(task.id, timeout=WAIT_S)
        assert answered.topic == "worker.answered", answered  # nobody was asked
        assert answered.data["by"] == "policy" and answered.data["kind"] == "trust"
        assert answered.data["choice"] == 2 and answered.data["label"] == "Yes, I trust this folder"
        assert done.state is TaskState.DONE and done.result == "Hello in the workspace", done
        assert trusted(config, workspace)
