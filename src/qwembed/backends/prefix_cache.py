"""Prefix cache: an instruction's attention inputs, kept from one batch to the next.

``shared_prefixes.py`` computes a prefix the sequences of one batch have in common once per
batch. A lone query — a search box, ``qwembed kb search`` — has nobody to share with, and its
instruction (``Instruct: …\\nQuery:``, 18 tokens of the model card's default before the last,
which may merge with the query) is most of it: on the 0.6B shape on a 2-core CPU, 32 instructed
BQ questions took 129 ms each, and 93 ms with the instruction read from here (docs/benchmarks.md).

In a causal model the instruction's keys and values at every layer depend on its own tokens only,
so they are the same in every batch. The encoders name the prefixes worth keeping
(:meth:`PrefixCache.remember`: the query instruction's tokens, the reranker's system prompt and
instruction, found by :class:`TemplatePrefixes`); the first batch that computes one keeps its
attention inputs for every layer (:meth:`fill`), and later batches read them instead of running
the prefix through the model (``shared_prefixes.py`` decides which tokens read what). Matching is by
token ids, so a named prefix that the tokenizer splits otherwise in some text is simply not used
for it.

The cache holds at most ``max_tokens`` tokens' rows: a token's rows take 4,096 values × 28 layers
on the 0.6B shape (0.23 MB in bf16, 0.46 in float32), 6,144 × 36 on the 4B and 8B (0.44 MB in
bf16), so the default of 256 tokens is 60–120 MB at most, room for a dozen instructions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: tokens of rows kept at most, over every prefix (the least recently named go first)
DEFAULT_MAX_TOKENS = 256

#: prefixes named but not computed yet, kept at most: a server where every request brings its own
#: instruction names a new one each time
MAX_NAMED = 64

#: shorter prefixes are not worth a lookup
MIN_TOKENS = 4

#: texts that begin differently for byte-pair encoding: a letter, a digit, punctuation, a CJK
#: character, a space, a newline. A template's last token may merge with some of them (Qwen's
#: ``Query:`` does with ``-``, ``'`` and a newline), so what a template's texts all begin with is
#: what these all begin with.
PROBES = ("a", "1", "-", "'", "中", " ", "\n")

#: instructions whose prefixes are kept tokenised (requests may each bring their own)
MAX_TEMPLATES = 1024


class TemplatePrefixes:
    """The tokens every text filled into an instruction's template begins with, per instruction:
    the longest prefix that ``token_ids(instruction, text)`` gives for every probe text, found once
    per instruction."""

    def __init__(self, token_ids: Callable[[str, str], Sequence[int]]) -> None:
        self._token_ids = token_ids
        self._prefixes: dict[str, tuple[int, ...]] = {}

    def __call__(self, instruction: str) -> tuple[int, ...]:
        prefix = self._prefixes.get(instruction)
        if prefix is None:
            ids = list(self._token_ids(instruction, PROBES[0]))
            for probe in PROBES[1:]:
                other = self._token_ids(instruction, probe)
                common = 0
                while common < min(len(ids), len(other)) and ids[common] == other[common]:
                    common += 1
                del ids[common:]
            if len(self._prefixes) >= MAX_TEMPLATES:
                self._prefixes.clear()
            prefix = self._prefixes[instruction] = tuple(ids)
        return prefix


@dataclass(frozen=True, eq=False)
class CachedPrefix:
    """A prefix's token ids and, once computed, its attention inputs at every layer."""

    ids: tuple[int, ...]
    #: per layer, ``(len(ids), heads, width)``: the normed, rotated queries, keys and values
    rows: tuple[torch.Tensor, ...] | None = None


class PrefixCache:
    """Prefixes named by an encoder, and the rows of those computed so far. Thread-safe: the
    tokenisers name prefixes while the model's streams read and fill them."""

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, max_named: int = MAX_NAMED) -> None:
        self.max_tokens = max_tokens
        self.max_named = max_named
        self._prefixes: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()
        self._last_named: Sequence[int] | None = None  # the same object again: nothing to do
        self._lock = threading.Lock()

    def remember(self, ids: Sequence[int]) -> None:
        """Name ``ids`` as a prefix worth keeping (again: it becomes the most recently named)."""
        if ids is self._last_named:
            return  # (encoders name a query's instruction once per text: 0.6 -> 0.2 µs more per text)
        self._last_named = ids
        key = tuple(ids)
        if not MIN_TOKENS <= len(key) <= self.max_tokens:
            return
        with self._lock:
            if key in self._prefixes:
                self._prefixes.move_to_end(key)
                return
            self._prefixes[key] = CachedPrefix(key)
            named = [k for k, prefix in self._prefixes.items() if prefix.rows is None]
            for old in named[: max(0, len(named) - self.max_named)]:
                del self._prefixes[old]
                self._last_named = None  # (whatever it was may be gone: name it again next time)

    def known(self) -> list[CachedPrefix]:
        """Every named prefix, computed or not, longest first (a batch takes the longest match)."""
        with self._lock:
            prefixes = list(self._prefixes.values())
        return sorted(prefixes, key=lambda prefix: len(prefix.ids), reverse=True)

    def fill(self, prefix: CachedPrefix, rows: Sequence[torch.Tensor]) -> None:
        """Keep ``rows`` (one tensor per layer) for ``prefix``, dropping the least recently named
        computed prefixes beyond ``max_tokens``. A prefix forgotten meanwhile is not brought back."""
        with self._lock:
            if prefix.ids not in self._prefixes:
                return
            self._prefixes[prefix.ids] = CachedPrefix(prefix.ids, tuple(rows))
            kept = sum(len(ids) for ids, p in self._prefixes.items() if p.rows is not None)
            for ids in list(self._prefixes):
                if kept <= self.max_tokens:
                    break
                if self._prefixes[ids].rows is not None:
                    kept -= len(ids)
                    del self._prefixes[ids]
                    self._last_named = None

    def clear(self) -> None:
        """Forget every prefix's rows (e.g. once the precision is settled at load); names stay."""
        with self._lock:
            for ids in self._prefixes:
                self._prefixes[ids] = CachedPrefix(ids)

    @property
    def cached_tokens(self) -> int:
        with self._lock:
            return sum(len(ids) for ids, prefix in self._prefixes.items() if prefix.rows is not None)
