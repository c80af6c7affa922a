"""What every torch-based Encoder shares: its precision, optional compilation, padded shapes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Encoder, TokenIds
from .compile import MIN_COMPILED_SIZE, compile_model, log, timed_warm_up
from .precision import (
    CALIBRATION_TEXTS,
    FLOAT32_CPU,
    CalibrationResult,
    Precision,
    apply_precision,
)


class TorchEncoder(Encoder):
    #: what the forward pass computes in; subclasses run it under ``precision.autocast()``
    precision: Precision = FLOAT32_CPU
    #: the load-time bf16 check, when there was one
    calibration: CalibrationResult | None = None
    compiled: bool = False

    @property
    def compute(self) -> str:
        return f"{self.precision.describe()} on {self.precision.device_type}"

    def prepare(
        self, model: torch.nn.Module, precision: Precision, *, compile: bool, min_bf16_cosine: float
    ) -> None:
        """Finish loading a float32-loaded ``model``: planned precision (checked), then compilation."""
        self.calibration = apply_precision(self, model, precision, min_cosine=min_bf16_cosine)
        if compile and self.packed:
            log.info("%s runs the padding-free forward; --compile does not apply to it", self.name)
        elif compile:
            compile_model(self.compile_target())
            self.compiled = True
            timed_warm_up(self.warm_up, self.name)

    def compile_target(self) -> torch.nn.Module:
        """The module whose forward ``--compile`` compiles: the transformer itself."""
        return self.model

    def padded_shape(self, batch: Sequence[TokenIds]) -> tuple[int, int]:
        """Rows and columns of the padded batch: a compiled model gets at least
        ``MIN_COMPILED_SIZE`` of each (extra rows are dropped from the output)."""
        rows, longest = len(batch), max(len(ids) for ids in batch)
        if self.compiled:
            return max(rows, MIN_COMPILED_SIZE), max(longest, MIN_COMPILED_SIZE)
        return rows, longest

    def warm_up(self) -> None:
        """First forward passes on a batch and on a single text (for compilation and allocation)."""
        batch = [self.truncate(ids) for ids in self.tokenize(CALIBRATION_TEXTS)]
        self.embed_token_ids(batch)
        self.embed_token_ids(batch[:1])
