"""Commands that show a worker's terminal: `logs` (its output, or --follow) and `attach` (a live
session in raw mode, detached with a key)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import trio

from ...protocols.errors import Conflict, ShoalError
from ..client import Client
from .connection import run_with_client, stop_on_sigint
from .errors import EXIT_OK, EXIT_USAGE, CliError

DEFAULT_DETACH_KEY = "^]"


def cmd_logs(args: argparse.Namespace) -> int:
    if args.follow:
        stop_on_sigint()

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

    return run_with_client(args, go)


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

    return run_with_client(args, go)


async def _resize(att: Any) -> None:
    size = os.get_terminal_size(sys.stdout.fileno())
    try:
        await att.resize(size.lines, size.columns)
    except ShoalError:
        pass
