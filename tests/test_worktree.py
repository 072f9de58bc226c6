"""Git worktrees as workspaces (actors/worktree.py): real git, real repositories in temporary directories."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_cli import shoal

from shoal.actors import cli
from shoal.actors.cli import change_cell
from shoal.actors.taskbook import check_feedback
from shoal.actors.tree import open_swarm
from shoal.actors.workspace import SharedDirectory, WorkspaceError
from shoal.actors.worktree import (
    GitWorktree,
    Worktrees,
    branch_name,
    collect_artifacts,
    read_artifact,
    verify_in,
)
from shoal.protocols.config import (
    GatewayConfig,
    ProfileConfig,
    ScalingConfig,
    SwarmConfig,
    WorkspaceConfig,
    config_from_dict,
    patch_config,
    unstructure,
)
from shoal.protocols.errors import Conflict, NotFound, ValidationError
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import Assignment, Outcome, TaskState
from shoal.protocols.taskworkspace import TaskWorkspace, task_workspace, valid_branch

GIT_ID = ["-c", "user.name=Test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]


def sh_git(repo: Path, *args: str) -> str:
    """Synchronous git for the test's own set-up and checks (never on a running swarm's loop)."""
    done = subprocess.run(
        ["git", "-C", str(repo), *GIT_ID, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    sh_git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "hello\n"}).items():
        (path / name).write_text(text)
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "initial")
    return path


def task(task_id: str, attempt: int = 1, prompt: str = "do it") -> Assignment:
    return Assignment(task_id, attempt, prompt)


def coder_config(
    tmp_path: Path,
    repo: Path,
    *,
    base: str = "fake",
    min_workers: int = 0,
    max_workers: int = 1,
    gateway: bool = False,
    **workspace: Any,
) -> SwarmConfig:
    """A swarm whose `coder` profile (the built-in `base` one) works in worktrees of `repo`."""
    coder = {
        **unstructure(BUILTIN_PROFILES[base]),
        "workspace": {"mode": "worktree", "repo": str(repo), **workspace},
    }
    return config_from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "workers": {"profile": "coder", "profiles": {"coder": coder}},
            "scaling": {"min_workers": min_workers, "max_workers": max_workers},
            **({"gateway": {"enabled": True, "port": 0}} if gateway else {}),
        }
    )


def worktree(tmp_path: Path, repo: Path, worker: str = "w-1", base: str | None = None) -> GitWorktree:
    pool = Worktrees(tmp_path / "state" / "workspaces")
    ws = pool(
        "coder", ProfileConfig(argv=("sh",), workspace=WorkspaceConfig("worktree", str(repo), base)), worker
    )
    assert isinstance(ws, GitWorktree)
    return ws


async def test_each_task_gets_a_branch_its_change_committed_and_a_clean_tree_after(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    base = sh_git(repo, "rev-parse", "HEAD").strip()
    ws = worktree(tmp_path, repo)
    path = Path(await ws.directory() or "")
    assert path.is_relative_to(tmp_path / "state" / "workspaces") and (path / "README.md").exists()

    await ws.prepare(task("t1", prompt="Add a greeting\nwith details"))
    assert sh_git(path, "symbolic-ref", "--short", "HEAD").strip() == "shoal/t1"
    (path / "greeting.txt").write_text("hi\nthere\n")
    (path / "README.md").write_text("changed\n")
    record = await ws.finish(task("t1", prompt="Add a greeting\nwith details"), Outcome.DONE)
    assert record is not None
    assert record["branch"] == "shoal/t1" and record["base"] == base and record["committed"] is True
    assert sorted(record["files"]) == ["README.md", "greeting.txt"]
    assert (record["insertions"], record["deletions"]) == (3, 1)
    assert sh_git(repo, "rev-parse", "shoal/t1").strip() == record["head"] != base
    log = sh_git(repo, "log", "-1", "--format=%an%n%s%n%b", "shoal/t1")
    assert log.startswith("Shoal agent w-1\nAdd a greeting\n") and "Shoal task t1, attempt 1 (done)" in log
    assert not (path / "greeting.txt").exists() and (path / "README.md").read_text() == "hello\n"
    assert sh_git(repo, "rev-parse", "main").strip() == base  # the base is untouched

    await ws.prepare(task("t2"))  # isolation: the next task starts from the base, not from t1
    (path / "untracked-and-ignored.log").write_text("x")
    record2 = await ws.finish(task("t2"), Outcome.FAILED)
    assert record2 is not None and record2["files"] == ["untracked-and-ignored.log"]
    await ws.prepare(task("t2", attempt=2))
    assert sh_git(path, "symbolic-ref", "--short", "HEAD").strip() == "shoal/t2-2"
    assert not (path / "untracked-and-ignored.log").exists()
    empty = await ws.finish(task("t2", attempt=2), Outcome.DONE)
    assert empty is not None and empty["committed"] is False and empty["files"] == []
    assert empty["head"] == base


async def test_the_agents_own_commits_and_branch_switches_are_recorded(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    ws = worktree(tmp_path, repo)
    path = Path(await ws.directory() or "")
    await ws.prepare(task("t1"))
    (path / "a.txt").write_text("a\n")
    sh_git(path, "add", "a.txt")
    sh_git(path, "commit", "-q", "-m", "the agent's own commit")
    sh_git(path, "checkout", "-q", "-b", "elsewhere")
    (path / "b.txt").write_text("b\n")
    record = await ws.finish(task("t1"), Outcome.DONE)
    assert record is not None and record["agent_branch"] == "elsewhere"
    assert sorted(record["files"]) == ["a.txt", "b.txt"]
    assert sh_git(repo, "rev-parse", "elsewhere").strip() == record["head"]


async def test_a_merge_the_agent_left_unfinished_is_concluded_and_commit_hooks_do_not_run(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    hooks = repo / ".git" / "hooks"
    for hook in ("prepare-commit-msg", "post-commit"):  # docs: "the repository's hooks are not run"
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {tmp_path / 'hooks-ran'}\n")
        (hooks / hook).chmod(0o755)
    sh_git(repo, "checkout", "-q", "-b", "other")
    (repo / "README.md").write_text("other\n")
    sh_git(repo, "commit", "-q", "-am", "other side")
    sh_git(repo, "checkout", "-q", "main")
    ws = worktree(tmp_path, repo)
    path = Path(await ws.directory() or "")
    await ws.prepare(task("t1"))
    (path / "README.md").write_text("mine\n")
    sh_git(path, "commit", "-q", "--no-verify", "-am", "my side")
    with pytest.raises(subprocess.CalledProcessError):  # the merge conflicts; the agent leaves it so
        sh_git(path, "merge", "-q", "other")
    record = await ws.finish(task("t1"), Outcome.DONE)
    assert record is not None and record["committed"] is True
    parents = sh_git(repo, "rev-list", "--parents", "-1", record["head"]).split()[1:]
    assert parents[1] == sh_git(repo, "rev-parse", "other").strip()  # git commit made it a merge
    assert sh_git(path, "status", "--porcelain") == "" and (path / "README.md").read_text() == "hello\n"

    await ws.prepare(task("t2"))  # the usual path commits in git's plumbing: no commit hook runs
    (path / "new.txt").write_text("new\n")
    ran = tmp_path / "hooks-ran"
    ran.unlink(missing_ok=True)
    assert (await ws.finish(task("t2"), Outcome.DONE) or {})["committed"] is True
    assert not ran.exists()


async def test_a_tree_that_cannot_go_back_plainly_is_forced_back_to_the_base(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "build.txt": "tracked\n"})
    ws = worktree(tmp_path, repo)
    path = Path(await ws.directory() or "")
    await ws.prepare(task("t1"))
    (path / "build.txt").unlink()  # the agent stops tracking it and ignores it; its build writes one
    (path / ".gitignore").write_text("build.txt\n")
    (path / "build.txt").write_text("built\n")
    record = await ws.finish(task("t1"), Outcome.DONE)
    assert record is not None and sorted(record["files"]) == [".gitignore", "build.txt"]
    assert (path / "build.txt").read_text() == "tracked\n" and not (path / ".gitignore").exists()
    assert sh_git(path, "status", "--porcelain", "--ignored") == ""
    assert sh_git(path, "rev-parse", "HEAD").strip() == record["base"]


async def test_bad_repositories_and_bases_are_clear_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(WorkspaceError, match="is not a git repository"):
        await worktree(tmp_path, plain).directory()
    with pytest.raises(WorkspaceError, match="is not a directory"):
        await worktree(tmp_path, tmp_path / "missing").directory()
    empty = tmp_path / "empty"
    empty.mkdir()
    sh_git(empty, "init", "-q")
    with pytest.raises(WorkspaceError, match="has no commits"):
        await worktree(tmp_path, empty).directory()
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(WorkspaceError, match=r"workspace\.base 'nope' does not exist"):
        await worktree(tmp_path, repo, base="nope").directory()
    with pytest.raises(ValidationError, match="needs a repo"):
        config_from_dict(
            {"workers": {"profiles": {"x": {"argv": ["sh"], "workspace": {"mode": "worktree"}}}}}
        )


async def test_an_existing_branch_fails_the_task_and_touches_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sh_git(repo, "branch", "shoal/t1")
    before = sh_git(repo, "rev-parse", "shoal/t1")
    ws = worktree(tmp_path, repo)
    with pytest.raises(WorkspaceError, match="branch shoal/t1 already exists"):
        await ws.prepare(task("t1"))
    assert sh_git(repo, "rev-parse", "shoal/t1") == before


async def test_a_worktree_deleted_by_hand_is_reported_and_made_again(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    ws = worktree(tmp_path, repo)
    await ws.prepare(task("t1"))
    path = ws.path
    assert path is not None
    await trio.to_thread.run_sync(subprocess.run, ["rm", "-rf", str(path)])
    record = await ws.finish(task("t1"), Outcome.DONE)
    assert record is not None and "was deleted while the task ran" in record["error"]
    await ws.prepare(task("t2"))  # a fresh worktree in the same place
    assert (path / "README.md").exists() and sh_git(
        path, "symbolic-ref", "--short", "HEAD"
    ).strip() == "shoal/t2"


async def test_slots_are_reused_so_worktrees_do_not_pile_up(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    pool = Worktrees(tmp_path / "state" / "workspaces")
    profile = ProfileConfig(argv=("sh",), workspace=WorkspaceConfig("worktree", str(repo)))
    first, second = pool("coder", profile, "w-1"), pool("coder", profile, "w-2")
    one, two = await first.directory(), await second.directory()
    assert one != two
    await first.aclose()
    third = pool("coder", profile, "w-3")
    assert await third.directory() == one  # the freed slot, its worktree reused
    listed = sh_git(repo, "worktree", "list", "--porcelain").count("worktree ")
    assert listed == 3  # the repository itself and two worktrees
    assert isinstance(pool("plain", ProfileConfig(argv=("sh",), cwd="/tmp"), "w-4"), SharedDirectory)


async def test_sixteen_workers_starting_at_once_each_get_a_worktree(tmp_path: Path) -> None:
    """git serialises worktree creation per repository (index.lock): Shoal's per-repository lock does too."""
    repo = make_repo(tmp_path / "repo")
    pool = Worktrees(tmp_path / "state" / "workspaces")
    profile = ProfileConfig(argv=("sh",), workspace=WorkspaceConfig("worktree", str(repo)))
    spaces = [pool("coder", profile, f"w-{i}") for i in range(16)]
    paths: list[str | None] = []

    async def start(ws: GitWorktree) -> None:
        paths.append(await ws.directory())
        await ws.prepare(task(f"t-{ws.worker}"))

    async with trio.open_nursery() as nursery:
        for ws in spaces:
            assert isinstance(ws, GitWorktree)
            nursery.start_soon(start, ws)
    assert len(set(paths)) == 16
    assert len(sh_git(repo, "branch", "--list", "--format=%(refname)", "shoal/*").split()) == 16


