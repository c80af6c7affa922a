"""The compiled element-wise steps of the packed Qwen3 forward (``fused_pointwise.py``).

A GPU gets them by default. CI has none, so the same compiled functions run here on the CPU
(Inductor generates C++ instead of Triton from the same graphs): equal to the eager steps, one
compile per step after the load-time probe whatever the batch, and a fallback to the eager steps
when compiling fails. The ``cuda`` cases run where a GPU is present and skip, saying so, elsewhere.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModel

from qwembed.backends import fused_pointwise
from qwembed.backends.fused_pointwise import FusedPointwise, pointwise_for
from qwembed.backends.packed_qwen3 import packed_qwen3_pooled
from qwembed.backends.packing import PackedBatch
from qwembed.backends.qwen3_pointwise import EAGER
from qwembed.engine import Embedder
from thread_helpers import in_a_new_thread

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ),
]

TEXTS = ["short", "如何申请信用卡的分期付款？", "a longer English sentence about text embeddings " * 3, ""]


def _model(folder, device: str, dtype: torch.dtype) -> torch.nn.Module:
    return AutoModel.from_pretrained(folder).to(device=device, dtype=dtype).eval()


def _batch(lengths: list[int], vocab: int = 1000) -> PackedBatch:
    generator = torch.Generator().manual_seed(sum(lengths))
    rows = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]
    return PackedBatch.of(rows, len(rows), max(lengths), causal=True)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_an_encoder_compiles_the_steps_in_the_background_once_and_they_equal_the_eager_ones(
    qwen3_dirs, monkeypatch, device
):
    monkeypatch.setattr(fused_pointwise, "fused_pointwise_applies", lambda device: True)  # the CPU too
    dtype = "bfloat16" if device == "cuda" else "float32"
    embedder = Embedder.load(str(qwen3_dirs["appends"]), device=device, dtype=dtype)
    encoder = embedder.encoder
    assert encoder.fusing is not None
    encoder.fusing.join()  # the probe compiled the steps and checked them against the eager ones
    fused = encoder.pointwise
    assert isinstance(fused, FusedPointwise)
    exact = dtype == "float32"
    tolerance = dict(atol=1e-4, rtol=1e-4) if exact else dict(atol=0.1, rtol=0.05)
    torch._dynamo.config.error_on_recompile = True  # from here on, a new batch shape must not compile
    try:
        with torch.inference_mode():
            for lengths in ([5], [70, 3, 3, 2], [129, 128, 40, 17, 9, 1], [2] * 33):
                batch = _batch(lengths)
                eager = packed_qwen3_pooled(encoder.model, batch, EAGER)
                compiled = packed_qwen3_pooled(encoder.model, batch, fused)
                torch.testing.assert_close(compiled.float(), eager.float(), **tolerance)
                cosine = torch.nn.functional.cosine_similarity(compiled.float(), eager.float())
                assert cosine.min() > (0.99999 if exact else 0.999)
            embedder.embed(TEXTS)
        # the server's worker thread starts after the load: nothing compiles there either
        in_a_new_thread(lambda: embedder.embed([*TEXTS, "one more"]))
    finally:
        torch._dynamo.config.error_on_recompile = False


def test_the_cpu_keeps_the_eager_steps(qwen3_dirs):
    embedder = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")
    assert embedder.encoder.packed and embedder.encoder.pointwise is EAGER
    assert embedder.encoder.fusing is None


@pytest.mark.parametrize("device", DEVICES)
def test_a_failed_compile_keeps_the_eager_steps_and_says_so(qwen3_dirs, monkeypatch, caplog, device):
    model = _model(qwen3_dirs["appends"], device, torch.float32)
    monkeypatch.setattr(fused_pointwise, "fused_pointwise_applies", lambda device: True)

    def broken(pointwise, model):
        raise RuntimeError("no working compiler")

    monkeypatch.setattr(fused_pointwise, "probe", broken)
    with caplog.at_level(logging.WARNING, logger="qwembed.fused_pointwise"):
        assert pointwise_for(model, "tiny") is EAGER
    assert "eager steps kept" in caplog.text and "no working compiler" in caplog.text


def test_the_switch_turns_the_fused_steps_off(monkeypatch):
    monkeypatch.setenv(fused_pointwise.ENV_SWITCH, "0")
    assert not fused_pointwise.fused_pointwise_applies(torch.device("cuda"))
    monkeypatch.delenv(fused_pointwise.ENV_SWITCH)
    assert not fused_pointwise.fused_pointwise_applies(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_encoder_serves_at_once_switches_to_the_fused_steps_and_matches_the_cpu(qwen3_dirs):
    folder = str(qwen3_dirs["appends"])
    gpu = Embedder.load(folder, device="cuda", dtype="bfloat16")
    early = gpu.embed(TEXTS)  # while the kernels compile: the eager steps
    gpu.encoder.fusing.join()
    assert isinstance(gpu.encoder.pointwise, FusedPointwise)
    late = gpu.embed(TEXTS)
    cpu = Embedder.load(folder, device="cpu", dtype="float32").embed(TEXTS)
    assert (early * late).sum(axis=1).min() > 0.999
    assert (late * cpu).sum(axis=1).min() > 0.99
