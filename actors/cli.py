"""`shoal`: one command with sub-commands, speaking to a running swarm through the gateway.

Every read command prints a readable table, or JSON with `--json`. Exit codes scripts can trust:

    0 success                      3 unknown task or worker        6 the gateway refused the token
    1 a task failed (submit --wait), or another error              5 cannot reach the gateway
    2 bad input (the message names the field)   4 not allowed now  130 interrupted

The gateway's URL is --url, else $SHOAL_URL, else the one the running server wrote in its state
directory, else ws://127.0.0.1:8765/. The token is --token, else $SHOAL_TOKEN, else --token-file /
$SHOAL_TOKEN_FILE, else the server's token file in the state directory (--state-dir /
$SHOAL_STATE_DIR / the user data directory).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..protocols import rpc
from ..protocols.config import SwarmConfig, load_config, patch_config
from ..protocols.errors import Conflict, NotFound, ShoalError, ValidationError
from ..protocols.tasks import TERMINAL_STATES, TaskState
from ..protocols.text import find_bad_text
from ..runtime.client import (
    AuthError,
    Client,
    Gap,
    GatewayError,
    Overflow,
    connect,
    unwrap_group,
)
from ..runtime.eventbus import Event
from .auth import (
    DEFAULT_URL,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    ENV_URL,
    check_bind,
    read_endpoint,
    read_token,
    resolve_state_dir,
    token_path,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNREACHABLE = 5
EXIT_AUTH = 6
EXIT_INTERRUPTED = 130

ENV_CONFIG = "SHOAL_CONFIG"
ENV_PREFIX = "SHOAL__"  # SHOAL__scaling__max_workers=4 sets scaling.max_workers for `shoal serve`
DEFAULT_DETACH_KEY = "^]"
TERMINAL_VALUES = {str(s) for s in TERMINAL_STATES}


class CliError(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


# ---- output helpers ------------------------------------------------------------------------------


def _console(stream: TextIO | None = None) -> Console:
    """Terminal width on a terminal; wide lines (nothing cut or wrapped) when piped to a program."""
    out = stream or sys.stdout
    width = None if out.isatty() else 250
    return Console(file=out, highlight=False, soft_wrap=False, width=width)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    return _duration((now or time.time()) - ts)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{(seconds % 86400) // 3600:02.0f}h"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _short(text: str | None, width: int = 48) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def _row(table: Table, *cells: Any) -> None:
    """Add a row of plain text: a prompt like "[[think:1]]" or "[bold]" is data, not rich markup."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in cells))


def attempts_text(task: dict[str, Any]) -> str:
    """`used/max`, plus the attempts that did not count: `2/3 (+2 rate-limited)`, never `4/3`.

    Same split as `shoal.protocols.tasks.attempt_counts`: rate-limited, interrupted or cancelled
    attempts, and those before the last manual retry (`retry_base`), do not use up max_attempts."""
    base = task.get("retry_base") or 0
    used = limited = interrupted = earlier = 0
    for a in task.get("attempts") or ():
        outcome = a.get("outcome")
        if a.get("n", 0) <= base:
            earlier += 1
        elif outcome == "rate_limited":
            limited += 1
        elif outcome in ("interrupted", "cancelled"):
            interrupted += 1
        else:
            used += 1
    extra = [
        f"+{n} {label}"
        for n, label in ((limited, "rate-limited"), (interrupted, "interrupted"), (earlier, "before retry"))
        if n
    ]
    text = f"{used}/{task.get('max_attempts')}"
    return f"{text} ({', '.join(extra)})" if extra else text


def model_text(model: dict[str, Any], now: float | None = None) -> str:
    """A model's state in words: `parked until 14:05 (in 58s): <why>`, `failing: …`, `available`."""
    state = str(model.get("state"))
    if state == "parked" and model.get("until"):
        until = float(model["until"])
        when = time.strftime("%H:%M:%S", time.localtime(until))
        text = f"parked until {when} (in {_duration(until - (now or time.time()))})"
    elif state == "parked":
        text = "parked until resumed"
    else:
        text = state
    text = f"{text}: {model['reason']}" if model.get("reason") else text
    extra = [q for q in (quota_text(model, now),) if q]
    if model.get("retrying"):
        extra.append(f"{model['retrying']} retrying")
    return f"{text} · {' · '.join(extra)}" if extra else text


def quota_text(model: dict[str, Any], now: float | None = None) -> str:
    """`seven_day 92% (warning, resets in 2h10m), prefer fallback`: the latest quota reports."""
    parts = []
    for window, q in sorted((model.get("quota") or {}).items()):
        util = q.get("utilization")
        text = f"{window} {util:.0%}" if isinstance(util, int | float) else f"{window}"
        notes = []
        status = q.get("status")
        if status == "allowed_warning":
            notes.append("warning")
        elif status and status != "allowed":
            notes.append(str(status))
        if isinstance(q.get("resets_at"), int | float):
            notes.append(f"resets in {_duration(float(q['resets_at']) - (now or time.time()))}")
        parts.append(f"{text} ({', '.join(notes)})" if notes else text)
    if model.get("prefer_fallback"):
        parts.append("prefer fallback")
    return ", ".join(parts)


def retrying_text(retrying: dict[str, Any], now: float | None = None) -> str:
    """`retrying 3/10, next in 8 s` for a worker whose agent retries an API request."""
    attempt = retrying.get("attempt")
    text = f"retrying {attempt if attempt is not None else '?'}"
    if retrying.get("max_retries") is not None:
        text += f"/{retrying['max_retries']}"
    if isinstance(retrying.get("next_at"), int | float):
        text += f", next in {max(0.0, float(retrying['next_at']) - (now or time.time())):.0f} s"
    return text


def usage_cells(usage: dict[str, Any]) -> tuple[str, str]:
    """(`$0.4920`, `2800 in / 7 out`) of an attempt's usage; `-` for what the agent did not say."""
    cost = usage.get("cost_usd")
    cost_text = f"${cost:.4f}" if isinstance(cost, int | float) else "-"
    tokens_in = sum(
        v
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        if isinstance(v := usage.get(k), int | float)
    )
    tokens_out = usage.get("output_tokens")
    if isinstance(tokens_out, int | float) or tokens_in:
        out = tokens_out if isinstance(tokens_out, int | float) else 0
        return cost_text, f"{tokens_in:g} in / {out:g} out"
    return cost_text, "-"


