"""Which gateway and token a command uses, and running a command's coroutine with a client.

The gateway's URL is --url, else $SHOAL_URL, else the one the running server wrote in its state
directory, else ws://127.0.0.1:8765/. The token is --token, else $SHOAL_TOKEN, else --token-file /
$SHOAL_TOKEN_FILE, else the server's token file in the state directory (--state-dir /
$SHOAL_STATE_DIR / the user data directory).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ...protocols.errors import ValidationError
from ..auth import (
    DEFAULT_URL,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    ENV_URL,
    read_endpoint,
    read_token,
    resolve_state_dir,
    token_path,
)
from ..client import Client, connect
from .errors import EXIT_OK
from .output import print_json


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
async def open_client(args: argparse.Namespace) -> Any:
    url = resolve_url(args)
    token = resolve_token(args)
    async with connect(url, token, call_timeout=args.timeout) as client:
        yield client


def run_with_client(args: argparse.Namespace, fn: Callable[[Client], Awaitable[int | None]]) -> int:
    async def main() -> int | None:
        async with open_client(args) as client:
            return await fn(client)

    return trio.run(main) or EXIT_OK


def one_call(
    method: str, params: Callable[[argparse.Namespace], dict[str, Any]], show: str
) -> Callable[[argparse.Namespace], int]:
    """A command that makes one call and prints one line (or the reply with --json)."""

    def command(args: argparse.Namespace) -> int:
        async def go(c: Client) -> int:
            reply = await c.call(method, params(args))
            if getattr(args, "json", False):
                print_json(reply)
            else:
                sys.stdout.write(show.format(args=args, reply=reply) + "\n")
            return EXIT_OK

        return run_with_client(args, go)

    return command


def stop_on_sigint() -> None:
    """A command that runs until Ctrl-C must stop on SIGINT even when it was started ignoring it.

    A shell script's `shoal logs W --follow &` (a background job without job control), or a test
    suite run that way, starts it with SIGINT set to "ignore"; Python and trio then leave it ignored,
    so `kill -INT` and Ctrl-C never stop it (it used to hang until killed).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
