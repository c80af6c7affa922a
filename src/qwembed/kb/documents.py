"""What goes into a collection: documents (text or precomputed chunk vectors) and the add report."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadDocumentError

MAX_ID_LENGTH = 512


@dataclass
class Document:
    """``chunks`` (text, vector) pairs are stored as given, skipping chunking and embedding."""

    id: str
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    chunks: Sequence[tuple[str, Sequence[float] | np.ndarray]] | None = None

    def validate(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip() or len(self.id) > MAX_ID_LENGTH:
            raise BadDocumentError(f"document id must be a non-empty string of at most {MAX_ID_LENGTH} chars")
        if not isinstance(self.metadata, dict):
            raise BadDocumentError("metadata must be an object")
        bad = _non_finite(self.metadata, "metadata")
        if bad is not None:
            # JSON has no NaN or infinity; stored, they break every filter on the field
            raise BadDocumentError(f"{bad} is not a finite number (NaN, Infinity or out of range)")
        if not isinstance(self.source, str):
            raise BadDocumentError("source must be a string")
        texts = [self.text] if self.chunks is None else [text for text, _ in self.chunks]
        for text in texts:
            if not isinstance(text, str):
                raise BadDocumentError(f"text must be a string, not {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BadDocumentError("text is not valid Unicode (a lone surrogate)") from None
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


def _non_finite(value: Any, where: str) -> str | None:
    """The path (``metadata.a.b[2]``) of the first NaN or infinite number in ``value``, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = ((f"{where}.{key}", item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for path, item in items if (found := _non_finite(item, path)) is not None), None)


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
