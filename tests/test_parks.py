"""Model parks survive a restart (actors/parks.py): a usage-limit park and an operator's pause."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import trio
from swarmkit import swarm_config

from shoal.actors.parks import PARKS_FILE, load_parks
from shoal.actors.tree import open_swarm
from shoal.protocols.tasks import TaskState


def model_state(status: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(m for m in status["models"] if m["name"] == name)


async def wait_parked(swarm, model: str) -> None:  # type: ignore[no-untyped-def]
    with swarm.events(("model.parked",)) as sub, trio.fail_after(20):
        while model_state(await swarm.status(), model)["state"] != "parked":
            await sub.receive()


async def saved(sub, models: set[str]) -> None:  # type: ignore[no-untyped-def]
    """The keeper wrote the file (off the loop) with exactly `models` parked."""
    with trio.fail_after(20):
        while set((await sub.receive()).data["models"]) != models:
            pass


async def test_parks_are_kept_across_a_restart_and_resumes_too(tmp_path: Path) -> None:
    cfg = swarm_config(tmp_path, scaling={"max_workers": 2})
    async with open_swarm(cfg) as swarm:
        with swarm.events(("model.parks_saved",)) as writes:
            await swarm.pause_model("opus", "extra usage: paused")
            task = await swarm.submit({"prompt": "[[ratelimit:+3600]]", "model": "haiku", "max_attempts": 1})
            await wait_parked(swarm, "haiku")
            haiku_until = model_state(await swarm.status(), "haiku")["until"]
            await saved(writes, {"opus", "haiku"})
        assert (await swarm.get(task.id)).state is TaskState.READY  # requeued, not burnt
    path = tmp_path / "state" / PARKS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["opus"] is None

    async with open_swarm(cfg) as swarm:  # a restart: both still parked, the same until
        await wait_parked(swarm, "opus")
        await wait_parked(swarm, "haiku")
        status = await swarm.status()
        assert model_state(status, "opus")["until"] is None
        assert abs(model_state(status, "haiku")["until"] - haiku_until) < 1
        assert haiku_until > time.time() + 3000
        with swarm.events(("model.parks_saved",)) as writes:
            # the keeper saves as it re-applies the two parks; a {"haiku"} saved before it took
            # opus's back is not the resume's (the suite once saw that match, then opus saved)
            earlier, _ = swarm.bus.replay(0, ("model.parks_saved",))
            if not any(set(e.data["models"]) == {"opus", "haiku"} for e in earlier):
                await saved(writes, {"opus", "haiku"})
            await swarm.resume_model("opus")
            await saved(writes, {"haiku"})
        assert set(load_parks(path)) == {"haiku"}

    async with open_swarm(cfg) as swarm:  # resumed stays resumed
        await wait_parked(swarm, "haiku")
        assert model_state(await swarm.status(), "opus")["state"] == "available"


async def test_a_broken_parks_file_never_keeps_shoal_from_starting(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / PARKS_FILE).write_text("{not json")
    async with open_swarm(swarm_config(tmp_path)) as swarm:
        assert all(m["state"] == "available" for m in (await swarm.status())["models"])
