"""Sentence-pair files: TSV ``s1<TAB>s2<TAB>label`` and JSONL ``sentence1/sentence2/label``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .hashing import sha256_path
from .retrieval_data import BUILTIN_PREFIX
from .textfile import iter_jsonl, iter_lines, require_str

_JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass(frozen=True)
class PairSet:
    """Pairs of sentences with a numeric label (graded for STS, 0/1 for classification)."""

    name: str
    path: str
    sha256: str
    sentence1: list[str]
    sentence2: list[str]
    labels: np.ndarray = field(repr=False)
    #: 1-based source line of each pair, to point at the offending line in later checks
    lines: list[int] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.sentence1)

    def head(self, n: int | None) -> PairSet:
        """The first ``n`` pairs (all when ``n`` is None); for quick runs and tests."""
        if n is None or n >= len(self):
            return self
        return PairSet(
            self.name,
            self.path,
            self.sha256,
            self.sentence1[:n],
            self.sentence2[:n],
            self.labels[:n],
            self.lines[:n],
        )

    def binary_labels(self) -> np.ndarray:
        """Labels as int 0/1, or a DataError naming the first line with another label."""
        bad = np.flatnonzero((self.labels != 0) & (self.labels != 1))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                self.path,
                f"label {self.labels[i]:g} is not 0 or 1 (pair classification needs binary labels)",
                self.lines[i] if self.lines else None,
            )
        return self.labels.astype(np.int64)


def is_pairs_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a pair file (as opposed to a retrieval JSONL)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() not in _JSON_SUFFIXES:
        return True
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "sentence1" in first
    return False


def load_pairs(path: str | Path) -> PairSet:
    """Read a TSV (any suffix but .json/.jsonl/.ndjson) or JSONL pair file.

    TSV has no header; a first line whose label is not a number is taken as a header only
    if it literally names the columns (``sentence1 sentence2 label``), so that a typo in the
    first data line is still reported instead of silently skipped.
    """
    if str(path).startswith(BUILTIN_PREFIX):
        raise DataError(path, "is a retrieval set; this task takes a pair file (TSV or JSONL)")
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file")
    if path.is_dir():
        raise DataError(path, "is a directory; expected a .tsv/.data or .jsonl pair file")
    reader = _read_jsonl if path.suffix.lower() in _JSON_SUFFIXES else _read_tsv
    s1: list[str] = []
    s2: list[str] = []
    labels: list[float] = []
    lines: list[int] = []
    for lineno, a, b, label in reader(path):
        s1.append(a)
        s2.append(b)
        labels.append(label)
        lines.append(lineno)
    if not s1:
        raise DataError(path, "no sentence pairs found (empty file?)")
    return PairSet(path.name, str(path), sha256_path(path), s1, s2, np.asarray(labels, np.float64), lines)


def _parse_label(path: Path, lineno: int, raw: object) -> float:
    if isinstance(raw, bool):  # JSON true/false: accept as 1/0 rather than guess wrong
        return float(raw)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(path, f"label {raw!r} is not a number", lineno) from None
    if not math.isfinite(value):
        raise DataError(path, f"label {raw!r} is not a finite number", lineno)
    return value


def _check_sentence(path: Path, lineno: int, column: str, value: str) -> str:
    if not value.strip():
        raise DataError(path, f"{column} is empty", lineno)
    return value


def _read_tsv(path: Path) -> Iterator[tuple[int, str, str, float]]:
    for lineno, line in iter_lines(path):
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataError(
                path,
                f"expected 3 tab-separated columns (sentence1, sentence2, label), found {len(cols)}",
                lineno,
            )
        if lineno == 1 and [c.strip().lower() for c in cols] == ["sentence1", "sentence2", "label"]:
            continue
        a = _check_sentence(path, lineno, "sentence1", cols[0])
        b = _check_sentence(path, lineno, "sentence2", cols[1])
        yield lineno, a, b, _parse_label(path, lineno, cols[2].strip())


def _read_jsonl(path: Path) -> Iterator[tuple[int, str, str, float]]:
    for lineno, obj in iter_jsonl(path):
        missing = [k for k in ("sentence1", "sentence2", "label") if k not in obj]
        if missing:
            raise DataError(path, f"missing key(s) {', '.join(missing)}", lineno)
        a = require_str(path, lineno, obj, "sentence1")
        b = require_str(path, lineno, obj, "sentence2")
        yield lineno, a, b, _parse_label(path, lineno, obj["label"])
