"""Paths → documents: folders walked, each file parsed; JSONL records; bad inputs reported, skipped.

A file's document id is its absolute path (symlinks resolved, ``/`` separators), whether it was
named alone or found inside a folder, from the CLI or through the server: one file is one document
however it is reached, and two files never share an id. (Before, a lone file was keyed by its name
and a folder's files by their path inside the folder, so ``a/notes.txt`` and ``b/notes.txt``
overwrote each other.) JSONL records carry their own ids; a record without a ``source`` gets
``FILE:LINE`` with the file's id, its absolute path, for the same reason: written relative, one
file read from two working folders (or by a server and the CLI) gave each record two sources, and
so two content hashes, and each read replaced what the other had stored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .documents import Document
from .errors import BadDocumentError, KBError, PathNotAllowedError
from .parsers import PARSERS, parse_file

_LISTED_SKIPS = 10  # unsupported files named in a folder's skip report; the rest are counted


@dataclass(frozen=True)
class Failure:
    """A file (or a JSONL line) that was skipped, and why."""

    item: str
    reason: str


@dataclass(frozen=True)
class Skipped(Failure):
    """Files of unsupported types inside a folder: left out by design, reported, not an error."""


def confine(path: str | Path, roots: Sequence[Path]) -> Path:
    """Resolve ``path`` (symlinks too) and insist it is inside one of ``roots``."""
    if not roots:
        raise PathNotAllowedError("this server reads no files: start it with a file root", "paths")
    if "\x00" in str(path):  # no file name holds one; the OS calls refuse it (ValueError, a 500)
        raise KBError(f"path {str(path)!r} contains a null character: no file has such a name", "paths")
    resolved = Path(path).expanduser().resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowedError(f"{path} is outside the allowed folders", "paths")
    return resolved


def file_document_id(path: str | Path) -> str:
    """The document id of a file: its absolute path, symlinks resolved (see the module docstring)."""
    return Path(path).expanduser().resolve().as_posix()


def _ingestible(path: Path) -> bool:
    return path.suffix.lower() in PARSERS or path.suffix.lower() == ".jsonl"


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files to read, unsupported files) under ``folder``; hidden files and folders are left out."""
    files: list[Path] = []
    unsupported: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (files if _ingestible(path) else unsupported).append(path)
    return files, unsupported


def _skip_report(folder: Path, unsupported: list[Path]) -> Skipped:
    kinds = Counter(path.suffix.lower() or "(none)" for path in unsupported)
    names = ", ".join(path.relative_to(folder).as_posix() for path in unsupported[:_LISTED_SKIPS])
    more = f" and {len(unsupported) - _LISTED_SKIPS} more" if len(unsupported) > _LISTED_SKIPS else ""
    types = ", ".join(f"{suffix} ×{count}" for suffix, count in sorted(kinds.items()))
    return Skipped(str(folder), f"{len(unsupported)} files of unsupported types ({types}): {names}{more}")


def _string(record: dict[str, Any], key: str, default: str) -> str:
    """A record's text field: absent or null → ``default``; anything but a string is an error
    (``str()`` would index ``null`` as the word "None" and ``12`` as the text "12")."""
    value = record.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def _record_id(record: dict[str, Any]) -> str:
    value = record.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # numeric ids are common in exports; 12 and "12" are the same document
    if not isinstance(value, str):
        raise ValueError("a record needs an 'id' (a string or an integer)")
    return value


def _chunks(record: dict[str, Any]) -> list[tuple[str, list[float]]] | None:
    chunks = record.get("chunks")
    if chunks is None:
        return None
    if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
        raise ValueError('\'chunks\' must be a list of {"text", "embedding"} objects')
    return [(_string(c, "text", ""), c["embedding"]) for c in chunks]


def read_jsonl(path: Path) -> Iterator[Document | Failure]:
    """Records ``{"id", "text", "metadata"?, "source"?}``, or ``"chunks": [{"text", "embedding"}]``.
    A record's default source is ``FILE:LINE``, FILE as its document id (see the module docstring);
    failures name the line as the path was given, for the person who gave it."""
    origin = file_document_id(path)
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    # Python's json reads NaN, Infinity and 1e400 (→ inf): Document.validate
                    # rejects them in metadata under the document's id, like any bad document
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("a record must be an object")
                    yield Document(
                        id=_record_id(record),
                        text=_string(record, "text", ""),
                        metadata=record.get("metadata") or {},
                        source=_string(record, "source", f"{origin}:{number}"),
                        chunks=_chunks(record),
                    )
                except (ValueError, KeyError, TypeError) as error:
                    yield Failure(where, f"bad JSONL record: {error}")
        except UnicodeDecodeError:
            yield Failure(str(path), "not valid UTF-8")


def read_paths(paths: Sequence[str | Path], metadata: dict | None = None) -> Iterator[Document | Failure]:
    """Documents and failures, in order; a file reached twice (alone and in a folder) is read once."""
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            yield Failure(str(path), "no such file or folder")
            continue
        if path.is_dir():
            files, unsupported = _walk(path)
            if unsupported:
                yield _skip_report(path, unsupported)
        else:
            files = [path]
        for file in files:
            doc_id = file_document_id(file)
            if doc_id in seen:
                continue
            seen.add(doc_id)
            if file.suffix.lower() == ".jsonl":
                yield from read_jsonl(file)
                continue
            try:
                text = parse_file(file)
            except BadDocumentError as error:
                yield Failure(str(file), str(error))
                continue
            yield Document(id=doc_id, text=text, metadata=dict(metadata or {}), source=doc_id)
