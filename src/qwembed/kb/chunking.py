"""Token-aware chunking: paragraphs, then sentences, then words/characters, with sentence overlap.

Token counts come from the collection's own tokenizer (``TokenCounter``), so a chunk never
exceeds the model's limit and is never cut silently at embedding time. Sentence ends include the
Chinese ``。！？；`` (no space follows them) as well as ``. ! ? ;`` followed by whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .settings import ChunkingSettings

# Content tokens of each text, special tokens excluded.
TokenCounter = Callable[[Sequence[str]], list[int]]

_CJK_END = "。！？；!?…"  # ends a sentence wherever it appears (full-width or not)
_LATIN_END = ".;:"  # ends a sentence only before whitespace ("3.14", "e.g.x" stay whole)
_CLOSERS = "”’\"')）]」』》"
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
# Atoms for cutting an over-long sentence: a CJK character, or a word with its trailing space.
_ATOM = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]|[^\s\u3000-\u9fff]+\s*|\s+")
_CLAUSE = re.compile(r"(?<=[，,、：:])")


@dataclass(frozen=True)
class Chunk:
    position: int
    text: str
    tokens: int  # content tokens (the model adds its special tokens on top)


@dataclass
class _Unit:
    text: str
    paragraph: int
    tokens: int = 0


def split_sentences(paragraph: str) -> list[str]:
    """Sentences with their trailing whitespace, so joining them gives the paragraph back."""
    sentences: list[str] = []
    start = 0
    i = 0
    n = len(paragraph)
    while i < n:
        char = paragraph[i]
        latin_end = char in _LATIN_END and (i + 1 == n or paragraph[i + 1].isspace())
        if char in _CJK_END or char == "\n" or latin_end:
            end = i + 1
            while end < n and paragraph[end] in _CJK_END + _CLOSERS:
                end += 1
            while end < n and paragraph[end].isspace():
                end += 1
            sentences.append(paragraph[start:end])
            start = i = end
            continue
        i += 1
    if start < n:
        sentences.append(paragraph[start:])
    return [s for s in sentences if s.strip()]


def _units(text: str) -> list[_Unit]:
    units: list[_Unit] = []
    for index, paragraph in enumerate(_PARAGRAPH.split(text.strip())):
        units += [_Unit(sentence, index) for sentence in split_sentences(paragraph)]
    if units:
        units[-1].text = units[-1].text.rstrip()
    return units


def _split_long(text: str, budget: int, count: TokenCounter) -> list[str]:
    """Cut one over-long sentence: at clause marks if that suffices, else at words/characters."""
    clauses = [c for c in _CLAUSE.split(text) if c]
    pieces = clauses if len(clauses) > 1 else _ATOM.findall(text)
    if len(pieces) <= 1:
        return [text]  # a single unbreakable atom: _verified cuts it by characters
    sizes = count(pieces)
    out: list[str] = []
    current: list[str] = []
    used = 0
    for piece, size in zip(pieces, sizes, strict=True):
        if size > budget and len(clauses) > 1:
            if current:
                out.append("".join(current))
                current, used = [], 0
            out += _split_long(piece, budget, count)
            continue
        if current and used + size > budget:
            out.append("".join(current))
            current, used = [], 0
        current.append(piece)
        used += size
    if current:
        out.append("".join(current))
    return out


def _pack(units: list[_Unit], budget: int, overlap: int) -> list[list[_Unit]]:
    """Greedy packing that prefers paragraph ends and repeats the last sentences as overlap."""
    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    used = 0
    fresh = 0  # units in ``current`` that are not overlap from the previous chunk
    for unit in units:
        paragraph_break = bool(current) and unit.paragraph != current[-1].paragraph
        full = used + unit.tokens > budget
        # break at a paragraph end once the chunk is half full, rather than mid-next-paragraph
        if current and fresh and (full or (paragraph_break and used >= budget // 2)):
            chunks.append(current)
            carry: list[_Unit] = []
            carried = 0
            for previous in reversed(current):
                if carried + previous.tokens > overlap or carried + previous.tokens + unit.tokens > budget:
                    break
                carry.insert(0, previous)
                carried += previous.tokens
            current, used, fresh = carry, carried, 0
        current.append(unit)
        used += unit.tokens
        fresh += 1
    if current and fresh:
        chunks.append(current)
    return chunks


def _join(units: Sequence[_Unit]) -> str:
    parts: list[str] = []
    for i, unit in enumerate(units):
        text = unit.text
        if i and unit.paragraph != units[i - 1].paragraph and not parts[-1].endswith("\n"):
            parts[-1] = parts[-1].rstrip() + "\n\n"
        parts.append(text)
    return "".join(parts).strip()


def _verified(text: str, budget: int, count: TokenCounter) -> list[tuple[str, int]]:
    """Exact counts for the packed text; halves anything the per-sentence estimate let through."""
    [size] = count([text])
    if size <= budget:
        return [(text, size)]
    atoms = _ATOM.findall(text)
    if len(atoms) <= 1:
        atoms = list(text)  # one giant "word" (a base64 blob, a URL): cut by characters
    if len(atoms) <= 1:
        return [(text, size)]
    middle = len(atoms) // 2
    return _verified("".join(atoms[:middle]).strip(), budget, count) + _verified(
        "".join(atoms[middle:]).strip(), budget, count
    )


def chunk_text(text: str, settings: ChunkingSettings, count: TokenCounter, overhead: int) -> list[Chunk]:
    """Chunks of at most ``settings.chunk_tokens`` tokens (``overhead`` = the model's special tokens)."""
    budget = settings.chunk_tokens - overhead
    overlap = min(settings.overlap_tokens, budget // 2)
    units = _units(text)
    if not units:
        return []
    for unit, size in zip(units, count([u.text for u in units]), strict=True):
        unit.tokens = size
    expanded: list[_Unit] = []
    for unit in units:
        if unit.tokens <= budget:
            expanded.append(unit)
            continue
        pieces = _split_long(unit.text, budget, count)
        sizes = count(pieces)
        expanded += [_Unit(p, unit.paragraph, s) for p, s in zip(pieces, sizes, strict=True)]
    texts = [_join(group) for group in _pack(expanded, budget, overlap)]
    chunks: list[Chunk] = []
    for text_ in texts:
        for piece, size in _verified(text_, budget, count):
            if piece:
                chunks.append(Chunk(len(chunks), piece, size))
    return chunks


def embedder_token_counter(embedder) -> tuple[TokenCounter, int]:
    """A counter over the embedder's exact document tokenisation, and its special-token overhead.

    Counting uses ``truncate=True`` so over-long pieces are measured without an error; a capped
    count equals the model's limit, which is over any chunk budget, so it still reads as too long.
    """
    overhead = len(embedder.tokenize([""], input_type="document", truncate=True)[0])

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = embedder.tokenize(list(texts), input_type="document", truncate=True)
        # +1 on a capped count: "exactly the limit" and "cut to the limit" must both read as full
        return [len(x) - overhead + (len(x) >= embedder.max_tokens) for x in ids]

    return count, overhead
