"""Metadata filters: a small JSON language, validated once, compiled per store.

``{"lang": "zh", "year": {"$gte": 2020}, "source": {"$in": ["a.pdf", "b.pdf"]}}`` — keys are
metadata fields, except ``document_id`` and ``source`` which are the chunk's own columns. All
conditions must hold. Operators: ``$eq $ne $gt $gte $lt $lte $in``. Values are strings, numbers or
booleans. Compiling from a parsed form (never pasting user text into a query) keeps quoting in one
place per store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..engine.unicode import is_unicode
from .documents import INT64_MAX, INT64_MIN
from .errors import InvalidFilterError

COLUMNS = ("document_id", "source")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in")
Scalar = str | int | float | bool
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]

    @property
    def is_column(self) -> bool:
        return self.field in COLUMNS


def _scalar(value: Any, field: str) -> Scalar:
    # Each check below keeps a value out of the store's query that would fail there (a 500),
    # not here (a 400 that says why).
    if isinstance(value, str):
        if not is_unicode(value):  # JSON's "\\ud800" escape: no UTF-8 form to put in a query
            raise InvalidFilterError(f"filter value for {field!r} is not valid Unicode (a lone surrogate)")
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:  # the stores compare JSON integers as int64
            raise InvalidFilterError(f"filter value for {field!r} is outside the signed 64-bit integer range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # Python's JSON reader turns NaN, Infinity and 1e400 into floats
            raise InvalidFilterError(f"filter value for {field!r} is not a finite number")
        return value
    raise InvalidFilterError(f"filter value for {field!r} must be a string, number or boolean")


def parse_filter(raw: dict[str, Any] | None) -> list[Condition]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InvalidFilterError('filter must be an object such as {"lang": "zh"}')
    conditions: list[Condition] = []
    for field, spec in raw.items():
        if not isinstance(field, str) or not _KEY.match(field):
            raise InvalidFilterError(f"invalid filter field {field!r}: letters, digits, '_' and '-' only")
        items = spec.items() if isinstance(spec, dict) else [("$eq", spec)]
        for op, value in items:
            if op not in OPERATORS:
                raise InvalidFilterError(f"unknown filter operator {op!r}; use one of {', '.join(OPERATORS)}")
            if op == "$in":
                if not isinstance(value, list) or not value:
                    raise InvalidFilterError(f"$in for {field!r} needs a non-empty list")
                values = tuple(_scalar(v, field) for v in value)
                if len({type(v) for v in values}) > 1:
                    raise InvalidFilterError(f"$in for {field!r} mixes value types")
                conditions.append(Condition(field, op, values))
            else:
                conditions.append(Condition(field, op, _scalar(value, field)))
    for condition in conditions:
        values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
        if condition.is_column and not all(isinstance(v, str) for v in values):
            raise InvalidFilterError(f"{condition.field} is compared with strings only")
    return conditions


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
