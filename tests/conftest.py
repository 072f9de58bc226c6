"""Shared fixtures: paths, leak checks for descriptors and child processes, a throwaway PostgreSQL."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterkit import PHASES
from pgcluster import PgCluster, PgClusterError, find_pg_bin

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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item (`item.stash[PHASES]`), so a fixture's teardown can
    tell whether its test failed (the cluster tests then print their nodes' logs and rows)."""
    report = yield
    item.stash.setdefault(PHASES, {})[report.when] = report
    return report


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


def claude_old_bin_path() -> str | None:
    """The older Claude Code CLI (2.0.x) the TUI tests also run against: $SHOAL_CLAUDE_BIN_OLD
    (scripts/test sets it), else the newest 2.0.x that scripts/test installed, else None."""
    configured = os.environ.get("SHOAL_CLAUDE_BIN_OLD")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = sorted(
        (ROOT / ".cache" / "claude-code").glob("2.0.*/node_modules/.bin/claude"),
        key=lambda p: tuple(int(x) for x in p.parts[-4].split(".") if x.isdigit()),
        reverse=True,
    )
    return next((str(p) for p in found if os.access(p, os.X_OK)), None)


def _require_cli(path: str | None, what: str, variable: str) -> str:
    if path is None:
        message = (
            f"the {what} is missing: scripts/test installs @anthropic-ai/claude-code into "
            f".cache/claude-code/ (needs npm), or set {variable} to a claude binary"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def claude_bin() -> str:
    """Path of the real Claude Code CLI. Missing: the test fails under CI=true, and skips elsewhere."""
    return _require_cli(claude_bin_path(), "real Claude Code CLI", "SHOAL_CLAUDE_BIN")


@pytest.fixture
def claude_old_bin() -> str:
    """Path of the older (2.0.x) Claude Code CLI; missing: fails under CI=true, skips elsewhere."""
    return _require_cli(claude_old_bin_path(), "older (2.0.x) Claude Code CLI", "SHOAL_CLAUDE_BIN_OLD")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (tests/pgcluster.py). Missing binaries FAIL
    the test, never skip it: scripts/test and .ci/run install Debian's postgresql."""
    try:
        bin_dir = find_pg_bin()
    except PgClusterError as e:
        pytest.fail(str(e))
    cluster = PgCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """URL of a fresh empty database on the session's cluster, one per test (isolation)."""
    return pg_cluster.create_database()
