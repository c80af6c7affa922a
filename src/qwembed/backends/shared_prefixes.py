"""Shared prefixes: the leading tokens a causal batch's sequences have in common, computed once.

In a causal model a token's state, at every layer, depends on that token and the tokens before it
alone. So where sequences of a batch begin with the same tokens, those tokens have the same states
in every one of them. Batches often do: every query of a request carries the same instruction
(``Instruct: …\\nQuery:``, about 20 tokens before a 10-token question), and Qwen3-Reranker judges
each of a request's documents after the same system prompt, instruction and query (70 tokens and
more). The packed Qwen3 forward (``packed_qwen3.py``) runs its Linear layers, norms and MLP — nine
tenths of its time on a CPU — on each distinct prefix once: on the *nodes* of the trie the batch's
sequences spell. Attention alone needs each sequence whole; it reads the nodes' queries, keys and
values through a gather into the usual packed layout (``expand``) and hands its output back
through another (``collapse``), which costs two copies of a projection per layer.

Sharing is by token ids, not text, so a prefix whose last token merges with the text after it
(byte-pair encoding does that) simply shares one token less. Batches that would save under a tenth
of their tokens keep the plain layout: on a GPU, where the matmuls are fast, the two copies cost
about a twentieth of a token's matmul time (estimated from the 4B shape's widths at 3 TB/s and the
measured matmul peak, not measured), too near a small saving to be sure of a gain.

Across batches, prefixes an encoder names in a ``PrefixCache`` (``prefix_cache.py``: the query
instruction, the reranker's system prompt) are nodes whose rows come from the cache: they are
neither computed nor counted, and their attention inputs join the computed nodes' before the
gather. The first batch that meets one computes it and hands its rows to the cache.
"""

from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass, field
from itertools import pairwise, takewhile

import torch

from .packing import PackedBatch
from .prefix_cache import MIN_TOKENS, CachedPrefix, PrefixCache

#: set to 0 to keep every batch in the plain layout (for comparison, or should sharing misbehave)
ENV_SWITCH = "QWEMBED_SHARED_PREFIXES"

#: share only where it saves at least this fraction of the batch's tokens (never, switched off)
MIN_SAVING = math.inf if os.environ.get(ENV_SWITCH, "1") == "0" else 0.1


