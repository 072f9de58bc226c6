"""Task commands: `submit` (a prompt, stdin or a file of tasks; --wait with a progress bar),
`tasks`, `task` and `complete`. Task files keep where each task starts, so the server's
validation errors come back as `file:line`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...protocols.errors import ValidationError
from ...protocols.tasks import TERMINAL_STATES, TaskState
from ...protocols.text import find_bad_text
from ...runtime.eventbus import Event
from ..client import Client, Gap, Overflow
from .connection import one_call, run_with_client
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from .output import make_console, print_json, shorten, task_detail, tasks_table
from .values import parse_assignment

TERMINAL_VALUES = {str(s) for s in TERMINAL_STATES}


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
            print_json({"tasks": tasks, "cursor": cursor})
            return EXIT_OK
        console = make_console()
        if not tasks:
            console.print("no tasks" + (f" in state {args.state}" if args.state else ""))
        else:
            console.print(tasks_table(tasks))
        if cursor and not args.all:
            console.print(
                f"more: shoal tasks --cursor {cursor}" + (f" --state {args.state}" if args.state else "")
            )
        return EXIT_OK

    return run_with_client(args, go)


def cmd_task(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        task = await c.call("tasks.get", {"id": args.id})
        if args.json:
            print_json(task)
        else:
            console = make_console()
            for part in task_detail(task):
                console.print(part)
        return EXIT_OK

    return run_with_client(args, go)


def cmd_complete(args: argparse.Namespace) -> int:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        out: dict[str, Any] = {"id": a.id, "attempt": a.attempt, "status": a.status}
        if a.result is not None:
            out["result"] = sys.stdin.read() if a.result == "-" else a.result
        if a.reason is not None:
            out["reason"] = a.reason
        return out

    return one_call("tasks.complete", params, "task {args.id}: {reply[state]}")(args)


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
    deps = list(args.dep or [])
    if args.continue_from is not None and args.continue_from not in deps:
        deps.append(args.continue_from)  # the conversation continued must have ended first
    if deps:
        task["deps"] = deps
    if args.meta:
        task["metadata"] = dict(parse_assignment(m, "--meta") for m in args.meta)
    own = {
        key: value
        for key, value in (
            ("repo", _server_path(args.repo)),
            ("base", args.base),
            ("branch", args.branch),
            ("artifacts", args.artifact or None),
            ("required", args.require_artifacts or None),
            ("verify", args.verify),
            ("continue", args.continue_from),
        )
        if value is not None
    }
    if own:  # the task's own worktree options (docs/workspaces.md, "Per task")
        task.setdefault("metadata", {})["workspace"] = own
    return [task]


def _server_path(path: str | None) -> str | None:
    """`--repo`: a relative path is made absolute here (the service runs elsewhere); `~` is the
    service's to expand."""
    if path is None or path.startswith(("/", "~")):
        return path
    return os.path.abspath(path)


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
                print_json(tasks if len(tasks) > 1 or args.file else tasks[0])
            else:
                sys.stdout.write("".join(f"{t['id']}\n" for t in tasks))
            return EXIT_OK
        return await _submit_and_wait(c, args, specs)

    try:
        return run_with_client(args, go)
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
        print_json(final if len(final) > 1 or args.file else final[0])
    else:
        for t in final:
            line = f"{t['id']} {t['state']}"
            if t["state"] == TaskState.DONE and t.get("result"):
                line += f": {shorten(t['result'], 100)}"
            elif t.get("reason"):
                line += f": {shorten(t['reason'], 100)}"
            sys.stdout.write(line + "\n")
    return EXIT_FAILED if failed else EXIT_OK
