"""Commands about the swarm as a whole and its workers: status, models, workers, config, answer,
resume, events, token, version. (The one-call commands such as `pause` or `halt` are declared in
parser.py with `one_call`.)"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from ...protocols import rpc
from ...protocols.config import load_config
from ...runtime.eventbus import Event
from ..auth import ENV_TOKEN_FILE, read_token, resolve_state_dir, token_path
from ..client import Client, Gap, Overflow
from .connection import one_call, run_with_client, stop_on_sigint
from .errors import EXIT_OK, EXIT_USAGE, CliError
from .output import make_console, models_table, print_json, shorten, status_table, tree_view, workers_table
from .values import lookup, nest, parse_assignment


def cmd_status(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        status = await c.status()
        if args.json:
            print_json(status["tree"] if args.tree else status)
        elif args.tree:
            make_console().print(tree_view(status.get("tree") or []))
        else:
            make_console().print(status_table(status))
        return EXIT_OK

    return run_with_client(args, go)


def cmd_models(args: argparse.Namespace) -> int:
    if args.action is not None and not args.model:
        raise CliError(f"shoal models {args.action} needs a MODEL", EXIT_USAGE)

    async def go(c: Client) -> int:
        if args.action == "resume":
            state = await c.resume_model(args.model)
            if args.json:
                print_json(state)
            else:
                make_console().print(f"{args.model}: resumed, takes work again")
            return EXIT_OK
        if args.action == "pause":
            state = await c.pause_model(args.model, args.reason)
            if args.json:
                print_json(state)
            else:
                make_console().print(f"{args.model}: paused until `shoal models resume {args.model}`")
            return EXIT_OK
        models = (await c.status()).get("models") or []
        if args.json:
            print_json(models)
        else:
            make_console().print(models_table(models))
        return EXIT_OK

    return run_with_client(args, go)


def cmd_workers(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        workers = (await c.call("workers.list"))["workers"]
        if args.json:
            print_json(workers)
        elif not workers:
            make_console().print("no workers")
        else:
            make_console().print(workers_table(workers))
        return EXIT_OK

    return run_with_client(args, go)


def cmd_config(args: argparse.Namespace) -> int:
    async def go(c: Client) -> int:
        if args.action == "get":
            data = await c.call("swarm.config.get")
            value = lookup(data, args.key) if args.key else data
            if args.json or isinstance(value, dict | list):
                print_json(value)
            else:
                sys.stdout.write(("null" if value is None else str(value)) + "\n")
            return EXIT_OK
        items = ([args.key] if args.key else []) + list(args.pairs)
        if not items:
            raise CliError("config set needs at least one KEY=VALUE", EXIT_USAGE)
        pairs = [parse_assignment(p, "config set") for p in items]
        data = await c.call("swarm.config.patch", {"partial": nest(pairs)})
        if args.json:
            print_json(data)
        else:
            for key, _ in pairs:
                sys.stdout.write(f"{key} = {json.dumps(lookup(data, key))}\n")
        return EXIT_OK

    return run_with_client(args, go)


def cmd_resume(args: argparse.Namespace) -> int:
    if args.worker:
        return one_call("workers.resume", lambda a: {"id": a.worker}, "resumed worker {args.worker}")(args)
    return one_call("swarm.resume", lambda a: {}, "swarm {reply[state]}")(args)


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
            print_json(reply)
        else:
            sys.stdout.write(show(reply) + "\n")
        return EXIT_OK

    return run_with_client(args, go)


def cmd_events(args: argparse.Namespace) -> int:
    stop_on_sigint()  # without --count it runs until interrupted

    async def go(c: Client) -> int:
        seen = 0
        console = make_console()
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
                        fields = " ".join(f"{k}={shorten(json.dumps(v), 60)}" for k, v in item.data.items())
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

    return run_with_client(args, go)


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
    from ..gateway import SHOAL_VERSION

    if args.local:
        sys.stdout.write(f"shoal {SHOAL_VERSION} (protocol {rpc.PROTOCOL_VERSION})\n")
        return EXIT_OK

    async def go(c: Client) -> int:
        reply = await c.version()
        if args.json:
            print_json({"client": SHOAL_VERSION, "server": reply})
        else:
            sys.stdout.write(
                f"client {SHOAL_VERSION} · server {reply['version']} (protocol {reply['protocol']})\n"
            )
        return EXIT_OK

    return run_with_client(args, go)
