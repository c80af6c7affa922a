"""Paths → documents: folders walked, each file parsed; JSONL records; bad inputs reported, skipped."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .documents import Document
from .errors import BadDocumentError, PathNotAllowedError
from .parsers import PARSERS, parse_file


@dataclass(frozen=True)
class Failure:
    """A file (or a JSONL line) that was skipped, and why."""

    item: str
    reason: str


def confine(path: str | Path, roots: Sequence[Path]) -> Path:
    """Resolve ``path`` (symlinks too) and insist it is inside one of ``roots``."""
    if not roots:
        raise PathNotAllowedError("this server reads no files: start it with a file root", "paths")
    resolved = Path(path).expanduser().resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowedError(f"{path} is outside the allowed folders", "paths")
    return resolved


def _files(path: Path) -> Iterator[tuple[Path, str]]:
    """(file, document id): a folder's files get ids relative to it, a lone file its name."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if file.suffix.lower() in PARSERS or file.suffix.lower() == ".jsonl":
                yield file, file.relative_to(path).as_posix()
    else:
        yield path, path.name


def read_jsonl(path: Path) -> Iterator[Document | Failure]:
    """Records ``{"id", "text", "metadata"?, "source"?}``, or ``"chunks": [{"text", "embedding"}]``."""
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or "id" not in record:
                        raise ValueError("a record needs an 'id'")
                    chunks = record.get("chunks")
                    yield Document(
                        id=str(record["id"]),
                        text=str(record.get("text", "")),
                        metadata=record.get("metadata") or {},
                        source=str(record.get("source", where)),
                        chunks=[(c["text"], c["embedding"]) for c in chunks] if chunks is not None else None,
                    )
                except (ValueError, KeyError, TypeError) as error:
                    yield Failure(where, f"bad JSONL record: {error}")
        except UnicodeDecodeError:
            yield Failure(str(path), "not valid UTF-8")


def read_paths(paths: Sequence[str | Path], metadata: dict | None = None) -> Iterator[Document | Failure]:
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            yield Failure(str(path), "no such file or folder")
            continue
        for file, doc_id in _files(path):
            if file.suffix.lower() == ".jsonl":
                yield from read_jsonl(file)
                continue
            try:
                text = parse_file(file)
            except BadDocumentError as error:
                yield Failure(str(file), str(error))
                continue
            yield Document(id=doc_id, text=text, metadata=dict(metadata or {}), source=str(file))