def test_branch_names_are_valid_refs() -> None:
    assert branch_name(task("fix-1")) == "shoal/fix-1"
    assert branch_name(task("fix-1", attempt=3)) == "shoal/fix-1-3"
    for hostile in ("../../etc", "a..b", "x.lock", "-rf", "sp ace~^:?*[\\", ".hidden/", "ü/ö"):
        name = branch_name(task(hostile))
        done = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True)
        assert done.returncode == 0 and name.startswith("shoal/") and ".." not in name, (hostile, name)


async def test_a_swarm_of_shell_workers_keeps_each_tasks_change_on_its_own_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n"})
    cfg = coder_config(tmp_path, repo, base="shell", min_workers=2, max_workers=2, gateway=True)
    async with open_swarm(cfg) as swarm:
        ids = [f"task-{i}" for i in range(6)]
        for tid in ids:
            await swarm.submit({"id": tid, "prompt": f"echo {tid} > shared.txt"})
        with trio.fail_after(60):
            for tid in ids:
                done = await swarm.wait(tid)
                assert done.state is TaskState.DONE, done
        change = await swarm.diff("task-3")
        assert change["branch"] == "shoal/task-3" and change["files"] == ["shared.txt"]
        assert "-base\n+task-3\n" in change["diff"] and change["truncated"] is False
        assert (await swarm.diff("task-3", stat=True))["diff"].startswith(" shared.txt | 2 +-")
        with pytest.raises(NotFound):
            await swarm.diff("task-3", attempt=7)
        with pytest.raises(NotFound):
            await swarm.diff("no-such-task")
        conn = ("--url", str(swarm.gateway_url), f"--token={swarm.token}")
        shown = await shoal(None, *conn, "diff", "task-1")
        assert shown.code == 0, shown.err
        assert (
            shown.out.startswith("task task-1, attempt 1: branch shoal/task-1 (") and "+task-1" in shown.out
        )
        missing = await shoal(None, *conn, "diff", "nope")
        assert missing.code == 3 and "nope" in missing.err
        as_json = (await shoal(None, *conn, "diff", "task-1", "--json")).json()
        assert as_json["head"] == sh_git(repo, "rev-parse", "shoal/task-1").strip()
    for tid in ids:
        assert sh_git(repo, "show", f"shoal/{tid}:shared.txt") == f"{tid}\n"
    assert (repo / "shared.txt").read_text() == "base\n" and sh_git(repo, "status", "--porcelain") == ""
    async with open_swarm(attrs.evolve(cfg, scaling=ScalingConfig(), gateway=GatewayConfig())) as again:
        kept = (await again.get("task-2")).attempts[-1].workspace  # stored with the attempt
        assert kept is not None and kept["branch"] == "shoal/task-2" and kept["insertions"] == 1


