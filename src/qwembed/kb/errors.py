"""Knowledge-base failures, each mapped to one HTTP status and error code by the API layer."""

from __future__ import annotations


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
