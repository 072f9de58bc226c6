"""The `shoal` argument parser: every sub-command, its options and its handler, in one place.

A new sub-command: its handler (`cmd_x(args) -> int`) in the module of its concern, or in a new
module of this package (e.g. `db.py` for `shoal db ...`); then one `command(...)` entry in
`build_parser` below, with its arguments. A command that makes one call and prints one line needs
no handler: `one_call(method, params, text)`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ...protocols.tasks import TaskState
from ..auth import DEFAULT_URL, ENV_TOKEN, ENV_TOKEN_FILE, ENV_URL
from .connection import one_call
from .db import add_db_parser
from .nodes import cmd_nodes
from .review import cmd_artifacts, cmd_diff, cmd_merge, cmd_workspaces
from .serve import ENV_CONFIG, cmd_serve
from .swarm import (
    cmd_answer,
    cmd_config,
    cmd_events,
    cmd_models,
    cmd_resume,
    cmd_status,
    cmd_token,
    cmd_version,
    cmd_workers,
)
from .tasks import cmd_complete, cmd_submit, cmd_task, cmd_tasks
from .terminal import DEFAULT_DETACH_KEY, cmd_attach, cmd_logs


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection")
    group.add_argument("--url", default=default, help=f"gateway URL (${ENV_URL}; default {DEFAULT_URL})")
    group.add_argument("--token", default=default, help=f"gateway token (${ENV_TOKEN})")
    group.add_argument("--token-file", default=default, help=f"file holding the token (${ENV_TOKEN_FILE})")
    group.add_argument("--state-dir", default=default, help="the server's state directory ($SHOAL_STATE_DIR)")
    group.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS if suppress else 60.0,
        help="seconds to wait per call",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Run and control a self-healing swarm of terminal agents.",
        epilog="exit codes: 0 ok, 1 failed, 2 bad input, 3 not found, 4 conflict, 5 unreachable, 6 auth",
    )
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, json_out: bool = False
    ) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        _connection_options(p, suppress=True)
        if json_out:
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(handler=handler)
        return p

    p = sub.add_parser("serve", help="run the swarm as a service (gateway and dashboard on)")
    p.set_defaults(handler=cmd_serve)
    p.add_argument("--config", help=f"TOML configuration file (${ENV_CONFIG})")
    p.add_argument("--state-dir", help="state directory (database, token) ($SHOAL_STATE_DIR)")
    p.add_argument("--host", help="gateway address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gateway port (0: any free port)")
    p.add_argument("--http-host", help="dashboard address")
    p.add_argument("--http-port", type=int, help="dashboard port (0: any free port)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding to a non-loopback address")
    p.add_argument("--profile", help="agent profile of new workers (e.g. fake, claude)")
    p.add_argument("--min-workers", type=int)
    p.add_argument("--max-workers", type=int)
    p.add_argument("--token-file", help="where the gateway token is kept (default <state-dir>/token)")
    p.add_argument(
        "--store",
        metavar="URL",
        help="task store: sqlite:////path/shoal.db, or postgresql://user@host/db for a cluster"
        " ($SHOAL_STORE_URL, store.url)",
    )
    p.add_argument("--node-id", help="this node's name in a cluster (default: the host name; node.id)")
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the web dashboard")
    p.add_argument("--drain", action="store_true", help="on SIGINT/SIGTERM let running tasks finish first")
    p.add_argument(
        "--log-format",
        choices=["auto", "text", "json"],
        help="log lines: readable text or JSON (default auto: text on a terminal, JSON otherwise)",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. scaling.idle_s=30"
    )

    add_db_parser(sub)

    p = command("submit", cmd_submit, "submit a task (prompt argument or stdin) or a file of tasks", True)
    p.add_argument("prompt", nargs="?", help='the prompt ("-" or omitted: read stdin)')
    p.add_argument("-f", "--file", help="JSON or JSON-lines file of tasks (with ids and deps); - for stdin")
    p.add_argument("--id")
    p.add_argument("--category")
    p.add_argument("--priority", type=int)
    p.add_argument("--model")
    p.add_argument("--dep", action="append", metavar="TASK", help="a task this one waits for (repeatable)")
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--timeout-s", type=float, help="seconds one attempt may take")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata (repeatable)")
    p.add_argument(
        "--repo", metavar="PATH", help="worktree profiles: run in this repository (workspace.allowed_repos)"
    )
    p.add_argument("--base", help="worktree profiles: start the task's branch here (branch or commit)")
    p.add_argument("--branch", help="worktree profiles: the task's branch name (default: shoal/<id>)")
    p.add_argument("--artifact", action="append", metavar="GLOB", help="a file the task keeps (repeatable)")
    p.add_argument("--require-artifacts", action="store_true", help="a --artifact matching nothing fails it")
    p.add_argument("--verify", metavar="COMMAND", help="the task's own check, run in its worktree")
    p.add_argument(
        "--continue",
        dest="continue_from",
        metavar="TASK",
        help="resume this dependency's agent conversation instead of a fresh one (adds it to --dep)",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the tasks with a progress bar; exit 1 if any fails"
    )

    p = command("status", cmd_status, "the swarm's state, workers and queue", True)
    p.add_argument(
        "--tree", action="store_true", help="the supervision tree: each child's state, restarts, last crash"
    )
    command("workers", cmd_workers, "list workers", True)
    p = command("nodes", cmd_nodes, "the nodes of a cluster: state, host, workers, heartbeat, lease", True)
    p.add_argument(
        "--store",
        metavar="URL",
        help="read the nodes from this PostgreSQL database, not a gateway (no node needs to run)",
    )
    p = command(
        "models",
        cmd_models,
        "each model's state (available, parked until when and why, failing) and quota; pause/resume one",
        True,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["pause", "resume"],
        help="pause: park MODEL until resumed; resume: end its park (usage limit, retry storm, extra usage)",
    )
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument("--reason", default="paused by operator", help="why (pause)")
    p = command("tasks", cmd_tasks, "list tasks", True)
    p.add_argument("--state", choices=[s.value for s in TaskState])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", help="continue a listing")
    p.add_argument("--all", action="store_true", help="follow the cursor to the end")
    p = command("task", cmd_task, "one task with its attempts", True)
    p.add_argument("id")
    p = command("diff", cmd_diff, "the change a task left on its branch (worktree profiles)", True)
    p.add_argument("id")
    p.add_argument("--attempt", type=int, help="that attempt's change (default: the latest that left one)")
    p.add_argument("--stat", action="store_true", help="files and lines changed, not the patch")
    p = command("merge", cmd_merge, "merge a task's change into a branch (worktree profiles)", True)
    p.add_argument("id")
    p.add_argument("--into", help="the branch to merge into (default: the repository's checked-out branch)")
    p.add_argument("--squash", action="store_true", help="one commit instead of a merge commit")
    p.add_argument("--attempt", type=int, help="that attempt's change (default: the latest that left one)")
    p = command("artifacts", cmd_artifacts, "the files a task kept (workspace.artifacts)", True)
    p.add_argument("id")
    p.add_argument("--attempt", type=int, help="that attempt's (default: the latest that kept any)")
    p.add_argument("--get", metavar="NAME", help="one file's bytes, to stdout or -o FILE")
    p.add_argument("-o", "--output", help="with --get: write to this file")
    p = command("workspaces", cmd_workspaces, "worktrees and task branches (worktree profiles)", True)
    p.add_argument(
        "action", nargs="?", choices=["prune"], help="prune: remove unused worktrees, old branches"
    )
    p.add_argument("--older-than", help="prune: also task branches last committed longer ago (7d, 12h)")
    p.add_argument("--base", help="prune: task branches merged into this branch (default: HEAD)")
    p = command("logs", cmd_logs, "a worker's recent output", False)
    p.add_argument("worker")
    p.add_argument("--tail", type=int, help="only the last N bytes")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output (Ctrl-C to stop)")
    p = command("attach", cmd_attach, "a live terminal session with a worker", False)
    p.add_argument("worker")
    p.add_argument("--force", action="store_true", help="allow typing while the worker is busy")
    p.add_argument("--detach-key", default=DEFAULT_DETACH_KEY, help="key that detaches (default ^])")
    p.add_argument("--no-resize", action="store_true", help="keep the worker's terminal size")
    p = command("config", cmd_config, "read or change the live configuration", True)
    p.add_argument("action", choices=["get", "set"])
    p.add_argument("key", nargs="?", help="get: a dotted key (default: everything)")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="set: dotted keys and values")

    for name, method, verb in (
        ("pause", "workers.pause", "paused"),
        ("restart", "workers.restart", "restarting"),
        ("kill", "workers.kill", "killed"),
    ):
        p = command(
            name,
            one_call(method, lambda a: {"id": a.worker}, verb + " worker {args.worker}"),
            f"{name} a worker",
            True,
        )
        p.add_argument("worker")
    p = command("answer", cmd_answer, "answer the question a worker's agent waits on (a menu)", True)
    p.add_argument("worker")
    p.add_argument("choice", nargs="+", help="an option number (1-based), an option's label, or text")
    p = command("resume", cmd_resume, "resume a paused worker, or the halted swarm without WORKER", True)
    p.add_argument("worker", nargs="?")
    for name, method in (("cancel", "tasks.cancel"), ("retry", "tasks.retry"), ("skip", "tasks.skip")):
        p = command(
            name,
            one_call(method, lambda a: {"id": a.id}, "task {args.id}: {reply[state]}"),
            f"{name} a task",
            True,
        )
        p.add_argument("id")
    p = command(
        "boost",
        one_call(
            "tasks.boost",
            lambda a: {"id": a.id, "priority": a.priority},
            "task {args.id}: priority {reply[priority]}",
        ),
        "change a task's priority",
        True,
    )
    p.add_argument("id")
    p.add_argument("priority", type=int)
    p = command(
        "assign",
        one_call(
            "tasks.assign", lambda a: {"id": a.id, "worker": a.worker}, "task {args.id} → {args.worker}"
        ),
        "run a task on a given worker",
        True,
    )
    p.add_argument("id")
    p.add_argument("worker")
    p = command("complete", cmd_complete, "report a task attempt's completion (for agents)", True)
    p.add_argument("id")
    p.add_argument("--attempt", type=int, required=True)
    p.add_argument("--status", choices=["done", "failed"], required=True)
    p.add_argument("--result", help="the result text (- reads stdin)")
    p.add_argument("--reason")
    p = command(
        "halt",
        one_call("swarm.halt", lambda a: {"reason": a.reason}, "swarm {reply[state]}: {args.reason}"),
        "halt the swarm (stop spawning, keep every task)",
        True,
    )
    p.add_argument("reason", nargs="?", default="halted by an operator")
    p = command(
        "stop",
        one_call("swarm.stop", lambda a: {"drain": a.drain}, "swarm {reply[state]}"),
        "stop taking tasks",
        True,
    )
    p.add_argument("--drain", action="store_true", help="let running tasks finish")
    command(
        "start", one_call("swarm.start", lambda a: {}, "swarm {reply[state]}"), "start again after stop", True
    )
    p = command("events", cmd_events, "print live events", True)
    p.add_argument("--topic", action="append", help="topic pattern, e.g. task.* (repeatable; default *)")
    p.add_argument("--since", type=int, help="first replay the events after this seq")
    p.add_argument("--count", type=int, help="stop after N events")
    p = sub.add_parser("token", help="print the gateway token (read from the state directory)")
    p.set_defaults(handler=cmd_token)
    p.add_argument("--state-dir")
    p.add_argument("--token-file")
    p.add_argument("--config", help="read state_dir / gateway.token_file from this TOML file")
    p = command("version", cmd_version, "client and server versions", True)
    p.add_argument("--local", action="store_true", help="only this client's version (no connection)")
    return parser
