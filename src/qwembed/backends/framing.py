"""Special tokens around a tokenised text, and how to keep them when inputs are cut or given as ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

#: which end of an over-long input a cut removes
TruncationSide = Literal["right", "left"]


@dataclass(frozen=True)
class Framing:
    """``prefix + content + suffix``: e.g. ``[CLS] … [SEP]`` for BERT, ``… <|endoftext|>`` for Qwen3."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @property
    def overhead(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def is_framed(self, ids: Sequence[int]) -> bool:
        n_pre, n_suf = len(self.prefix), len(self.suffix)
        return (
            len(ids) >= self.overhead
            and tuple(ids[:n_pre]) == self.prefix
            and (n_suf == 0 or tuple(ids[-n_suf:]) == self.suffix)
        )

    def fit(self, ids: Sequence[int]) -> list[int]:
        """Add whichever of prefix and suffix is missing, so each appears exactly once."""
        ids = list(ids)
        if self.prefix and tuple(ids[: len(self.prefix)]) != self.prefix:
            ids = [*self.prefix, *ids]
        if self.suffix and tuple(ids[-len(self.suffix) :]) != self.suffix:
            ids = [*ids, *self.suffix]
        return ids

    def truncate(
        self,
        ids: Sequence[int],
        max_tokens: int,
        *,
        side: TruncationSide = "right",
        head: Sequence[int] = (),
    ) -> list[int]:
        """Cut the content, never the special tokens, so the result has at most ``max_tokens``.

        ``side``: which end of the content goes, ``"right"`` (the tail, as every peer does by
        default) or ``"left"`` (the beginning: TEI's ``truncation_direction: Left``, for inputs
        whose end matters most, such as a conversation's latest turns). ``head``: the prompt
        (instruction) put before the text, as tokenised alone: a left cut puts it back before the
        text's last tokens, so that only the text is cut, as a right cut never reaches the prompt.
        (Its tokens as the whole input was tokenised may differ at the end, where BPE merges the
        prompt's last characters with the text's first: ``Query:`` and ``w0`` give ``:w``.)"""
        if len(ids) <= max_tokens:
            return list(ids)
        keep = max(max_tokens - self.overhead, 0)
        content = ids[len(self.prefix) : len(ids) - len(self.suffix)]
        if side == "right":
            return [*self.prefix, *content[:keep], *self.suffix]
        head = list(head)[:keep]
        tail = keep - len(head)
        return [*self.prefix, *head, *content[len(content) - tail :], *self.suffix]


def framing_of(tokenizer: PreTrainedTokenizerBase) -> Framing:
    """Learn what the tokenizer adds around a text by tokenising a probe with and without specials."""
    probe = "probe"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return Framing(tuple(full[:start]), tuple(full[start + len(bare) :]))
    return Framing()
