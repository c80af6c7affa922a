"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def refuse_repeats(option: str, values: Sequence[str], key: Callable[[str], object] = str) -> None:
    """Raise EvalError where two of ``values`` (as the user wrote them) are the same setting by
    ``key`` (``8`` and ``08``, two spellings of one file): a repeat would only evaluate the same
    thing twice, as identical rows or sections, so every option of the ``eval`` commands refuses
    one, as ``--model`` does, rather than guess which the user meant."""
    seen: dict[object, str] = {}
    for value in values:
        k = key(value)
        if k not in seen:
            seen[k] = value
            continue
        first = seen[k]
        same = f"{first!r} is given twice" if first == value else f"{first!r} and {value!r} are the same"
        raise EvalError(f"{option}: {same}; give each once")
