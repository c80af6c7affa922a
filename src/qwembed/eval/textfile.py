"""Line reading that reports undecodable bytes with the exact line number."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the newline) for each non-blank line.

    Decodes line by line from bytes, because a text-mode reader decodes in chunks and would
    blame a line before the real culprit.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors reported first
    except OSError as exc:
        raise DataError(path, exc.strerror or "cannot open") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(path, "not valid UTF-8", lineno) from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; each line must be a JSON object."""
    for lineno, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON ({exc.msg})", lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, "expected a JSON object per line", lineno)
        yield lineno, obj


def require_str(path: Path, lineno: int, obj: dict[str, Any], key: str) -> str:
    """``obj[key]`` as a non-empty string, or a DataError naming file, line and key."""
    if key not in obj:
        raise DataError(path, f"missing key {key!r}", lineno)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, f"{key!r} must be a string, got {type(value).__name__}", lineno)
    if not value.strip():
        raise DataError(path, f"{key!r} is empty", lineno)
    return value
