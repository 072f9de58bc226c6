"""Commands that review what tasks left behind (worktree profiles): `diff`, `merge`,
`workspaces` (list, prune) and `artifacts`."""

from __future__ import annotations

import argparse
import base64
import re
import sys
import time

import trio
from rich.table import Table
from rich.text import Text

from ..client import Client
from .connection import run_with_client
from .errors import EXIT_OK, EXIT_USAGE, CliError
from .output import age, diff_text, make_console, plain_row, print_json


def cmd_diff(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        reply = await c.diff(args.id, args.attempt, args.stat)
        if args.json:
            print_json(reply)
            return EXIT_OK
        span = f"{reply['base'][:12]}..{reply['head'][:12]}"
        files = reply.get("files_changed", len(reply["files"]))
        head = (
            f"task {reply['id']}, attempt {reply['attempt']}: branch {reply['branch']} ({span}), "
            f"{files} file(s), +{reply['insertions']} -{reply['deletions']}"
        )
        tty = sys.stdout.isatty()
        console = make_console()
        console.print(Text(head, style="bold") if tty else head)
        if tty:
            console.print(diff_text(reply["diff"]), end="")
        else:
            sys.stdout.write(reply["diff"])
        if reply.get("truncated"):
            console.print(f"(the patch was cut: see it whole with git diff {reply['base']} {reply['head']})")
        return EXIT_OK

    return run_with_client(args, go)


def cmd_merge(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        reply = await c.merge(args.id, args.attempt, args.into, args.squash)
        if args.json:
            print_json(reply)
        elif reply["already"]:
            print(f"{reply['branch']} is already in {reply['into']} ({reply['commit'][:12]})")
        else:
            how = "squashed into" if reply["squash"] else "merged into"
            print(f"{reply['branch']} {how} {reply['into']}: {reply['commit'][:12]}")
        return EXIT_OK

    return run_with_client(args, go)


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
                print_json(reply)
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
            print_json(listed)
            return EXIT_OK
        table = Table(box=None, header_style="bold", title="worktrees", title_justify="left")
        for name in ("PATH", "WORKER", "BRANCH", "HEAD"):
            table.add_column(name)
        for w in listed["worktrees"]:
            plain_row(
                table,
                w["path"],
                w["worker"] or "- (unused)",
                w["branch"] or "(detached)",
                (w["head"] or "")[:12],
            )
        console = make_console()
        console.print(table)
        now = time.time()
        branches = Table(box=None, header_style="bold", title="task branches", title_justify="left")
        for name in ("BRANCH", "HEAD", "LAST COMMIT", "REPO"):
            branches.add_column(name)
        for b in listed["branches"]:
            plain_row(branches, b["branch"], b["head"][:12], age(b["committed"], now) + " ago", b["repo"])
        console.print(branches)
        return EXIT_OK

    return run_with_client(args, go)


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
            print_json(reply)
            return EXIT_OK
        print(f"task {reply['id']}, attempt {reply['attempt']}: {len(reply['artifacts'])} artifact(s)")
        for a in reply["artifacts"]:
            print(f"  {a['name']}  {a['size']} bytes")
        for pattern in reply["missing"]:
            print(f"  missing: nothing matched {pattern}")
        for s in reply["skipped"]:
            print(f"  skipped: {s['name']}: {s['reason']}")
        return EXIT_OK

    return run_with_client(args, go)