async def test_a_task_without_a_worktree_has_no_diff_to_show(tmp_path: Path) -> None:
    cfg = config_from_dict({"state_dir": str(tmp_path / "state"), "scaling": {"max_workers": 1}})
    async with open_swarm(cfg) as swarm:
        await swarm.submit({"id": "plain", "prompt": "hello"})
        with trio.fail_after(30):
            assert (await swarm.wait("plain")).state is TaskState.DONE
        with pytest.raises(Conflict, match=r'workspace\.mode is not "worktree"'):
            await swarm.diff("plain")


async def test_a_dependant_starts_from_its_dependencies_branches(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n"})
    ws = worktree(tmp_path, repo)
    path = Path(await ws.directory() or "")
    heads: dict[str, str] = {}
    for tid, name, text in (
        ("a", "a.txt", "from a\n"),
        ("b", "b.txt", "from b\n"),
        ("x", "shared.txt", "x\n"),
    ):
        await ws.prepare(task(tid))
        (path / name).write_text(text)
        record = await ws.finish(task(tid), Outcome.DONE)
        assert record is not None
        heads[tid] = record["head"]

    one = Assignment("after-a", 1, "go on", dep_heads=(("a", heads["a"]),))
    await ws.prepare(one)
    assert (path / "a.txt").read_text() == "from a\n"
    (path / "c.txt").write_text("c\n")
    record = await ws.finish(one, Outcome.DONE)
    assert record is not None and record["base"] == heads["a"] and record["files"] == ["c.txt"]

    both = Assignment("after-ab", 1, "both", dep_heads=(("a", heads["a"]), ("b", heads["b"])))
    await ws.prepare(both)
    assert (path / "a.txt").exists() and (path / "b.txt").exists()
    record = await ws.finish(both, Outcome.DONE)
    assert record is not None and record["files"] == []  # the merge is its base, not its change

    (path / "shared.txt").write_text("dirty")  # a conflict must leave nothing behind
    clash = Assignment("clash", 1, "x", dep_heads=(("x", heads["x"]), ("y", _commit_on(repo, "shared.txt"))))
    with pytest.raises(WorkspaceError, match=r"dependencies x and y conflict in shared\.txt"):
        await ws.prepare(clash)
    assert sh_git(path, "status", "--porcelain") == ""
    with pytest.raises(WorkspaceError, match="dependency gone's commit 0123456789ab is not in"):
        await ws.prepare(Assignment("lost", 1, "x", dep_heads=(("gone", "0123456789ab" * 3 + "0123"),)))


def _commit_on(repo: Path, name: str) -> str:
    """A commit beside main that changes `name` its own way (a dependency that will conflict)."""
    sh_git(repo, "checkout", "-q", "-b", f"side-{name}")
    (repo / name).write_text("the other side\n")
    sh_git(repo, "commit", "-qam", "other side")
    head = sh_git(repo, "rev-parse", "HEAD").strip()
    sh_git(repo, "checkout", "-q", "main")
    return head


async def test_fake_agents_build_on_each_others_branches_in_a_swarm(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cfg = coder_config(tmp_path, repo, min_workers=2, max_workers=2)
    async with open_swarm(cfg) as swarm:
        await swarm.submit_many(
            [
                {"id": "api", "prompt": "write the api [[write:api.py:def api(): ...\\n]]"},
                {"id": "ui", "prompt": "write the ui [[write:ui.py:import api\\n]]"},
                {"id": "glue", "prompt": "[[append:api.py:# used by ui\\n]] glue", "deps": ["api", "ui"]},
            ]
        )
        with trio.fail_after(60):
            for tid in ("api", "ui", "glue"):
                assert (await swarm.wait(tid)).state is TaskState.DONE
        glue = await swarm.diff("glue")
        assert glue["files"] == ["api.py"] and "+# used by ui" in glue["diff"]
    assert sh_git(repo, "show", "shoal/glue:ui.py") == "import api\n"
    assert sh_git(repo, "show", "shoal/glue:api.py") == "def api(): ...\n# used by ui\n"
    assert "api.py" not in sh_git(repo, "ls-tree", "--name-only", "main")


async def test_merging_a_tasks_change(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "v = 1\n", "notes.txt": "n\n"})
    sh_git(repo, "branch", "release")
    cfg = coder_config(tmp_path, repo, min_workers=1, max_workers=1, gateway=True)
    async with open_swarm(cfg) as swarm:
        await swarm.submit_many(
            [
                {"id": "bump", "prompt": "Bump v\n[[write:app.py:v = 2\\n]]"},
                {"id": "clash", "prompt": "Set v to 3 [[write:app.py:v = 3\\n]]", "deps": ["bump"]},
                {"id": "note", "prompt": "Add a note [[append:notes.txt:more\\n]]"},
            ]
        )
        with trio.fail_after(60):
            for tid in ("bump", "clash", "note"):
                assert (await swarm.wait(tid)).state is TaskState.DONE
        with swarm.events(("task.merged",)) as merged_events:
            # into a branch checked out nowhere: a scratch worktree, then the branch moves
            done = await swarm.merge("bump", into="release")
            assert done["merged"] and done["into"] == "release" and not done["squash"]
            assert sh_git(repo, "show", "release:app.py") == "v = 2\n"
            assert sh_git(repo, "log", "-1", "--format=%s%n%b", "release").startswith("Bump v\n")
            assert (repo / "app.py").read_text() == "v = 1\n"  # the user's checkout (main) untouched
            assert sh_git(repo, "worktree", "list").count("shoal-merge-") == 0
            assert (await merged_events.receive()).data["task_id"] == "bump"

        # into the checked-out branch: merged there, the user's working tree follows; squashed: one parent
        squashed = await swarm.merge("note", squash=True)
        assert squashed["into"] == "main" and squashed["squash"]
        assert (repo / "notes.txt").read_text() == "n\nmore\n"
        assert len(sh_git(repo, "log", "-1", "--format=%p", "main").split()) == 1
        again = await swarm.merge("note", squash=False)
        assert again["merged"] is True  # a squash leaves no ancestry: the branch itself merges cleanly

        # a dirty checkout is refused, touching nothing
        (repo / "notes.txt").write_text("local edit\n")
        before = sh_git(repo, "rev-parse", "main")
        with pytest.raises(Conflict, match=r"checked out in .* with uncommitted changes"):
            await swarm.merge("bump")
        assert sh_git(repo, "rev-parse", "main") == before
        sh_git(repo, "checkout", "-q", "--", "notes.txt")

        # a conflict: main moved on; nothing changes, the file is named
        (repo / "app.py").write_text("v = 10\n")
        sh_git(repo, "commit", "-qam", "main moves on")
        before = sh_git(repo, "rev-parse", "main")
        with pytest.raises(Conflict, match=r"merging into main conflicts in app\.py; nothing was changed"):
            await swarm.merge("clash")
        assert sh_git(repo, "rev-parse", "main") == before and sh_git(repo, "status", "--porcelain") == ""
        assert not (repo / ".git" / "MERGE_HEAD").exists()

        # already in: nothing to do
        assert (await swarm.merge("bump", into="release"))["already"] is True
        with pytest.raises(Conflict, match="branch 'nope' does not exist"):
            await swarm.merge("bump", into="nope")
        with pytest.raises(Conflict, match="is not a valid branch name"):
            await swarm.merge("bump", into="-x..y")

        conn = ("--url", str(swarm.gateway_url), f"--token={swarm.token}")
        sh_git(repo, "branch", "next", "release")
        shown = await shoal(None, *conn, "merge", "note", "--into", "next")
        assert shown.code == 0 and shown.out.startswith("shoal/note merged into next: "), shown.err
        refused = await shoal(None, *conn, "merge", "clash")
        assert refused.code == 4 and "conflicts in app.py" in refused.err


def _verified_swarm(tmp_path: Path, repo: Path, verify: str, **workspace: Any) -> Any:
    cfg = coder_config(tmp_path, repo, min_workers=2, max_workers=2, verify=verify, **workspace)
    return patch_config(cfg, {"queue": {"retry_backoff": {"min_s": 0.01, "max_s": 0.02}}})


CHECK = 'echo "checking: $(wc -l < log.txt) line(s)"; test "$(wc -l < log.txt)" -ge 2'


async def test_a_failed_check_fails_the_attempt_and_the_retry_goes_on_from_its_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with open_swarm(_verified_swarm(tmp_path, repo, CHECK)) as swarm:
        await swarm.submit({"id": "t", "prompt": "log it [[append:log.txt:one more\\n]]", "max_attempts": 3})
        with trio.fail_after(60):
            task = await swarm.wait("t")
        assert task.state is TaskState.DONE and len(task.attempts) == 2, task
        first, second = task.attempts
        assert first.outcome is Outcome.FAILED and first.reason == "verify failed (exit 1)"
        assert first.workspace is not None and first.workspace["verify"]["passed"] is False
        assert "checking: 1 line(s)" in first.workspace["verify"]["output_tail"]
        assert second.workspace is not None and second.workspace["verify"]["passed"] is True
        assert second.workspace["branch"] == "shoal/t-2"
        assert second.workspace["base"] == first.workspace["base"]  # the diff covers the whole task
        change = await swarm.diff("t")
        assert "+one more\n+one more\n" in change["diff"]
    assert sh_git(repo, "show", "shoal/t-2:log.txt") == "one more\none more\n"
    cells = [change_cell(a.workspace) for a in task.attempts]
    assert cells == ["shoal/t +1 -0 ✗ check", "shoal/t-2 +2 -0 ✓ check"]


async def test_a_fresh_retry_starts_again_from_the_base(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cfg = _verified_swarm(tmp_path, repo, CHECK, verify_retry="fresh")
    async with open_swarm(cfg) as swarm:
        await swarm.submit({"id": "t", "prompt": "log it [[append:log.txt:one more\\n]]", "max_attempts": 2})
        with trio.fail_after(60):
            task = await swarm.wait("t")
        assert (
            task.state is TaskState.DEAD
            and [a.reason for a in task.attempts] == ["verify failed (exit 1)"] * 2
        )
    assert sh_git(repo, "show", "shoal/t-2:log.txt") == "one more\n"


async def test_a_dependant_starts_only_from_a_verified_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with open_swarm(_verified_swarm(tmp_path, repo, CHECK)) as swarm:
        await swarm.submit_many(
            [
                {"id": "base", "prompt": "[[append:log.txt:a\\n]]"},
                {"id": "next", "prompt": "[[append:log.txt:b\\n]]", "deps": ["base"]},
            ]
        )
        with trio.fail_after(60):
            done = await swarm.wait("next")
        assert done.state is TaskState.DONE and len(done.attempts) == 1  # started from base's 2nd try
    assert sh_git(repo, "show", "shoal/next:log.txt") == "a\na\nb\n"


def test_the_retry_prompt_says_what_the_check_said() -> None:
    record = {"verify": {"command": "pytest -q", "exit_code": 1, "output_tail": "FAILED test_x\n"}}
    text = check_feedback("Fix the login", record)
    assert text.startswith("Fix the login\n\nThe check `pytest -q` failed (exit 1)")
    assert "FAILED test_x" in text and text.endswith("Fix it so that the check passes.")


@pytest.mark.parametrize("fresh", [True, False])
async def test_each_task_in_a_worktree_starts_a_fresh_conversation(tmp_path: Path, fresh: bool) -> None:
    repo = make_repo(tmp_path / "repo")
    cfg = coder_config(tmp_path, repo, min_workers=1, max_workers=1, fresh_context=fresh)
    async with open_swarm(cfg) as swarm:
        pids = []
        for tid in ("one", "two"):
            await swarm.submit({"id": tid, "prompt": tid})
            with trio.fail_after(30):
                assert (await swarm.wait(tid)).state is TaskState.DONE
                with swarm.events(("worker.state",)) as sub:
                    while not [w for w in swarm.workers() if w.state.value == "idle"]:
                        await sub.receive()
            pids.append(swarm.workers()[0].pid)
    assert (pids[0] != pids[1]) is fresh  # a new process is a new conversation


async def test_finished_branches_are_pushed_when_asked(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    remote = tmp_path / "remote.git"
    sh_git(tmp_path, "init", "-q", "--bare", str(remote))
    sh_git(repo, "remote", "add", "origin", str(remote))
    pool = Worktrees(tmp_path / "state" / "workspaces")
    ws = pool(
        "coder",
        ProfileConfig(argv=("sh",), workspace=WorkspaceConfig("worktree", str(repo), push="origin")),
        "w-1",
    )
    assert isinstance(ws, GitWorktree)
    path = Path(await ws.directory() or "")
    await ws.prepare(task("t1"))
    (path / "a.txt").write_text("a\n")
    record = await ws.finish(task("t1"), Outcome.DONE)
    assert record is not None and record["pushed"] == "origin"
    assert sh_git(remote, "rev-parse", "shoal/t1").strip() == record["head"]

    sh_git(repo, "remote", "set-url", "origin", str(tmp_path / "nowhere.git"))
    await ws.prepare(task("t2"))
    (path / "b.txt").write_text("b\n")
    record = await ws.finish(task("t2"), Outcome.DONE)
    assert record is not None and record["pushed"] is None and "nowhere.git" in record["push_error"]
    assert sh_git(repo, "rev-parse", "shoal/t2").strip() == record["head"]  # kept locally all the same


async def test_listing_and_pruning_worktrees_and_task_branches(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cfg = coder_config(tmp_path, repo, min_workers=2, max_workers=2, gateway=True)
    async with open_swarm(cfg) as swarm:
        await swarm.submit_many([{"id": f"t{i}", "prompt": f"[[write:f{i}.txt:{i}]]"} for i in range(3)])
        with trio.fail_after(60):
            for i in range(3):
                assert (await swarm.wait(f"t{i}")).state is TaskState.DONE
        listed = await swarm.workspaces()
        assert len(listed["worktrees"]) == 2 and all(w["worker"] for w in listed["worktrees"])
        assert sorted(b["branch"] for b in listed["branches"]) == ["shoal/t0", "shoal/t1", "shoal/t2"]
        await swarm.merge("t1", into="main")
        pruned = await swarm.prune_workspaces(base="main")  # merged ones only; worktrees in use stay
        assert pruned == {
            "removed_worktrees": [],
            "deleted_branches": [f"{repo}:shoal/t1"],
            "removed_artifacts": [],
        }
        conn = ("--url", str(swarm.gateway_url), f"--token={swarm.token}")
        shown = await shoal(None, *conn, "workspaces", COLUMNS="250")
        assert shown.code == 0 and "shoal/t0" in shown.out and "shoal/t2" in shown.out, shown.err
        assert "shoal/t1" not in shown.out
        bad = await shoal(None, *conn, "workspaces", "prune", "--older-than", "soon")
        assert bad.code == 2 and "--older-than wants a duration" in bad.err
    idle = attrs.evolve(cfg, scaling=ScalingConfig(), gateway=GatewayConfig())
    async with open_swarm(idle) as swarm:  # no worker now: every worktree is unused
        pruned = await swarm.prune_workspaces(older_than_s=0)
        assert len(pruned["removed_worktrees"]) == 2
        assert sorted(pruned["deleted_branches"]) == [f"{repo}:shoal/t0", f"{repo}:shoal/t2"]
        assert await swarm.workspaces() == {"worktrees": [], "branches": []}
    assert sh_git(repo, "worktree", "list").count("\n") == 1  # the repository's own checkout only
    assert (repo / "f1.txt").read_text() == "1"  # what was merged stays merged


def test_artifacts_are_copied_and_what_cannot_be_is_reported(tmp_path: Path) -> None:
    tree, into = tmp_path / "tree", tmp_path / "kept"
    (tree / "out").mkdir(parents=True)
    (tree / "report.md").write_text("# findings\n")
    (tree / "out" / "a.json").write_text("{}")
    (tree / "out" / "b.json").write_text("[]")
    (tree / "out" / "sub.json").mkdir()  # a directory matching the glob: not a file to keep
    (tmp_path / "secret").write_text("outside")
    (tree / "out" / "leak.json").symlink_to(tmp_path / "secret")
    with open(tree / "huge.bin", "wb") as f:  # 2 GiB, sparse: over the cap, never copied
        f.truncate(2 * 1024**3)
    got = collect_artifacts(tree, ["report.md", "out/*.json", "huge.bin", "nothing/*"], into, 100 * 2**20)
    assert got["artifacts"] == [
        {"name": "report.md", "size": 11},
        {"name": "out/a.json", "size": 2},
        {"name": "out/b.json", "size": 2},
    ]
    assert got["artifacts_missing"] == ["nothing/*"]
    assert {s["name"]: s["reason"] for s in got["artifacts_skipped"]} == {
        "out/leak.json": "points outside the worktree",
        "huge.bin": "2048.0 MiB, over the 100 MiB cap",
    }
    assert (into / "out" / "a.json").read_text() == "{}" and not (into / "huge.bin").exists()
    with pytest.raises(WorkspaceError, match=r"kept no artifact '\.\./secret'"):
        read_artifact(tmp_path, "t", 1, "../secret", 2**20)


def test_a_copy_that_fails_for_want_of_space_is_reported_and_fails_nothing(tmp_path: Path) -> None:
    """A real EFBIG (the file size limit stands in for a full disk): the copy is reported, the rest kept."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "small.txt").write_text("s")
    (tree / "big.txt").write_bytes(b"x" * 200_000)
    code = f"""
import json, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from shoal.actors.worktree import collect_artifacts
print(json.dumps(collect_artifacts(Path({str(tree)!r}), ["*.txt"], Path({str(tmp_path / "kept")!r}), 10**9)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert got["artifacts"] == [{"name": "small.txt", "size": 1}]
    assert got["artifacts_skipped"][0]["name"] == "big.txt"
    assert got["artifacts_skipped"][0]["reason"].startswith("cannot copy: File too large")
    assert not (tmp_path / "kept" / "big.txt").exists()  # no half-copied file left


async def test_a_swarm_keeps_each_attempts_artifacts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cfg = coder_config(tmp_path, repo, gateway=True, artifacts=["report.md", "out/*.json"])
    async with open_swarm(cfg) as swarm:
        prompt = "research [[write:report.md:# Findings\\nall good\\n]] [[write:out/data.json:{}]]"
        await swarm.submit({"id": "r", "prompt": prompt})
        with trio.fail_after(30):
            assert (await swarm.wait("r")).state is TaskState.DONE
        listed = await swarm.artifacts("r")
        assert listed["artifacts"] == [
            {"name": "report.md", "size": 20},
            {"name": "out/data.json", "size": 2},
        ]
        got = await swarm.artifacts("r", name="report.md")
        assert base64.b64decode(got["data"]) == b"# Findings\nall good\n"
        with pytest.raises(Conflict, match=r"kept no artifact 'nope\.md'"):
            await swarm.artifacts("r", name="nope.md")
        conn = ("--url", str(swarm.gateway_url), f"--token={swarm.token}")
        shown = await shoal(None, *conn, "artifacts", "r")
        assert shown.code == 0 and "report.md  20 bytes" in shown.out, shown.err
        fetched = await shoal(None, *conn, "artifacts", "r", "--get", "out/data.json")
        assert fetched.code == 0 and fetched.out == "{}"
        ghost = tmp_path / "state" / "artifacts" / b"ghost".hex() / "1"
        ghost.mkdir(parents=True)
        pruned = await swarm.prune_workspaces()
        assert pruned["removed_artifacts"] == ["ghost"] and not ghost.exists()
        assert (await swarm.artifacts("r"))["artifacts"]  # a kept task's artifacts stay


def test_a_tasks_own_workspace_options_are_checked_naming_the_field() -> None:
    assert task_workspace({}) is None
    own = task_workspace(
        {"workspace": {"branch": "feature/login", "artifacts": ["out/*.json"], "required": True}}
    )
    assert own == TaskWorkspace(branch="feature/login", artifacts=("out/*.json",), required=True)
    bad = {
        "branch": ("-rf", "metadata.workspace.branch"),
        "base": ("a..b", "metadata.workspace.base"),
        "artifacts": (["../../etc/passwd"], "metadata.workspace.artifacts[0]"),
        "required": ("yes", "metadata.workspace.required"),
        "verify": ("", "metadata.workspace.verify"),
        "repo": ("src/app", "metadata.workspace.repo"),
    }
    for key, (value, field) in bad.items():
        with pytest.raises(ValidationError) as info:
            task_workspace({"workspace": {key: value}})
        assert info.value.field == field, key
    with pytest.raises(ValidationError, match="must be an object"):
        task_workspace({"workspace": "main"})


def test_branch_names_are_checked_as_git_checks_them() -> None:
    names = [
        *("main", "feature/login", "a.b", "x-1", "-rf", "a..b", "a b", "a~1", "x.lock", "a/.b", "a//b"),
        *(".hidden", "end/", "end.", "a@{1}", "a:b", "a?b", "a*b", "a[b", "a\\b", "ü/ö", "v1.2/fix"),
    ]  # ("@" is left out: git's --branch reads it as the current branch)
    for name in names:
        git_says = subprocess.run(
            ["git", "check-ref-format", "--branch", name], capture_output=True
        ).returncode
        assert valid_branch(name) is (git_says == 0 and not name.startswith("-")), name


async def test_a_task_names_its_base_branch_artifacts_and_check(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sh_git(repo, "checkout", "-q", "-b", "release")
    (repo / "version.txt").write_text("2.0\n")
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-qm", "release 2.0")
    release = sh_git(repo, "rev-parse", "HEAD").strip()
    sh_git(repo, "checkout", "-q", "main")
    cfg = coder_config(tmp_path, repo, max_workers=1)
    async with open_swarm(cfg) as swarm:
        own = {
            "base": "release",
            "branch": "fix/notes",
            "artifacts": ["notes.md"],
            "verify": "grep -q 2.0 notes.md",
        }
        await swarm.submit(
            {"id": "notes", "prompt": "[[write:notes.md:for 2.0\\n]]", "metadata": {"workspace": own}}
        )
        await swarm.submit(
            {
                "id": "needs",
                "prompt": "[[write:other.md:x]]",
                "max_attempts": 1,
                "metadata": {"workspace": {"artifacts": ["out/*.json"], "required": True}},
            }
        )
        with pytest.raises(ValidationError) as info:
            await swarm.submit({"prompt": "x", "metadata": {"workspace": {"branch": "a..b"}}})
        assert info.value.field == "metadata.workspace.branch"
        with trio.fail_after(60):
            done = await swarm.wait("notes")
            failed = await swarm.wait("needs")
        ws = done.attempts[-1].workspace
        assert done.state is TaskState.DONE and ws is not None
        assert ws["branch"] == "fix/notes" and ws["base"] == release and ws["verify"]["passed"] is True
        assert ws["artifacts"] == [{"name": "notes.md", "size": 8}]
        assert failed.state is TaskState.DEAD
        assert failed.attempts[-1].reason == "required artifact(s) missing: out/*.json"
    assert sh_git(repo, "show", "fix/notes:version.txt") == "2.0\n"


def test_submit_flags_carry_the_tasks_workspace_options() -> None:
    args = cli.build_parser().parse_args(
        ["submit", "fix it", "--branch", "fix/x", "--artifact", "a.md", "--artifact", "b/*.json",
         "--require-artifacts", "--verify", "pytest -q"]
    )  # fmt: skip
    [task] = cli.build_tasks(args)
    assert task["metadata"] == {
        "workspace": {
            "branch": "fix/x",
            "artifacts": ["a.md", "b/*.json"],
            "required": True,
            "verify": "pytest -q",
        }
    }


async def test_a_check_past_its_timeout_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    config = WorkspaceConfig(verify="sleep 60 & echo $! > bg.pid; sleep 60; echo never", verify_timeout_s=0.5)
    check = await verify_in(tmp_path, config, task("slow"))
    assert check is not None and check["timed_out"] is True and check["passed"] is False
    assert check["exit_code"] is None and "never" not in check["output_tail"]
    pid = int((tmp_path / "bg.pid").read_text())
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone and reaped
    try:  # the background sleep was in the check's process group: SIGKILL took it too
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_after_a_crash_of_shoal_the_worktrees_are_reused_and_reset(tmp_path: Path) -> None:
    """Shoal killed mid-task leaves a worktree half edited: the next start reuses it (no new worktree
    add) and resets it before the task runs again, so nothing of the interrupted attempt leaks."""
    repo = make_repo(tmp_path / "repo")
    cfg = coder_config(tmp_path, repo, min_workers=1, max_workers=1)
    async with open_swarm(cfg) as swarm:
        await swarm.submit({"id": "first", "prompt": "[[write:a.txt:a]]"})
        with trio.fail_after(30):
            assert (await swarm.wait("first")).state is TaskState.DONE
    [slot] = [p for p in (tmp_path / "state" / "workspaces" / "coder").iterdir()]
    (slot / "half-done.txt").write_text("left by an attempt Shoal never finished")
    (slot / "README.md").write_text("edited, never committed")
    sh_git(slot, "checkout", "-q", "-b", "shoal/interrupted")
    async with open_swarm(cfg) as swarm:
        await swarm.submit({"id": "second", "prompt": "[[write:b.txt:b]]"})
        with trio.fail_after(30):
            done = await swarm.wait("second")
        assert done.state is TaskState.DONE
        ws = done.attempts[-1].workspace
        assert ws is not None and ws["files"] == ["b.txt"]  # nothing of the interrupted attempt
        assert len((await swarm.workspaces())["worktrees"]) == 1  # the same worktree, reused
    assert sh_git(repo, "show", "shoal/second:README.md") == "hello\n"
    assert "half-done.txt" not in sh_git(repo, "ls-tree", "--name-only", "shoal/second")
