"""What goes into a collection: documents (text or precomputed chunk vectors) and the add report."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.unicode import is_unicode
from .errors import BadDocumentError

MAX_ID_LENGTH = 512
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what the stores' JSON readers hold


@dataclass
class Document:
    """``chunks`` (text, vector) pairs are stored as given, skipping chunking and embedding."""

    id: str
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    chunks: Sequence[tuple[str, Sequence[float] | np.ndarray]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            self.id = str(self.id)  # as a JSONL record's or an HTTP document's integer id

    def validate(self) -> None:
        if not isinstance(self.id, str):
            raise BadDocumentError("document id must be a string")
        if not self.id.strip():
            raise BadDocumentError("document id is empty")
        if len(self.id) > MAX_ID_LENGTH:
            raise BadDocumentError(f"document id is longer than {MAX_ID_LENGTH} characters")
        if not is_unicode(self.id):
            raise BadDocumentError("document id is not valid Unicode (a lone surrogate)")
        if not isinstance(self.metadata, dict):
            raise BadDocumentError("metadata must be an object")
        bad = _bad_metadata(self.metadata, "metadata")
        if bad is not None:
            raise BadDocumentError(bad)
        if not isinstance(self.source, str):
            raise BadDocumentError("source must be a string")
        if not is_unicode(self.source):
            # (content_hash and the store encode it as UTF-8: it would fail there, the whole batch)
            raise BadDocumentError("source is not valid Unicode (a lone surrogate)")
        texts = [self.text] if self.chunks is None else [text for text, _ in self.chunks]
        for text in texts:
            if not isinstance(text, str):
                raise BadDocumentError(f"text must be a string, not {type(text).__name__}")
            if not is_unicode(text):
                raise BadDocumentError("text is not valid Unicode (a lone surrogate)")
        if self.chunks is None and not self.text.strip():
            raise BadDocumentError("the document is empty")
        if self.chunks is not None and not self.chunks:
            raise BadDocumentError("chunks is an empty list")
        for _, vector in self.chunks or ():
            try:
                array = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise BadDocumentError("a precomputed embedding is not a list of numbers") from None
            if array.ndim != 1:
                raise BadDocumentError("a precomputed embedding must be a flat list of numbers")

    def metadata_json(self) -> str:
        try:
            return json.dumps(
                self.metadata, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as error:
            raise BadDocumentError(f"metadata is not JSON: {error}") from None

    def content_hash(self) -> str:
        """Same hash ⇒ same stored chunks, so re-adding an unchanged document is a no-op."""
        digest = hashlib.sha256()
        for part in (self.text, self.metadata_json(), self.source):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        for text, vector in self.chunks or ():
            digest.update(text.encode("utf-8"))
            digest.update(np.asarray(vector, dtype=np.float32).tobytes())
        return digest.hexdigest()


def shown(text: str) -> str:
    """``text`` safe to print or put in a JSON answer: lone surrogates as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _bad_metadata(value: Any, where: str) -> str | None:
    """Why ``value`` (at path ``where``, e.g. ``metadata.a.b[2]``) cannot be stored, or None.

    - NaN and ±Infinity: JSON has neither; stored, they break every filter on the field.
    - Integers outside signed 64 bits: the stores read JSON integers as int64, so one such value
      makes every integer filter on its field fail (LanceDB: "Failed to convert to integer").
    - Lone surrogates in keys or strings: not Unicode, no UTF-8 form to hash or store.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is not a finite number (NaN, Infinity or out of range)"
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return (
            f"{where} is an integer outside the signed 64-bit range, which filters cannot read: "
            "store it as a string (or a float)"
        )
    if isinstance(value, str) and not is_unicode(value):
        return f"{where} is not valid Unicode (a lone surrogate)"
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and not is_unicode(key):
                return f"{where} has a key that is not valid Unicode (a lone surrogate): {key!r}"
        items = ((f"{where}.{shown(str(key))}", item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for path, item in items if (found := _bad_metadata(item, path)) is not None), None)


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (document id or file, reason)
    chunks: int = 0

    def merge(self, other: AddReport) -> None:
        self.added += other.added
        self.replaced += other.replaced
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.chunks += other.chunks

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "failed": [{"id": doc, "message": reason} for doc, reason in self.failed],
            "chunks": self.chunks,
        }
