"""How a torch model computes: its dtype, bf16 on CPUs with bf16 matrix units, and the check
that guards it.

On CUDA, bfloat16 means bf16 weights throughout (the Qwen3 checkpoints' own dtype). On a CPU it
means *mixed* bf16: every ``nn.Linear`` holds bf16 weights and runs under ``torch.autocast``,
while embeddings, norms and the residual stream stay float32. On all-MiniLM-L6-v2 that keeps the
cosine to float32 at ≥ 0.9999 where plain bf16 weights reach only 0.99987, at the same speed
(docs/benchmarks.md) — the matrix multiplications are where the time goes, and where AMX helps.

``--dtype auto`` chooses bf16 only where the hardware multiplies bf16 natively (detected, not
guessed), then proves it on a fixed calibration set against float32 at load time and falls back
to float32, saying so, when the vectors drift past the bar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy.special import expit

from . import skinny_linear
from .quality_bars import DEFAULT_MAX_SCORE_DELTA, DEFAULT_MIN_COSINE

log = logging.getLogger("qwembed.precision")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Short and long, English, Chinese, mixed, code and numbers: the inputs where reduced precision
# drifts first are the long ones and the unusual ones.
CALIBRATION_TEXTS = (
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "如何申请信用卡的分期付款？",
    "我的银行卡被冻结了，怎么办",
    "Qwen3 嵌入模型 supports 100+ languages, 包括中文和 English.",
    "def add(a, b):\n    return a + b  # sum two numbers",
    "Order #48213 shipped on 2024-03-07; total $1,299.95 (VAT 19%).",
    "ok",
    "Retrieval-augmented generation combines a search index with a language model: the retriever "
    "finds passages relevant to the question, and the generator writes an answer grounded in them. "
    "Its quality depends on the embedding model, the chunking of documents, the number of passages "
    "passed on, and whether a reranker orders them before generation. Long inputs like this one "
    "accumulate rounding error over more positions, which is why the check includes one.",
    "知识库问答系统先把文档切分成段落，用向量模型编码后存入索引；用户提问时，系统检索最相关的段落，"
    "再交给大模型生成答案。段落太长会稀释语义，太短又缺少上下文，因此切分策略和重排序同样重要。",
)


@cache
def cpu_has_bf16_units() -> bool:
    """AMX-BF16 tiles or AVX512-BF16 dot products, as the CPU reports them."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these probes: read the flags ourselves
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA and on CPUs with bf16 matrix units, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16
        if device is not None and device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}") from None


@dataclass(frozen=True)
class Precision:
    """What a loaded model computes in."""

    dtype: torch.dtype
    device_type: str
    #: CPU bf16: Linear weights in ``dtype`` under autocast, everything else float32
    mixed: bool = False
    #: ``--dtype auto`` chose this, so a failed calibration may fall back to float32
    automatic: bool = False

    @classmethod
    def plan(cls, dtype: str | torch.dtype, device: torch.device) -> Precision:
        resolved = resolve_dtype(dtype, device)
        mixed = device.type == "cpu" and resolved == torch.bfloat16
        return cls(resolved, device.type, mixed, automatic=dtype == "auto")

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype to load weights in: float32 for mixed bf16, whose Linear layers are cast later."""
        return torch.float32 if self.mixed else self.dtype

    def autocast(self) -> AbstractContextManager:
        if self.mixed:
            return torch.autocast(self.device_type, dtype=self.dtype)
        return nullcontext()

    def describe(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        return f"{name} matmuls, float32 elsewhere" if self.mixed else name


FLOAT32_CPU = Precision(torch.float32, "cpu")


@dataclass(frozen=True)
class CalibrationResult:
    precision: Precision
    #: the check's figure for the worst calibration input: an embedder's cosine to float32, a
    #: reranker's score change from float32
    worst: float
    fell_back: bool


def cast_linear_layers(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast every Linear layer to ``dtype``; returns the original tensors so the cast can be undone."""
    originals: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            for param_name, param in module.named_parameters(recurse=False):
                originals[f"{module_name}.{param_name}"] = param.data
            module.to(dtype)
    return originals


def _restore(model: torch.nn.Module, originals: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in originals:
            param.data = originals[name]


class _Calibratable(Protocol):
    """What the check needs of an encoder: its name, precision switch and its two halves."""

    name: str
    precision: Precision

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...
    def truncate(self, ids: list[int]) -> list[int]: ...
    def embed_token_ids(self, batch: Sequence[list[int]]) -> np.ndarray: ...


class _Switchable(Protocol):
    name: str
    precision: Precision


@dataclass(frozen=True)
class Check:
    """How the load-time check judges mixed bf16 outputs against float32 ones."""

    #: what ``worst`` measures, for the log
    measure: str
    #: the figure for the worst calibration input, from (float32 outputs, mixed bf16 outputs)
    worst: Callable[[np.ndarray, np.ndarray], float]
    #: whether that figure is good enough
    passes: Callable[[float], bool]
    #: the bar, as the log states it
    bar: str


def cosine_check(min_cosine: float) -> Check:
    """Embedders: unit vectors' worst cosine to float32, at least ``min_cosine``."""
    return Check(
        "calibration cosine to float32",
        lambda exact, mixed: float(np.min(np.sum(exact * mixed, axis=1))),
        lambda worst: worst >= min_cosine,
        f"≥ {min_cosine}",
    )


class _Scoring(Protocol):
    """What the check needs of a reranker."""

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], instruction: str | None
    ) -> list[list[int]]: ...
    def logits_token_ids(self, batch: Sequence[list[int]]) -> np.ndarray: ...


