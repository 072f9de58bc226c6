"""A task that continues a dependency's agent conversation (`metadata.workspace.continue`, `shoal
submit --continue`): the dependency's attempt keeps its agent's session id and directory, the task
goes to the worker that ran it and resumes the conversation with the profile's `resume_args`; when it
cannot, it runs fresh and its attempt says why. Real git worktrees and the fake agent, which keeps its
conversations on disk and resumes them (`--resume ID`) as Claude Code does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_worktree import make_repo

from shoal.actors import cli
from shoal.actors.taskbook import TaskBook
from shoal.actors.tree import open_swarm
from shoal.actors.worker_resume import plan_resume
from shoal.protocols.config import (
    ModelsConfig,
    ProfileConfig,
    QueueConfig,
    SwarmConfig,
    config_from_dict,
    unstructure,
)
from shoal.protocols.errors import ValidationError
from shoal.protocols.profiles import BUILTIN_PROFILES, resume_argv
from shoal.protocols.tasks import Continuation, Outcome, TaskSpec, TaskState


def continuing_config(
    tmp_path: Path, repo: Path, *, workers: int = 1, base: str = "fake-stream", **profile: Any
) -> SwarmConfig:
    """A `coder` profile (the built-in `base`) in worktrees of `repo`, the fake agent keeping its
    conversations under tmp_path (as Claude Code does under its configuration directory)."""
    built = unstructure(BUILTIN_PROFILES[base])
    coder = {
        **built,
        "env": {**built.get("env", {}), "FAKE_CLAUDE_SESSIONS": str(tmp_path / "sessions")},
        "workspace": {"mode": "worktree", "repo": str(repo)},
        **profile,
    }
    return config_from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "workers": {"profile": "coder", "profiles": {"coder": coder}},
            "scaling": {"min_workers": workers, "max_workers": workers},
        }
    )


def cont(task_id: str, prompt: str, dep: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "prompt": prompt,
        "deps": [dep, *fields.pop("deps", [])],
        "metadata": {"workspace": {"continue": dep}},
        **fields,
    }


async def all_idle(swarm: Any, n: int) -> None:
    with swarm.events(("worker.state",)) as sub:
        while sum(w.state.value == "idle" for w in swarm.workers()) < n:
            await sub.receive()


# ---- through a swarm ------------------------------------------------------------------------------


async def test_a_task_resumes_its_dependencys_conversation_on_the_worker_that_ran_it(tmp_path: Path) -> None:
    """Two idle workers: the dependant goes to the one that ran its dependency (the other may not take
    it while that one refreshes), resumes that conversation (the agent recalls the dependency's prompt,
    the same session id goes on), and starts from the dependency's commit. The next task on that
    worker is fresh again: nothing of the resumed conversation leaks further."""
    repo = make_repo(tmp_path / "repo")
    async with open_swarm(continuing_config(tmp_path, repo, workers=2)) as swarm:
        with trio.fail_after(30):
            await all_idle(swarm, 2)
            await swarm.submit({"id": "plan", "prompt": "Remember PELICAN [[write:plan.md:the plan]]"})
            await swarm.submit(cont("build", "What was the word? [[recall]]", "plan"))
            build = await swarm.wait("build")
            plan = await swarm.get("plan")
        assert build.state is TaskState.DONE, build.attempts[-1]
        assert build.result == "Recalled: Remember PELICAN"
        [ran_plan], [ran_build] = plan.attempts, build.attempts
        assert ran_build.worker == ran_plan.worker
        session = ran_plan.usage["session_id"]
        assert ran_build.usage["session_id"] == session  # the same conversation goes on
        ws = ran_build.workspace
        assert ws is not None and ws["continued"] is True and ws["continue_from"] == "plan"
        assert ws["session"] == session and "continue_error" not in ws
        assert ran_plan.usage["session_cwd"] == ran_build.usage["session_cwd"]
        assert ws["base"] == (plan.attempts[0].workspace or {})["head"]  # from the dependency's work
        with trio.fail_after(30):  # the same worker's next task (the other is paused): a fresh conversation
            [other] = [w.id for w in swarm.workers() if w.id != ran_plan.worker]
            await swarm.pause(other)
            await swarm.submit({"id": "next", "prompt": "[[recall]]"})
            after = await swarm.wait("next")
        assert after.result == "Recalled: nothing" and after.attempts[0].worker == ran_plan.worker
        assert after.attempts[0].usage["session_id"] != session


async def test_a_resume_that_fails_is_not_retried_the_retry_runs_fresh(tmp_path: Path) -> None:
    """The dependency's conversation is gone (the agent's files were cleaned): the resumed agent says
    so and the attempt fails; the retry runs fresh, and its record says why."""
    repo = make_repo(tmp_path / "repo")
    async with open_swarm(continuing_config(tmp_path, repo)) as swarm:
        with trio.fail_after(30):
            await swarm.submit({"id": "plan", "prompt": "Remember PELICAN"})
            await swarm.wait("plan")
            for kept in (tmp_path / "sessions").rglob("*.jsonl"):
                kept.unlink()
            await swarm.submit(cont("build", "[[recall]]", "plan"))
            build = await swarm.wait("build")
    assert build.state is TaskState.DONE and build.result == "Recalled: nothing"
    first, second = build.attempts
    assert first.outcome is Outcome.FAILED and (first.workspace or {})["continued"] is True
    assert (second.workspace or {})["continued"] is False
    assert (second.workspace or {})[
        "continue_error"
    ] == "attempt 1 resumed it and ended failed: a retry starts afresh"


@pytest.mark.parametrize("taker", ["replacement", "other"])
async def test_when_the_dependencys_worker_is_gone_its_worktree_decides(tmp_path: Path, taker: str) -> None:
    """The worker that ran the dependency is killed: its target is released. Its replacement takes
    over its worktree, so it resumes the conversation there; the other worker, in another worktree,
    runs the task fresh and its attempt names both directories."""
    repo = make_repo(tmp_path / "repo")
    async with open_swarm(continuing_config(tmp_path, repo, workers=2)) as swarm:
        with trio.fail_after(30):
            await all_idle(swarm, 2)
            with swarm.events(("task.running",)) as sub:
                await swarm.submit({"id": "gate", "prompt": "gate [[think:3]]"})
                await sub.receive()
            other = (await swarm.get("gate")).attempts[0].worker
            await swarm.submit({"id": "plan", "prompt": "Remember PELICAN"})
            await swarm.submit(cont("build", "[[recall]]", "plan", deps=["gate"]))
            plan = await swarm.wait("plan")
            gone = plan.attempts[0].worker
            await swarm.kill(gone)
            with swarm.events(("worker.state",)) as sub:
                while (
                    not (new := [w for w in swarm.workers() if w.id not in (gone, other)])
                    or new[0].state.value != "idle"
                ):
                    await sub.receive()
            replacement = new[0].id
            await swarm.pause(other if taker == "replacement" else replacement)
            assert (await swarm.get("gate")).state is TaskState.RUNNING  # still: build waits for it
            build = await swarm.wait("build")
        ran = build.attempts[0]
        ws = ran.workspace or {}
        if taker == "replacement":
            assert ran.worker == replacement and build.result == "Recalled: Remember PELICAN"
            assert ws["continued"] is True
        else:
            assert ran.worker == other and build.result == "Recalled: nothing"
            kept = plan.attempts[0].usage["session_cwd"]
            assert ws["continued"] is False
            assert ws["continue_error"].startswith(f"the conversation was kept for {kept} by worker {gone}; ")


@pytest.mark.parametrize(
    ("base", "profile", "error"),
    [
        ("fake-stream", {"resume_args": []}, "profile 'coder' cannot resume a conversation"),
        ("fake", {}, "dependency 'plan' (attempt 1) reported no agent session id"),
    ],
)
async def test_a_task_that_cannot_continue_runs_fresh_and_says_why(
    tmp_path: Path, base: str, profile: dict[str, Any], error: str
) -> None:
    """A profile without resume arguments, or an agent whose dialect reports no session id (the TUI
    read from the screen): the task runs fresh and its attempt says why, never silently."""
    repo = make_repo(tmp_path / "repo")
    async with open_swarm(continuing_config(tmp_path, repo, base=base, **profile)) as swarm:
        with trio.fail_after(30):
            await swarm.submit({"id": "plan", "prompt": "Remember PELICAN"})
            await swarm.submit(cont("build", "go on [[echo]]", "plan"))
            build = await swarm.wait("build")
    assert build.state is TaskState.DONE and build.result == "go on"
    ws = build.attempts[0].workspace or {}
    assert ws["continued"] is False and ws["continue_from"] == "plan"
    assert ws["continue_error"].startswith(error), ws


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_the_session_is_kept_across_a_restart(
    tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """The session id and directory are part of the attempt as the store keeps it (SQLite, or a
    PostgreSQL database: a one-node cluster): a dependant submitted after a restart of Shoal still
    resumes the conversation (the worker takes over the worktree, so the directory is the same)."""
    repo = make_repo(tmp_path / "repo")
    cfg = continuing_config(tmp_path, repo)
    if store == "postgresql":
        url = request.getfixturevalue("pg_url")
        cfg = attrs.evolve(cfg, store=attrs.evolve(cfg.store, url=url))
    async with open_swarm(cfg) as swarm:
        with trio.fail_after(30):
            await swarm.submit({"id": "plan", "prompt": "Remember PELICAN"})
            await swarm.wait("plan")
    async with open_swarm(cfg) as swarm:
        plan = await swarm.get("plan")
        assert isinstance(plan.attempts[0].usage["session_id"], str)
        with trio.fail_after(30):
            await swarm.submit(cont("build", "[[recall]]", "plan"))
            build = await swarm.wait("build")
    assert build.result == "Recalled: Remember PELICAN", build.attempts
    assert (build.attempts[0].workspace or {})["continued"] is True


# ---- the pieces -----------------------------------------------------------------------------------


def book() -> TaskBook:
    return TaskBook(QueueConfig(), ModelsConfig())


def test_continue_must_name_one_of_the_tasks_dependencies() -> None:
    b = book()
    b.submit([TaskSpec(id="plan", prompt="p")], 0.0)
    with pytest.raises(ValidationError) as err:
        b.submit([TaskSpec(id="x", prompt="p", metadata={"workspace": {"continue": "plan"}})], 0.0)
    assert err.value.field == "metadata.workspace.continue" and "dependencies" in err.value.message
    bad = TaskSpec(id="y", prompt="p", deps=("plan",), metadata={"workspace": {"continue": "other"}})
    with pytest.raises(ValidationError) as err:
        b.submit([TaskSpec(id="ok", prompt="p"), bad], 0.0)
    assert err.value.field == "tasks[1].metadata.workspace.continue"
    for value in (3, "", "x" * 5000):
        with pytest.raises(ValidationError) as err:
            b.submit(
                [TaskSpec(id="z", prompt="p", deps=("plan",), metadata={"workspace": {"continue": value}})],
                0.0,
            )
        assert err.value.field == "metadata.workspace.continue"
    assert b.ids() == ["plan"]  # a refused batch adds nothing


def test_the_dependant_is_targeted_at_the_dependencys_worker_until_that_worker_goes() -> None:
    """When the dependency is done, the dependant (blocked or ready) is the worker's; the worker gone,
    any worker may take it, and its claim says what to resume (or why it cannot)."""
    b = book()
    b.submit(
        [
            TaskSpec(id="plan", prompt="p"),
            TaskSpec(id="gate", prompt="g"),
            TaskSpec(
                id="build", prompt="b", deps=("plan", "gate"), metadata={"workspace": {"continue": "plan"}}
            ),
        ],
        0.0,
    )
    att = b.claim("plan", "w1", None, 1.0)
    b.finish("plan", att.attempt, Outcome.DONE, 2.0, usage={"session_id": "s-1", "session_cwd": "/wt/0"})
    assert b.targets_of("w1") == ["build"]  # still blocked on gate, already the worker's
    att = b.claim("gate", "w2", None, 3.0)
    b.finish("gate", att.attempt, Outcome.DONE, 4.0)
    b.check()
    assert b.bucket_key("build") is not None and b.bucket_key("build")[0] == "w1"  # type: ignore[index]
    b.worker_gone("w1", 5.0)
    assert b.targets_of("w1") == [] and b.bucket_key("build")[0] is None  # type: ignore[index]
    claimed = b.claim("build", "w2", None, 6.0)
    assert claimed.continuation == Continuation("plan", "s-1", "/wt/0", "w1")
    b.check()


def test_plan_resume_resumes_only_in_the_conversations_directory() -> None:
    claude = BUILTIN_PROFILES["claude"]
    here = Continuation("plan", "s-1", "/wt/0", "w1")
    assert plan_resume(here, claude, "claude", "/wt/0") == (
        ["--resume", "s-1"],
        {"continue_from": "plan", "continued": True, "session": "s-1"},
    )
    args, record = plan_resume(here, claude, "claude", "/wt/1")
    assert args is None and record["continued"] is False
    assert record["continue_error"].startswith(
        "the conversation was kept for /wt/0 by worker w1; this worker"
    )
    args, record = plan_resume(
        Continuation("plan", error="dependency 'plan' is dead, not done"), claude, "c", "/"
    )
    assert args is None and record["continue_error"] == "dependency 'plan' is dead, not done"


def test_resume_args_default_to_claude_codes_for_a_claude_command_and_are_checked() -> None:
    mine = ProfileConfig(argv=("/opt/bin/claude", "-p"))
    assert resume_argv(mine, "abc") == ["--resume", "abc"]
    assert resume_argv(ProfileConfig(argv=("aider",)), "abc") is None
    assert resume_argv(ProfileConfig(argv=("aider",), resume_args=("--restore", "{session}.chat")), "x") == [
        "--restore",
        "x.chat",
    ]
    assert resume_argv(ProfileConfig(argv=("claude",), resume_args=()), "abc") is None
    with pytest.raises(ValidationError) as err:
        config_from_dict({"workers": {"profiles": {"a": {"argv": ["a"], "resume_args": ["--r", "{model}"]}}}})
    assert err.value.field == "workers.profiles['a'].resume_args[1]" and "{session}" in err.value.message


def test_cli_continue_adds_the_dependency_and_the_metadata() -> None:
    args = cli.build_parser().parse_args(["submit", "go on", "--continue", "plan", "--dep", "gate"])
    [spec] = cli.build_tasks(args)
    assert spec["deps"] == ["gate", "plan"] and spec["metadata"]["workspace"] == {"continue": "plan"}
