"""Whether a string is Unicode text at all. Dependency-free, so that light modules (the knowledge
base's documents and filters, the HTTP schemas) check text as the engine does without importing
tokenizers."""

from __future__ import annotations


def lone_surrogate_message(where: str) -> str:
    """The one wording of the error, whether the engine or the HTTP schemas find it."""
    return f"{where} contains a lone UTF-16 surrogate and is not valid Unicode text"


def is_unicode(text: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate (JSON's ``"\\ud800"`` escape parses to
    one): no UTF-8 encoding exists for it, so no tokenizer, hash or store can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
