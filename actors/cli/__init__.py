"""`shoal`: one command with sub-commands, speaking to a running swarm through the gateway.

Every read command prints a readable table, or JSON with `--json`. Exit codes scripts can trust:

    0 success                      3 unknown task or worker        6 the gateway refused the token
    1 a task failed (submit --wait), or another error              5 cannot reach the gateway
    2 bad input (the message names the field)   4 not allowed now  130 interrupted

Where things are: parser.py declares every sub-command (its options and its handler); the handlers
live by concern, swarm.py (status, models, workers, config, answer, resume, events, token, version),
tasks.py (submit, tasks, task, complete), review.py (diff, merge, workspaces, artifacts),
terminal.py (logs, attach), serve.py (`shoal serve`), db.py (`shoal db migrate/check`) and nodes.py
(`shoal nodes`); output.py makes the tables and texts, connection.py picks the gateway and token (see
there) and runs a command with a client, values.py reads KEY=VALUE, errors.py holds the exit codes,
main.py maps errors to them.

This package re-exports the names scripts and tests use, so `shoal.actors.cli:main` stays the
console script and `python -m shoal.actors.cli` runs it.
"""

from __future__ import annotations

from .errors import (
    EXIT_AUTH,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from .main import main, run
from .output import (
    attempts_text,
    capacity_text,
    change_cell,
    diff_text,
    held_back_text,
    model_text,
    models_table,
    needs_input_text,
    quota_text,
    retrying_text,
    status_table,
    task_detail,
    tasks_table,
    tree_view,
    usage_cells,
    workers_table,
)
from .parser import build_parser
from .review import parse_age
from .serve import build_serve_config, env_overrides
from .swarm import answer_choice
from .tasks import TaskFile, build_tasks, read_task_file
from .terminal import parse_key
from .values import lookup, nest, parse_assignment

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "TaskFile",
    "answer_choice",
    "attempts_text",
    "build_parser",
    "build_serve_config",
    "build_tasks",
    "capacity_text",
    "change_cell",
    "diff_text",
    "env_overrides",
    "held_back_text",
    "lookup",
    "main",
    "model_text",
    "models_table",
    "needs_input_text",
    "nest",
    "parse_age",
    "parse_assignment",
    "parse_key",
    "quota_text",
    "read_task_file",
    "retrying_text",
    "run",
    "status_table",
    "task_detail",
    "tasks_table",
    "tree_view",
    "usage_cells",
    "workers_table",
]