def needs_input_text(worker: dict[str, Any], now: float | None = None) -> str:
    """`waiting 1m05s: Do you want to proceed?` for a worker whose agent waits on a question."""
    waited = _age(worker.get("needs_input_since") or worker.get("since"), now)
    question = worker.get("needs_input") or worker.get("prompt") or ""
    options = worker.get("needs_input_options") or worker.get("options") or []
    menu = " ".join(f"[{i}] {_short(str(o), 30)}" for i, o in enumerate(options, 1))
    return f"waiting {waited}: {_short(question, 60)}" + (f" {menu}" if menu else "")


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("MODEL", "STATE", "WORKERS", "BUSY", "RECENT FAILED"):
        table.add_column(name, no_wrap=True)
    table.add_column("QUOTA", overflow="fold")
    table.add_column("DETAIL", overflow="fold")
    now = time.time()
    for m in models:
        state = str(m.get("state"))
        bare = {**m, "quota": {}, "prefer_fallback": False, "retrying": 0}
        detail = model_text(bare, now)[len(state) :].lstrip(": ")  # "until 14:05:00 (in 58s): why"
        if m.get("retrying"):
            detail = ", ".join(x for x in (detail, f"{m['retrying']} retrying") if x)
        _row(
            table,
            m["name"],
            Text(state, style={"parked": "yellow", "failing": "red"}.get(state, "")),
            str(m.get("workers", 0)),
            str(m.get("busy", 0)),
            f"{m.get('recent_failed', 0)}/{m.get('recent_finished', 0)}",
            quota_text(m, now) or "-",
            detail,
        )
    return table


def tree_view(nodes: list[dict[str, Any]], title: str = "swarm") -> Tree:
    """The supervision tree as `swarm.status` reports it, one line per child."""
    root = Tree(Text(f"{title} (rest_for_one, a crash halts the swarm)", style="bold"))
    _tree_children(root, nodes)
    return root


def _tree_children(parent: Tree, nodes: list[dict[str, Any]]) -> None:
    for node in nodes:
        line = Text(str(node.get("id")), style="bold")
        state = str(node.get("state"))
        line.append(f"  {state}", style="green" if state == "running" else "yellow")
        if "strategy" in node:
            intensity = node.get("intensity") or {}
            line.append(
                f"  {node['strategy']}, {intensity.get('max_restarts')} restarts in "
                f"{intensity.get('period_s', 0):g} s",
                style="dim",
            )
        restarts = int(node.get("restarts") or 0)
        if restarts:
            line.append(f"  restarts {restarts}", style="yellow")
        if node.get("last_crash"):
            ago = node.get("last_crash_ago_s")
            when = f" {_duration(ago)} ago" if isinstance(ago, int | float) else ""
            line.append(f"  last crash{when}: {node['last_crash']}", style="red")
        branch = parent.add(line)
        _tree_children(branch, node.get("children") or [])


