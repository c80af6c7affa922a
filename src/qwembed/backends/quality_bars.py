"""The load-time precision check's bars (``precision.py``), apart from it so that the command
lines can show them as defaults without importing torch."""

from __future__ import annotations

#: embedders: the worst calibration text's cosine between its bf16 and float32 vectors
DEFAULT_MIN_COSINE = 0.999

#: rerankers: the largest change of a calibration pair's score (a probability)
DEFAULT_MAX_SCORE_DELTA = 0.01
