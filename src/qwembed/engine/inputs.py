"""Request inputs → the exact token ids the model will see (prompts, special tokens, limits)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from ..backends import Encoder, InputTooLongError, InputType, TokenIds
from ..backends.base import PromptTooLongError, token_limit
from ..backends.framing import TruncationSide
from .instructions import NO_PROMPT_HINT, check_instruction
from .unicode import is_unicode, lone_surrogate_message

# What the OpenAI API accepts as ``input``: a text, texts, token ids, or lists of token ids.
RawInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


#: what ``input_type`` may be (None: the text as given)
INPUT_TYPES = ("query", "document")

#: which end of an over-long text a cut may remove
TRUNCATION_SIDES = ("right", "left")


@dataclass(frozen=True)
class EmbedOptions:
    """How a request's inputs become token ids. ``truncate``: cut an input over the model's limit
    instead of refusing it. ``max_tokens``: a cap below the model's limit that every input is cut
    to, special tokens kept (vLLM's ``truncate_prompt_tokens``); a cap is a cut asked for, so it
    cuts whatever ``truncate`` says. A cap above the model's limit changes nothing.
    ``truncation_side``: which end of the text a cut removes, ``"right"`` (the end) or ``"left"``
    (the beginning; TEI's ``truncation_direction: Left``), the prompt kept either way."""

    input_type: InputType | None = None
    instruction: str | None = None
    truncate: bool = False
    max_tokens: int | None = None
    truncation_side: TruncationSide = "right"

    def __post_init__(self) -> None:
        # The HTTP schemas check these too; a library caller's typo ("Query", "passage") would
        # otherwise embed the text without its prompt, silently
        if self.input_type is not None and self.input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be 'query', 'document' or None, not {self.input_type!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise TypeError(f"instruction must be a string or None, not {type(self.instruction).__name__}")
        check_token_cap(self.max_tokens, "max_tokens")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be 'right' or 'left', not {self.truncation_side!r}")

    def limit(self, encoder: Encoder) -> int:
        """The most tokens an input may keep: the model's limit, or the cap where that is smaller."""
        return token_limit(encoder.max_tokens, self.max_tokens)


def check_token_cap(cap: object, what: str) -> None:
    """A caller's cap on tokens: None, or a positive integer (not a bool, not a float)."""
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"{what} must be a positive integer or None, got {cap!r}")


def text_list(texts: Iterable[str], name: str = "texts") -> list[str]:
    """A library caller's texts as a list (a generator is read once, here), each checked to be a
    string: a wrong type fails with its name and index instead of deep inside a tokenizer. A dict
    or a set is refused (no order a result could follow), as are bytes (not text)."""
    if isinstance(texts, str | bytes | bytearray | Mapping | Set) or not isinstance(texts, Iterable):
        raise TypeError(f"{name} must be a list of strings, not {type(texts).__name__}")
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a string, not {type(text).__name__}")
    return items


class InstructionWithTokenIdsError(ValueError):
    def __init__(self, field: str) -> None:
        #: the request's field to blame: ``instruction``, else ``input_type``
        self.field = field
        super().__init__(
            "instruction and input_type apply to text inputs; token-id inputs are embedded as given "
            "(the model's end token added) — prepend the prompt's tokens yourself"
        )


class InvalidTextError(ValueError):
    """Text that is not valid Unicode (JSON allows lone surrogate escapes such as ``\\ud800``)."""


def check_texts(texts: Sequence[str], start: int = 0, name: str = "input") -> None:
    """``start``: the first text's index in its request, ``name`` the request's field (for the
    error message; a field of one text, such as a query, is named without an index)."""
    for index, text in enumerate(texts, start):
        if not is_unicode(text):
            where = name if name == "query" else f"{name}[{index}]"
            raise InvalidTextError(lone_surrogate_message(where))


def tokenize_texts(
    encoder: Encoder, texts: Sequence[str], options: EmbedOptions, start: int = 0
) -> list[TokenIds]:
    """``start``: the first text's index in its request, when a request is tokenised in parts."""
    check_texts(texts, start)
    check_instruction(options.instruction, NO_PROMPT_HINT)
    if not texts:  # (a Hugging Face tokenizer given no texts raises IndexError)
        return []
    formatted = [encoder.format(text, options.input_type, options.instruction) for text in texts]
    batch = encoder.tokenize(formatted)
    limit = options.limit(encoder)
    prompt: TokenIds = []
    if any(len(ids) > limit for ids in batch):
        # Truncation cuts the text, never the prompt (prompts come first: a right cut never
        # reaches it, a left cut puts it back), as long as the prompt leaves room for some text.
        # A prompt that leaves none is an error even with truncation, which would otherwise
        # embed the prompt alone, the same vector whatever the text.
        prompt = encoder.prompt_ids(options.input_type, options.instruction)
        total = len(prompt) + encoder.framing.overhead
        if total >= limit:
            raise PromptTooLongError(
                total, limit, instruction=options.instruction is not None, capped=limit < encoder.max_tokens
            )
    return fit_to_limit(encoder, batch, options, start, prompt=prompt)


def tokenize_ids(
    encoder: Encoder, inputs: Sequence[Sequence[int]], options: EmbedOptions, start: int = 0
) -> list[TokenIds]:
    if options.instruction is not None or options.input_type is not None:
        raise InstructionWithTokenIdsError("instruction" if options.instruction is not None else "input_type")
    for ids in inputs:
        encoder.check_token_ids(ids)
    return fit_to_limit(encoder, [encoder.fit_token_ids(ids) for ids in inputs], options, start)


def fit_to_limit(
    encoder: Encoder,
    batch: list[TokenIds],
    options: EmbedOptions,
    start: int = 0,
    prompt: Sequence[int] = (),
) -> list[TokenIds]:
    """Never cut silently: over the model's limit is an error unless the caller allowed truncation;
    over a cap the caller set below that limit is cut (a cap above it cuts nothing itself).
    ``prompt``: the prompt's tokens (``Encoder.prompt_ids``), which a left cut puts back first."""
    limit = options.limit(encoder)
    capped = limit < encoder.max_tokens
    for index, ids in enumerate(batch):
        if len(ids) > limit:
            if not (options.truncate or capped):
                raise InputTooLongError(len(ids), encoder.max_tokens, start + index)
            batch[index] = encoder.truncate(ids, limit, side=options.truncation_side, prompt=prompt)
    return batch
