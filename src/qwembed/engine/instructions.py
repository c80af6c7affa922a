"""A request's instruction: what counts as one, checked the same way by the library, the HTTP
API and the command lines. Torch-free, so that the command lines can check an option before any
model (or torch) loads."""

from __future__ import annotations

import argparse


class EmptyInstructionError(ValueError):
    """An instruction of only whitespace: almost always a client's unset template variable, and
    neither reading (no instruction, or the official format around an empty task) is safe to guess."""

    def __init__(self, hint: str = "") -> None:
        super().__init__(
            f"instruction is empty: leave it out (null in JSON) for the model's default task{hint}"
        )


#: what an embedding request may add to the empty instruction's message (a reranker's request has
#: no input_type, so its message does not mention one)
NO_PROMPT_HINT = ", and input_type too for no instruction at all"


def check_instruction(instruction: str | None, hint: str = "") -> None:
    if instruction is not None and not instruction.strip():
        raise EmptyInstructionError(hint)


def instruction_option(value: str) -> str:
    """``argparse`` type of the command lines' ``--instruction`` options: the same check, as a
    usage error before any model loads."""
    try:
        check_instruction(value)
    except EmptyInstructionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value
