"""Text → the space-separated terms the keyword (BM25) index sees.

Chinese has no spaces, so qwembed segments with jieba (its dictionary ships in the wheel; no
download) before indexing and before querying; both stores then index plain whitespace-separated
terms. ``cut_for_search`` also emits the short words inside long ones (中华人民共和国 → 中华, 人民 …),
so a two-character query word matches inside a longer compound. Latin words pass through whole and
the store's analyser lower-cases and stems them. docs/knowledge-base.md has the comparison with
LanceDB's n-gram tokenizer that chose this.
"""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_ready = False


def _jieba():
    global _ready
    import jieba

    if not _ready:
        with _lock:
            if not _ready:
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()  # builds the prefix dictionary once (~1 s), thread-safely
                _ready = True
    return jieba


def segment(text: str) -> str:
    """Whitespace-joined search terms; punctuation and spacing dropped."""
    terms = (term.strip() for term in _jieba().cut_for_search(text))
    return " ".join(term for term in terms if term and any(ch.isalnum() for ch in term))


def segment_many(texts: list[str]) -> list[str]:
    return [segment(text) for text in texts]
