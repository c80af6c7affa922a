"""What a collection was built with, stored next to it and checked on every add and search.

Vectors from a different model, a different ``dimensions`` or a different chunking are silent
garbage when mixed, so the settings are written once at creation and compared, never updated.

The precision the model runs in (``--dtype``) and its device are deliberately not settings: the
same weights in bf16 and float32 give vectors within rounding of each other (cosine > 0.99 to
each other, dense scores within ~0.01; the probe-vector check allows for it), not another vector
space, so a bf16 GPU server and a float32 CPU command line can share one collection. Recording
the dtype would turn such a pair into a 409 with nothing wrong in the data; the cost of mixing is
scores that differ in the third decimal, and a search run in float32 compares its float32 query
vector with whatever precision the chunks were embedded in.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CollectionDamagedError,
    InvalidNameError,
    InvalidSettingError,
    KBError,
    SettingsMismatchError,
)

SCHEMA_VERSION = 1
SETTINGS_FILE = "collection.json"
#: the smallest chunk: below it a chunk holds little beyond the model's special tokens
MIN_CHUNK_TOKENS = 8
# Collection names become directory names and table names: keep them boring.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            "name",
        )
    return name


def check_store(store: str) -> str:
    """``lance``, ``milvus-lite:FILE.db`` (bare ``milvus-lite:``: ``milvus.db`` in the collection's
    folder), ``milvus://HOST:PORT`` or ``http(s)://HOST:PORT``."""
    lite = store.removeprefix("milvus-lite:")
    server = store.removeprefix("milvus://").removeprefix("http://").removeprefix("https://")
    if (
        store == "lance"
        or (store.startswith("milvus-lite:") and (lite == "" or (lite.endswith(".db") and len(lite) > 3)))
        or (store.startswith(("milvus://", "http://", "https://")) and server.strip("/"))
    ):
        return store
    raise KBError(f"unknown store {store!r}: use lance, milvus-lite:FILE.db or milvus://HOST:PORT", "store")


@dataclass(frozen=True)
class ChunkingSettings:
    """``chunk_tokens`` counts the model's special tokens; ``overlap_tokens`` whole sentences only."""

    chunk_tokens: int = 256
    overlap_tokens: int = 32

    def validate(self, max_tokens: int) -> None:
        """For a new collection: values the model cannot have are the request's error (400), not a
        conflict with stored settings (there are none yet)."""
        if not MIN_CHUNK_TOKENS <= self.chunk_tokens <= max_tokens:
            raise InvalidSettingError(
                "chunking.chunk_tokens",
                self.chunk_tokens,
                f"between {MIN_CHUNK_TOKENS} and the model's limit of {max_tokens} tokens",
            )
        if not 0 <= self.overlap_tokens <= self.chunk_tokens // 2:
            raise InvalidSettingError(
                "chunking.overlap_tokens",
                self.overlap_tokens,
                f"between 0 and half the chunk size ({self.chunk_tokens // 2})",
            )


def default_chunking(max_tokens: int) -> ChunkingSettings:
    # 256 tokens keeps passages focused (and fits MiniLM); long-context models gain little from
    # bigger chunks for passage retrieval, and an eighth of overlap keeps sentence context.
    size = min(256, max_tokens)
    return ChunkingSettings(chunk_tokens=size, overlap_tokens=size // 8)


@dataclass(frozen=True)
class CollectionSettings:
    name: str
    model: str  # what the embedder factory is given to load the model
    model_name: str  # the loaded model's own name, compared on every open
    model_dimension: int  # the model's full output width
    dimensions: int | None  # Matryoshka truncation, None = full width
    chunking: ChunkingSettings
    query_instruction: str | None = None  # None: the model's own query prompt
    keyword_tokenizer: str = "jieba"
    store: str = "lance"
    # A few components of a probe sentence's vector: catches a different checkpoint behind the
    # same name (a re-downloaded folder, a swapped file) before it pollutes the collection.
    fingerprint: list[float] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def vector_dimension(self) -> int:
        return self.dimensions or self.model_dimension

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectionSettings:
        data = dict(data)
        data["chunking"] = ChunkingSettings(**data["chunking"])
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """What the API and CLI show (the fingerprint is an implementation detail)."""
        data = self.to_json()
        data.pop("fingerprint")
        return data

    def check_request(
        self,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        chunking: ChunkingSettings | None = None,
    ) -> None:
        """An explicit model/dimensions/chunking in a request must equal the stored one."""
        if model is not None and model not in (self.model, self.model_name):
            raise SettingsMismatchError(
                f"collection {self.name!r} was built with model {self.model!r}, not {model!r}", "model"
            )
        if dimensions is not None and dimensions != self.vector_dimension:
            raise SettingsMismatchError(
                f"collection {self.name!r} stores {self.vector_dimension}-dimensional vectors, "
                f"not {dimensions}",
                "dimensions",
            )
        if chunking is not None and chunking != self.chunking:
            raise SettingsMismatchError(
                f"collection {self.name!r} was built with chunking {asdict(self.chunking)}, "
                f"not {asdict(chunking)}",
                "chunking",
            )


def write_settings(directory: Path, settings: CollectionSettings) -> None:
    """Atomic and durable: a crash leaves the old file or the new one, never half of one."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / SETTINGS_FILE
    temporary = directory / (SETTINGS_FILE + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(settings.to_json(), handle, ensure_ascii=False, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_settings(directory: Path) -> CollectionSettings | None:
    path = directory / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return CollectionSettings.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise CollectionDamagedError(f"{path} is unreadable: {error}") from None
