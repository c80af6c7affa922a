"""dtype selection, the load-time bf16 check and its fallback, and compiled forward passes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from qwembed.backends import precision
from qwembed.backends.precision import Precision, resolve_dtype
from qwembed.engine import Embedder
from qwen3_fixtures import make_tiny_qwen3

TEXTS = [
    "The cat sat on the mat.",
    "如何申请信用卡的分期付款？",
    "x",
    "A much longer input that shares its batch with short ones, so that padding and blocking "
    "differ between the single-text and the mixed batch, which is what the test is about. " * 3,
]
CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that reports bf16 matrix units (autocast runs everywhere, just slower without them)."""
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)


def test_auto_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", CPU)


def test_cpu_bf16_is_mixed_and_cuda_bf16_is_not(bf16_cpu):
    cpu = Precision.plan("auto", CPU)
    assert cpu.mixed and cpu.automatic and cpu.load_dtype == torch.float32
    cuda = Precision.plan("bfloat16", torch.device("cuda"))
    assert not cuda.mixed and not cuda.automatic and cuda.load_dtype == torch.bfloat16


@pytest.fixture(scope="module")
def minilm_float32(minilm_dir):
    return Embedder.load("minilm", device="cpu", dtype="float32")


def test_auto_bf16_passes_its_check_and_stays_close_to_float32(bf16_cpu, minilm_float32):
    bf16 = Embedder.load("minilm", device="cpu", dtype="auto")
    encoder = bf16.encoder
    assert encoder.precision.mixed and encoder.precision.dtype == torch.bfloat16
    assert not encoder.calibration.fell_back and encoder.calibration.worst >= 0.9999
    linear = next(m for m in encoder.model.modules() if isinstance(m, torch.nn.Linear))
    norm = next(m for m in encoder.model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert linear.weight.dtype == torch.bfloat16 and norm.weight.dtype == torch.float32
    cosine = np.sum(bf16.embed(TEXTS) * minilm_float32.embed(TEXTS), axis=1)
    assert cosine.min() >= 0.9999


def test_a_failed_check_falls_back_to_exact_float32(bf16_cpu, minilm_float32, caplog):
    with caplog.at_level(logging.WARNING, logger="qwembed.precision"):
        fallback = Embedder.load("minilm", device="cpu", dtype="auto", min_bf16_cosine=1.0001)
    assert fallback.encoder.calibration.fell_back
    assert fallback.encoder.precision.dtype == torch.float32 and not fallback.encoder.precision.mixed
    assert "falling back to float32" in caplog.text
    # the float32 weights were kept, not re-rounded from bf16: vectors are the float32 ones
    np.testing.assert_allclose(fallback.embed(TEXTS), minilm_float32.embed(TEXTS), atol=1e-6)


def test_an_explicit_bf16_stays_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="qwembed.precision"):
        explicit = Embedder.load("minilm", device="cpu", dtype="bfloat16", min_bf16_cosine=1.0001)
    assert explicit.encoder.precision.mixed and not explicit.encoder.calibration.fell_back
    assert "was asked for" in caplog.text


def test_bf16_vectors_do_not_depend_on_batch_company_beyond_tolerance(bf16_cpu):
    embedder = Embedder.load("minilm", device="cpu", dtype="auto")
    together = embedder.embed(TEXTS)
    alone = np.vstack([embedder.embed([text]) for text in TEXTS])
    assert np.sum(together * alone, axis=1).min() >= 0.9999


def test_qwen3_bf16_on_cpu_keeps_the_recipe_close_to_float32(bf16_cpu, qwen3_dirs):
    folder = str(qwen3_dirs["plain"])
    exact = Embedder.load(folder, device="cpu", dtype="float32").embed(TEXTS, input_type="query")
    mixed = Embedder.load(folder, device="cpu", dtype="auto")
    assert mixed.encoder.precision.mixed
    together = mixed.embed(TEXTS, input_type="query")
    assert np.sum(together * exact, axis=1).min() >= 0.999
    # bf16 attention on the packed tokens: a text's vector hardly depends on its batch company
    alone = np.vstack([mixed.embed([text], input_type="query") for text in TEXTS])
    assert np.sum(together * alone, axis=1).min() >= 0.9999


def test_compiled_forward_matches_eager_with_one_graph_for_every_shape(qwen3_dirs, tmp_path):
    from torch._dynamo.utils import counters

    # sliding-window layers keep a Qwen3 model off the packed forward, so --compile applies
    folder = str(
        make_tiny_qwen3(
            tmp_path / "sliding", append_end_token=False, use_sliding_window=True, max_window_layers=1
        )
    )
    eager = Embedder.load(folder, device="cpu", dtype="float32")
    assert not eager.encoder.packed
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = Embedder.load(folder, device="cpu", dtype="float32", compile=True)
    assert compiled.encoder.compiled
    # one dynamic graph: batches of one row and one-token inputs are padded to 2, not specialised
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    one = compiled.embed(TEXTS[:1])
    several = compiled.embed(TEXTS)
    empty = compiled.embed([""])  # the end token alone: a sequence of length 1
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    np.testing.assert_allclose(one, eager.embed(TEXTS[:1]), atol=1e-4)
    np.testing.assert_allclose(several, eager.embed(TEXTS), atol=1e-4)
    np.testing.assert_allclose(empty, eager.embed([""]), atol=1e-4)


def test_compile_leaves_the_packed_qwen3_forward_on(qwen3_dirs):
    folder = str(qwen3_dirs["plain"])
    compiled = Embedder.load(folder, device="cpu", dtype="float32", compile=True)
    assert compiled.encoder.packed and not compiled.encoder.compiled
