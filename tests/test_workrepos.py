"""A task in another repository than its profile's (actors/workrepos.py): `metadata.workspace.repo`,
`shoal submit --repo`, `workspace.allowed_repos`. Real git, real repositories in temporary directories,
the fake agent editing files in whatever directory it was started in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_cli import shoal
from test_worktree import coder_config, make_repo, sh_git, task

from shoal.actors import cli
from shoal.actors.tree import open_swarm
from shoal.actors.workcopy import Workspaces
from shoal.actors.workrepos import RepoWorktrees
from shoal.actors.workspace import SharedDirectory, WorkspaceError
from shoal.protocols.config import (
    GatewayConfig,
    ProfileConfig,
    ScalingConfig,
    WorkspaceConfig,
    config_from_dict,
)
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import Assignment, Outcome, TaskState


def in_repo(task_id: str, prompt: str, repo: Path | str | None = None, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": task_id, "prompt": prompt, **fields}
    if repo is not None:
        spec["metadata"] = {"workspace": {"repo": str(repo)}}
    return spec


async def settled_idle(swarm: Any) -> None:
    """Until the one worker is idle again (its fresh process, if any, is up)."""
    with swarm.events(("worker.state",)) as sub:
        while not [w for w in swarm.workers() if w.state.value == "idle"]:
            await sub.receive()


@pytest.mark.parametrize("fresh", [True, False])
async def test_a_task_in_an_allowed_second_repository_lands_its_branch_there(
    tmp_path: Path, fresh: bool
) -> None:
    """One worker runs a task in the profile's repository, one in a second allowed repository and
    one in the first again: each task's branch and files are in its own repository only, the agent
    worked in that repository's worktree (its edits landed there), and the review works for it."""
    home = make_repo(tmp_path / "home", {"README.md": "home\n"})
    other = make_repo(tmp_path / "other", {"README.md": "other\n"})
    cfg = coder_config(
        tmp_path, home, min_workers=1, max_workers=1, fresh_context=fresh, allowed_repos=[str(other)]
    )
    async with open_swarm(cfg) as swarm:
        pids = []
        for spec in (
            in_repo("a1", "[[write:a1.txt:one\\n]]"),
            in_repo("b1", "[[write:b1.txt:in other\\n]][[commit:the agent's own]]", other),
            in_repo("a2", "[[write:a2.txt:two\\n]]"),
        ):
            await swarm.submit(spec)
            with trio.fail_after(30):
                done = await swarm.wait(spec["id"])
                assert done.state is TaskState.DONE, done.attempts[-1]
                await settled_idle(swarm)
            pids.append(swarm.workers()[0].pid)
        # a new process for each task: a fresh conversation, or (fresh_context = false) the agent
        # moved to the other repository's worktree and back to the profile's
        assert len(set(pids)) == 3
        b1 = (await swarm.get("b1")).attempts[-1].workspace
        assert b1 is not None and b1["repo"] == str(other) and b1["branch"] == "shoal/b1"
        assert b1["files"] == ["b1.txt"] and b1["committed"] is False  # the agent committed it itself
        a2 = (await swarm.get("a2")).attempts[-1].workspace
        assert a2 is not None and a2["files"] == ["a2.txt"] and a2["repo"] == str(home)
        change = await swarm.diff("b1")
        assert "+in other" in change["diff"]
        listed = await swarm.workspaces()
        assert {(Path(w["repo"]).name, bool(w["worker"])) for w in listed["worktrees"]} == {
            ("home", True),
            ("other", True),
        }
        assert sorted((Path(b["repo"]).name, b["branch"]) for b in listed["branches"]) == [
            ("home", "shoal/a1"),
            ("home", "shoal/a2"),
            ("other", "shoal/b1"),
        ]
        merged = await swarm.merge("b1", into="main")
        assert merged["merged"] is True
    assert (other / "b1.txt").read_text() == "in other\n"  # merged into the second repository's main
    assert "shoal/b1" not in sh_git(home, "branch", "--list", "shoal/*")
    assert sh_git(other, "branch", "--list", "shoal/*").split() == ["shoal/b1"]
    assert not (home / "b1.txt").exists() and "b1.txt" not in sh_git(home, "ls-tree", "-r", "shoal/a2")
    assert sh_git(other, "log", "-1", "--format=%s", "shoal/b1").strip() == "the agent's own"

    again = attrs.evolve(cfg, scaling=ScalingConfig(min_workers=1, max_workers=1), gateway=GatewayConfig())
    async with open_swarm(again) as swarm:  # a restart: the second repository's worktree is reused
        await swarm.submit(in_repo("b2", "[[write:b2.txt:again]]", other))
        with trio.fail_after(30):
            assert (await swarm.wait("b2")).state is TaskState.DONE
        listed = await swarm.workspaces()
        assert sum(Path(w["repo"]).name == "other" for w in listed["worktrees"]) == 1
    idle = attrs.evolve(cfg, scaling=ScalingConfig(), gateway=GatewayConfig())
    async with open_swarm(idle) as swarm:  # no worker: every worktree, of both repositories, is unused
        pruned = await swarm.prune_workspaces(older_than_s=0)
        assert len(pruned["removed_worktrees"]) == 2
        assert f"{other}:shoal/b2" in pruned["deleted_branches"]
    assert sh_git(other, "worktree", "list").count("\n") == 1


