"""Knowledge-base failures, each mapped to one HTTP status and error code by the API layer."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class KBError(Exception):
    """Base class; ``status`` and ``code`` follow the API's error shape."""

    status = 400
    code = "invalid_request"
    param: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param


class CollectionNotFoundError(KBError):
    status = 404
    code = "collection_not_found"


class DocumentNotFoundError(KBError):
    status = 404
    code = "document_not_found"


class SettingsMismatchError(KBError):
    """The request's model, dimensions or chunking differ from what the collection was built with."""

    status = 409
    code = "settings_mismatch"


class InvalidSettingError(KBError):
    """A new collection's ``dimensions`` or chunking that the model cannot have (wider than its
    vectors, chunks over its token limit): a 400, since nothing stored conflicts with it (that is
    :class:`SettingsMismatchError`'s 409). ``field`` is the setting as the HTTP body spells it
    (``chunking.overlap_tokens``), ``bound`` what it must be, so the CLI can name its own option."""

    def __init__(self, field: str, value: int, bound: str):
        # param: the body's top-level field, as the API's validation errors name it
        super().__init__(f"{field} must be {bound}, got {value}", field.partition(".")[0])
        self.field = field
        self.value = value
        self.bound = bound


class InvalidNameError(KBError):
    code = "invalid_name"


class InvalidFilterError(KBError):
    code = "invalid_filter"
    param = "filter"


class BadDocumentError(KBError):
    """One document (or file) that cannot be ingested; batches report it and carry on."""

    code = "bad_document"


class PathNotAllowedError(KBError):
    status = 403
    code = "path_not_allowed"


class RerankUnavailableError(KBError):
    code = "rerank_unavailable"
    param = "rerank"


class CollectionDamagedError(KBError):
    """A collection's ``collection.json`` cannot be read (edited by hand, truncated by a tool)."""

    status = 500
    code = "collection_damaged"


class StoreUnavailableError(KBError):
    """The collection's store cannot be reached or opened (a Milvus server down, a Milvus Lite file
    held by another process); nothing was read or written."""

    status = 503
    code = "store_unavailable"


class StorageFullError(KBError):
    """The disk under the knowledge base is full or over quota. Each write is one commit, so the
    failed one left nothing behind, and what was stored before is intact."""

    status = 507
    code = "insufficient_storage"


#: "no space left on device" and "disk quota exceeded"
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(error: BaseException) -> bool:
    """``error`` (or an error it was raised from) says the disk is full. Python's own writes raise
    ``OSError`` with the errno; LanceDB's Rust core raises ``RuntimeError("… (os error 28) …")``.
    The chain is walked once per error: gRPC's errors are their own ``__cause__`` (a cycle)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE:
            return True
        if any(f"(os error {number})" in str(error) for number in _OUT_OF_SPACE):
            return True
        error = error.__cause__
    return False


@contextmanager
def out_of_space_as_storage_full(outcome: str) -> Iterator[None]:
    """Around a store write: a full disk becomes a ``StorageFullError`` that says so and what it
    left undone (``outcome``), the API's 507, instead of an unexplained 500; every other error
    passes through unchanged."""
    try:
        yield
    except KBError:
        raise
    except Exception as error:
        if is_out_of_space(error):
            raise StorageFullError(f"the disk under the knowledge base is full: {outcome}") from error
        raise
