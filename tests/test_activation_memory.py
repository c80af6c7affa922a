"""The packed Qwen3 forward frees each block's buffers before the next block allocates its own.

On a GPU the memory goal is weights + 15 %, and a 16k-token batch of the 4B shape has an MLP of
2 × 319 MB and an attention block of 335 MB (QKV projection and attention output): holding both
at once put the peak over the bar (measured with ``bench/activation_memory.py``); the MLP now also
runs in passes of ``MLP_CHUNK_TOKENS``. Here the same live-tensor count runs on a tiny model, where
the bounds can be written down from the shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen3Model

from qwembed.backends import fused_linear, packed_qwen3
from qwembed.backends.packed_qwen3 import packed_qwen3_pooled
from qwembed.backends.packing import PackedBatch
from qwen3_fixtures import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from activation_memory import LiveTensors

MLP_WIDTH, DOCS, DOC_TOKENS = 512, 8, 64


def _model() -> Qwen3Model:
    torch.manual_seed(0)  # the fixture's tiny shape, with an MLP wide enough to set the peak
    return Qwen3Model(tiny_config(1000, intermediate_size=MLP_WIDTH)).eval()


def _batch() -> PackedBatch:
    ids = torch.randint(0, 1000, (DOCS, DOC_TOKENS), generator=torch.Generator().manual_seed(0)).tolist()
    return PackedBatch.of(ids, DOCS, DOC_TOKENS, causal=True)


@pytest.fixture(params=[True, False], ids=["cpu-onednn", "eager-as-on-gpu"])
def linear_path(request, monkeypatch) -> None:
    """Each test twice: the CPU's oneDNN Linear layers, and the eager ones a GPU runs."""
    if not request.param:
        monkeypatch.setattr(fused_linear, "onednn_available", lambda: False)


@pytest.mark.usefixtures("linear_path")
def test_packed_qwen3_peak_is_one_block_at_a_time():
    model, batch = _model(), _batch()
    with torch.inference_mode():
        packed_qwen3_pooled(model, batch)  # warm-up: fused QKV weights are cached on first use
        with LiveTensors() as tracker:
            packed_qwen3_pooled(model, batch)

    config, tokens, word = model.config, DOCS * DOC_TOKENS, 4  # float32
    residual = normed = tokens * config.hidden_size * word
    gate = up = tokens * config.intermediate_size * word
    rotary_tables = 2 * tokens * config.head_dim * word
    # the MLP's moment: residual stream, its normed input, gate and up projections (+ small change)
    bound = (residual + normed + gate + up + rotary_tables) * 1.05
    heads = config.num_attention_heads + 2 * config.num_key_value_heads
    qkv = tokens * heads * config.head_dim * word
    context = tokens * config.num_attention_heads * config.head_dim * word
    assert tracker.peak <= bound, tracker.at_peak[:8]
    # the bound is tight enough to notice the attention block's buffers held through the MLP
    assert tracker.peak + qkv + context > bound


@pytest.mark.slow
def test_the_benchmark_reports_the_4b_ratio(tmp_path):
    """``bench/activation_memory.py`` end to end on one 4B-shaped layer and 512 tokens (~15 s)."""
    import json

    import activation_memory

    out = tmp_path / "memory.json"
    args = ["--tokens", "512", "--doc-tokens", "256", "--layers", "1", "--out", str(out)]
    assert activation_memory.main(args) == 0
    result = json.loads(out.read_text())
    assert result["path"] == "cuda" and result["precision"] == "bfloat16"
    assert result["weights_bytes_4b_bf16"] > 8e9  # the full model's, not the one layer's
    # at 512 tokens the activations are a few tens of MB: far below the 16k-token batch's
    assert 1e6 < result["peak_activation_bytes"] < 1e8
    assert 1.0 < result["ratio_4b"] < 1.01
    assert result["largest_at_peak"] and result["peak_reached_by"]
    assert fused_linear.onednn_available.__name__ == "onednn_available"  # put back after the run


@pytest.mark.usefixtures("linear_path")
def test_mlp_passes_shrink_its_buffers_and_keep_the_vectors(monkeypatch):
    """A batch longer than ``MLP_CHUNK_TOKENS`` runs its MLP in passes: the gate and up buffers
    shrink to one pass's, and every token's vector is what one pass gives."""
    model, batch = _model(), _batch()
    with torch.inference_mode():
        whole = packed_qwen3_pooled(model, batch)  # also the warm-up
        with LiveTensors() as one_pass:
            packed_qwen3_pooled(model, batch)
        monkeypatch.setattr(packed_qwen3, "MLP_CHUNK_TOKENS", DOCS * DOC_TOKENS // 4)
        with LiveTensors() as four_passes:
            in_passes = packed_qwen3_pooled(model, batch)
    torch.testing.assert_close(in_passes, whole, atol=1e-5, rtol=1e-5)
    gate_and_up = 2 * DOCS * DOC_TOKENS * MLP_WIDTH * 4  # float32
    assert four_passes.peak <= one_pass.peak - gate_and_up * 3 / 4 * 0.9, four_passes.at_peak[:8]