async def test_a_process_per_task_starts_in_its_tasks_repository(tmp_path: Path) -> None:
    """A oneshot agent (a process per task) is started in the worktree of the task's repository; a
    dependant there starts from its dependency's branch, its check and artifacts run in that worktree;
    a dependency in another repository only orders the tasks."""
    home = make_repo(tmp_path / "home")
    other = make_repo(tmp_path / "other")
    cfg = coder_config(tmp_path, home, base="fake-oneshot", max_workers=1, allowed_repos=[str(other)])
    own = {"repo": str(other), "verify": "test -f b1.txt", "artifacts": ["b2.txt"]}
    async with open_swarm(cfg) as swarm:
        await swarm.submit_many(
            [
                in_repo("b1", "[[write:b1.txt:b]]", other),
                {"id": "b2", "prompt": "[[write:b2.txt:c]]", "deps": ["b1"], "metadata": {"workspace": own}},
                in_repo("a1", "[[write:a1.txt:a]]", deps=["b2"]),
            ]
        )
        with trio.fail_after(30):
            for tid in ("b1", "b2", "a1"):
                assert (await swarm.wait(tid)).state is TaskState.DONE, tid
        b2 = (await swarm.get("b2")).attempts[-1].workspace
        assert b2 is not None and b2["verify"]["passed"] is True and b2["files"] == ["b2.txt"]
        assert b2["artifacts"] == [{"name": "b2.txt", "size": 1}]
        a1 = (await swarm.get("a1")).attempts[-1].workspace
        assert (
            a1 is not None
            and a1["files"] == ["a1.txt"]
            and a1["base"] == sh_git(home, "rev-parse", "main").strip()
        )
    assert sh_git(other, "show", "shoal/b2:b1.txt") == "b"
    assert sh_git(home, "show", "shoal/a1:a1.txt") == "a"
    assert sh_git(home, "branch", "--list", "shoal/b*") == sh_git(other, "branch", "--list", "shoal/a1") == ""


def test_allowed_repos_are_checked_in_the_configuration() -> None:
    profile = {"argv": ["x"], "workspace": {"mode": "worktree", "repo": "/r", "allowed_repos": [""]}}
    with pytest.raises(ValidationError, match=r"allowed_repos\[0\]: must be a path to a git repository"):
        config_from_dict({"workers": {"profiles": {"c": profile}}})


