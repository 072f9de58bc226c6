"""`run`: parse argv, run the command, and map every error to a message and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ...protocols import rpc
from ...protocols.errors import Conflict, NotFound, ShoalError, ValidationError
from ..auth import ENV_TOKEN
from ..client import AuthError, GatewayError, unwrap_group
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
from .parser import build_parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"shoal: {message}\n")
    return code


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
