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
import re
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


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def index_terms(text: str) -> str:
    """What a stored chunk is indexed under: ``segment``'s terms plus every CJK character of its
    longer words once more, so a one-character query (熊) finds its words (熊猫) — jieba keeps
    熊猫 whole. Queries are segmented without the extra characters, so a word query still ranks
    whole-word matches first: on LCQMC keyword search R@1 went 0.804 → 0.812, MRR@10 0.888 →
    0.892 (bench: docs/knowledge-base.md, "Chinese keyword search")."""
    terms = segment(text)
    # from the precise cut, whose words do not overlap (cut_for_search's do: 大熊猫 and 熊猫), so
    # each character counts once per occurrence
    words = _jieba().cut(text)
    singles = [char for word in words if len(word) > 1 for char in word if _CJK.match(char)]
    return f"{terms} {' '.join(singles)}" if singles else terms


def segment_many(texts: list[str]) -> list[str]:
    return [segment(text) for text in texts]