async def test_repositories_outside_the_allow_list_are_refused_at_submit(tmp_path: Path) -> None:
    """A path not listed, a `..` escape, a symlink out of an allowed repository, a listed directory
    that is no git repository, one without commits, a relative path, a NUL: each a clear error naming
    the field, and nothing is added (also not the good task of a refused batch). A symlink to an
    allowed repository is that repository."""
    home = make_repo(tmp_path / "home")
    other = make_repo(tmp_path / "allowed" / "other")
    outside = make_repo(tmp_path / "outside")
    (other / "way-out").symlink_to(outside)  # inside an allowed repository, pointing out of the list
    (tmp_path / "alias").symlink_to(other)
    plain = tmp_path / "allowed" / "plain"
    plain.mkdir()
    empty = tmp_path / "allowed" / "empty"
    empty.mkdir()
    sh_git(empty, "init", "-q")
    cfg = coder_config(
        tmp_path, home, max_workers=1, gateway=True, allowed_repos=[str(other), str(plain), str(empty)]
    )
    escape = f"{other}/../../outside"
    cases = {
        str(outside): f"is not allowed: profile 'coder' may use {home}, {other}, {plain}, {empty}",
        escape: "is not allowed",
        str(other / "way-out"): "is not allowed",
        str(tmp_path / "nowhere"): "is not allowed",
        str(plain): "is not a git repository",
        str(empty): "has no commits",
        "relative/path": "must be an absolute path on the server",
        "/tmp/a\x00b": "must not hold control characters",
    }
    async with open_swarm(cfg) as swarm:
        for path, why in cases.items():
            with pytest.raises(ValidationError) as info:
                await swarm.submit(in_repo("bad", "x", path))
            assert info.value.field == "metadata.workspace.repo" and why in info.value.message, path
        with pytest.raises(ValidationError) as info:
            await swarm.submit_many([in_repo("good", "x", other), in_repo("bad", "x", outside)])
        assert info.value.field == "tasks[1].metadata.workspace.repo"
        kept = await swarm.submit(in_repo("via-alias", "[[write:l.txt:l]]", tmp_path / "alias"))
        assert kept.metadata == {"workspace": {"repo": str(other)}}  # kept resolved: what was checked runs
        named_home = await swarm.submit(in_repo("home-named", "[[write:h.txt:h]]", f"{home}/."))
        assert named_home.metadata == {"workspace": {}}  # the profile's own repository, as if unnamed
        with trio.fail_after(30):
            done = await swarm.wait("via-alias")
        ws = done.attempts[-1].workspace
        assert done.state is TaskState.DONE and ws is not None and ws["repo"] == str(other)
        tasks, _ = await swarm.list()
        assert sorted(t.id for t in tasks) == ["home-named", "via-alias"]  # nothing of the refused ones

        conn = ("--url", str(swarm.gateway_url), f"--token={swarm.token}")
        refused = await shoal(None, *conn, "submit", "x", "--repo", escape)
        assert refused.code == 2 and "metadata.workspace.repo: is not allowed" in refused.err
        accepted = await shoal(
            None, *conn, "submit", "[[write:c.txt:c]]", "--id", "cli", "--repo", str(other)
        )
        assert accepted.code == 0, accepted.err
        with trio.fail_after(30):
            assert (await swarm.wait("cli")).state is TaskState.DONE
    assert sh_git(other, "show", "shoal/cli:c.txt") == "c"
    assert sh_git(other, "show", "shoal/via-alias:l.txt") == "l"
    assert sh_git(outside, "branch", "--list", "shoal/*") == ""
    assert sh_git(outside, "worktree", "list").count("\n") == 1


async def test_a_profile_that_does_not_work_in_worktrees_refuses_a_tasks_repository(tmp_path: Path) -> None:
    home = make_repo(tmp_path / "home")
    cfg = coder_config(tmp_path, home)
    shared = attrs.evolve(cfg, workers=attrs.evolve(cfg.workers, profile="fake"))
    async with open_swarm(shared) as swarm:
        with pytest.raises(ValidationError) as info:
            await swarm.submit(in_repo("t", "x", home))
        assert info.value.field == "metadata.workspace.repo"
        assert "profile 'fake' does not work in git worktrees" in info.value.message
    with pytest.raises(WorkspaceError, match=r'workspace\.mode = "none"'):  # a worker of it, all the same
        await SharedDirectory().prepare(Assignment("t", 1, "x", metadata={"workspace": {"repo": str(home)}}))


async def test_the_worker_checks_the_repository_again_before_the_task_runs(tmp_path: Path) -> None:
    """The allow-list is checked by the worker too (the configuration may have changed since the
    submit): a repository no longer allowed fails the attempt and touches nothing; the worker's next
    task runs in the profile's repository."""
    home = make_repo(tmp_path / "home")
    other = make_repo(tmp_path / "other")
    pool = Workspaces(tmp_path / "state" / "workspaces")
    ws = pool("coder", ProfileConfig(argv=("sh",), workspace=WorkspaceConfig("worktree", str(home))), "w-1")
    assert isinstance(ws, RepoWorktrees)
    named = Assignment("t", 1, "x", metadata={"workspace": {"repo": str(other)}})
    with pytest.raises(WorkspaceError, match=r"metadata\.workspace\.repo .*: is not allowed"):
        await ws.prepare(named)
    assert await ws.finish(named, Outcome.FAILED) is None
    assert (
        sh_git(other, "branch", "--list", "shoal/*") == ""
        and sh_git(other, "worktree", "list").count("\n") == 1
    )
    await ws.prepare(task("next"))
    assert await ws.directory() == str(tmp_path / "state" / "workspaces" / "coder" / "1")
    record = await ws.finish(task("next"), Outcome.DONE)
    assert record is not None and record["repo"] == str(home)
    await ws.aclose()


def test_submit_repo_flag_is_an_absolute_path_for_the_service() -> None:
    args = cli.build_parser().parse_args(["submit", "fix it", "--repo", "src/app", "--branch", "fix/x"])
    [spec] = cli.build_tasks(args)
    assert spec["metadata"] == {"workspace": {"repo": os.path.abspath("src/app"), "branch": "fix/x"}}
    args = cli.build_parser().parse_args(["submit", "fix it", "--repo", "~/src/app"])
    assert cli.build_tasks(args)[0]["metadata"]["workspace"]["repo"] == "~/src/app"  # the service's ~
