"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class EvalError(Exception):
    """A problem the user can fix (bad data, bad option); never shown with a traceback."""


class DataError(EvalError):
    """A data file is unusable; the message names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