#: queries of the rerankers' calibration pairs: English, Chinese, mixed
CALIBRATION_QUERIES = (CALIBRATION_TEXTS[0], CALIBRATION_TEXTS[2], CALIBRATION_TEXTS[4])


def calibration_probabilities(reranker: _Scoring) -> np.ndarray:
    """A reranker's calibration outputs: each calibration text as the document of one pair, the
    queries taken in turn (10 pairs: on 2 cores a Qwen3-Reranker-0.6B-shaped model checks them in
    12 s, against 38 s for all texts with every query). As probabilities (the sigmoid of the raw
    scores), so that one bar on their change serves rerankers whose scores are logits and those
    whose scores are probabilities."""
    count = len(CALIBRATION_QUERIES)
    pairs = [
        ids
        for turn, query in enumerate(CALIBRATION_QUERIES)
        for ids in reranker.tokenize_pairs(query, CALIBRATION_TEXTS[turn::count], None)
    ]
    return expit(reranker.logits_token_ids(pairs).astype(np.float64))


def score_check(max_delta: float = DEFAULT_MAX_SCORE_DELTA) -> Check:
    """Rerankers: the largest change of a calibration pair's score, at most ``max_delta``."""
    return Check(
        "calibration score change from float32",
        lambda exact, mixed: float(np.max(np.abs(exact - mixed))),
        lambda worst: worst <= max_delta,
        f"≤ {max_delta}",
    )


def apply_precision(
    encoder: _Calibratable,
    model: torch.nn.Module,
    precision: Precision,
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> CalibrationResult | None:
    """Give a float32-loaded ``encoder`` its planned precision; mixed bf16 is checked first, on
    the calibration texts' vectors (:func:`cosine_check`)."""
    batch = [encoder.truncate(ids) for ids in encoder.tokenize(CALIBRATION_TEXTS)]
    return apply_checked_precision(
        encoder, model, precision, lambda: encoder.embed_token_ids(batch), cosine_check(min_cosine)
    )


#: computes the calibration outputs in the owner's current precision
Outputs = Callable[[], np.ndarray]


def apply_checked_precision(
    owner: _Switchable,
    model: torch.nn.Module,
    precision: Precision,
    run: Outputs,
    check: Check,
) -> CalibrationResult | None:
    """Give a float32-loaded ``owner`` (an embedder, a reranker) its planned precision; mixed bf16
    is checked first.

    ``run`` computes the calibration outputs in ``owner.precision``; its float32 outputs are the
    reference. When ``check`` fails, an automatic choice falls back to float32 (the float32 weights
    are kept until the check passes); an explicit ``--dtype bfloat16`` stays, with a warning.
    Nothing to check for other precisions (None).
    """
    owner.precision = precision
    result = _check_mixed(owner, model, precision, run, check) if precision.mixed else None
    if owner.precision.device_type == "cpu":
        # how many rows our skinny Linear kernel takes in the precision now settled: measured on
        # this model's layers, once per precision and process
        skinny_linear.settle(model, owner.precision.dtype)
    return result


def _check_mixed(
    owner: _Switchable, model: torch.nn.Module, precision: Precision, run: Outputs, check: Check
) -> CalibrationResult:
    """Mixed bf16 against float32 on the calibration inputs: kept, or float32 again."""
    owner.precision = FLOAT32_CPU
    reference = run()
    originals = cast_linear_layers(model, precision.dtype)
    owner.precision = precision
    worst = check.worst(reference, run())
    if check.passes(worst):
        log.info(
            "%s: %s, %s %.6f (bar %s)", owner.name, precision.describe(), check.measure, worst, check.bar
        )
        return CalibrationResult(precision, worst, fell_back=False)
    if not precision.automatic:
        log.warning(
            "%s: %s was asked for, but its %s is %.6f (bar %s)",
            owner.name,
            precision.describe(),
            check.measure,
            worst,
            check.bar,
        )
        return CalibrationResult(precision, worst, fell_back=False)
    _restore(model, originals)
    owner.precision = FLOAT32_CPU
    log.warning(
        "%s: bf16 %s was %.6f (bar %s): falling back to float32", owner.name, check.measure, worst, check.bar
    )
    return CalibrationResult(FLOAT32_CPU, worst, fell_back=True)
