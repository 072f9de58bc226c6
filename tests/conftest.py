"""Shared fixtures: paths, leak checks for descriptors and child processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_AGENT = ROOT / "examples" / "agents" / "fake_agent.py"
# Real Claude Code screens, copied with their provenance (tests/fixtures/claude-code/README.md).
FIXTURES = ROOT / "tests" / "fixtures" / "claude-code"


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def child_pids() -> set[int]:
    """Live (non-zombie and zombie) children of this process, from /proc."""
    me = os.getpid()
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out.add(int(entry))
    return out


@pytest.fixture
def fake_agent() -> list[str]:
    """argv prefix that runs the fake agent with this interpreter."""
    return [sys.executable, str(FAKE_AGENT)]


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves descriptors open or child processes behind."""
    fds_before = open_fds()
    kids_before = child_pids()
    yield
    leaked_fds = open_fds() - fds_before
    leaked_kids = child_pids() - kids_before
    assert not leaked_kids, f"child processes left behind: {sorted(leaked_kids)}"
    # descriptors: ignore ones trio's own machinery may lazily create (none expected), show targets
    details = {}
    for fd in leaked_fds:
        try:
            details[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    assert not details, f"descriptors left open: {details}"


def claude_bin_path() -> str | None:
    """The real Claude Code CLI: $SHOAL_CLAUDE_BIN (scripts/test sets it), else the newest one that
    scripts/test installed into .cache/claude-code/, else None."""
    configured = os.environ.get("SHOAL_CLAUDE_BIN")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = sorted((ROOT / ".cache" / "claude-code").glob("*/node_modules/.bin/claude"), reverse=True)
    return next((str(p) for p in found if os.access(p, os.X_OK)), None)


@pytest.fixture
def claude_bin() -> str:
    """Path of the real Claude Code CLI. Missing: the test fails under CI=true, and skips elsewhere."""
    path = claude_bin_path()
    if path is None:
        message = (
            "the real Claude Code CLI is missing: scripts/test installs @anthropic-ai/claude-code into "
            ".cache/claude-code/ (needs npm), or set SHOAL_CLAUDE_BIN to a claude binary"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path
