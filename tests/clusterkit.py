"""Shoal nodes of a cluster as real `shoal serve` processes on one PostgreSQL database (tests and
benchmarks): each node its own state directory, gateway port and workers; one shared token file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from shoal.actors.auth import read_endpoint
from shoal.protocols.profiles import FAKE_AGENT

SHOAL = [sys.executable, "-m", "shoal.actors.cli"]


def config_text(*, max_workers: int, min_workers: int = 0, lease_s: float = 3.0, extra: str = "") -> str:
    """A node's TOML: the fake agent, fast scaling, a short lease (tests wait it out; 3 s, so a node
    starved of CPU on a loaded machine still renews it in time)."""
    argv = [sys.executable, "-S", FAKE_AGENT, "--model", "{model}"]
    quoted = ", ".join(f'"{a}"' for a in argv)
    return f"""
[workers]
profile = "fake-fast"

[workers.profiles.fake-fast]
argv = [{quoted}]
dialect = "prompt"
transport = "pty"
startup_timeout_s = 10.0
stop_timeout_s = 2.0
options = {{ submit_delay_ms = 0 }}

[scaling]
min_workers = {min_workers}
max_workers = {max_workers}
tick_s = 0.05

[node]
lease_s = {lease_s}
heartbeat_s = {lease_s / 4}
poll_s = 1.0
{extra}
"""


@attrs.define
class Node:
    """One `shoal serve` of the cluster."""

    node_id: str
    proc: subprocess.Popen[str]
    state: Path
    log_path: Path
    url: str = ""
    output: list[str] = attrs.field(factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") + "".join(self.output)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        with trio.fail_after(timeout):
            return await trio.to_thread.run_sync(self.proc.wait, abandon_on_cancel=True)


def start_node(
    root: Path,
    store_url: str,
    node_id: str,
    *,
    max_workers: int,
    min_workers: int = 0,
    lease_s: float = 3.0,
    extra: str = "",
    args: tuple[str, ...] = (),
) -> Node:
    """Start a node (not yet known to be serving: `await ready(node)`)."""
    state = root / node_id
    state.mkdir(parents=True, exist_ok=True)
    config = root / f"{node_id}.toml"
    config.write_text(
        config_text(max_workers=max_workers, min_workers=min_workers, lease_s=lease_s, extra=extra)
    )
    log_path = root / f"{node_id}.log"
    log = open(log_path, "w")  # noqa: SIM115 - the child holds it; closed when the node is reaped
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL")}
    proc = subprocess.Popen(
        [
            *SHOAL,
            "serve",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            "--store",
            store_url,
            "--node-id",
            node_id,
            "--port",
            "0",
            "--no-dashboard",
            "--token-file",
            str(root / "token"),
            "--log-format",
            "json",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    log.close()
    return Node(node_id, proc, state, log_path)


async def ready(node: Node, timeout: float = 60.0) -> Node:
    """Wait for the node's banner (its gateway is listening); fail with its log if it exits."""
    seen = threading.Event()

    def drain() -> None:
        assert node.proc.stdout is not None
        for line in node.proc.stdout:
            node.output.append(line)
            if "gateway:" in line:
                seen.set()
        seen.set()

    threading.Thread(target=drain, daemon=True).start()
    with trio.fail_after(timeout):
        await trio.to_thread.run_sync(seen.wait, abandon_on_cancel=True)
    assert node.proc.poll() is None, f"node {node.node_id} exited:\n{node.log()[-3000:]}"
    url = read_endpoint(node.state)
    assert url is not None
    node.url = url
    return node


def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)
            node.proc.kill()
        node.proc.wait()


def pg_rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the shared database directly (what the cluster wrote, not what a node says)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


PHASES = pytest.StashKey[dict[str, pytest.TestReport]]()
"""Each phase's report of a test, kept by conftest's pytest_runtest_makereport."""


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the requesting test failed (its setup or call phase)."""
    return any(r.failed for r in request.node.stash.get(PHASES, {}).values())


def dump(nodes: list[Node], url: str, lines: int = 200) -> str:
    """What a failed cluster test needs to be understood: the unfinished tasks and their attempts
    as PostgreSQL holds them, the nodes' rows, and the tail of every node's log."""
    out: list[str] = []
    try:
        out.append("-- unfinished tasks (id, state, version, worker; attempt n, worker, outcome):")
        out += [
            repr(r)
            for r in pg_rows(
                url,
                """
            SELECT t.id, t.state, t.version, t.worker, a.n, a.worker, a.outcome FROM tasks t
            LEFT JOIN attempts a ON a.task_id = t.id
            WHERE t.state NOT IN ('done', 'failed', 'cancelled') ORDER BY t.id, a.n""",
            )
        ]
        out.append("-- nodes:")
        out += [repr(r) for r in pg_rows(url, "SELECT * FROM nodes ORDER BY id")]
        out.append("-- sessions (pid, state, waiting on, blocked by, xact age s, query):")
        out += [
            repr(r)
            for r in pg_rows(
                url,
                """
            SELECT pid, state, wait_event_type || ':' || wait_event, pg_blocking_pids(pid),
                   round(extract(epoch FROM now() - xact_start)::numeric, 2), left(query, 120)
            FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()""",
            )
        ]
    except Exception as exc:  # a dump must not hide the failure it explains
        out.append(f"(the database could not be read: {exc!r})")
    for node in nodes:
        tail = node.log().splitlines()[-lines:]
        out.append(f"-- node {node.node_id} (exit {node.proc.poll()}), last {len(tail)} log lines:")
        out += tail
    return "\n".join(out)
