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
"""

from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass
from itertools import pairwise

import torch

from .packing import PackedBatch

#: set to 0 to keep every batch in the plain layout (for comparison, or should sharing misbehave)
ENV_SWITCH = "QWEMBED_SHARED_PREFIXES"

#: share only where it saves at least this fraction of the batch's tokens (never, switched off)
MIN_SAVING = math.inf if os.environ.get(ENV_SWITCH, "1") == "0" else 0.1


@dataclass(frozen=True)
class SharedPrefixes:
    """A packed batch's tokens as trie nodes: one node per distinct (prefix, token)."""

    ids: torch.Tensor  # (nodes,) each node's token
    positions: torch.Tensor  # (nodes,) each node's position in its sequences
    expand: torch.Tensor  # (tokens,) each packed token's node
    collapse: torch.Tensor  # (nodes,) one packed token of each node

    @classmethod
    def of(cls, batch: PackedBatch, min_saving: float | None = None) -> SharedPrefixes | None:
        """The nodes of ``batch``'s sequences, or None where they would save less than
        ``min_saving`` of its tokens (None: ``MIN_SAVING``)."""
        threshold = MIN_SAVING if min_saving is None else min_saving
        if threshold >= 1:
            return None  # (switched off: no batch can save all of its tokens)
        ids, bounds = batch.ids.tolist(), batch.bounds.tolist()
        spans = list(pairwise(bounds))
        if len({ids[start] for start, _ in spans}) == len(spans):
            return None  # no two sequences share even their first token
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
            previous, previous_nodes = sequence, nodes
        if len(ids) - len(collapse) < threshold * len(ids):
            return None
        tokens = _long_tensor(collapse)
        # a node's token and position are those of the packed token it was met at
        return cls(batch.ids[tokens], batch.positions[tokens], _long_tensor(expand), tokens)

    def to(self, device: torch.device) -> SharedPrefixes:
        return SharedPrefixes(
            self.ids.to(device), self.positions.to(device), self.expand.to(device), self.collapse.to(device)
        )


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
