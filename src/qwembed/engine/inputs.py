"""Request inputs → the exact token ids the model will see (prompts, special tokens, limits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..backends import Encoder, InputTooLongError, InputType, TokenIds

# What the OpenAI API accepts as ``input``: a text, texts, token ids, or lists of token ids.
RawInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class EmbedOptions:
    input_type: InputType | None = None
    instruction: str | None = None
    truncate: bool = False


class InstructionWithTokenIdsError(ValueError):
    def __init__(self) -> None:
        super().__init__(
            "instruction and input_type apply to text inputs; token-id inputs are embedded as given "
            "(the model's end token added) — prepend the prompt's tokens yourself"
        )


class InvalidTextError(ValueError):
    """Text that is not valid Unicode (JSON allows lone surrogate escapes such as ``\\ud800``)."""


def check_texts(texts: Sequence[str]) -> None:
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidTextError(
                f"input[{index}] contains a lone UTF-16 surrogate and is not valid Unicode text"
            ) from None


def tokenize_texts(encoder: Encoder, texts: Sequence[str], options: EmbedOptions) -> list[TokenIds]:
    check_texts(texts)
    formatted = [encoder.format(text, options.input_type, options.instruction) for text in texts]
    return fit_to_limit(encoder, encoder.tokenize(formatted), options.truncate)


def tokenize_ids(encoder: Encoder, inputs: Sequence[Sequence[int]], options: EmbedOptions) -> list[TokenIds]:
    if options.instruction is not None or options.input_type is not None:
        raise InstructionWithTokenIdsError()
    for ids in inputs:
        encoder.check_token_ids(ids)
    return fit_to_limit(encoder, [encoder.fit_token_ids(ids) for ids in inputs], options.truncate)


def fit_to_limit(encoder: Encoder, batch: list[TokenIds], truncate: bool) -> list[TokenIds]:
    """Never cut silently: too long is an error unless the caller allowed truncation."""
    for index, ids in enumerate(batch):
        if len(ids) > encoder.max_tokens:
            if not truncate:
                raise InputTooLongError(len(ids), encoder.max_tokens, index)
            batch[index] = encoder.truncate(ids)
    return batch
