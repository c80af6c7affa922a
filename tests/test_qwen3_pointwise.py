"""Qwen3's norm and RoPE in few passes equal Hugging Face's modules: in float32 to float rounding,
in bf16 within its rounding, written in place into the QKV projection without touching the rest."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    apply_rotary_pos_emb,
)

from qwembed.backends import qwen3_pointwise
from qwembed.backends.qwen3_pointwise import rms_norm, rotate_normed_

TOKENS, WIDTH, Q_HEADS, KV_HEADS = 37, 16, 4, 2


def _norm(size: int) -> Qwen3RMSNorm:
    norm = Qwen3RMSNorm(size, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(size) * 2)  # not ones: a misplaced weight must show
    return norm


def _tables(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    config = Qwen3Config(head_dim=WIDTH, hidden_size=64, num_attention_heads=Q_HEADS, rope_theta=10_000.0)
    cos, sin = Qwen3RotaryEmbedding(config)(torch.zeros(1, 1), positions[None])
    return cos[0], sin[0]


def _reference(heads: torch.Tensor, norm: Qwen3RMSNorm, cos, sin) -> torch.Tensor:
    """Hugging Face's order: the norm over each head, then RoPE (``(batch, heads, tokens, width)``)."""
    normed = norm(heads.float()).transpose(0, 1)[None]
    rotated, _ = apply_rotary_pos_emb(normed, normed, cos[None], sin[None])
    return rotated[0].transpose(0, 1)


@pytest.mark.parametrize("chunk", [None, 8], ids=["one-pass", "token-chunks"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_rotate_normed_writes_hugging_faces_result_into_its_slot_only(monkeypatch, dtype, atol, chunk):
    if chunk is not None:  # large GPU batches go in chunks of tokens; 37 tokens make 5, one short
        monkeypatch.setattr(qwen3_pointwise, "ROTATE_CHUNK_TOKENS", chunk)
    torch.manual_seed(0)
    positions = torch.cat((torch.arange(20), torch.arange(17)))  # two packed sequences
    cos, sin = _tables(positions)
    qkv = torch.randn(TOKENS, Q_HEADS + 2 * KV_HEADS, WIDTH).to(dtype)
    before = qkv.clone()
    q_norm, k_norm = _norm(WIDTH), _norm(WIDTH)
    expected_q = _reference(qkv[:, :Q_HEADS], q_norm, cos, sin)
    expected_k = _reference(qkv[:, Q_HEADS : Q_HEADS + KV_HEADS], k_norm, cos, sin)
    with torch.inference_mode():
        rotate_normed_(qkv[:, :Q_HEADS], q_norm, cos, sin)
        rotate_normed_(qkv[:, Q_HEADS : Q_HEADS + KV_HEADS], k_norm, cos, sin)
    assert qkv.dtype == dtype
    torch.testing.assert_close(qkv[:, :Q_HEADS].float(), expected_q, atol=atol, rtol=0)
    torch.testing.assert_close(qkv[:, Q_HEADS : Q_HEADS + KV_HEADS].float(), expected_k, atol=atol, rtol=0)
    assert torch.equal(qkv[:, Q_HEADS + KV_HEADS :], before[:, Q_HEADS + KV_HEADS :])  # values untouched


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
# float32: the CPU's mixed precision keeps the residual stream in float32; bfloat16: the GPU's,
# where rms_norm scales its float32 copy in place
@pytest.mark.parametrize("stream_dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_returns_the_next_layers_dtype(dtype, rtol, stream_dtype):
    torch.manual_seed(0)
    hidden = (torch.randn(TOKENS, 64) * 3).to(stream_dtype)
    residual = hidden.clone()
    norm = _norm(64)
    with torch.inference_mode():
        out = rms_norm(hidden, norm, dtype)
        expected = norm(hidden.float())
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=1e-5, rtol=rtol)
    assert torch.equal(hidden, residual)  # the residual stream is read, not written
