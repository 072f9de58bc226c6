"""Plain-directory workspaces (actors/workcopy.py): a copy per worker, made afresh for each task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from test_worktree import task

from shoal.actors.tree import open_swarm
from shoal.actors.workcopy import CopyWorkspace, Workspaces
from shoal.actors.workspace import WorkspaceError
from shoal.protocols.config import ProfileConfig, WorkspaceConfig, config_from_dict, unstructure
from shoal.protocols.profiles import BUILTIN_PROFILES
from shoal.protocols.tasks import Outcome, TaskState


def source_dir(path: Path) -> Path:
    (path / "data").mkdir(parents=True)
    (path / "data" / "input.csv").write_text("a,b\n1,2\n")
    (path / "notes.txt").write_text("notes\n")
    return path


def copy_of(tmp_path: Path, source: Path, **ws: object) -> CopyWorkspace:
    pool = Workspaces(tmp_path / "state" / "workspaces")
    config = WorkspaceConfig("copy", str(source), **ws)  # type: ignore[arg-type]
    made = pool("lab", ProfileConfig(argv=("sh",), workspace=config), "w-1")
    assert isinstance(made, CopyWorkspace)
    return made


async def test_each_task_gets_a_fresh_copy_and_its_changes_are_recorded(tmp_path: Path) -> None:
    source = source_dir(tmp_path / "src")
    ws = copy_of(tmp_path, source)
    path = Path(await ws.directory() or "")
    assert (
        path.is_relative_to(tmp_path / "state" / "workspaces")
        and (path / "notes.txt").read_text() == "notes\n"
    )
    await ws.prepare(task("t1"))
    (path / "result.txt").write_text("42\n")
    (path / "notes.txt").write_text("more notes\n")
    (path / "data" / "input.csv").unlink()
    record = await ws.finish(task("t1"), Outcome.DONE)
    assert record is not None and record["files"] == ["result.txt", "notes.txt", "data/input.csv"]
    assert (record["added"], record["changed"], record["deleted"]) == (1, 1, 1)
    await ws.prepare(task("t2"))  # nothing leaks into the next task
    assert not (path / "result.txt").exists() and (path / "notes.txt").read_text() == "notes\n"
    assert (path / "data" / "input.csv").exists()
    assert sorted(p.name for p in source.rglob("*")) == ["data", "input.csv", "notes.txt"]  # untouched


async def test_bad_directories_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="is not a directory"):
        await copy_of(tmp_path, tmp_path / "missing").directory()
    big = tmp_path / "big"
    big.mkdir()
    fd = os.open(big / "blob", os.O_CREAT | os.O_WRONLY)
    os.ftruncate(fd, 3 * 1024 * 1024)  # sparse: 3 MiB on paper
    os.close(fd)
    with pytest.raises(WorkspaceError, match=r"holds over 2 MiB \(workspace\.copy_max_mb\)"):
        await copy_of(tmp_path, big, copy_max_mb=2).directory()


async def test_a_swarm_of_fake_agents_works_in_copies(tmp_path: Path) -> None:
    source = source_dir(tmp_path / "src")
    lab = {
        **unstructure(BUILTIN_PROFILES["fake"]),
        "workspace": {
            "mode": "copy",
            "repo": str(source),
            "artifacts": ["out/*.md"],
            "verify": "test -f out/r.md",
        },
    }
    cfg = config_from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "workers": {"profile": "lab", "profiles": {"lab": lab}},
            "scaling": {"min_workers": 2, "max_workers": 2},
        }
    )
    async with open_swarm(cfg) as swarm:
        await swarm.submit_many(
            [
                {"id": f"r{i}", "prompt": f"[[write:out/r.md:report {i}\\n]] [[write:notes.txt:{i}]]"}
                for i in range(4)
            ]
        )
        await swarm.submit({"id": "lazy", "prompt": "nothing written", "max_attempts": 1})
        with trio.fail_after(60):
            done = [await swarm.wait(f"r{i}") for i in range(4)]
            lazy = await swarm.wait("lazy")
        for i, t in enumerate(done):
            assert t.state is TaskState.DONE
            got = await swarm.artifacts(t.id, name="out/r.md")
            assert got["size"] == len(f"report {i}\n")
            ws = t.attempts[-1].workspace
            assert ws is not None and sorted(ws["files"]) == ["notes.txt", "out/r.md"]
        assert lazy.state is TaskState.DEAD and lazy.attempts[-1].reason == "verify failed (exit 1)"
    assert (source / "notes.txt").read_text() == "notes\n" and not (source / "out").exists()
