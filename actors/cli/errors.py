"""The exit codes scripts can trust, and the error that carries one to `run`."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNREACHABLE = 5
EXIT_AUTH = 6
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        self.message = message
        self.code = code
        super().__init__(message)
