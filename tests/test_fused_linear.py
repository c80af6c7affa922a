"""The fused Linear + activation equals the eager pair (and falls back to it off oneDNN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwembed.backends import fused_linear
from qwembed.backends.fused_linear import ACTIVATIONS, linear_activation, linear_times


def _reference(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """The Linear layer in float32 on the layer's-dtype input: what the fused kernel computes."""
    bias = None if linear.bias is None else linear.bias.float()
    return F.linear(x.to(linear.weight.dtype).float(), linear.weight.float(), bias)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_linear_activation_matches_eager(dtype, atol, activation):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80).to(dtype)
    x = torch.randn(37, 48)  # a float32 residual stream, cast to the layer's dtype as autocast would
    out = linear_activation(x, linear, activation)
    assert out.dtype == dtype and out.shape == (37, 80)
    expected = ACTIVATIONS[activation][1](_reference(x, linear))
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_times_matches_eager(dtype, atol):
    torch.manual_seed(0)
    up = torch.nn.Linear(48, 80, bias=False).to(dtype)
    x, gate = torch.randn(37, 48), torch.randn(37, 80).to(dtype)
    out = linear_times(x, up, gate)
    torch.testing.assert_close(out.float(), _reference(x, up) * gate.float(), atol=atol, rtol=0)


def test_eager_fallback_where_onednn_does_not_apply(monkeypatch):
    monkeypatch.setattr(fused_linear, "_fusable", lambda x, weight: False)
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 16)
    x = torch.randn(5, 8)
    torch.testing.assert_close(linear_activation(x, linear, "gelu"), F.gelu(linear(x)))
    gate = torch.randn(5, 16)
    torch.testing.assert_close(linear_times(x, linear, gate), linear(x) * gate)
