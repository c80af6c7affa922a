"""``argparse`` types and options shared by the command lines (cli.py, eval/cli.py, kb/cli.py)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(
    kind: type[int] | type[float], low: float, high: float | None = None, *, above: bool = False
) -> Callable[[str], int | float]:
    """``argparse`` type for a numeric option within bounds: a typo or a negative size is a usage
    error at once, not a server that starts and then spins (a negative batch size never fills)."""

    def shown(value: float) -> str:  # (an int in full: 2147483647, not :g's 2.14748e+09)
        return str(value) if kind is int else f"{value:g}"

    bound = f"above {shown(low)}" if above else f"at least {shown(low)}"
    if high is not None:
        bound = f"between {shown(low)} and {shown(high)}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if (
            not math.isfinite(value)
            or value < low
            or (above and value == low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {bound}")
        return value

    return parse


#: a count: 1 or more
POSITIVE_INT = number(int, 1)
#: a duration in seconds, above 0
SECONDS = number(float, 0, above=True)


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, one definition for every command that loads a model (serve, embed, rerank, and
    ``kb create|add|search``)."""
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bfloat16 on CUDA and on CPUs with AMX/AVX512-BF16, checked against float32 at load; "
        "float32 elsewhere), float32, bfloat16, float16",
    )