@dataclass(frozen=True)
class SharedPrefixes:
    """A packed batch's tokens as trie nodes: one node per distinct (prefix, token). Nodes a
    ``PrefixCache`` holds are read from it, not computed; their rows follow the computed nodes'."""

    ids: torch.Tensor  # (computed nodes,) each node's token
    positions: torch.Tensor  # (computed nodes,) each node's position in its sequences
    expand: torch.Tensor  # (tokens,) each packed token's row: a computed node's, or a cached one's
    collapse: torch.Tensor  # (computed nodes,) one packed token of each node
    #: prefixes whose cached rows follow the computed nodes' rows, in this order
    cached: tuple[CachedPrefix, ...] = ()
    #: prefixes named in the cache that this batch computes, and where their rows are
    filling: tuple[_Filling, ...] = ()

    @classmethod
    def of(
        cls,
        batch: PackedBatch,
        min_saving: float | None = None,
        cache: PrefixCache | None = None,
        read: torch.Tensor | None = None,
    ) -> SharedPrefixes | None:
        """The nodes of ``batch``'s sequences, or None where they would save less than
        ``min_saving`` of its tokens (None: ``MIN_SAVING``) and there is nothing to cache. Prefixes
        ``cache`` holds are read from it, except where a token of theirs is ``read`` after the
        forward (None: each sequence's last token)."""
        threshold = MIN_SAVING if min_saving is None else min_saving
        if threshold >= 1:
            return None  # (switched off: no batch can save all of its tokens)
        ids, bounds = batch.ids.tolist(), batch.bounds.tolist()
        spans = list(pairwise(bounds))
        named = _NamedPrefixes(cache.known() if cache is not None else [])
        firsts = [ids[start] for start, _ in spans]
        if len(set(firsts)) == len(spans) and not named.begin_any(firsts):
            return None  # no two sequences share even their first token, nor begin a named prefix
        sequences = [ids[start:stop] for start, stop in spans]
        expand = [0] * len(ids)  # every token's node, set sequence by sequence
        collapse: list[int] = []  # nodes are numbered as they are met: node i is collapse[i]'s token
        # in lexicographic order, a sequence's longest prefix in common with any sequence before it
        # is its prefix in common with the one just before it: the trie without a lookup table
        previous: list[int] = []
        previous_nodes: list[int] = []
        shared = 0
        for s in sorted(range(len(sequences)), key=sequences.__getitem__):
            sequence, (start, stop) = sequences[s], spans[s]
            shared = _common_prefix(sequence, previous, guess=shared)
            first = len(collapse)
            nodes = previous_nodes[:shared] + list(range(first, first + len(sequence) - shared))
            expand[start:stop] = nodes
            collapse.extend(range(start + shared, stop))
            named.meet(sequence, nodes, shared)
            previous, previous_nodes = sequence, nodes
        # a token whose state is read after the forward is computed, not read from the cache
        reads = read.tolist() if read is not None else [stop - 1 for _, stop in spans]
        cached, row_of = named.cached_rows(needed={expand[token] for token in reads})
        computed = len(collapse) - len(row_of)
        if len(ids) - computed < threshold * len(ids) and not named.fills:
            return None
        tokens = _long_tensor(collapse)
        expansion = _long_tensor(expand)
        number = None
        if row_of:  # computed nodes first, in order, then the cached prefixes' rows
            number = torch.full((len(collapse),), -1, dtype=torch.long)
            number[_long_tensor(list(row_of))] = _long_tensor(list(row_of.values())) + computed
            kept = number < 0
            number[kept] = torch.arange(computed)
            tokens, expansion = tokens[kept], number[expansion]
        # a node's token and position are those of the packed token it was met at
        return cls(
            batch.ids[tokens],
            batch.positions[tokens],
            expansion,
            tokens,
            tuple(cached),
            tuple(
                _Filling(prefix, _long_tensor(nodes) if number is None else number[_long_tensor(nodes)])
                for prefix, nodes in named.fills.items()
            ),
        )

    def attention_input(self, qkv: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s attention input in the packed layout, each sequence whole, from the
        computed nodes' ``qkv`` and the cached prefixes' rows; keeps the rows of prefixes filling."""
        if self.cached:
            qkv = torch.cat([qkv, *(prefix.rows[layer].to(qkv.dtype) for prefix in self.cached)])  # type: ignore[index]
        for filling in self.filling:
            filling.layers.append(qkv[filling.rows])  # (a copy)
        return qkv[self.expand]

    def fill(self, cache: PrefixCache) -> None:
        """Hand the rows of the prefixes this batch computed to ``cache``, once every layer ran."""
        for filling in self.filling:
            cache.fill(filling.prefix, filling.layers)

    def to(self, device: torch.device) -> SharedPrefixes:
        return SharedPrefixes(
            self.ids.to(device),
            self.positions.to(device),
            self.expand.to(device),
            self.collapse.to(device),
            self.cached,
            tuple(_Filling(filling.prefix, filling.rows.to(device)) for filling in self.filling),
        )


@dataclass
class _Filling:
    """A named prefix computed in this batch: its rows in each layer's attention input."""

    prefix: CachedPrefix
    rows: torch.Tensor  # (len(prefix.ids),) in the attention input's rows, in token order
    layers: list[torch.Tensor] = field(default_factory=list)  # its rows, layer by layer


class _NamedPrefixes:
    """The prefixes a cache names, as a batch's sequences meet them (in lexicographic order).

    A sequence reads as many tokens of a computed prefix's rows as it has in common with it — a
    causal prefix's keys and values are those of any longer prefix that begins with it — and all
    but its own last token. A named prefix not computed yet is filled by a batch where a sequence
    goes past all of it."""

    def __init__(self, prefixes: list[CachedPrefix]) -> None:
        self._by_first: dict[int, list[tuple[CachedPrefix, list[int]]]] = {}
        for prefix in prefixes:  # (longest first)
            self._by_first.setdefault(prefix.ids[0], []).append((prefix, list(prefix.ids)))
        self.reads: dict[CachedPrefix, list[int]] = {}  # computed prefixes, and the nodes read
        self.fills: dict[CachedPrefix, list[int]] = {}  # prefixes to fill, and their nodes
        self._whole: CachedPrefix | None = None  # the longest named, read whole by the last check

    def begin_any(self, firsts: list[int]) -> bool:
        return not self._by_first.keys().isdisjoint(firsts)

    def meet(self, sequence: list[int], nodes: list[int], shared: int) -> None:
        """Note what ``sequence`` (its trie ``nodes``; ``shared`` tokens in common with the sequence
        before it) reads and fills."""
        named = self._by_first.get(sequence[0])
        if not named:
            return
        if self._whole is not None and shared >= len(self._whole.ids) < len(sequence):
            return  # the sequences of one instruction, one after another: read whole like the last
        self._whole = None
        for prefix, ids in named:
            common = _common_prefix(sequence, ids, guess=len(ids))
            if prefix.rows is None:
                if common == len(ids) < len(sequence):
                    self.fills.setdefault(prefix, nodes[:common])
                continue
            read = min(common, len(sequence) - 1)
            if read >= MIN_TOKENS and read > len(self.reads.get(prefix, ())):
                self.reads[prefix] = nodes[:read]
            if read == len(ids) and prefix is named[0][0]:
                self._whole = prefix

    def cached_rows(self, needed: set[int]) -> tuple[list[CachedPrefix], dict[int, int]]:
        """The cached prefixes the batch reads, and each node's row among their rows laid end to
        end. A read stops before the first ``needed`` node. A node several prefixes hold (the
        reranker's prompts for two instructions share the system prompt) is read from the one
        that gives the most."""
        used: list[CachedPrefix] = []
        row_of: dict[int, int] = {}
        offset = 0
        for prefix, nodes in sorted(self.reads.items(), key=lambda read: len(read[1]), reverse=True):
            nodes = list(takewhile(lambda node: node not in needed, nodes))
            if len(nodes) < MIN_TOKENS or all(node in row_of for node in nodes):
                continue
            for position, node in enumerate(nodes):
                row_of.setdefault(node, offset + position)
            used.append(prefix)
            offset += len(prefix.ids)
        return used, row_of


def _common_prefix(a: list[int], b: list[int], guess: int) -> int:
    """The length of ``a`` and ``b``'s common prefix. Neighbours in sorted order mostly share as
    much as the pair before them (an instruction's tokens), so one slice comparison (a loop in C)
    settles it from ``guess``; token-by-token comparisons took 4 ms on a GPU batch of a thousand
    instructed queries."""
    limit = min(len(a), len(b))
    known = min(guess, limit)
    if a[:known] == b[:known]:
        while known < limit and a[known] == b[known]:
            known += 1
        return known
    low, high = 0, known - 1  # shorter than the guess: binary search, again by slices
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _long_tensor(values: list[int]) -> torch.Tensor:
    """``torch.tensor(values)`` through an array's buffer: a third of the time for long lists."""
    return (
        torch.frombuffer(array("q", values), dtype=torch.long) if values else torch.zeros(0, dtype=torch.long)
    )