def status_table(status: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    state = str(status.get("state"))
    _row(table, "state", state.upper() if state == "halted" else state)
    if status.get("reason"):
        _row(table, "reason", str(status["reason"]))
    _row(
        table, "workers", f"{sum((status.get('workers') or {}).values())} ({_counts(status.get('workers'))})"
    )
    _row(table, "tasks", _counts(status.get("queue")))
    now = time.time()
    waiting = status.get("needs_input") or []
    for w in waiting:
        task = f" (task {w['task_id']})" if w.get("task_id") else ""
        _row(table, "needs input", f"{w['worker']}{task} {needs_input_text(w, now)}")
    if waiting:
        _row(table, "", "answer with: shoal answer WORKER N (or the option's text)")
    for r in status.get("retrying") or []:
        task = f" (task {r['task_id']})" if r.get("task_id") else ""
        cause = f"{r.get('status') or 'network'} {r.get('error')}"
        _row(table, "retrying", f"{r['worker']}{task} {retrying_text(r, now)} · {cause}")
    for m in status.get("models") or []:
        _row(table, f"model {m['name']}", model_text(m, now))
    cap = status.get("capacity")
    if isinstance(cap, dict):
        _row(table, "capacity", capacity_text(cap))
        _row(table, "held back by", held_back_text(cap))
    breaker = status.get("breaker")
    if isinstance(breaker, dict) and breaker.get("state"):
        trips = breaker.get("trips")
        _row(table, "breaker", f"{breaker['state']}" + (f" (tripped {trips}x)" if trips else ""))
    if status.get("since"):
        _row(table, "up", _age(status["since"]))
    for key in ("version", "gateway_url", "http_url", "state_dir"):
        if status.get(key):
            _row(table, key.replace("_", " "), str(status[key]))
    return table


def _mib(value: float | None) -> str:
    return "?" if value is None else _size(int(value * 1024 * 1024))


def capacity_text(cap: dict[str, Any]) -> str:
    """`4/8 workers · 1.2GiB free (floor 512.0MiB) · 258.0MiB a worker (claude, measured) · 3 more fit`."""
    parts = [f"{cap.get('workers', 0)}/{cap.get('max_workers', '?')} workers"]
    if cap.get("free_memory_mb") is None:
        parts.append(f"free memory unknown ({cap.get('memory_error') or 'not read'})")
    else:
        parts.append(f"{_mib(cap['free_memory_mb'])} free (floor {_mib(cap.get('min_free_memory_mb'))})")
    source = f"{cap.get('profile')}, {cap.get('worker_memory_source')}"
    parts.append(f"{_mib(cap.get('worker_memory_mb'))} a worker ({source})")
    parts.append(f"{cap.get('can_start', 0)} more fit")
    return " · ".join(parts)


_HELD = {
    "max_workers": "max_workers (scaling.max_workers)",
    "memory": "memory (node.min_free_memory_mb would be crossed)",
    "max_spawn_per_tick": "max_spawn_per_tick (more next decision)",
    "parked": "a parked model (its tasks wait for its reset)",
    "halted": "the breaker (the swarm is halted)",
}


def held_back_text(cap: dict[str, Any]) -> str:
    """What keeps the swarm from starting the workers its queue wants, or `nothing`."""
    held = cap.get("held_back_by")
    if not held:
        return "nothing"
    text = _HELD.get(held, str(held))
    unmet = cap.get("unmet") or 0
    if unmet:
        text += f": {unmet} more worker{'s' if unmet != 1 else ''} wanted"
    more = [_HELD.get(x, x).split(" (")[0] for x in cap.get("limited_by") or [] if x != held]
    text += f"; also {', '.join(more)}" if more else ""
    stranded = cap.get("stranded_categories") or {}
    if stranded:
        cats = ", ".join(f"{c} ({m})" for m, names in sorted(stranded.items()) for c in names)
        text += f"; waiting for a worker that takes them: {cats}"
    return text


def workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("ID", "STATE", "MODEL", "TASK", "CTX", "CPU", "MEM", "UP", "DONE", "CRASHES"):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for w in workers:
        state = w["state"]
        if w.get("needs_input"):  # busy, but waiting on a question, not working
            state = Text(f"needs input ({_age(w.get('needs_input_since'), now)})", style="yellow")
        elif w.get("retrying"):  # busy, but its agent's API requests keep failing
            state = Text(retrying_text(w["retrying"], now), style="yellow")
        _row(
            table,
            w["id"],
            state,
            w.get("model") or "-",
            w.get("task_id") or "-",
            _pct(w.get("context_used_percent")),
            _pct(w.get("cpu_percent")),
            _size(w.get("rss_bytes")),
            _age(w.get("started"), now),
            str(w.get("tasks_done", 0)),
            str(w.get("crashes", 0)),
        )
    return table


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    id_width = min(max((len(t["id"]) for t in tasks), default=2), 36)
    table.add_column("ID", no_wrap=True, min_width=id_width)
    table.add_column("STATE", no_wrap=True, min_width=9)
    for name in ("PRI", "CATEGORY", "MODEL", "TRIES", "WORKER", "AGE"):
        table.add_column(name, no_wrap=True)
    table.add_column("PROMPT", overflow="ellipsis", no_wrap=True, ratio=1)
    now = time.time()
    for t in tasks:
        _row(
            table,
            t["id"],
            t["state"],
            str(t.get("priority", 0)),
            t.get("category") or "-",
            t.get("model") or "-",
            attempts_text(t),
            t.get("worker") or "-",
            _age(t.get("created"), now),
            _short(t.get("prompt")),
        )
    return table


def task_detail(task: dict[str, Any]) -> list[Any]:
    info = Table(show_header=False, box=None, pad_edge=False)
    info.add_column(style="bold")
    info.add_column()
    for key in ("id", "state", "reason", "priority", "category", "model", "deps", "worker"):
        value = task.get(key)
        if value in (None, [], ()):
            continue
        _row(info, key, ", ".join(value) if isinstance(value, list) else str(value))
    _row(info, "attempts", attempts_text(task))
    _row(info, "created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task.get("created") or 0)))
    _row(info, "prompt", task.get("prompt") or "")
    if task.get("result") is not None:
        _row(info, "result", str(task["result"]))
    out: list[Any] = [info]
    attempts = task.get("attempts") or []
    if attempts:
        table = Table(box=None, header_style="bold", title="attempts", title_justify="left")
        with_ws = any(a.get("workspace") for a in attempts)
        names = (
            "N",
            "WORKER",
            "MODEL",
            "OUTCOME",
            "TOOK",
            "COST",
            "TOKENS",
            *(("CHANGE",) if with_ws else ()),
        )
        for name in (*names, "REASON"):
            table.add_column(name)
        for a in attempts:
            took = (a["ended"] - a["started"]) if a.get("ended") else time.time() - a["started"]
            _row(
                table,
                str(a["n"]),
                a["worker"],
                a.get("model") or "-",
                a.get("outcome") or "running",
                _duration(took),
                *usage_cells(a.get("usage") or {}),
                *((change_cell(a.get("workspace")),) if with_ws else ()),
                _short(a.get("reason"), 60),
            )
        out.append(table)
    return out


def change_cell(ws: dict[str, Any] | None) -> str:
    """An attempt's worktree change in a few words: branch, lines, and its check."""
    if not ws:
        return "-"
    if "branch" not in ws:
        return _short(str(ws.get("error") or "-"), 40)
    check = ws.get("verify")
    verdict = "" if not isinstance(check, dict) else (" ✓ check" if check.get("passed") else " ✗ check")
    return f"{ws['branch']} +{ws.get('insertions', 0)} -{ws.get('deletions', 0)}{verdict}"


# ---- connection ----------------------------------------------------------------------------------


def resolve_url(args: argparse.Namespace) -> str:
    if getattr(args, "url", None):
        return str(args.url)
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    endpoint = read_endpoint(resolve_state_dir(getattr(args, "state_dir", None)))
    return endpoint or DEFAULT_URL


def resolve_token(args: argparse.Namespace) -> str | None:
    """--token, $SHOAL_TOKEN, --token-file, $SHOAL_TOKEN_FILE, the state directory's token; or None."""
    if getattr(args, "token", None):
        return str(args.token)
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    explicit = getattr(args, "token_file", None) or os.environ.get(ENV_TOKEN_FILE)
    if explicit:
        return read_token(explicit)  # asked for by name: a missing file is an error
    try:
        return read_token(token_path(resolve_state_dir(getattr(args, "state_dir", None))))
    except ValidationError:
        return None  # try without; the gateway will say it wants a token


@asynccontextmanager
async def _client(args: argparse.Namespace) -> Any:
    url = resolve_url(args)
    token = resolve_token(args)
    async with connect(url, token, call_timeout=args.timeout) as client:
        yield client


def _run(args: argparse.Namespace, fn: Callable[[Client], Awaitable[int | None]]) -> int:
    async def main() -> int | None:
        async with _client(args) as client:
            return await fn(client)

    return trio.run(main) or EXIT_OK


# ---- commands --------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        status = await c.status()
        if args.json:
            _print_json(status["tree"] if args.tree else status)
        elif args.tree:
            _console().print(tree_view(status.get("tree") or []))
        else:
            _console().print(status_table(status))
        return EXIT_OK

    return _run(args, go)


def cmd_models(args: argparse.Namespace) -> int:
    if args.action is not None and not args.model:
        raise CliError(f"shoal models {args.action} needs a MODEL", EXIT_USAGE)

    async def go(c: Client) -> int:
        if args.action == "resume":
            state = await c.resume_model(args.model)
            if args.json:
                _print_json(state)
            else:
                _console().print(f"{args.model}: resumed, takes work again")
            return EXIT_OK
        if args.action == "pause":
            state = await c.pause_model(args.model, args.reason)
            if args.json:
                _print_json(state)
            else:
                _console().print(f"{args.model}: paused until `shoal models resume {args.model}`")
            return EXIT_OK
        models = (await c.status()).get("models") or []
        if args.json:
            _print_json(models)
        else:
            _console().print(models_table(models))
        return EXIT_OK

    return _run(args, go)


def cmd_workers(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        workers = (await c.call("workers.list"))["workers"]
        if args.json:
            _print_json(workers)
        elif not workers:
            _console().print("no workers")
        else:
            _console().print(workers_table(workers))
        return EXIT_OK

    return _run(args, go)


def cmd_tasks(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        params: dict[str, Any] = {"limit": args.limit}
        if args.state:
            params["state"] = args.state
        if args.cursor:
            params["cursor"] = args.cursor
        tasks: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            reply = await c.call("tasks.list", params)
            tasks += reply["tasks"]
            cursor = reply.get("cursor")
            if not args.all or not cursor:
                break
            params["cursor"] = cursor
        if args.json:
            _print_json({"tasks": tasks, "cursor": cursor})
            return EXIT_OK
        console = _console()
        if not tasks:
            console.print("no tasks" + (f" in state {args.state}" if args.state else ""))
        else:
            console.print(tasks_table(tasks))
        if cursor and not args.all:
            console.print(
                f"more: shoal tasks --cursor {cursor}" + (f" --state {args.state}" if args.state else "")
            )
        return EXIT_OK

    return _run(args, go)


def cmd_task(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        task = await c.call("tasks.get", {"id": args.id})
        if args.json:
            _print_json(task)
        else:
            console = _console()
            for part in task_detail(task):
                console.print(part)
        return EXIT_OK

    return _run(args, go)


_DIFF_STYLES = (
    *(("+++", "bold"), ("---", "bold"), ("diff ", "bold")),
    *(("+", "green"), ("-", "red"), ("@@", "cyan")),
)


def diff_text(patch: str) -> Text:
    """A unified diff with git's colours: additions green, removals red, hunk headers cyan."""
    text = Text()
    for line in patch.splitlines(keepends=True):
        style = next((s for prefix, s in _DIFF_STYLES if line.startswith(prefix)), "")
        text.append(line, style=style)
    return text


def cmd_diff(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        reply = await c.diff(args.id, args.attempt, args.stat)
        if args.json:
            _print_json(reply)
            return EXIT_OK
        span = f"{reply['base'][:12]}..{reply['head'][:12]}"
        files = reply.get("files_changed", len(reply["files"]))
        head = (
            f"task {reply['id']}, attempt {reply['attempt']}: branch {reply['branch']} ({span}), "
            f"{files} file(s), +{reply['insertions']} -{reply['deletions']}"
        )
        tty = sys.stdout.isatty()
        console = _console()
        console.print(Text(head, style="bold") if tty else head)
        if tty:
            console.print(diff_text(reply["diff"]), end="")
        else:
            sys.stdout.write(reply["diff"])
        if reply.get("truncated"):
            console.print(f"(the patch was cut: see it whole with git diff {reply['base']} {reply['head']})")
        return EXIT_OK

    return _run(args, go)


def cmd_merge(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        reply = await c.merge(args.id, args.attempt, args.into, args.squash)
        if args.json:
            _print_json(reply)
        elif reply["already"]:
            print(f"{reply['branch']} is already in {reply['into']} ({reply['commit'][:12]})")
        else:
            how = "squashed into" if reply["squash"] else "merged into"
            print(f"{reply['branch']} {how} {reply['into']}: {reply['commit'][:12]}")
        return EXIT_OK

    return _run(args, go)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d` (or plain seconds) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise CliError(f"--older-than wants a duration such as 7d, 12h or 30m, got {text!r}", EXIT_USAGE)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def cmd_workspaces(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        if args.action == "prune":
            older = parse_age(args.older_than) if args.older_than else None
            reply = await c.prune_workspaces(older, args.base)
            if args.json:
                _print_json(reply)
            else:
                print(
                    f"removed {len(reply['removed_worktrees'])} worktree(s), "
                    f"deleted {len(reply['deleted_branches'])} branch(es)"
                )
                for line in (*reply["removed_worktrees"], *reply["deleted_branches"]):
                    print(f"  {line}")
            return EXIT_OK
        listed = await c.workspaces()
        if args.json:
            _print_json(listed)
            return EXIT_OK
        table = Table(box=None, header_style="bold", title="worktrees", title_justify="left")
        for name in ("PATH", "WORKER", "BRANCH", "HEAD"):
            table.add_column(name)
        for w in listed["worktrees"]:
            _row(
                table,
                w["path"],
                w["worker"] or "- (unused)",
                w["branch"] or "(detached)",
                (w["head"] or "")[:12],
            )
        console = _console()
        console.print(table)
        now = time.time()
        branches = Table(box=None, header_style="bold", title="task branches", title_justify="left")
        for name in ("BRANCH", "HEAD", "LAST COMMIT", "REPO"):
            branches.add_column(name)
        for b in listed["branches"]:
            _row(branches, b["branch"], b["head"][:12], _age(b["committed"], now) + " ago", b["repo"])
        console.print(branches)
        return EXIT_OK

    return _run(args, go)


def cmd_artifacts(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        reply = await c.artifacts(args.id, args.attempt, args.get)
        if args.get is not None:
            data = base64.b64decode(reply["data"])
            if args.output in (None, "-"):
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                await trio.Path(args.output).write_bytes(data)
                print(f"{args.get}: {len(data)} bytes to {args.output}", file=sys.stderr)
            return EXIT_OK
        if args.json:
            _print_json(reply)
            return EXIT_OK
        print(f"task {reply['id']}, attempt {reply['attempt']}: {len(reply['artifacts'])} artifact(s)")
        for a in reply["artifacts"]:
            print(f"  {a['name']}  {a['size']} bytes")
        for pattern in reply["missing"]:
            print(f"  missing: nothing matched {pattern}")
        for s in reply["skipped"]:
            print(f"  skipped: {s['name']}: {s['reason']}")
        return EXIT_OK

    return _run(args, go)


def _stop_on_sigint() -> None:
    """A command that runs until Ctrl-C must stop on SIGINT even when it was started ignoring it.

    A shell script's `shoal logs W --follow &` (a background job without job control), or a test
    suite run that way, starts it with SIGINT set to "ignore"; Python and trio then leave it ignored,
    so `kill -INT` and Ctrl-C never stop it (it used to hang until killed).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_logs(args: argparse.Namespace) -> int:
    if args.follow:
        _stop_on_sigint()

    async def go(c: Client) -> int:
        out = sys.stdout.buffer
        if not args.follow:
            data = await c.logs(args.worker, args.tail)
            await trio.to_thread.run_sync(_write_flush, out, data)
            return EXIT_OK
        async with c.attach(args.worker) as att:
            snapshot = att.snapshot if args.tail is None else att.snapshot[-args.tail :] if args.tail else b""
            await trio.to_thread.run_sync(_write_flush, out, snapshot)
            async for chunk in att:
                await trio.to_thread.run_sync(_write_flush, out, chunk)
        return EXIT_OK

    return _run(args, go)


def _write_flush(stream: Any, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def parse_key(spec: str) -> int:
    """A detach key: "^]" / "ctrl-]" (control characters) or a single character."""
    s = spec.strip()
    low = s.lower()
    if low.startswith(("ctrl-", "ctrl+")):
        if len(s) != 6:
            raise CliError(f"--detach-key: cannot read {spec!r} (use e.g. ^] or ctrl-q)", EXIT_USAGE)
        s = "^" + s[5:]
    if len(s) == 2 and s[0] == "^":
        code = ord(s[1].upper()) ^ 0x40
        if 0 <= code < 32 or code == 127:
            return code
    if len(s) == 1:
        return ord(s)
    raise CliError(f"--detach-key: cannot read {spec!r} (use e.g. ^] or ctrl-q)", EXIT_USAGE)


def cmd_attach(args: argparse.Namespace) -> int:
    import termios
    import tty

    detach = parse_key(args.detach_key)
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    if not os.isatty(fd_in):
        raise CliError(
            "attach needs a terminal (to watch without one: shoal logs WORKER --follow)", EXIT_USAGE
        )

    async def go(c: Client) -> int:
        import signal

        saved = termios.tcgetattr(fd_in)
        stdin = trio.lowlevel.FdStream(os.dup(fd_in))
        stdout = trio.lowlevel.FdStream(os.dup(fd_out))
        ended: list[str] = []
        try:
            tty.setraw(fd_in)
            async with c.attach(args.worker) as att, trio.open_nursery() as nursery:
                await stdout.send_all(att.snapshot)

                async def output() -> None:
                    async for chunk in att:
                        await stdout.send_all(chunk)
                    ended.append(att.closed_reason or "the worker ended")
                    nursery.cancel_scope.cancel()

                async def keyboard() -> None:
                    while True:
                        data = await stdin.receive_some(4096)
                        if not data:
                            break
                        if detach in data:
                            data = data[: data.index(detach)]
                            if data:
                                await _type(att, data)
                            break
                        await _type(att, data)
                    nursery.cancel_scope.cancel()

                async def _type(att: Any, data: bytes) -> None:
                    try:
                        await att.send(data, force=args.force)
                    except Conflict:
                        await stdout.send_all(
                            b"\r\n[shoal] the worker is busy: input refused"
                            b" (attach --force to type anyway)\r\n"
                        )

                async def resizes() -> None:
                    with trio.open_signal_receiver(signal.SIGWINCH) as sigs:
                        if not args.no_resize:
                            await _resize(att)
                        async for _ in sigs:
                            await _resize(att)

                nursery.start_soon(output)
                nursery.start_soon(keyboard)
                nursery.start_soon(resizes)
        finally:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
            for stream in (stdin, stdout):
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            os.set_blocking(fd_in, True)
            os.set_blocking(fd_out, True)
        sys.stderr.write(
            f"\r\n[shoal] detached from {args.worker}" + (f" ({ended[0]})" if ended else "") + "\n"
        )
        return EXIT_OK

    return _run(args, go)


async def _resize(att: Any) -> None:
    size = os.get_terminal_size(sys.stdout.fileno())
    try:
        await att.resize(size.lines, size.columns)
    except ShoalError:
        pass


def parse_assignment(item: str, option: str | None = None) -> tuple[str, Any]:
    """KEY=VALUE with a dotted key; the value is JSON when it parses (5, true, [..], "x"), else text.

    `option` names where the text came from: "--meta" (a metadata key, not a config key) or a
    config option ("--set", "config set"), so the message says what that option wants.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if option == "--meta":
        if not sep or not key:
            raise CliError(f"--meta wants KEY=VALUE (e.g. --meta ticket=1234), got {item!r}", EXIT_USAGE)
    elif not sep or not key or any(not part for part in key.split(".")):
        example = "scaling.max_workers=4"
        wants = f"{option} wants" if option else "expected"
        raise CliError(
            f"{wants} KEY=VALUE with a dotted config key (e.g. {example}), got {item!r}", EXIT_USAGE
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def nest(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """[("a.b", 1), ("a.c", 2)] → {"a": {"b": 1, "c": 2}}."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CliError(f"{key}: {part} is set to a value and used as a section", EXIT_USAGE)
            node = child
        node[parts[-1]] = value
    return out


def lookup(data: Any, key: str) -> Any:
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CliError(f"no configuration key {key!r}", EXIT_NOT_FOUND)
        node = node[part]
    return node


def cmd_config(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        if args.action == "get":
            data = await c.call("swarm.config.get")
            value = lookup(data, args.key) if args.key else data
            if args.json or isinstance(value, dict | list):
                _print_json(value)
            else:
                sys.stdout.write(("null" if value is None else str(value)) + "\n")
            return EXIT_OK
        items = ([args.key] if args.key else []) + list(args.pairs)
        if not items:
            raise CliError("config set needs at least one KEY=VALUE", EXIT_USAGE)
        pairs = [parse_assignment(p, "config set") for p in items]
        data = await c.call("swarm.config.patch", {"partial": nest(pairs)})
        if args.json:
            _print_json(data)
        else:
            for key, _ in pairs:
                sys.stdout.write(f"{key} = {json.dumps(lookup(data, key))}\n")
        return EXIT_OK

    return _run(args, go)


def _simple(
    method: str, params: Callable[[argparse.Namespace], dict[str, Any]], show: str
) -> Callable[[argparse.Namespace], int]:
    """A command that makes one call and prints one line (or the reply with --json)."""

    def command(args: argparse.Namespace) -> int:
        async def go(c: Client) -> int:
            reply = await c.call(method, params(args))
            if getattr(args, "json", False):
                _print_json(reply)
            else:
                sys.stdout.write(show.format(args=args, reply=reply) + "\n")
            return EXIT_OK

        return _run(args, go)

    return command


def cmd_resume(args: argparse.Namespace) -> int:
    if args.worker:
        return _simple("workers.resume", lambda a: {"id": a.worker}, "resumed worker {args.worker}")(args)
    return _simple("swarm.resume", lambda a: {}, "swarm {reply[state]}")(args)


def answer_choice(words: Sequence[str]) -> int | str:
    """`shoal answer W 2` picks option 2; any other words are an option's label or free text."""
    text = " ".join(words).strip()
    if not text:
        raise CliError("answer needs a CHOICE: an option number or text", EXIT_USAGE)
    return int(text) if text.isdigit() else text


def cmd_answer(args: argparse.Namespace) -> int:
    def show(reply: dict[str, Any]) -> str:
        chosen = f"{reply['choice']}. {reply['label']}" if reply.get("choice") is not None else reply["label"]
        return f"{reply['id']}: {reply['question']} → {chosen}"

    async def go(c: Client) -> int:
        reply = await c.answer(args.worker, answer_choice(args.choice))
        if args.json:
            _print_json(reply)
        else:
            sys.stdout.write(show(reply) + "\n")
        return EXIT_OK

    return _run(args, go)


def cmd_complete(args: argparse.Namespace) -> int:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        out: dict[str, Any] = {"id": a.id, "attempt": a.attempt, "status": a.status}
        if a.result is not None:
            out["result"] = sys.stdin.read() if a.result == "-" else a.result
        if a.reason is not None:
            out["reason"] = a.reason
        return out

    return _simple("tasks.complete", params, "task {args.id}: {reply[state]}")(args)


def cmd_events(args: argparse.Namespace) -> int:
    _stop_on_sigint()  # without --count it runs until interrupted

    async def go(c: Client) -> int:
        seen = 0
        console = _console()
        async with c.events(args.topic or ["*"], since=args.since) as stream:
            async for item in stream:
                if isinstance(item, Event):
                    if args.json:
                        sys.stdout.write(
                            json.dumps(
                                {"seq": item.seq, "ts": item.ts, "topic": item.topic, "data": item.data}
                            )
                            + "\n"
                        )
                        sys.stdout.flush()
                    else:
                        stamp = time.strftime("%H:%M:%S", time.localtime(item.ts))
                        fields = " ".join(f"{k}={_short(json.dumps(v), 60)}" for k, v in item.data.items())
                        console.print(
                            f"{item.seq:>7} {stamp} [bold]{item.topic}[/bold] {fields}", markup=True
                        )
                    seen += 1
                    if args.count and seen >= args.count:
                        break
                elif isinstance(item, Gap):
                    _notice(args, {"gap": True, "since": item.since, "first_seq": item.first_seq})
                elif isinstance(item, Overflow):
                    _notice(args, {"overflow": True, "dropped": item.dropped})
        return EXIT_OK

    return _run(args, go)


def _notice(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stderr.write(f"shoal: {'events missed: ' if 'gap' in data else 'events dropped: '}{data}\n")


def cmd_token(args: argparse.Namespace) -> int:
    state_dir = args.state_dir
    token_file = args.token_file or os.environ.get(ENV_TOKEN_FILE)
    if args.config:
        cfg = load_config(args.config)
        state_dir = state_dir or cfg.state_dir
        token_file = token_file or cfg.gateway.token_file
    path = token_path(resolve_state_dir(state_dir), token_file)
    sys.stdout.write(read_token(path) + "\n")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    from .gateway import SHOAL_VERSION

    if args.local:
        sys.stdout.write(f"shoal {SHOAL_VERSION} (protocol {rpc.PROTOCOL_VERSION})\n")
        return EXIT_OK

    async def go(c: Client) -> int:
        reply = await c.version()
        if args.json:
            _print_json({"client": SHOAL_VERSION, "server": reply})
        else:
            sys.stdout.write(
                f"client {SHOAL_VERSION} · server {reply['version']} (protocol {reply['protocol']})\n"
            )
        return EXIT_OK

    return _run(args, go)


# ---- submit ------------------------------------------------------------------------------------------


class TaskFile(list[dict[str, Any]]):
    """The tasks read from a file, with where each one starts, so errors can say `file:line`."""

    def __init__(self, tasks: list[dict[str, Any]], name: str, lines: list[int | None]) -> None:
        super().__init__(tasks)
        self.name = name
        self.lines = lines

    def locate(self, exc: ValidationError) -> ValidationError:
        """The server names a bad task `params.tasks[2].deps` (or `params.task`, or by its id in the
        message): say `tasks.jsonl:3: deps: ...` instead."""
        found = re.match(r"^params\.tasks\[(\d+)\]\.?(.*)$", exc.field) or re.match(
            r"^params\.task()\.?(.*)$", exc.field
        )
        index: int | None = None
        field = exc.field
        if found:
            index, field = int(found.group(1) or 0), found.group(2)
        else:
            named = re.search(r"task '([^']*)'", exc.message)
            ids = [t.get("id") for t in self]
            if named and named.group(1) in ids:
                index = ids.index(named.group(1))
        if index is None or index >= len(self):
            return exc
        line = self.lines[index]
        where = f"{self.name}:{line}" if line else f"{self.name} (task {index + 1})"
        shown = "" if exc.value is None else f" (got {exc.value!r})"
        located = ValidationError(exc.field, exc.message, exc.value)
        located.args = (f"{where}: {field + ': ' if field else ''}{exc.message}{shown}",)
        return located


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _element_lines(text: str, start: int) -> list[int | None]:
    """The line of each element of the JSON array whose `[` is at `start`."""
    decoder = json.JSONDecoder()
    lines: list[int | None] = []
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(_line_at(text, pos))
        try:
            _, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return lines


def _json_task_lines(text: str, data: Any) -> list[int | None]:
    first = len(text) - len(text.lstrip())
    if isinstance(data, list):
        return _element_lines(text, first)
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        array = re.search(r'"tasks"\s*:\s*\[', text)
        return _element_lines(text, array.end() - 1) if array else [None] * len(data["tasks"])
    return [_line_at(text, first)]


def read_task_file(path: str) -> TaskFile:
    """Tasks from JSON (one object, a list, or {"tasks": [...]}) or JSON lines; "-" is stdin."""
    if path == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        try:
            text, name = Path(path).read_text(), path
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    stripped = text.strip()
    if not stripped:
        raise CliError(f"{name}: no tasks", EXIT_USAGE)
    lines: list[int | None]
    try:
        data = json.loads(stripped)
        lines = _json_task_lines(text, data)
    except ValueError:
        data = None
        tasks = []
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                tasks.append(json.loads(line))
            except ValueError as exc:
                raise CliError(f"{name}:{n}: not JSON: {exc}", EXIT_USAGE) from None
            lines.append(n)
        data = tasks
    if isinstance(data, dict):
        data = data["tasks"] if isinstance(data.get("tasks"), list) else [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise CliError(f"{name}: expected task objects (JSON object, list, or JSON lines)", EXIT_USAGE)
    return TaskFile(data, name, lines)


def build_tasks(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.file:
        if args.prompt:
            raise CliError("give a prompt or --file, not both", EXIT_USAGE)
        return read_task_file(args.file)
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin.isatty() and prompt is None:
            raise CliError(
                'what should the agent do? shoal submit "PROMPT" (or pipe it on stdin)', EXIT_USAGE
            )
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise CliError("the prompt is empty", EXIT_USAGE)
    task: dict[str, Any] = {"prompt": prompt}
    for key in ("id", "category", "priority", "model", "max_attempts", "timeout_s"):
        value = getattr(args, key)
        if value is not None:
            task[key] = value
    if args.dep:
        task["deps"] = list(args.dep)
    if args.meta:
        task["metadata"] = dict(parse_assignment(m, "--meta") for m in args.meta)
    own = {
        key: value
        for key, value in (
            ("base", args.base),
            ("branch", args.branch),
            ("artifacts", args.artifact or None),
            ("required", args.require_artifacts or None),
            ("verify", args.verify),
        )
        if value is not None
    }
    if own:  # the task's own worktree options (docs/workspaces.md, "Per task")
        task.setdefault("metadata", {})["workspace"] = own
    return [task]


def _event_task_id(data: dict[str, Any]) -> str | None:
    for key in ("task_id", "id"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return None


def cmd_submit(args: argparse.Namespace) -> int:
    specs = build_tasks(args)
    for i, spec in enumerate(specs):  # argv and stdin carry undecodable bytes as lone surrogates
        bad = find_bad_text(spec, "task" if len(specs) == 1 else f"tasks[{i}]")
        if bad is not None:
            raise CliError(f"{bad[0]}: {bad[1]} (the input holds bytes that are not UTF-8)", EXIT_USAGE)

    async def go(c: Client) -> int:
        if not args.wait:
            tasks = await _submit(c, specs)
            if args.json:
                _print_json(tasks if len(tasks) > 1 or args.file else tasks[0])
            else:
                sys.stdout.write("".join(f"{t['id']}\n" for t in tasks))
            return EXIT_OK
        return await _submit_and_wait(c, args, specs)

    try:
        return _run(args, go)
    except ValidationError as exc:
        raise specs.locate(exc) if isinstance(specs, TaskFile) else exc from None


async def _submit(c: Client, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(specs) == 1:
        return [await c.call("tasks.submit", {"task": specs[0]})]
    reply = await c.call("tasks.submit", {"tasks": specs})
    tasks: list[dict[str, Any]] = reply["tasks"]
    return tasks


async def _submit_and_wait(c: Client, args: argparse.Namespace, specs: list[dict[str, Any]]) -> int:
    # subscribe before submitting, so no completion can slip between the two
    async with c.events(["task.*"]) as stream:
        tasks = await _submit(c, specs)
        states = {t["id"]: t["state"] for t in tasks}
        pending = {tid for tid, st in states.items() if st not in TERMINAL_VALUES}
        show = not args.json and sys.stderr.isatty()
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            disable=not show,
            transient=False,
        )

        def detail() -> str:
            counts: dict[str, int] = {}
            for st in states.values():
                counts[st] = counts.get(st, 0) + 1
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))

        with progress:
            bar = progress.add_task(
                "tasks", total=len(states), completed=len(states) - len(pending), detail=detail()
            )
            if not show and not args.json:
                sys.stderr.write(f"submitted {len(states)} task(s), waiting...\n")

            async def refresh(tid: str) -> None:
                task = await c.call("tasks.get", {"id": tid})
                states[tid] = task["state"]
                if task["state"] in TERMINAL_VALUES:
                    pending.discard(tid)

            while pending:
                item = await stream.__anext__()
                if isinstance(item, Gap | Overflow):
                    for tid in list(pending):  # events were lost: ask for the truth
                        await refresh(tid)
                elif isinstance(item, Event):
                    tid = _event_task_id(item.data)
                    if tid in states:
                        state = item.topic.removeprefix("task.")
                        if state in TERMINAL_VALUES or state in ("running", "failed", "ready", "blocked"):
                            states[tid] = state
                        if state in TERMINAL_VALUES:
                            pending.discard(tid)
                progress.update(bar, completed=len(states) - len(pending), detail=detail())
    final = [await c.call("tasks.get", {"id": tid}) for tid in states]
    failed = [t for t in final if t["state"] != TaskState.DONE]
    if args.json:
        _print_json(final if len(final) > 1 or args.file else final[0])
    else:
        for t in final:
            line = f"{t['id']} {t['state']}"
            if t["state"] == TaskState.DONE and t.get("result"):
                line += f": {_short(t['result'], 100)}"
            elif t.get("reason"):
                line += f": {_short(t['reason'], 100)}"
            sys.stdout.write(line + "\n")
    return EXIT_FAILED if failed else EXIT_OK


# ---- serve -------------------------------------------------------------------------------------------


def env_overrides(environ: dict[str, str] | os._Environ[str] | None = None) -> list[tuple[str, Any]]:
    """SHOAL__section__key=value variables as (dotted key, value) pairs."""
    env = os.environ if environ is None else environ
    pairs = []
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            key = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            pairs.append(parse_assignment(f"{key}={raw}"))
    return pairs


def build_serve_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SwarmConfig:
    """Defaults < --config FILE ($SHOAL_CONFIG) < SHOAL__* variables < flags (--set last)."""
    env = os.environ if environ is None else environ
    path = args.config or env.get(ENV_CONFIG)
    config = load_config(path) if path else SwarmConfig()
    pairs: list[tuple[str, Any]] = env_overrides(env)
    if env.get("SHOAL_STATE_DIR") and not args.state_dir and not config.state_dir:
        pairs.append(("state_dir", env["SHOAL_STATE_DIR"]))
    flags: list[tuple[str, Any]] = [
        ("state_dir", args.state_dir),
        ("gateway.host", args.host),
        ("gateway.port", args.port),
        ("http.host", args.http_host),
        ("http.port", args.http_port),
        ("workers.profile", args.profile),
        ("scaling.min_workers", args.min_workers),
        ("scaling.max_workers", args.max_workers),
        ("gateway.token_file", args.token_file),
    ]
    pairs += [(k, v) for k, v in flags if v is not None]
    if args.allow_remote:
        pairs += [("gateway.allow_remote", True)]
    if args.no_dashboard:
        pairs.append(("http.enabled", False))
    if args.log_format:
        pairs.append(("log.format", args.log_format))
    pairs += [parse_assignment(item, "--set") for item in args.set or ()]
    if pairs:
        config = patch_config(config, nest(pairs))
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = build_serve_config(args)
    warning = check_bind(config.gateway.host, config.gateway.allow_remote, "gateway")
    http_warning = check_bind(config.http.host, config.gateway.allow_remote, "http")
    for text in (warning, http_warning):
        if text:
            sys.stderr.write(text + "\n")
    from functools import partial

    from .service import serve

    trio.run(partial(serve, config, drain=args.drain))
    return EXIT_OK


# ---- argument parsing ----------------------------------------------------------------------------------


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
    p.add_argument("--base", help="worktree profiles: start the task's branch here (branch or commit)")
    p.add_argument("--branch", help="worktree profiles: the task's branch name (default: shoal/<id>)")
    p.add_argument("--artifact", action="append", metavar="GLOB", help="a file the task keeps (repeatable)")
    p.add_argument("--require-artifacts", action="store_true", help="a --artifact matching nothing fails it")
    p.add_argument("--verify", metavar="COMMAND", help="the task's own check, run in its worktree")
    p.add_argument(
        "--wait", action="store_true", help="wait for the tasks with a progress bar; exit 1 if any fails"
    )

    p = command("status", cmd_status, "the swarm's state, workers and queue", True)
    p.add_argument(
        "--tree", action="store_true", help="the supervision tree: each child's state, restarts, last crash"
    )
    command("workers", cmd_workers, "list workers", True)
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
            _simple(method, lambda a: {"id": a.worker}, verb + " worker {args.worker}"),
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
            _simple(method, lambda a: {"id": a.id}, "task {args.id}: {reply[state]}"),
            f"{name} a task",
            True,
        )
        p.add_argument("id")
    p = command(
        "boost",
        _simple(
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
        _simple("tasks.assign", lambda a: {"id": a.id, "worker": a.worker}, "task {args.id} → {args.worker}"),
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
        _simple("swarm.halt", lambda a: {"reason": a.reason}, "swarm {reply[state]}: {args.reason}"),
        "halt the swarm (stop spawning, keep every task)",
        True,
    )
    p.add_argument("reason", nargs="?", default="halted by an operator")
    p = command(
        "stop",
        _simple("swarm.stop", lambda a: {"drain": a.drain}, "swarm {reply[state]}"),
        "stop taking tasks",
        True,
    )
    p.add_argument("--drain", action="store_true", help="let running tasks finish")
    command(
        "start", _simple("swarm.start", lambda a: {}, "swarm {reply[state]}"), "start again after stop", True
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


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"shoal: {message}\n")
    return code


def _iter_leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _iter_leaves(inner)
    else:
        yield exc


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, and map every error to a message and an exit code."""
    args = build_parser().parse_args(argv)
    try:
        try:
            return int(args.handler(args))
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except CliError as exc:
        return _fail(exc.message, exc.code)
    except AuthError as exc:
        return _fail(str(exc), EXIT_AUTH)
    except GatewayError as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except ValidationError as exc:
        return _fail(f"invalid input: {exc}", EXIT_USAGE)
    except NotFound as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except Conflict as exc:
        return _fail(f"not allowed now: {exc}", EXIT_CONFLICT)
    except rpc.RpcError as exc:
        if exc.code == rpc.UNAUTHORIZED:
            return _fail(
                f"the gateway wants a token ({exc.message}): pass --token / --token-file, set "
                f"${ENV_TOKEN}, or run on the server's host where `shoal token` prints it",
                EXIT_AUTH,
            )
        return _fail(f"{exc.message} (JSON-RPC error {exc.code})", EXIT_FAILED)
    except ShoalError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except BrokenPipeError:
        return EXIT_OK  # e.g. `shoal tasks | head`


def main(argv: Sequence[str] | None = None) -> int:
    """The `shoal` console script."""
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
